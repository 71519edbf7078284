"""``train(cfg)``: build datamodule, model, callbacks, loggers and trainer from a Hydra config,
fit, test, and write the run folder.

A run folder (``cfg.paths.output_dir``) holds::

    config_resolved.yaml   the fully resolved config (Hydra also keeps .hydra/)
    checkpoints/           best (by the monitored validation metric) and last.ckpt
    predictions.csv        one row per subject: split, fold, prob_<target>, label_<target>
    metrics.json           test AUC (+95 % bootstrap CI) per target, best val AUC, counts, timings
    roc.png                ROC curves of the test and validation splits
    model/                 the model bundle predict.py applies to other cohorts (radfusion.training.bundle,
                           docs/bundle.md)
    manifest.json          provenance: command, git, versions, cohort and input checksums, splits,
                           exclusions, settings (radfusion.provenance, docs/provenance.md)
    csv/, wandb/           logger output (W&B offline unless WANDB_MODE says otherwise)
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from radfusion.data.splits import SPLITS
from radfusion.explain import explain_baseline, explain_network
from radfusion.provenance import build_manifest, write_manifest
from radfusion.training.bundle import write_bundle
from radfusion.training.frozen import use_frozen_encoder
from radfusion.training.precision import resolve_precision
from radfusion.training.predictions import add_subject_columns, predict_splits, write_run_outputs
from radfusion.training.resume import ResumeState, resume_output_dir
from radfusion.training.tracking import announce_logger_choice, log_config, log_finished_run, log_outputs

log = logging.getLogger(__name__)


def _instantiate_list(cfg: DictConfig | None) -> list:
    """Instantiate every entry of a config group that has a ``_target_`` (callbacks, loggers)."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def _precision(cfg: DictConfig, model, dm, frozen: bool) -> str:
    """The Trainer's precision: ``trainer.precision`` with ``auto`` resolved (radfusion.training.precision)."""
    encoder = None if frozen or not dm.use_images else getattr(getattr(model, "net", None), "encoder", None)
    precision, why = resolve_precision(cfg.trainer.get("precision", "32-true"), cfg.trainer.get("accelerator", "cpu"),
                                       encoder, int(dm.roi_settings.size))
    log.info("precision %s (%s)", precision, why)
    return precision


