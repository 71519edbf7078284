"""Reporting checklist in the spirit of RQS (Lambin 2017) and TRIPOD-AI (Collins 2024), filled from
what the runs wrote (``config_resolved.yaml``, ``metrics.json``, ``predictions.csv``).

Items we cannot read from the run are marked "not stated" rather than guessed; the checklist says
what was *documented*, not whether the choices were good.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from radfusion.evaluation.analysis import Settings
from radfusion.evaluation.run_folders import Run, group_frame, site_summary

NOT_STATED = "not stated"


def get(cfg: dict, dotted: str, default: Any = None) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``; ``default`` when any level is missing."""
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


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
    split = get(runs[0].config, "data.split", {}) or {}
    if folds > 1:
        design = f"{folds}-fold cross-validation × {repeats} repeat(s)"
    elif split:
        design = (f"hold-out: test fraction {split.get('test_fraction', '?')}, validation fraction "
                  f"{split.get('val_fraction', '?')}, split seed {split.get('seed', '?')}")
    else:
        design = f"{s.split} split (split design {NOT_STATED})"
    sites = site_summary(frame, s.split)
    if not sites["test_sites"]:
        external = NOT_STATED + " (no site column)"
    elif sites["unseen"] and len(sites["unseen"]) == len(sites["test_sites"]):
        external = f"yes: {s.split} sites {sites['unseen']} unseen in training"
    elif sites["unseen"]:
        external = f"partly: {s.split} sites {sites['unseen']} unseen in training, others seen"
    else:
        external = f"no: internal validation ({s.split} sites {sites['test_sites']} also in training)"
    return design, external


def _epv(run: Run, frame: pd.DataFrame) -> str:
    """Events per feature on the training split: minority-class count (markers) or deaths (survival)."""
    n_feat = run.meta.get("n_radiomics_model")
    mode = run.mode
    parts = []
    train = frame[frame.split == "train"].drop_duplicates("subject_id")
    for m in run.markers:
        lab = train[f"label_{m}"].dropna()
        parts.append(f"{m}: {int(min(lab.sum(), len(lab) - lab.sum()))}")
    if run.has_survival:
        parts.append(f"os: {int(train['os_event'].sum())} deaths")
    events = ", ".join(parts) or NOT_STATED
    if mode == "deep":
        return f"training events {events}; features: learned image embedding (no handcrafted count)"
    if not n_feat:
        return f"training events {events}; feature count {NOT_STATED}"
    ratios = []
    for m in run.markers:
        lab = train[f"label_{m}"].dropna()
        ratios.append(f"{m} {min(lab.sum(), len(lab) - lab.sum()) / n_feat:.3f}")
    if run.has_survival:
        ratios.append(f"os {train['os_event'].sum() / n_feat:.3f}")
    return f"training events {events} / {n_feat} radiomics features → EPV {', '.join(ratios)}"


def _preprocessing(cfg: dict) -> str:
    feats = get(cfg, "data.features") or get(cfg, "features")
    if not isinstance(feats, dict):
        return NOT_STATED
    parts = []
    if "spacing" in feats:
        parts.append(f"resampled to {feats['spacing']} mm")
    if feats.get("normalize"):
        parts.append(f"intensity {feats['normalize']} (×{feats.get('normalize_scale', 1)})")
    bw = get(feats, "params.setting.binWidth")
    if bw is not None:
        parts.append(f"bin width {bw}")
    if feats.get("params_file"):
        parts.append(f"PyRadiomics params file {feats['params_file']}")
    if feats.get("habitats"):
        parts.append(f"habitats {', '.join(map(str, feats['habitats']))}")
    return "yes: " + "; ".join(parts) if parts else NOT_STATED


def excluded_subjects(runs: list[Run]) -> dict[str, str] | None:
    """Subjects the group's runs left out (``metrics.json`` ``excluded_subjects``: validation with
    ``skip_invalid``, failed extraction or ROI), merged over the runs; None when no run says."""
    stated = [r.meta["excluded_subjects"] for r in runs if isinstance(r.meta.get("excluded_subjects"), dict)]
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


def checklist(groups: dict[str, list[Run]], names: list[str], s: Settings) -> pd.DataFrame:
    """One row per reporting item, one column per group."""
    items = ["Cohort", "Validation design", "External validation", "Confidence intervals", "Seeds / replicates",
             "Events per feature (training)", "Preprocessing documented", "Segmentation", "Harmonisation",
             "Feature selection", "Unknown labels", "Excluded subjects", "Leakage control", "Calibration assessed",
             "Multiple comparisons", "Configuration saved"]
    table = {"item": items}
    for name in names:
        runs = groups[name]
        first, frame = runs[0], group_frame(runs)
        cfg = first.config
        source = get(cfg, "data.cohort.source")
        cohort = (f"synthetic ({get(cfg, 'data.cohort.path', '')}): exercises the machinery, no clinical claim"
                  if source == "synthetic" else (f"{source}: {get(cfg, 'data.cohort.path', '')}" if source
                                                 else NOT_STATED))
        design, external = _validation(runs, frame, s)
        seeds = sorted({str(r.seed) for r in runs})
        test = frame[frame.split == s.split].drop_duplicates("subject_id")
        unknown = [f"{m}: {int(test[f'label_{m}'].isna().sum())}" for m in first.markers if f"label_{m}" in test]
        if first.has_survival:
            unknown.append(f"os: {int(test['os_days'].isna().sum() + test['os_event'].isna().sum())} missing values")
        splits_file = first.meta.get("splits_file")
        table[name] = [
            cohort, design, external,
            f"yes: {1 - s.alpha:.0%} bootstrap CIs, {s.n_bootstrap} subject resamples (this report)",
            f"{len(runs)} run(s), seeds {', '.join(seeds)}, {frame[['run', 'repeat']].drop_duplicates().shape[0]} "
            "replicate(s)",
            _epv(first, frame), _preprocessing(cfg), _stated(cfg, ("segment", "nnunet")),
            _stated(cfg, ("combat", "harmon")), _stated(cfg, ("select",)),
            f"excluded from metrics ({s.split}): " + (", ".join(unknown) or "none"),
            excluded_line(excluded_subjects(runs)),
            f"subject-level split file {splits_file}" if splits_file else NOT_STATED,
            "yes: calibration curve, slope and Brier score (this report)",
            "Holm correction per endpoint over the pairwise tests (this report)",
            "yes: config_resolved.yaml" if cfg else NOT_STATED,
        ]
    return pd.DataFrame(table)


IGNORED_PREFIXES = ("paths.", "hydra.", "logger.", "callbacks.model_checkpoint.dirpath", "trainer.default_root_dir",
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
