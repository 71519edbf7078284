"""Feature stability under segmentation perturbations: perturbed masks and ICC(3,1).

A feature that changes when the tumour outline moves by one voxel measures the outline, not the
tumour. We re-extract every feature under small mask perturbations (Zwanenburg et al. 2019,
*Sci Rep* 9:614): the original mask, erosion and dilation by one voxel, and random boundary noise;
then compute per feature the two-way mixed, consistency, single-measure ICC(3,1) (Shrout & Fleiss
1979) with subjects as targets and perturbations as the fixed "raters".

The habitats are nested (NCR ⊂ TC ⊂ WT), so the label map is perturbed as one *rank* image
(background 0, edema 1, enhancing 2, necrosis 3): grey-level dilation/erosion of the rank image
with a flat structuring element dilates/erodes every nested region at once by exactly one voxel
(thresholding commutes with flat morphology), and the result is again a valid label map. Dilation
stays inside the brain (non-zero voxels of the first image).

``FeatureProcessor(min_icc=..., icc_table=...)`` drops features rated below the threshold.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage, stats

from radfusion.cohort.habitats import convention_label_sets, convention_labels
from radfusion.cohort.subject import GEOMETRY_TOLERANCE

log = logging.getLogger(__name__)

PERTURBATIONS = ("erode", "dilate", "noise")


# --------------------------------------------------------------------------------------------
# Mask perturbations
# --------------------------------------------------------------------------------------------

def _rank_codes(convention: str | dict) -> np.ndarray:
    """Label values from outside in: background, ED, ET, NCR."""
    lab = convention_labels(convention)
    return np.array([0, lab["ED"], lab["ET"], lab["NCR"]])


def perturb_labels(seg: np.ndarray, kind: str, convention: str | dict = "brats2021", brain: np.ndarray | None = None,
                   seed: int = 0, noise_fraction: float = 0.3, connectivity: int = 1) -> np.ndarray:
    """A perturbed copy of an integer label map.

    Args:
        seg: (z, y, x) labels of ``convention`` (0 background).
        kind: ``erode`` / ``dilate`` (every nested region by one voxel) or ``noise`` (each voxel on
            a region boundary moves the boundary by one voxel, in or out at random, with
            probability ``noise_fraction``).
        brain: voxels the tumour may grow into (default: everywhere).
        seed: for ``noise``.
        connectivity: 1 (6-neighbourhood, one voxel along an axis) to 3 (26-neighbourhood).

    Returns:
        Label map of the same shape and dtype.
    """
    codes = _rank_codes(convention)
    # Every label of a part has its part's rank (BraTS 2015 NCR = [1, 3]); the result writes each part's first label.
    sets = convention_label_sets(convention)
    rank_of = {0: 0, **{label: rank for rank, part in enumerate(("ED", "ET", "NCR"), 1) for label in sets[part]}}
    bad = sorted(set(np.unique(seg).tolist()) - set(rank_of))
    if bad:
        raise ValueError(f"labels {bad} outside the {convention} convention {sorted(rank_of)}")
    rank = np.zeros(seg.shape, dtype=np.int8)
    for code, r in rank_of.items():
        rank[seg == code] = r
    footprint = ndimage.generate_binary_structure(3, connectivity)
    grown = ndimage.grey_dilation(rank, footprint=footprint)
    shrunk = ndimage.grey_erosion(rank, footprint=footprint)
    if brain is not None:
        grown = np.where(brain | (rank > 0), grown, rank)
    if kind == "dilate":
        out = grown
    elif kind == "erode":
        out = shrunk
    elif kind == "noise":
        rng = np.random.default_rng(seed)
        move = rng.random(rank.shape) < noise_fraction
        outward = rng.random(rank.shape) < 0.5
        out = np.where(move & outward, grown, np.where(move & ~outward, shrunk, rank))
    else:
        raise ValueError(f"unknown perturbation {kind!r}; choose one of {PERTURBATIONS}")
    return codes[out].astype(seg.dtype)


# --------------------------------------------------------------------------------------------
# ICC
# --------------------------------------------------------------------------------------------

def icc_anova(Y: np.ndarray) -> dict[str, float]:
    """Shrout & Fleiss ICCs of a complete (n_targets, k_raters) table from the two-way ANOVA.

    Returns ``ICC1``, ``ICC2``, ``ICC3`` (single measures: one-way random, two-way random
    absolute agreement, two-way mixed consistency), ``ICC1k``/``ICC2k``/``ICC3k`` (average of k),
    and the ICC(3,1) 95 % CI (``ICC3_low``, ``ICC3_high``) from the F distribution.
    """
    Y = np.asarray(Y, dtype=np.float64)
    n, k = Y.shape
    if n < 2 or k < 2:
        raise ValueError(f"an ICC needs >= 2 targets and >= 2 raters, got {Y.shape}")
    grand = Y.mean()
    ss_rows = k * ((Y.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((Y.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((Y - grand) ** 2).sum() - ss_rows - ss_cols
    bms, jms = ss_rows / (n - 1), ss_cols / (k - 1)
    ems = ss_err / ((n - 1) * (k - 1))
    wms = (ss_cols + ss_err) / (n * (k - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "ICC1": (bms - wms) / (bms + (k - 1) * wms),
            "ICC2": (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n),
            "ICC3": (bms - ems) / (bms + (k - 1) * ems),
            "ICC1k": (bms - wms) / bms,
            "ICC2k": (bms - ems) / (bms + (jms - ems) / n),
            "ICC3k": (bms - ems) / bms,
        }
        f_value = bms / ems
        df1, df2 = n - 1, (n - 1) * (k - 1)
        f_low = f_value / stats.f.ppf(0.975, df1, df2)
        f_high = f_value * stats.f.ppf(0.975, df2, df1)
        out["ICC3_low"] = (f_low - 1) / (f_low + k - 1)
        out["ICC3_high"] = (f_high - 1) / (f_high + k - 1)
    return {key: float(v) for key, v in out.items()}


def icc_table(long: pd.DataFrame, subject_col: str = "subject_id", condition_col: str = "condition",
              features: Sequence[str] | None = None, min_subjects: int = 3) -> pd.DataFrame:
    """ICC(3,1) per feature from a long table (one row per subject × condition).

    Subjects missing a value under any condition (e.g. a habitat that vanished after erosion)
    are left out of that feature's ICC; ``n_subjects`` says how many were used, and with fewer
    than ``min_subjects`` the ICC is NaN (two targets give no usable estimate).

    Returns:
        DataFrame indexed by ``feature`` with ``icc``, ``ci_low``, ``ci_high``, ``n_subjects``; ``icc``
        is NaN for features with no between-subject variance or too few complete subjects.
    """
    features = [c for c in long.columns if c not in (subject_col, condition_col)] if features is None else features
    features = list(features)
    conditions = list(dict.fromkeys(long[condition_col]))
    wide = long.set_index([subject_col, condition_col])[features].unstack(condition_col)
    wide = wide.reindex(columns=pd.MultiIndex.from_product([features, conditions]))
    cube = wide.to_numpy(dtype=np.float64).reshape(len(wide), len(features), len(conditions))
    rows = []
    for j, feature in enumerate(features):
        Y = cube[:, j, :]
        Y = Y[np.isfinite(Y).all(axis=1)]
        if len(Y) < max(2, min_subjects) or Y.shape[1] < 2:
            rows.append({"feature": feature, "icc": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                         "n_subjects": len(Y)})
            continue
        res = icc_anova(Y)
        rows.append({"feature": feature, "icc": res["ICC3"], "ci_low": res["ICC3_low"], "ci_high": res["ICC3_high"],
                     "n_subjects": len(Y)})
    return pd.DataFrame(rows).set_index("feature")


def read_icc_table(table) -> pd.Series:
    """ICC per feature name from a CSV path, a DataFrame (``feature``/``icc`` columns or index) or a mapping."""
    if isinstance(table, (str, Path)):
        if not Path(table).is_file():
            raise FileNotFoundError(f"ICC table {table} does not exist (make one with scripts/stability.py)")
        table = pd.read_csv(table)
    if isinstance(table, dict):
        return pd.Series(table, dtype=np.float64)
    if isinstance(table, pd.Series):
        return table.astype(np.float64)
    if "icc" not in table.columns:
        raise ValueError(f"ICC table needs an 'icc' column, has {list(table.columns)}")
    if "feature" in table.columns:
        table = table.set_index("feature")
    return table["icc"].astype(np.float64)


# --------------------------------------------------------------------------------------------
# Re-extraction under perturbations
# --------------------------------------------------------------------------------------------

def perturbed_features(subject, settings, label_convention: str | dict = "brats2021",
                       perturbations: Sequence[str] = PERTURBATIONS, work_dir: str | Path | None = None,
                       seed: int = 0, noise_fraction: float = 0.3,
                       tolerance: float = GEOMETRY_TOLERANCE, brain_mask: str = "auto") -> pd.DataFrame:
    """Features of one subject under the original and each perturbed mask.

    Each perturbed mask is written (same geometry as the original) to ``work_dir`` (a temporary
    folder by default) and extracted with :func:`radfusion.radiomics.extract.extract_subject` on a
    copy of the subject whose ``seg`` points at it. Perturbation acts on the native grid.
    ``tolerance`` is the image/mask geometry tolerance (the cohort's ``geometry_tolerance``), ``brain_mask``
    the brain of the z-score (the cohort's ``brain_mask``).

    Returns:
        One row per condition (``original``, then ``perturbations``), columns ``subject_id``,
        ``condition`` and the features.
    """
    import SimpleITK as sitk

    from radfusion.radiomics.extract import extract_subject

    sid = subject.subject_id
    if subject.seg is None:
        raise ValueError(f"subject {sid}: no segmentation to perturb")
    seg_img = sitk.ReadImage(str(subject.seg))
    seg = sitk.GetArrayFromImage(seg_img)
    first = next(iter(subject.images.values()))
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(first))) != 0
    if brain.shape != seg.shape:
        raise ValueError(f"subject {sid}: image {first} and segmentation {subject.seg} differ in size")
    rows = []
    features, _ = extract_subject(subject, settings, label_convention, tolerance, brain_mask)
    rows.append({"subject_id": sid, "condition": "original", **features})
    subject_seed = seed + zlib.crc32(sid.encode())
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for kind in perturbations:
            arr = perturb_labels(seg, kind, label_convention, brain, subject_seed, noise_fraction)
            img = sitk.GetImageFromArray(arr)
            img.CopyInformation(seg_img)
            path = Path(tmp) / f"{sid}_seg_{kind}.nii.gz"
            sitk.WriteImage(img, str(path))
            copy = dataclasses.replace(subject, seg=path)
            features, _ = extract_subject(copy, settings, label_convention, tolerance, brain_mask)
            rows.append({"subject_id": sid, "condition": kind, **features})
    return pd.DataFrame(rows)


def _one(subject, settings, label_convention, perturbations, work_dir, seed, noise_fraction, tolerance, brain_mask):
    try:
        return perturbed_features(subject, settings, label_convention, perturbations, work_dir, seed,
                                  noise_fraction, tolerance, brain_mask), None
    except Exception as err:  # noqa: BLE001 - one bad subject must not end the study
        return None, f"subject {subject.subject_id}: {type(err).__name__}: {err} (segmentation {subject.seg})"


def stability_study(cohort, settings, perturbations: Sequence[str] = PERTURBATIONS, n_jobs: int = 1,
                    seed: int = 0, noise_fraction: float = 0.3, work_dir: str | Path | None = None,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Re-extract a cohort under perturbations and rate every feature.

    Returns:
        ``(long, icc, failures)``: the long feature table (subject × condition rows), the ICC
        table of :func:`icc_table` (book-keeping columns ``<habitat>_voxels``/``_empty`` excluded
        from neither: they are features too), and ``{subject_id: error}`` of subjects left out.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    jobs = (delayed(_one)(s, settings, cohort.label_convention, tuple(perturbations), work_dir, seed, noise_fraction,
                          cohort.geometry_tolerance, cohort.brain_mask)
            for s in cohort.subjects)
    results = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
    frames, failures = [], {}
    for subject, (frame, error) in zip(cohort.subjects, tqdm(results, total=len(cohort), disable=not progress,
                                                             desc="perturbed radiomics", unit="subject"),
                                       strict=True):
        if error:
            log.error("stability: skipping %s", error)
            failures[subject.subject_id] = error
        else:
            frames.append(frame)
    if not frames:
        raise RuntimeError(f"stability: every subject failed, e.g. {next(iter(failures.values()), '')}")
    long = pd.concat(frames, ignore_index=True)
    return long, icc_table(long), failures
