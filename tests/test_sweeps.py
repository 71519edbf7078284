"""`python train.py -m hparams_search=idh_optuna ...`: a real Optuna (TPE) sweep through the joblib
launcher, in a subprocess, on the tiny cohort with a frozen encoder (so each trial trains only the head)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from helpers.config import tiny_data_overrides
from helpers.paths import ROOT


@pytest.mark.slow
def test_optuna_sweep_frozen_encoder(tiny_cohort, tmp_path):
    overrides = [
        "hparams_search=idh_optuna", "experiment=idh_hybrid", "model.encoder.frozen=true",
        "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2", "hydra.launcher.n_jobs=1",
        *tiny_data_overrides(tiny_cohort.parent), "features.params.featureClass={shape: null, firstorder: null}",
        "model.encoder.block_inplanes=[4,8,8,16]", f"paths.root_dir={tmp_path}", "logger=csv",
        "trainer.max_epochs=3", "+trainer.enable_progress_bar=false", "n_bootstrap=50", "threads=1",
    ]
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *overrides], capture_output=True,
                         text=True, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]

    sweeps = list((tmp_path / "runs" / "multirun").glob("*/optimization_results.yaml"))
    assert len(sweeps) == 1, res.stderr[-2000:]
    result = yaml.safe_load(sweeps[0].read_text())
    trials = sorted(p.parent for p in sweeps[0].parent.rglob("metrics.json"))
    assert len(trials) == 3
    values = [json.loads((t / "metrics.json").read_text())["val/auc_best"] for t in trials]
    # Optuna maximised what main() returned: the best trial's val/auc_best
    assert result["best_value"] == pytest.approx(max(values))
    assert set(result["best_params"]) == {"model.optimizer.lr", "model.optimizer.weight_decay",
                                          "model.fusion.dropout", "model/fusion",
                                          "model.fusion.modality_dropout", "model.fusion.image_hidden"}
    # each trial used the sampled values (the resolved config of the run records them)
    # (the fusion is a config group: the trial's model.fusion.fuser is the chosen configs/model/fusion/ block)
    fusers = {yaml.safe_load((t / "config_resolved.yaml").read_text())["model"]["fusion"]["fuser"]["_target_"]
              for t in trials}
    assert fusers <= {f"radfusion.models.fusion.{c}" for c in ("ConcatFusion", "GatedFusion", "CrossAttentionFusion")}

    # trials after the first reuse the process's validated cohort (data.reuse_in_process in idh_optuna)
    reused = ["reuse_in_process: reusing" in (t / "train.log").read_text() for t in trials]
    assert reused == [False, True, True]
    # frozen encoder: one set of embeddings for the whole sweep (same seed → same weights → one cache key)
    folders = {p.parent for p in (tmp_path / "cache" / "embeddings").rglob("*.npy")}
    assert len(folders) == 1
    assert len(list(next(iter(folders)).glob("*.npy"))) == 20


@pytest.mark.slow
def test_reuse_in_process_is_keyed_by_settings_and_file_stamps(cfg_factory):
    from hydra.utils import instantiate

    cfg = cfg_factory("idh_hybrid", ["data.reuse_in_process=true"])

    def prepared():
        dm = instantiate(cfg.data, use_images=True, use_radiomics=True)
        dm.prepare_data()
        return dm

    first, second = prepared(), prepared()
    assert second.cohort is first.cohort and second.roi_paths == first.roi_paths
    # an image file whose mtime changes (edited, re-copied) invalidates the reuse
    image = first.cohort.subjects[0].images["flair"]
    stat = os.stat(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = prepared()
    assert third.cohort is not first.cohort and third.ids == first.ids
    # other settings (here: no images) never share an entry
    dm = instantiate(cfg.data, use_images=False, use_radiomics=True)
    dm.prepare_data()
    assert dm.cohort is not third.cohort
