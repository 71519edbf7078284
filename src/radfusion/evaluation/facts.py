"""What a run folder says about itself, for the report, the checklist, RQS and TRIPOD-AI.

Every fact comes from the run: its ``manifest.json`` (:func:`radfusion.provenance.read_manifest`)
first, then its resolved config (``config_resolved.yaml`` or ``.hydra/config.yaml``), then
``metrics.json`` and ``predictions.csv``. Nothing falls back to a default: what none of them says is
:data:`NOT_RECORDED`. A feature table's preprocessing is "as supplied in <file>, not computed by
radfusion" unless the user declared it (``data.cohort.provenance: {...}``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from radfusion.evaluation.run_folders import Run, group_frame

NOT_RECORDED = "not recorded"
PUBLIC_SOURCES = ("brats2021", "brats2023")  # public collections with expert segmentations


def get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``; ``default`` when any level is missing or None."""
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or cur.get(part) is None:
            return default
        cur = cur[part]
    return cur


def cohort_block(run: Run) -> dict:
    """The manifest's ``cohort`` record, else the config's ``data.cohort`` block ({} when neither)."""
    block = get(run.manifest, "cohort")
    if isinstance(block, dict) and block:
        return block
    return get(run.config, "data.cohort") or get(run.config, "cohort") or {}


def is_synthetic(run: Run) -> bool:
    """True only when the manifest or the config says the cohort is the synthetic one."""
    block = get(run.manifest, "cohort")
    if isinstance(block, dict) and "synthetic" in block:
        return bool(block["synthetic"])
    return cohort_block(run).get("source") == "synthetic"


def _short(sha: str | None) -> str:
    return f", sha1 {sha[:12]}" if sha else ""


def cohort_line(run: Run) -> str:
    """Source and file (or folder) of the cohort, with its content hash and size when recorded."""
    c = cohort_block(run)
    source = c.get("source")
    if not source:
        return NOT_RECORDED
    n = c.get("n_subjects") or get(run.manifest, "cohort.n_subjects")
    size = f"; {n} subjects" if n else ""
    if source == "feature_table":
        table = c.get("features") or c.get("path") or get(run.manifest, "settings.preprocessing.as_supplied_in")
        clinical = c.get("clinical")
        return (f"feature table {table or NOT_RECORDED}{_short(c.get('content_sha1'))}"
                + (f" + clinical table {clinical}{_short(c.get('clinical_sha1'))}" if clinical else "") + size)
    where = c.get("path") or NOT_RECORDED
    if is_synthetic(run):
        gen = c.get("generator") or c.get("synthetic") or {}
        settings = ", ".join(f"{k} {gen[k]}" for k in ("n_subjects", "seed", "effect_scale") if k in gen)
        return (f"synthetic ({where}{'; ' + settings if settings else ''}{_short(c.get('content_sha1'))}): "
                "exercises the machinery, no clinical claim")
    return f"{source}: {where}{_short(c.get('content_sha1'))}{size}"


def _settings(run: Run, key: str) -> Any:
    """``manifest.settings.<key>`` when the manifest has a settings block, else ``...`` (not recorded)."""
    settings = get(run.manifest, "settings")
    return settings.get(key) if isinstance(settings, dict) else ...


def uses_radiomics(run: Run) -> bool | None:
    flag = get(run.manifest, "settings.uses_radiomics")
    if flag is not None:
        return bool(flag)
    if run.mode == "deep" or run.meta.get("n_radiomics_model") == 0:
        return False
    return None if not run.config else True


