"""Latent biology of the synthetic cohort: markers, tumour design, survival, treatment response.

:mod:`radfusion.synthetic.generator` renders and writes what these functions sample; the planted effects
are documented there (module docstring) and in ``params.json``. Everything here is cheap (no images),
so the effect sizes can be checked by simulating thousands of subjects.

How overlap is made (and what ``effect_scale`` scales): the morphology of a tumour follows one
latent *aggressiveness* ``a = effect_scale * IDH_SEPARATION / 2 * (+1 wildtype, -1 mutant) + N(0, 1)``.
Five traits (core size, necrosis, enhancement, heterogeneity, T2-FLAIR mismatch) are each
``LOADING * a + sqrt(1 - LOADING^2) * N(0, 1)`` mapped through thresholds or the normal CDF, so a
wildtype tumour with low ``a`` looks lower-grade in several ways at once (as real ones do) and the
traits together carry little more IDH information than ``a`` alone. Volume and necrosis
eccentricity get their own noise, independent of ``a``: they are the signals one branch captures
and the other misses, which is what fusion can add.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtr

#: Separation (in SD of the aggressiveness latent) between IDH-wildtype and IDH-mutant at effect_scale 1.
#: Calibrated so that a cross-validated L2 logistic regression on the default habitat radiomics of the
#: default cohort reaches an IDH AUC of ~0.8 (1.9 gave 0.92; the earlier generator 1.00).
IDH_SEPARATION = 1.2
#: Correlation of each morphology trait with the aggressiveness latent.
LOADING = 0.8

# Trait thresholds on the N(0, 1)-scaled trait; with the class means +-0.48 (effect_scale 1) they give
# necrosis in 81 % of wildtypes / 45 % of mutants, no enhancement in 14 % / 47 %, a full enhancing
# rim in 52 % / 19 %, and a T2-FLAIR mismatch in 8 % / 34 % (checked by simulating 4000 subjects).
_NCR_THRESHOLD = -0.35
_ET_NONE_BELOW = -0.6
_ET_PATCHY_BELOW = 0.375
_MISMATCH_BELOW = -0.886

# Survival model (days). The scale and the censoring window were calibrated by simulating the
# latent model (2e4 subjects): median event time ~680 days (IDH-wt ~400, IDH-mut ~1800), ~70 %
# events. Uniform censoring mimics staggered accrual with a ~10-year follow-up window.
_WEIBULL_SHAPE = 1.4
_WEIBULL_SCALE = 1000.0
_RISK_CENTRE = 0.70     # population mean log-risk, so the scale is that of a typical subject
_CENSOR_DAYS = (60.0, 3600.0)

_LOG_VOL_FRAC = np.log(0.035)   # log whole-tumour volume / brain volume, between the IDH classes
_VOL_SHIFT = 0.15               # +- per IDH class at effect_scale 1 (log units; z_vol has SD 0.4)


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """Independent stream per (seed, key): subject i is the same whatever ``n_subjects`` is."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def site_names(n_sites: int) -> list[str]:
    return [chr(ord("A") + k) for k in range(n_sites)]


