"""In-fold processing of the radiomics table, as scikit-learn estimators.

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
from sklearn.feature_selection import VarianceThreshold
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


class ClipValues(BaseEstimator, TransformerMixin):
    """Clip standardised values to ``±limit`` so one outlier subject cannot dominate an MLP input."""

    def __init__(self, limit: float = 5.0) -> None:
        self.limit = limit

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        return np.clip(X, -self.limit, self.limit)


def make_feature_pipeline(clip: float | None = 5.0) -> Pipeline:
    """Median imputation → drop constant features → z-score → clip.

    ``SimpleImputer`` drops columns that are entirely NaN in the training rows (e.g. a habitat
    that no training subject has); the same columns are dropped from val/test by ``transform``.
    """
    steps = [
        ("impute", SimpleImputer(strategy="median", keep_empty_features=False)),
        ("variance", VarianceThreshold(0.0)),
        ("scale", StandardScaler()),
    ]
    if clip:
        steps.append(("clip", ClipValues(clip)))
    return Pipeline(steps)


def feature_matrix(table: pd.DataFrame, ids: list[str]) -> np.ndarray:
    """Rows of ``table`` for ``ids`` as float64, infinities turned into NaN (then imputed)."""
    X = table.loc[ids].to_numpy(dtype=np.float64)
    X[~np.isfinite(X)] = np.nan
    return X
