"""Read a precomputed radiomics feature table (e.g. PyRadiomics batch output) and its clinical table.

Many public glioma cohorts ship features, not images. :func:`load_feature_table` turns such a table
(CSV or parquet, one row per subject, an ID column) plus a clinical table into the same two things
the image pipeline produces: a numeric feature matrix indexed by ``subject_id`` and a clinical
frame in the data-contract columns (``DESIGN.md``), with markers parsed to 1/0/NaN by the same
rules as manifests (:mod:`radfusion.cohort.clinical`).

What is dropped from the features, and reported: PyRadiomics ``diagnostics_*`` columns, its
``Image``/``Mask``/``Label`` settings columns, any other column without a single number (paths,
settings, free text), and any column that is a label (so a label can never leak in as a feature).
IDs present in only one of the two tables are reported (how many, which) and left out of the join.
An ID on several rows, or a row without an ID, stops the run, or with ``skip_invalid`` is logged and
dropped (every row of that ID, from both tables), like any other validation failure.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.cohort.clinical import (
    CLINICAL_COLUMNS,
    MARKERS,
    clinical_frame,
    parse_marker,
    read_delimited,
    sniff_separator,
)
from radfusion.cohort.subject import CohortError

log = logging.getLogger(__name__)

#: Clinical columns returned (``sex``/``timepoint`` are added when the clinical table has them).
CONTRACT_COLUMNS: tuple[str, ...] = ("subject_id", "site", "age", "idh", "mgmt", "codeletion", "grade",
                                     "os_days", "os_event")
#: Columns of PyRadiomics' batch input that it copies into its output: settings, not features.
PYRADIOMICS_SETTINGS_COLUMNS = {"image", "mask", "label", "label_channel"}
UNKNOWN_VALUES = ("", "NA", "unknown", "indeterminate", "not available")
_EVENT_WORDS = {"dead": 1.0, "deceased": 1.0, "died": 1.0, "death": 1.0, "event": 1.0,
                "alive": 0.0, "living": 0.0, "censored": 0.0}
_ROMAN = {"i": 1.0, "ii": 2.0, "iii": 3.0, "iv": 4.0}


def _read_table(path: str | Path, id_column: str, what: str,
                skip_invalid: bool = False) -> tuple[pd.DataFrame, dict[str, str]]:
    """The table indexed by ``subject_id`` and ``{id: reason}`` of the rows dropped by ``skip_invalid``."""
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"{what} table {path} does not exist")
    suffix = "".join(path.suffixes[-2:]).lower()
    sep = ","
    if suffix.endswith((".parquet", ".pq")):
        table = pd.read_parquet(path)
    elif suffix.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
        # Everything as text first: unknown markers are then ours to interpret, not pandas'.
        sep = sniff_separator(path)
        table = read_delimited(path, f"{what} table", dtype=str, keep_default_na=False)
    else:
        raise CohortError(f"{what} table {path}: unsupported format {suffix!r}; use .csv or .parquet")
    if id_column not in table.columns:
        raise CohortError(f"{what} table {path}: no id column {id_column!r} (columns: {list(table.columns)[:10]}"
                          f"{' …' if table.shape[1] > 10 else ''}; read with {sep!r} as separator); "
                          "set data.cohort.id_column")
    ids = table[id_column].astype(str).str.strip()
    invalid: dict[str, str] = {}
    bad = ((ids == "") | table[id_column].isna()).to_numpy()
    if bad.any():
        rows = (np.flatnonzero(bad) + 2).tolist()  # file line numbers (header = line 1)
        msg = f"{what} table {path}: empty {id_column!r} in row(s) {rows[:5]}"
        if not skip_invalid:
            raise CohortError(f"{msg}; or set data.cohort.skip_invalid=true to drop such rows")
        log.error("skipping invalid rows: %s", msg)
        invalid.update({f"<{what} table line {r}>": "no subject id" for r in rows})
    repeated = ids[~bad & ids.duplicated(keep=False)]
    if len(repeated):
        counts = repeated.value_counts()
        msg = (f"{what} table {path}: duplicate {id_column!r} value(s) {sorted(counts.index)[:5]} "
               f"({len(counts)} in all); one row per subject is expected")
        if not skip_invalid:
            raise CohortError(f"{msg}; or set data.cohort.skip_invalid=true to drop every row of them")
        for sid, n in sorted(counts.items()):
            invalid[sid] = f"subject {sid}: {n} rows in {what} table {path} (ambiguous: which is meant?)"
            log.error("skipping invalid subject: %s", invalid[sid])
    keep = ~bad & ~ids.duplicated(keep=False).to_numpy()
    table, ids = table[keep], ids[keep]
    table = table.drop(columns=[id_column])
    if sep == ";":  # a European export: decimal commas ("54,5") in the numbers
        table = table.replace(r"^\s*([+-]?\d*),(\d+(?:[eE][+-]?\d+)?)\s*$", r"\1.\2", regex=True)
    table.index = pd.Index(ids, name="subject_id")
    return table, invalid


def _is_unknown(values: pd.Series, unknown: set[str]) -> pd.Series:
    return values.isna() | values.astype(str).str.strip().str.lower().isin(unknown)


def _numeric(values: pd.Series, unknown: set[str], column: str, path: Path) -> pd.Series | None:
    """Numbers with unknowns as NaN; None when no value is a number (a text column); an error when
    only some values are numbers (a typo in a numeric column should not silently become NaN)."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return values.astype(np.float64)  # parquet keeps dtypes
    missing = _is_unknown(values, unknown)
    try:
        # numpy's string→float is correctly rounded (pandas' fast parser can be 1 ulp off).
        exact = values.where(~missing, "nan").to_numpy(dtype=str).astype(np.float64)
        return pd.Series(exact, index=values.index)
    except ValueError:
        pass
    parsed = pd.to_numeric(values.where(~missing), errors="coerce")
    failed = parsed.isna() & ~missing
    n_given = int((~missing).sum())
    if n_given and int(failed.sum()) == n_given:
        return None
    if failed.any():
        sid = failed.index[failed.to_numpy()][0]
        raise CohortError(f"{path}: column {column!r} is numeric but subject {sid} has {values[sid]!r}; "
                          "fix the value or add it to data.cohort.unknown_values")
    return parsed.astype(np.float64)


