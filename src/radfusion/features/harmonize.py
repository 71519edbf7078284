"""ComBat harmonisation by site, as a scikit-learn style estimator fitted on training subjects only.

Parametric empirical-Bayes ComBat (Johnson, Li & Rabinovic 2007, *Biostatistics* 8:118; as used for
imaging features by Fortin et al. 2017/2018, *NeuroImage*). For a feature ``v`` of subject ``i`` at
site ``b``::

    x_iv = alpha_v + C_i · beta_v + gamma_bv + sqrt(delta_bv) · eps_iv

``alpha`` (grand mean) and ``beta`` (covariate effects, e.g. age) are kept; the site location
``gamma`` and scale ``delta`` are estimated per site and feature, shrunk towards a per-site prior
pooled over features (normal prior on ``gamma``, inverse-gamma on ``delta``), and removed.

Why our own implementation: ``neuroCombat`` 0.2.12 installs and agrees with this code to ~1e-10 on
the same data (``tests/test_harmonize.py``), but its ``neuroCombatFromTraining`` — the only way to
apply fitted parameters to new subjects — replaces each new subject's covariates by the training
mean, so the covariate effect is not preserved on validation/test subjects (the failure behind
ComBatHarmonization #13 / neuroHarmonize #50). Here :meth:`ComBat.transform` applies the learned
parameters with the new subjects' own covariates.

Unseen sites (a site that had no training subject, e.g. the held-out site of an external
validation) cannot be adjusted with learned parameters. ``unseen="identity"`` (default) leaves their
rows unadjusted — the only choice that uses no statistics of the held-out data — and counts them
(:attr:`ComBat.unseen_counts_`, one log warning per call). ``unseen="estimate"`` instead estimates
that site's location/scale from the rows of that site passed to ``transform`` (EB-shrunk, with the
training grand mean, covariate effects and pooled variance kept fixed): the usual "harmonise a new
scanner to a frozen reference" practice; it uses unlabelled statistics of the new site only.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

log = logging.getLogger(__name__)


def _as_sites(sites, n: int) -> np.ndarray:
    if sites is None:
        raise ValueError("ComBat needs the site of every subject (sites=None given)")
    arr = np.asarray(pd.Series(sites).astype(str).to_numpy(), dtype=object)
    if len(arr) != n:
        raise ValueError(f"{n} rows of features but {len(arr)} site entries")
    missing = pd.isna(pd.Series(sites)).to_numpy()
    if missing.any():
        rows = list(pd.Series(sites).index[missing][:5]) if isinstance(sites, pd.Series) else \
            list(np.flatnonzero(missing)[:5])
        raise ValueError(f"ComBat: no site for subject(s)/row(s) {rows}")
    return arr


def _priors(delta_hat: np.ndarray) -> tuple[float, float]:
    """Inverse-gamma prior (a, b) of one site's scales by the method of moments."""
    m, s2 = float(np.mean(delta_hat)), float(np.var(delta_hat, ddof=1))
    if s2 <= 0:  # identical scales for every feature: an (almost) degenerate prior at m
        s2 = 1e-12
    return (2 * s2 + m**2) / s2, (m * s2 + m**3) / s2