def preprocessing_line(run: Run) -> str:
    """Preprocessing, habitats, image types and bin width from the run's own settings."""
    c = cohort_block(run)
    if c.get("source") == "feature_table":
        table = c.get("features") or c.get("path") or get(run.manifest, "settings.preprocessing.as_supplied_in")
        declared = c.get("provenance") or get(run.manifest, "settings.preprocessing.declared")
        if isinstance(declared, dict) and declared:
            return ("declared by the user (data.cohort.provenance): "
                    + "; ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                                for k, v in declared.items()) + f" — table {table}")
        return (f"as supplied in {table or NOT_RECORDED}, not computed by radfusion "
                "(declare it with data.cohort.provenance={...})")
    if uses_radiomics(run) is False:
        return "no handcrafted radiomics (image model)"
    pre = _settings(run, "preprocessing")
    if pre is ...:  # no manifest: the resolved config says what the extraction used
        feats = get(run.config, "data.features") or get(run.config, "features")
        if not isinstance(feats, dict):
            return NOT_RECORDED
        pre = {**{k: feats.get(k, ...) for k in ("spacing", "normalize", "normalize_scale", "habitats")},
               "bin_width": get(feats, "params.setting.binWidth"), "bin_count": get(feats, "params.setting.binCount"),
               "image_types": sorted((get(feats, "params.imageType") or {}).keys()) or None,
               "params_file": feats.get("params_file")}
    if not isinstance(pre, dict):
        return NOT_RECORDED
    parts = []
    if pre.get("params_file"):
        parts.append(f"PyRadiomics parameter file {pre['params_file']} (its settings are not copied into the run)")
    spacing = pre.get("spacing", ...)
    parts.append(f"resampled to {spacing} mm" if spacing not in (None, ...) else
                 ("native voxel grid (no resampling)" if spacing is None else f"resampling {NOT_RECORDED}"))
    norm = pre.get("normalize", ...)
    parts.append(f"intensity {norm} (×{pre.get('normalize_scale', 1)})" if norm not in (None, ..., "none", False)
                 else ("no intensity normalisation by radfusion" if norm in ("none", False, None)
                       else f"normalisation {NOT_RECORDED}"))
    if pre.get("bin_count"):
        parts.append(f"bin count {pre['bin_count']}")
    elif pre.get("bin_width") is not None:
        parts.append(f"bin width {pre['bin_width']}")
    types = pre.get("image_types")
    parts.append(f"image types {', '.join(types)}" if types else f"image types {NOT_RECORDED}")
    habitats = pre.get("habitats", ...)
    parts.append(f"habitats {', '.join(map(str, habitats))}" if habitats not in (None, ...)
                 else f"habitats {NOT_RECORDED}")
    return "; ".join(parts)


def roi_line(run: Run) -> str | None:
    """ROI settings of image models (None for models without images)."""
    if run.mode not in ("deep", "hybrid"):
        return None
    roi = _settings(run, "roi")
    if roi is ...:
        roi = get(run.config, "data.roi")
    if not isinstance(roi, dict):
        return NOT_RECORDED
    return (f"{roi.get('size', '?')}³ voxels at {roi.get('spacing', '?')} mm, channels "
            f"{', '.join(map(str, roi.get('sequences') or [])) or NOT_RECORDED}"
            + (f" + habitats {', '.join(roi['habitats'])}" if roi.get("habitats") else ""))


def processing(run: Run) -> dict:
    pro = _settings(run, "processing")
    return pro if isinstance(pro, dict) else (get(run.config, "data.processing") or {})


def split_settings(run: Run) -> dict:
    split = _settings(run, "split")
    return split if isinstance(split, dict) else (get(run.config, "data.split") or {})


def clinical_columns(run: Run) -> list[str] | None:
    """Non-radiomic covariates the model used (``model.clinical``); None when the config does not say."""
    if not run.config:
        return None
    cols = get(run.config, "model.clinical")
    return [str(c) for c in cols] if isinstance(cols, list) else []


def feature_reduction(run: Run) -> list[str]:
    """The in-fold feature-reduction steps the run recorded (selector, filters, sparse penalty)."""
    pro, out = processing(run), []
    if pro.get("selector"):
        out.append(f"selector {pro['selector']} ({pro.get('n_features') or 'auto'} features)")
    if pro.get("corr_threshold"):
        out.append(f"correlation filter |r| > {pro['corr_threshold']}")
    if pro.get("min_icc"):
        out.append(f"stability filter ICC ≥ {pro['min_icc']}")
    if (pro.get("variance_threshold") or 0) > 0:
        out.append(f"variance threshold {pro['variance_threshold']}")
    est = get(run.config, "model.estimator") or {}
    if (est.get("l1_ratio") or 0) > 0 or est.get("penalty") in ("l1", "elasticnet"):
        model = str(est.get("_target_", "")).rsplit(".", 1)[-1]
        out.append(f"sparse penalty ({model}, l1_ratio {est.get('l1_ratio')})")
    return out


def is_external(run: Run) -> bool:
    """A predict run (manifest kind ``predict``, or ``metrics.json`` ``validation: external``) evaluates a
    trained model on another cohort."""
    return get(run.manifest, "kind") == "predict" or run.meta.get("validation") == "external"


def replicate_label(runs: list[Run]) -> str:
    """What the replicates (``run × repeat``) of a group are: ``k=5 folds``, ``k=3 seeds``, ``k=6: 2 seeds × 3
    folds``; from the runs' seeds, repeats and the folds of their test rows (``k=2 replicates`` otherwise)."""
    by_path = {str(r.path): r for r in runs}
    frame = group_frame(runs)
    test = frame[frame.split != "train"]
    units = test.groupby(["run", "repeat"])["fold"].agg(lambda f: tuple(sorted(set(f))))
    k = len(units)
    seeds = {by_path[run].seed for run, _ in units.index}
    repeats = {(get(by_path[run].config, "data.split.repeat", 0), rep) for run, rep in units.index}
    parts = [f"{len(seeds)} seeds"] if len(seeds) > 1 else []
    if len(repeats) > 1:
        parts.append(f"{len(repeats)} repeats")
    if len(set(units)) > 1 and all(len(f) == 1 for f in units):  # each replicate is one fold of a CV
        parts.append(f"{len(set(units))} folds")
    if not parts:
        return f"k={k} replicate{'s' if k != 1 else ''}"
    if len(parts) == 1 and parts[0].startswith(f"{k} "):
        return f"k={parts[0]}"  # "k=5 folds"
    return f"k={k}: " + " × ".join(parts)


def _quantiles(values: list[float], fmt: str = "g") -> str:
    v = np.asarray(values, float)
    if len(v) == 1 or np.ptp(v) == 0:
        return f"{v[0]:{fmt}}"
    return f"min {np.min(v):{fmt}} / median {np.median(v):{fmt}}"


def epv_per_model(runs: list[Run]) -> pd.DataFrame:
    """Per fitted model ``(run, repeat, fold)``: training subjects with a known outcome, events and EPV.

    Events are the smaller class of a marker, or deaths among subjects with both a survival time and
    an event status. The number of candidate predictors is that run's ``metrics.json``
    ``n_radiomics_model`` plus its clinical columns; NaN EPV when the run does not record it.
    """
    rows = []
    for run in runs:
        n_feat = run.meta.get("n_radiomics_model")
        n_clin = len(clinical_columns(run) or [])
        p = (int(n_feat) + n_clin) if isinstance(n_feat, int | float) else None
        train = run.predictions[run.predictions.split == "train"]
        for (rep, fold), part in train.groupby(["repeat", "fold"]):
            part = part.drop_duplicates("subject_id")
            for m in run.markers:
                lab = part[f"label_{m}"].dropna()
                events = int(min(lab.sum(), len(lab) - lab.sum()))
                rows.append({"run": str(run.path), "repeat": rep, "fold": fold, "endpoint": m, "n": len(lab),
                             "events": events, "n_predictors": p, "epv": events / p if p else np.nan})
            if run.has_survival:
                known = part.os_days.notna() & part.os_event.notna()
                events = int(part.loc[known, "os_event"].sum())
                rows.append({"run": str(run.path), "repeat": rep, "fold": fold, "endpoint": "os", "n": int(known.sum()),
                             "events": events, "n_predictors": p, "epv": events / p if p else np.nan})
    return pd.DataFrame(rows, columns=["run", "repeat", "fold", "endpoint", "n", "events", "n_predictors", "epv"])


def epv_line(runs: list[Run]) -> str:
    """``idh: 12 events (smaller class) of 48 training subjects / 30 predictors → EPV 0.40`` per endpoint,
    min / median over the fitted models when there are several."""
    table = epv_per_model(runs)
    if table.empty:
        return NOT_RECORDED
    parts = []
    for endpoint, t in table.groupby("endpoint", sort=False):
        what = "deaths" if endpoint == "os" else "events (smaller class)"
        models = f" over {len(t)} models" if len(t) > 1 else ""
        text = f"{endpoint}: {_quantiles(t.events.tolist())} {what} of {_quantiles(t.n.tolist())} training subjects"
        if runs[0].mode == "deep":
            text += " (predictors: a learned image embedding, no handcrafted count)"
        elif t.n_predictors.isna().any():
            text += f"; number of predictors {NOT_RECORDED}"
        else:
            text += f" / {_quantiles(t.n_predictors.tolist())} predictors → EPV {_quantiles(t.epv.tolist(), '.2g')}"
        parts.append(text + models)
    return "; ".join(parts)