def _clean_features(table: pd.DataFrame, unknown: set[str], path: Path, label_sources: set[str]) -> pd.DataFrame:
    dropped: dict[str, list[str]] = {"diagnostics": [], "settings": [], "non_numeric": [], "labels": []}
    keep = {}
    for col in table.columns:
        name = str(col)
        if "diagnostics_" in name:
            dropped["diagnostics"].append(name)
        elif name.lower() in PYRADIOMICS_SETTINGS_COLUMNS:
            dropped["settings"].append(name)
        elif name in label_sources or name.lower() in CLINICAL_COLUMNS:
            dropped["labels"].append(name)
        else:
            values = _numeric(table[col], unknown, name, path)
            if values is None:
                dropped["non_numeric"].append(name)
            else:
                keep[name] = values
    features = pd.DataFrame(keep, index=table.index)
    for why, cols in dropped.items():
        if cols:
            log.info("feature table %s: dropped %d %s column(s), e.g. %s", path, len(cols), why, cols[:3])
    if features.shape[1] == 0:
        raise CohortError(f"feature table {path}: no numeric feature column left after dropping "
                          f"{ {k: len(v) for k, v in dropped.items()} }")
    features.attrs["dropped_columns"] = dropped
    return features


def _parse_event(value, subject_id: str) -> float:
    text = str(value).strip().lower()
    if text in _EVENT_WORDS:
        return _EVENT_WORDS[text]
    try:
        return parse_marker(value, "os_event", subject_id)
    except CohortError:
        raise CohortError(f"subject {subject_id}: os_event has value {value!r}; expected 1/0, dead/alive, "
                          "true/false, or empty for unknown") from None