def _eb_site(s: np.ndarray, mean_only: bool, tol: float, max_iter: int) -> dict:
    """Empirical-Bayes location/scale of one site from its standardised rows ``s`` (n_b, p)."""
    n = s.shape[0]
    g_hat = s.mean(axis=0)
    g_bar, t2 = float(g_hat.mean()), float(g_hat.var(ddof=1))
    if mean_only:
        d_hat = np.ones_like(g_hat)
        # As R's sva::ComBat and neuroCombat: with fixed unit scales the posterior uses n = 1.
        g_star = (t2 * g_hat + g_bar) / (t2 + 1.0)
        return {"gamma_hat": g_hat, "delta_hat": d_hat, "gamma_star": g_star, "delta_star": d_hat,
                "gamma_bar": g_bar, "t2": t2, "a": np.nan, "b": np.nan}
    d_hat = s.var(axis=0, ddof=1)
    d_hat[d_hat == 0] = 1.0  # a feature constant within the site: no scale information
    a, b = _priors(d_hat)
    g_old, d_old = g_hat.copy(), d_hat.copy()
    for _ in range(max_iter):
        g_new = (t2 * n * g_hat + d_old * g_bar) / (t2 * n + d_old)
        sum2 = ((s - g_new) ** 2).sum(axis=0)
        d_new = (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            change = max(np.nanmax(np.abs(g_new - g_old) / np.abs(g_old)),
                         np.nanmax(np.abs(d_new - d_old) / d_old))
        g_old, d_old = g_new, d_new
        if change < tol:
            break
    else:
        log.warning("ComBat: empirical-Bayes iteration did not converge in %d steps (change %.2g)", max_iter,
                    change)
    return {"gamma_hat": g_hat, "delta_hat": d_hat, "gamma_star": g_old, "delta_star": d_old,
            "gamma_bar": g_bar, "t2": t2, "a": a, "b": b}


class ComBat(BaseEstimator, TransformerMixin):
    """Parametric empirical-Bayes ComBat by site, covariate effects preserved.

    Args:
        eb: shrink site parameters with the empirical-Bayes priors (False: per-site sample moments).
        mean_only: adjust locations only (scales left as they are).
        unseen: ``"identity"`` or ``"estimate"`` for sites without training subjects (module doc).
        tol: relative convergence tolerance of the EB iteration (neuroCombat's 1e-4).
        max_iter: iteration cap.

    Learned attributes: ``sites_`` (site names), ``n_per_site_``, ``grand_mean_`` (p,),
    ``beta_`` (q, p) covariate effects, ``var_pooled_`` (p,), ``gamma_hat_``/``delta_hat_`` and
    ``gamma_star_``/``delta_star_`` (n_sites, p), ``a_prior_``/``b_prior_``/``gamma_bar_``/``t2_``
    (n_sites,), ``constant_`` (p,) features with zero residual variance (passed through unchanged),
    ``unseen_counts_`` (site -> rows transformed without learned parameters).
    """

    def __init__(self, eb: bool = True, mean_only: bool = False, unseen: str = "identity", tol: float = 1e-4,
                 max_iter: int = 1000) -> None:
        self.eb = eb
        self.mean_only = mean_only
        self.unseen = unseen
        self.tol = tol
        self.max_iter = max_iter

    # ------------------------------------------------------------------ covariates
    def _design(self, covariates, n: int, fit: bool) -> np.ndarray:
        """Covariate design (n, q): numeric columns as-is, others one-hot with the first level dropped."""
        if covariates is None:
            if fit:
                self.covariate_columns_ = []
            elif self.covariate_columns_:
                raise ValueError(f"ComBat was fitted with covariates {self.covariate_columns_}; pass them")
            return np.zeros((n, 0))
        frame = covariates if isinstance(covariates, pd.DataFrame) else \
            pd.DataFrame(np.asarray(covariates, dtype=np.float64).reshape(n, -1)).rename(columns=str)
        if len(frame) != n:
            raise ValueError(f"{n} rows of features but {len(frame)} rows of covariates")
        if fit:
            self.covariate_columns_ = [str(c) for c in frame.columns]
            self.covariate_levels_ = {}
            for c in frame.columns:
                if not pd.api.types.is_numeric_dtype(frame[c]):
                    self.covariate_levels_[str(c)] = sorted(frame[c].dropna().astype(str).unique())
        missing = [c for c in self.covariate_columns_ if c not in frame.columns.astype(str)]
        if missing:
            raise ValueError(f"ComBat covariate column(s) {missing} missing; have {list(frame.columns)}")
        frame = frame.rename(columns=str)
        blocks = []
        for c in self.covariate_columns_:
            col = frame[c]
            if col.isna().any():
                rows = list(col.index[col.isna()][:5])
                raise ValueError(f"ComBat covariate {c!r} is missing for subject(s)/row(s) {rows}; impute it first")
            if c in self.covariate_levels_:
                levels = self.covariate_levels_[c]
                values = col.astype(str)
                new = sorted(set(values) - set(levels))
                if new:
                    raise ValueError(f"ComBat covariate {c!r}: value(s) {new} not seen in training (levels {levels})")
                blocks.append(np.stack([(values == lev).to_numpy(float) for lev in levels[1:]], axis=1)
                              if len(levels) > 1 else np.zeros((n, 0)))
            else:
                blocks.append(col.to_numpy(np.float64)[:, None])
        return np.hstack(blocks) if blocks else np.zeros((n, 0))

    # ------------------------------------------------------------------ fit / transform
    def fit(self, X, sites, covariates=None) -> ComBat:
        """Learn site and covariate parameters from training rows.

        Args:
            X: (n_subjects, n_features) finite values (impute first).
            sites: (n_subjects,) site labels; every site needs >= 2 subjects (a scale needs two).
            covariates: None, or (n_subjects, q) DataFrame/array of effects to preserve (age, sex).
        """
        if self.unseen not in ("identity", "estimate"):
            raise ValueError(f"unseen must be 'identity' or 'estimate', got {self.unseen!r}")
        X = np.asarray(X, dtype=np.float64)
        n, p = X.shape
        if not np.isfinite(X).all():
            raise ValueError("ComBat needs finite features; impute missing values before harmonising")
        site_arr = _as_sites(sites, n)
        C = self._design(covariates, n, fit=True)
        self.sites_, inverse, counts = np.unique(site_arr, return_inverse=True, return_counts=True)
        small = {str(s): int(c) for s, c in zip(self.sites_, counts, strict=True) if c < 2}
        if small:
            raise ValueError(f"ComBat needs >= 2 training subjects per site; too few at {small}")
        B = len(self.sites_)
        onehot = np.eye(B)[inverse]
        design = np.hstack([onehot, C])
        if np.linalg.matrix_rank(design) < design.shape[1]:
            raise ValueError(f"ComBat: covariates {self.covariate_columns_} are collinear with the sites "
                             "(e.g. constant within every site); their effect cannot be told apart from the site's")
        coef, *_ = np.linalg.lstsq(design, X, rcond=None)
        self.n_per_site_ = counts
        self.grand_mean_ = (counts / n) @ coef[:B]
        self.beta_ = coef[B:]
        self.var_pooled_ = ((X - design @ coef) ** 2).mean(axis=0)
        self.constant_ = self.var_pooled_ <= 1e-12 * np.maximum(1.0, np.abs(self.grand_mean_)) ** 2
        s = self._standardise(X, C)
        keep = ~self.constant_
        stats = {k: np.zeros((B, p)) for k in ("gamma_hat", "delta_hat", "gamma_star", "delta_star")}
        for k in ("delta_hat", "delta_star"):
            stats[k][:] = 1.0
        scalars = {k: np.zeros(B) for k in ("gamma_bar", "t2", "a", "b")}
        for j in range(B):
            rows = inverse == j
            est = _eb_site(s[rows][:, keep], self.mean_only, self.tol, self.max_iter)
            if not self.eb:
                est["gamma_star"], est["delta_star"] = est["gamma_hat"], est["delta_hat"]
            for k in stats:
                stats[k][j, keep] = est[k]
            for k in scalars:
                scalars[k][j] = est[k]
        self.gamma_hat_, self.delta_hat_ = stats["gamma_hat"], stats["delta_hat"]
        self.gamma_star_, self.delta_star_ = stats["gamma_star"], stats["delta_star"]
        self.gamma_bar_, self.t2_, self.a_prior_, self.b_prior_ = (scalars[k] for k in ("gamma_bar", "t2", "a", "b"))
        self.n_features_in_ = p
        self.unseen_counts_: Counter = Counter()
        return self

    def _standardise(self, X: np.ndarray, C: np.ndarray) -> np.ndarray:
        scale = np.sqrt(np.where(self.constant_, 1.0, self.var_pooled_))
        return (X - self.grand_mean_ - C @ self.beta_) / scale

    def _unstandardise(self, s: np.ndarray, C: np.ndarray) -> np.ndarray:
        scale = np.sqrt(np.where(self.constant_, 1.0, self.var_pooled_))
        return s * scale + self.grand_mean_ + C @ self.beta_

    def transform(self, X, sites, covariates=None) -> np.ndarray:
        """Harmonise rows with the learned parameters (their own covariates are preserved).

        Returns:
            (n_subjects, n_features) float64. Constant features pass through unchanged; rows of
            sites unseen in training follow ``unseen`` (module doc).
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"ComBat was fitted on {self.n_features_in_} features, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("ComBat needs finite features; impute missing values before harmonising")
        site_arr = _as_sites(sites, len(X))
        C = self._design(covariates, len(X), fit=False)
        s = self._standardise(X, C)
        out = X.copy()
        keep = ~self.constant_
        index = {str(v): j for j, v in enumerate(self.sites_)}
        unseen: Counter = Counter()
        for site in np.unique(site_arr):
            rows = site_arr == site
            if site in index:
                j = index[site]
                g, d = self.gamma_star_[j], self.delta_star_[j]
            elif self.unseen == "estimate" and rows.sum() >= 2:
                est = _eb_site(s[rows][:, keep], self.mean_only, self.tol, self.max_iter)
                g, d = np.zeros(len(keep)), np.ones(len(keep))
                g[keep], d[keep] = (est["gamma_star"], est["delta_star"]) if self.eb else \
                    (est["gamma_hat"], est["delta_hat"])
                unseen[f"{site} (estimated from {int(rows.sum())} rows)"] += int(rows.sum())
            else:
                unseen[str(site)] += int(rows.sum())
                continue
            adjusted = self._unstandardise((s[rows] - g) / np.sqrt(d), C[rows])
            out[np.ix_(rows, keep)] = adjusted[:, keep]
        if unseen:
            self.unseen_counts_.update(unseen)
            log.warning("ComBat: %d row(s) from site(s) without training subjects %s: %s", sum(unseen.values()),
                        dict(unseen), "site location/scale estimated from these rows" if self.unseen == "estimate"
                        else "left without site adjustment")
        return out

    def fit_transform(self, X, sites=None, covariates=None, **_) -> np.ndarray:
        return self.fit(X, sites, covariates).transform(X, sites, covariates)

