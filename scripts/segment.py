"""Segment the subjects of a cohort that have no mask with a trained nnU-Net v2 model (Hydra entry point).

    python scripts/segment.py cohort.path=/data/cohort/manifest.csv model.folder=/models/<trainer>__<plans>__3d_fullres

Thin wrapper: the work lives in :func:`radfusion.segmentation.run.run_segmentation`; the configuration
is ``configs/segment.yaml`` (see ``docs/segmentation.md``).
"""

import os
from pathlib import Path

os.environ.setdefault("RADFUSION_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from radfusion.segmentation.run import run_segmentation  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="segment.yaml")
def main(cfg: DictConfig) -> None:
    run_segmentation(cfg)


if __name__ == "__main__":
    main()
