"""The real entry point, end to end, on a tiny synthetic cohort: one run per mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from helpers.config import tiny_data_overrides
from helpers.paths import ROOT
from radfusion.training.run import train


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["handcrafted", "deep", "hybrid"])
def test_train_each_mode_writes_a_complete_run(cfg_factory, mode):
    cfg = cfg_factory(f"idh_{mode}")
    metrics, objects = train(cfg)
    out = Path(cfg.paths.output_dir)
    for name in ("config_resolved.yaml", "predictions.csv", "metrics.json", "roc.png", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name

    pred = pd.read_csv(out / "predictions.csv", dtype={"subject_id": str})
    dm = objects["datamodule"]
    # every subject exactly once, in the split the splits file says
    assert sorted(pred.subject_id) == sorted(dm.ids)
    for split, ids in dm.splits.items():
        assert set(pred.loc[pred.split == split, "subject_id"]) == set(ids)
    assert pred.prob_idh.between(0, 1).all()

    # metrics.json's test AUC is the AUC of predictions.csv, checked with scikit-learn
    test = pred[(pred.split == "test") & pred.label_idh.notna()]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mode"] == mode
    assert saved["test/auc_idh"] == pytest.approx(roc_auc_score(test.label_idh, test.prob_idh))
    assert saved["test/auc_idh_ci_low"] <= saved["test/auc_idh"] <= saved["test/auc_idh_ci_high"]
    assert np.isfinite(metrics["test/auc"])
    if mode == "deep":
        assert saved["n_radiomics_model"] == 0
    else:
        assert 0 < saved["n_radiomics_model"] <= saved["n_radiomics_raw"]


@pytest.mark.slow
def test_train_cli_multirun_all_three_modes(tiny_cohort, tmp_path):
    """`python train.py -m experiment=...` through a subprocess, then evaluate.py over the sweep."""
    common = [
        *tiny_data_overrides(tiny_cohort.parent), "~features.params.featureClass",
        "+features.params.featureClass={shape: null, firstorder: null}",
        f"paths.root_dir={tmp_path}", "logger=csv", "trainer.max_epochs=1", "n_bootstrap=50",
    ]
    cmd = [sys.executable, str(ROOT / "train.py"), "-m",
           "experiment=idh_handcrafted,idh_deep,idh_hybrid", *common]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted(p.parent for p in (tmp_path / "runs" / "multirun").rglob("predictions.csv"))
    assert [p.name.split("_", 1)[1] for p in runs] == ["idh_handcrafted", "idh_deep", "idh_hybrid"]

    table_csv = tmp_path / "compare.csv"
    res = subprocess.run([sys.executable, str(ROOT / "evaluate.py"),
                          f"runs=[{tmp_path / 'runs' / 'multirun'}]", f"output={table_csv}",
                          "n_bootstrap=50", f"paths.root_dir={tmp_path}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    table = pd.read_csv(table_csv)
    assert sorted(table["mode"]) == ["deep", "handcrafted", "hybrid"]
    assert "idh_hybrid" in res.stdout


def test_a_required_setting_left_unset_is_named_not_a_traceback(tmp_path):
    """``data=brats`` without ``data.cohort.clinical`` (a ``???`` in configs/cohort/brats2021.yaml): one
    line naming the setting and how to give it, exit status 1, no Hydra/OmegaConf traceback."""
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "experiment=idh_handcrafted", "data=brats",
                          f"data.cohort.path={tmp_path}", f"paths.root_dir={tmp_path}", "logger=csv"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "MissingMandatoryValue" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(
        "train.py: data.cohort.clinical is required by the chosen config and not set: give it on the command line, "
        "e.g. data.cohort.clinical=/path/clinical.csv")
