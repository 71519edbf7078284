"""Find, read and check run folders, and pool their predictions.

A run folder holds ``predictions.csv`` (one row per subject × split × fold × repeat), ``metrics.json``
and ``config_resolved.yaml`` (see ``docs/evaluation.md``). Evaluation never loads a model.

Vocabulary used throughout ``radfusion.evaluation``:

- *model*: one fitted model = one ``(run, repeat, fold)``; it has its own train and test rows.
- *replicate*: one ``(run, repeat)``; its folds' test rows are concatenated (cross-validation), so
  each subject is predicted once per replicate. Per-replicate metrics give the mean ± sd.
- *group*: the runs compared as one entry of the report (by default one experiment, e.g. all seeds
  of ``idh_hybrid``). Pooled predictions average a subject's test predictions over the group's
  replicates.
"""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from radfusion.provenance import read_manifest

log = logging.getLogger(__name__)

SPLIT_VALUES = ("train", "val", "test", "external")
#: Suffix of the experiment name of a ``predict.py`` run (a model applied to another cohort), so that
#: "internal test split vs external cohort" are two groups of one report.
EXTERNAL_SUFFIX = "@external"
SURVIVAL_COLUMNS = ("risk", "os_days", "os_event")


class RunError(ValueError):
    """A run folder that cannot be evaluated; the message names the file, column and subject."""


@dataclass
class Run:
    """One run folder, read and checked.

    ``predictions`` has the contract columns plus ``repeat`` (0 when absent) and ``run`` (the
    folder, as text); ``markers`` are the targets with both ``prob_<m>`` and ``label_<m>``.
    """

    path: Path
    experiment: str
    mode: str
    seed: int | None
    meta: dict
    config: dict
    predictions: pd.DataFrame
    markers: list[str] = field(default_factory=list)
    has_survival: bool = False
    manifest: dict = field(default_factory=dict)  # manifest.json (radfusion.provenance); {} without one


def find_runs(patterns: list[str] | str) -> list[Path]:
    """Run folders (holding predictions.csv) from folders, globs or multirun folders."""
    if isinstance(patterns, str):
        patterns = [patterns]
    runs: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(pattern))) or [pattern]
        for m in map(Path, matches):
            if (m / "predictions.csv").is_file():
                runs.append(m)
            elif m.is_dir():
                runs += sorted(p.parent for p in m.rglob("predictions.csv"))
            else:
                raise FileNotFoundError(f"no run folder matches {pattern!r}")
    if not runs:
        raise FileNotFoundError(f"no predictions.csv under {patterns}")
    return list(dict.fromkeys(runs))


def run_info(run: Path) -> dict:
    """Experiment name, mode and seed from the run's metrics.json (falls back to the folder name)."""
    meta = _read_json(run / "metrics.json")
    name = meta.get("experiment")
    if not name:
        # runs/<experiment>/<time>/ or, in a multirun, runs/multirun/<time>/<n>_<experiment>/
        head, _, tail = run.name.partition("_")
        name = tail if head.isdigit() and tail else run.parent.name
    return {"experiment": label_by_targets(str(name), meta), "mode": meta.get("mode", "?"), "seed": meta.get("seed")}


TARGET_PREFIXES = {"idh": "idh", "mgmt": "mgmt", "codeletion": "codeletion", "survival": "os", "os": "os"}


def label_by_targets(name: str, meta: dict) -> str:
    """The experiment name, its leading target word replaced by the targets the run actually predicted
    (``metrics.json`` ``targets``/``survival``): ``idh_baseline_lr`` run with ``data.targets=[mgmt]`` is
    ``mgmt_baseline_lr (experiment idh_baseline_lr)``. Names without a target word stay as they are."""
    targets = [str(t) for t in meta.get("targets") or []] + (["os"] if meta.get("survival") else [])
    head, _, rest = name.partition("_")
    if not targets or head not in TARGET_PREFIXES or TARGET_PREFIXES[head] in targets:
        return name
    word = "survival" if targets == ["os"] else "+".join(targets)
    return f"{word}_{rest} (experiment {name})" if rest else f"{word} (experiment {name})"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunError(f"{path}: not valid JSON ({err})") from err


def _read_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RunError(f"{path}: not valid YAML ({err})") from err


def _bad_rows(pred: pd.DataFrame, mask: pd.Series, n_show: int = 3) -> str:
    ids = pred.loc[mask, "subject_id"].astype(str).tolist()
    more = f" (+{len(ids) - n_show} more)" if len(ids) > n_show else ""
    return ", ".join(ids[:n_show]) + more


