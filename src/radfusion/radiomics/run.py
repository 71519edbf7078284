"""``run_extraction(cfg)``: the work behind ``scripts/extract_features.py``.

Reads the cohort named in ``cfg.cohort`` (a ``configs/cohort/`` block: any layout
:func:`radfusion.cohort.readers.load_cohort` knows, or the built-in synthetic cohort) through
:func:`radfusion.cohort.readers.cohort_from_config`, the reader train.py and segment.py share, extracts
its habitat radiomics through the shared cache and writes, into ``cfg.output_dir``:

- ``features.parquet``: one row per subject (index ``subject_id``), columns
  ``<habitat>_<sequence>_<imagetype>_<class>_<feature>``, ``<habitat>_shape_<feature>``,
  ``<habitat>_voxels``, ``<habitat>_empty``;
- ``diagnostics.csv``: one row per subject × sequence (status, seconds, peak memory, crop box,
  voxel counts, PyRadiomics rejections, warnings, error);
- ``failures.csv``: subjects left out and why;
- ``summary.json``: counts, timings, the settings and their cache key.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from radfusion.cohort.readers import cohort_from_config
from radfusion.radiomics.extract import extract_cohort
from radfusion.radiomics.settings import FeatureSettings

log = logging.getLogger(__name__)


def run_extraction(cfg: DictConfig) -> Path:
    """Extract and write the feature table of ``cfg.cohort``; returns the output folder."""
    t0 = time.perf_counter()
    settings = FeatureSettings.from_config(cfg.features)
    cohort = cohort_from_config(cfg.cohort, progress=cfg.get("progress", True))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log.info("extracting %d subjects x %d sequences x %d habitats (%s backend, n_jobs=%s) into %s",
             len(cohort), len(settings.sequences), len(settings.habitats), settings.backend, settings.n_jobs, out)
    df = extract_cohort(cohort, settings, cfg.cache_dir, progress=cfg.get("progress", True))
    key_dir = Path(cfg.cache_dir) / settings.cache_key()
    df.to_parquet(out / "features.parquet")
    for name in ("diagnostics.csv", "failures.csv"):
        shutil.copyfile(key_dir / name, out / name)
    failures = df.attrs.get("failures", {})
    summary = {
        "subjects": len(cohort), "extracted": int(len(df)), "failed": len(failures),
        "features": int(df.shape[1]), "seconds": round(time.perf_counter() - t0, 2),
        "cache_key": settings.cache_key(), "cache_dir": str(cfg.cache_dir),
        "settings": OmegaConf.to_container(cfg.features, resolve=True),
        "label_convention": cohort.label_convention, "failures": failures,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"habitat radiomics: {len(df)} of {len(cohort)} subjects x {df.shape[1]} features in "
          f"{summary['seconds']:.1f} s -> {out / 'features.parquet'}"
          + (f"; {len(failures)} failed (see {out / 'failures.csv'})" if failures else ""))
    return out