def sample_subject(seed: int, index: int, n_sites: int, missing_rate: float, effect_scale: float = 1.0) -> dict:
    """All latent variables of one subject at baseline (no images): biology, tumour design, survival.

    Sizes are relative (see :class:`radfusion.synthetic.anatomy.TumourSpec`); ``vol_frac`` is the
    design whole-tumour volume as a fraction of the brain. Every subject draws the same number of
    random numbers whatever its class, so changing a probability does not reshuffle other subjects.
    """
    s = float(effect_scale)
    rng = rng_for(seed, 0, index, 0)
    u = rng.random(8)
    idh = bool(u[0] < 0.40)
    mgmt = bool(u[1] < (0.85 if idh else 0.45))
    codel = bool(idh and u[2] < 0.40)
    sex = "M" if u[3] < 0.55 else "F"
    site = site_names(n_sites)[int(rng.integers(n_sites))]
    z = rng.standard_normal(10)
    age = float(np.clip((40.0 if idh else 62.0) + 10.0 * z[0], 18.0, 89.0))
    z_vol, z_ecc = float(z[1]), float(z[2])
    sign = -1.0 if idh else 1.0   # +1 = IDH-wildtype, the aggressive direction
    aggr = 0.5 * IDH_SEPARATION * s * sign + z[3]
    z_core, z_ncr, z_et, z_het, z_mm = LOADING * aggr + np.sqrt(1 - LOADING ** 2) * z[4:9]

    vol_frac = float(np.clip(np.exp(_LOG_VOL_FRAC + _VOL_SHIFT * s * sign + 0.4 * z_vol), 0.006, 0.16))
    has_ncr = bool(z_ncr > _NCR_THRESHOLD)
    et_mode = "none" if z_et < _ET_NONE_BELOW else "patchy" if z_et < _ET_PATCHY_BELOW else "rim"
    # Calcification-like spots: in 75 % of codeleted tumours and 10 % of other IDH-mutants (real
    # calcification is common in, not exclusive to, oligodendroglioma); codeleted spots are more
    # numerous and darker, and both scale with effect_scale.
    spots = bool(u[4] < 0.75) if codel else bool(idh and u[4] < 0.10)
    spot_count = float(rng.uniform(0.3, 1.0) if codel else 0.1) if spots else 0.0
    spot_depth = float(np.clip(s * rng.uniform(0.45, 0.85), 0.0, 1.0)) if spots and codel else (
        float(rng.uniform(0.2, 0.4)) if spots else 0.0)
    hemi = 1.0 if u[5] < 0.5 else -1.0
    v = rng.random(4)
    # Frontal (anterior, y > 0) shift of codeleted tumours; the ranges overlap.
    y = float(np.clip(-0.6 + 1.05 * v[1] + 0.3 * s * codel, -0.6, 0.65))
    centre = np.array([hemi * (0.18 + 0.32 * v[0]), y, -0.2 + 0.65 * v[2]])
    r_wt = vol_frac ** (1 / 3)
    # Pull the centre in so that most of the tumour lies inside the brain (the rest is clipped).
    centre *= min(1.0, max(0.0, 0.95 - 1.25 * r_wt) / (np.linalg.norm(centre) + 1e-9))
    # MGMT: a fine FLAIR texture in edema whose log-amplitude differs by effect_scale between classes.
    mgmt_amp = float(0.03 * np.exp(0.5 * s * (1.0 if mgmt else -1.0) + 0.35 * z[9]))
    lat = dict(
        idh=int(idh), mgmt=int(mgmt), codel=int(codel), age=round(age, 1), sex=sex, site=site,
        z_vol=z_vol, z_ecc=z_ecc, aggressiveness=float(aggr), vol_frac=vol_frac, r_wt=r_wt,
        has_ncr=int(has_ncr), et_mode=et_mode,
        centre_x=float(centre[0]), centre_y=float(centre[1]), centre_z=float(centre[2]),
        core_frac=float(0.3 + 0.5 * ndtr(z_core)),
        ncr_frac=float((0.25 + 0.6 * ndtr(z_ncr)) * has_ncr),
        ecc=float(np.clip(0.30 + 0.15 * s * sign + 0.18 * z_ecc, 0.0, 0.95)),
        et_patch_frac=float(0.15 + 0.6 * v[3]) if et_mode == "patchy" else 0.0,
        et_gain=float(0.8 + 0.3 * ndtr(z_et)),
        mismatch=float(0.5 + 0.5 * u[6]) if z_mm < _MISMATCH_BELOW else 0.0,
        het_amp=float(0.03 + 0.12 * ndtr(z_het)),
        mgmt_amp=mgmt_amp, spot_count=spot_count, spot_depth=spot_depth,
        head_scale=float(1.0 + 0.03 * rng.standard_normal()),
    )
    # Grade: WHO-like, from IDH and the visible morphology.
    if not idh:
        grade = 4 if has_ncr or u[7] < 0.5 else 3
    elif has_ncr:
        grade = 4 if u[7] < 0.5 else 3
    else:
        grade = 3 if et_mode != "none" or u[7] < 0.3 else 2
    lat["grade"] = min(grade, 3) if codel else grade

    srng = rng_for(seed, 0, index, 1)
    risk = (1.0 * (not idh) + 0.6 * (not mgmt) - 0.4 * codel + 0.03 * (age - 55.0)
            + 0.3 * z_vol + 0.4 * z_ecc * has_ncr)
    lat["log_risk"] = float(risk)
    t_event = _WEIBULL_SCALE * (srng.exponential() * np.exp(-(risk - _RISK_CENTRE))) ** (1 / _WEIBULL_SHAPE)
    t_censor = srng.uniform(*_CENSOR_DAYS)
    lat["event_time_days"], lat["censor_time_days"] = float(t_event), float(t_censor)
    lat["os_days"] = max(1, int(round(min(t_event, t_censor))))
    lat["os_event"] = int(t_event <= t_censor)

    mrng = rng_for(seed, 0, index, 2)
    hide = mrng.random(3) < np.array([missing_rate / 2, missing_rate, missing_rate])
    lat["idh_obs"], lat["mgmt_obs"], lat["codel_obs"] = (
        pd.NA if h else v for h, v in zip(hide, (lat["idh"], lat["mgmt"], lat["codel"]), strict=True))
    return lat