def _numeric(pred: pd.DataFrame, col: str, path: Path) -> pd.Series:
    values = pd.to_numeric(pred[col], errors="coerce")
    bad = values.isna() & pred[col].notna()
    if bad.any():
        raise RunError(f"{path}: column {col!r} has non-numeric values "
                       f"{pred.loc[bad, col].astype(str).unique()[:3].tolist()} (subjects {_bad_rows(pred, bad)})")
    return values.astype(float)


def check_predictions(pred: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Validate a predictions table against the contract; return it with typed columns.

    Raises :class:`RunError` naming the file, the column, the bad values and the subjects.
    """
    for col in ("subject_id", "split"):
        if col not in pred.columns:
            raise RunError(f"{path}: missing column {col!r} (columns: {list(pred.columns)})")
    pred = pred.copy()
    pred["subject_id"] = pred["subject_id"].astype(str)
    bad = ~pred["split"].isin(SPLIT_VALUES)
    if bad.any():
        raise RunError(f"{path}: column 'split' has values {sorted(pred.loc[bad, 'split'].astype(str).unique())} "
                       f"outside {SPLIT_VALUES} (subjects {_bad_rows(pred, bad)})")
    for col in ("fold", "repeat"):
        pred[col] = _numeric(pred, col, path).fillna(0).astype(int) if col in pred.columns else 0
    dup = pred.duplicated(["subject_id", "split", "fold", "repeat"], keep=False)
    if dup.any():
        raise RunError(f"{path}: duplicate rows for (subject_id, split, fold, repeat): subjects {_bad_rows(pred, dup)}")
    markers = [c.removeprefix("prob_") for c in pred.columns if c.startswith("prob_")]
    for m in markers:
        if f"label_{m}" not in pred.columns:
            raise RunError(f"{path}: column 'prob_{m}' has no matching 'label_{m}'")
        prob, label = _numeric(pred, f"prob_{m}", path), _numeric(pred, f"label_{m}", path)
        out_of_range = (prob < 0) | (prob > 1)
        if out_of_range.any():
            raise RunError(f"{path}: column 'prob_{m}' has values outside [0, 1] "
                           f"(subjects {_bad_rows(pred, out_of_range)})")
        not_binary = label.notna() & ~label.isin([0.0, 1.0])
        if not_binary.any():
            raise RunError(f"{path}: column 'label_{m}' has values {sorted(label[not_binary].unique())[:3]} "
                           f"that are not 0/1/empty (subjects {_bad_rows(pred, not_binary)})")
        pred[f"prob_{m}"], pred[f"label_{m}"] = prob, label
    present = [c for c in SURVIVAL_COLUMNS if c in pred.columns]
    if present and len(present) < len(SURVIVAL_COLUMNS):
        missing = sorted(set(SURVIVAL_COLUMNS) - set(present))
        raise RunError(f"{path}: survival columns incomplete: has {present}, missing {missing}")
    if present:
        for col in SURVIVAL_COLUMNS:
            pred[col] = _numeric(pred, col, path)
        bad = pred["os_days"].notna() & (pred["os_days"] < 0)
        if bad.any():
            raise RunError(f"{path}: column 'os_days' has negative times (subjects {_bad_rows(pred, bad)})")
        bad = pred["os_event"].notna() & ~pred["os_event"].isin([0.0, 1.0])
        if bad.any():
            raise RunError(f"{path}: column 'os_event' must be 1 (death), 0 (censored) or empty "
                           f"(subjects {_bad_rows(pred, bad)})")
    return pred


def load_run(path: Path | str) -> Run:
    """Read and check one run folder (predictions.csv required; metrics.json, config optional)."""
    path = Path(path)
    csv = path / "predictions.csv"
    try:
        pred = pd.read_csv(csv, dtype={"subject_id": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise RunError(f"{csv}: cannot read ({err})") from err
    pred = check_predictions(pred, csv)
    info = run_info(path)
    meta = _read_json(path / "metrics.json")
    config = _read_config(path / "config_resolved.yaml") or _read_config(path / ".hydra" / "config.yaml")
    pred["run"] = str(path)
    experiment = str(info["experiment"])
    if meta.get("validation") == "external" or (len(pred) and (pred["split"] == "external").all()):
        # predict.py's subjects are the external test set of the model: evaluated as its test rows,
        # except those it was fitted or selected on (predict.py marks them seen_in_training)
        if "seen_in_training" in pred.columns:
            pred = pred[~pred["seen_in_training"].astype(bool)].drop(columns="seen_in_training").copy()
            if pred.empty:
                raise RunError(f"{csv}: every subject was in the model's training or validation split "
                               "(seen_in_training): there is no external result to evaluate")
        pred["split"] = pred["split"].replace({"external": "test"})
        experiment += EXTERNAL_SUFFIX
    markers = [c.removeprefix("prob_") for c in pred.columns if c.startswith("prob_")]
    has_survival = "risk" in pred.columns
    if not markers and not has_survival:
        raise RunError(f"{csv}: neither prob_<marker> nor risk columns; nothing to evaluate")
    return Run(path=path, experiment=experiment, mode=str(info["mode"]), seed=info["seed"],
               meta=meta, config=config, predictions=pred, markers=markers, has_survival=has_survival,
               manifest=read_manifest(path) or {})


def load_runs(paths: list[Path]) -> tuple[list[Run], list[tuple[str, str]]]:
    """Load every run; a bad run is logged and skipped (returned with its reason), the rest survive."""
    runs, skipped = [], []
    for p in paths:
        try:
            runs.append(load_run(p))
        except RunError as err:
            log.error("skipping run %s: %s", p, err)
            skipped.append((str(p), str(err)))
    return runs, skipped


def group_runs(runs: list[Run], by: str = "experiment") -> dict[str, list[Run]]:
    """Groups compared in the report: ``experiment`` (seeds/folds pooled), ``mode`` or ``run``."""
    if by not in ("experiment", "mode", "run"):
        raise ValueError(f"group_by must be experiment, mode or run, not {by!r}")
    groups: dict[str, list[Run]] = {}
    for r in runs:
        key = {"experiment": r.experiment, "mode": r.mode, "run": f"{r.experiment}:{r.path.name}"}[by]
        groups.setdefault(key, []).append(r)
    return groups


def group_frame(runs: list[Run]) -> pd.DataFrame:
    """All prediction rows of a group, one table (columns may differ between runs: outer union)."""
    return pd.concat([r.predictions for r in runs], ignore_index=True, sort=False)


def consistent_values(sub: pd.DataFrame, col: str, what: str) -> pd.Series:
    """Per-subject value of ``col`` that must agree across runs (a label, a survival time)."""
    n_distinct = sub.groupby("subject_id")[col].nunique(dropna=True)
    bad = n_distinct[n_distinct > 1]
    if len(bad):
        sid = bad.index[0]
        runs = sub.loc[sub.subject_id == sid, "run"].unique().tolist()
        raise RunError(f"subject {sid}: {what} {col!r} differs between runs {runs[:3]}; "
                       "compare runs made on the same cohort")
    return sub.groupby("subject_id")[col].first()


def pool_marker(frame: pd.DataFrame, marker: str, split: str = "test",
                by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Pooled predictions of one marker: per subject (and per ``by`` key) the mean probability.

    With ``by=()`` a subject's test predictions are averaged over every model of the group (seeds,
    repeats; folds are disjoint so they are concatenated). With ``by=("run", "repeat")`` one pooled
    table per replicate. Rows with an unknown label or probability are dropped.

    Returns columns ``[*by, subject_id, prob, label, n_pred]``.
    """
    prob, label = f"prob_{marker}", f"label_{marker}"
    if prob not in frame.columns:
        return pd.DataFrame(columns=[*by, "subject_id", "prob", "label", "n_pred"])
    sub = frame[(frame["split"] == split) & frame[label].notna() & frame[prob].notna()]
    consistent_values(sub, label, "label")
    keys = [*by, "subject_id"]
    out = sub.groupby(keys, sort=True).agg(prob=(prob, "mean"), label=(label, "first"), n_pred=(prob, "size"))
    return out.reset_index()


def models_of(frame: pd.DataFrame) -> list[tuple[str, int, int]]:
    """The ``(run, repeat, fold)`` keys of a group's fitted models, in a stable order."""
    keys = frame[["run", "repeat", "fold"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted(keys)


def site_summary(frame: pd.DataFrame, split: str = "test") -> dict:
    """Sites seen in training and in ``split``; external validation = split sites unseen in training."""
    if "site" not in frame.columns:
        return {"train_sites": [], "test_sites": [], "unseen": []}
    tr = sorted(frame.loc[frame.split == "train", "site"].dropna().astype(str).unique())
    te = sorted(frame.loc[frame.split == split, "site"].dropna().astype(str).unique())
    return {"train_sites": tr, "test_sites": te, "unseen": sorted(set(te) - set(tr))}

