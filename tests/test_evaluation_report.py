"""evaluate.py end to end on fake run folders with known properties: pooling and mean ± sd checked
against scikit-learn on hand-pooled predictions, the report files, bad input, W&B offline, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from helpers.config import compose_config
from helpers.paths import ROOT
from radfusion.evaluation.delong import delong_test
from radfusion.evaluation.report import markdown_to_html
from radfusion.evaluation.run import evaluate
from radfusion.evaluation.run_folders import RunError, check_predictions, find_runs, load_run
from radfusion.synthetic.runs import cohort, write_run, write_sweep


def eval_cfg(runs: list[str], out: Path, extra: list[str] | None = None):
    """The real configs/eval.yaml, composed as evaluate.py would, small bootstrap."""
    return compose_config("eval.yaml", [f"runs=[{','.join(runs)}]", f"report_dir={out}", "name=test", "n_bootstrap=200",
                                        *(extra or [])])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return write_sweep(tmp_path_factory.mktemp("multirun") / "2026-01-01_00-00-00", n=80, seeds=(0, 1))


def test_report_pools_seeds_and_matches_sklearn(sweep, tmp_path, capsys):
    table = evaluate(eval_cfg([str(sweep)], tmp_path / "rep"))
    out = capsys.readouterr().out
    assert "idh_hybrid" in out and "paired comparisons" in out
    for f in ("report.md", "report.html", "table.csv", "replicates.csv", "comparisons.csv", "checklist.csv",
              "roc_idh.png", "roc_mgmt.png", "calibration_idh.png", "km.png", "td_auc.png"):
        assert (tmp_path / "rep" / f).stat().st_size > 200, f
    assert set(table["group"]) == {"idh_handcrafted", "idh_deep", "idh_hybrid"}
    assert sorted(table.loc[table.endpoint == "idh", "mode"]) == ["deep", "handcrafted", "hybrid"]
    assert set(table["endpoint"]) == {"idh", "mgmt", "os"}

    # independent pooling: average each subject's test probability over the seeds, then sklearn
    preds = {p.parent.name: pd.read_csv(p) for p in sweep.rglob("predictions.csv")}
    hybrid = pd.concat([d for k, d in preds.items() if k.endswith("idh_hybrid")])
    test = hybrid[(hybrid.split == "test") & hybrid.label_mgmt.notna()]
    pooled = test.groupby("subject_id").agg(p=("prob_mgmt", "mean"), y=("label_mgmt", "first"))
    row = table[(table.group == "idh_hybrid") & (table.endpoint == "mgmt")].iloc[0]
    assert row["auc"] == pytest.approx(roc_auc_score(pooled.y, pooled.p))
    assert row["n"] == len(pooled) and row["n_replicates"] == 2
    per_seed = []
    for key, d in preds.items():
        if key.endswith("idh_hybrid"):
            part = d[(d.split == "test") & d.label_mgmt.notna()]
            per_seed.append(roc_auc_score(part.label_mgmt, part.prob_mgmt))
    assert row["auc_mean"] == pytest.approx(np.mean(per_seed))
    assert row["auc_sd"] == pytest.approx(np.std(per_seed, ddof=1))
    assert row["auc_ci_low"] <= row["auc"] <= row["auc_ci_high"]

    # planted: hybrid predictions are the least noisy, handcrafted the noisiest
    idh = table[table.endpoint == "idh"].set_index("mode")
    assert idh.loc["hybrid", "auc"] > idh.loc["handcrafted", "auc"]
    os_rows = table[table.endpoint == "os"].set_index("mode")
    assert os_rows.loc["hybrid", "c_harrell"] > os_rows.loc["handcrafted", "c_harrell"]
    assert (os_rows["hr"] > 1).all() and (os_rows["n_high"] + os_rows["n_low"] == os_rows["n"]).all()

    comps = pd.read_csv(tmp_path / "rep" / "comparisons.csv")
    c = comps[(comps.endpoint == "mgmt") & (comps.group_a == "idh_hybrid") & (comps.group_b == "idh_handcrafted")]
    hand = pd.concat([d for k, d in preds.items() if k.endswith("idh_handcrafted")])
    ht = hand[(hand.split == "test") & hand.label_mgmt.notna()].groupby("subject_id").prob_mgmt.mean()
    ref = delong_test(pooled.y, pooled.p, ht.loc[pooled.index])
    assert c["delong_p"].iloc[0] == pytest.approx(ref["p"])
    assert (comps["delong_p_holm"].dropna() >= comps["delong_p"].dropna() - 1e-12).all()
    assert len(comps) == 9  # 3 pairs × (idh, mgmt, os)

    md = (tmp_path / "rep" / "report.md").read_text()
    for text in ("not a clinical claim", "DeLong", "Holm", "Breslow", "External validation", "![ROC idh](roc_idh.png)",
                 "model.mode", "mean ± sd"):
        assert text in md, text
    assert "<table>" in (tmp_path / "rep" / "report.html").read_text()


def test_cross_validation_concatenates_folds(tmp_path):
    subjects = cohort(45, seed=3)
    for seed in (0, 1):
        write_run(tmp_path / "runs" / "cv_hybrid" / f"s{seed}", subjects, "cv_hybrid", "hybrid", seed, 2.0,
                  n_folds=3, n_repeats=2)
    table = evaluate(eval_cfg([str(tmp_path / "runs" / "cv_*" / "*")], tmp_path / "rep", ["threshold=youden"]))
    idh = table[table.endpoint == "idh"].iloc[0]
    assert 0 < idh["threshold"] < 1 and idh["threshold"] != 0.5  # fitted on the training rows
    assert idh["n"] == subjects.label_idh.notna().sum()  # every subject once, pooled over folds
    assert idh["n_replicates"] == 4  # 2 seeds × 2 repeats
    reps = pd.read_csv(tmp_path / "rep" / "replicates.csv")
    assert (reps[reps.endpoint == "idh"]["n"] == subjects.label_idh.notna().sum()).all()
    assert table[table.endpoint == "os"].iloc[0]["n"] == len(subjects)


def test_bad_run_is_skipped_and_named(sweep, tmp_path):
    bad = tmp_path / "bad_run"
    write_run(bad, cohort(30), "idh_bad", "hybrid", 0, 1.0)
    pred = pd.read_csv(bad / "predictions.csv")
    pred.loc[3, "label_idh"] = 2
    pred.to_csv(bad / "predictions.csv", index=False)
    evaluate(eval_cfg([str(sweep), str(bad)], tmp_path / "rep"))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Runs skipped" in md and str(bad / "predictions.csv") in md and pred.subject_id[3] in md
    with pytest.raises(RunError, match="no run could be evaluated"):
        evaluate(eval_cfg([str(bad)], tmp_path / "rep2"))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.assign(split=d.split.replace("val", "validation")), "'split' has values \\['validation'\\]"),
    (lambda d: d.assign(prob_idh=d.prob_idh.where(d.index != 4, 1.5)), "outside \\[0, 1\\].*S0"),
    (lambda d: pd.concat([d, d.iloc[[0]]]), "duplicate rows.*S0"),
    (lambda d: d.drop(columns=["os_event"]), "survival columns incomplete"),
    (lambda d: d.assign(os_event=d.os_event.where(d.index != 2, 3)), "os_event.*subjects S0"),
    (lambda d: d.drop(columns=["label_mgmt"]), "'prob_mgmt' has no matching 'label_mgmt'"),
])
def test_contract_errors_name_file_column_and_subject(tmp_path, edit, message):
    run = write_run(tmp_path / "r", cohort(20), "x", "hybrid", 0, 1.0)
    pred = edit(pd.read_csv(run / "predictions.csv", dtype={"subject_id": str}))
    with pytest.raises(RunError, match=message) as err:
        check_predictions(pred, run / "predictions.csv")
    assert str(run / "predictions.csv") in str(err.value)


def test_markers_only_and_survival_only_runs_mix(tmp_path):
    subjects = cohort(50, seed=1)
    write_run(tmp_path / "a", subjects, "markers_only", "deep", 0, 1.5, survival=False)
    write_run(tmp_path / "b", subjects, "survival_only", "baseline_cox", 0, 1.5, markers=())
    table = evaluate(eval_cfg([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "rep"))
    assert set(zip(table.group, table.endpoint, strict=True)) == {("markers_only", "idh"), ("markers_only", "mgmt"),
                                                                  ("survival_only", "os")}
    assert load_run(tmp_path / "b").markers == [] and load_run(tmp_path / "a").has_survival is False


def test_site_held_out_is_reported_as_external_validation(tmp_path):
    run = write_run(tmp_path / "r", cohort(40, n_sites=2), "ext", "hybrid", 0, 1.5, survival=False)
    pred = pd.read_csv(run / "predictions.csv")
    pred["site"] = np.where(pred.split == "test", "siteX", "site0")
    pred.to_csv(run / "predictions.csv", index=False)
    evaluate(eval_cfg([str(run)], tmp_path / "rep"))
    check = pd.read_csv(tmp_path / "rep" / "checklist.csv").set_index("item")
    assert check.loc["External validation", "ext"].startswith("yes: test sites ['siteX']")
    assert "EPV" in check.loc["Events per feature (training)", "ext"]


def test_find_runs_globs_and_multirun_folders(sweep):
    assert len(find_runs([str(sweep)])) == 6
    assert len(find_runs([str(sweep / "*_idh_deep")])) == 2
    with pytest.raises(FileNotFoundError, match="no run folder matches"):
        find_runs([str(sweep / "nothing_*")])


def test_markdown_to_html_subset():
    html = markdown_to_html("# T\n\n| a | b |\n|---|---|\n| 1 \\| 2 | **x** |\n\n- item `c`\n\n![r](roc.png)\n")
    assert "<h1>T</h1>" in html and "<td>1 | 2</td>" in html and "<strong>x</strong>" in html
    assert "<li>item <code>c</code></li>" in html and '<img alt="r" src="roc.png">' in html


def test_wandb_offline_logging(sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    evaluate(eval_cfg([str(sweep / "*_idh_hybrid")], tmp_path / "rep", ["log_wandb=true", "n_bootstrap=50"]))
    runs = list((tmp_path / "rep" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_evaluate_cli(sweep, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    res = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), f"runs=[{sweep}/*_idh_*]", "name=cli",
                          "n_bootstrap=100", f"paths.root_dir={tmp_path}", f"output={tmp_path / 'copy.csv'}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "idh_hybrid" in res.stdout and "report:" in res.stdout
    report = tmp_path / "reports" / "cli"
    assert (report / "report.html").is_file() and (report / ".hydra" / "config.yaml").is_file()
    assert pd.read_csv(tmp_path / "copy.csv").equals(pd.read_csv(report / "table.csv"))
    log_text = (report / "evaluate.log").read_text()  # the driver logs what it does, not only the console
    assert "evaluating 6 run(s) in 3 group(s)" in log_text and "report:" in log_text and "idh_hybrid" in log_text
    assert (report / "rqs.csv").is_file() and (report / "tripod_ai.csv").is_file()
    assert json.loads((sweep / "0_idh_handcrafted" / "metrics.json").read_text())["mode"] == "handcrafted"
