"""Decision-curve analysis (Vickers & Elkin, Med Decis Making 2006): the net benefit of acting on a
model's predicted probabilities across threshold probabilities, against treating everyone or no one.

``NB(pt) = TP/n − FP/n · pt / (1 − pt)``: a subject is "treated" when its probability is ≥ ``pt``.
Treat-all: ``prevalence − (1 − prevalence) · pt / (1 − pt)``; treat-none: 0.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = np.round(np.arange(0.02, 0.81, 0.02), 2)


def net_benefit(labels, probs, thresholds=THRESHOLDS) -> dict[str, np.ndarray]:
    """Net benefit of the model and of treat-all at each threshold (labelled subjects only)."""
    labels, probs = np.asarray(labels, float), np.asarray(probs, float)
    keep = ~(np.isnan(labels) | np.isnan(probs))
    y, p = labels[keep], probs[keep]
    pt = np.asarray(thresholds, float)
    n = len(y)
    if n == 0:
        return {"threshold": pt, "model": np.full(len(pt), np.nan), "treat_all": np.full(len(pt), np.nan)}
    treated = p[None, :] >= pt[:, None]  # (thresholds, n)
    tp = (treated & (y[None, :] == 1)).sum(axis=1) / n
    fp = (treated & (y[None, :] == 0)).sum(axis=1) / n
    odds = pt / (1 - pt)
    prevalence = y.mean()
    return {"threshold": pt, "model": tp - fp * odds, "treat_all": prevalence - (1 - prevalence) * odds}
