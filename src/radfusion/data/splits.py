"""Subject-level, stratified, seeded splits, made once and written to a JSON file.

Like nnU-Net's ``splits_final.json``: the split is made once per cohort and seed and reused, so
every mode (handcrafted, deep, hybrid) and every baseline sees exactly the same subjects.
Subjects are the unit: all rows (timepoints) of one subject land in the same split.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from radfusion.cache import settings_hash

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _strata(labels: Sequence[float]) -> np.ndarray:
    """Stratum per subject: the label, with unknown labels as their own stratum.

    A stratum with a single subject cannot be stratified; it joins the largest stratum.
    """
    strata = np.array(["missing" if (lab is None or np.isnan(lab)) else str(int(lab)) for lab in labels])
    values, counts = np.unique(strata, return_counts=True)
    largest = values[np.argmax(counts)]
    for value, count in zip(values, counts, strict=False):
        if count < 2:
            strata[strata == value] = largest
    return strata


def _split(ids: np.ndarray, strata: np.ndarray, fraction: float, seed: int):
    counts = {s: int((strata == s).sum()) for s in np.unique(strata)}
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
    labels = list(labels)
    strata = _strata(labels)
    rest, test, _, _ = _split(ids, strata, test_fraction, seed)
    rest_strata = _strata([labels[list(ids).index(i)] for i in rest])
    train, val, _, _ = _split(rest, rest_strata, val_fraction / (1 - test_fraction), seed + 1)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def load_or_make_splits(splits_dir: str | Path, ids: Sequence[str], labels: Sequence[float],
                        val_fraction: float, test_fraction: float, seed: int) -> tuple[dict[str, list[str]], Path]:
    """Reuse ``splits_<cohort>_<settings>.json`` when it exists, else make and write it."""
    key = settings_hash({"ids": sorted(ids), "val": val_fraction, "test": test_fraction, "seed": seed})
    path = Path(splits_dir) / f"splits_{key}.json"
    if path.exists():
        splits = json.loads(path.read_text())
        return {k: splits[k] for k in SPLITS}, path
    splits = make_splits(ids, labels, val_fraction, test_fraction, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**splits, "seed": seed, "val_fraction": val_fraction,
                                "test_fraction": test_fraction}, indent=1))
    return splits, path
