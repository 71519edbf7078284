"""Train here, apply there: the model bundle and ``predict.py``.

Round trip: a bundle applied to its own training cohort reproduces the run's test probabilities; new
synthetic sites meet the ComBat policy; one unlabelled subject in a folder is scored; bad bundles and
cohorts are refused with messages naming the bundle, the subject and the fix.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import open_dict

from helpers.config import TINY, compose_config, tiny_data_overrides
from helpers.paths import ROOT
from radfusion.cohort.subject import CohortError
from radfusion.inference.predict import predict
from radfusion.training.bundle import BundleError, load_bundle
from radfusion.training.run import train

#: An external tiny cohort: other patients (seed 5) from sites the tiny cohort never had (C, D).
EXTERNAL = {"n_subjects": 10, "shape": (40, 40, 40), "seed": 5, "n_sites": 2, "first_site": 2, "id_prefix": "EXT"}


@pytest.fixture(scope="module")
def external_cohort(tmp_path_factory) -> Path:
    from radfusion.synthetic.generator import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("external"), progress=False, **EXTERNAL)


def predict_cfg(run: Path, cohort_manifest: Path, synthetic: dict, cache: Path, out: Path, extra=()):
    overrides = [f"bundle={run}", *tiny_data_overrides(cohort_manifest.parent, synthetic), f"paths.cache_dir={cache}",
                 f"paths.data_dir={out / 'data'}", "n_bootstrap=50", *extra]
    for key in ("first_site", "id_prefix"):
        if key in synthetic:
            overrides.append(f"+data.cohort.synthetic.{key}={synthetic[key]}")
    cfg = compose_config("predict.yaml", overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize(("experiment", "extra"), [
    ("idh_handcrafted", []), ("idh_deep", []), ("idh_hybrid", ["model.clinical=[age,sex]"]),
    ("idh_baseline_lr", ["model.clinical=[age]"]), ("survival_baseline_coxph", []), ("idh_clinical", [])])
def test_predict_reproduces_the_training_run(cfg_factory, tiny_cohort, shared_cache, tmp_path, experiment, extra):
    """predict.py on the training cohort gives the run's own probabilities (1e-6) for every subject."""
    cfg = cfg_factory(experiment, extra)
    train(cfg)
    run = Path(cfg.paths.output_dir)
    meta = json.loads((run / "model" / "bundle.json").read_text())
    assert meta["format"] == "radfusion-bundle" and meta["targets"] == list(cfg.data.targets)
    assert meta["training_sites"] and meta["files"]
    assert meta["clinical_columns"] == list(cfg.model.get("clinical") or [])
    assert ("clinical.json" in meta["files"]) == bool(meta["clinical_columns"])
    for name in meta["files"]:
        assert (run / "model" / name).is_file()

    out = tmp_path / "pred"
    metrics = predict(predict_cfg(run, tiny_cohort, TINY, shared_cache, out))
    trained = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str}).set_index("subject_id")
    applied = pd.read_csv(out / "predictions.csv", dtype={"subject_id": str}).set_index("subject_id")
    assert set(applied["split"]) == {"external"} and sorted(applied.index) == sorted(trained.index)
    score = "risk" if "risk" in trained else "prob_idh"
    np.testing.assert_allclose(applied.loc[trained.index, score], trained[score], rtol=0, atol=1e-6)
    assert metrics["kind"] == "predict" and (out / "manifest.json").is_file()
    # The run's own train and validation subjects are recognised (hashed ids in the bundle): predicted,
    # not scored, so the "external" score is the run's test split and nothing it was fitted or selected on.
    fitted = trained.index[trained["split"].isin(["train", "val"])]
    assert sorted(applied.index[applied["seen_in_training"]]) == sorted(fitted)
    assert sorted(metrics["seen_in_training"]) == sorted(fitted) and metrics["n_scored"] == len(trained) - len(fitted)
    if score == "prob_idh":
        assert (out / "roc.png").is_file()
        test = applied.loc[trained.index[trained["split"] == "test"]]
        test = test[test["label_idh"].notna()]
        from sklearn.metrics import roc_auc_score

        assert metrics["external/auc_idh"] == pytest.approx(roc_auc_score(test.label_idh, test.prob_idh))
        run_metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["external/auc_idh"] == pytest.approx(run_metrics["test/auc_idh"], abs=1e-6)


