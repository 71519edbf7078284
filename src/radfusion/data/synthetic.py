"""A deterministic synthetic BraTS-like glioma cohort: the framework's default dataset.

It exists so that ``python train.py experiment=idh_hybrid`` runs on a fresh machine with no data.
It exercises the machinery (reading, validation, radiomics, habitats, fusion, survival,
harmonisation); **it proves nothing clinical**. Effect sizes are chosen to be learnable from
~100 subjects, not to match any real cohort.

Output (BraTS 2021 layout): ``<out>/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` (float32 images,
integer-valued, 0 outside the skull-stripped brain; uint8 seg with 1 NCR, 2 ED, 4 ET; identity
direction, isotropic ``spacing`` mm), ``manifest.csv`` (the data contract of ``DESIGN.md``),
``ground_truth.csv`` (every latent variable, before masking) and ``params.json`` (all parameters,
the site table, and these effects in words). ``params.json`` is written last, so its absence means
an unfinished generation, which the next call resumes.

Planted biology (direction and strength; sizes are relative to the brain, see
:mod:`radfusion.data.synthetic_anatomy`):

- **IDH** mutant with p = 0.40. Mutant vs wildtype: age N(40, 10) vs N(62, 10) years; whole-tumour
  volume about 0.6x (log-volume shift -0.5); tumour core 0.35–0.6 vs 0.55–0.8 of the tumour
  radius; enhancement patchy (15–50 % of the outer core, T1ce gain 0.75–0.9) and absent in 30 % of
  mutants (an empty ET habitat) vs a full enhancing rim (gain 0.95–1.1); necrosis in 35 % (small,
  0.25–0.5 of the core radius) vs 90 % (0.6–0.9); intensity heterogeneity amplitude 3–6 % vs
  10–16 %; T2–FLAIR mismatch in the non-enhancing core (T2 up to 25 % brighter than edema, FLAIR
  25–45 % darker), absent in wildtype. Age also widens the ventricles (0.8 % per year from 50).
- **MGMT** methylated with p = 0.85 (IDH-mutant) / 0.45 (IDH-wildtype): a fine band-pass texture
  (difference of Gaussians, sigma 0.5 and 1.0 voxel) of 5–8 % amplitude multiplies FLAIR in the
  edema. Tumour heterogeneity is kept coarser (blotches of >= 3 voxels) so it does not drown this.
- **1p/19q codeletion** in 40 % of IDH-mutants only (0 for wildtype): tumour centre anterior
  (frontal; y in 0.3–0.65 of the brain semi-axis vs -0.6–0.45), and 2–20 calcification-like
  spots (Gaussian sigma 0.9 voxel) in the tumour bulk, darkening T2 by 80 %, T1ce 60 %, FLAIR
  50 %, T1 30 % at their centre.
- **Spatial arrangement** (hard for rotation-invariant handcrafted features): the necrotic core
  is pushed from the tumour centre towards the brain centre (midline / ventricles) by ``ecc`` x
  (core radius - minimal rim); ``ecc`` = 0.55 (wildtype) or 0.08 (mutant) + 0.15·z_ecc, z_ecc ~ N(0, 1)
  independent of everything else, and z_ecc enters the survival risk (+0.4 per SD, when necrosis
  exists) on its own.
- **Absolute volume** (hard for a CNN on a crop resized to a fixed size): z_vol ~ N(0, 1) shifts
  the log whole-tumour volume (0.4 per SD) and enters the survival risk (+0.3 per SD) on its own.
- **Survival**: Weibull (shape 1.4) proportional hazards on the log-risk
  ``1.0·IDH-wt + 0.6·MGMT-unmethylated - 0.4·codeleted + 0.03·(age - 55) + 0.3·z_vol
  + 0.4·z_ecc·[necrosis]``; median event time ~680 days (IDH-wt ~400, IDH-mutant ~1800); independent
  uniform censoring on 60–3600 days leaves about 70 % events.
- **Grade** 2/3/4 follows IDH and necrosis (wildtype 4, or 3/4 without necrosis; mutant 4 or 3 with
  necrosis, 3 with enhancement, else 2 or 3; codeleted at most 3). **Sex** is random (55 % M).
- **Sites** "A", "B", ... assigned uniformly, independently of biology; per site and sequence a
  multiplicative scale (0.75–1.35), an additive offset (±60), Gaussian noise (std 10–35), blur
  (sigma 0–0.9 voxels) and a smooth bias field (3–12 %).
- **Missing labels**: MGMT and codeletion are unknown (empty cell) with probability
  ``missing_rate``, IDH with ``missing_rate / 2``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from radfusion.data.synthetic_anatomy import (
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

#: Bump when a change alters the generated data, so cached cohorts are regenerated.
GENERATOR_VERSION = 1

# Survival model (days). The scale and the censoring window were calibrated by simulating the
# latent model (2e4 subjects): median event time ~680 days (IDH-wt ~400, IDH-mut ~1800), ~70 %
# events. Uniform censoring mimics staggered accrual with a ~10-year follow-up window.
_WEIBULL_SHAPE = 1.4
_WEIBULL_SCALE = 1000.0
_RISK_CENTRE = 0.70     # population mean log-risk, so the scale is that of a typical subject
_CENSOR_DAYS = (60.0, 3600.0)

_LOG_VOL_FRAC = np.log(0.028)   # log whole-tumour volume / brain volume for an IDH-mutant


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Independent stream per (seed, key): subject i is the same whatever ``n_subjects`` is."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _site_names(n_sites: int) -> list[str]:
    return [chr(ord("A") + k) for k in range(n_sites)]


def _sample_subject(seed: int, index: int, n_sites: int, missing_rate: float) -> dict:
    """All latent variables of one subject (no images): biology, tumour design, survival, masking."""
    rng = _rng(seed, 0, index, 0)
    idh = bool(rng.random() < 0.40)
    mgmt = bool(rng.random() < (0.85 if idh else 0.45))
    codel = bool(idh and rng.random() < 0.40)
    age = float(np.clip(rng.normal(40.0 if idh else 62.0, 10.0), 18.0, 89.0))
    sex = "M" if rng.random() < 0.55 else "F"
    site = _site_names(n_sites)[int(rng.integers(n_sites))]
    z_vol, z_ecc = (float(z) for z in rng.standard_normal(2))

    vol_frac = float(np.clip(np.exp(_LOG_VOL_FRAC + 0.5 * (not idh) + 0.4 * z_vol), 0.006, 0.16))
    has_ncr = bool(rng.random() < (0.35 if idh else 0.90))
    et_mode = ("none" if rng.random() < 0.30 else "patchy") if idh else "rim"
    hemi = 1.0 if rng.random() < 0.5 else -1.0
    centre = np.array([hemi * rng.uniform(0.18, 0.5),
                       rng.uniform(0.3, 0.65) if codel else rng.uniform(-0.6, 0.45),
                       rng.uniform(-0.2, 0.45)])
    r_wt = vol_frac ** (1 / 3)
    # Pull the centre in so that most of the tumour lies inside the brain (the rest is clipped).
    centre *= min(1.0, max(0.0, 0.95 - 1.25 * r_wt) / (np.linalg.norm(centre) + 1e-9))
    lat = dict(
        idh=int(idh), mgmt=int(mgmt), codel=int(codel), age=round(age, 1), sex=sex, site=site,
        z_vol=z_vol, z_ecc=z_ecc, vol_frac=vol_frac, r_wt=r_wt, has_ncr=int(has_ncr), et_mode=et_mode,
        centre_x=float(centre[0]), centre_y=float(centre[1]), centre_z=float(centre[2]),
        core_frac=float(rng.uniform(0.35, 0.6) if idh else rng.uniform(0.55, 0.8)),
        ncr_frac=float((rng.uniform(0.25, 0.5) if idh else rng.uniform(0.6, 0.9)) * has_ncr),
        ecc=float(np.clip((0.08 if idh else 0.55) + 0.15 * z_ecc, 0.0, 0.95)),
        et_patch_frac=float(rng.uniform(0.15, 0.5)) if et_mode == "patchy" else 0.0,
        et_gain=float(rng.uniform(0.75, 0.9) if idh else rng.uniform(0.95, 1.1)),
        mismatch=float(rng.uniform(0.6, 1.0)) if idh else 0.0,
        het_amp=float(rng.uniform(0.03, 0.06) if idh else rng.uniform(0.10, 0.16)),
        mgmt_amp=float(rng.uniform(0.05, 0.08)) if mgmt else 0.0,
        head_scale=float(rng.normal(1.0, 0.03)),
    )
    # Grade: WHO-like, from IDH and the visible morphology.
    if not idh:
        grade = 4 if has_ncr or rng.random() < 0.5 else 3
    elif has_ncr:
        grade = 4 if rng.random() < 0.5 else 3
    else:
        grade = 3 if et_mode != "none" or rng.random() < 0.3 else 2
    lat["grade"] = min(grade, 3) if codel else grade

    srng = _rng(seed, 0, index, 1)
    risk = (1.0 * (not idh) + 0.6 * (not mgmt) - 0.4 * codel + 0.03 * (age - 55.0)
            + 0.3 * z_vol + 0.4 * z_ecc * has_ncr)
    lat["log_risk"] = float(risk)
    t_event = _WEIBULL_SCALE * (srng.exponential() * np.exp(-(risk - _RISK_CENTRE))) ** (1 / _WEIBULL_SHAPE)
    t_censor = srng.uniform(*_CENSOR_DAYS)
    lat["event_time_days"], lat["censor_time_days"] = float(t_event), float(t_censor)
    lat["os_days"] = max(1, int(round(min(t_event, t_censor))))
    lat["os_event"] = int(t_event <= t_censor)

    mrng = _rng(seed, 0, index, 2)
    hide = mrng.random(3) < np.array([missing_rate / 2, missing_rate, missing_rate])
    lat["idh_obs"], lat["mgmt_obs"], lat["codel_obs"] = (
        pd.NA if h else v for h, v in zip(hide, (lat["idh"], lat["mgmt"], lat["codel"]), strict=True))
    return lat


def _site_table(seed: int, n_sites: int) -> dict[str, dict[str, dict[str, float]]]:
    rng = _rng(seed, 1)
    return {site: {seq: vars(random_scanner(rng)) for seq in SEQUENCES} for site in _site_names(n_sites)}


def _render(lat: dict, shape: tuple[int, int, int], sites: dict, seed: int, index: int):
    """Images (dict of float32 arrays) and seg (uint8) of one subject."""
    rng = _rng(seed, 0, index, 3)
    anat = make_anatomy(shape, rng, head_scale=lat["head_scale"],
                        ventricle_scale=1.0 + 0.008 * (lat["age"] - 50.0))  # ventricles widen with age
    clean = healthy_images(anat)
    spec = TumourSpec(
        centre_norm=np.array([lat["centre_x"], lat["centre_y"], lat["centre_z"]]), r_wt=lat["r_wt"],
        core_frac=lat["core_frac"], ncr_frac=lat["ncr_frac"], ecc=lat["ecc"], et_mode=lat["et_mode"],
        et_patch_frac=lat["et_patch_frac"], et_gain=lat["et_gain"], mismatch=lat["mismatch"],
        het_amp=lat["het_amp"], mgmt_amp=lat["mgmt_amp"], codel=bool(lat["codel"]))
    seg = render_tumour(anat, spec, rng, clean)
    images = {seq: acquire(clean[seq], anat, ScannerParams(**sites[lat["site"]][seq]), rng)
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
    tmp = path.with_name(path.name.replace(".nii.gz", ".tmp.nii.gz"))
    img.to_filename(tmp)
    os.replace(tmp, path)  # a file either exists whole or not at all


def _key(n_subjects, shape, spacing, n_sites, seed, missing_rate) -> dict:
    return dict(generator_version=GENERATOR_VERSION, n_subjects=int(n_subjects),
                shape=[int(s) for s in shape], spacing=float(spacing), n_sites=int(n_sites),
                seed=int(seed), missing_rate=float(missing_rate))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def generate_cohort(out_dir: str | Path, n_subjects: int = 100, shape: tuple[int, int, int] = (96, 96, 96),
                    spacing: float = 1.0, n_sites: int = 4, seed: int = 0, missing_rate: float = 0.1,
                    overwrite: bool = False, progress: bool = True) -> Path:
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
        overwrite: regenerate even if a finished cohort with the same parameters exists.
        progress: show a tqdm progress bar.

    A finished cohort (params.json present with equal parameters) is returned untouched. An
    unfinished one with the same parameters is resumed: subjects whose five files exist are kept.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be three sizes >= 16 voxels, got {shape}")
    if n_subjects < 1 or not 1 <= n_sites <= 26 or spacing <= 0 or not 0.0 <= missing_rate <= 1.0:
        raise ValueError(f"invalid arguments: n_subjects={n_subjects} (>= 1), n_sites={n_sites} "
                         f"(1..26), spacing={spacing} (> 0), missing_rate={missing_rate} (0..1)")
    out = Path(out_dir)
    manifest_path, params_path, marker = out / "manifest.csv", out / "params.json", out / ".generating.json"
    key = _key(n_subjects, shape, spacing, n_sites, seed, missing_rate)
    done = _read_json(params_path)
    if not overwrite and manifest_path.exists() and done is not None and done.get("parameters") == key:
        return manifest_path

    out.mkdir(parents=True, exist_ok=True)
    params_path.unlink(missing_ok=True)  # from here until the end, the cohort counts as unfinished
    resume = not overwrite and _read_json(marker) == key
    marker.write_text(json.dumps(key))
    sites = _site_table(seed, n_sites)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    width = max(3, len(str(n_subjects - 1)))
    ids = [f"SYN_{i:0{width}d}" for i in range(n_subjects)]

    iterator = range(n_subjects)
    if progress:
        try:
            from tqdm.auto import tqdm
            iterator = tqdm(iterator, desc=f"synthetic cohort -> {out}", unit="subject")
        except ImportError:
            pass
    manifest_rows, truth_rows = [], []
    for i in iterator:
        sid = ids[i]
        lat = _sample_subject(seed, i, n_sites, missing_rate)
        folder = out / sid
        files = {k: folder / f"{sid}_{k}.nii.gz" for k in (*SEQUENCES, "seg")}
        if resume and all(f.exists() for f in files.values()):
            seg = np.asarray(nib.load(files["seg"]).dataobj, dtype=np.uint8)
        else:
            images, seg = _render(lat, shape, sites, seed, i)
            folder.mkdir(exist_ok=True)
            for seq in SEQUENCES:
                _write_nifti(images[seq], files[seq], affine)
            _write_nifti(seg, files["seg"], affine)  # last: its presence marks a complete subject
        stats = _seg_stats(seg, spacing)
        manifest_rows.append(dict(
            subject_id=sid, site=lat["site"], **{k: f"{sid}/{f.name}" for k, f in files.items()},
            age=lat["age"], sex=lat["sex"], idh=lat["idh_obs"], mgmt=lat["mgmt_obs"],
            codeletion=lat["codel_obs"], grade=lat["grade"], os_days=lat["os_days"],
            os_event=lat["os_event"], timepoint=0))
        # whole-tumour design radius in voxels, as render_tumour computes it
        semi = BRAIN_SEMI_AXES * np.asarray(shape) * lat["head_scale"]
        r_vox = lat["r_wt"] * float(np.prod(semi) ** (1 / 3))
        site_cols = {f"site_{p}_{seq}": v for seq, ps in sites[lat["site"]].items() for p, v in ps.items()}
        truth = {k: v for k, v in lat.items() if not k.endswith("_obs")}
        truth.update(subject_id=sid, r_wt_mm=r_vox * spacing,
                     n_calc_spots=n_calcifications(r_vox) if lat["codel"] else 0, **stats, **site_cols)
        truth_rows.append(truth)

    _remove_stale_subjects(out, set(ids))
    columns = ["subject_id", "site", *SEQUENCES, "seg", "age", "sex", "idh", "mgmt", "codeletion",
               "grade", "os_days", "os_event", "timepoint"]
    manifest = pd.DataFrame(manifest_rows, columns=columns)
    for col in ("idh", "mgmt", "codeletion"):
        manifest[col] = manifest[col].astype("Int64")  # writes 1 / 0 / empty, never 1.0
    manifest.to_csv(manifest_path, index=False)
    truth = pd.DataFrame(truth_rows)
    truth = truth[["subject_id", *[c for c in truth.columns if c != "subject_id"]]]
    truth.to_csv(out / "ground_truth.csv", index=False)
    params = dict(parameters=key, sites=sites, effects=_effects_text(),
                  files=dict(manifest="manifest.csv", ground_truth="ground_truth.csv",
                             labels={"NCR": 1, "ED": 2, "ET": 4}))
    params_path.write_text(json.dumps(params, indent=2))
    marker.unlink(missing_ok=True)
    return manifest_path


def _remove_stale_subjects(out: Path, keep: set[str]) -> None:
    """Delete subject folders of an earlier, larger cohort (only folders named like ours)."""
    for folder in out.iterdir():
        if folder.is_dir() and re.fullmatch(r"SYN_\d{3,}", folder.name) and folder.name not in keep:
            shutil.rmtree(folder)


def _effects_text() -> dict[str, str]:
    """The planted effects in words, for params.json (the module docstring has the numbers)."""
    return {
        "disclaimer": "Synthetic data: exercises the machinery, proves nothing clinical.",
        "idh": "p=0.40 mutant; mutant: younger (N(40,10) vs N(62,10)), smaller tumours, patchy or no "
               "enhancement (30% of mutants have no ET), necrosis in 35% (vs 90%), homogeneous "
               "texture, T2-FLAIR mismatch in the non-enhancing core, longer survival",
        "mgmt": "p=0.85 (IDH-mut) / 0.45 (IDH-wt) methylated; fine band-pass texture (5-8%) on FLAIR "
                "in edema; longer survival",
        "codeletion": "IDH-mutant only (40%), 0 for IDH-wt; anterior (frontal) centre; "
                      "calcification-like dark spots on T2/T1ce",
        "spatial": "necrotic core offset towards the brain centre (IDH-wt ecc 0.55, mutant 0.08, "
                   "+0.15*z_ecc); z_ecc raises risk independently (+0.4/SD)",
        "volume": "log tumour volume +0.5 for IDH-wt and +0.4*z_vol; z_vol raises risk independently "
                  "(+0.3/SD)",
        "survival": "Weibull shape 1.4 on log-risk 1.0*IDHwt + 0.6*MGMTunmeth - 0.4*codel + "
                    "0.03*(age-55) + 0.3*z_vol + 0.4*z_ecc*necrosis; uniform censoring, ~70% events",
        "sites": "uniform assignment, independent of biology; per site and sequence scale, offset, "
                 "noise, blur, bias field",
        "missing": "MGMT and codeletion unknown with probability missing_rate, IDH with missing_rate/2",
    }
