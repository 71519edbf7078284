"""Gather ``predictions.csv`` of many runs and compare them in one table."""

from __future__ import annotations

import glob
import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from radfusion.evaluation.metrics import auc_with_ci

log = logging.getLogger(__name__)


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
    """Experiment name and mode from the run's metrics.json (falls back to the folder name)."""
    meta = {}
    if (run / "metrics.json").is_file():
        meta = json.loads((run / "metrics.json").read_text())
    return {"experiment": meta.get("experiment") or run.parent.name, "mode": meta.get("mode", "?"),
            "seed": meta.get("seed")}


def compare_runs(runs: list[Path], split: str = "test", n_bootstrap: int = 2000) -> pd.DataFrame:
    """One row per run and target: AUC with 95 % bootstrap CI on ``split``, from predictions.csv."""
    rows = []
    for run in runs:
        pred = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str})
        part = pred[pred["split"] == split]
        if part.empty:
            raise ValueError(f"{run / 'predictions.csv'} has no rows with split == {split!r}")
        for col in [c for c in pred.columns if c.startswith("prob_")]:
            target = col.removeprefix("prob_")
            res = auc_with_ci(part[f"label_{target}"], part[col], n_boot=n_bootstrap)
            rows.append({**run_info(run), "target": target, "split": split, **res, "run": str(run)})
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    lines = [f"{'experiment':<22} {'mode':<12} {'target':<10} {'n':>4} {'AUC':>6}  95% CI", "-" * 66]
    for r in table.itertuples():
        lines.append(f"{r.experiment:<22} {r.mode:<12} {r.target:<10} {r.n:>4} {r.auc:>6.3f}  "
                     f"[{r.ci_low:.3f}, {r.ci_high:.3f}]")
    return "\n".join(lines)


def evaluate(cfg: DictConfig) -> pd.DataFrame:
    """Entry point of ``evaluate.py``: print (and optionally save) the comparison table."""
    runs = find_runs(list(cfg.runs) if not isinstance(cfg.runs, str) else cfg.runs)
    table = compare_runs(runs, cfg.get("split", "test"), int(cfg.get("n_bootstrap", 2000)))
    print(format_table(table))
    print("AUCs recomputed from predictions.csv; CIs: stratified subject bootstrap. "
          "On the synthetic cohort these numbers test the machinery, not a clinical claim.")
    if cfg.get("output"):
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(cfg.output, index=False)
        log.info("comparison table written to %s", cfg.output)
    return table
