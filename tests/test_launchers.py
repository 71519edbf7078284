"""Sweeps through hydra-submitit-launcher: the SLURM path tried on this machine (``hydra/launcher=slurm_local``,
submitit's local executor), and ``hydra/launcher=slurm`` differing from it only in the launcher block."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from helpers.config import tiny_data_overrides
from helpers.paths import CONFIG_DIR, ROOT

SWEEP = ["experiment=idh_handcrafted", "data.split.strategy=kfold", "data.split.fold=0,1"]
ONE_JOB = [*SWEEP[:-1], "data.split.fold=0"]


def _with_launcher(launcher: str) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train.yaml", overrides=[*ONE_JOB, f"hydra/launcher={launcher}"], return_hydra_config=True)
    return OmegaConf.to_container(cfg, resolve=False)


def test_slurm_differs_from_the_local_run_only_in_the_launcher_block():
    local, slurm = _with_launcher("slurm_local"), _with_launcher("slurm")
    assert local["hydra"]["launcher"]["_target_"].endswith("submitit_launcher.LocalLauncher")
    assert slurm["hydra"]["launcher"]["_target_"].endswith("submitit_launcher.SlurmLauncher")
    for cfg in (local, slurm):
        cfg["hydra"].pop("launcher")
        cfg["hydra"]["runtime"]["choices"].pop("hydra/launcher")
        cfg["hydra"]["overrides"]["hydra"] = []
    assert local == slurm


@pytest.mark.slow
def test_submitit_local_sweep_runs_two_jobs(tiny_cohort, tmp_path):
    overrides = [
        *SWEEP, "hydra/launcher=slurm_local", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10",
        *tiny_data_overrides(tiny_cohort.parent), "~features.params.featureClass",
        "+features.params.featureClass={shape: null, firstorder: null}", f"paths.root_dir={tmp_path}",
        "logger=csv", "trainer.max_epochs=2", "+trainer.enable_progress_bar=false", "n_bootstrap=50", "threads=1",
    ]
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *overrides], capture_output=True,
                         text=True, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    sweeps = list((tmp_path / "runs" / "multirun").glob("*/multirun.yaml"))
    assert len(sweeps) == 1
    sweep = sweeps[0].parent
    launcher = yaml.safe_load(sweeps[0].read_text())["hydra"]["launcher"]
    assert launcher["_target_"].endswith("LocalLauncher")
    # two jobs, each in its own submitted process with its own submitit log, each a complete run
    logs = sorted((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2, sorted(p.name for p in (sweep / ".submitit").rglob("*"))
    runs = sorted(p.parent for p in sweep.rglob("metrics.json"))
    assert len(runs) == 2
    folds = [yaml.safe_load((r / "config_resolved.yaml").read_text())["data"]["split"]["fold"] for r in runs]
    assert sorted(folds) == [0, 1]
    tests = []
    for r in runs:
        assert json.loads((r / "metrics.json").read_text())["mode"] == "handcrafted"
        pred = pd.read_csv(r / "predictions.csv", dtype={"subject_id": str})
        tests.append(set(pred.loc[pred.split == "test", "subject_id"]))
    assert tests[0] and tests[1] and not tests[0] & tests[1]  # k-fold: disjoint test folds
