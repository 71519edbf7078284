"""Hydra configs composed from the real ``configs/`` (as the entry points compose them), and the overrides
that shrink a run to the tiny synthetic cohort the end-to-end tests share."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from helpers.paths import CONFIG_DIR

#: Tiny synthetic cohort used by the end-to-end tests (seconds to generate and extract).
TINY: dict[str, Any] = {"n_subjects": 20, "shape": (40, 40, 40), "seed": 4, "n_sites": 2}


def compose_config(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """``configs/<config_name>`` with ``overrides``, composed the way ``@hydra.main`` would (no hydra node).

    Clears Hydra's global state first, so tests can compose one config after another.
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=False)


def compose_train_cfg(overrides: list[str]) -> DictConfig:
    """The real ``configs/train.yaml`` with ``overrides``."""
    return compose_config("train.yaml", overrides)


def tiny_data_overrides(cohort_dir: Path | str, synthetic: Mapping[str, Any] = TINY) -> list[str]:
    """The ``data.*`` overrides every end-to-end run on a small synthetic cohort uses.

    ``synthetic`` must be the arguments the cohort was generated with: the datamodule regenerates the
    cohort from ``data.cohort.synthetic`` when the manifest is missing, so the two must agree. A quarter of the
    subjects each for validation and test, 16³ ROIs and one worker keep a run CPU-sized.
    """
    shape = ",".join(str(s) for s in synthetic["shape"])
    return [
        f"data.cohort.path={cohort_dir}",
        f"data.cohort.synthetic.n_subjects={synthetic['n_subjects']}",
        f"data.cohort.synthetic.shape=[{shape}]",
        f"data.cohort.synthetic.seed={synthetic['seed']}",
        f"data.cohort.synthetic.n_sites={synthetic['n_sites']}",
        "data.split.val_fraction=0.25",
        "data.split.test_fraction=0.25",
        "data.roi.size=16",
        "data.roi.min_extent_mm=12",
        "data.n_jobs=1",
        "data.progress=false",
    ]
