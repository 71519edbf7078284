"""Runs from a precomputed feature table (no images): the handcrafted branch and a baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import open_dict

from helpers.config import compose_train_cfg
from radfusion.training.run import train


@pytest.fixture
def feature_tables(tmp_path):
    rng = np.random.default_rng(0)
    n = 80
    ids = [f"P{i:03d}" for i in range(n)]
    X = rng.normal(size=(n, 30))
    idh = (X[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    feats = pd.DataFrame(X, columns=[f"original_firstorder_F{j}" for j in range(30)])
    feats.insert(0, "ID", ids)
    feats.insert(1, "Image", [f"/data/{i}.nii.gz" for i in ids])  # PyRadiomics batch-output columns
    feats.insert(2, "diagnostics_Versions_PyRadiomics", "v3.0.1")
    feats.to_csv(tmp_path / "features.csv", index=False)
    words = np.where(idh == 1, "mutant", "wildtype").astype(object)
    words[:4] = "indeterminate"
    pd.DataFrame({"ID": ids, "IDH1_status": words, "Centre": "X"}).to_csv(tmp_path / "clinical.csv", index=False)
    return tmp_path


@pytest.mark.parametrize("experiment", ["idh_handcrafted", "idh_baseline_lr"])
def test_feature_table_run(feature_tables, tmp_path, experiment):
    cfg = compose_train_cfg([
        f"experiment={experiment}", "data=feature_table", "logger=csv",
        f"data.cohort.features={feature_tables / 'features.csv'}",
        f"data.cohort.clinical={feature_tables / 'clinical.csv'}",
        "data.cohort.id_column=ID", "data.cohort.label_columns={idh: IDH1_status, site: Centre}",
        f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'runs'}",
        f"paths.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=3", "+trainer.enable_progress_bar=false",
        "n_bootstrap=50", "data.progress=false",
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    metrics, objects = train(cfg)
    dm = objects["datamodule"]
    assert dm.radiomics_dim == 30  # the path and diagnostics columns were dropped
    pred = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert len(pred) == 80 and pred.label_idh.isna().sum() == 4  # "indeterminate" is unknown
    assert metrics["test/auc_idh"] > 0.7  # the planted signal is found


def test_feature_table_refuses_image_models(feature_tables, tmp_path):
    cfg = compose_train_cfg([
        "experiment=idh_hybrid", "data=feature_table", "logger=csv",
        f"data.cohort.features={feature_tables / 'features.csv'}",
        f"data.cohort.clinical={feature_tables / 'clinical.csv'}", "data.cohort.id_column=ID",
        "data.cohort.label_columns={idh: IDH1_status}", f"paths.root_dir={tmp_path}",
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    with pytest.raises(Exception, match="has no images"):
        train(cfg)
