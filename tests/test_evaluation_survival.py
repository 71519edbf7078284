"""Survival metrics against scikit-survival and lifelines on fixed inputs, the Breslow baseline
against two independent implementations, and the log-rank statistic against its textbook formula."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.statistics import logrank_test
from scipy.stats import chi2
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.linear_model.coxph import BreslowEstimator
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)

from radfusion.evaluation.analysis import pool_survival
from radfusion.evaluation.survival import (
    bootstrap_counts,
    breslow_survival,
    clip_grid,
    concordance_kernel,
    resampled_concordance,
    risk_groups,
    surv,
    survival_metrics,
    time_grid,
    uno_weights,
)


def cohort(n: int, seed: int, ties: bool = True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = rng.exponential(300 * np.exp(-0.8 * x))
    c = rng.uniform(50, 900, n)
    time = np.minimum(t, c) + 1
    if ties:
        time = np.round(time / 5) * 5 + 5  # coarse days → tied times
    return x, time, (t <= c).astype(float)


def test_breslow_matches_sksurv_and_lifelines():
    x, t, e = cohort(90, 0)
    df = pd.DataFrame({"x": x, "T": t, "E": e})
    cph = CoxPHFitter().fit(df, "T", "E")
    beta = float(cph.params_["x"])
    x_new = np.array([-1.5, 0.0, 0.7, 2.0])
    times = np.unique(t[e == 1])[[2, 10, 25]]  # lifelines interpolates between event times
    ours = breslow_survival(beta * x, t, e, beta * x_new, times)
    ref_lifelines = cph.predict_survival_function(pd.DataFrame({"x": x_new}), times=times).to_numpy().T
    np.testing.assert_allclose(ours, ref_lifelines, rtol=1e-9, atol=1e-12)
    fns = BreslowEstimator().fit(beta * x, e, t).get_survival_function(beta * x_new)
    np.testing.assert_allclose(ours, np.array([f(times) for f in fns]), rtol=1e-9, atol=1e-12)
    early = breslow_survival(beta * x, t, e, beta * x_new, [0.5])
    np.testing.assert_allclose(early, 1.0)  # before the first event


def test_survival_metrics_match_scikit_survival():
    x, t, e = cohort(160, 1)
    tr, te = slice(0, 100), slice(100, 160)
    risk = x[te] + 0.3 * np.random.default_rng(2).normal(size=60)
    times = time_grid(t[te][e[te] == 1])
    probs = breslow_survival(x[tr], t[tr], e[tr], risk, times)
    out = survival_metrics(t[tr], e[tr], t[te], e[te], risk, probs, times, n_boot=200, seed=0)
    y_tr, y_te = surv(t[tr], e[tr]), surv(t[te], e[te])
    grid = clip_grid(times, t[te], t[tr])
    assert len(grid) >= 5
    assert out["c_harrell"] == pytest.approx(concordance_index_censored(e[te].astype(bool), t[te], risk)[0])
    assert out["tau"] == grid[-1]
    assert out["c_uno"] == pytest.approx(concordance_index_ipcw(y_tr, y_te, risk, tau=grid[-1])[0])
    auc_t, mean_auc = cumulative_dynamic_auc(y_tr, y_te, risk, grid)
    assert out["td_auc_mean"] == pytest.approx(mean_auc)
    np.testing.assert_allclose(out["td_auc"], auc_t)
    cols = np.searchsorted(times, grid)
    assert out["ibs"] == pytest.approx(integrated_brier_score(y_tr, y_te, probs[:, cols], grid))
    assert out["c_harrell_ci_low"] < out["c_harrell"] < out["c_harrell_ci_high"]
    assert out["c_uno_ci_low"] < out["c_uno"] < out["c_uno_ci_high"]
    assert out["n"] == 60 and out["n_events"] == int(e[te].sum())
    # an informative risk beats its negation on every discrimination metric
    worse = survival_metrics(t[tr], e[tr], t[te], e[te], -risk, None, times, n_boot=0)
    assert worse["c_harrell"] == pytest.approx(1 - out["c_harrell"], abs=0.02)
    assert worse["td_auc_mean"] < 0.5 < out["td_auc_mean"] and np.isnan(worse["ibs"])


def test_vectorised_bootstrap_concordance_equals_scikit_survival():
    x, t, e = cohort(40, 3)
    risk = np.round(x, 1)  # tied risks count one half
    x2, t_tr, e_tr = cohort(60, 4)
    tau = float(np.quantile(t, 0.8))
    counts = bootstrap_counts(40, 30, np.random.default_rng(0))
    harrell = resampled_concordance(*concordance_kernel(t, e, risk), counts)
    uno = resampled_concordance(*concordance_kernel(t, e, risk, uno_weights(surv(t_tr, e_tr), t, e, tau)), counts)
    for b in range(30):
        idx = np.repeat(np.arange(40), counts[b].astype(int))
        assert harrell[b] == pytest.approx(concordance_index_censored(e[idx].astype(bool), t[idx], risk[idx])[0])
        ref = concordance_index_ipcw(surv(t_tr, e_tr), surv(t[idx], e[idx]), risk[idx], tau=tau)[0]
        assert uno[b] == pytest.approx(ref)


def textbook_logrank(time, event, group):
    """Σ(O−E)² / ΣV over distinct event times, hypergeometric variance (Mantel 1966)."""
    o_minus_e = var = 0.0
    for t in np.unique(time[event == 1]):
        at_risk = time >= t
        n, n1 = at_risk.sum(), (at_risk & group).sum()
        d = ((time == t) & (event == 1)).sum()
        d1 = ((time == t) & (event == 1) & group).sum()
        o_minus_e += d1 - d * n1 / n
        if n > 1:
            var += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    return o_minus_e**2 / var


def test_risk_groups_logrank_and_hazard_ratio():
    rng = np.random.default_rng(0)
    n = 600
    high = rng.random(n) < 0.5
    t = rng.exponential(np.where(high, 100 / 2.5, 100))  # true HR 2.5
    c = rng.uniform(20, 300, n)
    time, event = np.minimum(t, c), (t <= c).astype(float)
    out = risk_groups(time, event, high)
    stat = textbook_logrank(time, event, high)
    assert out["logrank_chi2"] == pytest.approx(stat, rel=1e-9)
    assert out["logrank_p"] == pytest.approx(chi2.sf(stat, 1), rel=1e-6)
    assert out["logrank_p"] == pytest.approx(logrank_test(time[high], time[~high], event[high], event[~high]).p_value)
    # independent Cox fit (scikit-survival, Breslow ties = Efron without ties)
    ref = CoxPHSurvivalAnalysis().fit(high[:, None].astype(float), surv(time, event))
    assert out["hr"] == pytest.approx(np.exp(ref.coef_[0]), rel=1e-4)
    assert 2.0 < out["hr"] < 3.1 and out["hr_ci_low"] < out["hr"] < out["hr_ci_high"]
    assert out["n_high"] == high.sum() and out["events_high"] == int(event[high].sum())
    empty = risk_groups(time, event, np.zeros(n, bool))
    assert np.isnan(empty["logrank_p"]) and np.isnan(empty["hr"])


def test_time_grid_and_clipping():
    grid = time_grid(np.arange(1, 101, dtype=float), 0.1, 0.8, 8)
    assert grid[0] == pytest.approx(10.9) and grid[-1] == pytest.approx(80.2) and len(grid) == 8
    clipped = clip_grid(grid, test_time=np.array([15.0, 70.0]), train_time=np.array([5.0, 60.0]))
    assert clipped.min() >= 15 and clipped.max() < 60


def test_pool_survival_centres_at_training_median_per_model():
    rows = []
    for fold, (tr_risk, te_risk) in enumerate([([0, 1, 2, 3, 4], [1.0, 3.0]), ([10, 11, 12, 13, 14], [13.0, 11.0])]):
        for i, r in enumerate(tr_risk):
            rows.append({"subject_id": f"T{fold}{i}", "split": "train", "risk": r, "os_days": 100 + 50 * i,
                         "os_event": 1.0})
        for i, r in enumerate(te_risk):
            rows.append({"subject_id": f"S{fold}{i}", "split": "test", "risk": r, "os_days": 120 + 30 * i,
                         "os_event": float(i % 2)})
    frame = pd.DataFrame(rows).assign(fold=lambda d: d.subject_id.str[1].astype(int), repeat=0, run="r")
    test, train = pool_survival(frame, np.array([110.0, 200.0]))
    by_id = test.set_index("subject_id")
    # fold 0: training median 2; fold 1: training median 12 → both folds have one high, one low subject
    assert by_id.loc[["S00", "S01", "S10", "S11"], "risk_c"].tolist() == [-1.0, 1.0, 1.0, -1.0]
    assert len(train) == 10
    expected = breslow_survival([0, 1, 2, 3, 4], 100 + 50 * np.arange(5), np.ones(5), [3.0], [110.0, 200.0])
    np.testing.assert_allclose(by_id.loc["S01", ["s_0", "s_1"]].to_numpy(float), expected[0])
