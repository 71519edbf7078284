"""All numbers of the comparison report, computed from the runs' prediction tables.

For each group (default: one experiment, all its seeds/folds) and endpoint (each marker; ``os`` for
survival) we report

- **pooled** metrics: a subject's test predictions averaged over the group's replicates (CV folds
  are disjoint, so within a replicate they are concatenated), with bootstrap CIs, and
- **mean ± sd** of the same metrics computed per replicate (``run × repeat``),

and, for every pair of groups, paired tests on the subjects both predicted (DeLong and a paired
bootstrap for AUCs, a paired bootstrap for Harrell's C), Holm-corrected per endpoint.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from radfusion.evaluation.calibration import recalibration
from radfusion.evaluation.delong import bootstrap_p, delong_test, paired_bootstrap_delta
from radfusion.evaluation.facts import replicate_label
from radfusion.evaluation.metrics import auc_with_ci, binary_metrics, calibration, holm, mean_sd, youden_threshold
from radfusion.evaluation.run_folders import Run, RunError, consistent_values, group_frame, models_of, pool_marker
from radfusion.evaluation.survival import (
    bootstrap_counts,
    breslow_survival,
    concordance_kernel,
    harrell_c,
    resampled_concordance,
    risk_groups,
    survival_metrics,
    time_grid,
)

log = logging.getLogger(__name__)

MODE_ORDER = ("hybrid", "deep", "handcrafted")
MARKER_SPREAD = ("auc", "ap", "balanced_accuracy", "sensitivity", "specificity", "brier")
SURVIVAL_SPREAD = ("c_harrell", "c_uno", "td_auc_mean", "ibs")


@dataclass
class Settings:
    """Evaluation choices (``configs/eval.yaml``)."""

    split: str = "test"
    n_bootstrap: int = 2000
    alpha: float = 0.05
    seed: int = 0
    threshold: float | str = 0.5          # a probability, or "youden" (fitted on training rows)
    calibration_bins: int = 5
    time_quantiles: tuple[float, float] = (0.1, 0.8)
    n_times: int = 8
    reference: str | None = None          # compare every group against this one; None = all pairs


@dataclass
class Evaluation:
    """Tables (one row per group × endpoint, replicate × endpoint, pair × endpoint) and plot data."""

    table: pd.DataFrame
    replicates: pd.DataFrame
    comparisons: pd.DataFrame
    curves: dict = field(default_factory=dict)
    times: np.ndarray = field(default_factory=lambda: np.array([]))
    notes: list[str] = field(default_factory=list)


def order_groups(groups: dict[str, list[Run]]) -> list[str]:
    """Hybrid first, then deep, handcrafted, baselines, others (stable within a mode)."""
    def rank(name: str) -> tuple[int, str]:
        mode = groups[name][0].mode
        if mode in MODE_ORDER:
            return MODE_ORDER.index(mode), name
        return len(MODE_ORDER) + (not mode.startswith("baseline")), name

    return sorted(groups, key=rank)


def _threshold(s: Settings, frame: pd.DataFrame, marker: str, by: tuple[str, ...] = (), key=()) -> float:
    if s.threshold != "youden":
        return float(s.threshold)
    train = pool_marker(frame, marker, "train", by=by)
    if by:
        train = train[(train[list(by)] == pd.Series(key, index=list(by))).all(axis=1)]
    return youden_threshold(train["label"], train["prob"]) if len(train) else float("nan")


def marker_results(name: str, runs: list[Run], marker: str, s: Settings) -> tuple[dict, list[dict], dict]:
    """Pooled row, per-replicate rows and plot data of one group and one marker."""
    frame = group_frame(runs)
    base = {"group": name, "experiment": runs[0].experiment, "mode": runs[0].mode, "endpoint": marker,
            "kind": "marker", "n_runs": len(runs)}
    reps = []
    for key, part in pool_marker(frame, marker, s.split, by=("run", "repeat")).groupby(["run", "repeat"]):
        thr = _threshold(s, frame, marker, ("run", "repeat"), key)
        reps.append({**base, "run": key[0], "repeat": key[1], **binary_metrics(part.label, part.prob, thr)})
    pooled = pool_marker(frame, marker, s.split)
    thr = _threshold(s, frame, marker)
    row = {**base, "n_replicates": len(reps), **binary_metrics(pooled.label, pooled.prob, thr)}
    ci = auc_with_ci(pooled.label, pooled.prob, n_boot=s.n_bootstrap, alpha=s.alpha, seed=s.seed)
    row["auc_ci_low"], row["auc_ci_high"] = ci["ci_low"], ci["ci_high"]
    cal = calibration(pooled.label, pooled.prob, s.calibration_bins)
    cal["recal"] = rc = recalibration(pooled.label, pooled.prob, n_boot=s.n_bootstrap, alpha=s.alpha, seed=s.seed)
    row.update({f"cal_{k}": rc[k] for k in ("slope", "slope_ci_low", "slope_ci_high", "intercept", "intercept_ci_low",
                                             "intercept_ci_high", "warning")})
    row["replicates"] = replicate_label(runs)
    for k in MARKER_SPREAD:
        row[f"{k}_mean"], row[f"{k}_sd"], _ = mean_sd([r[k] for r in reps])
    return row, reps, {"pooled": pooled, "calibration": cal}


def pool_survival(frame: pd.DataFrame, times: np.ndarray, split: str = "test",
                  by: tuple[str, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pooled survival predictions and the training subjects.

    Per model ``(run, repeat, fold)``: the risk is centred at that model's *training* median (so
    ``risk_c > 0`` is the high-risk group, and folds of one replicate become comparable), and survival
    probabilities at ``times`` come from a Breslow baseline fitted on that model's training rows.
    Then per subject (and ``by`` key) both are averaged over models. Returns ``(test, train)``: test
    columns ``[*by, subject_id, time, event, risk_c, s_0..s_k, n_pred]``; train columns
    ``[*by, subject_id, time, event]`` (unique training subjects, for the censoring distribution).
    """
    known = frame["risk"].notna() & frame["os_days"].notna() & frame["os_event"].notna()
    test_parts, train_parts = [], []
    for run, repeat, fold in models_of(frame):
        m = frame[(frame.run == run) & (frame.repeat == repeat) & (frame.fold == fold) & known]
        tr, te = m[m.split == "train"], m[m.split == split].copy()
        if te.empty:
            continue
        centre = float(np.median(tr.risk)) if len(tr) else float("nan")
        te["risk_c"] = te.risk - centre
        probs = (breslow_survival(tr.risk, tr.os_days, tr.os_event, te.risk, times)
                 if len(tr) and tr.os_event.sum() > 0 and len(times) else np.full((len(te), len(times)), np.nan))
        for j in range(len(times)):
            te[f"s_{j}"] = probs[:, j]
        test_parts.append(te)
        train_parts.append(tr)
    cols = [f"s_{j}" for j in range(len(times))]
    keys = [*by, "subject_id"]
    if not test_parts:
        return (pd.DataFrame(columns=[*keys, "time", "event", "risk_c", *cols, "n_pred"]),
                pd.DataFrame(columns=[*keys, "time", "event"]))
    te = pd.concat(test_parts, ignore_index=True)
    for c in ("os_days", "os_event"):
        consistent_values(te, c, "survival")
    test = te.groupby(keys).agg(time=("os_days", "first"), event=("os_event", "first"), risk_c=("risk_c", "mean"),
                                n_pred=("risk", "size"), **{c: (c, "mean") for c in cols}).reset_index()
    tr = pd.concat(train_parts, ignore_index=True) if train_parts else te.iloc[:0]
    train = tr.groupby(keys).agg(time=("os_days", "first"), event=("os_event", "first")).reset_index()
    return test, train


