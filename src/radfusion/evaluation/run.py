"""``evaluate(cfg)``: gather the runs' ``predictions.csv``, compare the groups, print the table and
write ``reports/<name>/`` (see ``docs/evaluation.md``)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from radfusion.evaluation.analysis import Evaluation, Settings, evaluate_groups, order_groups
from radfusion.evaluation.facts import is_synthetic
from radfusion.evaluation.incremental import format_incremental, incremental_value
from radfusion.evaluation.metrics import auc_with_ci
from radfusion.evaluation.report import SUMMARY_HEADER, summary_rows, write_report
from radfusion.evaluation.run_folders import RunError, find_runs, group_runs, load_runs, run_info
from radfusion.provenance import build_manifest, read_manifest, write_manifest

__all__ = ["compare_runs", "evaluate", "find_runs", "format_table", "run_info", "settings_from"]

log = logging.getLogger(__name__)


def compare_runs(runs: list[Path], split: str = "test", n_bootstrap: int = 2000) -> pd.DataFrame:
    """One row per run and marker: AUC with 95 % bootstrap CI on ``split`` (no pooling, no report)."""
    rows = []
    loaded, skipped = load_runs(runs)
    for p, why in skipped:
        raise RunError(f"{p}: {why}")
    for run in loaded:
        part = run.predictions[run.predictions["split"] == split]
        if part.empty:
            raise RunError(f"{run.path / 'predictions.csv'} has no rows with split == {split!r}")
        for m in run.markers:
            res = auc_with_ci(part[f"label_{m}"], part[f"prob_{m}"], n_boot=n_bootstrap)
            rows.append({"experiment": run.experiment, "mode": run.mode, "seed": run.seed, "target": m,
                         "split": split, **res, "run": str(run.path)})
    return pd.DataFrame(rows)


def settings_from(cfg: DictConfig) -> Settings:
    """:class:`Settings` from the eval config (missing keys keep their defaults)."""
    thr = cfg.get("threshold", 0.5)
    q = cfg.get("survival", {}) or {}
    return Settings(split=cfg.get("split", "test"), n_bootstrap=int(cfg.get("n_bootstrap", 2000)),
                    alpha=float(cfg.get("alpha", 0.05)), seed=int(cfg.get("seed", 0)),
                    threshold=thr if thr == "youden" else float(thr),
                    calibration_bins=int(cfg.get("calibration_bins", 5)),
                    time_quantiles=tuple(q.get("time_quantiles", (0.1, 0.8))), n_times=int(q.get("n_times", 8)),
                    reference=cfg.get("reference"))


def format_table(ev: Evaluation) -> str:
    """The printed comparison: headline metric per group and endpoint, then the paired tests."""
    rows = [SUMMARY_HEADER, *summary_rows(ev)]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(SUMMARY_HEADER))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    comps = ev.comparisons
    if len(comps):
        lines += ["", "paired comparisons (A − B; p Holm-adjusted per endpoint):"]
        for r in comps.to_dict("records"):
            if not np.isfinite(r.get("delta", np.nan)):
                lines.append(f"  {r['group_a']} − {r['group_b']}  {r['endpoint']}: not comparable (n={r['n_paired']})")
                continue
            dl = (f"DeLong p {r['delong_p']:.3g} (Holm {r['delong_p_holm']:.3g}), "
                  if np.isfinite(r.get("delong_p", np.nan)) else "")
            lines.append(f"  {r['group_a']} − {r['group_b']}  {r['endpoint']} Δ{r['metric']} {r['delta']:+.3f}  "
                         f"{dl}bootstrap 95% CI [{r.get('boot_ci_low', np.nan):.3f}, "
                         f"{r.get('boot_ci_high', np.nan):.3f}] (n={r['n_paired']})")
    return "\n".join(lines)


def log_to_wandb(report_dir: Path, files: dict[str, Path], ev: Evaluation, cfg: DictConfig, name: str) -> None:
    """The report's tables and plots as an (offline by default) W&B run in ``report_dir/wandb``."""
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    wcfg = cfg.get("wandb", {}) or {}
    run = wandb.init(project=wcfg.get("project", "radfusion"), name=f"eval_{name}", job_type="evaluation",
                     dir=str(report_dir), mode=os.environ["WANDB_MODE"], group=wcfg.get("group"),
                     config={"runs": [str(r) for r in OmegaConf.to_container(cfg.runs)] if not isinstance(cfg.runs, str)
                             else [cfg.runs], **asdict(settings_from(cfg))})
    try:
        payload = {"comparison/table": wandb.Table(dataframe=ev.table.astype(object).where(ev.table.notna(), None))}
        if len(ev.comparisons):
            payload["comparison/tests"] = wandb.Table(
                dataframe=ev.comparisons.astype(object).where(ev.comparisons.notna(), None))
        payload.update({f"plots/{p.stem}": wandb.Image(str(p)) for k, p in files.items() if k.endswith(".png")})
        run.log(payload)
        for r in ev.table.to_dict("records"):
            for k in ("auc", "c_harrell", "c_uno", "ibs"):
                if isinstance(r.get(k), float) and np.isfinite(r[k]):
                    run.summary[f"{r['group']}/{r['endpoint']}/{k}"] = r[k]
    finally:
        wandb.finish()


