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


def _num(v: float) -> str:
    return f"{v:.2f}" if np.isfinite(v) else "not estimable"


def plot_calibration(curves: dict[str, dict], path: str | Path, title: str) -> Path:
    """Reliability diagram: one line per entry (name → ``metrics.calibration`` output, optionally with
    ``recal``: :func:`radfusion.evaluation.calibration.recalibration`), slope and intercept in the legend
    and the small-sample warning under the axes."""
    fig, ax = plt.subplots(figsize=(5, 5.2), dpi=120)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="ideal")
    warnings = []
    for name, cal in curves.items():
        rc = cal.get("recal") or {}
        slope, intercept = rc.get("slope", cal.get("slope", np.nan)), rc.get("intercept", np.nan)
        if len(cal["prob_pred"]):
            ax.plot(cal["prob_pred"], cal["prob_true"], marker="o", lw=1.5,
                    label=f"{name} (n={rc.get('n', '?')}; slope {_num(slope)}, intercept {_num(intercept)})")
        if rc.get("warning"):
            warnings.append(f"{name}: n={rc['n']}, {rc['n_events']} in the smaller class — too few for stable "
                            "calibration")
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction positive", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.title.set_fontsize(10)
    ax.legend(loc="upper left", fontsize=7)
    if warnings:
        fig.text(0.02, 0.01, "⚠ " + "\n⚠ ".join(warnings), fontsize=7, color="#a00", va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.04 + 0.03 * len(warnings), 1, 1))
        fig.savefig(Path(path))
        plt.close(fig)
        return Path(path)
    return _save(fig, path)


def _km_panel(ax, table_ax, g: dict, alpha: float) -> None:
    from radfusion.evaluation.survival import km_with_ci, number_at_risk

    time, event, high = np.asarray(g["time"], float), np.asarray(g["event"], float), np.asarray(g["high"], bool)
    rows = []
    for mask, lab, colour in ((~high, "low risk", "tab:blue"), (high, "high risk", "tab:red")):
        if mask.sum() == 0:
            continue
        km = km_with_ci(time[mask], event[mask], alpha)
        end = np.nanmax(time[mask])  # the curve runs on to the last follow-up, censored or not

        def path(values, first=1.0, km=km):
            return np.concatenate([[first], values, values[-1:] if len(values) else [first]])
        t = np.concatenate([[0], km["time"], [end]])
        ax.step(t, path(km["survival"]), where="post", c=colour,
                label=f"{lab} (n={int(mask.sum())}, {int(event[mask].sum())} events)")
        ax.fill_between(t, path(km["ci_low"]), path(km["ci_high"]), step="post", color=colour, alpha=0.15, lw=0)
        cens = mask & (event == 0)
        if cens.any():  # censoring ticks on the curve
            idx = np.searchsorted(km["time"], time[cens], side="right") - 1
            s_c = np.where(idx >= 0, km["survival"][np.clip(idx, 0, None)] if len(km["time"]) else 1.0, 1.0)
            ax.plot(time[cens], s_c, "|", c=colour, ms=6)
        rows.append((lab, colour, time[mask]))
    ax.set(xlabel="days", ylabel="survival probability", ylim=(0, 1.02), xlim=(0, None))
    ax.legend(loc="best", fontsize=7)
    ticks = [t for t in ax.get_xticks() if 0 <= t <= ax.get_xlim()[1]]
    table_ax.set(xlim=ax.get_xlim(), ylim=(-0.5, len(rows) - 0.5))
    table_ax.set_xticks([])
    table_ax.set_yticks(range(len(rows)), [r[0] for r in rows][::-1], fontsize=7)
    table_ax.tick_params(axis="y", length=0, pad=16)  # room for the numbers centred on t = 0
    for spine in table_ax.spines.values():
        spine.set_visible(False)
    for k, (_, colour, t) in enumerate(rows[::-1]):
        for tick, n in zip(ticks, number_at_risk(t, ticks), strict=True):
            table_ax.text(tick, k, str(n), ha="center", va="center", fontsize=7, color=colour)
    table_ax.set_title("number at risk", fontsize=7, loc="left", pad=2)


def plot_km(groups: dict[str, dict], path: str | Path, title: str = "", alpha: float = 0.05) -> Path:
    """Kaplan–Meier curves of the high/low risk groups with ``1 − alpha`` bands (log-log Greenwood) and
    the number at risk under each panel; one panel per entry.

    ``groups``: name → ``{"time", "event", "high", "label"}`` (days, 1/0, bool, panel subtitle).
    """
    n = max(1, len(groups))
    ncols = min(n, 3)
    nrows = int(np.ceil(n / ncols))
    fig = plt.figure(figsize=(4.6 * ncols, 4.6 * nrows), dpi=110)
    outer = fig.add_gridspec(nrows, ncols)
    for k, (name, g) in enumerate(groups.items()):
        inner = outer[k // ncols, k % ncols].subgridspec(2, 1, height_ratios=[4, 0.8], hspace=0.5)
        ax = fig.add_subplot(inner[0])
        table_ax = fig.add_subplot(inner[1])
        _km_panel(ax, table_ax, g, alpha)
        ax.set_title(f"{name}\n{g.get('label', '')}", fontsize=8)
    if title:
        fig.suptitle(f"{title} (shaded: {1 - alpha:.0%} CI)", fontsize=10)
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
    else:
        ax.text(0.5, 0.6, "not estimable: no grid time inside both the test and the training follow-up\n"
                "(too few test subjects or events)", ha="center", va="center", fontsize=8, transform=ax.transAxes)
    return _save(fig, path)


def plot_decision_curve(curves: dict[str, dict], path: str | Path, title: str) -> Path:
    """Net benefit over threshold probability: one line per entry (name → :func:`decision.net_benefit`
    output), with treat-all (of the first entry's subjects) and treat-none."""
    fig, ax = plt.subplots(figsize=(5, 4.2), dpi=120)
    top = 0.05
    for k, (name, nb) in enumerate(curves.items()):
        if k == 0:
            ax.plot(nb["threshold"], nb["treat_all"], c="grey", lw=1, ls=":", label="treat all")
        ax.plot(nb["threshold"], nb["model"], lw=1.6, label=name)
        top = max(top, float(np.nanmax(nb["treat_all"])) if np.isfinite(nb["treat_all"]).any() else top)
    ax.axhline(0, c="black", lw=0.8, label="treat none")
    ax.set(xlabel="threshold probability", ylabel="net benefit", title=title, ylim=(-0.05, top * 1.15 + 0.01),
           xlim=(0, 0.8))
    ax.title.set_fontsize(10)
    ax.legend(loc="upper right", fontsize=7)
    return _save(fig, path)
