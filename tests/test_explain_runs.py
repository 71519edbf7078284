"""``explain=true`` through the real entry point on a tiny synthetic cohort with a strong planted IDH effect
(``effect_scale=3``): what the explanations find, checked against the generator's ground truth and the run's
own predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import open_dict
from sklearn.metrics import roc_auc_score

from helpers.config import compose_train_cfg, tiny_data_overrides
from radfusion.training.run import train

#: 24 subjects (12 train, 6 validation, 6 test), 40³, IDH nearly separable; T1ce (enhancement, necrosis) and
#: FLAIR (edema, T2–FLAIR mismatch) only, to halve the extraction.
STRONG = {"n_subjects": 24, "shape": (40, 40, 40), "seed": 4, "n_sites": 2}
#: Habitats the generator's IDH latent acts on (docs/synthetic.md): necrosis (NCR), enhancement (ET), the
#: tumour core they make up (TC) and the T2–FLAIR mismatch of the non-enhancing core, labelled edema (ED).
IDH_HABITATS = {"NCR", "ET", "TC", "ED"}


@pytest.fixture(scope="module")
def strong_cohort(tmp_path_factory) -> Path:
    from radfusion.synthetic.generator import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("strong"), progress=False, effect_scale=3.0, **STRONG).parent


@pytest.fixture(scope="module")
def strong_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("strong_cache")


def _cfg(cohort: Path, cache: Path, tmp_path: Path, experiment: str, extra: list[str]):
    overrides = [
        f"experiment={experiment}", "logger=csv", *tiny_data_overrides(cohort, STRONG),
        "data.cohort.synthetic.effect_scale=3.0", "data.cohort.sequences=[t1ce,flair]", "data.batch_size=4",
        "~features.params.featureClass", "+features.params.featureClass={shape: null, firstorder: null}",
        f"paths.cache_dir={cache}", f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'runs'}",
        "trainer.max_epochs=2", "+trainer.enable_progress_bar=false", "n_bootstrap=20", "explain=true", *extra,
    ]
    cfg = compose_train_cfg(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


@pytest.mark.slow
def test_xgboost_shap_finds_the_planted_idh_habitats(strong_cohort, strong_cache, tmp_path):
    cfg = _cfg(strong_cohort, strong_cache, tmp_path, "idh_baseline_xgb", [])
    _, objects = train(cfg)
    out = Path(cfg.paths.output_dir) / "explain"
    for name in ("shap_values.csv", "shap_importance.csv", "shap_groups.csv", "shap_beeswarm.png", "explain.json"):
        assert (out / name).is_file(), name
    info = json.loads((out / "explain.json").read_text())["heads"]["idh"]
    assert info["explainer"] == "tree"
    importance = pd.read_csv(out / "shap_importance.csv")
    top = importance[importance.mean_abs_shap > 0].head(20)  # 12 training subjects: few features get splits
    assert len(top) >= 5
    assert top["habitat"].isin(IDH_HABITATS).mean() >= 0.5, top[["name", "mean_abs_shap"]]
    assert top["habitat"].isin({"NCR", "ET", "TC"}).any()  # necrosis / enhancement themselves
    groups = pd.read_csv(out / "shap_groups.csv")
    assert groups[groups.level == "habitat"].iloc[0]["name"] in IDH_HABITATS

    # The top features separate IDH on the training subjects better than the average feature does.
    dm = objects["datamodule"]
    y = dm.labels[[dm.ids.index(s) for s in dm.splits["train"]], 0]
    known = ~np.isnan(y)
    X = pd.DataFrame(dm.radiomics["train"], columns=dm.feature_pipeline.feature_names_out_)[known]
    sep = X.apply(lambda col: abs(roc_auc_score(y[known], col) - 0.5) if col.std() > 0 else 0.0)
    assert sep[top["name"]].mean() > sep.mean()

    # Tree SHAP adds up to XGBoost's log-odds, i.e. to the probabilities in predictions.csv.
    values = pd.read_csv(out / "shap_values.csv", dtype={"subject_id": str}).set_index("subject_id")
    pred = pd.read_csv(Path(cfg.paths.output_dir) / "predictions.csv", dtype={"subject_id": str})
    prob = pred.set_index("subject_id").loc[values.index, "prob_idh"]
    margin = values["base_value"] + values.drop(columns="base_value").sum(axis=1)
    np.testing.assert_allclose(1 / (1 + np.exp(-margin)), prob, atol=1e-5)
    assert set(values.index) == set(dm.splits["val"]) | set(dm.splits["test"])


@pytest.mark.slow
def test_hybrid_explanations_saliency_in_the_tumour_and_fusion_weights(strong_cohort, strong_cache, tmp_path):
    nib = pytest.importorskip("nibabel")
    cfg = _cfg(strong_cohort, strong_cache, tmp_path, "idh_hybrid", [
        "model/fusion=gated", "model.encoder.block_inplanes=[4,8,8,16]", "explanation.shap_splits=[test]",
        "explanation.n_background=10", "explanation.ig_steps=16"])
    _, objects = train(cfg)
    dm = objects["datamodule"]
    out = Path(cfg.paths.output_dir) / "explain"

    sal = pd.read_csv(out / "saliency" / "saliency.csv", dtype={"subject_id": str})
    assert len(sal) == 4 and set(sal.subject_id) <= set(dm.splits["test"])  # 2 test subjects of each class
    assert sorted(sal.label_idh) == [0, 0, 1, 1]
    # Positive attribution concentrates in the tumour: a larger share than the tumour's share of the ROI.
    assert sal.positive_share_in_mask.median() > sal.mask_fraction.median()
    assert (sal.positive_share_in_mask > sal.mask_fraction).mean() >= 0.75
    # IG completeness: the saved map sums to f(x) - f(baseline) up to captum's convergence delta, which is
    # small in logit units (16 steps through a ReLU network).
    sid = sal.subject_id.iloc[0]
    ig = np.asarray(nib.load(out / "saliency" / f"{sid}_ig.nii.gz").dataobj, dtype=np.float64)
    assert ig.shape == (16, 16, 16, len(dm.roi_settings.sequences))
    assert ig.sum() == pytest.approx(sal.f_x_minus_f_baseline.iloc[0] + sal.ig_delta.iloc[0], abs=1e-4)
    assert sal.ig_delta.abs().max() < 0.02
    assert (out / "saliency" / f"{sid}.png").is_file() and (out / "saliency" / f"{sid}_mask.nii.gz").is_file()

    # Gate values and branch contributions for every subject; a per-class summary.
    gates = pd.read_csv(out / "fusion_weights.csv", dtype={"subject_id": str})
    assert sorted(gates.subject_id) == sorted(dm.ids) and gates.gate_image_mean.between(0, 1).all()
    contrib = pd.read_csv(out / "branch_contributions.csv", dtype={"subject_id": str})
    assert {"image_idh", "radiomics_idh", "output_idh"} <= set(contrib.columns) and len(contrib) == len(dm.ids)
    by_class = pd.read_csv(out / "branch_contributions_by_class.csv")
    assert {"radiomics_idh_mean", "image_idh_mean_abs"} <= set(by_class.columns)

    # Permutation SHAP of the radiomics input adds up to the network's logit of each explained subject.
    values = pd.read_csv(out / "shap_values.csv", dtype={"subject_id": str}).set_index("subject_id")
    logit = contrib.set_index("subject_id").loc[values.index, "output_idh"]
    np.testing.assert_allclose(values["base_value"] + values.drop(columns="base_value").sum(axis=1), logit,
                               atol=1e-4)
    pred = pd.read_csv(Path(cfg.paths.output_dir) / "predictions.csv", dtype={"subject_id": str})
    pred = pred.set_index("subject_id")
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), pred.loc[values.index, "prob_idh"], atol=1e-5)
    summary = json.loads((out / "explain.json").read_text())
    assert summary["shap"]["idh"]["seconds_per_subject"] > 0 and summary["saliency"]["seconds_per_subject"] > 0

    # evaluate.py's report shows them: the SHAP groups table, the beeswarm and a saliency overlay.
    from helpers.config import compose_config
    from radfusion.evaluation.run import evaluate

    report = tmp_path / "report"
    evaluate(compose_config("eval.yaml", [f"runs=[{cfg.paths.output_dir}]", "n_bootstrap=50", "html=false",
                                          f"paths.root_dir={tmp_path}", f"report_dir={report}"]))
    text = (report / "report.md").read_text()
    assert "## Explanations" in text and summary["shap"]["idh"]["top_groups"][0] in text
    assert "positive attribution inside the tumour" in text
    assert list(report.glob("explain_*_beeswarm.png")) and list(report.glob("explain_*_saliency.png"))
