"""DeLong test, paired bootstrap and classification metrics against independent references:
a hand-worked example, a brute-force computation from the definition, and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    roc_auc_score,
)

from radfusion.evaluation.delong import (
    auc_rows,
    bootstrap_p,
    delong_covariance,
    delong_test,
    fast_auc,
    paired_bootstrap_delta,
)
from radfusion.evaluation.metrics import auc_with_ci, binary_metrics, calibration, holm, mean_sd, youden_threshold


def brute_force_delong(y, scores):
    """DeLong (1988) from the definition: the Mann–Whitney kernel over every positive × negative
    pair, structural components as its row/column means, sample covariances with ddof 1."""
    y = np.asarray(y)
    k = len(scores)
    pos_idx, neg_idx = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = len(pos_idx), len(neg_idx)
    kern = np.zeros((k, m, n))
    for c in range(k):
        for a, i in enumerate(pos_idx):
            for b, j in enumerate(neg_idx):
                x, z = scores[c][i], scores[c][j]
                kern[c, a, b] = 1.0 if x > z else (0.5 if x == z else 0.0)
    aucs = kern.mean(axis=(1, 2))
    v10, v01 = kern.mean(axis=2), kern.mean(axis=1)
    s10 = np.array([[np.sum((v10[r] - aucs[r]) * (v10[s] - aucs[s])) / (m - 1) for s in range(k)] for r in range(k)])
    s01 = np.array([[np.sum((v01[r] - aucs[r]) * (v01[s] - aucs[s])) / (n - 1) for s in range(k)] for r in range(k)])
    return aucs, s10 / m + s01 / n


# Hand-worked example (3 positives, 3 negatives), computed on paper from the DeLong definitions:
#   A: positives .8 .6 .4, negatives .5 .4 .2 → V10 = (1, 1, ½), V01 = (⅔, ⅚, 1), AUC = 5/6,
#      S10 = 1/12, S01 = 1/36, Var = S10/3 + S01/3 = 1/27
#   B: positives .3 .7 .9, negatives .1 .8 .2 → V10 = (⅔, ⅔, 1), V01 = (1, ⅓, 1), AUC = 7/9, Var = 5/81
#   Cov(A, B) = (−1/18)/3 + 0/3 = −1/54;  Var(A − B) = 1/27 + 5/81 + 2/54 = 11/81
#   z = (1/18) / sqrt(11/81) = 1 / (2·sqrt(11));  p = erfc(z / sqrt 2)
HAND_Y = np.array([1, 1, 1, 0, 0, 0])
HAND_A = np.array([0.8, 0.6, 0.4, 0.5, 0.4, 0.2])
HAND_B = np.array([0.3, 0.7, 0.9, 0.1, 0.8, 0.2])


def test_delong_hand_worked_example():
    aucs, cov = delong_covariance(HAND_Y, np.vstack([HAND_A, HAND_B]))
    np.testing.assert_allclose(aucs, [5 / 6, 7 / 9], rtol=1e-12)
    np.testing.assert_allclose(cov, [[1 / 27, -1 / 54], [-1 / 54, 5 / 81]], rtol=1e-12)
    res = delong_test(HAND_Y, HAND_A, HAND_B)
    z = 1 / (2 * math.sqrt(11))
    assert res["delta"] == pytest.approx(1 / 18, rel=1e-12)
    assert res["se"] == pytest.approx(math.sqrt(11 / 81), rel=1e-12)
    assert res["z"] == pytest.approx(z, rel=1e-12)
    assert res["p"] == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-12)
    assert res["p"] == pytest.approx(0.8802, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 37 + 11 * seed
    y = (rng.random(n) < 0.4).astype(int)
    y[:2] = [0, 1]
    latent = y + rng.normal(size=n)
    scores = np.vstack([np.round(latent + 0.5 * rng.normal(size=n), 1),  # rounding makes ties
                        np.round(latent + rng.normal(size=n), 1), rng.integers(0, 4, n).astype(float)])
    aucs, cov = delong_covariance(y, scores)
    ref_aucs, ref_cov = brute_force_delong(y, scores)
    np.testing.assert_allclose(aucs, ref_aucs, rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10, atol=1e-15)
    for s in scores:
        assert fast_auc(y, s) == pytest.approx(roc_auc_score(y, s), rel=1e-12)
    res = delong_test(y, scores[0], scores[1])
    var = ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1]
    z = (ref_aucs[0] - ref_aucs[1]) / math.sqrt(var)
    assert res["z"] == pytest.approx(z, rel=1e-10)
    assert res["p"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)


def test_delong_edge_cases_and_errors():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4])
    same = delong_test(y, s, s)
    assert same["delta"] == 0 and same["p"] == 1.0
    with pytest.raises(ValueError, match="positive and one negative"):
        delong_test(np.zeros(4), s, s)
    with pytest.raises(ValueError, match="finite"):
        delong_test(y, s, np.array([0.1, np.nan, 0.3, 0.4]))


def test_auc_rows_equals_sklearn_on_resamples():
    rng = np.random.default_rng(3)
    y = np.array([1] * 9 + [0] * 14)
    p = np.round(rng.random(len(y)) + 0.3 * y, 1)
    idx = np.concatenate([rng.choice(9, (50, 9)), 9 + rng.choice(14, (50, 14))], axis=1)
    got = auc_rows(y, p[idx])
    want = [roc_auc_score(y, p[row]) for row in idx]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_paired_bootstrap_delta_properties():
    rng = np.random.default_rng(0)
    n = 120
    y = (rng.random(n) < 0.5).astype(int)
    good, weak = y * 2.0 + rng.normal(size=n), y * 0.3 + rng.normal(size=n)
    res = paired_bootstrap_delta(y, good, weak, n_boot=400, seed=1)
    dl = delong_test(y, good, weak)
    assert res["delta"] == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, weak))
    assert res["ci_low"] > 0 and res["p"] < 0.01 and dl["p"] < 0.01
    # the bootstrap SE and DeLong SE estimate the same quantity
    assert res["ci_high"] - res["ci_low"] == pytest.approx(2 * 1.96 * dl["se"], rel=0.3)
    same = paired_bootstrap_delta(y, good, good, n_boot=100)
    assert same["delta"] == 0 and same["p"] == 1.0
    # the bootstrap test statistic: delta / sd(deltas*) referred to N(0, 1)
    deltas = np.array([0.1, 0.3, 0.2, 0.0, 0.4])
    assert bootstrap_p(0.2, deltas) == pytest.approx(math.erfc(0.2 / np.std(deltas, ddof=1) / math.sqrt(2)))


def test_auc_with_ci_matches_sklearn():
    rng = np.random.default_rng(5)
    y = (rng.random(60) < 0.4).astype(float)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + 0.2 * rng.normal(size=60), 0, 1)
    y[:3] = np.nan  # unknown labels are excluded
    res = auc_with_ci(y, p, n_boot=300, seed=0)
    keep = ~np.isnan(y)
    assert res["auc"] == pytest.approx(roc_auc_score(y[keep], p[keep]))
    assert res["n"] == 57 and res["n_pos"] == int(np.nansum(y))
    assert res["ci_low"] < res["auc"] < res["ci_high"]
    assert np.isnan(auc_with_ci(np.ones(5), np.arange(5) / 5)["auc"])


def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(7)
    y = (rng.random(80) < 0.35).astype(float)
    p = np.clip(0.35 + 0.35 * (y - 0.35) + 0.25 * rng.normal(size=80), 0, 1)
    y[5] = np.nan
    keep = ~np.isnan(y)
    yk, pk = y[keep].astype(int), p[keep]
    for thr in (0.5, 0.4):
        got = binary_metrics(y, p, thr)
        tn, fp, fn, tp = confusion_matrix(yk, (pk >= thr).astype(int)).ravel()
        assert got["auc"] == pytest.approx(roc_auc_score(yk, pk))
        assert got["ap"] == pytest.approx(average_precision_score(yk, pk))
        assert got["brier"] == pytest.approx(brier_score_loss(yk, pk))
        assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(yk, pk >= thr))
        assert got["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert got["specificity"] == pytest.approx(tn / (tn + fp))


def test_youden_threshold_separates_perfectly():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    thr = youden_threshold(y, p)
    assert 0.3 < thr <= 0.6
    assert binary_metrics(y, p, thr)["balanced_accuracy"] == 1.0


def test_calibration_curve_and_slope():
    rng = np.random.default_rng(0)
    x = rng.normal(size=6000)
    p = 1 / (1 + np.exp(-x))
    y = (rng.random(6000) < 1 / (1 + np.exp(-2 * x))).astype(float)  # truth is twice as steep
    cal = calibration(y, p, n_bins=5)
    ref_true, ref_pred = calibration_curve(y, p, n_bins=5, strategy="quantile")
    np.testing.assert_allclose(cal["prob_true"], ref_true)
    np.testing.assert_allclose(cal["prob_pred"], ref_pred)
    assert cal["slope"] == pytest.approx(2.0, abs=0.15)  # under-confident predictions → slope > 1
    assert abs(cal["intercept"]) < 0.15


def test_holm_adjustment_hand_example():
    # sorted 0.01, 0.03, 0.04 → 3·0.01, max(0.03, 2·0.03), max(0.06, 1·0.04)
    np.testing.assert_allclose(holm([0.04, 0.01, 0.03, np.nan]), [0.06, 0.03, 0.06, np.nan])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])


def test_mean_sd():
    m, sd, k = mean_sd([0.7, 0.8, np.nan, 0.9])
    assert (m, k) == (pytest.approx(0.8), 3) and sd == pytest.approx(0.1)
    assert np.isnan(mean_sd([0.5])[1])
