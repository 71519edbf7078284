"""What a run tells its experiment tracker (W&B) beyond Lightning's own metric logging.

- :func:`log_config`: the whole resolved config (``data``, ``features``, ``processing``, ``split``,
  ``model``, ``trainer``, ...) into the W&B run config, before fitting, so runs can be filtered and
  compared by any setting, not only by the fusion module's hyperparameters;
- :func:`log_outputs`: at the end, the run folder's plots (PNG), the predictions table
  (``wandb.Table``) and ``manifest.json`` (:mod:`radfusion.provenance`);
- :func:`announce_logger_choice`: a ``debug=...`` config that replaced the loggers says so.

The CSV logger stays alongside (``configs/logger/default.yaml``); loggers other than W&B are left alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def wandb_loggers(loggers) -> list:
    """The :class:`~pytorch_lightning.loggers.WandbLogger` among ``loggers`` (none when W&B is off)."""
    try:
        from pytorch_lightning.loggers import WandbLogger
    except ImportError:  # pragma: no cover - Lightning is a core dependency
        return []
    return [lg for lg in (loggers or []) if isinstance(lg, WandbLogger)]


def resolved_config(cfg: DictConfig) -> dict:
    """The run's config as plain, resolved containers (the ``hydra`` node left out)."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    plain.pop("hydra", None)
    return plain


def log_config(loggers, cfg: DictConfig) -> None:
    """The whole resolved config into each W&B run's config (nested: ``data.processing.combat`` ...).

    Lightning passes ``anonymous=None`` to ``wandb.init``, which current wandb answers with a deprecation
    warning on every run although nobody set it: the key is dropped before the W&B run starts."""
    for lg in wandb_loggers(loggers):
        init = getattr(lg, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous") is None:
            init.pop("anonymous", None)
        run = lg.experiment
        run.config.update(resolved_config(cfg), allow_val_change=True)
        log.info("W&B run (%s) in %s%s", getattr(run.settings, "mode", "?"), run.dir.rsplit("/files", 1)[0],
                 "; upload it later with `wandb sync <that folder>`" if getattr(run.settings, "_offline", False)
                 else "")


def log_outputs(loggers, out_dir: str | Path, predictions: pd.DataFrame | None = None) -> None:
    """Plots, predictions and manifest of the run folder ``out_dir`` into each W&B run."""
    runs = wandb_loggers(loggers)
    if not runs:
        return
    import wandb

    out_dir = Path(out_dir)
    if predictions is None and (out_dir / "predictions.csv").is_file():
        predictions = pd.read_csv(out_dir / "predictions.csv", dtype={"subject_id": str})
    pngs = sorted(out_dir.glob("*.png"))
    explained = sorted((out_dir / "explain").rglob("*.png"))  # explain=true: beeswarms, saliency overlays
    manifest = out_dir / "manifest.json"
    for lg in runs:
        run = lg.experiment
        payload = {f"plots/{p.stem}": wandb.Image(str(p)) for p in pngs}
        payload.update({f"explain/{p.stem}": wandb.Image(str(p)) for p in explained})
        for csv in sorted((out_dir / "explain").glob("*shap_groups.csv")):
            payload[f"explain/{csv.stem}"] = wandb.Table(dataframe=pd.read_csv(csv))
        if predictions is not None:
            table = predictions.reset_index(drop=True).astype(object)
            payload["predictions"] = wandb.Table(dataframe=table.where(table.notna(), None))
        if payload:
            run.log(payload)
        if manifest.is_file():
            art = wandb.Artifact(f"manifest-{run.id}", type="manifest",
                                 description="radfusion run manifest (docs/provenance.md)")
            art.add_file(str(manifest))
            run.log_artifact(art)
    log.info("W&B: config, %d plot(s) (+%d explanation figures), %s and %s logged", len(pngs), len(explained),
             "predictions" if predictions is not None else "no predictions",
             "manifest.json" if manifest.is_file() else "no manifest")


def announce_logger_choice() -> str | None:
    """A warning (returned, and logged) when a ``debug=`` config chose the loggers and the command line did not.

    ``configs/debug/fast.yaml`` switches W&B off for speed; a user who asked for W&B with ``logger=...``
    keeps it (command-line overrides win), one who did not is told rather than surprised."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        choices, task = dict(hc.runtime.choices), [str(o) for o in hc.overrides.task]
    except Exception:  # noqa: BLE001 - outside a Hydra app
        return None
    debug, logger = choices.get("debug"), choices.get("logger")
    if not debug or any(o.lstrip("+~").startswith("logger") for o in task) or logger in (None, "default"):
        return None
    message = (f"debug={debug} set logger={logger} (configs/debug/{debug}.yaml); add logger=default to keep "
               "W&B (offline) beside the CSV logger")
    log.warning(message)
    return message


def log_finished_run(loggers, cfg: DictConfig, out_dir: str | Path, predictions: pd.DataFrame | None,
                     metrics: dict) -> None:
    """For runs without a Lightning trainer (classical baselines): config, finite test metrics and outputs."""
    runs = wandb_loggers(loggers)
    if not runs:
        return
    log_config(runs, cfg)
    for lg in runs:
        lg.log_metrics({k: float(v) for k, v in metrics.items()
                        if k.startswith("test/") and isinstance(v, (int, float)) and v == v and abs(v) != float("inf")})
    log_outputs(runs, out_dir, predictions)
