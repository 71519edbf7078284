"""LightningModule shared by the handcrafted, deep and hybrid modes, for one or many tasks.

Heads: one logit per binary marker (IDH, MGMT, 1p/19q codeletion, ...) and optionally one Cox
risk score (higher = higher hazard). Losses:

- markers: binary cross-entropy per head, masked where the label is unknown (never guessed; the
  subject still counts for the other heads);
- survival: negative Cox partial log-likelihood (Breslow or Efron ties) over the subjects with
  survival data in the batch (see ``docs/survival.md`` for why batches must contain events);
- the total is a weighted sum (``loss_weights``) or, with ``uncertainty_weighting``, Kendall et
  al.'s learned homoscedastic weighting ``sum_k exp(-s_k) L_k + s_k``.

Metrics are computed over whole epochs (AUC and C-index are not decomposable over batches):
per-marker ROC AUC, balanced accuracy, average precision (scikit-learn) and Harrell's C
(``sksurv.metrics.concordance_index_censored``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from radfusion.evaluation.metrics import binary_metrics
from radfusion.evaluation.survival import harrell_c
from radfusion.models.cox_loss import cox_partial_likelihood_loss
from radfusion.models.fusion import FusionNet, fusion_config
from radfusion.models.gather import gather_outputs, world_size


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the entries with ``mask == 1``; zero (with grad) when none is labelled."""
    per = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    n = mask.sum()
    return (per * mask).sum() / n.clamp_min(1.0)


#: Per-marker epoch metrics logged as ``<stage>/<name>_<target>`` -> key of
#: :func:`radfusion.evaluation.metrics.binary_metrics` (balanced accuracy at probability 0.5).
EPOCH_MARKER_METRICS: dict[str, str] = {"auc": "auc", "bacc": "balanced_accuracy", "ap": "ap"}


