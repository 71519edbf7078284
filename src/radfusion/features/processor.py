"""In-fold processing of the radiomics table, as scikit-learn estimators.

:class:`FeatureProcessor` (built from config by :func:`make_feature_processor`): ICC filter, median
imputation with missing indicators, ComBat by site, variance and correlation filters, scaling,
supervised selection and clipping, in that order (see its docstring and
``docs/validation.md``). It takes any feature matrix, so the deep branch's embeddings can go
through it too.

Everything here is *fitted* (medians, variances, means and sds), so it is fitted on the training
subjects of a split only and then applied to validation and test. Using a scikit-learn
``Pipeline`` makes that structural: there is one ``fit`` and it receives training rows.

Empty habitats arrive as NaN features plus a ``<habitat>_empty`` indicator column; the median
imputation here fills the NaNs from training subjects, and the indicator keeps the information
that the habitat was absent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin


class ClipValues(BaseEstimator, TransformerMixin):
    """Clip standardised values to ``±limit`` so one outlier subject cannot dominate an MLP input."""

    def __init__(self, limit: float = 5.0) -> None:
        self.limit = limit

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        return np.clip(X, -self.limit, self.limit)


# --------------------------------------------------------------------------------------------
# The full in-fold processor: ICC → impute → ComBat → variance → correlation → scale → select → clip
# --------------------------------------------------------------------------------------------

def _frame(X, names: list[str] | None = None) -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        return X.rename(columns=str)
    X = np.asarray(X, dtype=np.float64)
    return pd.DataFrame(X, columns=names if names is not None else [f"f{i}" for i in range(X.shape[1])])


def _align(obj, index: pd.Index, what: str):
    """Rows of a Series/DataFrame in the order of ``index``: by label when its index holds every
    subject of ``index`` (so a clinical table in another order cannot be silently misaligned),
    else by position."""
    if isinstance(obj, (pd.Series, pd.DataFrame)) and not obj.index.equals(index):
        if index.isin(obj.index).all() and obj.index.is_unique:
            return obj.loc[index]
        if len(obj) != len(index):
            raise ValueError(f"{len(index)} rows of features but {len(obj)} rows of {what}")
    elif len(obj) != len(index):
        raise ValueError(f"{len(index)} rows of features but {len(obj)} rows of {what}")
    return obj


def _site_series(sites, index: pd.Index) -> pd.Series | None:
    if sites is None:
        return None
    if isinstance(sites, pd.Series):
        return pd.Series(_align(sites, index, "sites").to_numpy(), index=index)
    return pd.Series(np.asarray(_align(list(sites), index, "sites"), dtype=object), index=index)


class FeatureProcessor(BaseEstimator, TransformerMixin):
    """In-fold processing of a feature table, fitted on training subjects only.

    Steps, in order (each optional except imputation):

    1. ``min_icc``: drop features whose ICC(3,1) in ``icc_table`` is below it (unrated kept).
    2. Impute (``median``/``mean`` of training rows; all-NaN columns dropped) and, with
       ``missing_indicators``, add one 0/1 column per distinct training missingness pattern
       (``missing:<first column with that pattern>``).
    3. ``combat``: ComBat by site (:class:`radfusion.features.harmonize.ComBat`), preserving the
       ``combat_covariates`` columns of ``covariates``; indicators are not harmonised. Sites with
       fewer than 2 training subjects and sites unseen in training get no site adjustment
       (``combat_unseen="identity"``) or one estimated from their own rows (``"estimate"``).
    4. ``variance_threshold``: keep training variance > threshold (0: drop constants).
    5. ``corr_threshold``: walk features from most to least relevant to the label (|r|, or with
       martingale residuals for survival; column order without a label) and drop any with
       |Pearson r| > threshold with one already kept.
    6. ``scale``: z-score with training mean/SD.
    7. ``selector``: ``l1_logistic`` | ``lasso`` | ``coxnet`` | ``mrmr`` keeping ``n_features``
       (:class:`radfusion.features.selection.FeatureSelector`), fitted on labelled rows only.
    8. ``clip``: clip to ±clip (after scaling, so in SDs).

    Learned: ``feature_names_in_``, ``feature_names_out_``, ``summary_`` (features left after each
    step), ``warnings_`` (Counter of what was worked around, e.g. unseen-site rows), and each
    step's parameters (``medians_``, ``combat_``, ``mean_``/``scale_``, ``selector_``...).
    """

    def __init__(self, impute: str = "median", missing_indicators: bool = True, combat: bool = False,
                 combat_covariates: tuple[str, ...] | list[str] = (), combat_unseen: str = "identity",
                 combat_eb: bool = True, variance_threshold: float = 0.0, corr_threshold: float | None = None,
                 selector: str | None = None, n_features: int | None = None, mrmr_relevance: str = "corr",
                 min_icc: float | None = None, icc_table=None, scale: bool = True, clip: float | None = 5.0,
                 random_state: int = 0) -> None:
        self.impute = impute
        self.missing_indicators = missing_indicators
        self.combat = combat
        self.combat_covariates = combat_covariates
        self.combat_unseen = combat_unseen
        self.combat_eb = combat_eb
        self.variance_threshold = variance_threshold
        self.corr_threshold = corr_threshold
        self.selector = selector
        self.n_features = n_features
        self.mrmr_relevance = mrmr_relevance
        self.min_icc = min_icc
        self.icc_table = icc_table
        self.scale = scale
        self.clip = clip
        self.random_state = random_state

    # ------------------------------------------------------------------ helpers
    def _covariates(self, covariates, index: pd.Index, fit: bool) -> pd.DataFrame | None:
        cols = [str(c) for c in self.combat_covariates]
        if not cols:
            return None
        if covariates is None:
            raise ValueError(f"combat_covariates {cols} set but no covariates table given")
        frame = _align(_frame(covariates), index, "covariates")
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"ComBat covariate column(s) {missing} not in the covariates table "
                             f"(columns: {list(frame.columns)})")
        frame = frame[cols].copy()
        frame.index = index
        if fit:
            self.covariate_fill_ = {c: (frame[c].median() if pd.api.types.is_numeric_dtype(frame[c])
                                        else frame[c].mode().iloc[0]) for c in cols}
        for c in cols:
            n_missing = int(frame[c].isna().sum())
            if n_missing:
                self.warnings_[f"covariate {c} missing, filled with training value"] += n_missing
                frame[c] = frame[c].fillna(self.covariate_fill_[c])
        return frame

    def _impute(self, values: np.ndarray) -> np.ndarray:
        nan = np.isnan(values)
        n_new = int((nan & ~self.had_missing_[None, :]).sum())
        if n_new:
            self.warnings_["missing value in a feature complete in training, imputed"] += n_new
        filled = np.where(nan, self.fill_[None, :], values)
        if not self.missing_indicators or not len(self.indicator_sources_):
            return filled
        return np.hstack([filled, nan[:, self.indicator_sources_].astype(np.float64)])

    def _label_relevance(self, Z: np.ndarray, y) -> np.ndarray | None:
        from radfusion.features.selection import as_target, relevance

        kind, values, known = as_target(y, len(Z))
        if kind == "none" or known.sum() < 3:
            return None
        return relevance(Z[known], kind, values[known])

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, sites=None, covariates=None) -> FeatureProcessor:
        """Learn every step from the training rows.

        Args:
            X: (n_subjects, n_features) DataFrame (column names kept) or array.
            y: None, a 1-D marker array (NaN unknown), a survival structured array, or ``(time, event)``.
                Needed by ``selector``; ``corr_threshold`` uses it to decide which of a pair stays.
            sites: (n_subjects,) site labels (needed with ``combat``).
            covariates: DataFrame holding the ``combat_covariates`` columns, one row per subject.
        """
        from collections import Counter

        from radfusion.features.harmonize import ComBat
        from radfusion.features.selection import FeatureSelector

        if self.impute not in ("median", "mean"):
            raise ValueError(f"impute must be 'median' or 'mean', got {self.impute!r}")
        frame = _frame(X)
        self.warnings_: Counter = Counter()
        self.feature_names_in_ = [str(c) for c in frame.columns]
        values = frame.to_numpy(dtype=np.float64, copy=True)
        values[~np.isfinite(values)] = np.nan
        summary = {"input": values.shape[1]}

        keep = np.ones(values.shape[1], dtype=bool)
        if self.min_icc is not None:
            from radfusion.radiomics.stability import read_icc_table

            if self.icc_table is None:
                raise ValueError("min_icc is set but no icc_table (run scripts/stability.py to make one)")
            icc = read_icc_table(self.icc_table)
            rated = np.array([c in icc.index for c in self.feature_names_in_])
            value = np.array([icc.get(c, np.nan) for c in self.feature_names_in_], dtype=np.float64)
            keep &= ~rated | (np.nan_to_num(value, nan=-np.inf) >= self.min_icc)
            self.n_unrated_ = int((~rated).sum())
            summary["after_icc"] = int(keep.sum())
        all_nan = np.isnan(values).all(axis=0)
        if all_nan.any():
            self.warnings_["feature missing in every training subject, dropped"] += int((all_nan & keep).sum())
        keep &= ~all_nan
        self.input_columns_ = np.flatnonzero(keep)
        values = values[:, self.input_columns_]
        names = [self.feature_names_in_[i] for i in self.input_columns_]

        self.fill_ = (np.nanmedian if self.impute == "median" else np.nanmean)(values, axis=0)
        self.had_missing_ = np.isnan(values).any(axis=0)
        patterns: dict[bytes, int] = {}
        for j in np.flatnonzero(self.had_missing_):
            patterns.setdefault(np.isnan(values[:, j]).tobytes(), j)
        sources = sorted(patterns.values())
        self.indicator_sources_ = np.array(sources, dtype=int)
        n_base = values.shape[1]
        Z = self._impute(values)
        names = names + ([f"missing:{names[j]}" for j in sources] if self.missing_indicators else [])
        summary["after_impute"] = n_base
        summary["indicators"] = Z.shape[1] - n_base

        self.combat_ = None
        if self.combat:
            site_s = _site_series(sites, frame.index)
            if site_s is None:
                raise ValueError("combat=True needs the training subjects' sites")
            cov = self._covariates(covariates, frame.index, fit=True)
            counts = site_s.astype(str).value_counts()
            rows = site_s.astype(str).isin(counts.index[counts >= 2]).to_numpy()
            if (~rows).any():
                self.warnings_["training rows of sites with < 2 subjects, not site-adjusted"] += int((~rows).sum())
            self.combat_ = ComBat(eb=self.combat_eb, unseen=self.combat_unseen)
            self.combat_.fit(Z[rows, :n_base], site_s[rows], None if cov is None else cov[rows])
            Z[:, :n_base] = self.combat_.transform(Z[:, :n_base], site_s, cov)
            self.combat_.unseen_counts_.clear()

        if self.variance_threshold == 0:
            var_keep = np.ptp(Z, axis=0) > 0
        else:
            var_keep = Z.var(axis=0) > self.variance_threshold
        names = [n for n, k in zip(names, var_keep, strict=True) if k]
        Z, cols = Z[:, var_keep], np.flatnonzero(var_keep)
        summary["after_variance"] = Z.shape[1]

        if self.corr_threshold is not None:
            rel = self._label_relevance(Z, y)
            order = np.arange(Z.shape[1]) if rel is None else np.argsort(-rel, kind="stable")
            with np.errstate(invalid="ignore", divide="ignore"):
                r = np.abs(np.nan_to_num(np.corrcoef(Z, rowvar=False)))
            blocked = np.zeros(Z.shape[1], dtype=bool)
            corr_keep = np.zeros(Z.shape[1], dtype=bool)
            for j in order:
                if not blocked[j]:
                    corr_keep[j] = True
                    blocked |= r[j] > self.corr_threshold
            Z, names, cols = Z[:, corr_keep], [n for n, k in zip(names, corr_keep, strict=True) if k], cols[corr_keep]
            summary["after_corr"] = Z.shape[1]
        self.kept_columns_ = cols  # into [imputed features, indicators]

        self.mean_ = Z.mean(axis=0) if self.scale else np.zeros(Z.shape[1])
        sd = Z.std(axis=0) if self.scale else np.ones(Z.shape[1])
        self.scale_ = np.where(sd > 0, sd, 1.0)
        Z = (Z - self.mean_) / self.scale_

        self.selector_ = None
        if self.selector is not None:
            if y is None:
                raise ValueError(f"selector {self.selector!r} needs the training labels (y=None given)")
            self.selector_ = FeatureSelector(self.selector, self.n_features, relevance=self.mrmr_relevance,
                                             random_state=self.random_state).fit(Z, y)
            names = [names[i] for i in self.selector_.support_]
            summary["after_selection"] = len(names)
        self.feature_names_out_ = names
        self.summary_ = summary
        self.n_features_in_ = len(self.feature_names_in_)
        return self

    # ------------------------------------------------------------------ transform
    def transform(self, X, sites=None, covariates=None) -> np.ndarray:
        """Apply the fitted steps to any rows.

        Returns:
            (n_subjects, len(feature_names_out_)) float64.
        """
        if isinstance(X, pd.DataFrame):
            frame = _frame(X)
            missing = [c for c in self.feature_names_in_ if c not in frame.columns]
            if missing:
                raise ValueError(f"{len(missing)} feature column(s) seen in training are missing, e.g. {missing[:5]}")
            frame = frame[self.feature_names_in_]
        else:
            arr = np.asarray(X, dtype=np.float64)
            if arr.ndim != 2 or arr.shape[1] != self.n_features_in_:
                raise ValueError(f"expected {self.n_features_in_} feature columns, got shape {arr.shape}")
            frame = _frame(arr, self.feature_names_in_)
        values = frame.to_numpy(dtype=np.float64, copy=True)[:, self.input_columns_]
        values[~np.isfinite(values)] = np.nan
        Z = self._impute(values)
        if self.combat_ is not None:
            site_s = _site_series(sites, frame.index)
            if site_s is None:
                raise ValueError("this processor harmonises by site (combat=True): pass sites to transform")
            cov = self._covariates(covariates, frame.index, fit=False)
            n_base = len(self.input_columns_)
            Z[:, :n_base] = self.combat_.transform(Z[:, :n_base], site_s, cov)
            for site, count in self.combat_.unseen_counts_.items():
                self.warnings_[f"rows of site {site} unseen in training ({self.combat_unseen})"] += count
            self.combat_.unseen_counts_.clear()
        Z = (Z[:, self.kept_columns_] - self.mean_) / self.scale_
        if self.selector_ is not None:
            Z = self.selector_.transform(Z)
        if self.clip:
            Z = np.clip(Z, -self.clip, self.clip)
        return Z

    def fit_transform(self, X, y=None, sites=None, covariates=None, **_) -> np.ndarray:
        return self.fit(X, y, sites, covariates).transform(X, sites, covariates)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.asarray(self.feature_names_out_, dtype=object)


def make_feature_processor(cfg) -> FeatureProcessor:
    """A :class:`FeatureProcessor` from a config dict (or omegaconf ``DictConfig``).

    Example: ``{combat: true, combat_covariates: [age], corr_threshold: 0.95, selector: l1_logistic,
    n_features: 64, min_icc: 0.75, icc_table: results/stability/icc.csv}``. Unknown keys raise.
    """
    import inspect

    if cfg is None:
        cfg = {}
    if hasattr(cfg, "_metadata"):  # omegaconf container
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = {k: v for k, v in dict(cfg).items() if not str(k).startswith("_")}
    known = set(inspect.signature(FeatureProcessor.__init__).parameters) - {"self"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown feature-processing key(s) {unknown}; known: {sorted(known)}")
    if "combat_covariates" in cfg:
        cfg["combat_covariates"] = tuple(cfg["combat_covariates"] or ())
    return FeatureProcessor(**cfg)
