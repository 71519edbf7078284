"""Extract habitat radiomics of any cohort into ``features.parquet`` (Hydra entry point).

    python scripts/extract_features.py cohort=brats2021 cohort.path=/data/BraTS2021 features=full

Thin wrapper: the work lives in :func:`radfusion.radiomics.run.run_extraction`; the configuration is
``configs/extract.yaml`` (see ``docs/radiomics.md``). The cohort is validated first, as by train.py.
Exit status: 0 when every subject is in the table (or ``allow_failures=true``); 1 with one line saying
what to fix when the cohort, the cache or some subjects failed (the outputs are still written then).
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("RADFUSION_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from radfusion import quiet  # noqa: E402
from radfusion.cache import CacheWriteError  # noqa: E402
from radfusion.cohort.subject import CohortError  # noqa: E402
from radfusion.radiomics.run import run_extraction  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="extract.yaml")
def main(cfg: DictConfig) -> None:
    quiet.silence_third_party()  # third-party INFO lines (pykwalify, ...) dropped, counted in one closing line
    try:
        run_extraction(cfg)
    except (CohortError, CacheWriteError) as err:  # a message for the user, not a traceback
        sys.exit(f"extract_features: {err}")
    finally:
        quiet.log_summary()


if __name__ == "__main__":
    main()