def _runs_provenance(runs) -> dict:
    """What the evaluated runs' manifests say (commit, cohort hash, splits hash), one entry per run folder."""
    out = {}
    for run in runs:
        m = read_manifest(run.path) or {}
        out[str(run.path)] = {"manifest": bool(m), "git": m.get("git"), "cohort_sha1": (m.get("cohort") or {}).get(
            "content_sha1"), "synthetic": (m.get("cohort") or {}).get("synthetic"), "splits_sha1": m.get("splits_sha1"),
            "feature_settings_hash": m.get("feature_settings_hash")}
    return {"runs": out}


def _say(text: str) -> None:
    """Print ``text``; inside ``evaluate.py`` (Hydra job logging: a file handler on the root logger) log it
    instead, so it reaches both the console and ``evaluate.log``."""
    if any(type(h) is logging.FileHandler for h in logging.getLogger().handlers):  # not pytest's subclass
        log.info("%s", "\n" + text if "\n" in text.strip() else text.strip())
    else:
        print(text)


def evaluate(cfg: DictConfig) -> pd.DataFrame:
    """Entry point of ``evaluate.py``: print the comparison, write the report, return the table."""
    t0 = time.perf_counter()
    paths = find_runs(list(cfg.runs) if not isinstance(cfg.runs, str) else cfg.runs)
    runs, skipped = load_runs(paths)
    if not runs:
        raise RunError("no run could be evaluated:\n" + "\n".join(f"  {p}: {why}" for p, why in skipped))
    groups = group_runs(runs, cfg.get("group_by", "experiment"))
    log.info("evaluating %d run(s) in %d group(s) (%s)%s", len(runs), len(groups),
             "; ".join(f"{g}: {len(rs)}" for g, rs in groups.items()), f", {len(skipped)} skipped" if skipped else "")
    s = settings_from(cfg)
    log.info("settings: %s", asdict(s))
    ev = evaluate_groups(groups, s)
    _say(format_table(ev))
    incremental = format_incremental(incremental_value(ev, groups, s))
    if incremental:
        _say("\n" + incremental)
    synthetic = sorted(g for g, rs in groups.items() if any(is_synthetic(r) for r in rs))
    _say("Pooled = per-subject predictions averaged over replicates (CV folds concatenated); mean ± sd over "
         "replicates." + (f" {', '.join(synthetic)}: synthetic cohort — these numbers test the machinery, not a "
                          "clinical claim." if synthetic else ""))
    name = str(cfg.get("name") or time.strftime("%Y-%m-%d_%H-%M-%S"))
    report_dir = Path(cfg.get("report_dir") or Path("reports") / name)
    files = write_report(ev, groups, skipped, s, report_dir, name, html_too=bool(cfg.get("html", True)))
    files["manifest.json"] = write_manifest(report_dir, build_manifest("evaluate", cfg, extra=_runs_provenance(runs)))
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in files.values())
    _say(f"report: {files['report.md']} ({len(files)} files, {size / 1e3:.0f} kB, {seconds:.1f} s; "
         f"groups: {', '.join(order_groups(groups))})")
    if skipped:
        _say(f"skipped {len(skipped)} run(s): " + "; ".join(f"{p} ({why})" for p, why in skipped))
    if cfg.get("output"):
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        ev.table.to_csv(cfg.output, index=False)
        log.info("comparison table written to %s", cfg.output)
    if cfg.get("log_wandb", False):
        log_to_wandb(report_dir, files, ev, cfg, name)
    return ev.table