@pytest.mark.slow
def test_new_sites_combat_policy_and_one_unlabelled_subject(cfg_factory, tiny_cohort, shared_cache,
                                                            external_cohort, tmp_path):
    cfg = cfg_factory("idh_handcrafted", ["data.processing.combat=true"])
    train(cfg)
    run = Path(cfg.paths.output_dir)
    results = {}
    for policy in ("identity", "estimate"):
        out = tmp_path / policy
        m = predict(predict_cfg(run, external_cohort, EXTERNAL, shared_cache, out, [f"combat_unseen={policy}"]))
        assert m["combat_unseen"] == policy and m["unseen_sites"] == ["C", "D"]
        saved = json.loads((out / "metrics.json").read_text())
        assert saved["combat_unseen"] == policy and saved["validation"] == "external"
        results[policy] = pd.read_csv(out / "predictions.csv", dtype={"subject_id": str})
        assert results[policy]["subject_id"].str.startswith("EXT_").all()
        assert set(results[policy]["site"]) <= {"C", "D"}
    assert not np.allclose(results["identity"].prob_idh, results["estimate"].prob_idh)

    # evaluate.py: the internal test split and the external cohort as two groups of one report
    from radfusion.evaluation.run import evaluate

    ecfg = compose_config("eval.yaml", [f"runs=[{run},{tmp_path / 'identity'}]", "n_bootstrap=50", "html=false",
                                        f"paths.root_dir={tmp_path}", f"report_dir={tmp_path / 'report'}"])
    table = evaluate(ecfg)
    assert set(table["group"]) == {"idh_handcrafted", "idh_handcrafted@external"}
    ext = table[table["group"] == "idh_handcrafted@external"].iloc[0]
    labelled = results["identity"].dropna(subset=["label_idh"])
    from sklearn.metrics import roc_auc_score

    assert ext["auc"] == pytest.approx(roc_auc_score(labelled.label_idh, labelled.prob_idh))

    # One new patient: a BraTS-2021 case folder with four sequences and a mask, no clinical table.
    row = pd.read_csv(external_cohort).iloc[0]
    case = tmp_path / "new_patient" / "CASE1"
    case.mkdir(parents=True)
    for kind in ("t1", "t1ce", "t2", "flair", "seg"):
        shutil.copy(external_cohort.parent / row[kind], case / f"CASE1_{kind}.nii.gz")
    out = tmp_path / "single"
    pcfg = compose_config("predict.yaml", [f"bundle={run / 'model'}", "data=brats", f"data.cohort.path={case}",
                                           "data.cohort.clinical=null", f"paths.cache_dir={shared_cache}",
                                           "n_bootstrap=50", "progress=false"])
    with open_dict(pcfg):
        pcfg.paths.output_dir = str(out)
    m = predict(pcfg)
    pred = pd.read_csv(out / "predictions.csv", dtype={"subject_id": str})
    assert pred["subject_id"].tolist() == ["CASE1"] and pred["label_idh"].isna().all()
    assert 0 <= pred["prob_idh"].iloc[0] <= 1 and m["unlabelled"]["idh"] == ["CASE1"]
    assert np.isnan(m["external/auc_idh"])


def test_bad_bundles_are_refused(tmp_path):
    with pytest.raises(BundleError, match="not a radfusion model bundle"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": "radfusion-bundle", "format_version": 99,
                                                      "radfusion_version": "9.9.9"}))
    with pytest.raises(BundleError, match=r"made by radfusion 9\.9\.9.*this is radfusion"):
        load_bundle(tmp_path)


@pytest.mark.slow
def test_bundle_checks_files_features_and_sequences(cfg_factory, tiny_cohort, shared_cache, tmp_path):
    from radfusion.inference.predict import cohort_for_bundle, model_inputs

    cfg = cfg_factory("idh_handcrafted")
    _, objects = train(cfg)
    run = Path(cfg.paths.output_dir)
    bundle = load_bundle(run)
    # a cohort without a sequence the model needs
    with pytest.raises(CohortError, match=r"needs sequence\(s\) \['t2', 'flair'\]"):
        cohort_for_bundle(bundle, {"source": "manifest", "path": "x", "sequences": ["t1", "t1ce"]})
    # a feature table missing columns the model was trained on: listed
    prepared = objects["datamodule"].prepared
    dropped = bundle["feature_names_in"][:3]
    partial = type(prepared)(prepared.cohort, prepared.ids, prepared.features.drop(columns=dropped))
    with pytest.raises(CohortError, match="lacks 3") as err:
        model_inputs(bundle, partial, prepared.ids, None)
    assert dropped[0] in str(err.value)
    # a processor file changed after the bundle was written
    (run / "model" / "processor.skops").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="does not match the checksum"):
        load_bundle(run).load("processor.skops")
    # a model config naming a foreign class is not built
    meta = json.loads((run / "model" / "bundle.json").read_text())
    from radfusion.training.bundle import check_targets

    with pytest.raises(BundleError, match="os.system"):
        check_targets({"encoder": {"_target_": "os.system"}}, run)
    assert meta["kind"] == "network"


def test_predict_cli_accepts_model_equals(tmp_path):
    """``model=`` is the bundle on predict.py's command line (a config group of train.py otherwise)."""
    res = subprocess.run([sys.executable, str(ROOT / "predict.py"), f"model={tmp_path}", f"paths.root_dir={tmp_path}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 1
    assert "not a radfusion model bundle" in res.stderr + res.stdout


@pytest.mark.slow
def test_predict_reproduces_a_bf16_run(cfg_factory, tiny_cohort, shared_cache, tmp_path):
    """trainer.precision=auto trains the 24³ deep model in bf16 on a bf16 CPU; the bundle records it and
    predict.py scores under the same autocast and memory format, reproducing the run's probabilities."""
    from radfusion.training.precision import cpu_bf16_supported

    if not cpu_bf16_supported():
        pytest.skip("this CPU has no native bf16: auto trains in fp32")
    cfg = cfg_factory("idh_deep", ["data.roi.size=24"])
    assert cfg.trainer.precision == "auto"
    metrics, _ = train(cfg)
    run = Path(cfg.paths.output_dir)
    meta = json.loads((run / "model" / "bundle.json").read_text())
    assert metrics["precision"] == meta["model"]["precision"] == "bf16-mixed"
    assert meta["model"]["channels_last"] is True
    out = tmp_path / "pred"
    predict(predict_cfg(run, tiny_cohort, TINY, shared_cache, out))
    trained = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str}).set_index("subject_id")
    applied = pd.read_csv(out / "predictions.csv", dtype={"subject_id": str}).set_index("subject_id")
    np.testing.assert_allclose(applied.loc[trained.index, "prob_idh"], trained["prob_idh"], rtol=0, atol=1e-6)
