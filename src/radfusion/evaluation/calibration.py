"""Logistic recalibration of predicted probabilities: calibration slope and intercept with bootstrap CIs.

With ``lp = logit(p)`` (the model's linear predictor):

- **calibration slope** ``b``: the coefficient of ``lp`` in the logistic regression ``logit P(y=1) = a + b·lp``
  (1 is ideal; < 1: predictions too extreme, over-fitting);
- **calibration intercept** (calibration-in-the-large) ``a₀``: the intercept of ``logit P(y=1) = a₀ + lp``,
  slope fixed at 1 through an offset (0 is ideal; > 0: risks under-estimated on average).

Both are unpenalised maximum-likelihood fits by Newton–Raphson, vectorised over bootstrap resamples
(subject multiplicities as weights), so the percentile CIs cost one fit of a ``(B, n)`` problem.
Estimates from fewer than ~50 subjects or 10 events are unstable (Riley et al. 2021; Van Calster et
al. 2016): :func:`small_sample_warning` says so.
"""

from __future__ import annotations

import numpy as np

from radfusion.evaluation.survival import bootstrap_counts

EPS = 1e-6
MIN_SUBJECTS, MIN_EVENTS = 50, 10


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, float), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _newton(X: np.ndarray, y: np.ndarray, offset: np.ndarray, w: np.ndarray, n_iter: int = 50) -> np.ndarray:
    """Weighted logistic MLE for every row of ``w`` at once: ``X (n, k)``, ``w (B, n)`` → ``beta (B, k)``.

    Rows that do not converge (separation in a resample: |beta| runs away) come back as NaN.
    """
    B, k = w.shape[0], X.shape[1]
    beta = np.zeros((B, k))
    converged = np.zeros(B, bool)
    for _ in range(n_iter):
        eta = offset[None, :] + beta @ X.T
        mu = 1 / (1 + np.exp(-np.clip(eta, -30, 30)))
        grad = ((w * (y[None, :] - mu)) @ X)  # (B, k)
        hess = np.einsum("bn,ni,nj->bij", w * mu * (1 - mu), X, X) + 1e-10 * np.eye(k)
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        beta = beta + np.where(converged[:, None], 0.0, step)
        converged |= np.abs(step).max(axis=1) < 1e-10
        if converged.all():
            break
    bad = ~converged | (np.abs(beta) > 25).any(axis=1)
    beta[bad] = np.nan
    return beta


def recalibration(labels, probs, n_boot: int = 0, alpha: float = 0.05, seed: int = 0) -> dict:
    """Calibration slope and intercept (see the module doc), with percentile bootstrap CIs when ``n_boot``.

    Unknown labels (NaN) are dropped. Returns ``slope, intercept`` (calibration-in-the-large),
    ``slope_intercept`` (the intercept of the slope fit), their ``*_ci_low/_ci_high``, ``n``, ``n_events``
    (the smaller class) and ``warning`` ("" when the sample is large enough). NaN with one class.
    """
    labels, probs = np.asarray(labels, float), np.asarray(probs, float)
    keep = ~(np.isnan(labels) | np.isnan(probs))
    y, lp = labels[keep], logit(probs[keep])
    n, n_pos = len(y), int(y.sum())
    out = {"slope": np.nan, "intercept": np.nan, "slope_intercept": np.nan, "n": n,
           "n_events": int(min(n_pos, n - n_pos)), "warning": small_sample_warning(n, min(n_pos, n - n_pos))}
    for k in ("slope", "intercept"):
        out[f"{k}_ci_low"] = out[f"{k}_ci_high"] = np.nan
    if n == 0 or len(np.unique(y)) < 2:
        return out
    weights = np.ones((1, n))
    if n_boot > 0:
        weights = np.vstack([weights, bootstrap_counts(n, n_boot, np.random.default_rng(seed))])
    both = _newton(np.column_stack([np.ones(n), lp]), y, np.zeros(n), weights) if np.ptp(lp) > 0 \
        else np.full((len(weights), 2), np.nan)
    large = _newton(np.ones((n, 1)), y, lp, weights)[:, 0]
    out["slope_intercept"], out["slope"], out["intercept"] = float(both[0, 0]), float(both[0, 1]), float(large[0])
    for key, boots in (("slope", both[1:, 1]), ("intercept", large[1:])):
        ok = boots[np.isfinite(boots)]
        if n_boot > 0 and len(ok) > 0.5 * n_boot:  # a CI from a few surviving resamples would mislead
            lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = float(lo), float(hi)
    return out


def small_sample_warning(n: int, n_events: int) -> str:
    """A warning when calibration rests on fewer than 50 subjects or 10 events (smaller class), else ""."""
    if n >= MIN_SUBJECTS and n_events >= MIN_EVENTS:
        return ""
    return (f"calibration from {n} subjects ({n_events} in the smaller class) is unstable: "
            f"≥ {MIN_SUBJECTS} subjects and ≥ {MIN_EVENTS} events are the usual minimum")
