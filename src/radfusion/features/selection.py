"""Supervised feature selection, fitted on training subjects with a known label only.

Selectors (``method``):

- ``l1_logistic`` (binary markers): L1-penalised logistic regression along a path of decreasing
  penalty; features are ranked by the order in which they enter the model.
- ``lasso`` (binary markers as 0/1, or any continuous target): the LASSO path
  (:func:`sklearn.linear_model.lasso_path`), ranked by entry order.
- ``coxnet`` (survival): :class:`sksurv.linear_model.CoxnetSurvivalAnalysis` elastic-net path,
  ranked by entry order.
- ``mrmr`` (either): greedy minimum-redundancy maximum-relevance (difference form, Peng et al.
  2005): relevance = |Pearson r| with the label (or mutual information with ``relevance="mi"``);
  for survival, |r| with the null model's martingale residuals (event - Nelson-Aalen cumulative
  hazard at the subject's time); redundancy = mean |r| with the features already selected.
- ``rfecv`` (either): recursive feature elimination (scikit-learn :class:`~sklearn.feature_selection.RFECV`
  / :class:`~sklearn.feature_selection.RFE`) with an L2 logistic regression (binary; CV scored by ROC
  AUC, stratified folds) or a ridge-like Coxnet at one penalty (survival; CV scored by Harrell's C):
  each step drops ``rfe_step`` (a fraction) of the remaining features with the smallest |coef|. With
  ``n_features=None`` the number kept is the one with the best mean CV score; with ``n_features`` RFE
  stops there. Learned as plain arrays: ``ranking_`` (1 = kept, then the reverse elimination order) and
  ``cv_scores_`` (mean CV score per number of features, ``cv_n_features_``; empty without CV).

"Entry order along the path" keeps exactly ``n_features`` when asked (the first ``n`` features
to become non-zero as the penalty relaxes; ties broken by the size of their coefficient at the
point where the ``n``-th enters). With ``n_features=None`` the path methods keep the non-zero
coefficients at a penalty chosen by 5-fold cross-validation on the training rows, and ``mrmr``
needs an ``n_features``.

Inputs are expected standardised (the processor scales before selecting): penalised paths are
scale-dependent.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

log = logging.getLogger(__name__)

METHODS = ("l1_logistic", "lasso", "coxnet", "mrmr", "rfecv")


def as_target(y, n: int) -> tuple[str, np.ndarray | None, np.ndarray]:
    """Normalise a target to ``(kind, values, known_rows)``.

    ``y`` is a 1-D binary/continuous array (NaN = unknown), a survival structured array with an
    event (bool) and a time field (as :func:`sksurv.util.Surv` makes), or a tuple ``(time, event)``.
    Returns kind ``"binary"``, ``"continuous"`` or ``"survival"``; survival values are the
    structured array.
    """
    from sksurv.util import Surv

    if y is None:
        return "none", None, np.zeros(n, dtype=bool)
    if isinstance(y, tuple) and len(y) == 2:
        time, event = (np.asarray(v, dtype=np.float64) for v in y)
        known = np.isfinite(time) & np.isfinite(event)
        surv = Surv.from_arrays(event=np.where(known, event, 0).astype(bool), time=np.where(known, time, 1.0))
        return _check_len("survival", surv, known, n)
    y = np.asarray(y)
    if y.dtype.names:
        if len(y.dtype.names) != 2:
            raise ValueError(f"a survival target needs (event, time) fields, got {y.dtype.names}")
        ev_name, t_name = y.dtype.names
        if y.dtype[ev_name].kind != "b":  # tolerate (time, event) field order
            ev_name, t_name = t_name, ev_name
        time = y[t_name].astype(np.float64)
        known = np.isfinite(time)
        surv = Surv.from_arrays(event=y[ev_name].astype(bool), time=np.where(known, time, 1.0))
        return _check_len("survival", surv, known, n)
    y = y.astype(np.float64).ravel()
    known = np.isfinite(y)
    values = np.unique(y[known])
    kind = "binary" if set(values.tolist()) <= {0.0, 1.0} else "continuous"
    return _check_len(kind, y, known, n)


def _check_len(kind: str, y: np.ndarray, known: np.ndarray, n: int):
    if len(y) != n:
        raise ValueError(f"target has {len(y)} rows, features {n}")
    return kind, y, known


def martingale_residuals(surv: np.ndarray) -> np.ndarray:
    """Martingale residuals of the null Cox model: ``event_i - H(t_i)`` (Nelson-Aalen ``H``)."""
    from sksurv.nonparametric import nelson_aalen_estimator

    ev_name, t_name = surv.dtype.names
    event, time = surv[ev_name].astype(bool), surv[t_name].astype(np.float64)
    grid, cumhaz = nelson_aalen_estimator(event, time)
    return event - np.interp(time, grid, cumhaz)


def _abs_corr(X: np.ndarray, v: np.ndarray) -> np.ndarray:
    """|Pearson r| of each column of X with v (0 for constant columns)."""
    Xc = X - X.mean(axis=0)
    vc = v - v.mean()
    denom = np.sqrt((Xc**2).sum(axis=0) * (vc**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.abs(Xc.T @ vc) / denom
    return np.nan_to_num(r)


def relevance(X: np.ndarray, kind: str, y: np.ndarray) -> np.ndarray:
    """|r| of each feature with the label (binary/continuous) or martingale residuals (survival)."""
    if kind == "survival":
        return _abs_corr(X, martingale_residuals(y))
    return _abs_corr(X, y.astype(np.float64))


def _entry_order(coefs: np.ndarray, n_features: int | None, fallback: np.ndarray) -> np.ndarray:
    """Feature indices by the path step at which they first become non-zero.

    Args:
        coefs: (n_features_total, n_steps) coefficients along a path from strong to weak penalty.
        fallback: (n_features_total,) score ranking features that never enter (and exact ties).
    """
    nonzero = np.abs(coefs) > 1e-12
    entered = nonzero.any(axis=1)
    first = np.where(entered, nonzero.argmax(axis=1), coefs.shape[1])
    want = int(entered.sum()) if n_features is None else n_features
    # at the step where the want-th feature enters, rank ties by |coef| there
    order = np.argsort(first, kind="stable")
    step = first[order[min(want, len(order)) - 1]] if want > 0 else 0
    magnitude = np.abs(coefs[:, min(step, coefs.shape[1] - 1)])
    order = np.lexsort((-fallback, -magnitude, first))
    if n_features is not None and entered.sum() < n_features:
        log.warning("selection: only %d features enter the path, %d requested; the rest by univariate |r|",
                    int(entered.sum()), n_features)
    return order[:want]


def _nonzero_by_size(coef: np.ndarray) -> np.ndarray:
    nz = np.flatnonzero(np.abs(coef) > 1e-12)
    return nz[np.argsort(-np.abs(coef[nz]), kind="stable")]


class FeatureSelector(BaseEstimator, TransformerMixin):
    """Keep ``n_features`` columns chosen by ``method`` (see the module doc).

    Args:
        method: ``l1_logistic`` | ``lasso`` | ``coxnet`` | ``mrmr``.
        n_features: how many to keep (None: penalty chosen by CV for path methods).
        relevance: ``corr`` or ``mi`` (mutual information; binary targets only) for ``mrmr``.
        l1_ratio: CoxNet's elastic-net mixing (1 = LASSO; 0.9 is steadier with correlated features).
        random_state: seed for CV splits and mutual-information estimates.
        rfe_step: ``rfecv``: fraction of the remaining features dropped per elimination step.

    Learned: ``support_`` (selected column indices, most important first), ``kind_`` (target
    kind), ``n_features_in_``; ``rfecv`` also ``ranking_``, ``cv_scores_``, ``cv_n_features_``.
    """

    def __init__(self, method: str = "l1_logistic", n_features: int | None = None, relevance: str = "corr",
                 l1_ratio: float = 0.9, random_state: int = 0, rfe_step: float = 0.1) -> None:
        self.method = method
        self.n_features = n_features
        self.relevance = relevance
        self.l1_ratio = l1_ratio
        self.random_state = random_state
        self.rfe_step = rfe_step

    def fit(self, X, y) -> FeatureSelector:
        """Fit on rows with a known target only (NaN labels / NaN times are dropped).

        Args:
            X: (n_subjects, n_features) finite, standardised.
            y: see :func:`as_target`.
        """
        if self.method not in METHODS:
            raise ValueError(f"unknown selector {self.method!r}; choose one of {METHODS}")
        X = np.asarray(X, dtype=np.float64)
        kind, y, known = as_target(y, len(X))
        if kind == "none":
            raise ValueError(f"selector {self.method!r} needs a target (y=None given)")
        X, y = X[known], y[known]
        self.kind_ = kind
        self.n_features_in_ = X.shape[1]
        n = self.n_features
        if n is not None and not 1 <= n:
            raise ValueError(f"n_features must be >= 1, got {n}")
        if n is not None and n >= X.shape[1]:
            self.support_ = np.arange(X.shape[1])
            return self
        expected = {"l1_logistic": ("binary",), "lasso": ("binary", "continuous"), "coxnet": ("survival",),
                    "mrmr": ("binary", "continuous", "survival"), "rfecv": ("binary", "survival")}[self.method]
        if kind not in expected:
            raise ValueError(f"selector {self.method!r} needs a {' or '.join(expected)} target, got {kind}")
        if kind == "binary" and len(np.unique(y)) < 2:
            raise ValueError(f"selector {self.method!r}: the training rows have one class only")
        self.support_ = getattr(self, f"_fit_{self.method}")(X, y, n)
        return self

    def _fit_l1_logistic(self, X: np.ndarray, y: np.ndarray, n: int | None) -> np.ndarray:
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
        from sklearn.svm import l1_min_c

        if n is None:
            cv = LogisticRegressionCV(Cs=20, cv=5, l1_ratios=(1.0,), solver="liblinear", scoring="roc_auc",
                                      random_state=self.random_state, use_legacy_attributes=False).fit(X, y)
            return _nonzero_by_size(cv.coef_.ravel())
        c_min = l1_min_c(X, y, loss="log")
        coefs = []
        for c in c_min * np.logspace(0, 4, 40):
            model = LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear", random_state=self.random_state,
                                       max_iter=1000).fit(X, y)
            coefs.append(model.coef_.ravel())
            if np.count_nonzero(coefs[-1]) >= n:
                break
        return _entry_order(np.stack(coefs, axis=1), n, relevance(X, "binary", y))

    def _fit_lasso(self, X: np.ndarray, y: np.ndarray, n: int | None) -> np.ndarray:
        from sklearn.linear_model import LassoCV, lasso_path

        if n is None:
            cv = LassoCV(cv=5, random_state=self.random_state).fit(X, y)
            return _nonzero_by_size(cv.coef_)
        _, coefs, _ = lasso_path(X - X.mean(axis=0), y - y.mean(), alphas=200, eps=1e-4)
        return _entry_order(coefs, n, relevance(X, "continuous", y))

    def _fit_coxnet(self, X: np.ndarray, y: np.ndarray, n: int | None) -> np.ndarray:
        from sksurv.linear_model import CoxnetSurvivalAnalysis

        model = CoxnetSurvivalAnalysis(l1_ratio=self.l1_ratio, alpha_min_ratio=0.01, n_alphas=100)
        model.fit(X, y)
        coefs = np.asarray(model.coef_)  # (n_features, n_alphas), strong to weak penalty
        if n is not None:
            return _entry_order(coefs, n, relevance(X, "survival", y))
        return _nonzero_by_size(coefs[:, self._coxnet_cv_alpha(X, y, model.alphas_)])

    def _coxnet_cv_alpha(self, X: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> int:
        """Index of the alpha with the best mean validation Harrell's C over 5 folds.

        One warm-started path per fold (not one model per alpha): the same choice at a fraction
        of the cost, and small alphas that fail alone ("weights are too large") are reached
        gradually.
        """
        from sklearn.model_selection import KFold
        from sksurv.linear_model import CoxnetSurvivalAnalysis
        from sksurv.metrics import concordance_index_censored

        ev_name, t_name = y.dtype.names
        scores = np.zeros(len(alphas))
        for tr, va in KFold(5, shuffle=True, random_state=self.random_state).split(X):
            try:
                path = CoxnetSurvivalAnalysis(l1_ratio=self.l1_ratio, alphas=alphas).fit(X[tr], y[tr])
            except ArithmeticError as err:
                log.warning("coxnet CV: a fold failed (%s); skipped", err)
                continue
            risk = X[va] @ np.asarray(path.coef_)
            for k in range(risk.shape[1]):
                if y[va][ev_name].any():
                    scores[k] += concordance_index_censored(y[va][ev_name], y[va][t_name], risk[:, k])[0]
        return int(np.argmax(scores))

    def _fit_mrmr(self, X: np.ndarray, y: np.ndarray, n: int | None) -> np.ndarray:
        if n is None:
            raise ValueError("mrmr needs n_features")
        if self.relevance == "mi":
            if self.kind_ != "binary":
                raise ValueError("mrmr relevance='mi' is implemented for binary targets; use 'corr'")
            from sklearn.feature_selection import mutual_info_classif

            rel = mutual_info_classif(X, y.astype(int), random_state=self.random_state)
        elif self.relevance == "corr":
            rel = relevance(X, self.kind_, y)
        else:
            raise ValueError(f"mrmr relevance must be 'corr' or 'mi', got {self.relevance!r}")
        return mrmr_order(X, rel, n)

    def _fit_rfecv(self, X: np.ndarray, y: np.ndarray, n: int | None) -> np.ndarray:
        from sklearn.feature_selection import RFE, RFECV
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import KFold, StratifiedKFold

        if not 0 < self.rfe_step < 1:
            raise ValueError(f"rfecv: rfe_step must be a fraction in (0, 1), got {self.rfe_step}")
        if self.kind_ == "binary":
            estimator = LogisticRegression(C=1.0, max_iter=2000)
            folds = max(2, min(5, int(np.bincount(y.astype(int)).min())))
            cv, scoring = StratifiedKFold(folds, shuffle=True, random_state=self.random_state), "roc_auc"
        else:
            # One small penalty, mostly ridge: every feature keeps a coefficient to rank by (pure L1 ties
            # many at zero), coordinate descent stays fast when features outnumber subjects.
            estimator = _CoxnetOnColumns(l1_ratio=0.05, alpha=0.05)
            cv, scoring = KFold(5, shuffle=True, random_state=self.random_state), _harrell_c_scorer
            ev_name, t_name = y.dtype.names
            # scikit-learn's input checks refuse structured arrays: (time, event) columns instead.
            y = np.column_stack([y[t_name].astype(np.float64), y[ev_name].astype(np.float64)])
        if n is None:
            rfe = RFECV(estimator, step=self.rfe_step, cv=cv, scoring=scoring, importance_getter=_abs_coef)
        else:
            rfe = RFE(estimator, n_features_to_select=n, step=self.rfe_step, importance_getter=_abs_coef)
        rfe.fit(X, y)
        self.ranking_ = np.asarray(rfe.ranking_, dtype=np.int64)
        scores = getattr(rfe, "cv_results_", None)
        self.cv_scores_ = np.asarray(scores["mean_test_score"], dtype=np.float64) if scores else np.zeros(0)
        self.cv_n_features_ = np.asarray(scores["n_features"], dtype=np.int64) if scores else np.zeros(0, np.int64)
        kept = np.flatnonzero(rfe.support_)
        return kept[np.argsort(-_abs_coef(rfe.estimator_), kind="stable")]

    def transform(self, X) -> np.ndarray:
        X = np.asarray(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"selector was fitted on {self.n_features_in_} features, got {X.shape[1]}")
        return X[:, self.support_]


class _CoxnetOnColumns(BaseEstimator):
    """Coxnet at one penalty taking ``y`` as ``(n, 2)`` float columns ``(time, event)``, for RFE / RFECV
    (used while fitting only; nothing of it is kept). ``score`` is Harrell's C, as sksurv's."""

    def __init__(self, l1_ratio: float = 0.05, alpha: float = 0.05) -> None:
        self.l1_ratio = l1_ratio
        self.alpha = alpha

    @staticmethod
    def _surv(y: np.ndarray) -> np.ndarray:
        from sksurv.util import Surv

        return Surv.from_arrays(event=y[:, 1].astype(bool), time=y[:, 0])

    def fit(self, X, y) -> _CoxnetOnColumns:
        from sksurv.linear_model import CoxnetSurvivalAnalysis

        self.model_ = CoxnetSurvivalAnalysis(l1_ratio=self.l1_ratio, alphas=[self.alpha], max_iter=20000)
        self.model_.fit(X, self._surv(np.asarray(y, dtype=np.float64)))
        self.coef_ = np.asarray(self.model_.coef_)[:, 0]
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.coef_

    def score(self, X, y) -> float:
        return float(self.model_.score(X, self._surv(np.asarray(y, dtype=np.float64))))


def _harrell_c_scorer(estimator: _CoxnetOnColumns, X, y) -> float:
    """RFECV's scorer for survival (its default for a non-classifier would be R²)."""
    return estimator.score(X, y)


