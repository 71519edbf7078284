"""Classification metrics read from predictions, with bootstrap confidence intervals.

AUCs come from scikit-learn; the bootstrap resamples *subjects* with replacement, stratified by
class so that every resample has both classes (its AUCs by vectorised midranks, equal to scikit-learn's).
"""

from __future__ import annotations

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    roc_auc_score,
    roc_curve,
)

from radfusion.evaluation.delong import auc_rows


def auc_with_ci(labels: np.ndarray, probs: np.ndarray, n_boot: int = 2000, alpha: float = 0.05,
                seed: int = 0) -> dict[str, float]:
    """ROC AUC with a stratified percentile-bootstrap CI over labelled subjects.

    Returns ``{"auc", "ci_low", "ci_high", "n", "n_pos"}``; AUC is NaN with fewer than one
    subject of each class.
    """
    labels = np.asarray(labels, dtype=float)
    probs = np.asarray(probs, dtype=float)
    keep = ~np.isnan(labels)
    y, p = labels[keep].astype(int), probs[keep]
    out = {"auc": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
           "n": int(len(y)), "n_pos": int(y.sum())}
    if len(np.unique(y)) < 2:
        return out
    out["auc"] = float(roc_auc_score(y, p))
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    # all resamples at once, positives first in each row; midrank AUC equals roc_auc_score
    idx = np.concatenate([rng.choice(pos, (n_boot, len(pos))), rng.choice(neg, (n_boot, len(neg)))], axis=1)
    yb = np.concatenate([np.ones(len(pos), int), np.zeros(len(neg), int)])
    boots = auc_rows(yb, p[idx])
    out["ci_low"], out["ci_high"] = (float(v) for v in np.quantile(boots, [alpha / 2, 1 - alpha / 2]))
    return out



def auc_entries(split: str, target: str, labels, probs, n_boot: int = 2000) -> dict[str, float]:
    """:func:`auc_with_ci` as metrics.json keys: ``<split>/auc_<target>``, and ``<split>/auc_<target>_ci_low``,
    ``_ci_high``, ``_n``, ``_n_pos``."""
    res = auc_with_ci(labels, probs, n_boot=n_boot)
    return {f"{split}/auc_{target}" if k == "auc" else f"{split}/auc_{target}_{k}": v for k, v in res.items()}

def youden_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """Probability threshold maximising sensitivity + specificity − 1 (Youden's J).

    Meant to be fitted on *training* predictions and applied to test predictions.
    """
    y, p = _labelled(labels, probs)
    if len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr, thr = roc_curve(y, p)
    best = int(np.argmax(tpr - fpr))
    return float(min(thr[best], 1.0))  # roc_curve's first threshold is +inf


def _labelled(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=float)
    probs = np.asarray(probs, dtype=float)
    keep = ~np.isnan(labels) & ~np.isnan(probs)
    return labels[keep].astype(int), probs[keep]


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC, average precision, Brier score and, at ``threshold`` (predict 1 if prob ≥ threshold),
    balanced accuracy, sensitivity and specificity. Unknown labels (NaN) are excluded.

    Ranking metrics are NaN when only one class is present.
    """
    y, p = _labelled(labels, probs)
    out = {"n": int(len(y)), "n_pos": int(y.sum()), "auc": float("nan"), "ap": float("nan"),
           "brier": float(brier_score_loss(y, p)) if len(y) else float("nan"), "threshold": float(threshold),
           "balanced_accuracy": float("nan"), "sensitivity": float("nan"), "specificity": float("nan")}
    if len(y) == 0:
        return out
    pred = (p >= threshold).astype(int)
    if y.sum() > 0:
        out["sensitivity"] = float(np.mean(pred[y == 1] == 1))
    if (1 - y).sum() > 0:
        out["specificity"] = float(np.mean(pred[y == 0] == 0))
    if len(np.unique(y)) == 2:
        out["auc"] = float(roc_auc_score(y, p))
        out["ap"] = float(average_precision_score(y, p))
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
    return out


def calibration(labels: np.ndarray, probs: np.ndarray, n_bins: int = 5) -> dict:
    """Reliability curve (quantile bins) and logistic calibration slope and intercept.

    ``prob_true``/``prob_pred``: observed fraction of positives and mean predicted probability per
    bin (``sklearn.calibration.calibration_curve``, ``strategy="quantile"`` so bins hold equal
    numbers of subjects). ``slope``: coefficient of an unpenalised logistic regression of the label
    on logit(prob) — 1 is ideal, < 1 means over-confident predictions. NaN with one class.
    """
    y, p = _labelled(labels, probs)
    out = {"prob_true": np.array([]), "prob_pred": np.array([]), "slope": float("nan"),
           "intercept": float("nan")}
    if len(np.unique(y)) < 2:
        return out
    out["prob_true"], out["prob_pred"] = calibration_curve(y, p, n_bins=min(n_bins, len(y)), strategy="quantile")
    eps = 1e-6
    logit = np.log(np.clip(p, eps, 1 - eps) / (1 - np.clip(p, eps, 1 - eps)))
    if np.ptp(logit) > 0:
        fit = LogisticRegression(C=np.inf, max_iter=1000).fit(logit[:, None], y)
        out["slope"], out["intercept"] = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    return out


def holm(pvalues: list[float] | np.ndarray) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    k = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (k - rank) * p[i])  # monotone: never below an earlier adjusted p
        out[i] = min(1.0, running)
    return out


def mean_sd(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof 1; NaN for one value) and count of finite values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"), int(len(v))
