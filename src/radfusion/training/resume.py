"""Exact resume: ``ckpt_path=<run>/checkpoints/last.ckpt`` continues a run as if it had never stopped.

What a resumed run needs beyond Lightning's own checkpoint (weights, optimiser, loops, callbacks):

- **random state**: the torch, numpy and Python generators (and CUDA's) at the moment the
  checkpoint was written, put back just before the next training epoch (:class:`ResumeState`);
- **data order and augmentation**: every training sampler's order is a function of ``(seed, epoch)``
  (:mod:`radfusion.data.samplers`) and each item's augmentation of ``(seed, epoch, item)``
  (:class:`radfusion.data.dataset.SubjectDataset`). Lightning calls ``set_epoch`` on a loader's
  sampler but not on a batch sampler, so :class:`ResumeState` sets the epoch of batch samplers and
  datasets itself, from ``trainer.current_epoch``;
- **the run folder**: a checkpoint inside ``<run>/checkpoints/`` resumes that run's folder
  (:func:`resume_output_dir`), so ModelCheckpoint keeps its best-checkpoint record (it drops it
  when the folder changes) and ``predictions.csv`` / ``metrics.json`` land beside the first part;
- **the CSV log**: :class:`ResumableCSVLogger` keeps the rows written up to the checkpoint and
  appends (Lightning's CSVLogger deletes an existing ``metrics.csv``).

The best validation AUC / C-index (``RadFusionModule.best``) travels in the checkpoint too. See
``docs/resume.md``.
"""

from __future__ import annotations

import csv
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, open_dict
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- random state
def rng_state() -> dict:
    """torch / numpy / Python (and CUDA) generator states, in types ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _loaders(obj) -> Iterator[DataLoader]:
    if isinstance(obj, DataLoader):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _loaders(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _loaders(v)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """``set_epoch`` on the loader's batch sampler and dataset (Lightning only reaches ``loader.sampler``)."""
    for obj in (getattr(loader, "batch_sampler", None), loader.dataset):
        fn = getattr(obj, "set_epoch", None)
        if callable(fn):
            fn(epoch)


class ResumeState(pl.Callback):
    """Random state in the checkpoint, epochs on batch samplers and datasets, CSV log kept in step.

    ``state_dict`` is taken when Lightning writes a checkpoint; after a resume the state is restored at
    the start of the next training epoch, i.e. at the same point of the computation where the
    uninterrupted run continued from it.
    """

    def __init__(self) -> None:
        self._pending: dict | None = None
        self._resumed_epoch: int | None = None

    def state_dict(self) -> dict:
        return {"rng": rng_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict.get("rng")

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == "fit":
            self._resumed_epoch = int(checkpoint.get("epoch", -1))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.resume_after_epoch(self._resumed_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            set_rng_state(self._pending)
            self._pending = None
        for loader in _loaders(trainer.train_dataloader):
            set_loader_epoch(loader, trainer.current_epoch)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # What the CSV log holds on disk then matches the checkpoint, even if the process is killed next.
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger) and trainer.is_global_zero:
                logger.save()


# ---------------------------------------------------------------------------------------- CSV log
class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, minus deleting an existing ``metrics.csv`` (truncation is explicit)."""

    def _check_log_dir_exists(self) -> None:
        pass

    def keep_rows(self, last_epoch: int | None) -> int:
        """Keep the rows of epochs ``<= last_epoch`` (None: none) and append after them; rows kept."""
        self.metrics = []
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return 0
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
        if last_epoch is None:
            path.unlink()
            self.metrics_keys = []
            return 0
        kept = [r for r in rows if r.get("epoch") not in (None, "") and float(r["epoch"]) <= last_epoch]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)
        self.metrics_keys = sorted(header)
        return len(kept)


class ResumableCSVLogger(CSVLogger):
    """:class:`~pytorch_lightning.loggers.CSVLogger` that continues ``metrics.csv`` on resume.

    A fresh fit starts the file anew (as Lightning's does); a fit resumed from a checkpoint of epoch
    ``e`` keeps the rows of epochs ``<= e`` and appends, so the file equals an uninterrupted run's.
    """

    @property
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def resume_after_epoch(self, epoch: int | None) -> None:
        if self._experiment is None and not Path(self.log_dir, ExperimentWriter.NAME_METRICS_FILE).is_file():
            return
        kept = self.experiment.keep_rows(epoch)
        if epoch is not None:
            log.info("CSV log %s: resumed after epoch %d, %d rows kept", self.log_dir, epoch, kept)


# ---------------------------------------------------------------------------------------- run folder
def resume_output_dir(cfg: DictConfig) -> Path | None:
    """When ``cfg.ckpt_path`` lies in ``<run>/checkpoints/`` of a run folder, point ``paths.output_dir``
    (and with it checkpoints, loggers, predictions) at that run; return it (None: nothing to resume)."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return None
    path = Path(str(ckpt)).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt}: no such checkpoint (resume from <run>/checkpoints/last.ckpt)")
    run = path.parent.parent
    if path.parent.name != "checkpoints" or not (run / "config_resolved.yaml").is_file():
        log.warning("ckpt_path %s is not inside a run folder's checkpoints/; training in %s starts a new "
                    "best-checkpoint record", path, cfg.paths.output_dir)
        return None
    if Path(str(cfg.paths.output_dir)).resolve() != run:
        log.info("resuming run folder %s (this invocation's Hydra folder %s keeps only its log)", run,
                 cfg.paths.output_dir)
        with open_dict(cfg):
            cfg.paths.output_dir = str(run)
    return run