def _parse_grade(value, subject_id: str) -> float:
    text = re.sub(r"^(who\s*)?(grade\s*)?g?", "", str(value).strip().lower()).strip()
    if text in _ROMAN:
        return _ROMAN[text]
    try:
        return float(text)
    except ValueError:
        raise CohortError(f"subject {subject_id}: grade has value {value!r}; expected 2-4, II-IV or G2-G4") from None


def _clinical(table: pd.DataFrame, label_columns: Mapping[str, str], unknown: set[str], path: Path,
              label_values: Mapping | None = None) -> pd.DataFrame:
    out = pd.DataFrame(index=table.index)
    for name, source in label_columns.items():
        values = table[source]
        missing = _is_unknown(values, unknown)
        ids = table.index
        if name in MARKERS:
            # Parsed by clinical_frame below, which reports every unrecognised value at once.
            out[name] = values.where(~missing).astype(object)
        elif name == "os_event":
            out[name] = [np.nan if m else _parse_event(v, sid) for v, m, sid in zip(values, missing, ids, strict=True)]
        elif name == "grade":
            out[name] = [np.nan if m else _parse_grade(v, sid) for v, m, sid in zip(values, missing, ids, strict=True)]
        elif name in ("age", "os_days"):
            numbers = _numeric(values, unknown, source, path)
            if numbers is None:
                raise CohortError(f"{path}: column {source!r} ({name}) holds no numbers, "
                                  f"e.g. {values[~missing].iloc[0]!r}")
            out[name] = numbers
        else:  # site, sex, timepoint: text
            out[name] = values.where(~missing).astype(object)
    out.insert(0, "subject_id", out.index.to_numpy())
    frame = clinical_frame(out.reset_index(drop=True), str(path), label_values,
                           source_columns={k: v for k, v in label_columns.items() if k in MARKERS})
    bad = frame.index[(frame["os_days"] < 0).to_numpy()]
    if len(bad):
        raise CohortError(f"{path}: negative os_days for subject(s) {list(bad[:5])}")
    zero = frame.index[(frame["os_days"] == 0).to_numpy()]
    if len(zero):
        log.warning("%s: os_days is 0 for %d subject(s), e.g. %s; survival models need times > 0",
                    path, len(zero), list(zero[:3]))
    extra = [c for c in ("sex", "timepoint") if c in label_columns]
    return frame[[*CONTRACT_COLUMNS, *extra]]


def _label_columns(label_columns: Mapping[str, str] | None, available: Iterable[str], path: str) -> dict[str, str]:
    allowed = [c for c in CLINICAL_COLUMNS if c != "subject_id"]
    available = list(available)
    if label_columns is None:
        return {c: c for c in allowed if c in available}
    mapping = dict(label_columns)
    wrong = [k for k in mapping if k not in allowed]
    if wrong:
        raise CohortError(f"label_columns: {wrong} are not data-contract columns; use keys from {allowed}")
    absent = {k: v for k, v in mapping.items() if v not in available}
    if absent:
        raise CohortError(f"{path}: label_columns name column(s) not in the table: {absent} "
                          f"(columns: {available[:10]}{' …' if len(available) > 10 else ''})")
    return mapping


