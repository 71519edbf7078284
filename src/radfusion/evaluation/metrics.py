"""Classification metrics read from predictions, with bootstrap confidence intervals.

AUCs come from scikit-learn; the bootstrap resamples *subjects* with replacement, stratified by
class so that every resample has both classes.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


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
    boots = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        boots[b] = roc_auc_score(y[idx], p[idx])
    out["ci_low"], out["ci_high"] = (float(v) for v in np.quantile(boots, [alpha / 2, 1 - alpha / 2]))
    return out
