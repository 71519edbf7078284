"""Leakage: with random labels, in-fold processing + selection gives chance-level CV AUC; fitting the
selection on all subjects first inflates it (so this test can fail). Plus: fitted state never sees
non-training rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from radfusion.evaluation.metrics import auc_with_ci
from radfusion.features.processor import FeatureProcessor

N_SUBJECTS, N_FEATURES = 90, 1000


def _random_label_cohort(seed: int):
    """~1,000 radiomics-like features (groups of correlated copies of 250 latent factors, some
    missing values, 3 sites) and labels that are pure noise."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(N_SUBJECTS, 250))
    X = latent[:, rng.integers(0, 250, N_FEATURES)] + 0.5 * rng.normal(size=(N_SUBJECTS, N_FEATURES))
    X[rng.random(X.shape) < 0.02] = np.nan
    sites = pd.Series(np.array(list("ABC"))[rng.integers(0, 3, N_SUBJECTS)])
    X = pd.DataFrame(X + sites.map({"A": 0.0, "B": 0.5, "C": -0.5}).to_numpy()[:, None],
                     columns=[f"feat{i:04d}" for i in range(N_FEATURES)])
    y = rng.permutation(np.r_[np.ones(40), np.zeros(N_SUBJECTS - 40)])
    return X, y, sites


def _processor(selector: str) -> FeatureProcessor:
    return FeatureProcessor(combat=True, corr_threshold=0.95, selector=selector, n_features=20)


def _cv_auc(X, y, sites, selector: str, leak: bool) -> dict:
    """5-fold out-of-fold probabilities of a logistic model; processing fitted in-fold, or (leak)
    once on all subjects with their labels before the CV."""
    prob = np.zeros(len(y))
    if leak:
        Z_all = _processor(selector).fit_transform(X, y, sites)
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(X, y):
        if leak:
            Z_tr, Z_te = Z_all[tr], Z_all[te]
        else:
            proc = _processor(selector)
            Z_tr = proc.fit_transform(X.iloc[tr], y[tr], sites.iloc[tr])
            Z_te = proc.transform(X.iloc[te], sites.iloc[te])
        model = LogisticRegression(C=1.0, max_iter=2000).fit(Z_tr, y[tr])
        prob[te] = model.predict_proba(Z_te)[:, 1]
    return auc_with_ci(y, prob, n_boot=1000, seed=0)


@pytest.mark.parametrize("selector", ["l1_logistic", "mrmr"])
@pytest.mark.parametrize("seed", [0, 1])
def test_in_fold_selection_gives_chance_auc_and_leaky_selection_inflates(seed, selector):
    X, y, sites = _random_label_cohort(seed)
    honest = _cv_auc(X, y, sites, selector, leak=False)
    leaky = _cv_auc(X, y, sites, selector, leak=True)
    assert honest["ci_low"] < 0.5 < honest["ci_high"], honest
    assert leaky["auc"] > 0.7 and leaky["ci_low"] > 0.5, leaky


def test_nothing_fitted_sees_the_held_out_rows():
    X, y, sites = _random_label_cohort(3)
    cov = pd.DataFrame({"age": np.linspace(30, 80, N_SUBJECTS)})
    train = np.arange(N_SUBJECTS) < 70
    kw = {"combat": True, "combat_covariates": ("age",), "corr_threshold": 0.9, "selector": "l1_logistic",
          "n_features": 10}
    clean = FeatureProcessor(**kw).fit(X[train], y[train], sites[train], cov[train])
    poisoned_X = X.copy()
    poisoned_X.loc[~train] = 1e6
    poisoned_y = y.copy()
    poisoned_y[~train] = 1 - poisoned_y[~train]
    poisoned_cov = cov.copy()
    poisoned_cov.loc[~train, "age"] = 500.0
    # the caller passes training rows only; the held-out rows' values must not matter at all
    again = FeatureProcessor(**kw).fit(poisoned_X[train], poisoned_y[train], sites[train], poisoned_cov[train])
    assert again.feature_names_out_ == clean.feature_names_out_
    np.testing.assert_array_equal(again.fill_, clean.fill_)
    np.testing.assert_array_equal(again.combat_.gamma_star_, clean.combat_.gamma_star_)
    np.testing.assert_array_equal(again.mean_, clean.mean_)
    # and transforming held-out rows is row-wise: one subject's output ignores the others
    rows = X[~train]
    batch = clean.transform(rows, sites[~train], cov[~train])
    single = clean.transform(rows.iloc[[4]], sites[~train].iloc[[4]], cov[~train].iloc[[4]])
    np.testing.assert_allclose(single[0], batch[4])