def load_feature_table(
    features: str | Path,
    clinical: str | Path | None = None,
    id_column: str = "subject_id",
    label_columns: Mapping[str, str] | None = None,
    unknown_values: Iterable[str] = UNKNOWN_VALUES,
    label_values: Mapping | None = None,
    skip_invalid: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load precomputed features and join them with a clinical table by subject ID.

    Args:
        features: CSV or parquet, one row per subject, an ID column and one column per feature.
        clinical: CSV or parquet with the same ID column; ``None`` = the labels are columns of the
            feature table itself (they are then removed from the features).
        id_column: name of the ID column in both tables.
        label_columns: contract name → column name, e.g. ``{"idh": "IDH1_status", "os_days": "OS",
            "os_event": "Dead"}``; ``None`` = contract names used as they are (``idh``, ``os_days`` …).
        unknown_values: cell values (case-insensitive, stripped) meaning unknown → NaN; the cohort
            reader's own unknowns (``nan``, ``n/a``, ``none`` …) are always unknown too.
        label_values: extra marker spellings ``{column: {value: 1 | 0 | None}}`` (contract column
            names; see :mod:`radfusion.cohort.clinical`).
        skip_invalid: drop (and log) every row of an ID given twice and rows without an ID,
            instead of stopping; they are listed in ``features.attrs["invalid"]``.

    Returns:
        ``(features, clinical)``, both indexed by ``subject_id`` in the same order (sorted IDs):
        ``features`` float64 ``(n_subjects, n_features)`` (NaN = missing, imputed in-fold later);
        ``clinical`` with columns ``subject_id, site, age, idh, mgmt, codeletion, grade, os_days
        (days), os_event`` (markers 1/0/NaN; sex/timepoint when mapped). ``features.attrs`` holds
        ``dropped_columns`` (by reason), ``unmatched_ids`` (``only_features``, ``only_clinical``) and
        ``invalid`` (``{id: reason}`` of the rows ``skip_invalid`` dropped).

    Raises:
        CohortError: missing file or ID column, duplicate or empty IDs (unless ``skip_invalid``),
            marker values that are neither positive, negative nor unknown (all of them in one error),
            a numeric column with text in it, negative times.
    """
    unknown = {str(v).strip().lower() for v in unknown_values} | {"", "nan", "na", "n/a", "none"}
    fpath = Path(features)
    ftable, invalid = _read_table(fpath, id_column, "feature", skip_invalid)
    if clinical is None:
        ctable, cpath = ftable, fpath
    else:
        cpath = Path(clinical)
        ctable, invalid_c = _read_table(cpath, id_column, "clinical", skip_invalid)
        invalid.update(invalid_c)
        # An id dropped from one table is dropped from both (else it is reported as merely unmatched).
        ftable, ctable = ftable[~ftable.index.isin(invalid)], ctable[~ctable.index.isin(invalid)]
    mapping = _label_columns(label_columns, ctable.columns, str(cpath))
    # A column that is a label in the clinical table is never a feature (label leakage).
    label_sources = set(mapping.values())
    feats = _clean_features(ftable, unknown, fpath, label_sources)
    clin = _clinical(ctable, mapping, unknown, cpath, label_values)

    only_f = sorted(set(feats.index) - set(clin.index))
    only_c = sorted(set(clin.index) - set(feats.index))
    for ids, where, other in ((only_f, f"feature table {fpath}", "clinical"), (only_c, f"clinical table {cpath}",
                                                                              "feature")):
        if ids:
            log.warning("%d subject(s) of the %s have no row in the %s table and are left out, e.g. %s",
                        len(ids), where, other, ids[:5])
    common = sorted(set(feats.index) & set(clin.index))
    if not common:
        raise CohortError(f"no subject ID is in both {fpath} and {cpath} (column {id_column!r}); "
                          f"e.g. {list(feats.index[:3])} vs {list(clin.index[:3])}")
    dropped = feats.attrs["dropped_columns"]
    feats = feats.loc[common]
    feats.attrs = {"dropped_columns": dropped, "unmatched_ids": {"only_features": only_f, "only_clinical": only_c},
                   "invalid": invalid}
    clin = clin.loc[common]
    log.info("feature table: %d subjects × %d features joined with %d clinical columns", *feats.shape, clin.shape[1])
    return feats, clin
