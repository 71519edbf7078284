"""Multi-task and survival runs: heads, masks and the bad-input checks before training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from radfusion.cohort.subject import CohortError
from radfusion.data.datamodule import check_survival
from radfusion.evaluation.survival import harrell_c
from radfusion.models.lit_module import RadFusionModule
from radfusion.training.run import train


def _surv(times, events):
    return pd.DataFrame({"os_days": times, "os_event": events}, index=[f"s{i}" for i in range(len(times))])


def test_survival_checks_name_the_problem():
    with pytest.raises(CohortError, match=r"os_days must be > 0.*s1"):
        check_survival(_surv([10.0, -3.0, 5.0], [1.0, 0.0, 1.0]))
    with pytest.raises(CohortError, match="all subjects are censored"):
        check_survival(_surv([10.0, 3.0, 5.0], [0.0, 0.0, 0.0]))
    with pytest.raises(CohortError, match=r"os_event must be 1 \(death\) or 0"):
        check_survival(_surv([10.0, 3.0, 5.0], [2.0, 0.0, 1.0]))
    check_survival(_surv([10.0, np.nan, 5.0], [1.0, 1.0, 0.0]))  # unknown is fine


def test_a_missing_label_masks_only_its_own_head():
    model = RadFusionModule("handcrafted", targets=["idh", "mgmt"], survival=True, radiomics_dim=5,
                            fusion={"radiomics_hidden": [8], "dropout": 0.0})
    out = torch.randn(4, 3)
    batch = {"labels": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]),
             "label_mask": torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]),
             "time": torch.tensor([5.0, 3.0, 9.0, 1.0]), "event": torch.tensor([1.0, 0.0, 1.0, 1.0]),
             "surv_mask": torch.ones(4)}
    losses = model.head_losses(out, batch)
    changed = dict(batch, labels=batch["labels"].clone())
    changed["labels"][1, 1] = 0.0  # the masked MGMT label of subject 1
    again = model.head_losses(out, changed)
    assert torch.isclose(losses["mgmt"], again["mgmt"]) and torch.isclose(losses["idh"], again["idh"])
    assert set(losses) == {"idh", "mgmt", "survival"}


def test_harrell_c_matches_scikit_survival_definition():
    time = np.array([5.0, 3.0, 9.0, 1.0, 7.0])
    event = np.array([1.0, 0.0, 1.0, 1.0, np.nan])
    risk = np.array([0.2, 0.1, -1.0, 2.0, 0.0])
    # By hand (subject 5 has unknown event and is left out): comparable pairs start at an event.
    # t=1 (event) vs t=3, 5, 9: risk 2.0 beats 0.1, 0.2, -1.0 → 3 concordant;
    # t=5 (event) vs t=9: 0.2 > -1.0 → concordant; t=3 is censored, t=9 has no later subject.
    assert harrell_c(time, event, risk) == pytest.approx(1.0)
    assert harrell_c(time, event, -risk) == pytest.approx(0.0)


@pytest.mark.slow
def test_multitask_run_writes_every_head(cfg_factory):
    cfg = cfg_factory("multitask_hybrid", ["data.batch_size=8"])
    metrics, objects = train(cfg)
    dm = objects["datamodule"]
    pred = pd.read_csv(f"{cfg.paths.output_dir}/predictions.csv", dtype={"subject_id": str})
    for col in ("prob_idh", "prob_mgmt", "prob_codeletion", "risk", "os_days", "os_event", "site"):
        assert col in pred, col
    # 1p/19q is evaluated only where defined: IDH-wildtype subjects have no codeletion label
    idh = dm.cohort.clinical.loc[pred.subject_id, "idh"].to_numpy()
    assert pred.loc[idh != 1.0, "label_codeletion"].isna().all()
    assert np.isfinite(metrics["test/cindex"])
    assert metrics["test/cindex"] == pytest.approx(harrell_c(
        *(pred.loc[pred.split == "test", c].to_numpy(float) for c in ("os_days", "os_event", "risk"))))


@pytest.mark.slow
def test_survival_only_run(cfg_factory):
    cfg = cfg_factory("survival_handcrafted", ["data.batch_size=8", "trainer.max_epochs=3"])
    metrics, _ = train(cfg)
    assert 0.0 <= metrics["test/cindex"] <= 1.0
    assert "test/auc" not in metrics
