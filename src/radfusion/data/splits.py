"""Subject-level, stratified, seeded splits, made once and written to a JSON file.

Like nnU-Net's ``splits_final.json``: the split is made once per cohort and seed and reused, so
every mode (handcrafted, deep, hybrid) and every baseline sees exactly the same subjects.
Subjects are the unit: all rows (timepoints) of one subject land in the same split.

Two entry points:

- :func:`load_or_make_fold` / :func:`load_or_make_folds`: a validation protocol — hold-out,
  repeated stratified k-fold, or site-held-out external validation (leave-one-site-out or named
  sites), optionally with inner folds for nested CV — all at patient level via ``groups``. The
  file records every fold, so every mode and baseline sees the same ones.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from radfusion.cache import atomic_write_text, settings_hash

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _strata(labels: Sequence[float]) -> np.ndarray:
    """Stratum per subject: the label, with unknown labels as their own stratum.

    A stratum with a single subject cannot be stratified; it joins the largest stratum.
    """
    return _keyed_strata([_label_key(lab) for lab in labels])


def split_sizes(n: int, strategy: str = "holdout", val_fraction: float = 0.2, test_fraction: float = 0.2,
                n_folds: int = 5) -> list[dict[str, int]]:
    """Sizes (in groups) of train / val / test exactly as scikit-learn will cut ``n`` groups.

    ``holdout``: one dict (``test = ceil(test_fraction * n)``, then ``val`` likewise of the rest, as
    :func:`make_splits` asks ``train_test_split``). ``kfold``: the two fold shapes, test parts of
    ``ceil(n / n_folds)`` and ``floor(n / n_folds)`` groups (stratification may shift a group or
    two). ``site``: empty, the sites decide.
    """
    if strategy == "holdout":
        test = math.ceil(test_fraction * n)
        rest = n - test
        val = math.ceil(val_fraction / (1 - test_fraction) * rest) if rest > 0 else 0
        return [{"train": rest - val, "val": val, "test": test}]
    if strategy == "kfold":
        shapes = []
        for test in sorted({-(-n // n_folds), n // n_folds}, reverse=True):
            dev = n - test
            val = math.ceil(val_fraction * dev) if val_fraction > 0 and dev > 0 else 0
            shapes.append({"train": dev - val, "val": val, "test": test})
        return shapes
    return []


def min_cohort_size(strategy: str = "holdout", val_fraction: float = 0.2, test_fraction: float = 0.2,
                    n_folds: int = 5, per_split: int = 1) -> int | None:
    """The fewest groups for which every split of every fold shape holds ``per_split`` groups (val may be
    empty when ``val_fraction`` is 0); None for ``site`` (the sites decide) or beyond 10,000."""
    if strategy not in ("holdout", "kfold"):
        return None
    for n in range(1, 10_001):
        shapes = split_sizes(n, strategy, val_fraction, test_fraction, n_folds)
        if all(v >= per_split or (k == "val" and val_fraction == 0) for f in shapes for k, v in f.items()):
            return n
    return None


def describe_protocol(strategy: str, val_fraction: float, test_fraction: float, n_folds: int) -> str:
    """The protocol in words, for messages."""
    if strategy == "holdout":
        return f"a holdout split (val {val_fraction:g} / test {test_fraction:g})"
    if strategy == "kfold":
        return f"{n_folds}-fold cross-validation (val {val_fraction:g} of each development part)"
    return "a site-held-out split"


def check_split_sizes(n: int, strategy: str = "holdout", val_fraction: float = 0.2, test_fraction: float = 0.2,
                      n_folds: int = 5) -> None:
    """Raise ValueError (saying what is needed) when scikit-learn cannot cut ``n`` groups as asked."""
    shapes = split_sizes(n, strategy, val_fraction, test_fraction, n_folds)
    empty = [f for f in shapes if f["train"] < 1 or f["test"] < 1 or (val_fraction > 0 and f["val"] < 1)]
    if empty:
        need = min_cohort_size(strategy, val_fraction, test_fraction, n_folds)
        sizes = ", ".join(f"{k} {v}" for k, v in empty[0].items())
        protocol = describe_protocol(strategy, val_fraction, test_fraction, n_folds)
        raise ValueError(f"too small a cohort: {protocol} of {n} subject(s) (groups) gives {sizes}; it needs at "
                         f"least {need} subjects. Add subjects or change data.split.val_fraction / test_fraction / "
                         "n_folds")


def _split(ids: np.ndarray, strata: np.ndarray, fraction: float, seed: int):
    counts = {s: int((strata == s).sum()) for s in np.unique(strata)}
    if len(ids) - math.ceil(fraction * len(ids)) < 1:  # scikit-learn would say "With n_samples=1 ..."
        raise ValueError(f"too small a cohort: holding out {fraction:.3g} of {len(ids)} subject(s) leaves none "
                         "for training; add subjects or lower data.split.val_fraction / test_fraction")
    try:
        return train_test_split(ids, strata, test_size=fraction, random_state=seed, stratify=strata)
    except ValueError as err:  # a stratum too small, or fewer subjects than strata
        log.warning("cannot stratify (%s; strata %s); splitting without stratification", err, counts)
        return train_test_split(ids, strata, test_size=fraction, random_state=seed)


def make_splits(ids: Sequence[str], labels: Sequence[float], val_fraction: float = 0.2,
                test_fraction: float = 0.2, seed: int = 0) -> dict[str, list[str]]:
    """Stratified train/val/test split of subject ids on a binary label (NaN = unknown)."""
    ids = np.asarray(list(ids), dtype=object)
    if len(set(ids)) != len(ids):
        raise ValueError("subject ids must be unique for a subject-level split")
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"bad split fractions val={val_fraction} test={test_fraction}")
    check_split_sizes(len(ids), "holdout", val_fraction, test_fraction)
    labels = list(labels)
    strata = _strata(labels)
    rest, test, _, _ = _split(ids, strata, test_fraction, seed)
    rest_strata = _strata([labels[list(ids).index(i)] for i in rest])
    train, val, _, _ = _split(rest, rest_strata, val_fraction / (1 - test_fraction), seed + 1)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


# --------------------------------------------------------------------------------------------
# General validation protocols: hold-out, (repeated) stratified k-fold, site-held-out, nested CV
# --------------------------------------------------------------------------------------------

STRATEGIES = ("holdout", "kfold", "site")


def _keyed_strata(keys: Sequence[str]) -> np.ndarray:
    """Strata from arbitrary string keys; a key with one member joins the largest stratum."""
    strata = np.asarray(list(keys), dtype=object)
    if len(strata) == 0:
        return strata
    values, counts = np.unique(strata, return_counts=True)
    largest = values[np.argmax(counts)]
    for value, count in zip(values, counts, strict=True):
        if count < 2:
            strata[strata == value] = largest
    return strata


def _label_key(label: float) -> str:
    return "missing" if label is None or np.isnan(label) else str(int(label))


class _Groups:
    """Subjects collapsed to groups (patients): the unit every split is made of.

    ``groups[i]`` names the patient of row ``ids[i]`` (longitudinal timepoints share a group).
    A group's label for stratification is its first known label; its site must be unique when
    sites matter (a patient scanned at two sites cannot be held out with one of them).
    """

    def __init__(self, ids: Sequence[str], labels: Sequence[float], groups: Sequence[str] | None,
                 sites: Sequence[str] | None, need_sites: bool) -> None:
        ids = [str(i) for i in ids]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"subject ids must be unique for a subject-level split; duplicated: {dup}")
        labels = np.asarray(list(labels), dtype=np.float64)
        if len(labels) != len(ids):
            raise ValueError(f"{len(ids)} subject ids but {len(labels)} labels")
        groups = ids if groups is None else [str(g) for g in groups]
        if len(groups) != len(ids):
            raise ValueError(f"{len(ids)} subject ids but {len(groups)} group entries")
        sites = None if sites is None else list(sites)
        if sites is not None and len(sites) != len(ids):
            raise ValueError(f"{len(ids)} subject ids but {len(sites)} site entries")
        if need_sites:
            if sites is None:
                raise ValueError("the 'site' split strategy needs the subjects' sites")
            for sid, site in zip(ids, sites, strict=True):
                if site is None or (isinstance(site, float) and np.isnan(site)) or str(site).strip() == "":
                    raise ValueError(f"subject {sid}: no site given; the 'site' strategy needs one per subject")
        self.names: list[str] = list(dict.fromkeys(groups))
        self.members: dict[str, list[str]] = {g: [] for g in self.names}
        label_of: dict[str, float] = {}
        site_of: dict[str, set[str]] = {g: set() for g in self.names}
        for i, (sid, g) in enumerate(zip(ids, groups, strict=True)):
            self.members[g].append(sid)
            if g not in label_of or np.isnan(label_of[g]):
                label_of[g] = labels[i]
            if sites is not None:
                site_of[g].add(str(sites[i]))
        self.labels = np.array([label_of[g] for g in self.names])
        self.sites: np.ndarray | None = None
        if sites is not None:
            if need_sites:
                mixed = {g: sorted(s) for g, s in site_of.items() if len(s) > 1}
                if mixed:
                    g, s = next(iter(mixed.items()))
                    raise ValueError(f"group {g} (subjects {self.members[g]}) was scanned at several sites {s}; "
                                     "a site-held-out split cannot keep it in one split")
            self.sites = np.array([sorted(site_of[g])[0] for g in self.names], dtype=object)

    def expand(self, group_names) -> list[str]:
        return sorted(s for g in group_names for s in self.members[g])

    def label_strata(self, idx: np.ndarray, with_site: bool = False) -> np.ndarray:
        keys = [_label_key(self.labels[i]) + (f"|{self.sites[i]}" if with_site and self.sites is not None else "")
                for i in idx]
        return _keyed_strata(keys)


def _carve(idx: np.ndarray, strata: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split group indices ``idx`` into (rest, held) with ``fraction`` held out, stratified if possible."""
    if fraction <= 0:
        return idx, idx[:0]
    rest, held, _, _ = _split(idx, strata, fraction, seed)
    return np.asarray(rest), np.asarray(held)