def _survival_row(test: pd.DataFrame, train: pd.DataFrame, times: np.ndarray, s: Settings, n_boot: int) -> dict:
    probs = test[[f"s_{j}" for j in range(len(times))]].to_numpy(float) if len(times) else None
    if probs is not None and not np.isfinite(probs).all():
        probs = None
    risk = test.risk_c.to_numpy(float)
    out = survival_metrics(train.time, train.event, test.time, test.event, risk, probs, times,
                           n_boot=n_boot, alpha=s.alpha, seed=s.seed) if np.isfinite(risk).all() else {}
    if np.isfinite(risk).all():
        out.update(risk_groups(test.time, test.event, risk > 0))
    return out


def survival_results(name: str, runs: list[Run], times: np.ndarray, s: Settings) -> tuple[dict, list[dict], dict]:
    """Pooled row, per-replicate rows and plot data (KM, td-AUC) of one group's survival predictions."""
    frame = group_frame(runs)
    base = {"group": name, "experiment": runs[0].experiment, "mode": runs[0].mode, "endpoint": "os",
            "kind": "survival", "n_runs": len(runs)}
    test_r, train_r = pool_survival(frame, times, s.split, by=("run", "repeat"))
    reps = []
    for key, part in test_r.groupby(["run", "repeat"]):
        tr = train_r[(train_r.run == key[0]) & (train_r.repeat == key[1])]
        reps.append({**base, "run": key[0], "repeat": key[1], **_survival_row(part, tr, times, s, n_boot=0)})
    test, train = pool_survival(frame, times, s.split)
    row = {**base, "n_replicates": len(reps), **_survival_row(test, train, times, s, n_boot=s.n_bootstrap),
           "replicates": replicate_label(runs)}
    for k in SURVIVAL_SPREAD:
        row[f"{k}_mean"], row[f"{k}_sd"], _ = mean_sd([r.get(k, np.nan) for r in reps])
    curves = {"pooled": test, "td_times": row.pop("td_times", []), "td_auc": row.pop("td_auc", [])}
    for r in reps:
        r.pop("td_times", None)
        r.pop("td_auc", None)
    return row, reps, curves


