"""Latent biology of the synthetic cohort: markers, tumour design, survival, treatment response.

:mod:`radfusion.data.synthetic` renders and writes what these functions sample; the planted effects
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
IDH_SEPARATION = 1.2
#: Correlation of each morphology trait with the aggressiveness latent.
LOADING = 0.8

# Trait thresholds on the N(0, 1)-scaled trait; with the class means +-0.76 (effect_scale 1) they give
# necrosis in 87 % of wildtypes / 34 % of mutants, no enhancement in 12 % / 64 %, a full enhancing
# rim in 65 % / 13 %, and a T2-FLAIR mismatch in 5 % / 45 %.
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

    Sizes are relative (see :class:`radfusion.data.synthetic_anatomy.TumourSpec`); ``vol_frac`` is the
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


def sample_followup(lat: dict, seed: int, index: int, effect_scale: float = 1.0) -> dict:
    """The subject's second timepoint: ``lat`` with the tumour design changed by treatment.

    Response (responders 1, non-responders 0) has probability 0.60 if MGMT-methylated, else 0.35.
    Pseudoprogression occurs in 35 % of methylated and 20 % of unmethylated responders. With
    ``m = effect_scale``, the log whole-tumour volume changes by N(m * mu, 0.2) with mu = -0.45
    (responder), +0.35 (non-responder, true progression), +0.25 (pseudoprogression). Responders also
    lose enhancement (rim -> patchy, patches halved, T1ce gain x0.85), necrosis shrinks and
    heterogeneity drops (x0.8); progressing tumours gain enhancement and necrosis and become more
    heterogeneous (x1.25); pseudoprogression enhances as a full, brighter rim that is *homogeneous*
    (heterogeneity x0.35) without new necrosis: the documented cue that tells it from progression.
    The location, outline, anatomy, site, MGMT texture and spots stay.
    """
    m = float(effect_scale)
    rng = rng_for(seed, 0, index, 4)
    u = rng.random(6)
    z = rng.standard_normal(2)
    response = bool(u[0] < (0.60 if lat["mgmt"] else 0.35))
    pseudo = bool(response and u[1] < (0.35 if lat["mgmt"] else 0.20))
    mu = 0.25 if pseudo else -0.45 if response else 0.35
    log_change = m * mu + 0.2 * z[0]
    vol_frac = float(np.clip(lat["vol_frac"] * np.exp(log_change), 0.004, 0.2))
    # The core shrinks more than the edema in responders and grows more in progression.
    core_frac = float(np.clip(lat["core_frac"] * np.exp(m * (-0.12 if response and not pseudo else 0.08)
                                                          + 0.05 * z[1]), 0.2, 0.9))
    new = dict(lat, timepoint=1, response=int(response), pseudoprogression=int(pseudo),
               design_log_volume_change=float(log_change), vol_frac=vol_frac, r_wt=vol_frac ** (1 / 3),
               core_frac=core_frac, days_from_baseline=int(56 + 64 * u[2]))
    mode, frac = lat["et_mode"], lat["et_patch_frac"]
    if pseudo:
        new.update(et_mode="rim", et_patch_frac=0.0, et_gain=min(1.2, lat["et_gain"] * (1 + 0.1 * m)),
                   het_amp=lat["het_amp"] * (1 - 0.65 * min(m, 1.0)))
    elif response:
        if mode == "rim":
            mode, frac = "patchy", 0.5 + 0.3 * u[3]
        elif mode == "patchy":
            frac = max(0.1, 0.5 * frac)
        new.update(et_mode=mode, et_patch_frac=frac, et_gain=lat["et_gain"] * (1 - 0.15 * min(m, 1.0)),
                   ncr_frac=lat["ncr_frac"] * 0.8, het_amp=lat["het_amp"] * (1 - 0.2 * min(m, 1.0)))
    else:
        if mode == "none" and u[4] < 0.5:
            mode, frac = "patchy", 0.2 + 0.2 * u[3]
        elif mode == "patchy":
            frac = min(0.9, 1.5 * frac)
        ncr = lat["ncr_frac"]
        ncr = min(0.9, 1.15 * ncr) if ncr > 0 else (0.35 if u[5] < 0.4 else 0.0)
        new.update(et_mode=mode, et_patch_frac=frac, ncr_frac=ncr, has_ncr=int(ncr > 0),
                   het_amp=lat["het_amp"] * (1 + 0.25 * m))
    return new
