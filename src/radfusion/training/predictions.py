"""Per-subject predictions of a trained model and the files a run folder shows: ``predictions.csv``,
``metrics.json`` (test AUC with its bootstrap CI, C-index) and ROC plots.

Predictions come from ``trainer.predict`` on un-augmented, unshuffled loaders of every split, with
the selected checkpoint; the rows follow the data contract (``subject_id, split, fold, repeat,
prob_<target>, label_<target>, risk, site, os_days, os_event``), so evaluation needs only this file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl

from radfusion.data.splits import SPLITS
from radfusion.evaluation.metrics import auc_entries
from radfusion.evaluation.plots import plot_roc
from radfusion.evaluation.survival import harrell_c


def predict_splits(trainer: pl.Trainer, model: pl.LightningModule, dm, ckpt_path: str | None) -> pd.DataFrame:
    """Probabilities (and Cox risk) for every subject of every split, from ``ckpt_path`` (None: current weights)."""
    loaders = [dm.split_dataloader(split) for split in SPLITS]
    outputs = trainer.predict(model, dataloaders=loaders, ckpt_path=ckpt_path, weights_only=True)
    if len(loaders) == 1:  # Lightning returns a flat list for a single loader
        outputs = [outputs]
    rows = []
    for split, batches in zip(SPLITS, outputs, strict=True):
        for out in batches:
            for i, sid in enumerate(out["subject_id"]):
                row = {"subject_id": sid, "split": split, "fold": dm.fold}
                for t, name in enumerate(dm.targets):
                    row[f"prob_{name}"] = float(out["probs"][i, t])
                    row[f"label_{name}"] = float(out["labels"][i, t])
                if "risk" in out:
                    row["risk"] = float(out["risk"][i])
                rows.append(row)
    return add_subject_columns(pd.DataFrame(rows), dm)


def add_subject_columns(predictions: pd.DataFrame, dm) -> pd.DataFrame:
    """Site and survival columns of the data contract, so evaluation needs only this file."""
    clinical = dm.cohort.clinical
    if "repeat" not in predictions:
        predictions.insert(3, "repeat", int(getattr(dm, "repeat", 0)))
    predictions["site"] = clinical.loc[predictions["subject_id"], "site"].to_numpy()
    if getattr(dm, "survival_target", False):
        for col in ("os_days", "os_event"):
            predictions[col] = dm.survival.loc[predictions["subject_id"], col].to_numpy()
    return predictions


def write_run_outputs(out_dir: Path, predictions: pd.DataFrame, targets: list[str], extra: dict,
                      n_boot: int = 2000) -> dict:
    """predictions.csv, metrics.json (with bootstrap CIs) and roc.png from a predictions table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(out_dir / "predictions.csv", index=False)
    metrics = dict(extra)
    if "risk" in predictions:
        for split in ("val", "test"):
            part = predictions[predictions["split"] == split]
            metrics[f"{split}/cindex"] = harrell_c(part["os_days"].to_numpy(float), part["os_event"].to_numpy(float),
                                                   part["risk"].to_numpy(float))
    for name in targets:
        for split in ("val", "test"):
            part = predictions[predictions["split"] == split]
            metrics.update(auc_entries(split, name, part[f"label_{name}"], part[f"prob_{name}"], n_boot))
        curves = {s: (predictions.loc[predictions.split == s, f"label_{name}"],
                      predictions.loc[predictions.split == s, f"prob_{name}"]) for s in ("test", "val")}
        plot_roc(curves, out_dir / ("roc.png" if name == targets[0] else f"roc_{name}.png"),
                 f"{extra.get('experiment', '')} — {name.upper()}")
    if targets:
        test_aucs = [metrics[f"test/auc_{t}"] for t in targets if not math.isnan(metrics[f"test/auc_{t}"])]
        metrics["test/auc"] = float(np.mean(test_aucs)) if test_aucs else float("nan")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return metrics
