"""``run_extraction(cfg)``: the work behind ``scripts/extract_features.py``.

Reads the cohort named in ``cfg.cohort`` (a ``configs/cohort/`` block: any layout
:func:`radfusion.cohort.readers.load_cohort` knows, or the built-in synthetic cohort) and validates it
up front exactly as train.py does (:func:`radfusion.cohort.readers.read_validated_cohort`: the block's
``geometry_tolerance``, ``skip_invalid``, brain mask and missing-sequence choices), extracts its habitat
radiomics through the shared cache and writes, into ``cfg.output_dir``:

- ``features.parquet``: one row per subject (index ``subject_id``), columns
  ``<habitat>_<sequence>_<imagetype>_<class>_<feature>``, ``<habitat>_shape_<feature>``,
  ``<habitat>_voxels``, ``<habitat>_empty``;
- ``diagnostics.csv``: one row per subject × sequence (status, seconds, peak memory, crop box,
  voxel counts, PyRadiomics rejections, warnings, error);
- ``failures.csv``: subjects left out, the step (``validation`` with ``skip_invalid``, or
  ``extraction``) and why;
- ``summary.json``: counts, timings, the settings and their cache key;
- ``ibsi_names.csv``: IBSI name, code and tag of every column with an IBSI counterpart
  (:mod:`radfusion.radiomics.ibsi`, ``docs/ibsi.md``);
- ``manifest.json``: provenance (:mod:`radfusion.provenance`): command, versions, input checksums, the
  table's sha1 (a later ``data=feature_table`` run on it records the same hash as its cohort's).

A table that lacks subjects is not a success: with any subject left out, :func:`run_extraction`
raises :class:`ExtractionFailed` after writing everything (the script exits non-zero) unless
``allow_failures=true`` says the partial table is what the user wants. A cache that cannot be written
is found before any work (:func:`radfusion.cache.ensure_writable`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from radfusion.cache import ensure_writable, file_sha1, write_feature_parquet
from radfusion.cohort.readers import read_validated_cohort
from radfusion.cohort.subject import CohortError
from radfusion.provenance import build_manifest, write_manifest
from radfusion.radiomics.extract import extract_cohort
from radfusion.radiomics.ibsi import ibsi_names
from radfusion.radiomics.settings import FeatureSettings

log = logging.getLogger(__name__)


class ExtractionFailed(CohortError):
    """Some subjects were left out of the feature table (and ``allow_failures`` is false).

    Raised after every output is written, so the partial table, ``failures.csv`` and ``summary.json``
    can be inspected. ``out`` is the output folder, ``failures`` maps subject to ``"<step>: <reason>"``.
    """

    def __init__(self, message: str, out: Path, failures: dict[str, str]) -> None:
        super().__init__(message)
        self.out, self.failures = out, failures


def run_extraction(cfg: DictConfig) -> Path:
    """Validate, extract and write the feature table of ``cfg.cohort``; returns the output folder.

    Raises:
        CohortError: the cohort cannot be read, or a subject fails validation without ``cohort.skip_invalid``.
        CacheWriteError: ``cfg.cache_dir`` cannot be written (read-only, full, a file in the way).
        ExtractionFailed: subjects were left out (validation with ``skip_invalid``, or extraction) and
            ``cfg.allow_failures`` is false.
    """
    t0 = time.perf_counter()
    settings = FeatureSettings.from_config(cfg.features)
    progress = cfg.get("progress", True)
    ensure_writable(cfg.cache_dir, "feature cache")  # before validation, which may take minutes
    cohort = read_validated_cohort(cfg.cohort, progress=progress, min_subjects=1,  # train.py's validation cache
                                   cache_dir=OmegaConf.select(cfg, "paths.cache_dir"))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log.info("extracting %d subjects x %d sequences x %d habitats (%s backend, n_jobs=%s) into %s",
             len(cohort), len(settings.sequences), len(settings.habitats), settings.backend, settings.n_jobs, out)
    df = extract_cohort(cohort, settings, cfg.cache_dir, progress=progress)
    key_dir = Path(cfg.cache_dir) / settings.cache_key()
    write_feature_parquet(df, out / "features.parquet")
    ibsi_names(df.columns).to_csv(out / "ibsi_names.csv", index=False)
    shutil.copyfile(key_dir / "diagnostics.csv", out / "diagnostics.csv")
    steps = [("validation", sid, why) for sid, why in cohort.excluded.items()]
    steps += [("extraction", sid, why) for sid, why in df.attrs.get("failures", {}).items()]
    pd.DataFrame({"subject_id": [s for _, s, _ in steps], "step": [t for t, _, _ in steps],
                  "error": [w for _, _, w in steps]}).to_csv(out / "failures.csv", index=False)
    failures = {sid: f"{step}: {why}" for step, sid, why in steps}
    n_read = len(cohort) + len(cohort.excluded)
    summary = {
        "subjects": n_read, "extracted": int(len(df)), "failed": len(failures),
        "failed_validation": len(cohort.excluded), "failed_extraction": len(steps) - len(cohort.excluded),
        "failures_csv": str(out / "failures.csv"), "allow_failures": bool(cfg.get("allow_failures", False)),
        "features": int(df.shape[1]), "seconds": round(time.perf_counter() - t0, 2),
        "cache_key": settings.cache_key(), "cache_dir": str(cfg.cache_dir),
        "settings": OmegaConf.to_container(cfg.features, resolve=True),
        "label_convention": cohort.label_convention, "failures": failures,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_manifest(out, build_manifest(
        "extract", cfg, cohort=cohort, feature_settings=settings, excluded=failures,
        file_hashes=df.attrs.get("file_sha1"),
        extra={"features_parquet": str(out / "features.parquet"),
               "features_parquet_sha1": file_sha1(out / "features.parquet"), "n_features": int(df.shape[1])}))
    print(f"habitat radiomics: {len(df)} of {n_read} subjects x {df.shape[1]} features in "
          f"{summary['seconds']:.1f} s -> {out / 'features.parquet'}"
          + (f"; {len(failures)} failed ({summary['failed_validation']} validation, "
             f"{summary['failed_extraction']} extraction; list in {out / 'failures.csv'})" if failures else ""))
    if failures and not summary["allow_failures"]:
        first = next(iter(failures.items()))
        raise ExtractionFailed(
            f"{len(failures)} of {n_read} subjects failed and are not in {out / 'features.parquet'} (list in "
            f"{out / 'failures.csv'}; first: {first[0]} — {first[1]}). Fix them and rerun (the others are cached), "
            "or set allow_failures=true to accept the table without them", out, failures)
    return out
