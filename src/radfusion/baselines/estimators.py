"""The estimators behind the baselines, and how a config builds one.

A baseline config (``configs/model/baseline_*.yaml``) names its estimator as a ``_target_`` block,
``estimator: {_target_: sklearn.ensemble.RandomForestClassifier, n_estimators: 500, ...}``, so a new
baseline is a YAML: any scikit-learn classifier (marker baselines) or scikit-survival model (survival
baselines; risk = ``predict``) works. :func:`build_estimator` instantiates it. Two estimators here fill
gaps: :class:`CalibratedSVC` (an SVM with Platt-scaled probabilities) and :class:`RidgeCoxPH` (ridge
Cox fitted in the row space of X when features outnumber subjects).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, is_classifier
from sklearn.calibration import CalibratedClassifierCV
from sklearn.svm import SVC
from sksurv.linear_model import CoxPHSurvivalAnalysis

#: Keys of an estimator block that are Hydra's, not the estimator's.
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})


def build_estimator(spec: Mapping, **params) -> BaseEstimator:
    """An unfitted estimator from a ``{_target_: ..., **kwargs}`` block; ``params`` are then set with
    scikit-learn's ``set_params`` (so grid keys may address nested estimators, ``step__param``)."""
    from hydra.utils import instantiate

    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise ValueError(f"an estimator block needs a _target_ (e.g. sklearn.linear_model.LogisticRegression), "
                         f"got {spec!r}")
    model = instantiate(dict(spec), _convert_="all")
    if isinstance(model, functools.partial):  # `_partial_: true` blocks: nothing is left to bind
        model = model()
    if not hasattr(model, "fit") or not hasattr(model, "set_params"):
        raise ValueError(f"{spec['_target_']} is not a scikit-learn style estimator (fit / set_params)")
    return model.set_params(**params) if params else model


def estimator_params(spec: Mapping) -> dict:
    """The estimator keyword arguments of a block (its Hydra keys left out)."""
    return {k: v for k, v in spec.items() if k not in HYDRA_KEYS}


def predicts_markers(model: BaseEstimator) -> bool:
    """True for a classifier (a marker baseline), False for a survival model."""
    return bool(is_classifier(model))


class CalibratedSVC(ClassifierMixin, BaseEstimator):
    """An SVC whose probabilities come from Platt scaling on out-of-fold decision values.

    ``SVC(probability=True)`` is deprecated in scikit-learn 1.9; its documented replacement is
    ``CalibratedClassifierCV(SVC(...), method="sigmoid", cv=k, ensemble=False)``: the SVC is refitted
    on all training rows and the sigmoid is fitted on out-of-fold decision values, so probabilities are
    not in-sample. ``k`` is ``calibration_cv`` capped by the smaller training class (at least 2), decided
    at ``fit`` from the labels it is given.

    Attributes: ``model_`` the fitted ``CalibratedClassifierCV``; ``classes_``; ``calibration_cv_`` the k used.
    """

    def __init__(self, kernel: str = "rbf", C: float = 1.0, gamma: str | float = "scale", degree: int = 3,
                 coef0: float = 0.0, class_weight: str | dict | None = None, random_state: int | None = None,
                 calibration_cv: int = 5) -> None:
        self.kernel = kernel
        self.C = C
        self.gamma = gamma
        self.degree = degree
        self.coef0 = coef0
        self.class_weight = class_weight
        self.random_state = random_state
        self.calibration_cv = calibration_cv

    def fit(self, X, y) -> CalibratedSVC:
        _, counts = np.unique(np.asarray(y), return_counts=True)
        self.calibration_cv_ = max(2, min(int(self.calibration_cv), int(counts.min())))
        svc = SVC(kernel=self.kernel, C=self.C, gamma=self.gamma, degree=self.degree, coef0=self.coef0,
                  class_weight=self.class_weight, random_state=self.random_state)
        self.model_ = CalibratedClassifierCV(svc, method="sigmoid", cv=self.calibration_cv_, ensemble=False)
        self.model_.fit(X, y)
        self.classes_ = self.model_.classes_
        self.n_features_in_ = self.model_.n_features_in_
        return self

    def predict_proba(self, X) -> np.ndarray:
        return self.model_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        return self.model_.predict(X)


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


def positive_probability(model: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """``P(y = 1)`` from a fitted binary classifier, whatever the order of its ``classes_``."""
    classes = list(model.classes_)
    return model.predict_proba(X)[:, classes.index(1)]
