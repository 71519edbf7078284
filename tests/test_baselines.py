"""Classical baselines on a fake fitted datamodule with planted signal, against direct library fits."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv

from radfusion.baselines import BaselineError, run_baseline

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SPLIT_SIZES = {"train": 90, "val": 40, "test": 40}
#: Every shipped baseline: configs/model/baseline_<kind>.yaml.
BASELINES = sorted(p.stem.removeprefix("baseline_") for p in (CONFIGS / "model").glob("baseline_*.yaml"))


def shipped(kind: str, grid: dict | None = None, seed: int = 0, **estimator) -> dict:
    """The shipped ``baseline_<kind>.yaml`` as train.py hands it to run_baseline (resolved, ``${seed}`` set),
    with ``estimator`` keyword arguments and ``grid`` replaced where given."""
    cfg = OmegaConf.load(CONFIGS / "model" / f"baseline_{kind}.yaml")
    cfg.seed = seed  # ${seed} comes from train.yaml in a real run
    model_cfg = OmegaConf.to_container(cfg, resolve=True)
    model_cfg["estimator"].update(estimator)
    if grid is not None:
        model_cfg["grid"] = grid
    return model_cfg


def make_dm(seed: int = 0, n_features: int = 12) -> SimpleNamespace:
    """A set-up datamodule stand-in: IDH depends on feature 0, MGMT on feature 1, hazard on 0 and 2."""
    rng = np.random.default_rng(seed)
    n = sum(SPLIT_SIZES.values())
    ids = [f"S{i:03d}" for i in range(n)]
    X = rng.normal(size=(n, n_features))
    idh = (X[:, 0] + 0.7 * rng.normal(size=n) > 0.3).astype(float)
    mgmt = (X[:, 1] + 0.7 * rng.normal(size=n) > 0).astype(float)
    idh[rng.choice(n, 15, replace=False)] = np.nan  # unknown labels are never guessed
    hazard = np.exp(-0.9 * X[:, 0] + 0.6 * X[:, 2])
    death = rng.weibull(1.5, size=n) * 800 / hazard ** (1 / 1.5)
    censor = rng.uniform(100, 2500, size=n)
    survival = pd.DataFrame({"os_days": np.minimum(death, censor).round() + 1,
                             "os_event": (death <= censor).astype(float)}, index=pd.Index(ids, name="subject_id"))
    survival.iloc[[3, 50], :] = np.nan  # survival unknown
    order = rng.permutation(n)
    bounds = np.cumsum([0, *SPLIT_SIZES.values()])
    splits = {s: [ids[i] for i in order[bounds[k]:bounds[k + 1]]] for k, s in enumerate(SPLIT_SIZES)}
    index = {s: i for i, s in enumerate(ids)}
    return SimpleNamespace(
        ids=ids, targets=["idh", "mgmt"], labels=np.column_stack([idh, mgmt]), survival=survival,
        splits=splits, fold=2, radiomics={s: X[[index[i] for i in splits[s]]] for s in splits})


def _rows(dm, split: str) -> np.ndarray:
    index = {s: i for i, s in enumerate(dm.ids)}
    return np.array([index[i] for i in dm.splits[split]])


def test_lr_l2_equals_a_direct_scikit_learn_fit():
    dm = make_dm()
    pred = run_baseline(shipped("lr_l2", grid={}, C=0.5), dm)
    assert len(pred) == len(dm.ids) and set(pred["subject_id"]) == set(dm.ids)
    assert list(pred.columns) == ["subject_id", "split", "fold", "prob_idh", "label_idh", "prob_mgmt", "label_mgmt"]
    assert (pred["fold"] == 2).all()
    for t, marker in enumerate(dm.targets):
        y_tr = dm.labels[_rows(dm, "train"), t]
        known = ~np.isnan(y_tr)
        ref = LogisticRegression(C=0.5, l1_ratio=0.0, class_weight="balanced", max_iter=5000, random_state=0)
        ref.fit(dm.radiomics["train"][known], y_tr[known].astype(int))
        test = pred[pred.split == "test"]
        assert test["subject_id"].tolist() == dm.splits["test"]
        np.testing.assert_allclose(test[f"prob_{marker}"], ref.predict_proba(dm.radiomics["test"])[:, 1], atol=1e-10)
        y_te = dm.labels[_rows(dm, "test"), t]
        np.testing.assert_array_equal(test[f"label_{marker}"].to_numpy(), y_te)  # NaN stays NaN
        k = ~np.isnan(y_te)
        auc = roc_auc_score(y_te[k], test[f"prob_{marker}"].to_numpy()[k])
        assert auc == pytest.approx(roc_auc_score(y_te[k], ref.predict_proba(dm.radiomics["test"][k])[:, 1]))
        assert auc > 0.75  # the planted signal is found


def test_grid_is_chosen_on_validation_only():
    dm = make_dm(1)
    grid = [0.001, 0.1, 10.0]
    cfg = shipped("lr_l2", grid={"C": grid})
    pred = run_baseline(cfg, dm)
    chosen = pred.attrs["baseline"]["chosen"]["idh"]["C"]
    y_tr, y_va = dm.labels[_rows(dm, "train"), 0], dm.labels[_rows(dm, "val"), 0]
    kt, kv = ~np.isnan(y_tr), ~np.isnan(y_va)
    val_auc = []
    for c in grid:
        m = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=0)
        m.fit(dm.radiomics["train"][kt], y_tr[kt].astype(int))
        val_auc.append(roc_auc_score(y_va[kv], m.predict_proba(dm.radiomics["val"][kv])[:, 1]))
    assert chosen == grid[int(np.argmax(val_auc))]
    # Scrambling the test labels changes nothing that was fitted or chosen.
    dm2 = make_dm(1)
    rows = _rows(dm2, "test")
    dm2.labels[rows] = dm2.labels[np.random.default_rng(0).permutation(rows)]
    pred2 = run_baseline(cfg, dm2)
    assert pred2.attrs["baseline"]["chosen"] == pred.attrs["baseline"]["chosen"]
    np.testing.assert_array_equal(pred2["prob_idh"], pred["prob_idh"])


def test_coxph_risk_equals_sksurv_predict():
    dm = make_dm(2)
    dm.targets, dm.labels = [], np.empty((len(dm.ids), 0))
    pred = run_baseline(shipped("coxph", grid={}, alpha=0.5, ties="efron"), dm)
    assert list(pred.columns) == ["subject_id", "split", "fold", "risk", "os_days", "os_event"]
    surv = dm.survival.loc[dm.splits["train"]]
    known = surv.notna().all(axis=1).to_numpy()
    ref = CoxPHSurvivalAnalysis(alpha=0.5, ties="efron").fit(
        dm.radiomics["train"][known], Surv.from_arrays(surv["os_event"][known].astype(bool), surv["os_days"][known]))
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(pred.loc[pred.split == split, "risk"], ref.predict(dm.radiomics[split]), rtol=1e-9)
    test = pred[(pred.split == "test") & pred.os_days.notna()]
    c = concordance_index_censored(test.os_event.astype(bool), test.os_days, test.risk)[0]
    assert c > 0.65  # higher risk = earlier death on the planted hazard


def test_coxnet_alpha_chosen_by_validation_cindex():
    dm = make_dm(3)
    pred = run_baseline(shipped("coxnet", n_alphas=20), dm)
    alpha = pred.attrs["baseline"]["chosen"]["survival"]["alpha"]
    tr = dm.survival.loc[dm.splits["train"]]
    kt = tr.notna().all(axis=1).to_numpy()
    ref = CoxnetSurvivalAnalysis(l1_ratio=0.5, n_alphas=20, alpha_min_ratio=0.01, max_iter=100000).fit(
        dm.radiomics["train"][kt], Surv.from_arrays(tr["os_event"][kt].astype(bool), tr["os_days"][kt]))
    va = dm.survival.loc[dm.splits["val"]]
    kv = va.notna().all(axis=1).to_numpy()
    scores = [concordance_index_censored(va["os_event"][kv].astype(bool), va["os_days"][kv],
                                         ref.predict(dm.radiomics["val"][kv], alpha=a))[0] for a in ref.alphas_]
    assert alpha == pytest.approx(ref.alphas_[int(np.argmax(scores))])
    np.testing.assert_allclose(pred.loc[pred.split == "test", "risk"], ref.predict(dm.radiomics["test"], alpha=alpha))


@pytest.mark.parametrize("kind", BASELINES)
def test_every_shipped_config_runs_and_finds_the_signal(kind):
    model_cfg = shipped(kind)
    assert model_cfg["mode"] == f"baseline_{kind}" and model_cfg["baseline"] == kind
    if kind in ("rf", "rsf"):
        model_cfg["estimator"]["n_estimators"] = 60  # keep the test fast on 2 cores
    dm = make_dm(4)
    pred = run_baseline(model_cfg, dm)
    test = pred[pred.split == "test"]
    if "risk" in pred:
        assert np.isfinite(pred["risk"]).all()
        t = test[test.os_days.notna()]
        assert concordance_index_censored(t.os_event.astype(bool), t.os_days, t.risk)[0] > 0.6
    else:
        assert pred["prob_idh"].between(0, 1).all()
        k = test.label_idh.notna()
        assert roc_auc_score(test.label_idh[k], test.prob_idh[k]) > 0.7


def test_one_class_in_train_is_a_clear_error():
    dm = make_dm()
    rows = _rows(dm, "train")
    dm.labels[rows, 1] = np.where(np.isnan(dm.labels[rows, 1]), np.nan, 1.0)
    with pytest.raises(BaselineError, match=r"marker 'mgmt'.*train split.*all of class 1"):
        run_baseline(shipped("lr_l2", grid={}), dm)
    dm.targets, dm.labels = [], np.empty((len(dm.ids), 0))
    with pytest.raises(BaselineError, match="data.targets is empty"):
        run_baseline(shipped("rf", grid={}), dm)
    with pytest.raises(BaselineError, match=r"baseline noblock: model.estimator must be a \{_target_"):
        run_baseline({"baseline": "noblock"}, dm)
    with pytest.raises(BaselineError, match="sklearn.ensemble.NoSuchForest"):  # a target that cannot be imported
        run_baseline({"baseline": "typo", "estimator": {"_target_": "sklearn.ensemble.NoSuchForest"}}, dm)


def test_bad_survival_data_is_a_clear_error():
    dm = make_dm()
    dm.survival.loc[dm.splits["test"][0], "os_days"] = 0.0
    with pytest.raises(BaselineError, match=rf"os_days must be > 0.*{dm.splits['test'][0]}"):
        run_baseline(shipped("coxph"), dm)
    dm = make_dm()
    dm.survival.loc[dm.splits["train"], "os_event"] = 0.0
    dm.survival.loc[dm.splits["train"][0], "os_event"] = 1.0
    with pytest.raises(BaselineError, match="train split has 1 event"):
        run_baseline(shipped("coxnet"), dm)
    dm = make_dm()
    dm.radiomics["val"] = dm.radiomics["val"][:-1]
    with pytest.raises(BaselineError, match=r"radiomics\['val'\]"):
        run_baseline(shipped("coxph"), dm)


def test_experiment_configs_compose():
    from helpers.config import compose_train_cfg

    for exp, kind in [("idh_baseline_lr", "lr_l2"), ("idh_baseline_svm", "svm"), ("survival_baseline_coxnet", "coxnet"),
                      ("survival_baseline_rsf", "rsf"), ("idh_baseline_xgb", "xgb")]:
        cfg = compose_train_cfg([f"experiment={exp}"])
        assert cfg.model.baseline == kind and cfg.task_name == exp
        assert OmegaConf.to_container(cfg.model, resolve=True)["seed"] == cfg.seed
        if exp.startswith("survival"):
            assert cfg.data.survival is True and list(cfg.data.targets) == []
        else:
            assert list(cfg.data.targets) == ["idh"]


def test_ridge_coxph_in_row_space_equals_a_direct_sksurv_fit_when_p_exceeds_n():
    from radfusion.baselines.estimators import RidgeCoxPH

    rng = np.random.default_rng(6)
    n, p = 50, 120
    X = rng.normal(size=(n, p))
    time = rng.exponential(300 * np.exp(-0.5 * X[:, 0])) + 1
    y = Surv.from_arrays(rng.uniform(size=n) < 0.7, time)
    X_new = rng.normal(size=(20, p))
    for ties in ("breslow", "efron"):
        ours = RidgeCoxPH(alpha=5.0, ties=ties, tol=1e-12).fit(X, y)
        ref = CoxPHSurvivalAnalysis(alpha=5.0, ties=ties, tol=1e-12).fit(X, y)
        assert ours.model_.coef_.shape == (n,)  # the fit really happened in the n-dim row space
        np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-7)
        np.testing.assert_allclose(ours.predict(X_new), ref.predict(X_new), atol=1e-6)


def test_a_new_baseline_is_a_yaml_block():
    """No registry: any scikit-learn classifier named by _target_ is a marker baseline, grid included."""
    from sklearn.neighbors import KNeighborsClassifier

    dm = make_dm(5)
    cfg = {"baseline": "knn", "grid": {"n_neighbors": [3, 15]},
           "estimator": {"_target_": "sklearn.neighbors.KNeighborsClassifier", "weights": "distance"}}
    pred = run_baseline(cfg, dm)
    info = pred.attrs["baseline"]
    assert info["kind"] == "knn" and info["chosen"]["idh"]["weights"] == "distance"
    k = info["chosen"]["idh"]["n_neighbors"]
    y_tr = dm.labels[_rows(dm, "train"), 0]
    known = ~np.isnan(y_tr)
    ref = KNeighborsClassifier(n_neighbors=k, weights="distance")
    ref.fit(dm.radiomics["train"][known], y_tr[known].astype(int))
    np.testing.assert_array_equal(pred.loc[pred.split == "test", "prob_idh"],
                                  ref.predict_proba(dm.radiomics["test"])[:, 1])


def test_svm_calibration_folds_are_capped_by_the_smaller_class():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    from radfusion.baselines import CalibratedSVC

    rng = np.random.default_rng(7)
    X = rng.normal(size=(40, 5))
    y = np.r_[np.ones(3, int), np.zeros(37, int)]  # 3 of class 1: 5 calibration folds are impossible
    X[:3] += 1.5
    ours = CalibratedSVC(C=1.0, class_weight="balanced", random_state=0, calibration_cv=5).fit(X, y)
    assert ours.calibration_cv_ == 3
    ref = CalibratedClassifierCV(SVC(C=1.0, class_weight="balanced", random_state=0), method="sigmoid", cv=3,
                                 ensemble=False).fit(X, y)
    np.testing.assert_array_equal(ours.predict_proba(X), ref.predict_proba(X))


def test_xgboost_equals_a_direct_fit_and_is_deterministic():
    """The shipped XGBoost block (one thread, fixed seed) gives exactly a direct xgboost fit, twice."""
    from xgboost import XGBClassifier

    dm = make_dm(8)
    cfg = shipped("xgb", grid={}, n_estimators=40)
    pred = run_baseline(cfg, dm)
    assert list(pred.columns) == ["subject_id", "split", "fold", "prob_idh", "label_idh", "prob_mgmt", "label_mgmt"]
    np.testing.assert_array_equal(run_baseline(cfg, dm)["prob_idh"], pred["prob_idh"])
    params = {k: v for k, v in cfg["estimator"].items() if k != "_target_"}
    y_tr = dm.labels[_rows(dm, "train"), 0]
    known = ~np.isnan(y_tr)
    ref = XGBClassifier(**params).fit(dm.radiomics["train"][known], y_tr[known].astype(int))
    np.testing.assert_allclose(pred.loc[pred.split == "test", "prob_idh"],
                               ref.predict_proba(dm.radiomics["test"])[:, 1], rtol=1e-6)
