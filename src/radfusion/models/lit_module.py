"""LightningModule shared by the handcrafted, deep and hybrid modes.

Loss: binary cross-entropy per marker, masked where the label is unknown (a missing label is
never guessed; the subject still contributes to the other heads). Metrics: ROC AUC per marker,
computed with scikit-learn over the whole epoch (AUC is not decomposable over batches).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import roc_auc_score
from torch import nn

from radfusion.models.fusion import FusionNet


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the entries with ``mask == 1``; zero (with grad) when none is labelled."""
    per = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    n = mask.sum()
    return (per * mask).sum() / n.clamp_min(1.0)


def safe_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC over labelled entries; NaN when only one class is present."""
    keep = ~np.isnan(labels)
    y, p = labels[keep], probs[keep]
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


class RadFusionModule(pl.LightningModule):
    """Train a :class:`FusionNet` on batches ``{image?, radiomics?, labels, label_mask, subject_id}``.

    Args:
        mode: ``handcrafted`` | ``deep`` | ``hybrid``.
        targets: marker names, one logit each (``labels[:, i]`` belongs to ``targets[i]``).
        radiomics_dim: length of the fold-processed radiomics vector (set by ``train``).
        encoder: image encoder (deep / hybrid), e.g. :class:`ResNetEncoder`.
        optimizer, scheduler: partial constructors (Hydra ``_partial_: true``).
        fusion: keyword arguments of :class:`FusionNet` (widths, dropout).
    """

    def __init__(
        self,
        mode: str,
        targets: Sequence[str] = ("idh",),
        radiomics_dim: int | None = None,
        encoder: nn.Module | None = None,
        optimizer=None,
        scheduler=None,
        fusion: dict | None = None,
    ) -> None:
        super().__init__()
        # Plain Python containers in the checkpoint, so it loads with torch's weights_only=True.
        targets = [str(t) for t in targets]
        fusion = OmegaConf.to_container(fusion) if isinstance(fusion, DictConfig) else dict(fusion or {})
        self.save_hyperparameters(ignore=["encoder", "optimizer", "scheduler"])
        self.targets = list(targets)
        self.net = FusionNet(mode, n_outputs=len(self.targets), encoder=encoder,
                             radiomics_dim=radiomics_dim, **(fusion or {}))
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._outputs: dict[str, list] = {"val": [], "test": []}
        self.best_val_auc = -math.inf

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(image=batch.get("image"), radiomics=batch.get("radiomics"))

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        logits = self(batch)
        loss = masked_bce(logits, batch["labels"], batch["label_mask"])
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test",
                 batch_size=logits.shape[0])
        if stage in self._outputs:
            labels = batch["labels"].detach().clone()
            labels[batch["label_mask"] == 0] = float("nan")
            self._outputs[stage].append((torch.sigmoid(logits).detach().cpu(), labels.cpu()))
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"subject_id": list(batch["subject_id"]), "probs": torch.sigmoid(self(batch)).cpu()}

    def _epoch_metrics(self, stage: str) -> dict[str, float]:
        outputs = self._outputs[stage]
        self._outputs[stage] = []
        if not outputs:
            return {}
        probs = torch.cat([p for p, _ in outputs]).numpy()
        labels = torch.cat([y for _, y in outputs]).numpy()
        metrics = {}
        for i, name in enumerate(self.targets):
            metrics[f"{stage}/auc_{name}"] = safe_auc(labels[:, i], probs[:, i])
        aucs = [v for v in metrics.values() if not math.isnan(v)]
        metrics[f"{stage}/auc"] = float(np.mean(aucs)) if aucs else float("nan")
        return metrics

    def on_validation_epoch_end(self) -> None:
        metrics = self._epoch_metrics("val")
        if not metrics:
            return
        auc = metrics["val/auc"]
        # Checkpoint monitors need a number: an undefined AUC (one class in val) counts as chance.
        if math.isnan(auc):
            metrics["val/auc"] = auc = 0.5
        if not self.trainer.sanity_checking:
            self.best_val_auc = max(self.best_val_auc, auc)
        metrics["val/auc_best"] = max(self.best_val_auc, auc)
        del metrics["val/auc"]
        self.log_dict(metrics)
        self.log("val/auc", auc, prog_bar=True)

    def on_test_epoch_end(self) -> None:
        metrics = self._epoch_metrics("test")
        if metrics:
            self.log_dict(metrics)

    def configure_optimizers(self):
        if self._optimizer is None:
            optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=1e-2)
        else:
            optimizer = self._optimizer(params=self.parameters())
        if self._scheduler is None:
            return optimizer
        scheduler = self._scheduler(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
