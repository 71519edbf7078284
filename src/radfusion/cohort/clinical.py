"""Clinical values as the data contract reads them: marker spellings, numeric columns, unknowns.

Empty cells are unknown: labels stay NaN and are masked downstream, never guessed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from radfusion.cohort.subject import CohortError

#: Clinical columns of the data contract (all optional except ``subject_id``).
CLINICAL_COLUMNS: tuple[str, ...] = (
    "subject_id", "site", "age", "sex", "idh", "mgmt", "codeletion", "grade",
    "os_days", "os_event", "timepoint",
)

#: Binary marker columns and the spellings that mean 1 / 0. Anything else non-empty is an error.
MARKERS: tuple[str, ...] = ("idh", "mgmt", "codeletion")
_POSITIVE = {"1", "1.0", "true", "yes", "mutant", "mut", "methylated", "codeleted", "positive", "responder"}
_NEGATIVE = {"0", "0.0", "false", "no", "wildtype", "wt", "unmethylated", "intact", "negative",
             "non-responder", "nonresponder"}
#: Optional binary labels parsed like the markers when a cohort has them (e.g. treatment response).
OPTIONAL_BINARY: tuple[str, ...] = ("response",)
_UNKNOWN = {"", "nan", "na", "n/a", "unknown", "indeterminate", "none"}


def parse_marker(value, column: str, subject_id: str) -> float:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    text = str(value).strip().lower()
    if text in _UNKNOWN:
        return np.nan
    if text in _POSITIVE:
        return 1.0
    if text in _NEGATIVE:
        return 0.0
    raise CohortError(
        f"subject {subject_id}: column {column!r} has value {value!r}; expected 0/1 (or "
        f"e.g. mutant/wildtype, methylated/unmethylated), empty for unknown"
    )


def clinical_frame(rows: pd.DataFrame, source: str) -> pd.DataFrame:
    """Normalise a clinical table: string ids, numeric markers/survival, NaN for unknown."""
    if "subject_id" not in rows.columns:
        raise CohortError(f"{source}: no 'subject_id' column (columns: {list(rows.columns)})")
    df = rows.copy()
    df["subject_id"] = df["subject_id"].astype(str).str.strip()
    df["patient_id"] = df["subject_id"]
    dup = df["subject_id"][df["subject_id"].duplicated()].unique()
    if len(dup):
        if "timepoint" not in df.columns or df["timepoint"].isna().any():
            raise CohortError(f"{source}: duplicate subject_id {list(dup)[:5]} (a longitudinal cohort needs a "
                              "timepoint on every row)")
        tp = pd.to_numeric(df["timepoint"], errors="coerce")
        if tp.isna().any() or (tp != tp.round()).any():
            raise CohortError(f"{source}: timepoint must be an integer on every row")
        # One row per scan: '<patient>_tp<k>'; patient_id keeps the subject for subject-level splits.
        df["subject_id"] = df["patient_id"] + "_tp" + tp.astype(int).astype(str)
        twice = df["subject_id"][df["subject_id"].duplicated()].unique()
        if len(twice):
            raise CohortError(f"{source}: subject and timepoint repeated: {list(twice)[:5]}")
    for col in MARKERS:
        if col in df.columns:
            df[col] = [parse_marker(v, col, sid) for v, sid in zip(df[col], df["subject_id"], strict=False)]
        else:
            df[col] = np.nan
    for col in OPTIONAL_BINARY:
        if col in df.columns:
            df[col] = [parse_marker(v, col, sid) for v, sid in zip(df[col], df["subject_id"], strict=False)]
    for col in ("age", "os_days", "os_event", "grade"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
        else:
            df[col] = np.nan
    if "site" not in df.columns:
        df["site"] = "unknown"
    df["site"] = df["site"].fillna("unknown").astype(str)
    return df.set_index("subject_id", drop=False)