def _abs_coef(estimator) -> np.ndarray:
    """|coefficients| of a fitted linear model, one per feature (Coxnet's ``coef_`` is ``(p, n_alphas)``)."""
    return np.abs(np.asarray(estimator.coef_, dtype=np.float64)).reshape(-1, estimator.n_features_in_).max(axis=0)


def mrmr_order(X: np.ndarray, rel: np.ndarray, n: int) -> np.ndarray:
    """Greedy mRMR (difference form): next = argmax rel_j - mean_{s in selected} |r(j, s)|."""
    Xs = X - X.mean(axis=0)
    norms = np.sqrt((Xs**2).sum(axis=0))
    norms[norms == 0] = np.inf  # constant columns: zero correlation with everything
    Xs = Xs / norms
    selected = [int(np.argmax(rel))]
    redundancy_sum = np.abs(Xs.T @ Xs[:, selected[0]])
    available = np.ones(X.shape[1], dtype=bool)
    available[selected[0]] = False
    while len(selected) < min(n, X.shape[1]):
        score = np.where(available, rel - redundancy_sum / len(selected), -np.inf)
        j = int(np.argmax(score))
        selected.append(j)
        available[j] = False
        redundancy_sum += np.abs(Xs.T @ Xs[:, j])
    return np.array(selected)
