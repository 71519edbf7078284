"""Survival metrics from risk scores (Cox linear predictors; higher = higher hazard).

Every metric comes from scikit-survival or lifelines; this module only prepares their inputs:

- Harrell's C: ``sksurv.metrics.concordance_index_censored`` on the test subjects.
- Uno's C: ``concordance_index_ipcw``, censoring distribution (Kaplan–Meier) estimated on the
  *training* subjects, truncated at ``tau``.
- Time-dependent (cumulative/dynamic) AUC: ``cumulative_dynamic_auc`` on a time grid.
- Integrated Brier score: ``integrated_brier_score``. It needs survival *probabilities*, which a risk
  score alone does not give: we fit a Breslow baseline cumulative hazard on the model's training
  rows, ``H0(t) = Σ_{t_j ≤ t} d_j / Σ_{l: T_l ≥ t_j} exp(r_l)``, and predict
  ``S_i(t) = exp(−H0(t) · exp(r_i))`` (the risk treated as a fixed Cox linear predictor).
- Risk groups split at the training median: Kaplan–Meier curves, log-rank test
  (``lifelines.statistics.logrank_test``) and the hazard ratio high vs low risk
  (``lifelines.CoxPHFitter`` on the group indicator).

Times are in days.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv


def surv(time, event) -> np.ndarray:
    """scikit-survival structured array ``(event: bool, time: float)``."""
    return Surv.from_arrays(event=np.asarray(event, dtype=float).astype(bool), time=np.asarray(time, dtype=float))


def breslow_survival(train_risk, train_time, train_event, risk, times) -> np.ndarray:
    """Survival probabilities ``(n, len(times))`` of subjects with ``risk`` from a Breslow baseline.

    The baseline cumulative hazard is fitted on the training rows only (``train_*``, ``(n_train,)``,
    time in days, event 1/0). Before the first training event ``S = 1``; after the last training
    time the baseline is held constant (callers keep ``times`` inside the training follow-up).
    """
    train_risk = np.asarray(train_risk, float)
    train_time, train_event = np.asarray(train_time, float), np.asarray(train_event, float)
    shift = float(np.max(train_risk)) if len(train_risk) else 0.0
    log_w = train_risk - shift  # in log space: risks of a separated Cox fit (|r| ~ 1e3) cannot overflow
    event_times = np.unique(train_time[train_event == 1])
    deaths = np.array([np.sum((train_time == t) & (train_event == 1)) for t in event_times])
    log_at_risk = np.array([np.logaddexp.reduce(log_w[train_time >= t]) for t in event_times])
    log_cum_h0 = np.logaddexp.accumulate(np.log(deaths) - log_at_risk) if len(event_times) else np.array([])
    idx = np.searchsorted(event_times, np.asarray(times, float), side="right") - 1
    log_h0_at = np.where(idx >= 0, log_cum_h0[np.clip(idx, 0, None)] if len(log_cum_h0) else -np.inf, -np.inf)
    with np.errstate(over="ignore"):  # exp(large) = inf -> S = 0, the limit
        return np.exp(-np.exp((np.asarray(risk, float) - shift)[:, None] + log_h0_at[None, :]))


def time_grid(event_times, q_low: float = 0.1, q_high: float = 0.8, n: int = 8) -> np.ndarray:
    """Evaluation times (days): ``n`` quantiles of the observed event times from q_low to q_high."""
    t = np.asarray(event_times, float)
    t = t[np.isfinite(t)]
    if len(t) == 0:
        return np.array([])
    return np.unique(np.quantile(t, np.linspace(q_low, q_high, n)))


def clip_grid(times, test_time, train_time) -> np.ndarray:
    """Grid points usable for IPCW metrics: inside the test follow-up ``[min, max)`` and below the
    last training time (where the censoring Kaplan–Meier is still defined)."""
    times = np.asarray(times, float)
    hi = min(np.max(test_time), np.max(train_time))
    return times[(times >= np.min(test_time)) & (times < hi)]


def concordance_kernel(time, event, risk, weights=None, tied_tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Pair matrices ``(num, den)``, ``(n, n)``, of the concordance index over subject pairs.

    Pair ``(i, j)`` is comparable when ``i`` died first (``event_i`` and ``t_j > t_i``, or the same time
    with ``j`` censored); it scores 1 when ``risk_i > risk_j``, ½ for tied risks. ``weights`` (per
    ``i``): 1 for Harrell, the squared inverse censoring probability for Uno. With subject counts
    ``c`` of a bootstrap resample, ``C* = cᵀ·num·c / cᵀ·den·c``: the same value scikit-survival gives
    on the resampled data (checked in the tests), for all resamples in one matrix product.
    """
    time, risk = np.asarray(time, float), np.asarray(risk, float)
    event = np.asarray(event, float).astype(bool)
    w = np.ones(len(time)) if weights is None else np.asarray(weights, float)
    later = time[None, :] > time[:, None]
    same_censored = (time[None, :] == time[:, None]) & ~event[None, :]
    comparable = event[:, None] & (later | same_censored)
    diff = risk[:, None] - risk[None, :]
    score = np.where(np.abs(diff) <= tied_tol, 0.5, (diff > 0).astype(float))
    den = comparable * w[:, None]
    return den * score, den


def bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n)`` multiplicities of each subject in ``n_boot`` resamples with replacement."""
    idx = rng.integers(0, n, (n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1.0)
    return counts


def resampled_concordance(num: np.ndarray, den: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concordance of each resample (rows of ``counts``); NaN where no pair is comparable."""
    top = ((counts @ num) * counts).sum(axis=1)  # cᵀ·num·c per row, as a BLAS matrix product
    bottom = ((counts @ den) * counts).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bottom > 0, top / bottom, np.nan)


def uno_weights(y_train: np.ndarray, time, event, tau: float) -> np.ndarray:
    """Squared inverse probability of censoring weights of Uno's C (0 for censored or ``t ≥ tau``),
    censoring Kaplan–Meier from the training subjects, as ``concordance_index_ipcw`` uses them."""
    from sksurv.nonparametric import CensoringDistributionEstimator

    time, event = np.asarray(time, float), np.asarray(event, float).astype(bool)
    mask = time < tau
    w = np.zeros(len(time))
    w[mask] = CensoringDistributionEstimator().fit(y_train).predict_ipcw(surv(time[mask], event[mask]))
    return np.square(w)


def harrell_c(time, event, risk) -> float:
    """Harrell's C (scikit-survival) over subjects with known time and event; NaN without an event
    or a comparable pair."""
    time, event, risk = (np.asarray(a, dtype=float) for a in (time, event, risk))
    keep = ~(np.isnan(time) | np.isnan(event))
    if keep.sum() < 2 or event[keep].sum() < 1:
        return float("nan")
    try:
        return float(concordance_index_censored(event[keep].astype(bool), time[keep], risk[keep])[0])
    except (ValueError, ZeroDivisionError):  # no comparable pairs
        return float("nan")


def _uno(y_train, time, event, risk, tau) -> float:
    if np.sum(event) < 1:
        return float("nan")
    try:
        return float(concordance_index_ipcw(y_train, surv(time, event), risk, tau=tau)[0])
    except (ValueError, ZeroDivisionError):  # no comparable pair below tau, or zero censoring weight
        return float("nan")


