"""A callback that kills training at the start of an epoch (after that epoch's predecessor wrote
``last.ckpt``), the way a crash or a pre-empted job would."""

from __future__ import annotations

import pytorch_lightning as pl


class SimulatedKill(RuntimeError):
    """Raised by :class:`KillAtEpoch`."""


class KillAtEpoch(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise SimulatedKill(f"simulated kill at the start of epoch {self.epoch}")
