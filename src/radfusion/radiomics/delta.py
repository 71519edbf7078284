"""Delta radiomics: per patient, how every habitat feature changed between two timepoints.

A longitudinal manifest has one row per scan (``read_manifest`` names them ``<patient>_tp<k>`` and keeps
the patient in ``clinical["patient_id"]``); the feature table has one row per scan. For each patient with
both the baseline and the follow-up scan, :func:`delta_features` gives one row (index = patient id):

- ``delta_abs_<feature>`` = follow-up − baseline (in the feature's unit: mm³, grey levels, ...);
- ``delta_rel_<feature>``: the change relative to the baseline (see :func:`relative_change`);
- ``baseline_<habitat>_empty`` and ``followup_<habitat>_empty``: whether the habitat was empty at each
  scan. A feature of a habitat empty at either scan has NaN deltas (imputed inside the training fold);
  the two flags keep the information that, e.g., enhancement appeared. ``<habitat>_voxels`` is an
  ordinary feature (0 voxels is a valid count), so volume change is always defined;
- optionally (``blocks``) the ``baseline_<feature>`` / ``followup_<feature>`` values themselves.

Labels and clinical values come from the follow-up row (that is where a response is assessed).
Nothing here is fitted, so the table can be built once for the whole cohort without leakage; the
in-fold processing (imputation, scaling, selection) happens downstream on training patients only.

The datamodule's ``longitudinal`` option applies this at patient level
(:func:`radfusion.data.prepare.to_patient_level`, ``configs/data/longitudinal.yaml``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: Column blocks :func:`delta_features` can produce.
BLOCKS: tuple[str, ...] = ("abs", "rel", "baseline", "followup")


def relative_change(before, after, kind: str = "baseline", eps: float = 1e-6, clip: float | None = 10.0) -> np.ndarray:
    """Element-wise relative change from ``before`` to ``after`` with a safe denominator.

    Args:
        before, after: arrays of equal shape (NaN propagates).
        kind: ``"baseline"``: ``(after - before) / max(|before|, eps)``, then clipped to ``[-clip, clip]``
            (a feature that starts near 0 would otherwise dominate); ``"symmetric"``:
            ``(after - before) / max((|before| + |after|) / 2, eps)``, bounded in [-2, 2] by construction
            (``clip`` unused). Both give 0 when both values are 0.
        eps: smallest denominator, in the feature's unit.
        clip: bound of the baseline-relative change (10 = ±1000 %); None = no bound.
    """
    before = np.asarray(before, dtype=np.float64)
    after = np.asarray(after, dtype=np.float64)
    diff = after - before
    if kind == "baseline":
        out = diff / np.maximum(np.abs(before), eps)
        return np.clip(out, -clip, clip) if clip is not None else out
    if kind == "symmetric":
        return diff / np.maximum((np.abs(before) + np.abs(after)) / 2.0, eps)
    raise ValueError(f"relative change kind must be 'baseline' or 'symmetric', got {kind!r}")


def patient_table(clinical: pd.DataFrame, baseline_timepoint: int = 0,
                  followup_timepoint: int = 1) -> tuple[pd.DataFrame, dict[str, str]]:
    """One clinical row per patient with both timepoints (values of the follow-up row).

    Args:
        clinical: one row per scan (index = scan id), with ``patient_id`` and ``timepoint`` columns.

    Returns:
        ``(patients, excluded)``: index ``subject_id`` = patient id; columns of the follow-up row plus
        ``baseline_subject_id`` / ``followup_subject_id`` (the scan ids); and ``{patient: reason}`` for
        patients lacking one of the two scans.
    """
    missing = [c for c in ("patient_id", "timepoint") if c not in clinical.columns]
    if missing:
        raise ValueError(f"delta radiomics needs a longitudinal cohort: the clinical table lacks {missing} "
                         "(a manifest with a timepoint column and repeated subject_id)")
    if baseline_timepoint == followup_timepoint:
        raise ValueError(f"baseline and follow-up timepoints are both {baseline_timepoint}")
    tp = pd.to_numeric(clinical["timepoint"], errors="coerce")
    bad = clinical.index[tp.isna()]
    if len(bad):
        raise ValueError(f"timepoint is missing or not a number for scan(s) {list(bad[:5])}")
    scans = pd.DataFrame({"scan": clinical.index, "patient": clinical["patient_id"].astype(str).to_numpy(),
                          "tp": tp.astype(int).to_numpy()})
    rows, excluded = [], {}
    for patient, group in scans.groupby("patient", sort=False):
        by_tp = dict(zip(group["tp"], group["scan"], strict=True))
        if baseline_timepoint not in by_tp or followup_timepoint not in by_tp:
            lacking = [t for t in (baseline_timepoint, followup_timepoint) if t not in by_tp]
            excluded[patient] = f"patient {patient}: no scan at timepoint(s) {lacking} (has {sorted(by_tp)})"
            continue
        row = clinical.loc[by_tp[followup_timepoint]].to_dict()
        row.update(subject_id=patient, patient_id=patient, baseline_subject_id=by_tp[baseline_timepoint],
                   followup_subject_id=by_tp[followup_timepoint])
        rows.append(row)
    if not rows:
        raise ValueError(f"no patient has scans at both timepoints {baseline_timepoint} and {followup_timepoint} "
                         f"(e.g. {next(iter(excluded.values()), 'no scans')})")
    patients = pd.DataFrame(rows).set_index("subject_id", drop=False)
    patients.index.name = "subject_id"
    return patients, excluded


def delta_features(features: pd.DataFrame, clinical: pd.DataFrame, baseline_timepoint: int = 0,
                   followup_timepoint: int = 1, blocks: Sequence[str] = ("abs", "rel"), relative: str = "baseline",
                   eps: float = 1e-6, clip: float | None = 10.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-patient change of every feature between two timepoints (see the module doc for the columns).

    Args:
        features: one row per scan (index = scan id), numeric habitat features (``<habitat>_empty``
            columns are treated as indicators, everything else as a feature).
        clinical: one row per scan with ``patient_id`` and ``timepoint`` (e.g. ``cohort.clinical``).
        baseline_timepoint, followup_timepoint: the two ``timepoint`` values compared.
        blocks: any of ``abs``, ``rel``, ``baseline``, ``followup`` (see :data:`BLOCKS`).
        relative, eps, clip: the relative change (see :func:`relative_change`).

    Returns:
        ``(delta, patients)``: both indexed by patient id, same order. Patients lacking a scan (in
        the clinical table or in ``features``, e.g. after a failed extraction) are left out; the
        reasons are in ``delta.attrs["excluded"]``.
    """
    unknown = sorted(set(blocks) - set(BLOCKS))
    if unknown or not blocks:
        raise ValueError(f"delta blocks must be a non-empty subset of {list(BLOCKS)}, got {list(blocks)}")
    non_numeric = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise ValueError(f"feature table has non-numeric column(s) {non_numeric[:5]}")
    patients, excluded = patient_table(clinical, baseline_timepoint, followup_timepoint)
    have = set(features.index)
    lost = [p for p, b, f in zip(patients.index, patients["baseline_subject_id"], patients["followup_subject_id"],
                                 strict=True) if b not in have or f not in have]
    for p in lost:
        scans = [s for s in patients.loc[p, ["baseline_subject_id", "followup_subject_id"]] if s not in have]
        excluded[p] = f"patient {p}: no features for scan(s) {scans} (extraction failed or not run)"
    patients = patients.drop(index=lost)
    if patients.empty:
        raise ValueError(f"no patient has features at both timepoints (e.g. {next(iter(excluded.values()))})")
    flags = [c for c in features.columns if str(c).endswith("_empty")]
    values = [c for c in features.columns if c not in flags]
    before = features.loc[patients["baseline_subject_id"], values].to_numpy(np.float64)
    after = features.loc[patients["followup_subject_id"], values].to_numpy(np.float64)
    parts = []
    if "abs" in blocks:
        parts.append(pd.DataFrame(after - before, columns=[f"delta_abs_{c}" for c in values]))
    if "rel" in blocks:
        parts.append(pd.DataFrame(relative_change(before, after, relative, eps, clip),
                                  columns=[f"delta_rel_{c}" for c in values]))
    for name, scans, block in (("baseline", patients["baseline_subject_id"], "baseline"),
                               ("followup", patients["followup_subject_id"], "followup")):
        cols = flags + (values if block in blocks else [])
        parts.append(pd.DataFrame(features.loc[scans, cols].to_numpy(np.float64),
                                  columns=[f"{name}_{c}" for c in cols]))
    delta = pd.concat(parts, axis=1)
    delta.index = pd.Index(patients.index, name="subject_id")
    delta.attrs["excluded"] = excluded
    if excluded:
        log.warning("delta radiomics: %d patient(s) left out: %s", len(excluded), "; ".join(excluded.values()))
    return delta, patients