#: Mean log-factor of each design quantity from baseline to follow-up (at effect_scale 1) per group,
#: and the SD of its subject-level noise. Every change is noisy, so no single delta feature
#: separates the groups; the volume change carries most of the signal.
_FOLLOWUP_LOG_CHANGE: dict[str, tuple[float, float, float, float]] = {
    #                 responder, pseudoprogression, progression, noise SD
    "vol_frac":       (-0.35, 0.20, 0.30, 0.35),
    "core_frac":      (-0.10, 0.05, 0.05, 0.08),
    "ncr_frac":       (-0.15, 0.00, 0.10, 0.10),
    "et_gain":        (-0.08, 0.08, 0.00, 0.06),
    "het_amp":        (-0.10, -0.70, 0.10, 0.35),
}


def sample_followup(lat: dict, seed: int, index: int, effect_scale: float = 1.0) -> dict:
    """The subject's second timepoint: ``lat`` with the tumour design changed by treatment.

    Response (1) has probability 0.60 if MGMT-methylated, else 0.35. Pseudoprogression occurs in
    35 % of methylated and 20 % of unmethylated responders (it counts as response). Each design
    quantity changes by ``exp(effect_scale * mean + sd * N(0, 1))`` with the group means of
    :data:`_FOLLOWUP_LOG_CHANGE`: responders shrink (whole tumour, core, necrosis) and lose
    enhancement and heterogeneity; true progression grows; pseudoprogression grows a little and
    enhances more but its tissue turns homogeneous (heterogeneity ~x0.5), the documented cue that
    tells it from progression. Enhancement patterns change with probability ``min(effect_scale, 1)``
    times: responders rim -> patchy 50 % (patches shrink), pseudoprogression -> full rim 80 %,
    progression none -> patchy 40 % (patches grow) and new necrosis 30 %. Location, outline,
    anatomy, site, MGMT texture and spots stay.
    """
    m = float(effect_scale)
    p = min(m, 1.0)
    rng = rng_for(seed, 0, index, 4)
    u = rng.random(8)
    z = rng.standard_normal(len(_FOLLOWUP_LOG_CHANGE) + 1)
    response = bool(u[0] < (0.60 if lat["mgmt"] else 0.35))
    pseudo = bool(response and u[1] < (0.35 if lat["mgmt"] else 0.20))
    group = 1 if pseudo else 0 if response else 2
    factor = {k: float(np.exp(m * v[group] + v[3] * zk))
              for (k, v), zk in zip(_FOLLOWUP_LOG_CHANGE.items(), z, strict=False)}
    vol_frac = float(np.clip(lat["vol_frac"] * factor["vol_frac"], 0.004, 0.2))
    new = dict(lat, timepoint=1, response=int(response), pseudoprogression=int(pseudo),
               design_log_volume_change=float(np.log(vol_frac / lat["vol_frac"])), vol_frac=vol_frac,
               r_wt=vol_frac ** (1 / 3), core_frac=float(np.clip(lat["core_frac"] * factor["core_frac"], 0.2, 0.9)),
               ncr_frac=float(min(0.9, lat["ncr_frac"] * factor["ncr_frac"])),
               et_gain=float(np.clip(lat["et_gain"] * factor["et_gain"], 0.6, 1.3)),
               het_amp=float(np.clip(lat["het_amp"] * factor["het_amp"], 0.005, 0.25)),
               days_from_baseline=int(56 + 64 * u[2]))
    mode, frac = lat["et_mode"], lat["et_patch_frac"]
    patch_change = float(np.exp(0.4 * m * (-1 if group == 0 else 1) + 0.3 * z[-1]))
    if group == 1 and u[3] < 0.8 * p:
        mode, frac = "rim", 0.0
    elif group == 0 and mode == "rim" and u[3] < 0.5 * p:
        mode, frac = "patchy", 0.5 + 0.3 * u[4]
    elif group == 2 and mode == "none" and u[3] < 0.4 * p:
        mode, frac = "patchy", 0.2 + 0.2 * u[4]
    elif mode == "patchy":
        frac = float(np.clip(frac * patch_change, 0.1, 0.9))
    if group == 2 and lat["ncr_frac"] == 0 and u[5] < 0.3 * p:
        new["ncr_frac"] = 0.35  # new necrosis
    new.update(et_mode=mode, et_patch_frac=frac, has_ncr=int(new["ncr_frac"] > 0))
    return new
