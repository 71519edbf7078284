"""``predict(cfg)``: apply a trained model bundle to any cohort (``python predict.py model=<run> data=<cohort>``).

What happens, in order (nothing is refitted):

1. the bundle (``<run>/model/``, :mod:`radfusion.training.bundle`) is read and checked;
2. the cohort of ``data.cohort`` is read and validated like a training cohort, with the bundle's
   sequences; features are extracted and ROIs built with the **bundle's** settings (the caches are
   shared with training, so subjects seen before cost nothing);
3. the bundle's fitted processor turns the raw radiomics into the model's inputs; ComBat meets
   sites it never saw with ``combat_unseen`` (``identity``: leave them unadjusted; ``estimate``: the
   new site's location/scale from its own subjects, labels unused; default the training choice);
4. the network (or the classical model) scores every subject.

The run folder gets ``predictions.csv`` (the training runs' schema, ``split = external``),
``metrics.json`` (AUC / C-index with CIs where labels exist, the ComBat policy, unseen sites, the
subjects without labels), ROC plots and ``manifest.json``. ``evaluate.py`` reads it like any run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from radfusion.cohort.subject import CohortError
from radfusion.data.dataset import SubjectDataset
from radfusion.data.prepare import prepare_cohort
from radfusion.data.targets import marker_labels, survival_table
from radfusion.evaluation.metrics import auc_entries
from radfusion.evaluation.plots import plot_roc
from radfusion.evaluation.survival import harrell_c
from radfusion.imaging.roi import ROISettings
from radfusion.radiomics.settings import FeatureSettings
from radfusion.training.bundle import Bundle, BundleError, load_bundle, subject_hash
from radfusion.training.memory_format import batch_to_channels_last, module_to_channels_last

log = logging.getLogger(__name__)

#: The split value of predicted subjects in ``predictions.csv``.
EXTERNAL = "external"


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})


def bundle_settings(bundle: Bundle) -> tuple[FeatureSettings, ROISettings]:
    """The feature and ROI settings the model was trained with, checked against their recorded cache keys."""
    features = dict(bundle["features"])
    if features.get("params_file"):
        features["params_file"] = bundle.params_file()
    settings = FeatureSettings.from_config(features)
    if bundle["uses_radiomics"] and settings.cache_key() != bundle["feature_settings_hash"]:
        import radiomics

        raise BundleError(
            f"bundle {bundle.path}: its feature settings give cache key {settings.cache_key()[:12]}, not the "
            f"{bundle['feature_settings_hash'][:12]} it was trained with: the features would differ from training "
            f"(PyRadiomics here is {radiomics.__version__}, the bundle was made with "
            f"{bundle['versions'].get('pyradiomics')}; or its parameter file changed). Install the bundle's "
            "PyRadiomics version or retrain")
    roi = {k: v for k, v in bundle["roi"].items() if k != "key"}
    roi["sequences"], roi["habitats"] = tuple(roi["sequences"]), tuple(roi["habitats"])
    return settings, ROISettings(**roi)


def cohort_for_bundle(bundle: Bundle, cohort_cfg: dict) -> dict:
    """The cohort block to read: the user's cohort with the bundle's sequences (refused if it lacks one)."""
    cohort_cfg = dict(cohort_cfg)
    needed = list(bundle["cohort"].get("sequences") or bundle["features"]["sequences"])
    have = cohort_cfg.get("sequences")
    if have is not None and [s for s in needed if s not in have]:
        raise CohortError(f"bundle {bundle.path} needs sequence(s) {[s for s in needed if s not in have]} that the "
                          f"cohort does not have (data.cohort.sequences = {list(have)}). A model uses the sequences "
                          "it was trained on; train one on the sequences this cohort has")
    cohort_cfg["sequences"] = needed
    if cohort_cfg.get("label_convention") != bundle["cohort"].get("label_convention"):
        log.info("cohort labels read as %s (the model was trained on %s); habitats are matched by name",
                 cohort_cfg.get("label_convention"), bundle["cohort"].get("label_convention"))
    if cohort_cfg.get("source") == "feature_table" and bundle["uses_images"]:
        raise CohortError(f"bundle {bundle.path} is a {bundle['mode']} model that needs images; a feature table "
                          "has none. Use a handcrafted or baseline bundle, or a cohort with images")
    return cohort_cfg


def model_inputs(bundle: Bundle, prepared, ids: list[str], combat_unseen: str | None) -> tuple[dict, dict]:
    """``({"radiomics": (N, F), "clinical": (N, C)}, info)`` from the bundle's fitted transforms."""
    clinical = prepared.cohort.clinical
    inputs, info = {}, {}
    if bundle["uses_radiomics"]:
        table = prepared.features.loc[ids]
        names = bundle["feature_names_in"]
        missing = [c for c in names if c not in table.columns]
        if missing:
            raise CohortError(
                f"bundle {bundle.path} was trained on {len(names)} feature columns; this cohort lacks {len(missing)}: "
                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}. A feature table must hold the training "
                "columns (same names, same extraction settings)")
        processor = bundle.load("processor.skops")
        policy = combat_unseen or bundle["combat_unseen"]
        sites = clinical.loc[ids, "site"].astype(str)
        if processor.combat_ is not None:
            if policy not in ("identity", "estimate"):
                raise ValueError(f"combat_unseen must be identity or estimate, got {policy!r}")
            processor.combat_unseen = processor.combat_.unseen = policy
            unseen = sorted(set(sites) - set(bundle["training_sites"]))
            info.update(combat_unseen=policy, unseen_sites=unseen)
            if unseen:
                log.info("ComBat: site(s) %s not seen in training: %s", unseen,
                         "left unadjusted" if policy == "identity" else "location/scale estimated from their own "
                         "subjects (no labels)")
        covariates = clinical.loc[ids, bundle["combat_covariates"]]
        inputs["radiomics"] = processor.transform(table[names], sites=sites, covariates=covariates)
        info["processor_warnings"] = dict(processor.warnings_)
    if bundle["clinical_columns"]:
        inputs["clinical"] = np.asarray(bundle.clinical().transform(clinical.loc[ids]), dtype=np.float64)
    return inputs, info


