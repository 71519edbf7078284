"""A deterministic synthetic BraTS-like glioma cohort: the framework's default dataset.

It exists so that ``python train.py experiment=idh_hybrid`` runs on a fresh machine with no data.
It exercises the machinery (reading, validation, radiomics, habitats, fusion, survival,
harmonisation); **it proves nothing clinical**. Effect sizes are chosen to be learnable from
~100 subjects, not to match any real cohort.

Output (BraTS 2021 layout): ``<out>/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` (float32 images,
integer-valued, 0 outside the skull-stripped brain; uint8 seg with 1 NCR, 2 ED, 4 ET; identity
direction, isotropic ``spacing`` mm) and, with two timepoints, ``<out>/<id>_tp1/<id>_tp1_*.nii.gz``;
``manifest.csv`` (the data contract of ``DESIGN.md``, one row per subject and timepoint),
``ground_truth.csv`` (every latent variable, before masking, one row per scan) and ``params.json``
(all parameters, the site table, and these effects in words). ``params.json`` is written last,
so its absence means an unfinished generation, which the next call resumes.

Planted biology (direction and strength at the default ``effect_scale=1``; sizes are relative to
the brain, see :mod:`radfusion.synthetic.anatomy`; the sampling is in
:mod:`radfusion.synthetic.biology`). The effects overlap on purpose: on the default cohort a
cross-validated L2 logistic regression on the default habitat radiomics reaches an IDH AUC of about
0.8, MGMT 0.55-0.75 and codeletion 0.6-0.75 (see ``docs/synthetic.md``), not the ceiling.
``effect_scale`` multiplies every marker and response effect (0: none; 3: nearly separable).

- **IDH** mutant with p = 0.40; age N(40, 10) vs N(62, 10) years. One latent aggressiveness,
  ``1.2 * effect_scale / 2`` SD above (wildtype) or below (mutant) zero plus N(0, 1), drives five
  traits, each ``0.8 * aggressiveness + 0.6 * N(0, 1)``: tumour-core radius (0.3–0.8 of the tumour
  radius), necrosis (wildtype 81 % / mutant 45 %; 0.25–0.85 of the core radius), enhancement (none
  in 14 % / 47 %, patchy 15–75 % of the outer core in 34 % / 35 %, a full rim in 52 % / 19 %; T1ce
  gain 0.8–1.1), intensity heterogeneity (3–15 %) and a T2–FLAIR mismatch in the non-enhancing
  core (8 % / 34 %; T2 up to 25 % brighter than edema, FLAIR 25–45 % darker). So some wildtype
  tumours look low-grade in every respect and some mutants enhance. Age widens the ventricles
  (0.8 % per year from 50).
- **MGMT** methylated with p = 0.85 (IDH-mutant) / 0.45 (IDH-wildtype): a fine band-pass texture
  (difference of Gaussians, sigma 0.5 and 1.0 voxel) multiplies FLAIR in the edema with amplitude
  ``3 % * exp(±0.5 * effect_scale + 0.35 * N(0, 1))`` (+ methylated): unmethylated tumours have a
  fainter one. Tumour heterogeneity is kept coarser (blotches of >= 3 voxels).
- **1p/19q codeletion** in 40 % of IDH-mutants only (0 for wildtype): tumour centre shifted
  anteriorly by ``0.3 * effect_scale`` of the brain semi-axis (y from U(-0.6, 0.45), clipped at
  0.65: the ranges overlap); calcification-like spots (Gaussian sigma 0.9 voxel) in 75 % of
  codeleted tumours (30–100 % of 2–20 spots, depth ``effect_scale * U(0.45, 0.85)`` of 80 % on T2,
  60 % T1ce, 50 % FLAIR, 30 % T1) and in 10 % of other IDH-mutants (1–2 spots, depth 0.2–0.4).
- **Spatial arrangement** (hard for rotation-invariant handcrafted features): the necrotic core
  is pushed from the tumour centre towards the brain centre (midline / ventricles) by ``ecc`` x
  (core radius - minimal rim); ``ecc = 0.30 ± 0.15 * effect_scale (+ wildtype) + 0.18 * z_ecc``,
  z_ecc ~ N(0, 1) independent of everything else (aggressiveness included); z_ecc enters the
  survival risk (+0.4 per SD, when necrosis exists) on its own.
- **Absolute volume** (hard for a CNN on a crop resized to a fixed size): the log whole-tumour
  volume is ``log(0.035) ± 0.15 * effect_scale (+ wildtype) + 0.4 * z_vol`` (fraction of the
  brain), independent of aggressiveness; z_vol enters the survival risk (+0.3 per SD) on its own.
- **Survival**: Weibull (shape 1.4) proportional hazards on the log-risk
  ``1.0·IDH-wt + 0.6·MGMT-unmethylated - 0.4·codeleted + 0.03·(age - 55) + 0.3·z_vol
  + 0.4·z_ecc·[necrosis]``; median event time ~670 days (IDH-wt ~420, IDH-mutant ~1760); independent
  uniform censoring on 60–3600 days leaves about 70 % events. Not affected by ``effect_scale``.
- **Grade** 2/3/4 follows IDH and necrosis (wildtype 4, or 3/4 without necrosis; mutant 4 or 3 with
  necrosis, 3 with enhancement, else 2 or 3; codeleted at most 3). **Sex** is random (55 % M).
- **Sites** "A", "B", ... assigned uniformly, independently of biology; per site and sequence a
  multiplicative scale (0.75–1.35), an additive offset (±60), Gaussian noise (std 10–35), blur
  (sigma 0–0.9 voxels) and a smooth bias field (3–12 %).
- **Missing labels**: MGMT and codeletion are unknown (empty cell) with probability
  ``missing_rate``, IDH with ``missing_rate / 2``.

Second timepoint (``n_timepoints=2``; :func:`radfusion.synthetic.biology.sample_followup`):
a follow-up scan 56–120 days later (``days_from_baseline`` in ground_truth.csv) on the same grid,
same anatomy, site, tumour location and outline, new acquisition noise; the baseline scan is
byte-identical to the cross-sectional cohort's. ``response`` (manifest and ground truth) is 1 with
p = 0.60 (MGMT-methylated) / 0.35. The log whole-tumour volume changes by
``N(effect_scale * mu, 0.2)``, mu = -0.45 (responder), +0.35 (non-responder: true progression),
+0.25 (pseudoprogression, in 35 % / 20 % of methylated / unmethylated responders). Responders lose
enhancement (rim -> patchy), necrosis (x0.8) and heterogeneity (x0.8); progression gains
enhancement, necrosis (x1.15, or new in 40 %) and heterogeneity (x1.25); pseudoprogression enhances
as a full, brighter rim with no new necrosis and homogeneous tissue (heterogeneity x0.35), the cue
that tells it from progression (e.g. a low T2 coefficient of variation inside ET). So the change
between timepoints predicts response better than either scan.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from radfusion.cache import atomic_path
from radfusion.synthetic.anatomy import (
    BRAIN_SEMI_AXES,
    SEQUENCES,
    ScannerParams,
    TumourSpec,
    acquire,
    healthy_images,
    make_anatomy,
    n_calcifications,
    random_scanner,
    render_tumour,
)
from radfusion.synthetic.biology import rng_for, sample_followup, sample_subject

#: Bump when a change alters the generated data, so cached cohorts are regenerated.
#: 2: overlapping marker effects (``effect_scale``), optional second timepoint.
GENERATOR_VERSION = 2

#: Timepoint-specific columns of ground_truth.csv (the others are the subject's baseline latents).
_RESPONSE_COLUMNS = ("response", "pseudoprogression", "design_log_volume_change", "days_from_baseline")


def _site_table(seed: int, n_sites: int, first_site: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    # Sites of an external cohort (first_site > 0) draw their scanners from a stream of their own.
    rng = rng_for(seed, 1) if first_site == 0 else rng_for(seed, 1, first_site)
    names = [chr(ord("A") + first_site + k) for k in range(n_sites)]
    return {site: {seq: vars(random_scanner(rng)) for seq in SEQUENCES} for site in names}


def _render(lat: dict, shape: tuple[int, int, int], sites: dict, seed: int, index: int, timepoint: int = 0):
    """Images (dict of float32 arrays) and seg (uint8) of one subject at one timepoint.

    Both timepoints start from the same stream, so they share the anatomy and the tumour's outline
    (the lobes are the first draws of :func:`render_tumour`); the follow-up scan gets its own
    acquisition stream (new noise and bias field, same site) and the baseline is the same whether
    or not a follow-up is generated.
    """
    rng = rng_for(seed, 0, index, 3)
    anat = make_anatomy(shape, rng, head_scale=lat["head_scale"],
                        ventricle_scale=1.0 + 0.008 * (lat["age"] - 50.0))  # ventricles widen with age
    clean = healthy_images(anat)
    spec = TumourSpec(
        centre_norm=np.array([lat["centre_x"], lat["centre_y"], lat["centre_z"]]), r_wt=lat["r_wt"],
        core_frac=lat["core_frac"], ncr_frac=lat["ncr_frac"], ecc=lat["ecc"], et_mode=lat["et_mode"],
        et_patch_frac=lat["et_patch_frac"], et_gain=lat["et_gain"], mismatch=lat["mismatch"],
        het_amp=lat["het_amp"], mgmt_amp=lat["mgmt_amp"], spot_count=lat["spot_count"],
        spot_depth=lat["spot_depth"])
    seg = render_tumour(anat, spec, rng, clean)
    acq_rng = rng if timepoint == 0 else rng_for(seed, 0, index, 5, timepoint)
    images = {seq: acquire(clean[seq], anat, ScannerParams(**sites[lat["site"]][seq]), acq_rng)
              for seq in SEQUENCES}
    return images, seg


def _seg_stats(seg: np.ndarray, spacing: float) -> dict:
    """Volumes (mm³) per label and the necrosis–core centroid offset (mm) measured on the seg."""
    voxel = spacing ** 3
    counts = np.bincount(seg.ravel(), minlength=5)
    out = {f"vol_{name}_mm3": float(counts[lab] * voxel) for name, lab in (("ncr", 1), ("ed", 2), ("et", 4))}
    wt = counts[1] + counts[2] + counts[4]
    out["vol_wt_mm3"] = float(wt * voxel)
    out["et_fraction"] = float(counts[4] / wt) if wt else 0.0
    out["ncr_fraction"] = float(counts[1] / wt) if wt else 0.0
    offset = np.nan
    if counts[1] and counts[4]:
        ncr_c = np.argwhere(seg == 1).mean(axis=0)
        tc_c = np.argwhere((seg == 1) | (seg == 4)).mean(axis=0)
        offset = float(np.linalg.norm(ncr_c - tc_c) * spacing)
    out["ncr_offset_mm"] = offset
    return out


def _write_nifti(arr: np.ndarray, path: Path, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_path(path, suffix=".nii.gz") as tmp:  # a file either exists whole or not at all
        img.to_filename(tmp)


def _key(n_subjects, shape, spacing, n_sites, seed, missing_rate, effect_scale, n_timepoints,
         first_site=0, id_prefix="SYN") -> dict:
    key = dict(generator_version=GENERATOR_VERSION, n_subjects=int(n_subjects),
               shape=[int(s) for s in shape], spacing=float(spacing), n_sites=int(n_sites),
               seed=int(seed), missing_rate=float(missing_rate), effect_scale=float(effect_scale),
               n_timepoints=int(n_timepoints))
    if first_site or id_prefix != "SYN":  # only when set, so existing cohorts keep their parameters
        key.update(first_site=int(first_site), id_prefix=str(id_prefix))
    return key


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _folder_name(subject_id: str, timepoint: int) -> str:
    return subject_id if timepoint == 0 else f"{subject_id}_tp{timepoint}"


def generate_cohort(out_dir: str | Path, n_subjects: int = 100, shape: tuple[int, int, int] = (96, 96, 96),
                    spacing: float = 1.0, n_sites: int = 4, seed: int = 0, missing_rate: float = 0.1,
                    effect_scale: float = 1.0, n_timepoints: int = 1, overwrite: bool = False,
                    progress: bool = True, first_site: int = 0, id_prefix: str = "SYN") -> Path:
    """Generate (once) the synthetic cohort into ``out_dir`` and return the path of manifest.csv.

    Args:
        out_dir: output folder (created).
        n_subjects: number of subjects, ids ``SYN_000``, ``SYN_001``, ...
        shape: grid size in voxels (x, y, z), from (32, 32, 32) for tests to (240, 240, 155).
            Anatomy and tumours scale with it.
        spacing: isotropic voxel size in mm (labels the grid; volumes in ground_truth.csv are mm³).
        n_sites: number of acquisition sites "A", "B", ... (at most 26).
        seed: everything is a deterministic function of the seed; subject i is the same for any
            ``n_subjects``.
        missing_rate: fraction of MGMT and codeletion labels left unknown (half that for IDH).
        effect_scale: strength of every planted imaging effect of the markers and of treatment
            response (the difficulty knob). 1.0 (default) puts a cross-validated logistic regression
            on the default radiomics at an IDH AUC of about 0.85 on the default cohort; 0 removes the
            imaging signal of the markers; 2-3 make the markers nearly separable.
        n_timepoints: 1 (default) or 2. With 2, every subject also gets a follow-up scan in
            ``<id>_tp1/<id>_tp1_<kind>.nii.gz`` (manifest rows with ``timepoint`` 0 and 1 and the same
            ``subject_id``) and a ``response`` label; the baseline is the same as with 1.
        overwrite: regenerate even if a finished cohort with the same parameters exists.
        progress: show a tqdm progress bar.
        first_site: letters of the sites start here (0: "A", 4: "E", ...) and, when > 0, their scanners
            come from a random stream of their own: an external cohort from sites the first never had
            (``first_site=4 seed=1 id_prefix=EXT``; README "Apply a trained model").
        id_prefix: subject ids are ``<id_prefix>_000``, ... (another prefix keeps two cohorts' ids apart).

    A finished cohort (params.json present with equal parameters) is returned untouched. An
    unfinished one with the same parameters is resumed: subjects whose files exist are kept.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be three sizes >= 16 voxels, got {shape}")
    if first_site < 0 or first_site + n_sites > 26 or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", str(id_prefix)):
        raise ValueError(f"invalid arguments: first_site={first_site} (0..{26 - n_sites} with n_sites={n_sites}), "
                         f"id_prefix={id_prefix!r} (letters and digits)")
    if n_subjects < 1 or not 1 <= n_sites <= 26 or spacing <= 0 or not 0.0 <= missing_rate <= 1.0:
        raise ValueError(f"invalid arguments: n_subjects={n_subjects} (>= 1), n_sites={n_sites} "
                         f"(1..26), spacing={spacing} (> 0), missing_rate={missing_rate} (0..1)")
    if not np.isfinite(effect_scale) or effect_scale < 0 or n_timepoints not in (1, 2):
        raise ValueError(f"invalid arguments: effect_scale={effect_scale} (>= 0), "
                         f"n_timepoints={n_timepoints} (1 or 2)")
    out = Path(out_dir)
    manifest_path, params_path, marker = out / "manifest.csv", out / "params.json", out / ".generating.json"
    key = _key(n_subjects, shape, spacing, n_sites, seed, missing_rate, effect_scale, n_timepoints, first_site,
               id_prefix)
    done = _read_json(params_path)
    if not overwrite and manifest_path.exists() and done is not None and done.get("parameters") == key:
        return manifest_path

    out.mkdir(parents=True, exist_ok=True)
    params_path.unlink(missing_ok=True)  # from here until the end, the cohort counts as unfinished
    resume = not overwrite and _read_json(marker) == key
    marker.write_text(json.dumps(key))
    sites = _site_table(seed, n_sites, first_site)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    width = max(3, len(str(n_subjects - 1)))
    ids = [f"{id_prefix}_{i:0{width}d}" for i in range(n_subjects)]

    iterator = range(n_subjects)
    if progress:
        try:
            from tqdm.auto import tqdm
            iterator = tqdm(iterator, desc=f"synthetic cohort -> {out}", unit="subject")
        except ImportError:
            pass
    manifest_rows, truth_rows, folders = [], [], set()
    for i in iterator:
        sid = ids[i]
        base = sample_subject(seed, i, n_sites, missing_rate, effect_scale)
        base["site"] = chr(ord(base["site"]) + first_site)
        timepoints = [dict(base, timepoint=0)]
        if n_timepoints == 2:
            follow = sample_followup(base, seed, i, effect_scale)
            timepoints[0].update({k: follow[k] for k in ("response", "pseudoprogression")},
                                 design_log_volume_change=0.0, days_from_baseline=0)
            timepoints.append(follow)
        for lat in timepoints:
            tp = lat["timepoint"]
            name = _folder_name(sid, tp)
            folders.add(name)
            folder = out / name
            files = {k: folder / f"{name}_{k}.nii.gz" for k in (*SEQUENCES, "seg")}
            if resume and all(f.exists() for f in files.values()):
                seg = np.asarray(nib.load(files["seg"]).dataobj, dtype=np.uint8)
            else:
                images, seg = _render(lat, shape, sites, seed, i, tp)
                folder.mkdir(exist_ok=True)
                for seq in SEQUENCES:
                    _write_nifti(images[seq], files[seq], affine)
                _write_nifti(seg, files["seg"], affine)  # last: its presence marks a complete scan
            manifest_rows.append(dict(
                subject_id=sid, site=lat["site"], **{k: f"{name}/{f.name}" for k, f in files.items()},
                age=lat["age"], sex=lat["sex"], idh=lat["idh_obs"], mgmt=lat["mgmt_obs"],
                codeletion=lat["codel_obs"], grade=lat["grade"], os_days=lat["os_days"],
                os_event=lat["os_event"], timepoint=tp, response=lat.get("response")))
            truth_rows.append(_truth_row(lat, sid, shape, spacing, sites, _seg_stats(seg, spacing)))

    _remove_stale_subjects(out, folders)
    columns = ["subject_id", "site", *SEQUENCES, "seg", "age", "sex", "idh", "mgmt", "codeletion",
               "grade", "os_days", "os_event", "timepoint"] + (["response"] if n_timepoints == 2 else [])
    manifest = pd.DataFrame(manifest_rows, columns=columns)
    for col in ("idh", "mgmt", "codeletion", "response"):
        if col in manifest:
            manifest[col] = manifest[col].astype("Int64")  # writes 1 / 0 / empty, never 1.0
    manifest.to_csv(manifest_path, index=False)
    truth = pd.DataFrame(truth_rows)
    first = ["subject_id", "timepoint"]
    truth = truth[first + [c for c in truth.columns if c not in first]]
    truth.to_csv(out / "ground_truth.csv", index=False)
    params = dict(parameters=key, sites=sites, effects=_effects_text(n_timepoints),
                  files=dict(manifest="manifest.csv", ground_truth="ground_truth.csv",
                             labels={"NCR": 1, "ED": 2, "ET": 4}))
    params_path.write_text(json.dumps(params, indent=2))
    marker.unlink(missing_ok=True)
    return manifest_path


def _truth_row(lat: dict, sid: str, shape: tuple[int, int, int], spacing: float, sites: dict,
               stats: dict) -> dict:
    """One ground_truth.csv row: every latent of the scan (before masking), its seg stats and site."""
    # whole-tumour design radius in voxels, as render_tumour computes it
    semi = BRAIN_SEMI_AXES * np.asarray(shape) * lat["head_scale"]
    r_vox = lat["r_wt"] * float(np.prod(semi) ** (1 / 3))
    site_cols = {f"site_{p}_{seq}": v for seq, ps in sites[lat["site"]].items() for p, v in ps.items()}
    truth = {k: v for k, v in lat.items() if not k.endswith("_obs")}
    truth.update(subject_id=sid, r_wt_mm=r_vox * spacing,
                 n_calc_spots=n_calcifications(r_vox, lat["spot_count"]) if lat["spot_depth"] > 0 else 0,
                 **stats, **site_cols)
    return truth


def _remove_stale_subjects(out: Path, keep: set[str]) -> None:
    """Delete scan folders of an earlier, larger (or longitudinal) cohort (only folders named like ours)."""
    for folder in out.iterdir():
        if folder.is_dir() and re.fullmatch(r"SYN_\d{3,}(_tp\d+)?", folder.name) and folder.name not in keep:
            shutil.rmtree(folder)


def _effects_text(n_timepoints: int = 1) -> dict[str, str]:
    """The planted effects in words, for params.json (the module docstring has the numbers)."""
    text = {
        "disclaimer": "Synthetic data: exercises the machinery, proves nothing clinical.",
        "effect_scale": "multiplies every planted imaging effect of the markers and of response; at 1 a "
                        "cross-validated radiomics logistic regression reaches IDH AUC ~0.8, MGMT ~0.55-0.75, "
                        "codeletion ~0.6-0.75 on the default cohort; 0 = no imaging signal",
        "idh": "p=0.40 mutant; younger (N(40,10) vs N(62,10)); one latent aggressiveness (IDH-wt +0.6, "
               "mutant -0.6 SD x effect_scale, plus N(0,1)) drives core size, necrosis (81% vs 45%), "
               "enhancement (none 14% vs 47%, full rim 52% vs 19%), heterogeneity and T2-FLAIR mismatch "
               "(8% vs 34%), each with loading 0.8, so the classes overlap; longer survival",
        "mgmt": "p=0.85 (IDH-mut) / 0.45 (IDH-wt) methylated; fine band-pass FLAIR texture in edema, "
                "amplitude 3% x exp(+-0.5*effect_scale + 0.35*N(0,1)); longer survival",
        "codeletion": "IDH-mutant only (40%), 0 for IDH-wt; centre shifted anteriorly by 0.3*effect_scale "
                      "(ranges overlap); calcification-like dark spots in 75% of codeleted (and 10% of "
                      "other IDH-mutant, fewer and fainter) tumours, depth effect_scale*U(0.45,0.85)",
        "spatial": "necrotic core offset towards the brain centre, ecc = 0.30 +- 0.15*effect_scale "
                   "(IDH-wt +) + 0.18*z_ecc; z_ecc raises risk independently (+0.4/SD with necrosis)",
        "volume": "log tumour volume +-0.15*effect_scale (IDH-wt +) + 0.4*z_vol, independent of the "
                  "aggressiveness latent; z_vol raises risk independently (+0.3/SD)",
        "survival": "Weibull shape 1.4 on log-risk 1.0*IDHwt + 0.6*MGMTunmeth - 0.4*codel + "
                    "0.03*(age-55) + 0.3*z_vol + 0.4*z_ecc*necrosis; uniform censoring, ~70% events",
        "sites": "uniform assignment, independent of biology; per site and sequence scale, offset, "
                 "noise, blur, bias field",
        "missing": "MGMT and codeletion unknown with probability missing_rate, IDH with missing_rate/2",
    }
    if n_timepoints == 2:
        text["response"] = (
            "second timepoint 56-120 days after baseline, same anatomy, site and tumour outline; "
            "response p=0.60 (MGMT-methylated) / 0.35; log volume change N(effect_scale*mu, 0.2) with "
            "mu -0.45 responder, +0.35 progression, +0.25 pseudoprogression (35%/20% of methylated/"
            "unmethylated responders); responders lose enhancement, necrosis and heterogeneity; "
            "progression gains them; pseudoprogression enhances as a full rim of homogeneous tissue "
            "(heterogeneity x0.35 on every sequence, e.g. a low T2 coefficient of variation in ET) "
            "without new necrosis")
    return text