def missing_setting(err: Exception) -> str:
    """What to tell the user when the composed config still has a ``???`` (OmegaConf's MissingMandatoryValue)."""
    key = getattr(err, "full_key", None) or "a required setting"
    example = "/path/clinical.csv (a CSV with a subject_id column and the labels)" if key.endswith("clinical") \
        else "<value>"
    return f"{key} is required by the chosen config and not set: give it on the command line, e.g. {key}={example}"


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Train and test one model; return ``(metrics, objects)``."""
    t0 = time.perf_counter()
    os.environ.setdefault("WANDB_MODE", "offline")
    resume_output_dir(cfg)  # ckpt_path inside <run>/checkpoints/: continue that run folder
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    announce_logger_choice()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(max(1, int(cfg.get("threads") or torch.get_num_threads())))

    mode = cfg.model.mode
    log.info("building datamodule (mode=%s)", mode)
    uses_images = mode in ("deep", "hybrid")
    dm = instantiate(cfg.data, use_images=uses_images, use_radiomics=mode not in ("deep", "clinical"))
    dm.prepare_data()
    dm.setup("fit")
    t_data = time.perf_counter() - t0
    if cfg.model.get("baseline"):
        return _train_baseline(cfg, dm, out_dir, t0, t_data)

    model = instantiate(cfg.model, radiomics_dim=dm.radiomics_dim or None, clinical_dim=dm.clinical_dim or None)
    callbacks = [*_instantiate_list(cfg.get("callbacks")), ResumeState()]  # RNG + epochs: exact resume
    loggers = _instantiate_list(cfg.get("logger"))
    log_config(loggers, cfg)  # W&B gets the whole resolved config, not only the module's hyperparameters
    # Our samplers shard themselves under DDP (radfusion.data.samplers), so Lightning must not wrap them.
    frozen = use_frozen_encoder(model, dm)  # before the trainer: a frozen encoder trains in fp32
    precision = _precision(cfg, model, dm, frozen)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                      use_distributed_sampler=False, precision=precision)

    if cfg.get("train", True):
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not ckpt:
        log.warning("no best checkpoint found; testing the current weights")
    test_metrics = {}
    if cfg.get("test", True):
        test_metrics = trainer.test(model, datamodule=dm, ckpt_path=ckpt or None, weights_only=True)[0]

    predictions = predict_splits(trainer, model, dm, ckpt or None)
    if not trainer.is_global_zero:  # DDP: rank 0 alone writes the run folder
        return ({**test_metrics, **{("val/auc_best" if k == "val/auc" else f"{k}_best"): float(v)
                                    for k, v in model.best.items()}}, {"cfg": cfg, "trainer": trainer})
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"] if ckpt else model.state_dict()
    # model/: what predict.py applies elsewhere
    write_bundle(out_dir, cfg, dm, model=model, state_dict=state, precision=precision)
    extra = _run_summary(cfg, dm, mode, t0, t_data)
    extra.update({"best_checkpoint": ckpt, "epochs": trainer.current_epoch, "precision": precision,
                  **{k: float(v) for k, v in model.best.items() if math.isfinite(v)}})
    extra = {("val/auc_best" if k == "val/auc" else "val/cindex_best" if k == "val/cindex" else k): v
             for k, v in extra.items()}
    metrics = write_run_outputs(out_dir, predictions, list(dm.targets), extra,
                                n_boot=int(cfg.get("n_bootstrap", 2000)))
    metrics.update({k: float(v) for k, v in test_metrics.items() if k not in metrics})
    for lg in loggers:
        lg.log_metrics({k: v for k, v in metrics.items()
                        if k.startswith("test/") and isinstance(v, float) and math.isfinite(v)})
    if cfg.get("explain"):
        explain_network(_explanation(cfg), dm, model.net, out_dir, state_dict=state)
    write_manifest(out_dir, build_manifest("train", cfg, cohort=dm))
    log_outputs(loggers, out_dir, predictions)
    _report(metrics, dm, mode, out_dir)
    return metrics, {"cfg": cfg, "datamodule": dm, "model": model, "trainer": trainer}


def _explanation(cfg: DictConfig) -> dict | None:
    """``explanation:`` as plain containers (``explain=true``; docs/explain.md)."""
    block = cfg.get("explanation")
    return OmegaConf.to_container(block, resolve=True) if block is not None else None


def _run_summary(cfg: DictConfig, dm, mode: str, t0: float, t_data: float) -> dict:
    """The run's description in ``metrics.json``. ``excluded_subjects`` is every subject of the cohort
    the run left out, with the step and reason (``validation: ...``, ``extraction: ...``, ``ROI: ...``;
    :attr:`radfusion.data.prepare.PreparedCohort.failures`): a reader must see who is missing."""
    return {
        "experiment": cfg.get("task_name"), "mode": mode, "targets": list(dm.targets),
        "survival": bool(getattr(dm, "survival_target", False)), "seed": cfg.get("seed"), "fold": dm.fold,
        "n_subjects": {s: len(dm.splits[s]) for s in SPLITS}, "splits_file": str(dm.splits_file),
        "n_radiomics_raw": len(getattr(dm, "feature_names_in", [])), "n_radiomics_model": dm.radiomics_dim,
        "clinical": list(getattr(dm, "clinical_columns", [])), "n_clinical_model": getattr(dm, "clinical_dim", 0),
        "excluded_subjects": dict(dm.failures), "n_excluded": len(dm.failures),
        "seconds_data": round(t_data, 1), "seconds_total": round(time.perf_counter() - t0, 1),
    }


def _report(metrics: dict, dm, mode: str, out_dir: Path) -> None:
    """One log line per head with the test metric and its CI — what a user reads first."""
    for name in dm.targets:
        log.info("test AUC (%s, %s): %.3f [95%% CI %.3f–%.3f], n=%d", name, mode, metrics[f"test/auc_{name}"],
                 metrics[f"test/auc_{name}_ci_low"], metrics[f"test/auc_{name}_ci_high"],
                 metrics[f"test/auc_{name}_n"])
    if "test/cindex" in metrics:
        log.info("test C-index (survival, %s): %.3f", mode, metrics["test/cindex"])
    if dm.failures:
        log.warning("%d subjects excluded: %s", len(dm.failures),
                    "; ".join(f"{sid} — {why}" for sid, why in sorted(dm.failures.items())))
    log.info("results in %s", out_dir)


def _train_baseline(cfg: DictConfig, dm, out_dir: Path, t0: float, t_data: float) -> tuple[dict, dict]:
    """Classical baseline (scikit-learn / scikit-survival) on the same split and feature pipeline."""
    from radfusion.baselines import run_baseline

    fitted: dict = {}
    predictions = add_subject_columns(run_baseline(OmegaConf.to_container(cfg.model, resolve=True), dm, fitted), dm)
    write_bundle(out_dir, cfg, dm, baseline={**fitted, "info": predictions.attrs.get("baseline")})
    extra = _run_summary(cfg, dm, cfg.model.mode, t0, t_data)
    extra["baseline"] = predictions.attrs.get("baseline")  # chosen hyperparameters, validation scores
    metrics = write_run_outputs(out_dir, predictions, list(dm.targets), extra,
                                n_boot=int(cfg.get("n_bootstrap", 2000)))
    metrics["val/auc_best"] = metrics.get("val/auc_" + dm.targets[0]) if dm.targets else None
    if cfg.get("explain"):
        explain_baseline(_explanation(cfg), dm, fitted, out_dir)
    write_manifest(out_dir, build_manifest("train", cfg, cohort=dm))
    log_finished_run(_instantiate_list(cfg.get("logger")), cfg, out_dir, predictions, metrics)
    _report(metrics, dm, cfg.model.mode, out_dir)
    return metrics, {"cfg": cfg, "datamodule": dm, "predictions": predictions}


def run_task(task, cfg: DictConfig):
    """Run ``task(cfg)`` and always close W&B, so one multirun process can hold many W&B runs."""
    try:
        return task(cfg)
    finally:
        try:
            import wandb

            if wandb.run is not None:
                wandb.finish()
        except ImportError:  # pragma: no cover - wandb is a core dependency
            pass


def optimized_value(metrics: dict, name: str | None) -> float | None:
    """The metric a Hydra sweeper optimises; a clear error when the name is wrong."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric {name!r} not among the run's metrics: {sorted(metrics)}")
    value = metrics[name]
    return None if value is None else float(value)
