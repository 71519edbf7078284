"""The report states only what the run knows: a feature-table run is not credited with radfusion's
preprocessing nor given the synthetic banner; events per variable per fold from the training rows;
separated Cox fits flagged; Kaplan–Meier bands against lifelines; calibration slope / intercept against
independent fits; RQS totals from their items; runs labelled by their actual targets."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from lifelines import KaplanMeierFitter
from omegaconf import open_dict
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression

from helpers.config import compose_config, compose_train_cfg
from radfusion.evaluation.calibration import logit, recalibration
from radfusion.evaluation.facts import epv_per_model, replicate_label
from radfusion.evaluation.rqs import TO_FILL, rqs_total, score_rqs
from radfusion.evaluation.run import evaluate
from radfusion.evaluation.run_folders import label_by_targets, load_run
from radfusion.evaluation.survival import SEPARATED, breslow_survival, km_with_ci, risk_groups, separation
from radfusion.synthetic.runs import cohort, write_run


def report(runs: list[Path], out: Path, extra: list[str] | None = None) -> str:
    cfg = compose_config("eval.yaml", [f"runs=[{','.join(map(str, runs))}]", f"report_dir={out}", "name=t",
                                       "n_bootstrap=100", *(extra or [])])
    evaluate(cfg)
    return (out / "report.md").read_text()


def edit_config(run: Path, edit) -> None:
    cfg = yaml.safe_load((run / "config_resolved.yaml").read_text())
    edit(cfg)
    (run / "config_resolved.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module")
def feature_table_run(tmp_path_factory) -> Path:
    """A real train.py run (L2 logistic baseline) on a precomputed feature table: no image, no synthetic cohort."""
    root = tmp_path_factory.mktemp("ft")
    rng = np.random.default_rng(0)
    n = 60
    ids = [f"P{i:03d}" for i in range(n)]
    X = rng.normal(size=(n, 12))
    feats = pd.DataFrame(X, columns=[f"original_firstorder_F{j}" for j in range(12)])
    feats.insert(0, "ID", ids)
    feats.to_csv(root / "features.csv", index=False)
    idh = np.where(X[:, 0] + 0.5 * rng.normal(size=n) > 0, "mutant", "wildtype")
    pd.DataFrame({"ID": ids, "IDH1_status": idh}).to_csv(root / "clinical.csv", index=False)
    cfg = compose_train_cfg([
        "experiment=idh_baseline_lr", "data=feature_table", "logger=csv",
        f"data.cohort.features={root / 'features.csv'}",
        f"data.cohort.clinical={root / 'clinical.csv'}", "data.cohort.id_column=ID",
        "data.cohort.label_columns={idh: IDH1_status}", f"paths.data_dir={root / 'data'}",
        f"paths.log_dir={root / 'runs'}", f"paths.cache_dir={root / 'cache'}", "n_bootstrap=20", "data.progress=false"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
    from radfusion.training.run import train

    train(cfg)
    return root / "run"


def test_feature_table_report_claims_no_radfusion_preprocessing(feature_table_run, tmp_path, capsys):
    md = report([feature_table_run], tmp_path / "rep")
    out = capsys.readouterr().out
    check = pd.read_csv(tmp_path / "rep" / "checklist.csv").set_index("item").iloc[:, 0]
    table = str(feature_table_run.parent / "features.csv")
    assert check["Cohort"].startswith(f"feature table {table}")
    assert check["Preprocessing (radiomics)"].startswith(f"as supplied in {table}, not computed by radfusion")
    for claim in ("resampled to", "bin width", "habitats ET", "zscore", "Synthetic-cohort", "synthetic cohort"):
        assert claim not in md, claim
    assert "synthetic" not in out.lower()
    assert "feature_table: None" not in md

    declared = tmp_path / "declared"  # the user's declaration replaces "not computed by radfusion"
    declared.mkdir()
    for f in ("predictions.csv", "metrics.json", "config_resolved.yaml"):
        (declared / f).write_bytes((feature_table_run / f).read_bytes())
    edit_config(declared, lambda c: c["data"]["cohort"].update(
        provenance={"software": "PyRadiomics 3.0.1", "image_types": ["Original"], "bin_width": 25}))
    check = (report([declared], tmp_path / "rep2"), pd.read_csv(tmp_path / "rep2" / "checklist.csv"))[1]
    line = check.set_index("item").iloc[:, 0]["Preprocessing (radiomics)"]
    assert line.startswith("declared by the user (data.cohort.provenance): ") and "not computed" not in line
    assert "software: PyRadiomics 3.0.1" in line and "bin_width: 25" in line and "image_types: Original" in line


def test_feature_table_config_takes_a_provenance_block():
    cfg = compose_train_cfg(["data=feature_table", "data.cohort.features=f.csv", "data.cohort.clinical=c.csv",
                             "data.cohort.provenance={software: PyRadiomics, bin_width: 25}"])
    assert cfg.data.cohort.provenance.bin_width == 25


def test_synthetic_run_gets_banner_and_its_own_settings(tmp_path, capsys):
    run = write_run(tmp_path / "syn", cohort(40), "idh_hybrid", "hybrid", 0, 2.0)
    edit_config(run, lambda c: c["data"]["features"].update(habitats=["WT"], spacing=None,
                                                            params={"setting": {"binWidth": 10},
                                                                    "imageType": {"Original": {}, "LoG": {}}}))
    md = report([run], tmp_path / "rep")
    assert "Synthetic-cohort results exercise the machinery" in md
    assert "synthetic cohort" in capsys.readouterr().out
    pre = pd.read_csv(tmp_path / "rep" / "checklist.csv").set_index("item").iloc[:, 0]["Preprocessing (radiomics)"]
    assert pre == ("native voxel grid (no resampling); intensity zscore (×100); bin width 10; image types LoG, "
                   "Original; habitats WT")


def test_manifest_decides_synthetic_and_external(tmp_path):
    run = write_run(tmp_path / "r", cohort(40), "idh_handcrafted", "handcrafted", 0, 2.0, survival=False)
    edit_config(run, lambda c: c["data"]["cohort"].update(source="manifest", path="/data/real.csv"))
    (run / "manifest.json").write_text(json.dumps({"kind": "predict", "cohort": {
        "source": "manifest", "path": "/data/external.csv", "content_sha1": "ab" * 20, "synthetic": False}}))
    md = report([run], tmp_path / "rep")
    assert "Synthetic-cohort" not in md and "manifest: /data/external.csv, sha1 abababababab" in md
    rqs = pd.read_csv(tmp_path / "rep" / "rqs.csv").set_index("item")
    assert rqs.loc[12, "score"] == 3 and "external" in rqs.loc[12, "basis"]


def test_epv_per_fold_from_training_rows_not_the_union(tmp_path):
    subjects = cohort(60, seed=2)
    run = write_run(tmp_path / "cv", subjects, "survival_cv", "handcrafted", 0, 1.5, n_folds=3, markers=("idh",))
    pred = pd.read_csv(run / "predictions.csv")
    lost = pred.loc[(pred.split == "train") & (pred.os_event == 1), "subject_id"].iloc[0]
    pred.loc[pred.subject_id == lost, "os_days"] = np.nan  # a death without a survival time is not used
    pred.to_csv(run / "predictions.csv", index=False)
    table = epv_per_model([load_run(run)])
    for fold, part in pred[pred.split == "train"].groupby("fold"):
        os_row = table[(table.fold == fold) & (table.endpoint == "os")].iloc[0]
        known = part.os_days.notna() & part.os_event.notna()
        assert os_row.events == part.loc[known, "os_event"].sum() and os_row.n == known.sum() < 60
        assert os_row.epv == pytest.approx(os_row.events / 40)  # n_radiomics_model of the fake run
        lab = part.label_idh.dropna()
        assert table[(table.fold == fold) & (table.endpoint == "idh")].iloc[0].events == min(lab.sum(),
                                                                                             len(lab) - lab.sum())
    report([run], tmp_path / "rep")
    line = pd.read_csv(tmp_path / "rep" / "checklist.csv").set_index("item").iloc[:, 0]["Events per feature (training)"]
    deaths = table[table.endpoint == "os"].events
    assert f"os: min {deaths.min():g} / median {deaths.median():g} deaths" in line and "over 3 models" in line
    assert str(int(pred.drop_duplicates("subject_id").os_event.sum())) + " deaths" not in line  # not the union


def separated_data(n: int = 30):
    time = np.arange(1, n + 1, dtype=float) * 10
    high = time < np.median(time)  # every high-risk subject dies before any low-risk one
    return time, np.ones(n), high


def test_separated_cox_fit_is_flagged_without_warnings():
    time, event, high = separated_data()
    assert separation(time, event, high) == 1 and separation(time, event, ~high) == -1
    x = np.random.default_rng(0).normal(size=len(time))
    assert separation(time, event, x > 0) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / convergence warning may escape
        out = risk_groups(time, event, high)
        probs = breslow_survival(np.where(high, 900.0, -900.0), time, event, [0.0, 900.0], [50.0, 200.0])
    assert np.isnan(out["hr"]) and out["hr_note"] == SEPARATED and out["logrank_p"] < 0.001
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    assert np.isfinite(risk_groups(time, event, x > 0)["hr"])


def test_report_flags_separated_risk_groups(tmp_path):
    run = write_run(tmp_path / "sep", cohort(100, seed=5), "survival_sep", "handcrafted", 0, 1.0, markers=())
    pred = pd.read_csv(run / "predictions.csv")
    pred["os_event"], pred["risk"] = 1.0, -pred.os_days  # risk ordered exactly by time: groups separate
    pred.to_csv(run / "predictions.csv", index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        md = report([run], tmp_path / "rep")
    assert SEPARATED in md and "e+0" not in md
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning) and "overflow" in str(w.message)]
    assert (tmp_path / "rep" / "km.png").stat().st_size > 1000


def test_kaplan_meier_bands_match_lifelines():
    rng = np.random.default_rng(3)
    t = np.round(rng.exponential(300, 80) / 10) * 10 + 10  # tied times
    c = rng.uniform(50, 900, 80)
    time, event = np.minimum(t, c), (t <= c).astype(float)
    ours = km_with_ci(time, event)
    kmf = KaplanMeierFitter().fit(time, event, alpha=0.05)
    ref_s = kmf.survival_function_.iloc[:, 0].loc[ours["time"]].to_numpy()
    ref_ci = kmf.confidence_interval_.loc[ours["time"]].to_numpy()
    ok = ours["survival"] > 0
    np.testing.assert_allclose(ours["survival"], ref_s, atol=1e-8)
    np.testing.assert_allclose(ours["ci_low"][ok], ref_ci[ok, 0], atol=1e-8)
    np.testing.assert_allclose(ours["ci_high"][ok], ref_ci[ok, 1], atol=1e-8)
    np.testing.assert_array_equal(ours["at_risk"], kmf.event_table.loc[ours["time"], "at_risk"].to_numpy())


def test_calibration_slope_and_intercept_match_independent_fits():
    rng = np.random.default_rng(4)
    lp = 1.4 * rng.normal(size=300)
    y = (rng.random(300) < 1 / (1 + np.exp(-(0.5 + 0.7 * lp)))).astype(float)
    p = 1 / (1 + np.exp(-lp))
    res = recalibration(y, p, n_boot=300)
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(logit(p)[:, None], y)
    assert res["slope"] == pytest.approx(ref.coef_[0, 0], abs=1e-6)
    assert res["slope_intercept"] == pytest.approx(ref.intercept_[0], abs=1e-6)
    nll = lambda a: -np.sum(y * (a + lp) - np.logaddexp(0, a + lp))  # noqa: E731 — intercept, slope fixed at 1
    assert res["intercept"] == pytest.approx(minimize_scalar(nll, bounds=(-5, 5), method="bounded",
                                                             options={"xatol": 1e-10}).x, abs=1e-6)
    assert res["slope_ci_low"] < res["slope"] < res["slope_ci_high"] and res["warning"] == ""
    assert res["intercept_ci_low"] < res["intercept"] < res["intercept_ci_high"]
    small = recalibration(y[:30], p[:30])
    assert "30 subjects" in small["warning"] and "unstable" in small["warning"]


def test_rqs_total_is_the_sum_of_the_documented_items(tmp_path):
    run = write_run(tmp_path / "r", cohort(250), "idh_handcrafted", "handcrafted", 0, 2.0)
    edit_config(run, lambda c: c.update(model={"mode": "handcrafted", "clinical": ["age"]}))
    report([run], tmp_path / "rep")
    rqs = pd.read_csv(tmp_path / "rep" / "rqs.csv").set_index("item")
    assert list(rqs.index) == list(range(1, 17))
    assert set(rqs.index[rqs.status == TO_FILL]) >= {1, 3, 4, 7, 11, 13, 15}
    assert rqs.loc[5, "score"] == -3 and rqs.loc[6, "score"] == 1 and rqs.loc[9, "score"] == 2
    assert rqs.loc[10, "score"] == 2 and rqs.loc[12, "score"] == 2 and rqs.loc[14, "score"] == 2
    total = rqs_total(rqs.reset_index())
    assert total["total"] == rqs.loc[rqs.status != TO_FILL, "score"].sum() and total["max"] == 36
    assert f"RQS documented by the run: {total['total']} / 36" in (tmp_path / "rep" / "report.md").read_text()
    edit_config(run, lambda c: c["data"].update(processing={"selector": "l1_logistic", "n_features": 10}))
    rows = pd.read_csv(tmp_path / "rep" / "table.csv").to_dict("records")
    assert score_rqs([load_run(run)], rows).set_index("item").loc[5, "score"] == 3
    tripod = pd.read_csv(tmp_path / "rep" / "tripod_ai.csv").set_index("item")
    assert tripod.loc["23a", "status"] != TO_FILL and tripod.loc["17", "status"] == TO_FILL


def test_runs_labelled_by_targets_and_replicates_by_kind(tmp_path):
    assert label_by_targets("idh_baseline_lr", {"targets": ["mgmt"]}) == "mgmt_baseline_lr (experiment idh_baseline_lr)"
    assert label_by_targets("idh_hybrid", {"targets": ["idh", "mgmt"]}) == "idh_hybrid"
    assert label_by_targets("survival_deep", {"targets": [], "survival": True}) == "survival_deep"
    subjects = cohort(50)
    folds = []
    for k in range(5):  # one run per fold, as train.py -m data.split.fold=0,...,4 writes them
        run = write_run(tmp_path / f"f{k}", subjects, "idh_baseline_lr", "baseline_lr_l2", 0, 1.5, markers=("mgmt",),
                        survival=False, n_folds=5)
        pred = pd.read_csv(run / "predictions.csv")
        pred[pred.fold == k].to_csv(run / "predictions.csv", index=False)
        meta = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({**meta, "targets": ["mgmt"]}))
        folds.append(run)
    md = report(folds, tmp_path / "rep")
    assert "mgmt_baseline_lr (experiment idh_baseline_lr)" in md and "| idh_baseline_lr |" not in md
    assert replicate_label([load_run(r) for r in folds]) == "k=5 folds" and "(k=5 folds)" in md
    seeds = [write_run(tmp_path / f"s{i}", subjects, "x", "hybrid", i, 1.0, survival=False) for i in (0, 1)]
    assert replicate_label([load_run(r) for r in seeds]) == "k=2 seeds"


def test_a_predict_run_is_evaluated_without_the_subjects_the_model_was_fitted_on(tmp_path):
    """predict.py marks subjects of the model's own training/validation split (seen_in_training):
    evaluate.py drops them from the external rows, and refuses a run that holds nothing else."""
    from radfusion.evaluation.run_folders import RunError

    run = tmp_path / "predict"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"validation": "external", "experiment": "idh_hybrid",
                                                  "mode": "hybrid"}))
    pred = pd.DataFrame({"subject_id": [f"S{i}" for i in range(6)], "split": "external", "fold": 0, "repeat": 0,
                         "prob_idh": np.linspace(0.1, 0.9, 6), "label_idh": [0, 1, 0, 1, 0, 1], "site": "A",
                         "seen_in_training": [True, True, False, False, False, False]})
    pred.to_csv(run / "predictions.csv", index=False)
    loaded = load_run(run)
    assert sorted(loaded.predictions["subject_id"]) == ["S2", "S3", "S4", "S5"]
    assert set(loaded.predictions["split"]) == {"test"} and "seen_in_training" not in loaded.predictions
    pred.assign(seen_in_training=True).to_csv(run / "predictions.csv", index=False)
    with pytest.raises(RunError, match="no external result"):
        load_run(run)