def _network_scores(bundle: Bundle, prepared, ids: list[str], inputs: dict, labels: np.ndarray,
                    cache_dir: Path, batch_size: int) -> dict[str, np.ndarray]:
    module = bundle.network()
    embeddings = None
    roi_paths = None
    if bundle["uses_images"]:
        roi_paths = [prepared.roi_paths[s] for s in ids]
        if bundle["model"].get("frozen_encoder"):
            from radfusion.training.frozen import compute_embeddings

            emb = compute_embeddings(module.net.encoder, dict(zip(ids, roi_paths, strict=True)), cache_dir,
                                     batch_size=max(batch_size, 8))
            embeddings = np.stack([emb[s] for s in ids])
    extra = {"clinical": inputs["clinical"]} if "clinical" in inputs else {}
    dataset = SubjectDataset(ids, labels, radiomics=inputs.get("radiomics"), roi_paths=roi_paths,
                             embeddings=embeddings, **extra)
    out: dict[str, list] = {"probs": [], "risk": []}
    # The run's own predictions came through Lightning under the training precision and memory format:
    # score the same way, so that a bundle on its training cohort reproduces them.
    bf16 = bundle["model"].get("precision") == "bf16-mixed"
    channels_last = bool(bundle["model"].get("channels_last")) and embeddings is None
    if channels_last:
        module_to_channels_last(module)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            if channels_last:
                batch_to_channels_last(batch)
            res = module.outputs_to_predictions(module(batch))
            out["probs"].append(res["probs"])
            if "risk" in res:
                out["risk"].append(res["risk"])
    return {k: np.concatenate(v) for k, v in out.items() if v}


def _baseline_scores(bundle: Bundle, inputs: dict) -> dict[str, np.ndarray]:
    from radfusion.baselines.estimators import positive_probability

    X = np.hstack([inputs[k] for k in ("radiomics", "clinical") if k in inputs])
    models = bundle.load("baseline.skops")
    res = {}
    if bundle["targets"] and not bundle["survival"]:
        res["probs"] = np.column_stack([positive_probability(models[t], X) for t in bundle["targets"]])
    if "survival" in models:
        kw = bundle["model"].get("predict_kw") or {}
        res["risk"] = np.asarray(models["survival"].predict(X, **kw), dtype=np.float64)
    return res