def _pairs(names: list[str], reference: str | None) -> list[tuple[str, str]]:
    if reference is None:
        return list(itertools.combinations(names, 2))
    if reference not in names:
        raise ValueError(f"reference group {reference!r} is not among the groups {names}")
    return [(reference, b) for b in names if b != reference]


def _compare_markers(a: str, b: str, marker: str, pa: pd.DataFrame, pb: pd.DataFrame, s: Settings) -> dict:
    both = pa.merge(pb, on="subject_id", suffixes=("_a", "_b"))
    row = {"endpoint": marker, "kind": "marker", "group_a": a, "group_b": b, "metric": "AUC", "n_paired": len(both),
           "n_pos": int(both.label_a.sum())}
    if (both.label_a != both.label_b).any():
        raise RunError(f"marker {marker}: groups {a} and {b} disagree on labels of subjects "
                       f"{both.loc[both.label_a != both.label_b, 'subject_id'].tolist()[:3]}")
    if both.label_a.nunique() < 2:
        return row
    dl = delong_test(both.label_a, both.prob_a, both.prob_b, alpha=s.alpha)
    bs = paired_bootstrap_delta(both.label_a, both.prob_a, both.prob_b, s.n_bootstrap, s.alpha, s.seed)
    row.update(value_a=dl["auc_a"], value_b=dl["auc_b"], delta=dl["delta"], delong_z=dl["z"], delong_p=dl["p"],
               delong_ci_low=dl["ci_low"], delong_ci_high=dl["ci_high"], boot_ci_low=bs["ci_low"],
               boot_ci_high=bs["ci_high"], boot_p=bs["p"])
    return row


