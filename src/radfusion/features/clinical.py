"""In-fold processing of clinical covariates (age, sex, KPS, resection, markers ...) for the clinical branch.

:class:`ClinicalTransformer` turns the columns a config names (``model.clinical``) into a float matrix:

- a **numeric** column → median imputation, a ``<col>_missing`` indicator, z-score (mean and sd of the
  observed training values);
- a **categorical** column (object / category / bool dtype, or a numeric one named in ``categorical``,
  e.g. a resection code 1/2/3) → one-hot of the training levels plus a ``<col>=unknown`` column that
  takes missing values and levels unseen in training.

Everything learned (medians, means, sds, levels) comes from the frame passed to :meth:`~ClinicalTransformer.fit`:
the datamodule passes the training subjects only (:func:`fit_clinical`), so nothing is learned from
validation or test subjects. The fitted state is plain data (:meth:`~ClinicalTransformer.to_state` /
:meth:`~ClinicalTransformer.from_state`, JSON-able), so a model bundle stores it without pickle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

#: Columns that are survival targets (refused as covariates when survival is predicted).
SURVIVAL_COLUMNS: tuple[str, ...] = ("os_days", "os_event")
#: More training levels than this in a categorical column is refused (most likely a free-text or id column).
MAX_LEVELS = 20
STATE_VERSION = 1


class ClinicalError(ValueError):
    """A clinical column that cannot be used; the message names the column and the fix."""


def _level(value) -> str | None:
    """A categorical value as the text of its level (None = missing): ``4``, ``4.0`` → ``"4"``."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return format(float(value), "g")
    text = str(value).strip()
    return text or None


