"""Plots people look at: ROC, calibration, Kaplan–Meier and time-dependent AUC curves (PNG)."""

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
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_calibration(curves: dict[str, dict], path: str | Path, title: str) -> Path:
    """Reliability diagram: one line per entry (name → ``metrics.calibration`` output)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="ideal")
    for name, cal in curves.items():
        if len(cal["prob_pred"]):
            ax.plot(cal["prob_pred"], cal["prob_true"], marker="o", lw=1.5,
                    label=f"{name} (slope {cal['slope']:.2f})")
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction positive", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_km(groups: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """Kaplan–Meier curves of the high/low risk groups, one panel per entry.

    ``groups``: name → ``{"time", "event", "high", "label"}`` (days, 1/0, bool, panel subtitle).
    """
    from radfusion.evaluation.survival import km_curve  # scikit-survival only when KM is drawn

    n = max(1, len(groups))
    ncols = min(n, 3)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), dpi=110, squeeze=False)
    for ax, (name, g) in zip(axes.ravel(), groups.items(), strict=False):
        time, event, high = np.asarray(g["time"], float), np.asarray(g["event"], float), np.asarray(g["high"], bool)
        for mask, lab, colour in ((~high, "low risk", "tab:blue"), (high, "high risk", "tab:red")):
            if mask.sum() == 0:
                continue
            t, s = km_curve(time[mask], event[mask])
            ax.step(np.concatenate([[0], t]), np.concatenate([[1], s]), where="post", c=colour,
                    label=f"{lab} (n={int(mask.sum())}, {int(event[mask].sum())} events)")
            cens = mask & (event == 0)
            if cens.any():  # censoring ticks on the curve
                s_c = np.interp(time[cens], np.concatenate([[0], t]), np.concatenate([[1], s]), right=s[-1])
                ax.plot(time[cens], s_c, "|", c=colour, ms=6)
        ax.set(title=f"{name}\n{g.get('label', '')}", xlabel="days", ylabel="survival probability", ylim=(0, 1.02))
        ax.title.set_fontsize(9)
        ax.legend(loc="lower left", fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_td_auc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str) -> Path:
    """Time-dependent (cumulative/dynamic) AUC over time, one line per entry (name → (days, AUC))."""
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    for name, (times, aucs) in curves.items():
        if len(times):
            ax.plot(times, aucs, marker="o", lw=1.5, label=name)
    ax.axhline(0.5, ls="--", c="grey", lw=0.8)
    ax.set(xlabel="days", ylabel="cumulative/dynamic AUC(t)", title=title, ylim=(0, 1.02))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)