def _compare_survival(a: str, b: str, pa: pd.DataFrame, pb: pd.DataFrame, s: Settings) -> dict:
    both = pa.merge(pb, on="subject_id", suffixes=("_a", "_b"))
    row = {"endpoint": "os", "kind": "survival", "group_a": a, "group_b": b, "metric": "Harrell C",
           "n_paired": len(both), "n_pos": int(both.event_a.sum())}
    if both.empty or both.event_a.sum() < 1:
        return row
    t, e = both.time_a.to_numpy(float), both.event_a.to_numpy(float)
    ra, rb = both.risk_c_a.to_numpy(float), both.risk_c_b.to_numpy(float)
    ca, cb = harrell_c(t, e, ra), harrell_c(t, e, rb)
    # paired: the same resampled subjects (counts) for both groups
    counts = bootstrap_counts(len(t), s.n_bootstrap, np.random.default_rng(s.seed))
    deltas = (resampled_concordance(*concordance_kernel(t, e, ra), counts)
              - resampled_concordance(*concordance_kernel(t, e, rb), counts))
    deltas = deltas[np.isfinite(deltas)]
    row.update(value_a=ca, value_b=cb, delta=ca - cb)
    if len(deltas):
        lo, hi = np.quantile(deltas, [s.alpha / 2, 1 - s.alpha / 2])
        row.update(boot_ci_low=float(lo), boot_ci_high=float(hi), boot_p=bootstrap_p(ca - cb, deltas))
    return row


def evaluate_groups(groups: dict[str, list[Run]], s: Settings) -> Evaluation:
    """Compute every table of the report for the given groups of runs."""
    names = order_groups(groups)
    if s.reference is not None and s.reference not in names:
        raise ValueError(f"reference={s.reference!r} is not one of the groups {names} (group_by decides the names)")
    rows, reps, comps, notes = [], [], [], []
    curves: dict = {"markers": {}, "survival": {}}
    markers = list(dict.fromkeys(m for n in names for r in groups[n] for m in r.markers))
    for marker in markers:
        pooled = {}
        for n in names:
            if not any(marker in r.markers for r in groups[n]):
                continue
            try:
                row, rep, cur = marker_results(n, [r for r in groups[n] if marker in r.markers], marker, s)
            except RunError as err:  # one bad group must not sink the others
                log.error("%s / %s: %s", n, marker, err)
                notes.append(f"{n} / {marker} skipped: {err}")
                continue
            rows.append(row)
            reps.extend(rep)
            curves["markers"].setdefault(marker, {})[n] = cur
            pooled[n] = cur["pooled"]
        for a, b in _pairs(list(pooled), s.reference if s.reference in pooled else None):
            try:
                comps.append(_compare_markers(a, b, marker, pooled[a], pooled[b], s))
            except RunError as err:
                notes.append(f"{a} vs {b} / {marker} not compared: {err}")
    surv_names = [n for n in names if any(r.has_survival for r in groups[n])]
    times = np.array([])
    if surv_names:
        all_test = pd.concat([group_frame([r for r in groups[n] if r.has_survival]) for n in surv_names])
        all_test = all_test[(all_test.split == s.split) & (all_test.os_event == 1)].drop_duplicates("subject_id")
        times = time_grid(all_test.os_days, *s.time_quantiles, n=s.n_times)
        notes.append(f"survival time grid (days): {np.round(times, 1).tolist()} — quantiles "
                     f"{s.time_quantiles[0]:.0%}–{s.time_quantiles[1]:.0%} of test event times")
        pooled = {}
        for n in surv_names:
            try:
                row, rep, cur = survival_results(n, [r for r in groups[n] if r.has_survival], times, s)
            except RunError as err:
                log.error("%s / survival: %s", n, err)
                notes.append(f"{n} / survival skipped: {err}")
                continue
            rows.append(row)
            reps.extend(rep)
            curves["survival"][n] = cur
            pooled[n] = cur["pooled"]
        for a, b in _pairs(surv_names, s.reference if s.reference in surv_names else None):
            comps.append(_compare_survival(a, b, pooled[a], pooled[b], s))
    comparisons = pd.DataFrame(comps)
    if len(comparisons):
        for col in ("delong_p", "boot_p"):
            if col not in comparisons:
                comparisons[col] = np.nan
            comparisons[f"{col}_holm"] = comparisons.groupby("endpoint")[col].transform(lambda p: holm(p.to_numpy()))
    return Evaluation(table=pd.DataFrame(rows), replicates=pd.DataFrame(reps), comparisons=comparisons,
                      curves=curves, times=times, notes=notes)
