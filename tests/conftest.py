"""Shared fixtures: a tiny synthetic cohort (generated once per test session) and a Hydra
config composed from the real ``configs/train.yaml`` and shrunk to CPU-test size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(ROOT / "configs")
os.environ.setdefault("WANDB_MODE", "offline")

#: Tiny synthetic cohort used by the end-to-end tests (seconds to generate and extract).
TINY = {"n_subjects": 20, "shape": (40, 40, 40), "seed": 4, "n_sites": 2}


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """Manifest path of a 20-subject, 40³ synthetic cohort."""
    from radfusion.synthetic.generator import generate_cohort

    out = tmp_path_factory.mktemp("tiny_cohort")
    return generate_cohort(out, progress=False, **TINY)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One feature/ROI cache for the whole session, so each mode does not re-extract."""
    return tmp_path_factory.mktemp("cache")


def compose_train_cfg(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train.yaml", overrides=overrides, return_hydra_config=False)


@pytest.fixture
def cfg_factory(tiny_cohort, shared_cache, tmp_path):
    """Build a tiny, fast train config for an experiment (real train.yaml underneath)."""

    def make(experiment: str, extra: list[str] | None = None) -> DictConfig:
        cohort_dir = tiny_cohort.parent
        overrides = [
            f"experiment={experiment}",
            "logger=csv",
            f"data.cohort.path={cohort_dir}",
            f"data.synthetic.n_subjects={TINY['n_subjects']}",
            f"data.synthetic.shape=[{','.join(map(str, TINY['shape']))}]",
            f"data.synthetic.seed={TINY['seed']}",
            f"data.synthetic.n_sites={TINY['n_sites']}",
            "data.split.val_fraction=0.25",
            "data.split.test_fraction=0.25",
            "data.roi.size=16",
            "data.roi.min_extent_mm=12",
            "data.batch_size=4",
            "data.n_jobs=1",
            "data.progress=false",
            # `~` then `+` replaces the feature-class dict (a plain override would merge into it)
            "~features.params.featureClass",
            "+features.params.featureClass={shape: null, firstorder: null, glcm: null}",
            f"paths.cache_dir={shared_cache}",
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.log_dir={tmp_path / 'runs'}",
            "trainer.max_epochs=2",
            "+trainer.enable_progress_bar=false",
            "n_bootstrap=100",
            *(extra or []),
        ]
        if "handcrafted" not in experiment:
            overrides.append("model.encoder.block_inplanes=[4,8,8,16]")
        cfg = compose_train_cfg(overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "run")
        return cfg

    return make
