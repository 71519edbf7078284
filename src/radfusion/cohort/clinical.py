"""Clinical values as the data contract reads them: marker vocabularies, numeric columns, unknowns.

Empty cells are unknown: labels stay NaN and are masked downstream, never guessed.

Marker values are matched case- and whitespace-insensitively (``" IDH1  p.R132H"`` is
``idh1 p.r132h``) against a vocabulary *per column* (README "Marker vocabularies"): ``negative``
means IDH-wildtype in ``idh``, ``M``/``U`` mean something only in ``mgmt``, and a word of another
column (``methylated`` in ``idh``) is refused, since it most likely means a column mix-up. A
user mapping (``data.cohort.label_values={codeletion: {relative co-deletion: 1}}``) adds or
overrides spellings. Every unrecognised value of every column is reported in one error, with the
mapping to paste; nothing is guessed.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.cohort.subject import CohortError

log = logging.getLogger(__name__)

#: Clinical columns of the data contract (all optional except ``subject_id``).
CLINICAL_COLUMNS: tuple[str, ...] = (
    "subject_id", "site", "age", "sex", "idh", "mgmt", "codeletion", "grade",
    "os_days", "os_event", "timepoint",
)

#: Binary marker columns (1 / 0 / NaN).
MARKERS: tuple[str, ...] = ("idh", "mgmt", "codeletion")
#: Optional binary labels parsed like the markers when a cohort has them (e.g. treatment response).
OPTIONAL_BINARY: tuple[str, ...] = ("response",)
#: What 0 and 1 mean per binary column (for messages and the docs).
CLASS_NAMES: dict[str, tuple[str, str]] = {
    "idh": ("wildtype", "mutant"), "mgmt": ("unmethylated", "methylated"),
    "codeletion": ("non-codeleted", "codeleted"), "response": ("non-responder", "responder"),
}

#: Spellings that mean 1 / 0 in every binary column.
GENERIC_VALUES: dict[str, float] = {
    **dict.fromkeys(("1", "1.0", "true", "yes", "positive"), 1.0),
    **dict.fromkeys(("0", "0.0", "false", "no", "negative"), 0.0),
}
#: Column-specific spellings (after lower-casing and collapsing whitespace) → 1 / 0.
COLUMN_VALUES: dict[str, dict[str, float]] = {
    "idh": {
        **dict.fromkeys(("mutant", "mutated", "mutated (nos)", "mutation", "mut", "idh mutant", "idh-mutant",
                         "idh mutated", "idh1 mutant", "idh1 mutated", "idh2 mutant", "idh2 mutated"), 1.0),
        **dict.fromkeys(("wildtype", "wild-type", "wild type", "wt", "idh wildtype", "idh-wildtype",
                         "idh wild-type", "idh-wt"), 0.0),
    },
    "codeletion": {
        **dict.fromkeys(("codeleted", "co-deleted", "codeletion", "co-deletion", "1p/19q codeleted",
                         "1p/19q co-deleted", "1p/19q codeletion", "1p/19q co-deletion", "1p/19q deleted"), 1.0),
        **dict.fromkeys(("intact", "non-codeleted", "non-co-deleted", "not codeleted", "no deletion",
                         "no codeletion", "no co-deletion", "1p/19q intact", "1p/19q non-codeleted"), 0.0),
    },
    "mgmt": {
        **dict.fromkeys(("methylated", "mgmt methylated", "mgmt promoter methylated", "m"), 1.0),
        **dict.fromkeys(("unmethylated", "un-methylated", "not methylated", "non-methylated", "mgmt unmethylated",
                         "mgmt promoter unmethylated", "u"), 0.0),
    },
    "response": {
        **dict.fromkeys(("responder",), 1.0),
        **dict.fromkeys(("non-responder", "nonresponder", "non responder"), 0.0),
    },
}
#: IDH hotspot variants as pathology reports write them: ``IDH1 R132H``, ``IDH1 p.R132C``,
#: ``IDH2 R172K mutant`` … → mutant. Anchored: ``IDH1 R132H negative`` (IHC) is *not* matched.
IDH_VARIANT = re.compile(r"^idh[12][ -]?(p\.)?r(132|140|172)[a-z]( mutant| mutated| mutation| positive)?$")
#: Spellings that mean unknown (→ NaN, masked) in every column.
UNKNOWN_VALUES: frozenset[str] = frozenset((
    "", "nan", "na", "n/a", "<na>", "none", "null", "unknown", "indeterminate", "not assessed",
    "not available", "not tested", "nos", "-", "?",
))
#: Values deliberately left unrecognised (they need a decision, recorded with label_values), and why.
AMBIGUOUS_VALUES: dict[str, str] = {
    "relative co-deletion": "not codeleted by default: WHO CNS5 requires whole-arm 1p/19q codeletion",
    "relative codeletion": "not codeleted by default: WHO CNS5 requires whole-arm 1p/19q codeletion",
    "partial deletion": "a partial 1p or 19q loss is not a whole-arm codeletion",
    "1p deleted": "a single-arm loss is not a 1p/19q codeletion",
    "19q deleted": "a single-arm loss is not a 1p/19q codeletion",
    "idh1 r132h negative": "R132H immunohistochemistry misses non-canonical IDH mutations: not wildtype by default",
    "partially methylated": "a methylation grey zone: decide with your assay's cut-off",
    "grey zone": "a methylation grey zone: decide with your assay's cut-off",
    "gray zone": "a methylation grey zone: decide with your assay's cut-off",
}


def normalise_value(value) -> str | None:
    """A cell as the vocabularies see it: lower case, whitespace collapsed; None for a missing cell."""
    if value is None or (np.ndim(value) == 0 and not isinstance(value, str) and pd.isna(value)):
        return None
    return " ".join(str(value).split()).lower()


def check_label_values(label_values: Mapping | None) -> dict[str, dict[str, float]]:
    """``data.cohort.label_values`` as ``{column: {normalised value: 1.0 | 0.0 | NaN}}``, checked."""
    if not label_values:
        return {}
    allowed = (*MARKERS, *OPTIONAL_BINARY)
    wrong = [k for k in label_values if k not in allowed]
    if wrong:
        raise CohortError(f"data.cohort.label_values: {wrong} are not marker columns; use {list(allowed)} "
                          "(the contract names, also for a feature table with label_columns)")
    out: dict[str, dict[str, float]] = {}
    for column, mapping in label_values.items():
        if not isinstance(mapping, Mapping):
            raise CohortError(f"data.cohort.label_values.{column} must map values to 1, 0 or null, got {mapping!r}")
        out[column] = {}
        for value, code in mapping.items():
            if code is not None and (isinstance(code, str) or code not in (0, 1)):
                raise CohortError(f"data.cohort.label_values.{column}: {value!r} maps to {code!r}; use 1, 0 or "
                                  "null (unknown)")
            out[column][normalise_value(value) or ""] = np.nan if code is None else float(code)
    return out


def vocabulary(column: str, label_values: Mapping | None = None) -> dict[str, float]:
    """Every recognised spelling of ``column`` (normalised) → 1.0 / 0.0 / NaN; user mapping last."""
    vocab = {**dict.fromkeys(UNKNOWN_VALUES, np.nan), **GENERIC_VALUES, **COLUMN_VALUES.get(column, {})}
    vocab.update(check_label_values(label_values).get(column, {}))
    return vocab


def _lookup(text: str, column: str, vocab: Mapping[str, float]) -> float | None:
    if text in vocab:
        return vocab[text]
    if column == "idh" and IDH_VARIANT.match(text):
        return 1.0
    return None


def parse_marker(value, column: str, subject_id: str, label_values: Mapping | None = None) -> float:
    """One binary cell → 1.0 / 0.0 / NaN (unknown); :class:`CohortError` for an unrecognised value."""
    text = normalise_value(value)
    if text is None:
        return np.nan
    parsed = _lookup(text, column, vocabulary(column, label_values))
    if parsed is None:
        raise CohortError(f"subject {subject_id}: column {column!r} has value {value!r}; expected 0/1 (or "
                          "e.g. mutant/wildtype, methylated/unmethylated), empty for unknown, or a "
                          "data.cohort.label_values mapping")
    return parsed


def _hint(text: str, column: str) -> str:
    if text in AMBIGUOUS_VALUES:
        return AMBIGUOUS_VALUES[text]
    others = [c for c, words in COLUMN_VALUES.items() if c != column and text in words]
    if others:
        return f"a {others[0]} spelling in the {column} column: is this the right column?"
    return ""


def _hydra_key(text: str) -> str | None:
    """``text`` as a Hydra override dict key (special characters escaped), None if it cannot be one."""
    if not re.fullmatch(r"[A-Za-z0-9_\-/\\+.$%*@?| ()\[\]{}:=,]+", text):
        return None
    return re.sub(r"([()\[\]{}:=,\\])", r"\\\1", text)


def _unrecognised_error(source: str, problems: Mapping[str, Mapping[str, list[str]]], shown: Mapping[str, str],
                        source_columns: Mapping[str, str]) -> CohortError:
    """One error for all unrecognised values: ``problems[column][normalised value] = subject ids``."""
    n_values = sum(len(v) for v in problems.values())
    n_subjects = len({s for v in problems.values() for ids in v.values() for s in ids})
    lines = [f"{source}: {n_values} marker value(s) not recognised in column(s) {', '.join(problems)} "
             f"({n_subjects} subject(s)); nothing was guessed. Map each to 1, 0 or null (unknown) with "
             "data.cohort.label_values:"]
    keys: dict[str, list[str]] = {}
    unsafe = []
    for column, values in problems.items():
        src = source_columns.get(column, column)
        name = f"column {src!r}" + (f" ({column})" if src != column else "")
        for text, ids in values.items():
            hint = _hint(text, column)
            more = f", {len(ids) - 3} more" if len(ids) > 3 else ""
            lines.append(f"  {name}: {shown[text]!r} in {len(ids)} subject(s) ({', '.join(ids[:3])}{more})"
                         + (f" - {hint}" if hint else ""))
            key = _hydra_key(text)
            if key is None:
                unsafe.append(text)
            else:
                keys.setdefault(column, []).append(f"{key}: null")
    override = ", ".join(f"{c}: {{{', '.join(k)}}}" for c, k in keys.items())
    lines.append(f"Add this override, then replace each null by 1 or 0 where the value means so "
                 f"({_meanings(problems)}; null = unknown, masked):")
    lines.append(f"  'data.cohort.label_values={{{override}}}'")
    lines.append("  (extract.yaml / segment.yaml: cohort.label_values=...)")
    if unsafe:
        lines.append(f"  values {unsafe} cannot be written on the command line: put them under label_values: in "
                     "your configs/cohort/*.yaml (quoted YAML keys)")
    lines.append("Recognised spellings: README.md, 'Marker vocabularies'.")
    return CohortError("\n".join(lines))


def _meanings(problems: Mapping) -> str:
    return "; ".join(f"{c}: 1 = {CLASS_NAMES[c][1]}, 0 = {CLASS_NAMES[c][0]}" for c in problems if c in CLASS_NAMES)


def parse_binary_columns(df: pd.DataFrame, columns: Sequence[str], source: str, label_values: Mapping | None = None,
                         source_columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    """``df`` with each of ``columns`` present parsed to 1.0 / 0.0 / NaN (in place and returned).

    Every unrecognised value of every column is collected first and reported in one
    :class:`CohortError` (per column: the values, how many subjects, a few ids, the mapping to add).
    ``source_columns`` names the user's column per contract column (feature tables).
    """
    check_label_values(label_values)  # a bad mapping is reported even when no column needs it
    problems: dict[str, dict[str, list[str]]] = {}
    shown: dict[str, str] = {}  # normalised value -> its first spelling in the table
    for col in columns:
        if col not in df.columns:
            continue
        vocab = vocabulary(col, label_values)
        parsed = []
        for value, sid in zip(df[col], df["subject_id"], strict=True):
            text = normalise_value(value)
            code = np.nan if text is None else _lookup(text, col, vocab)
            if code is None:
                problems.setdefault(col, {}).setdefault(text, []).append(str(sid))
                shown.setdefault(text, " ".join(str(value).split()))
                code = np.nan
            parsed.append(code)
        df[col] = np.asarray(parsed, dtype=np.float64)
    if problems:
        raise _unrecognised_error(source, problems, shown, source_columns or {})
    return df


def _header_line(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as f:
        for line in f:
            if line.strip():
                return line.rstrip("\r\n")
    return ""


def sniff_separator(path: str | Path) -> str:
    """The column separator of a delimited text file: ``,``, ``;`` or tab, whichever splits the
    header line into the most columns (``,`` on a tie). Quoted fields are respected."""
    line = _header_line(Path(path))
    counts = {sep: len(next(csv.reader([line], delimiter=sep), [])) for sep in (",", ";", "\t")}
    best = max(counts.values())
    return "," if counts[","] == best else max(counts, key=counts.get)


def read_delimited(path: str | Path, what: str, **read_csv_kwargs) -> pd.DataFrame:
    """``pd.read_csv`` of ``path`` with its separator sniffed (logged when it is not ``,``).

    A ``;`` file (a European spreadsheet export) is read with ``,`` as decimal mark in the columns
    pandas parses as numbers; ``54.5`` still reads as 54.5 where the file mixes both.
    """
    sep = sniff_separator(path)
    if sep != ",":
        log.info("%s %s: read with %r as the column separator", what, path, sep)
        read_csv_kwargs.setdefault("sep", sep)
        if sep == ";" and read_csv_kwargs.get("dtype") is not str:
            read_csv_kwargs.setdefault("decimal", ",")
    return pd.read_csv(path, **read_csv_kwargs)


def separator_hint(path: str | Path, columns: Sequence[str]) -> str:
    """Why expected columns may be missing: the separator the file was read with, or (one column whose
    name holds a separator) that the header could not be split."""
    if len(columns) == 1:
        for sep, name in ((";", "';'"), ("\t", "tab"), (",", "','"), ("|", "'|'")):
            if sep in str(columns[0]):
                return (f"; its header is one column {str(columns[0])[:60]!r}: this file uses {name} as separator "
                        "(',', ';' and tab are read: check the quoting, or save it with ',')")
    sep = sniff_separator(path)
    return f" (read with {sep!r} as separator)" if sep != "," else ""


def clinical_frame(rows: pd.DataFrame, source: str, label_values: Mapping | None = None,
                   source_columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Normalise a clinical table: string ids, numeric markers/survival, NaN for unknown.

    A ``subject_id`` on several rows is a longitudinal cohort when every row has an integer
    ``timepoint`` (ids become ``<patient>_tp<k>``, ``patient_id`` keeps the patient). Otherwise the
    repeated ids (and a patient's timepoint given twice) are kept as they are: which row is meant
    is ambiguous, and :func:`radfusion.cohort.validate.validate_cohort` refuses them (or drops every
    row of such an id with ``skip_invalid``).
    """
    if "subject_id" not in rows.columns:
        raise CohortError(f"{source}: no 'subject_id' column (columns: {list(rows.columns)})"
                          f"{separator_hint(source, list(rows.columns)) if Path(source).is_file() else ''}")
    df = rows.copy()
    df["subject_id"] = df["subject_id"].astype(str).str.strip()
    df["patient_id"] = df["subject_id"]
    longitudinal = "timepoint" in df.columns and df["timepoint"].notna().any()
    if df["subject_id"].duplicated().any() and longitudinal:
        if df["timepoint"].isna().any():
            raise CohortError(f"{source}: duplicate subject_id with timepoint missing on some rows (a longitudinal "
                              "cohort needs a timepoint on every row)")
        tp = pd.to_numeric(df["timepoint"], errors="coerce")
        if tp.isna().any() or (tp != tp.round()).any():
            raise CohortError(f"{source}: timepoint must be an integer on every row")
        # One row per scan: '<patient>_tp<k>'; patient_id keeps the subject for subject-level splits.
        df["subject_id"] = df["patient_id"] + "_tp" + tp.astype(int).astype(str)
    dup = df["subject_id"][df["subject_id"].duplicated()].unique()
    if len(dup):
        log.warning("%s: subject_id %s on several rows (subject and timepoint repeated, or no timepoint); "
                    "validation refuses them (skip_invalid drops every row of them)", source, list(dup)[:5])
    parse_binary_columns(df, (*MARKERS, *OPTIONAL_BINARY), source, label_values, source_columns)
    for col in MARKERS:
        if col not in df.columns:
            df[col] = np.nan
    for col in ("age", "os_days", "os_event", "grade"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
        else:
            df[col] = np.nan
    if "site" not in df.columns:
        df["site"] = "unknown"
    df["site"] = df["site"].fillna("unknown").astype(str)
    return df.set_index("subject_id", drop=False)
