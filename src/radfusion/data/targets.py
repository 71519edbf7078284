"""What a model predicts: marker labels (with the WHO 1p/19q rule), survival, and the checks that
refuse a cohort or split the model cannot learn from, before any training.

Labels are floats with NaN for unknown; a NaN masks only its own head downstream.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from radfusion.cohort.clinical import CLASS_NAMES
from radfusion.cohort.subject import CohortError
from radfusion.data.splits import SPLITS, describe_protocol, min_cohort_size, split_sizes

log = logging.getLogger(__name__)


def marker_labels(clinical: pd.DataFrame, ids: Sequence[str], targets: Sequence[str],
                  codeletion_idh_mutant_only: bool = True) -> np.ndarray:
    """``(n_subjects, n_targets)`` float labels, NaN where unknown.

    1p/19q codeletion is defined for IDH-mutant gliomas only (WHO 2021): with
    ``codeletion_idh_mutant_only`` its label is masked for IDH-wildtype and IDH-unknown subjects.
    """
    targets = list(targets)
    missing = [t for t in targets if t not in clinical.columns]
    if missing:
        raise CohortError(f"target column(s) {missing} not in the clinical table")
    labels = clinical.loc[list(ids), targets].to_numpy(dtype=np.float64)
    if "codeletion" in targets and codeletion_idh_mutant_only:
        not_mutant = clinical.loc[list(ids), "idh"].to_numpy(dtype=np.float64) != 1.0
        labels[not_mutant, targets.index("codeletion")] = np.nan
    return labels


def survival_table(clinical: pd.DataFrame, ids: Sequence[str]) -> pd.DataFrame:
    """``os_days`` and ``os_event`` as floats (NaN unknown), one row per subject of ``ids``."""
    return clinical.loc[list(ids), ["os_days", "os_event"]].astype(np.float64)


def check_survival(survival: pd.DataFrame) -> None:
    """Refuse survival data a Cox model cannot use, naming the subjects (before any training)."""
    time, event = survival["os_days"], survival["os_event"]
    bad_time = survival.index[(time <= 0).fillna(False)]
    if len(bad_time):
        raise CohortError(f"os_days must be > 0; subjects {list(bad_time[:5])} have {list(time[bad_time[:5]])}")
    bad_event = survival.index[~event.isin([0.0, 1.0]) & event.notna()]
    if len(bad_event):
        raise CohortError(f"os_event must be 1 (death) or 0 (censored); subjects {list(bad_event[:5])}")
    known = time.notna() & event.notna()
    if known.sum() == 0:
        raise CohortError("survival requested but no subject has both os_days and os_event")
    if event[known].sum() == 0:
        raise CohortError("all subjects are censored: a Cox model cannot be fitted (no events)")
    if event[known].sum() == known.sum():
        log.warning("no subject is censored (all %d have events)", int(known.sum()))


def _group_labels(values: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """One value per group (patient), its first known one, as the split stratifies on it."""
    first: dict[str, float] = {}
    for value, g in zip(values, groups, strict=True):
        if g not in first or np.isnan(first[g]):
            first[g] = float(value)
    return np.array(list(first.values()), dtype=np.float64)


def check_cohort_size(labels: np.ndarray, targets: Sequence[str], groups: Sequence[str], split: Mapping,
                      events: np.ndarray | None = None) -> None:
    """Refuse, before any split is made, a cohort too small for the validation protocol ``split``
    (``data.split``), saying what is needed.

    Every split (train, val, test) must hold both classes of the first target
    (:func:`check_split_targets`), so each class needs at least 3 labelled subjects (groups) and each
    split at least 2 subjects; a later target needs both classes somewhere (for training). Only what
    fails whatever the seed is refused here; the split made is checked afterwards.
    """
    strategy = split.get("strategy", "holdout")
    v, t = float(split.get("val_fraction", 0.2)), float(split.get("test_fraction", 0.2))
    k = int(split.get("n_folds", 5))
    n = len(set(groups))
    unit = "subjects" if n == len(groups) else "patients"
    protocol = describe_protocol(strategy, v, t, k)
    problems, class_ok = [], True
    for i, target in enumerate(targets):
        y = _group_labels(labels[:, i], groups)
        y = y[~np.isnan(y)]
        names = CLASS_NAMES.get(target, ("0", "1"))
        counts = {names[1]: int((y == 1).sum()), names[0]: int((y == 0).sum())}
        need = 3 if i == 0 else 1
        if min(counts.values()) < need:
            class_ok = False
            where = "every split (train, val, test) needs both classes" if i == 0 else "training needs both classes"
            likely = ""
            if i == 0 and strategy in ("holdout", "kfold"):
                smallest = min(v, t) if strategy == "holdout" else min(1 / k, v * (1 - 1 / k) or 1)
                likely = f" (about {int(np.ceil(1 / smallest))} each to be likely with these fractions)"
            problems.append(f"the cohort has {len(y)} labelled {unit} for {target!r} "
                            f"({', '.join(f'{c} {name}' for name, c in counts.items())}); {where}, so at least "
                            f"{need} of each{likely}")
    per_split = 2 if targets else 1
    shapes = split_sizes(n, strategy, v, t, k)
    if shapes and all(min(x for key, x in f.items() if key != "val" or v > 0) < per_split for f in shapes):
        need = min_cohort_size(strategy, v, t, k, per_split)
        sizes = ", ".join(f"{key} {x}" for key, x in shapes[0].items())
        problems.append(f"{n} {unit} split into {sizes}, and each split needs at least {per_split}"
                        f"{' (one of each class)' if targets else ''}: at least {need} {unit} are needed")
    if events is not None and np.nansum(events) < 2:
        problems.append(f"{int(np.nansum(events))} event(s) in the cohort; a Cox model needs at least 2 in training")
    if not problems:
        return
    advice = "Add subjects"
    if class_ok and strategy == "holdout":
        alt = [f for f in (5, 3) if (m := min_cohort_size("kfold", v, t, f, per_split)) is not None and m <= n]
        if alt:
            advice += f", or use data.split.strategy=kfold data.split.n_folds={alt[0]}"
    raise CohortError(f"too small a cohort for {protocol}: {'; '.join(problems)}. {advice}, or change "
                      "data.split.val_fraction / data.split.test_fraction")


def check_split_targets(splits: dict[str, list[str]], ids: Sequence[str], labels: np.ndarray,
                        targets: Sequence[str], events: np.ndarray | None, splits_file: str,
                        inner_fold: bool = False) -> None:
    """Refuse splits a model cannot be trained or judged on.

    Every split needs both classes of the first target (and the training split of every target);
    for later targets an undefined validation/test metric is only a warning. With survival
    (``events`` given) the training split needs at least 2 events. An inner (nested-CV) fold has an
    empty test split on purpose: the outer test split stays untouched.
    """
    index = {s: i for i, s in enumerate(ids)}
    for name in SPLITS:
        members = splits[name]
        unknown = set(members) - set(index)
        if unknown:
            raise CohortError(f"splits file {splits_file} names subjects not in the cohort "
                              f"(e.g. {sorted(unknown)[:3]}); delete it to re-split")
        rows = [index[s] for s in members]
        if name == "test" and not rows and inner_fold:
            continue
        for t, target in enumerate(targets):
            y = labels[rows, t]
            y = y[~np.isnan(y)]
            if len(y) and len(np.unique(y)) == 2:
                continue
            msg = (f"too small a cohort: the {name} split has {len(y)} labelled subjects for "
                   f"{target!r} ({'one class only' if len(y) else 'none'}); both classes are needed. "
                   "Add subjects or change the split fractions")
            if t == 0 or name == "train":
                raise CohortError(msg)
            log.warning("%s; %s metrics on %s will be undefined", msg, target, name)
        if events is not None:
            n_events = np.nansum(events[rows])
            if n_events < 2:
                msg = f"the {name} split has {int(n_events)} event(s); a Cox model needs at least 2"
                if name == "train":
                    raise CohortError(f"too small a cohort: {msg}")
                log.warning("%s; its C-index will be undefined or unstable", msg)
