"""Selectors (L1-logistic, LASSO, CoxNet, mRMR) and the in-fold FeatureProcessor's steps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sksurv.util import Surv

from radfusion.features.processor import FeatureProcessor, make_feature_processor
from radfusion.features.selection import FeatureSelector, martingale_residuals, mrmr_order

PLANTED = [3, 17, 42]


def _data(n: int = 120, p: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    risk = 1.2 * X[:, 3] - 1.0 * X[:, 17] + 0.8 * X[:, 42]
    y = (risk + 0.5 * rng.normal(size=n) > 0).astype(float)
    t_event = rng.exponential(np.exp(-risk))
    t_cens = rng.exponential(2.0, n)
    surv = Surv.from_arrays(event=t_event <= t_cens, time=np.minimum(t_event, t_cens))
    return X, y, surv


@pytest.mark.parametrize("method", ["l1_logistic", "lasso", "mrmr", "rfecv"])
def test_marker_selectors_find_the_planted_features(method):
    X, y, _ = _data()
    sel = FeatureSelector(method, n_features=3).fit(X, y)
    assert sorted(sel.support_) == PLANTED
    assert FeatureSelector(method, n_features=8).fit(X, y).transform(X).shape == (len(X), 8)


@pytest.mark.parametrize("method", ["coxnet", "mrmr", "rfecv"])
def test_survival_selectors_find_the_planted_features(method):
    X, _, surv = _data()
    assert sorted(FeatureSelector(method, n_features=3).fit(X, surv).support_) == PLANTED
    # (time, event) tuples are the same target
    tup = FeatureSelector(method, n_features=3).fit(X, (surv["time"], surv["event"].astype(float)))
    assert sorted(tup.support_) == PLANTED


def test_cross_validated_penalty_keeps_the_planted_features():
    X, y, surv = _data()
    for method, target in (("l1_logistic", y), ("lasso", y), ("coxnet", surv)):
        support = FeatureSelector(method).fit(X, target).support_
        assert set(PLANTED) <= set(support) and len(support) < 60, (method, len(support))


def test_lasso_entry_order_matches_lars():
    """The coordinate-descent LASSO path and LARS (another algorithm) agree on who enters first."""
    from sklearn.linear_model import lars_path

    X, y, _ = _data(seed=2)
    Xc = X - X.mean(axis=0)
    _, active, _ = lars_path(Xc, y - y.mean(), method="lasso", max_iter=6)
    assert list(FeatureSelector("lasso", n_features=6).fit(X, y).support_) == list(active[:6])


def test_unknown_labels_are_ignored():
    X, y, _ = _data()
    y_missing = y.copy()
    y_missing[:20] = np.nan
    a = FeatureSelector("l1_logistic", n_features=5).fit(X, y_missing).support_
    b = FeatureSelector("l1_logistic", n_features=5).fit(X[20:], y[20:]).support_
    np.testing.assert_array_equal(a, b)


def test_mrmr_against_a_direct_computation_and_redundancy():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(80, 12))
    X[:, 1] = X[:, 0] + 0.05 * rng.normal(size=80)  # a near copy of feature 0
    y = (X[:, 0] + 0.7 * X[:, 5] + 0.5 * rng.normal(size=80) > 0).astype(float)
    rel = np.array([abs(np.corrcoef(X[:, j], y)[0, 1]) for j in range(12)])
    chosen = [int(np.argmax(rel))]
    while len(chosen) < 6:  # textbook MID criterion, one pair of features at a time
        score = {j: rel[j] - np.mean([abs(np.corrcoef(X[:, j], X[:, s])[0, 1]) for s in chosen])
                 for j in range(12) if j not in chosen}
        chosen.append(max(score, key=score.get))
    np.testing.assert_array_equal(mrmr_order(X, rel, 6), chosen)
    got = FeatureSelector("mrmr", n_features=2).fit(X, y).support_
    assert got[0] in (0, 1) and got[1] == 5  # the copy of the first pick is redundant


def test_martingale_residuals_match_lifelines_nelson_aalen():
    from lifelines import NelsonAalenFitter

    _, _, surv = _data()
    naf = NelsonAalenFitter(nelson_aalen_smoothing=False).fit(surv["time"], surv["event"])
    H = naf.cumulative_hazard_at_times(surv["time"]).to_numpy()
    np.testing.assert_allclose(martingale_residuals(surv), surv["event"] - H, atol=1e-10)


def test_selector_errors():
    X, y, surv = _data(n=40, p=50)
    with pytest.raises(ValueError, match="needs a survival target, got binary"):
        FeatureSelector("coxnet", 3).fit(X, y)
    with pytest.raises(ValueError, match="unknown selector 'ridge'"):
        FeatureSelector("ridge", 3).fit(X, y)
    with pytest.raises(ValueError, match="one class only"):
        FeatureSelector("l1_logistic", 3).fit(X, np.ones(40))


def test_rfecv_equals_a_direct_scikit_learn_rfecv_on_the_labelled_rows():
    """rfecv = scikit-learn's RFECV (L2 logistic, stratified 5-fold AUC) on the rows with a label; it ends
    in the same fitted attributes as every selector (plain arrays only) and keeps the planted features."""
    from sklearn.feature_selection import RFECV
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    X, y, _ = _data(n=100, p=60, seed=3)
    y_masked = y.copy()
    y_masked[:10] = np.nan  # unknown labels are left out, never guessed
    sel = FeatureSelector("rfecv", random_state=1).fit(X, y_masked)
    ref = RFECV(LogisticRegression(C=1.0, max_iter=2000), step=0.1, scoring="roc_auc",
                cv=StratifiedKFold(5, shuffle=True, random_state=1)).fit(X[10:], y[10:])
    assert sorted(sel.support_) == sorted(np.flatnonzero(ref.support_))
    assert set(PLANTED) <= set(sel.support_)
    np.testing.assert_array_equal(sel.ranking_, ref.ranking_)
    np.testing.assert_allclose(sel.cv_scores_, ref.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(sel.cv_n_features_, ref.cv_results_["n_features"])
    coef = np.abs(ref.estimator_.coef_.ravel())
    assert list(sel.support_) == list(np.flatnonzero(ref.support_)[np.argsort(-coef, kind="stable")])  # by |coef|
    assert sel.kind_ == "binary" and sel.n_features_in_ == 60
    for name in ("support_", "ranking_", "cv_scores_", "cv_n_features_"):
        assert type(getattr(sel, name)) is np.ndarray, name
    np.testing.assert_array_equal(sel.transform(X), X[:, sel.support_])
    with pytest.raises(ValueError, match="rfe_step must be a fraction"):
        FeatureSelector("rfecv", rfe_step=2).fit(X, y)
    with pytest.raises(ValueError, match="needs a binary or survival target, got continuous"):
        FeatureSelector("rfecv").fit(X, X[:, 0])


def test_rfecv_in_the_processor():
    X, y, surv = _data(n=120, p=60, seed=4)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    proc = make_feature_processor({"selector": "rfecv", "n_features": 3}).fit(frame, y)
    assert sorted(proc.feature_names_out_) == ["x17", "x3", "x42"]
    assert proc.transform(frame).shape == (len(frame), 3)
    cox = make_feature_processor({"selector": "rfecv"}).fit(frame, surv)  # number kept by 5-fold Harrell's C
    assert {"x3", "x17", "x42"} <= set(cox.feature_names_out_) and cox.selector_.cv_scores_.max() > 0.6


# ------------------------------------------------------------------ FeatureProcessor


def _table(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"f{i}" for i in range(6)],
                     index=[f"S{i:02d}" for i in range(n)])
    y = (X.f2 + 0.3 * rng.normal(size=n) > 0).astype(float).to_numpy()
    X["f2_copy"] = X.f2 * 3 + 0.01 * rng.normal(size=n)   # |r| ~ 1 with f2, the relevant one
    X["f0_copy"] = X.f0 * -2 + 0.01 * rng.normal(size=n)  # |r| ~ 1 with f0, irrelevant
    X["const"] = 7.0
    X["all_nan"] = np.nan
    X.loc[X.index[:10], ["f3", "f4"]] = np.nan           # one shared missingness pattern
    X.loc[X.index[5:8], "f5"] = np.nan
    return X, y


def test_processor_steps_and_summary():
    X, y = _table()
    proc = FeatureProcessor(corr_threshold=0.95, clip=None).fit(X, y)
    names = proc.feature_names_out_
    # all-NaN dropped, indicators deduplicated (f3/f4 share one), constant dropped, of each |r|~1
    # pair the label-relevant one (f2) and, for the irrelevant pair, the more relevant one kept
    assert "all_nan" not in names and "const" not in names
    assert [n for n in names if n.startswith("missing:")] == ["missing:f3", "missing:f5"]
    assert "f2" in names and "f2_copy" not in names
    assert ("f0" in names) != ("f0_copy" in names)
    assert proc.summary_ == {"input": 10, "after_impute": 9, "indicators": 2, "after_variance": 10,
                             "after_corr": 8}
    Z = proc.transform(X)
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(Z.std(axis=0), 1, atol=1e-12)
    # without a label the first of each correlated pair stays
    unsup = FeatureProcessor(corr_threshold=0.95).fit(X)
    assert "f0" in unsup.feature_names_out_ and "f0_copy" not in unsup.feature_names_out_


def test_processor_imputes_with_training_medians_and_flags_missing():
    X, y = _table()
    proc = FeatureProcessor(scale=False, clip=None).fit(X, y)
    new = X.iloc[:3].copy()
    new["f1"] = np.nan  # complete in training: imputed, counted
    out = pd.DataFrame(proc.transform(new), columns=proc.feature_names_out_)
    np.testing.assert_allclose(out.f1, np.nanmedian(X.f1))
    np.testing.assert_allclose(out.f3, np.nanmedian(X.f3))
    np.testing.assert_array_equal(out["missing:f3"], [1, 1, 1])
    assert proc.warnings_["missing value in a feature complete in training, imputed"] == 3


def test_min_icc_drops_unstable_features_and_keeps_unrated():
    X, y = _table()
    icc = pd.DataFrame({"feature": ["f0", "f1", "f2"], "icc": [0.95, 0.5, np.nan]})
    proc = FeatureProcessor(min_icc=0.75, icc_table=icc).fit(X, y)
    assert "f0" in proc.feature_names_out_
    assert "f1" not in proc.feature_names_out_ and "f2" not in proc.feature_names_out_
    assert "f3" in proc.feature_names_out_ and proc.n_unrated_ == 7
    with pytest.raises(ValueError, match="no icc_table"):
        FeatureProcessor(min_icc=0.75).fit(X, y)


def test_processor_selection_and_config():
    X, y, surv = _data()
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    proc = make_feature_processor({"corr_threshold": 0.95, "selector": "l1_logistic", "n_features": 3,
                                   "combat": False, "_target_": "ignored"})
    proc.fit(frame, y)
    assert sorted(proc.feature_names_out_) == ["x17", "x3", "x42"]
    assert proc.summary_["after_selection"] == 3
    assert proc.transform(frame).shape == (len(frame), 3)
    cox = make_feature_processor({"selector": "coxnet", "n_features": 3}).fit(frame, surv)
    assert sorted(cox.feature_names_out_) == ["x17", "x3", "x42"]
    with pytest.raises(ValueError, match=r"unknown feature-processing key\(s\) \['n_feature'\]"):
        make_feature_processor({"n_feature": 3})
    with pytest.raises(ValueError, match="needs the training labels"):
        FeatureProcessor(selector="lasso", n_features=3).fit(frame)
    with pytest.raises(ValueError, match=r"feature column\(s\) seen in training are missing, e.g. \['x0'\]"):
        proc.transform(frame.drop(columns="x0"))


def test_processor_aligns_sites_and_covariates_by_subject_id():
    X, y = _table()
    rng = np.random.default_rng(1)
    sites = pd.Series(np.where(np.arange(len(X)) % 2 == 0, "A", "B"), index=X.index)
    cov = pd.DataFrame({"age": rng.normal(50, 10, len(X))}, index=X.index)
    kw = {"combat": True, "combat_covariates": ["age"], "clip": None}
    ordered = FeatureProcessor(**kw).fit(X, y, sites, cov)
    shuffled = FeatureProcessor(**kw).fit(X, y, sites.iloc[::-1], cov.iloc[::-1])  # same subjects, other order
    np.testing.assert_allclose(shuffled.combat_.gamma_star_, ordered.combat_.gamma_star_)
    np.testing.assert_allclose(shuffled.transform(X, sites.iloc[::-1], cov.sample(frac=1, random_state=0)),
                               ordered.transform(X, sites, cov))
    with pytest.raises(ValueError, match="60 rows of features but 59 rows of sites"):
        FeatureProcessor(**kw).fit(X, y, sites.to_numpy()[:-1], cov)
