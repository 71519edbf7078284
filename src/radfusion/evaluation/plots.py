"""Plots people look at: ROC curves per split or per run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str) -> Path:
    """One ROC curve per entry of ``curves`` (name → (labels, probs)), unlabelled entries dropped."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for name, (labels, probs) in curves.items():
        labels, probs = np.asarray(labels, float), np.asarray(probs, float)
        keep = ~np.isnan(labels)
        if len(np.unique(labels[keep])) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels[keep], probs[keep])
        auc = roc_auc_score(labels[keep], probs[keep])
        ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUC {auc:.3f}, n={keep.sum()})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