def _kfold(idx: np.ndarray, strata: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold over group indices; falls back to plain shuffled k-fold if strata are too small."""
    if n_folds < 2 or n_folds > len(idx):
        raise ValueError(f"cannot make {n_folds} folds of {len(idx)} subjects (groups); need 2 <= n_folds <= n")
    with warnings.catch_warnings():
        # "The least populated class has only k members": stratification is then approximate, fine.
        warnings.simplefilter("ignore", UserWarning)
        try:
            parts = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(idx, strata))
        except ValueError as err:
            log.warning("cannot stratify %d folds (%s); using unstratified folds", n_folds, err)
            parts = list(KFold(n_folds, shuffle=True, random_state=seed).split(idx))
    return [(idx[a], idx[b]) for a, b in parts]


def make_folds(ids: Sequence[str], labels: Sequence[float], groups: Sequence[str] | None = None,
               sites: Sequence[str] | None = None, strategy: str = "kfold", n_folds: int = 5,
               n_repeats: int = 1, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
               test_sites: Sequence[str] | None = None, n_inner: int = 0) -> dict:
    """Every fold of a validation protocol, at group (patient) level.

    Args:
        ids: subject (row) ids, unique; longitudinal timepoints have their own ids.
        labels: binary label per id used for stratification (NaN = unknown, its own stratum).
        groups: patient per id; all ids of a group always land in the same split (default: ids).
        sites: acquisition site per id (needed by ``strategy="site"``; also stratifies its val part).
        strategy: ``holdout`` (train/val/test fractions, like :func:`make_splits`), ``kfold``
            (stratified; each group is in the test part of exactly one fold per repeat) or ``site``
            (external validation: whole sites held out; leave-one-site-out, or ``test_sites``).
        n_folds: folds per repeat (``kfold`` only; ``site`` has one fold per site).
        n_repeats: repeats with seeds ``seed + r`` (``holdout``: Monte-Carlo repeats).
        val_fraction: ``holdout``: fraction of all subjects; ``kfold``/``site``: fraction of the
            non-test (development) part carved out for validation / early stopping (0 = none).
        test_fraction: ``holdout`` only.
        seed: base seed; the same arguments always give the same folds.
        test_sites: ``site`` only: hold out exactly these sites (one fold) instead of each in turn.
        n_inner: nested CV: split each fold's development part (train + val) into this many
            stratified inner folds for hyperparameter search (0 = none). The outer test is never
            part of them.

    Returns:
        ``{"strategy", ..., "folds": [{"repeat", "fold", "train", "val", "test", "test_sites",
        "inner": [{"train", "val"}, ...]}]}``, folds ordered by repeat then fold; id lists sorted.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown split strategy {strategy!r}; choose one of {STRATEGIES}")
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be >= 1, got {n_repeats}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if test_sites is not None and strategy != "site":
        raise ValueError(f"test_sites={list(test_sites)} needs strategy='site', not {strategy!r}")
    if n_inner == 1 or n_inner < 0:
        raise ValueError(f"n_inner must be 0 (no nested CV) or >= 2, got {n_inner}")
    g = _Groups(ids, labels, groups, sites, need_sites=strategy == "site")
    if strategy == "kfold" and 2 <= n_folds <= len(g.names):  # other fold counts: _kfold says why
        check_split_sizes(len(g.names), strategy, val_fraction, test_fraction, n_folds)
    all_idx = np.arange(len(g.names))
    folds: list[dict] = []
    for r in range(n_repeats):
        rseed = seed + r
        if strategy == "holdout":
            # Reuse make_splits on groups so that, without groups, the result equals the old split.
            parts = make_splits(g.names, g.labels, val_fraction, test_fraction, rseed)
            name_to_idx = {n: i for i, n in enumerate(g.names)}
            folds.append({"repeat": r, "fold": 0, "test_sites": None,
                          **{k: np.array([name_to_idx[n] for n in v], dtype=int) for k, v in parts.items()}})
            continue
        if strategy == "kfold":
            outer = [(dev, test, None) for dev, test in _kfold(all_idx, g.label_strata(all_idx), n_folds, rseed)]
        else:
            known = sorted(set(g.sites))
            held = [[str(s)] for s in known] if test_sites is None else [[str(s) for s in test_sites]]
            unknown = sorted({s for h in held for s in h} - set(known))
            if unknown:
                raise ValueError(f"test site(s) {unknown} not in the cohort; sites are {known}")
            if len(known) < 2:
                raise ValueError(f"a site-held-out split needs at least 2 sites; the cohort has {known}")
            outer = []
            for h in held:
                in_test = np.isin(g.sites, h)
                if in_test.all():
                    raise ValueError(f"holding out sites {h} leaves no training subjects")
                outer.append((all_idx[~in_test], all_idx[in_test], h))
        for k, (dev, test, held_sites) in enumerate(outer):
            vseed = seed + 1000 * (r + 1) + k
            train, val = _carve(dev, g.label_strata(dev, with_site=strategy == "site"), val_fraction, vseed)
            folds.append({"repeat": r, "fold": k, "test_sites": held_sites, "train": train, "val": val,
                          "test": test})
    for f in folds:
        dev = np.sort(np.concatenate([f["train"], f["val"]]))
        f["inner"] = [] if not n_inner else [
            {"train": g.expand(g.names[i] for i in a), "val": g.expand(g.names[i] for i in b)}
            for a, b in _kfold(dev, g.label_strata(dev), n_inner, seed + 7919 + 100 * f["repeat"] + f["fold"])]
        for part in SPLITS:
            f[part] = g.expand(g.names[i] for i in f[part])
    return {"strategy": strategy, "n_folds": len(folds) // n_repeats, "n_repeats": n_repeats,
            "val_fraction": val_fraction, "test_fraction": test_fraction if strategy == "holdout" else None,
            "seed": seed, "test_sites": None if test_sites is None else [str(s) for s in test_sites],
            "n_inner": n_inner, "folds": folds}


def select_fold(plan: dict, fold: int = 0, repeat: int = 0, inner_fold: int | None = None) -> dict[str, list[str]]:
    """``{train, val, test}`` of one fold of a plan from :func:`make_folds`.

    With ``inner_fold`` (nested CV) the inner fold's train/val are returned and ``test`` is empty:
    the outer test subjects must not inform a hyperparameter choice.
    """
    n_folds, n_repeats = plan["n_folds"], plan["n_repeats"]
    if not (0 <= fold < n_folds and 0 <= repeat < n_repeats):
        raise ValueError(f"fold {fold}, repeat {repeat} out of range: the {plan['strategy']} plan has "
                         f"{n_folds} fold(s) x {n_repeats} repeat(s) (indices from 0)")
    f = plan["folds"][repeat * n_folds + fold]
    if inner_fold is None:
        return {k: list(f[k]) for k in SPLITS}
    if not 0 <= inner_fold < len(f["inner"]):
        raise ValueError(f"inner fold {inner_fold} out of range: the plan has {len(f['inner'])} inner folds "
                         "(set n_inner >= 2 for nested CV)")
    inner = f["inner"][inner_fold]
    return {"train": list(inner["train"]), "val": list(inner["val"]), "test": []}


def fold_table(plan: dict) -> pd.DataFrame:
    """Long table ``subject_id, repeat, fold, split`` of every fold (for predictions and audits)."""
    rows = [{"subject_id": s, "repeat": f["repeat"], "fold": f["fold"], "split": part}
            for f in plan["folds"] for part in SPLITS for s in f[part]]
    return pd.DataFrame(rows, columns=["subject_id", "repeat", "fold", "split"])


def load_or_make_folds(splits_dir: str | Path, ids: Sequence[str], labels: Sequence[float],
                       sites: Sequence[str] | None = None, groups: Sequence[str] | None = None,
                       strategy: str = "kfold", n_folds: int = 5, n_repeats: int = 1, val_fraction: float = 0.2,
                       test_fraction: float = 0.2, seed: int = 0, test_sites: Sequence[str] | None = None,
                       n_inner: int = 0) -> tuple[dict, Path]:
    """Reuse ``folds_<hash>.json`` (every fold of the protocol) when it exists, else make and write it.

    The hash covers the ids, groups, sites (for ``site``) and every protocol setting, but not the
    labels: the file decides, so every mode sees the same folds.
    """
    ids = [str(i) for i in ids]
    key_state = {"ids": sorted(ids), "strategy": strategy, "n_folds": n_folds if strategy == "kfold" else None,
                 "n_repeats": n_repeats, "val": val_fraction, "test": test_fraction if strategy == "holdout" else None,
                 "seed": seed, "test_sites": None if test_sites is None else sorted(map(str, test_sites)),
                 "n_inner": n_inner}
    if groups is not None:
        key_state["groups"] = sorted(zip(ids, map(str, groups), strict=True))
    if strategy == "site" and sites is not None:
        key_state["sites"] = sorted(zip(ids, map(str, sites), strict=True))
    path = Path(splits_dir) / f"folds_{settings_hash(key_state)}.json"
    if path.exists():
        try:
            return json.loads(path.read_text()), path
        except ValueError as err:
            raise ValueError(f"splits file {path} is unreadable ({err}); delete it to re-split") from err
    plan = make_folds(ids, labels, groups, sites, strategy, n_folds, n_repeats, val_fraction, test_fraction,
                      seed, test_sites, n_inner)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(plan, indent=1))
    return plan, path


def load_or_make_fold(splits_dir: str | Path, ids: Sequence[str], labels: Sequence[float],
                      sites: Sequence[str] | None = None, groups: Sequence[str] | None = None,
                      strategy: str = "holdout", n_folds: int = 5, n_repeats: int = 1, fold: int = 0,
                      repeat: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                      test_sites: Sequence[str] | None = None, n_inner: int = 0,
                      inner_fold: int | None = None) -> tuple[dict[str, list[str]], Path]:
    """One fold ``{train, val, test}`` of a protocol (see :func:`make_folds`), via the shared splits file."""
    plan, path = load_or_make_folds(splits_dir, ids, labels, sites, groups, strategy, n_folds, n_repeats,
                                    val_fraction, test_fraction, seed, test_sites, n_inner)
    return select_fold(plan, fold, repeat, inner_fold), path
