"""Reporting checklist filled from what the runs wrote (``manifest.json``, ``config_resolved.yaml``,
``metrics.json``, ``predictions.csv``; read through :mod:`radfusion.evaluation.facts`). The scored RQS
and TRIPOD-AI tables are :mod:`radfusion.evaluation.rqs` and :mod:`radfusion.evaluation.tripod`.

Items the run does not record are "not recorded" rather than guessed; the checklist says what was
*documented*, not whether the choices were good.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from radfusion.evaluation import facts
from radfusion.evaluation.analysis import Settings
from radfusion.evaluation.facts import NOT_RECORDED
from radfusion.evaluation.run_folders import Run, group_frame, site_summary

NOT_STATED = NOT_RECORDED  # the run does not say


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict → ``{"a.b.c": value}`` (lists kept as values)."""
    if not isinstance(cfg, dict):
        return {prefix: cfg}
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _keys_with(cfg: dict, words: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in flatten(cfg).items() if any(w in k.lower() for w in words)}


def _validation(runs: list[Run], frame: pd.DataFrame, s: Settings) -> tuple[str, str]:
    folds, repeats = frame["fold"].nunique(), frame["repeat"].nunique()
    split = facts.split_settings(runs[0])
    predicted = [r for r in runs if facts.is_external(r)]
    if predicted:
        design = f"external: {len(predicted)} predict run(s) of a trained model on another cohort"
    elif folds > 1:
        design = (f"{folds}-fold cross-validation × {repeats} repeat(s)"
                  + (f" (strategy {split['strategy']})" if split.get("strategy") else ""))
    elif split:
        design = (f"hold-out: test fraction {split.get('test_fraction', '?')}, validation fraction "
                  f"{split.get('val_fraction', '?')}, split seed {split.get('seed', '?')}")
    else:
        design = f"{s.split} split (split design {NOT_STATED})"
    sites = site_summary(frame, s.split)
    if predicted:
        cohorts = sorted({facts.cohort_line(r) for r in predicted})
        external = f"yes: predict run(s) on {'; '.join(cohorts)}"
    elif not sites["test_sites"]:
        external = NOT_STATED + " (no site column)"
    elif sites["unseen"] and len(sites["unseen"]) == len(sites["test_sites"]):
        external = f"yes: {s.split} sites {sites['unseen']} unseen in training"
    elif sites["unseen"]:
        external = f"partly: {s.split} sites {sites['unseen']} unseen in training, others seen"
    else:
        external = f"no: internal validation ({s.split} sites {sites['test_sites']} also in training)"
    return design, external


def excluded_subjects(runs: list[Run]) -> dict[str, str] | None:
    """Subjects the group's runs left out (``metrics.json`` ``excluded_subjects``: validation with
    ``skip_invalid``, failed extraction or ROI), merged over the runs; None when no run says."""
    stated = [r.manifest["excluded"] if isinstance(r.manifest.get("excluded"), dict) else r.meta["excluded_subjects"]
              for r in runs if isinstance(r.manifest.get("excluded"), dict)
              or isinstance(r.meta.get("excluded_subjects"), dict)]
    if not stated:
        return None
    return {sid: str(reason) for ex in stated for sid, reason in ex.items()}


def excluded_line(excluded: dict[str, str] | None, limit: int | None = 5, width: int | None = 100) -> str:
    """``"2 subjects excluded: P3 — validation: ...; P7 — extraction: ..."``: at most ``limit`` subjects,
    each reason cut to ``width`` characters (None: all, uncut); "none" or "not stated" otherwise."""
    if excluded is None:
        return NOT_STATED
    if not excluded:
        return "none"
    items = sorted(excluded.items())
    shown = items if limit is None else items[:limit]
    parts = []
    for sid, reason in shown:
        if width is not None and len(reason) > width:
            reason = reason[: width - 1] + "…"
        parts.append(f"{sid} — {reason}")
    if len(shown) < len(items):
        parts.append(f"… {len(items) - len(shown)} more (metrics.json)")
    return f"{len(items)} {'subject' if len(items) == 1 else 'subjects'} excluded: " + "; ".join(parts)


def _stated(cfg: dict, words: tuple[str, ...]) -> str:
    found = {k: v for k, v in _keys_with(cfg, words).items() if not k.startswith(("paths.", "hydra."))}
    if not found:
        return NOT_STATED
    return "; ".join(f"{k}={v}" for k, v in list(found.items())[:4])


def _harmonisation(run: Run) -> str:
    pro = facts.processing(run)
    if not pro:
        return NOT_STATED
    if not pro.get("combat"):
        return "none (data.processing.combat=false)"
    cov = pro.get("combat_covariates") or []
    return "ComBat by site, fitted on the training split" + (f", preserving {', '.join(cov)}" if cov else "")


def _selection(run: Run) -> str:
    steps = facts.feature_reduction(run)
    if steps:
        return "in-fold (fitted on each training split): " + "; ".join(steps)
    if not run.config and not run.manifest:
        return NOT_STATED
    return f"none recorded: all {run.meta.get('n_radiomics_model', '?')} features reach the model"


