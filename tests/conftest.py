"""Shared fixtures: a tiny synthetic cohort (generated once per test session) and a Hydra config composed
from the real ``configs/train.yaml`` and shrunk to CPU-test size. The builders behind them live in
``tests/helpers/`` so that test files import those, never this file or each other."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import DictConfig, open_dict

from helpers.config import TINY, compose_train_cfg, tiny_data_overrides

os.environ.setdefault("WANDB_MODE", "offline")


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


@pytest.fixture
def cfg_factory(tiny_cohort, shared_cache, tmp_path):
    """Build a tiny, fast train config for an experiment (real train.yaml underneath)."""

    def make(experiment: str, extra: list[str] | None = None) -> DictConfig:
        overrides = [
            f"experiment={experiment}",
            "logger=csv",
            *tiny_data_overrides(tiny_cohort.parent),
            "data.batch_size=4",
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
        cfg = compose_train_cfg(overrides)
        with open_dict(cfg):
            if cfg.model.get("encoder") is not None:  # a slim CNN (handcrafted / clinical-only have none)
                cfg.model.encoder.block_inplanes = [4, 8, 8, 16]
            cfg.paths.output_dir = str(tmp_path / "run")
        return cfg

    return make