def _is_categorical(series: pd.Series) -> bool:
    if isinstance(series.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(series):
        return True
    if pd.api.types.is_numeric_dtype(series):
        return False
    values = series.dropna()  # text that is all numbers ("61", "72.5") is a numeric column read as text
    return values.empty or pd.to_numeric(values, errors="coerce").isna().any()


class ClinicalTransformer(BaseEstimator, TransformerMixin):
    """Impute, encode and scale clinical columns, fitted on training subjects only.

    Args:
        columns: clinical columns to use, in output order (``model.clinical``).
        categorical: numeric columns to one-hot encode instead of scaling (e.g. a resection code);
            text, category and bool columns are categorical anyway.

    Attributes (after ``fit``):
        kinds_: ``{column: "numeric" | "categorical"}``.
        median_, mean_, sd_: per numeric column, from the training rows' observed values.
        levels_: per categorical column, the training levels (sorted text).
        feature_names_out_: names of the output columns (``age``, ``age_missing``, ``sex=F``, ``sex=unknown``).
    """

    def __init__(self, columns: Sequence[str] = (), categorical: Sequence[str] = ()) -> None:
        self.columns = columns
        self.categorical = categorical

    # ------------------------------------------------------------------ fit / transform
    def _check_columns(self, frame: pd.DataFrame) -> list[str]:
        columns = [str(c) for c in self.columns]
        if len(set(columns)) != len(columns):
            raise ClinicalError(f"model.clinical names a column twice: {columns}")
        unknown = sorted(set(map(str, self.categorical)) - set(columns))
        if unknown:
            raise ClinicalError(f"clinical_categorical names {unknown}, which are not in model.clinical {columns}")
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            available = [c for c in frame.columns if c != "subject_id"]
            raise ClinicalError(f"clinical column(s) {missing} not in the cohort's clinical table; available "
                                f"columns: {available}. Fix model.clinical (e.g. model.clinical=[age,sex])")
        return columns

    def fit(self, frame: pd.DataFrame, y=None) -> ClinicalTransformer:
        """Learn medians, means, sds and levels from ``frame`` (the training subjects' rows)."""
        columns = self._check_columns(frame)
        declared = set(map(str, self.categorical))
        self.kinds_, self.median_, self.mean_, self.sd_, self.levels_ = {}, {}, {}, {}, {}
        for col in columns:
            series = frame[col]
            if col in declared or _is_categorical(series):
                levels = sorted({lv for lv in map(_level, series) if lv is not None})
                if len(levels) > MAX_LEVELS:
                    raise ClinicalError(f"clinical column {col!r} has {len(levels)} distinct values in the training "
                                        f"split (e.g. {levels[:5]}); a categorical column may have at most "
                                        f"{MAX_LEVELS}. If it is a number, clean its non-numeric cells")
                self.kinds_[col], self.levels_[col] = "categorical", levels
                continue
            values = pd.to_numeric(series, errors="coerce").to_numpy(np.float64)
            observed = values[np.isfinite(values)]
            if observed.size == 0:
                raise ClinicalError(f"clinical column {col!r} has no value in the training split "
                                    f"({len(values)} subjects): it cannot be imputed; drop it from model.clinical")
            sd = float(np.std(observed))
            self.kinds_[col] = "numeric"
            self.median_[col], self.mean_[col] = float(np.median(observed)), float(np.mean(observed))
            self.sd_[col] = sd if sd > 1e-12 else 1.0  # a constant column becomes 0, not inf
        self.columns_ = columns
        self.feature_names_out_ = self._names()
        return self

    def _names(self) -> list[str]:
        names: list[str] = []
        for col in self.columns_:
            if self.kinds_[col] == "numeric":
                names += [col, f"{col}_missing"]
            else:
                names += [*(f"{col}={lv}" for lv in self.levels_[col]), f"{col}=unknown"]
        return names

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """``(n_rows, len(feature_names_out_))`` float64, in the row order of ``frame``."""
        if not hasattr(self, "columns_"):
            raise ClinicalError("ClinicalTransformer is not fitted: call fit(training rows) first")
        self._check_columns(frame)
        blocks = []
        for col in self.columns_:
            series = frame[col]
            if self.kinds_[col] == "numeric":
                values = pd.to_numeric(series, errors="coerce").to_numpy(np.float64)
                missing = ~np.isfinite(values)
                filled = np.where(missing, self.median_[col], values)
                blocks += [(filled - self.mean_[col]) / self.sd_[col], missing.astype(np.float64)]
            else:
                index = {lv: i for i, lv in enumerate(self.levels_[col])}
                codes = np.array([index.get(lv, len(index)) if lv is not None else len(index)
                                  for lv in map(_level, series)], dtype=int)
                onehot = np.zeros((len(series), len(index) + 1))
                onehot[np.arange(len(series)), codes] = 1.0
                blocks += list(onehot.T)
        if not blocks:
            return np.zeros((len(frame), 0))
        return np.column_stack(blocks).astype(np.float64)

    # ------------------------------------------------------------------ plain-data state
    def to_state(self) -> dict:
        """The fitted transformer as JSON-able plain data (lists, floats, strings)."""
        if not hasattr(self, "columns_"):
            raise ClinicalError("ClinicalTransformer is not fitted: nothing to save")
        return {"version": STATE_VERSION, "columns": list(self.columns_),
                "categorical": [str(c) for c in self.categorical], "kinds": dict(self.kinds_),
                "median": dict(self.median_), "mean": dict(self.mean_), "sd": dict(self.sd_),
                "levels": {k: list(v) for k, v in self.levels_.items()},
                "feature_names": list(self.feature_names_out_)}

    @classmethod
    def from_state(cls, state: Mapping) -> ClinicalTransformer:
        """The transformer :meth:`to_state` saved (no refitting)."""
        if int(state.get("version", -1)) != STATE_VERSION:
            raise ClinicalError(f"clinical state version {state.get('version')!r} is not {STATE_VERSION}; "
                                "re-export the model bundle with this radfusion")
        self = cls(columns=list(state["columns"]), categorical=list(state.get("categorical", [])))
        self.columns_ = [str(c) for c in state["columns"]]
        self.kinds_ = {str(k): str(v) for k, v in state["kinds"].items()}
        self.median_ = {str(k): float(v) for k, v in state["median"].items()}
        self.mean_ = {str(k): float(v) for k, v in state["mean"].items()}
        self.sd_ = {str(k): float(v) for k, v in state["sd"].items()}
        self.levels_ = {str(k): [str(x) for x in v] for k, v in state["levels"].items()}
        self.feature_names_out_ = self._names()
        if self.feature_names_out_ != list(state["feature_names"]):
            raise ClinicalError("clinical state is inconsistent: its feature names do not follow from its levels")
        return self


def check_not_targets(columns: Sequence[str], targets: Sequence[str], survival: bool) -> None:
    """Refuse a covariate that is also what the model predicts (MGMT as input when predicting MGMT)."""
    outcome = {*map(str, targets), *(SURVIVAL_COLUMNS if survival else ())}
    clash = [c for c in columns if c in outcome]
    if clash:
        raise ClinicalError(f"clinical column(s) {clash} are also prediction targets (data.targets={list(targets)}, "
                            f"data.survival={survival}): a model must not see its label as an input. Remove them "
                            "from model.clinical")


def fit_clinical(clinical: pd.DataFrame, splits: Mapping[str, Sequence[str]], columns: Sequence[str],
                 categorical: Sequence[str] = (), targets: Sequence[str] = (),
                 survival: bool = False) -> tuple[ClinicalTransformer, dict[str, np.ndarray]]:
    """Fit a :class:`ClinicalTransformer` on ``clinical.loc[splits["train"]]`` and transform every split.

    ``clinical`` is the cohort's clinical table (index ``subject_id``). Returns the fitted transformer
    and ``{split: (n_split, n_out) float64}`` in the order of ``splits[split]``.
    """
    check_not_targets(columns, targets, survival)
    transformer = ClinicalTransformer(list(columns), list(categorical)).fit(clinical.loc[list(splits["train"])])
    return transformer, {s: transformer.transform(clinical.loc[list(ids)]) for s, ids in splits.items()}