def _provenance(run: Run) -> str:
    m = run.manifest
    if not m:
        return "no manifest.json in the run folder"
    git = m.get("git") or {}
    commit = (git.get("commit") or "")[:10] or NOT_STATED
    return (f"manifest.json ({m.get('kind', '?')}): radfusion {m.get('radfusion_version', '?')}, git {commit}"
            + (" (uncommitted changes)" if git.get("dirty") else ""))


def _leakage(run: Run) -> str:
    splits_file = run.manifest.get("splits_file") or run.meta.get("splits_file")
    if not splits_file:
        return NOT_STATED
    sha = run.manifest.get("splits_sha1")
    return (f"subject-level split file {splits_file}" + (f" (sha1 {sha[:12]})" if sha else "")
            + "; feature processing fitted on the training split only")


def checklist(groups: dict[str, list[Run]], names: list[str], s: Settings) -> pd.DataFrame:
    """One row per reporting item, one column per group; every value from the runs (see :mod:`facts`)."""
    items = ["Cohort", "Validation design", "External validation", "Confidence intervals", "Seeds / replicates",
             "Events per feature (training)", "Preprocessing (radiomics)", "ROI (image models)", "Segmentation",
             "Harmonisation", "Feature selection", "Clinical covariates", "Unknown labels", "Excluded subjects",
             "Leakage control", "Calibration assessed", "Multiple comparisons", "Configuration saved", "Provenance"]
    table = {"item": items}
    for name in names:
        runs = groups[name]
        first, frame = runs[0], group_frame(runs)
        cfg = first.config
        design, external = _validation(runs, frame, s)
        seeds = sorted({str(r.seed) for r in runs})
        test = frame[frame.split == s.split].drop_duplicates("subject_id")
        unknown = [f"{m}: {int(test[f'label_{m}'].isna().sum())}" for m in first.markers if f"label_{m}" in test]
        if first.has_survival:
            n_missing = int((test["os_days"].isna() | test["os_event"].isna()).sum())
            unknown.append(f"os: {n_missing} without survival time or status")
        clinical = facts.clinical_columns(first)
        table[name] = [
            facts.cohort_line(first), design, external,
            f"yes: {1 - s.alpha:.0%} bootstrap CIs, {s.n_bootstrap} subject resamples (this report)",
            f"{len(runs)} run(s), seeds {', '.join(seeds)}; {facts.replicate_label(runs)}",
            facts.epv_line(runs), facts.preprocessing_line(first), facts.roi_line(first) or "no image model",
            _stated(cfg, ("segment", "nnunet")), _harmonisation(first), _selection(first),
            NOT_STATED if clinical is None else (", ".join(clinical) or "none (radiomics / image features only)"),
            f"excluded from metrics ({s.split}): " + (", ".join(unknown) or "none"),
            excluded_line(excluded_subjects(runs)), _leakage(first),
            "yes: reliability curve, calibration slope and intercept with bootstrap CIs, Brier score (this report)"
            if first.markers else "no calibration statistic for survival predictions (integrated Brier score only)",
            "Holm correction per endpoint over the pairwise tests (this report)",
            "yes: config_resolved.yaml" if cfg else NOT_STATED, _provenance(first),
        ]
    return pd.DataFrame(table)


IGNORED_PREFIXES = ("paths.", "hydra.", "logger.", "callbacks.model_checkpoint.dirpath",
                    "callbacks.last_checkpoint.dirpath", "trainer.default_root_dir",
                    "data.cache_dir", "data.splits_dir", "task_name", "tags", "seed")


def config_differences(groups: dict[str, list[Run]], names: list[str], max_rows: int = 60) -> pd.DataFrame:
    """Settings whose values differ between groups (first run of each), paths and seeds left out.

    A sub-tree present in some groups only (e.g. ``model.encoder.*`` of the image modes) is one row
    saying where it is set, when its values agree wherever present.
    """
    flat = {n: flatten(groups[n][0].config) for n in names}
    keys = sorted(set().union(*[f.keys() for f in flat.values()])) if flat else []
    parents = {k.rsplit(".", 1)[0] for k in keys if "." in k}
    rows, partial = [], {}
    for k in keys:
        if k.startswith(IGNORED_PREFIXES) or k in parents:  # a None leaf where others have a sub-tree
            continue
        values = [flat[n].get(k, _MISSING) for n in names]
        if len({repr(v) for v in values}) == 1:
            continue
        present = [v for v in values if v is not _MISSING]
        if len(present) < len(values) and len({repr(v) for v in present}) == 1 and "." in k:
            prefix = k.rsplit(".", 1)[0]
            partial.setdefault((prefix, tuple(v is not _MISSING for v in values)), []).append(k)
            continue
        rows.append({"setting": k, **{n: ("—" if v is _MISSING else v) for n, v in zip(names, values, strict=True)}})
    for (prefix, where), ks in partial.items():
        rows.append({"setting": f"{prefix}.* ({len(ks)} settings, equal where set)",
                     **{n: ("set" if w else "—") for n, w in zip(names, where, strict=True)}})
    rows.sort(key=lambda r: r["setting"])
    return pd.DataFrame(rows[:max_rows], columns=["setting", *names])


_MISSING = object()
