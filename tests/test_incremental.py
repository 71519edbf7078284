"""Incremental value over the clinical-only model: two tiny fake runs, checked against direct computations
(scikit-learn AUC, a naive O(m·n) DeLong, scikit-survival C-index and a naive bootstrap loop)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import norm
from sklearn.metrics import roc_auc_score
from sksurv.metrics import concordance_index_censored

from helpers.config import compose_config
from radfusion.evaluation.analysis import Settings, evaluate_groups
from radfusion.evaluation.incremental import incremental_value
from radfusion.evaluation.run import evaluate
from radfusion.evaluation.run_folders import group_runs, load_runs

N = 120


def _subjects(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.normal(55, 12, N)
    z = rng.normal(size=N)  # what only imaging sees
    idh = (rng.random(N) < 1 / (1 + np.exp(-(-0.08 * (age - 55) + 1.2 * z)))).astype(float)
    hazard = np.exp(0.04 * (age - 55) + 0.8 * z)
    death = rng.exponential(700 / hazard)
    censor = rng.uniform(200, 2500, N)
    return pd.DataFrame({"subject_id": [f"S{i:03d}" for i in range(N)], "age": age, "z": z, "idh": idh,
                         "os_days": np.minimum(death, censor).round() + 1, "os_event": (death <= censor).astype(float)})


def _write(folder: Path, subjects: pd.DataFrame, mode: str, clinical: list[str], logit, risk) -> Path:
    """One run folder: predictions.csv (first 72 subjects train, the rest test), metrics.json, config."""
    folder.mkdir(parents=True)
    split = np.where(np.arange(N) < 72, "train", "test")
    pd.DataFrame({"subject_id": subjects.subject_id, "split": split, "fold": 0,
                  "prob_idh": 1 / (1 + np.exp(-logit)), "label_idh": subjects.idh,
                  "risk": risk, "os_days": subjects.os_days, "os_event": subjects.os_event}).to_csv(
        folder / "predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps({"experiment": folder.name, "mode": mode, "seed": 0}))
    (folder / "config_resolved.yaml").write_text(yaml.safe_dump({"model": {"mode": mode, "clinical": clinical}}))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("runs")
    s = _subjects()
    noise = np.random.default_rng(1).normal(size=(2, N))
    _write(root / "idh_clinical", s, "clinical", ["age"], -0.08 * (s.age - 55), 0.04 * (s.age - 55))
    _write(root / "idh_hybrid_clinical", s, "hybrid", ["age"], -0.08 * (s.age - 55) + 1.2 * s.z + 0.5 * noise[0],
           0.04 * (s.age - 55) + 0.8 * s.z + 0.3 * noise[1])
    return root, s


def _naive_delong(y, a, b) -> float:
    """Two-sided DeLong p from the pairwise kernel (no midrank shortcut)."""
    pos, neg = y == 1, y == 0
    comps = []
    for s in (a, b):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        comps.append((psi.mean(axis=1), psi.mean(axis=0)))
    v10, v01 = np.array([c[0] for c in comps]), np.array([c[1] for c in comps])
    cov = np.cov(v10) / pos.sum() + np.cov(v01) / neg.sum()
    delta = v10[0].mean() - v10[1].mean()
    return float(2 * norm.sf(abs(delta) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])))


def test_delta_auc_and_delta_c_match_direct_computations(runs):
    root, s = runs
    loaded, skipped = load_runs(sorted(root.iterdir()))
    assert not skipped
    groups = group_runs(loaded)
    settings = Settings(n_bootstrap=2000, seed=0)
    table = incremental_value(evaluate_groups(groups, settings), groups, settings)
    assert list(table["endpoint"]) == ["idh", "os"]
    assert (table["group"] == "idh_hybrid_clinical").all() and (table["reference"] == "idh_clinical").all()
    assert table["with_clinical"].all()

    test = {name: pd.read_csv(root / name / "predictions.csv").query("split == 'test'")
            for name in ("idh_clinical", "idh_hybrid_clinical")}
    img, clin = test["idh_hybrid_clinical"], test["idh_clinical"]
    auc = table[table.endpoint == "idh"].iloc[0]
    assert auc["value"] == pytest.approx(roc_auc_score(img.label_idh, img.prob_idh))
    assert auc["value_reference"] == pytest.approx(roc_auc_score(clin.label_idh, clin.prob_idh))
    assert auc["delta"] == pytest.approx(auc["value"] - auc["value_reference"]) and auc["delta"] > 0
    assert auc["p"] == pytest.approx(_naive_delong(img.label_idh.to_numpy(), img.prob_idh.to_numpy(),
                                                   clin.prob_idh.to_numpy()), rel=1e-6)
    assert auc["n_paired"] == N - 72 and auc["test"] == "DeLong"

    c = table[table.endpoint == "os"].iloc[0]
    event, time = img.os_event.astype(bool).to_numpy(), img.os_days.to_numpy()
    c_img = concordance_index_censored(event, time, img.risk.to_numpy())[0]
    c_clin = concordance_index_censored(event, time, clin.risk.to_numpy())[0]
    assert c["value"] == pytest.approx(c_img) and c["value_reference"] == pytest.approx(c_clin)
    assert c["delta"] == pytest.approx(c_img - c_clin) and c["delta"] > 0
    # an independent paired bootstrap (another RNG, sksurv on each resample) gives about the same CI
    rng = np.random.default_rng(123)
    deltas = []
    for _ in range(1000):
        i = rng.integers(0, len(img), len(img))
        if event[i].sum() == 0:
            continue
        deltas.append(concordance_index_censored(event[i], time[i], img.risk.to_numpy()[i])[0]
                      - concordance_index_censored(event[i], time[i], clin.risk.to_numpy()[i])[0])
    lo, hi = np.quantile(deltas, [0.025, 0.975])
    assert c["ci_low"] == pytest.approx(lo, abs=0.02) and c["ci_high"] == pytest.approx(hi, abs=0.02)
    assert c["ci_low"] <= c["delta"] <= c["ci_high"] and 0 <= c["p"] <= 1


def test_evaluate_writes_the_incremental_table(runs, tmp_path, capsys):
    root, _ = runs
    cfg = compose_config("eval.yaml", [f"runs=[{root}]", f"report_dir={tmp_path / 'rep'}", "name=t",
                                       "n_bootstrap=200", "html=false"])
    evaluate(cfg)
    assert "incremental value over the clinical-only model" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "rep" / "incremental.csv")
    assert set(table["endpoint"]) == {"idh", "os"}
    assert "## Incremental value over the clinical-only model" in (tmp_path / "rep" / "report.md").read_text()


def test_no_clinical_group_means_no_table(runs):
    root, _ = runs
    loaded, _ = load_runs([root / "idh_hybrid_clinical"])
    groups = group_runs(loaded)
    settings = Settings(n_bootstrap=50)
    assert incremental_value(evaluate_groups(groups, settings), groups, settings).empty
