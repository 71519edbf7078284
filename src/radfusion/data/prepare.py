"""Everything a model needs from a cohort before any split: read, validate, extract, build ROIs.

:func:`prepare_cohort` is a plain function so that training, prediction and scripts share it
without a datamodule: it reads the cohort a config names (generating the synthetic one first),
validates it once, fills the radiomics cache (:mod:`radfusion.radiomics`) and the ROI cache
(:mod:`radfusion.imaging.roi`), and returns what survived in a :class:`PreparedCohort`. Nothing here
is fitted, so it can run on the whole cohort without leakage.

A subject whose extraction or ROI fails is left out with its reason in ``failures``; the others'
cached work is kept. A longitudinal cohort can be turned into one row per patient with delta
radiomics (:func:`to_patient_level`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.cache import atomic_save_npy, ensure_writable, settings_hash
from radfusion.cohort.feature_table import UNKNOWN_VALUES, load_feature_table
from radfusion.cohort.readers import cohort_from_config, read_validated_cohort
from radfusion.cohort.subject import Cohort, CohortError
from radfusion.imaging.roi import ROISettings, build_roi_cache
from radfusion.radiomics.delta import delta_features, patient_table
from radfusion.radiomics.extract import extract_cohort
from radfusion.radiomics.settings import FeatureSettings

log = logging.getLogger(__name__)

# Prepared cohorts of this process, for ``reuse_in_process`` (sweeps): key -> PreparedCohort.
_PREPARED: dict[str, PreparedCohort] = {}


@dataclass
class PreparedCohort:
    """A validated cohort with its cached inputs.

    Attributes:
        cohort: the validated cohort (for a feature table: no subjects, only the clinical table).
        ids: subjects that survived every step, in cohort order.
        features: raw radiomics, one row per subject (None when the model needs none).
        roi_paths: cached ROI tensor ``.npy`` per subject (None when the model needs no images).
        failures: ``{subject: reason}`` for subjects left out, the reason prefixed with the step that
            dropped it: ``validation: `` (``skip_invalid``), ``extraction: `` or ``ROI: `` (what the run's
            ``metrics.json`` lists as ``excluded_subjects``).
    """

    cohort: Cohort
    ids: list[str]
    features: pd.DataFrame | None = None
    roi_paths: dict[str, Path] | None = None
    failures: dict[str, str] = field(default_factory=dict)


def prepare_cohort(cohort_cfg: dict, features: FeatureSettings, roi: ROISettings, cache_dir: str | Path,
                   use_images: bool = True, use_radiomics: bool = True, n_jobs: int = 1, progress: bool = True,
                   reuse_in_process: bool = False, longitudinal: dict | None = None,
                   min_subjects: int = 2) -> PreparedCohort:
    """Read, validate, extract and build ROIs for the cohort of ``cohort_cfg`` (idempotent via the caches).

    Args:
        cohort_cfg: ``{source, path, clinical, label_convention, skip_invalid, geometry_tolerance,
            synthetic: {...}}``; ``source: feature_table`` reads precomputed features instead
            (``features``, ``clinical``, ``id_column``, ``label_columns``, ``unknown_values``);
            ``label_values`` adds marker spellings (:mod:`radfusion.cohort.clinical`).
        features, roi: radiomics and ROI settings (their hashes key the caches).
        cache_dir: root of the ``features/`` and ROI caches.
        use_images, use_radiomics: which inputs to prepare (the model's mode decides).
        reuse_in_process: reuse what an earlier call of this process prepared with the same settings
            and unchanged files (sweeps run many trials in one process).
        longitudinal: ``{delta: true, baseline_timepoint, followup_timepoint, image, blocks, ...}``:
            one row per patient with delta radiomics (see :func:`to_patient_level`); None: one row per scan.
        min_subjects: fewest valid subjects accepted (training needs 2; ``predict.py`` scores even one).
    """
    cache_dir = Path(cache_dir)
    if cohort_cfg["source"] == "feature_table":
        return _prepare_feature_table(cohort_cfg, use_images)
    key = None
    if reuse_in_process:
        key = _reuse_key(cohort_cfg, features, roi, cache_dir, use_images, use_radiomics, longitudinal, progress)
        if key is not None and key in _PREPARED:
            log.info("data.reuse_in_process: reusing this process's validated cohort and cache paths")
            return _PREPARED[key]
    if use_radiomics or use_images:  # a read-only or full cache is told before validation's minutes
        ensure_writable(cache_dir, "cache")
    # passed subjects are remembered in <cache>/validation/ (keyed by file stamps + settings)
    cohort = read_validated_cohort(cohort_cfg, progress=progress, min_subjects=min_subjects, cache_dir=cache_dir)
    failures: dict[str, str] = {}
    _add_failures(failures, "validation", cohort.excluded)
    table = paths = None
    if use_radiomics:
        table = extract_cohort(cohort, features, cache_dir / "features", n_jobs=n_jobs, progress=progress)
        _add_failures(failures, "extraction", table.attrs.get("failures", {}))
    if use_images:
        paths, roi_failures = build_roi_cache(cohort, roi, cache_dir, n_jobs=n_jobs, progress=progress)
        _add_failures(failures, "ROI", roi_failures)
    if failures:
        log.warning("%d subject(s) excluded after failures: %s", len(failures),
                    "; ".join(f"{k}: {v}" for k, v in sorted(failures.items())))
    prepared = PreparedCohort(cohort, [s for s in cohort.ids if s not in failures], table, paths, failures)
    opts = dict(longitudinal or {})
    if longitudinal is not None and opts.pop("delta", True):
        if "blocks" in opts:
            opts["blocks"] = tuple(opts["blocks"])
        prepared = to_patient_level(prepared, **opts)
    if key is not None:
        _PREPARED[key] = prepared
    return prepared


def _add_failures(failures: dict[str, str], stage: str, new: dict[str, str]) -> None:
    """Merge ``new`` reasons into ``failures`` as ``"<stage>: <reason>"`` (a second stage's reason is appended)."""
    for sid, reason in new.items():
        entry = f"{stage}: {reason}"
        failures[sid] = f"{failures[sid]}; {entry}" if sid in failures else entry


def _prepare_feature_table(c: dict, use_images: bool) -> PreparedCohort:
    """Precomputed features + clinical table: no image is read, so no CNN branch."""
    if use_images:
        raise CohortError("data=feature_table has no images: use a handcrafted or baseline model "
                          "(experiment=..._handcrafted / ..._baseline_*), not deep or hybrid")
    table, clinical = load_feature_table(
        c["features"], c.get("clinical"), id_column=c.get("id_column", "subject_id"),
        label_columns=c.get("label_columns"), unknown_values=c.get("unknown_values") or UNKNOWN_VALUES,
        label_values=c.get("label_values"), skip_invalid=c.get("skip_invalid", False))
    cohort = Cohort([], clinical, c.get("label_convention", "brats2021"), None)
    # Rows skip_invalid dropped (an id given twice, no id) are excluded subjects like validation's.
    failures: dict[str, str] = {}
    _add_failures(failures, "validation", table.attrs.get("invalid", {}))
    return PreparedCohort(cohort, list(clinical.index), table, None, failures)


def _reuse_key(cohort_cfg: dict, features: FeatureSettings, roi: ROISettings, cache_dir: Path, use_images: bool,
               use_radiomics: bool, longitudinal: dict | None, progress: bool) -> str | None:
    """Key of a prepared cohort: the settings, the clinical table and the size + mtime of every
    image file (an edited file makes a new key). Re-validating every image and re-checksumming the
    caches for each sweep trial would dominate a frozen-encoder trial. None when the cohort cannot
    be read (the full path then reports why)."""
    try:
        raw = cohort_from_config(cohort_cfg, progress=progress)
        files = [p for s in raw.subjects for p in (*s.images.values(), s.seg, s.brainmask) if p is not None]
        stamp = [(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in files]
        clinical = int(pd.util.hash_pandas_object(raw.clinical, index=True).sum())
    except (OSError, CohortError, ValueError, TypeError):
        return None
    return settings_hash({"cohort": cohort_cfg, "features": features.cache_key(), "roi": roi.key(),
                          "images": use_images, "radiomics": use_radiomics, "longitudinal": longitudinal,
                          "cache": str(cache_dir), "files": stamp, "clinical": clinical}, length=40)


def stack_rois(first: Path, second: Path) -> Path:
    """Baseline and follow-up ROI tensors as one (2C, S, S, S) file beside them (made once)."""
    out = Path(first).parent / f"{Path(first).stem}+{Path(second).stem}.npy"
    if not out.exists():
        atomic_save_npy(out, np.concatenate([np.load(first), np.load(second)], axis=0))
    return out


def to_patient_level(prepared: PreparedCohort, baseline_timepoint: int = 0, followup_timepoint: int = 1,
                     image: str = "followup", **delta_kwargs) -> PreparedCohort:
    """A scan-level prepared cohort as one row per patient.

    ``features`` becomes the delta table (:func:`radfusion.radiomics.delta.delta_features`), the
    cohort a cohort of patients (clinical table of :func:`~radfusion.radiomics.delta.patient_table`),
    ``ids`` the patient ids and, for the CNN branch, ``roi_paths[patient]`` the ROI of the ``image``
    scan: ``followup``, ``baseline`` or ``both`` (channels stacked: baseline then follow-up, so
    ``model.encoder.in_channels`` doubles). Excluded patients join ``failures``.
    """
    if image not in ("followup", "baseline", "both"):
        raise ValueError(f"data.longitudinal.image must be followup, baseline or both, got {image!r}")
    clinical = prepared.cohort.clinical.loc[prepared.ids]
    table = prepared.features
    if table is not None:
        table, patients = delta_features(table.loc[[s for s in prepared.ids if s in table.index]], clinical,
                                         baseline_timepoint, followup_timepoint, **delta_kwargs)
        excluded = table.attrs["excluded"]
    else:
        patients, excluded = patient_table(clinical, baseline_timepoint, followup_timepoint)
    paths = prepared.roi_paths
    if paths is not None:
        scans = zip(patients.index, patients["baseline_subject_id"], patients["followup_subject_id"], strict=True)
        if image == "both":
            paths = {p: stack_rois(paths[b], paths[f]) for p, b, f in scans}
        else:
            paths = {p: paths[b if image == "baseline" else f] for p, b, f in scans}
    cohort = Cohort([], patients, prepared.cohort.label_convention, prepared.cohort.root)
    log.info("longitudinal: %d patients (timepoint %d -> %d), %d excluded", len(patients), baseline_timepoint,
             followup_timepoint, len(excluded))
    return replace(prepared, cohort=cohort, ids=list(patients.index), features=table, roi_paths=paths,
                   failures={**prepared.failures, **excluded})
