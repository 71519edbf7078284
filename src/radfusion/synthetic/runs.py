"""Deterministic fake run folders with known properties, for tests, benchmarks and demos of
``evaluate.py`` without training anything.

Each subject has a latent marker score and a latent hazard; a mode's predictions are the latent
value plus noise whose size sets how good that mode is (``strength``: higher = better). Survival
times are exponential with hazard ``exp(latent)``, censored uniformly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def cohort(n: int = 120, seed: int = 0, n_sites: int = 3) -> pd.DataFrame:
    """Subjects with latent scores, labels (some unknown), survival and site."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))  # latent: idh, mgmt, hazard
    df = pd.DataFrame({"subject_id": [f"S{i:03d}" for i in range(n)],
                       "site": [f"site{i % n_sites}" for i in range(n)], "z_idh": z[:, 0], "z_mgmt": z[:, 1],
                       "z_haz": 0.8 * z[:, 2] - 0.5 * z[:, 0]})
    df["label_idh"] = (z[:, 0] + 0.3 * rng.normal(size=n) > 0.3).astype(float)
    df["label_mgmt"] = (z[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(float)
    df.loc[rng.random(n) < 0.1, "label_mgmt"] = np.nan  # unknown labels are excluded, never guessed
    t = rng.exponential(400 * np.exp(-df.z_haz))
    c = rng.uniform(100, 1500, n)
    df["os_days"], df["os_event"] = np.round(np.minimum(t, c) + 1, 1), (t <= c).astype(float)
    return df


def write_run(folder: Path, subjects: pd.DataFrame, experiment: str, mode: str, seed: int, strength: float,
              markers: tuple[str, ...] = ("idh", "mgmt"), survival: bool = True, n_folds: int = 1,
              n_repeats: int = 1, split_seed: int = 0, extra_config: dict | None = None) -> Path:
    """One run folder: predictions.csv (+ metrics.json, config_resolved.yaml).

    ``n_folds == 1``: a fixed 60/20/20 train/val/test split (``split_seed``); else K-fold CV rows
    (each subject in test once per repeat). ``strength`` scales the signal-to-noise of predictions.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1000 + seed)
    n = len(subjects)
    rows = []
    for rep in range(n_repeats):
        perm = np.random.default_rng(split_seed + 17 * rep).permutation(n)
        if n_folds == 1:
            parts = [("train", perm[: int(0.6 * n)]), ("val", perm[int(0.6 * n): int(0.8 * n)]),
                     ("test", perm[int(0.8 * n):])]
            plans = [(0, parts)]
        else:
            folds = np.array_split(perm, n_folds)
            plans = [(k, [("train", np.concatenate([f for j, f in enumerate(folds) if j != k])),
                          ("test", folds[k])]) for k in range(n_folds)]
        for fold, parts in plans:
            noise = rng.normal(size=(n, 3))
            for split, idx in parts:
                for i in idx:
                    s = subjects.iloc[i]
                    row = {"subject_id": s.subject_id, "split": split, "fold": fold, "repeat": rep, "site": s.site}
                    for j, m in enumerate(markers):
                        logit = strength * s[f"z_{m}"] + noise[i, j]
                        row[f"prob_{m}"] = float(1 / (1 + np.exp(-logit)))
                        row[f"label_{m}"] = s[f"label_{m}"]
                    if survival:
                        row.update(risk=float(strength * s.z_haz + noise[i, 2]), os_days=s.os_days,
                                   os_event=s.os_event)
                    rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "predictions.csv", index=False)
    targets = [*markers, *(["os"] if survival else [])]
    (folder / "metrics.json").write_text(json.dumps({"experiment": experiment, "mode": mode, "targets": targets,
                                                     "seed": seed, "n_radiomics_model": 40 if mode != "deep" else 0,
                                                     "splits_file": f"splits_{split_seed}.json"}))
    config = {"task_name": experiment, "seed": seed,
              "data": {"cohort": {"source": "synthetic", "path": "fake"},
                       "split": {"val_fraction": 0.2, "test_fraction": 0.2, "seed": split_seed},
                       "features": {"spacing": 1.0, "normalize": "zscore", "normalize_scale": 100,
                                    "params": {"setting": {"binWidth": 25}}}},
              "model": {"mode": mode, "fusion": {"dropout": 0.3 if mode == "hybrid" else 0.1}},
              "paths": {"output_dir": str(folder)}, **(extra_config or {})}
    (folder / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    return folder


def write_sweep(root: Path, n: int = 120, seeds: tuple[int, ...] = (0, 1, 2), n_folds: int = 1,
                strengths: dict[str, float] | None = None, survival: bool = True) -> Path:
    """A multirun-like folder ``root/<k>_<experiment>/`` for modes × seeds (like ``train.py -m``)."""
    strengths = strengths or {"handcrafted": 1.0, "deep": 1.3, "hybrid": 2.5}
    subjects = cohort(n)
    k = 0
    for seed in seeds:
        for mode, strength in strengths.items():
            write_run(root / f"{k}_idh_{mode}", subjects, f"idh_{mode}", mode, seed, strength, survival=survival,
                      n_folds=n_folds)
            k += 1
    return root