def survival_metrics(train_time, train_event, time, event, risk, surv_probs=None, times=None,
                     n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """C-indices (with subject-bootstrap CIs), time-dependent AUC and integrated Brier score.

    ``train_*``: training subjects (censoring distribution); ``time, event, risk``: test subjects,
    ``(n,)``; ``surv_probs``: ``(n, len(times))`` survival probabilities for the Brier score (or
    None); ``times``: evaluation grid in days (clipped to the usable range; Uno's C is truncated at
    the last usable grid time ``tau``). ``n_boot = 0`` skips the CIs.
    """
    time, event, risk = (np.asarray(a, float) for a in (time, event, risk))
    train_time, train_event = np.asarray(train_time, float), np.asarray(train_event, float)
    out = {"n": int(len(time)), "n_events": int(np.sum(event)), "c_harrell": harrell_c(time, event, risk),
           "c_uno": float("nan"), "tau": float("nan"), "td_auc_mean": float("nan"), "ibs": float("nan"),
           "td_times": [], "td_auc": []}
    for k in ("c_harrell", "c_uno"):
        out[f"{k}_ci_low"] = out[f"{k}_ci_high"] = float("nan")
    have_train = len(train_time) > 1 and np.sum(train_event) > 0
    grid = clip_grid(times, time, train_time) if (times is not None and have_train and len(time)) else np.array([])
    y_train = surv(train_time, train_event) if have_train else None
    if len(grid):
        out["tau"] = float(grid[-1])
        out["c_uno"] = _uno(y_train, time, event, risk, out["tau"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                auc_t, mean_auc = cumulative_dynamic_auc(y_train, surv(time, event), risk, grid)
                out.update(td_times=grid.tolist(), td_auc=np.asarray(auc_t).tolist(), td_auc_mean=float(mean_auc))
            except ValueError:
                pass
    if surv_probs is not None and len(grid) >= 2:
        cols = np.searchsorted(np.asarray(times, float), grid)
        try:
            out["ibs"] = float(integrated_brier_score(y_train, surv(time, event), surv_probs[:, cols], grid))
        except ValueError:
            pass
        out["ibs_t_min"], out["ibs_t_max"] = float(grid[0]), float(grid[-1])
    if n_boot > 0 and out["n_events"] > 0:
        counts = bootstrap_counts(len(time), n_boot, np.random.default_rng(seed))
        boots = np.full((n_boot, 2), np.nan)
        boots[:, 0] = resampled_concordance(*concordance_kernel(time, event, risk), counts)
        if y_train is not None and np.isfinite(out["c_uno"]):
            w = uno_weights(y_train, time, event, out["tau"])
            boots[:, 1] = resampled_concordance(*concordance_kernel(time, event, risk, w), counts)
        for j, k in enumerate(("c_harrell", "c_uno")):
            ok = boots[np.isfinite(boots[:, j]), j]
            if len(ok) > 0.5 * n_boot:  # a CI from a few surviving resamples would mislead
                lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
                out[f"{k}_ci_low"], out[f"{k}_ci_high"] = float(lo), float(hi)
    return out


def separation(time, event, x) -> int:
    """Whether a one-covariate Cox fit on ``x`` diverges (monotone partial likelihood).

    The partial likelihood rises with β for ever when every death has the largest ``x`` of its risk set
    (returns +1: HR → ∞) and falls for ever when every death has the smallest (−1: HR → 0); then no
    finite maximum exists and a fitter reports a huge coefficient (HR ~ 1e7). 0: the fit is finite.
    Subjects with an unknown time or event are left out.
    """
    time, event, x = (np.asarray(a, float) for a in (time, event, x))
    keep = ~(np.isnan(time) | np.isnan(event) | np.isnan(x))
    time, event, x = time[keep], event[keep], x[keep]
    dead = np.flatnonzero(event == 1)
    if len(dead) == 0 or np.ptp(x) == 0:
        return 0
    at_risk = time[None, :] >= time[dead, None]  # (deaths, n)
    hi = np.where(at_risk, x[None, :], -np.inf).max(axis=1)
    lo = np.where(at_risk, x[None, :], np.inf).min(axis=1)
    if np.all(x[dead] >= hi) and np.any(hi > lo):
        return 1
    if np.all(x[dead] <= lo) and np.any(hi > lo):
        return -1
    return 0


SEPARATED = "not estimable: risk groups separate perfectly"


def risk_groups(time, event, high) -> dict:
    """Log-rank test and hazard ratio (high vs low risk group) with a 95 % CI.

    ``high``: ``(n,)`` boolean, risk above the *training* median. HR from a Cox model on the group
    indicator (lifelines, Efron ties); NaN when a group is empty or nobody died, and NaN with ``hr_note``
    saying why when the fit has no finite estimate (:func:`separation`, non-convergence).
    """
    from lifelines import CoxPHFitter
    from lifelines.statistics import logrank_test

    time, event, high = np.asarray(time, float), np.asarray(event, float), np.asarray(high, bool)
    out = {"n_high": int(high.sum()), "n_low": int((~high).sum()), "events_high": int(event[high].sum()),
           "events_low": int(event[~high].sum()), "logrank_chi2": float("nan"), "logrank_p": float("nan"),
           "hr": float("nan"), "hr_ci_low": float("nan"), "hr_ci_high": float("nan"), "hr_note": ""}
    if out["n_high"] == 0 or out["n_low"] == 0 or event.sum() == 0:
        return out
    lr = logrank_test(time[high], time[~high], event_observed_A=event[high], event_observed_B=event[~high])
    out["logrank_chi2"], out["logrank_p"] = float(lr.test_statistic), float(lr.p_value)
    if separation(time, event, high) != 0:  # no finite MLE: a fitter would print HR ~ 1e7
        out["hr_note"] = SEPARATED
        return out
    df = pd.DataFrame({"T": time, "E": event, "high": high.astype(float)})
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            cph = CoxPHFitter().fit(df, duration_col="T", event_col="E")
        except Exception as err:  # lifelines' ConvergenceError and the like
            out["hr_note"] = f"not estimable: Cox fit failed ({type(err).__name__})"
            return out
    log_hr = float(cph.params_["high"])
    lo, hi = cph.confidence_intervals_.loc["high"].to_numpy()
    if not (np.isfinite(log_hr) and np.isfinite(lo) and np.isfinite(hi)) or abs(log_hr) > 10:
        out["hr_note"] = f"not estimable: the Cox fit did not converge (log HR {log_hr:.3g})"
        return out
    out["hr"], out["hr_ci_low"], out["hr_ci_high"] = float(np.exp(log_hr)), float(np.exp(lo)), float(np.exp(hi))
    return out


def km_curve(time, event) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier estimate: event times (days) and survival probabilities."""
    t, s = kaplan_meier_estimator(np.asarray(event, float).astype(bool), np.asarray(time, float))
    return np.asarray(t), np.asarray(s)


def km_with_ci(time, event, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Kaplan–Meier estimate with pointwise ``1 − alpha`` confidence bands at the distinct death times.

    Greenwood's variance on the log(−log S) scale (the "exponential Greenwood" band, as lifelines and
    R's ``survfit(conf.type = "log-log")``): with ``v = Σ d/(n(n−d))``, ``se = √v / |log S|``, the band is
    ``S^exp(±z·se)``. Where S = 0 the band is [0, 0]. Returns ``time, survival, ci_low, ci_high,
    at_risk, deaths`` (arrays over the death times).
    """
    from scipy.stats import norm

    time, event = np.asarray(time, float), np.asarray(event, float)
    keep = ~(np.isnan(time) | np.isnan(event))
    time, event = time[keep], event[keep]
    t = np.unique(time[event == 1])
    n = np.array([(time >= u).sum() for u in t], float)
    d = np.array([((time == u) & (event == 1)).sum() for u in t], float)
    surv_ = np.cumprod(1 - d / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.cumsum(d / (n * (n - d)))
        se = np.sqrt(var) / np.abs(np.log(surv_))
        z = norm.ppf(1 - alpha / 2)
        low, high = surv_ ** np.exp(z * se), surv_ ** np.exp(-z * se)
    dead = surv_ <= 0
    low[dead], high[dead] = 0.0, 0.0
    return {"time": t, "survival": surv_, "ci_low": low, "ci_high": high, "at_risk": n.astype(int),
            "deaths": d.astype(int)}


def number_at_risk(time, at) -> np.ndarray:
    """Subjects still under observation (time ≥ t) at each ``at`` time: the table under a KM plot."""
    time = np.asarray(time, float)
    time = time[~np.isnan(time)]
    return np.array([int((time >= t).sum()) for t in np.asarray(at, float)])