class RadFusionModule(pl.LightningModule):
    """Train a :class:`FusionNet` on batches ``{image?, radiomics?, labels, label_mask, time, event,
    surv_mask, subject_id}``.

    Args:
        mode: ``handcrafted`` | ``deep`` | ``hybrid`` | ``clinical``.
        targets: binary marker names, one logit each (``labels[:, i]`` belongs to ``targets[i]``).
        survival: add a Cox risk head (the last output column).
        radiomics_dim: length of the fold-processed radiomics vector (set by ``train``).
        encoder: image encoder (deep / hybrid), e.g. :class:`ResNetEncoder`.
        optimizer, scheduler: partial constructors (Hydra ``_partial_: true``).
        fusion: keyword arguments of :class:`FusionNet` (widths, dropout, ``fuser``: a fusion factory or
            its ``{_target_: ...}`` description, ``configs/model/fusion/``).
        loss_weights: weight per head name (markers and ``survival``); default 1.
        uncertainty_weighting: learn the head weights (Kendall, Gal & Cipolla 2018).
        cox_ties: ``breslow`` | ``efron``.
        clinical_dim: length of the fold-processed clinical vector (set by ``train``; None: no clinical branch).
        clinical, clinical_categorical: the clinical column names (``model.clinical``), recorded in the
            checkpoint; the datamodule processes them (:mod:`radfusion.features.clinical`).
    """

    def __init__(
        self,
        mode: str,
        targets: Sequence[str] = ("idh",),
        survival: bool = False,
        radiomics_dim: int | None = None,
        encoder: nn.Module | None = None,
        optimizer=None,
        scheduler=None,
        fusion: dict | None = None,
        loss_weights: dict | None = None,
        uncertainty_weighting: bool = False,
        cox_ties: str = "breslow",
        clinical_dim: int | None = None,
        clinical: Sequence[str] = (),
        clinical_categorical: Sequence[str] = (),
    ) -> None:
        super().__init__()
        # Plain Python containers in the checkpoint, so it loads with torch's weights_only=True.
        targets = [str(t) for t in targets]
        clinical, clinical_categorical = [str(c) for c in clinical], [str(c) for c in clinical_categorical]
        clinical_dim = int(clinical_dim) if clinical_dim else None
        fusion = OmegaConf.to_container(fusion) if isinstance(fusion, DictConfig) else dict(fusion or {})
        if fusion.get("fuser") is not None:  # Hydra built a partial; the checkpoint keeps its description
            fusion["fuser"] = fusion_config(fusion["fuser"])
        loss_weights = (OmegaConf.to_container(loss_weights) if isinstance(loss_weights, DictConfig)
                        else dict(loss_weights or {}))
        if not targets and not survival:
            raise ValueError("nothing to predict: give at least one marker target or survival=true")
        self.save_hyperparameters(ignore=["encoder", "optimizer", "scheduler"])
        self.targets = targets
        self.survival = bool(survival)
        self.heads = [*targets, *(["survival"] if survival else [])]
        self.net = FusionNet(mode, n_outputs=len(self.heads), encoder=encoder,
                             radiomics_dim=radiomics_dim, clinical_dim=clinical_dim, **fusion)
        self.loss_weights = {h: float(loss_weights.get(h, 1.0)) for h in self.heads}
        self.log_vars = nn.Parameter(torch.zeros(len(self.heads))) if uncertainty_weighting else None
        self.cox_ties = cox_ties
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._outputs: dict[str, list] = {"val": [], "test": []}
        self.best: dict[str, float] = {}

    @property
    def best_val_auc(self) -> float:
        return self.best.get("val/auc", -math.inf)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.net(image=batch.get("image"), radiomics=batch.get("radiomics"), clinical=batch.get("clinical"))

    def head_losses(self, out: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        losses = {}
        for i, name in enumerate(self.targets):
            losses[name] = masked_bce(out[:, i], batch["labels"][:, i], batch["label_mask"][:, i])
        if self.survival:
            losses["survival"] = cox_partial_likelihood_loss(
                out[:, -1], batch["time"], batch["event"], mask=batch["surv_mask"], ties=self.cox_ties)
        return losses

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for k, name in enumerate(self.heads):
            if self.log_vars is not None:
                total = total + torch.exp(-self.log_vars[k]) * losses[name] + self.log_vars[k]
            else:
                total = total + self.loss_weights[name] * losses[name]
        return total

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        out = self(batch)
        losses = self.head_losses(out, batch)
        loss = self.combine(losses)
        bs = out.shape[0]
        sync = world_size() > 1  # DDP: epoch means over all ranks, so every rank monitors the same value
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=bs,
                 sync_dist=sync)
        if len(self.heads) > 1:
            for name, value in losses.items():
                self.log(f"{stage}/loss_{name}", value, on_step=False, on_epoch=True, batch_size=bs, sync_dist=sync)
        if stage in self._outputs:
            self._outputs[stage].append(self._detach(out, batch))
        return loss

    def _detach(self, out: torch.Tensor, batch: dict) -> dict[str, np.ndarray]:
        rec = {}
        if self.targets:
            labels = batch["labels"].detach().clone()
            labels[batch["label_mask"] == 0] = float("nan")
            rec["probs"] = torch.sigmoid(out[:, : len(self.targets)].float()).detach().cpu().numpy()  # bf16 → fp32
            rec["labels"] = labels.cpu().numpy()
        if self.survival:
            time = batch["time"].detach().clone().double()
            time[batch["surv_mask"] == 0] = float("nan")
            rec["risk"] = out[:, -1].detach().double().cpu().numpy()
            rec["time"] = time.cpu().numpy()
            rec["event"] = batch["event"].detach().double().cpu().numpy()
        return rec

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """``{"subject_id", "probs": (B, n_markers), "labels": (B, n_markers) NaN unknown, "risk"?}``."""
        labels = batch["labels"].detach().cpu().numpy().copy()
        labels[batch["label_mask"].detach().cpu().numpy() == 0] = np.nan
        return {"subject_id": list(batch["subject_id"]), "labels": labels,
                **self.outputs_to_predictions(self(batch))}

    def outputs_to_predictions(self, out: torch.Tensor) -> dict[str, np.ndarray]:
        """Network outputs → ``{"probs": (B, n_markers), "risk": (B,)}`` (risk only with survival)."""
        # .float(): under bf16/fp16 autocast the outputs are half precision, which numpy cannot hold
        res = {"probs": torch.sigmoid(out[:, : len(self.targets)].float()).detach().cpu().numpy()}
        if self.survival:
            res["risk"] = out[:, -1].detach().float().cpu().numpy()
        return res

    def epoch_metrics(self, stage: str) -> dict[str, float]:
        """Epoch metrics on the outputs of all DDP ranks together (:func:`gather_outputs`), never per rank."""
        outputs = gather_outputs(self._outputs[stage])
        self._outputs[stage] = []
        if not outputs:
            return {}
        metrics: dict[str, float] = {}
        if self.targets:
            probs = np.concatenate([o["probs"] for o in outputs])
            labels = np.concatenate([o["labels"] for o in outputs])
            for i, name in enumerate(self.targets):
                res = binary_metrics(labels[:, i], probs[:, i])
                for key, source in EPOCH_MARKER_METRICS.items():
                    metrics[f"{stage}/{key}_{name}"] = res[source]
            aucs = [metrics[f"{stage}/auc_{n}"] for n in self.targets if not math.isnan(metrics[f"{stage}/auc_{n}"])]
            metrics[f"{stage}/auc"] = float(np.mean(aucs)) if aucs else float("nan")
        if self.survival:
            cat = {k: np.concatenate([o[k] for o in outputs]) for k in ("risk", "time", "event")}
            metrics[f"{stage}/cindex"] = harrell_c(cat["time"], cat["event"], cat["risk"])
        return metrics

    def on_validation_epoch_end(self) -> None:
        metrics = self.epoch_metrics("val")
        for key in ("val/auc", "val/cindex"):
            if key not in metrics:
                continue
            # A monitored metric must be a number: undefined (one class / no events) counts as chance.
            if math.isnan(metrics[key]):
                metrics[key] = 0.5
            if not self.trainer.sanity_checking:
                self.best[key] = max(self.best.get(key, -math.inf), metrics[key])
            metrics[f"{key}_best"] = max(self.best.get(key, -math.inf), metrics[key])
        shown = {k: metrics.pop(k) for k in ("val/auc", "val/cindex") if k in metrics}
        sync = world_size() > 1  # the values are already the same on every rank (gathered)
        self.log_dict({k: v for k, v in metrics.items()}, sync_dist=sync)
        if shown:
            self.log_dict(shown, prog_bar=True, sync_dist=sync)

    def on_test_epoch_end(self) -> None:
        metrics = self.epoch_metrics("test")
        if metrics:
            self.log_dict(metrics, sync_dist=world_size() > 1)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The best validation AUC / C-index so far (``val/auc_best``), so a resumed run continues it.
        checkpoint["radfusion_best"] = {k: float(v) for k, v in self.best.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Only a resumed fit continues the record; testing the best checkpoint keeps the final one.
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == "fit" and "radfusion_best" in checkpoint:
            self.best = dict(checkpoint["radfusion_best"])

    def configure_optimizers(self):
        if self._optimizer is None:
            optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=1e-2)
        else:
            optimizer = self._optimizer(params=self.parameters())
        if self._scheduler is None:
            return optimizer
        scheduler = self._scheduler(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
