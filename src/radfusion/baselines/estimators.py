"""Classical estimators behind the baselines, built from a config's ``params``.

Every factory returns an unfitted scikit-learn / scikit-survival estimator. ``params`` from the
config override the defaults below (which are sized for ~50-500 subjects and standardised radiomics).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC
from sksurv.ensemble import RandomSurvivalForest
from sksurv.linear_model import CoxnetSurvivalAnalysis, CoxPHSurvivalAnalysis


def _lr_l1(params: dict, seed: int, n_min_class: int) -> BaseEstimator:
    # liblinear: exact, deterministic L1 path for small n (saga needs many iterations to converge).
    kw = {"C": 1.0, "l1_ratio": 1.0, "solver": "liblinear", "class_weight": "balanced", "max_iter": 5000,
          "random_state": seed, **params}
    return LogisticRegression(**kw)


def _lr_l2(params: dict, seed: int, n_min_class: int) -> BaseEstimator:
    kw = {"C": 1.0, "l1_ratio": 0.0, "solver": "lbfgs", "class_weight": "balanced", "max_iter": 5000,
          "random_state": seed, **params}
    return LogisticRegression(**kw)


def _rf(params: dict, seed: int, n_min_class: int) -> BaseEstimator:
    kw = {"n_estimators": 500, "min_samples_leaf": 2, "max_features": "sqrt",
          "class_weight": "balanced_subsample", "n_jobs": 1, "random_state": seed, **params}
    return RandomForestClassifier(**kw)


def _svm(params: dict, seed: int, n_min_class: int) -> BaseEstimator:
    # SVC(probability=True) is deprecated in scikit-learn 1.9; its documented replacement is Platt
    # scaling in CalibratedClassifierCV(ensemble=False): the SVC is refitted on all training rows and
    # the sigmoid is fitted on out-of-fold decision values, so probabilities are not in-sample.
    params = dict(params)
    cv = int(params.pop("calibration_cv", 5))
    cv = max(2, min(cv, n_min_class))
    kw = {"kernel": "rbf", "C": 1.0, "gamma": "scale", "class_weight": "balanced", "random_state": seed, **params}
    return CalibratedClassifierCV(SVC(**kw), method="sigmoid", cv=cv, ensemble=False)


class RidgeCoxPH(BaseEstimator):
    """scikit-survival's ``CoxPHSurvivalAnalysis`` (ridge penalty ``alpha``), fitted in the row space of X.

    With a ridge penalty the optimum ``beta`` lies in the span of the training rows (a component
    orthogonal to them leaves every ``X beta`` unchanged and only adds penalty). Writing
    ``X = U S V^T`` (thin SVD) and ``beta = V theta`` gives ``X beta = (X V) theta`` and
    ``|beta| = |theta|``, so fitting sksurv's CoxPH on the ``n × rank`` matrix ``X V`` solves exactly
    the same problem as on ``X`` — but Newton steps cost ``rank^3`` instead of ``p^3`` (60 × 1,938
    radiomics: seconds instead of minutes). Used only when ``alpha > 0`` and ``p > n``.

    Attributes: ``coef_`` ``(p,)`` on the original features; ``model_`` the fitted sksurv model.
    """

    def __init__(self, alpha: float = 1.0, ties: str = "efron", n_iter: int = 100, tol: float = 1e-9) -> None:
        self.alpha = alpha
        self.ties = ties
        self.n_iter = n_iter
        self.tol = tol

    def fit(self, X, y) -> RidgeCoxPH:
        X = np.asarray(X, dtype=np.float64)
        basis = None
        if self.alpha > 0 and X.shape[1] > X.shape[0]:
            _, s, vt = np.linalg.svd(X, full_matrices=False)
            keep = s > s[0] * max(X.shape) * np.finfo(np.float64).eps
            basis = vt[keep].T  # (p, rank)
        model = CoxPHSurvivalAnalysis(alpha=self.alpha, ties=self.ties, n_iter=self.n_iter, tol=self.tol)
        model.fit(X @ basis if basis is not None else X, y)
        self.model_ = model
        self.coef_ = basis @ model.coef_ if basis is not None else model.coef_
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        """Risk score ``X @ coef_`` (higher = higher hazard), as sksurv's ``predict``."""
        return np.asarray(X, dtype=np.float64) @ self.coef_


def _coxph(params: dict, seed: int, n_min_class: int) -> BaseEstimator:
    # Ridge penalty (alpha > 0): with more features than events an unpenalised Cox fit diverges.
    kw = {"alpha": 1.0, "ties": "efron", "n_iter": 100, **params}
    return RidgeCoxPH(**kw)


def _coxnet(params: dict, seed: int, n_min_class: int) -> BaseEstimator:
    kw = {"l1_ratio": 0.5, "n_alphas": 50, "alpha_min_ratio": 0.01, "max_iter": 100000, **params}
    return CoxnetSurvivalAnalysis(**kw)


def _rsf(params: dict, seed: int, n_min_class: int) -> BaseEstimator:
    kw = {"n_estimators": 300, "min_samples_leaf": 3, "max_features": "sqrt", "n_jobs": 1,
          "random_state": seed, **params}
    return RandomSurvivalForest(**kw)


#: Marker classifiers: ``kind -> factory(params, seed, n_min_class)``.
CLASSIFIERS: dict[str, Callable[..., BaseEstimator]] = {"lr_l1": _lr_l1, "lr_l2": _lr_l2, "rf": _rf, "svm": _svm}
#: Survival models (risk = ``predict``; higher = higher hazard).
SURVIVAL_MODELS: dict[str, Callable[..., BaseEstimator]] = {"coxph": _coxph, "coxnet": _coxnet, "rsf": _rsf}
BASELINES: tuple[str, ...] = (*CLASSIFIERS, *SURVIVAL_MODELS)


def make_estimator(kind: str, params: dict | None = None, seed: int = 0, n_min_class: int = 5) -> BaseEstimator:
    """An unfitted estimator of ``kind`` (one of :data:`BASELINES`) with ``params`` overriding defaults.

    ``n_min_class`` (size of the smaller training class) caps the SVM's calibration folds.
    """
    factories = {**CLASSIFIERS, **SURVIVAL_MODELS}
    if kind not in factories:
        raise ValueError(f"unknown baseline {kind!r}; choose one of {list(BASELINES)}")
    return factories[kind](dict(params or {}), int(seed), int(n_min_class))


def positive_probability(model: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """``P(y = 1)`` from a fitted binary classifier, whatever the order of its ``classes_``."""
    classes = list(model.classes_)
    return model.predict_proba(X)[:, classes.index(1)]