def predict(cfg: DictConfig) -> dict:
    """Score the cohort of ``cfg.data.cohort`` with the bundle ``cfg.bundle``; return the metrics written."""
    t0 = time.perf_counter()
    bundle = load_bundle(cfg.bundle)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    cohort_cfg = cohort_for_bundle(bundle, _plain(cfg.data.cohort))
    features, roi = bundle_settings(bundle)
    cache_dir = Path(cfg.data.cache_dir)
    log.info("applying %s (%s, %s) to %s cohort %s", bundle.path, bundle["experiment"], bundle["mode"],
             cohort_cfg["source"], cohort_cfg.get("path"))
    prepared = prepare_cohort(cohort_cfg, features, roi, cache_dir, use_images=bundle["uses_images"],
                              use_radiomics=bundle["uses_radiomics"], n_jobs=int(cfg.get("n_jobs", 1)),
                              progress=bool(cfg.get("progress", True)), min_subjects=1)
    ids = list(prepared.ids)
    if cfg.get("subjects"):
        wanted = [str(s) for s in cfg.subjects]
        unknown = [s for s in wanted if s not in ids]
        if unknown:
            raise CohortError(f"subjects {unknown} are not in the cohort (or were excluded: "
                              f"{ {s: prepared.failures[s] for s in unknown if s in prepared.failures} })")
        ids = wanted
    if not ids:
        raise CohortError(f"no subject of {cohort_cfg.get('path')} survived validation/extraction: "
                          f"{prepared.failures}")
    clinical = prepared.cohort.clinical
    targets, survival = list(bundle["targets"]), bool(bundle["survival"])
    labels = marker_labels(clinical, ids, targets, bundle["codeletion_idh_mutant_only"])
    inputs, info = model_inputs(bundle, prepared, ids, cfg.get("combat_unseen"))
    if bundle["kind"] == "network":
        scores = _network_scores(bundle, prepared, ids, inputs, labels, cache_dir, int(cfg.get("batch_size", 8)))
    else:
        scores = _baseline_scores(bundle, inputs)

    table = pd.DataFrame({"subject_id": ids, "split": EXTERNAL, "fold": 0, "repeat": 0})
    for t, name in enumerate(targets):
        table[f"prob_{name}"] = scores["probs"][:, t]
        table[f"label_{name}"] = labels[:, t]
    if survival:
        table["risk"] = scores["risk"]
    table["site"] = clinical.loc[ids, "site"].astype(str).to_numpy()
    if survival:
        surv = survival_table(clinical, ids)
        table["os_days"], table["os_event"] = surv["os_days"].to_numpy(), surv["os_event"].to_numpy()
    seen_hashes = bundle.meta.get("seen_subject_hashes")
    table["seen_in_training"] = [subject_hash(i) in set(seen_hashes or ()) for i in ids]
    seen = table.loc[table["seen_in_training"], "subject_id"].tolist()
    table.to_csv(out_dir / "predictions.csv", index=False)
    if seen_hashes is None:
        log.warning("this bundle does not record its training subjects (made before radfusion recorded them): "
                    "whether this cohort overlaps them cannot be checked")
    elif seen:
        log.warning("%d of %d subject(s) were in the model's training or validation split: predicted, not scored "
                    "(a score on them would not be external): %s", len(seen), len(ids),
                    ", ".join(seen[:10]) + (" ..." if len(seen) > 10 else ""))

    scored = table[~table["seen_in_training"]]
    metrics = _external_metrics(scored, targets, survival, out_dir, bundle, int(cfg.get("n_bootstrap", 2000)))
    metrics["seen_in_training"] = None if seen_hashes is None else seen
    metrics.update(info)
    metrics.update({
        "experiment": bundle["experiment"], "mode": bundle["mode"], "kind": "predict", "validation": "external",
        "bundle": str(bundle.path), "targets": targets, "survival": survival, "n_subjects": {EXTERNAL: len(ids)},
        "n_scored": len(scored),
        "cohort": {"source": cohort_cfg["source"], "path": str(cohort_cfg.get("path"))},
        "excluded_subjects": dict(prepared.failures), "n_excluded": len(prepared.failures),
        "seconds_total": round(time.perf_counter() - t0, 1),
        "seconds_per_subject": round((time.perf_counter() - t0) / len(ids), 3),
    })
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    _write_manifest(out_dir, cfg, prepared, bundle, features)
    for name, missing in metrics["unlabelled"].items():
        if missing:
            log.info("%s: %d of %d subject(s) have no label (predicted, not scored): %s", name, len(missing),
                     len(ids), ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    for name in targets:
        if not math.isnan(metrics[f"{EXTERNAL}/auc_{name}"]):
            log.info("external AUC (%s): %.3f [95%% CI %.3f–%.3f], n=%d", name, metrics[f"{EXTERNAL}/auc_{name}"],
                     metrics[f"{EXTERNAL}/auc_{name}_ci_low"], metrics[f"{EXTERNAL}/auc_{name}_ci_high"],
                     metrics[f"{EXTERNAL}/auc_{name}_n"])
    log.info("predictions for %d subject(s) in %s", len(ids), out_dir)
    return metrics


def _external_metrics(table: pd.DataFrame, targets: list[str], survival: bool, out_dir: Path, bundle: Bundle,
                      n_boot: int) -> dict:
    metrics: dict = {"unlabelled": {}}
    for name in targets:
        lab = table[f"label_{name}"]
        metrics["unlabelled"][name] = table.loc[lab.isna(), "subject_id"].tolist()
        metrics.update(auc_entries(EXTERNAL, name, lab.to_numpy(float), table[f"prob_{name}"].to_numpy(float), n_boot))
        if lab.notna().any():
            plot_roc({EXTERNAL: (lab, table[f"prob_{name}"])},
                     out_dir / ("roc.png" if name == targets[0] else f"roc_{name}.png"),
                     f"{bundle['experiment']} on an external cohort — {name.upper()}")
    if survival:
        known = table["os_days"].notna() & table["os_event"].notna()
        metrics["unlabelled"]["survival"] = table.loc[~known, "subject_id"].tolist()
        metrics[f"{EXTERNAL}/cindex"] = harrell_c(table["os_days"].to_numpy(float), table["os_event"].to_numpy(float),
                                                 table["risk"].to_numpy(float))
    return metrics


def _write_manifest(out_dir: Path, cfg, prepared, bundle: Bundle, features: FeatureSettings) -> None:
    from radfusion.provenance import build_manifest, write_manifest

    write_manifest(out_dir, build_manifest("predict", cfg, cohort=prepared,
                                           feature_settings=features if bundle["uses_radiomics"] else None,
                                           extra={"bundle": str(bundle.path), "bundle_meta": {
                                               k: bundle.meta.get(k) for k in ("experiment", "mode", "targets",
                                                                               "radfusion_version",
                                                                               "feature_settings_hash")}}))
