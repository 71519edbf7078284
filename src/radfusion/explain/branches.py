"""Per-subject fusion weights and per-branch contributions of a trained :class:`~radfusion.models.fusion.FusionNet`.

Branch contribution of a subject = its logit (or Cox risk) minus the logit when that one branch's input is
replaced by the branch's training mean, the other branches left as they are:

- radiomics: the mean fold-processed radiomics vector of the training subjects (after scaling ~0);
- clinical: the mean processed clinical vector of the training subjects (when the batch has one);
- image: the mean *encoder embedding* of the training subjects (un-augmented ROIs). A mean ROI would be
  a blurred average tumour, an input the network never saw; the mean embedding is what "an average
  image" is to the layers after the encoder, and it is the same quantity in frozen-encoder mode.

A branch whose input is the same for every subject has contribution 0 (the mean is that input).
Contributions are not additive (the head is non-linear); they say how far each branch moves the subject
away from "average" on that branch.

Fusion weights come from the fuser after a forward pass: ``GatedFusion.last_gate`` ``(B, dim)`` (the gate
``z`` on the image side; ``1 - z`` weighs radiomics) and ``CrossAttentionFusion.last_attention``
``(B, radiomics tokens, image tokens)`` (averaged over radiomics tokens: weight on each CNN stage).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

#: Batch keys of the inputs a branch reads (the image branch is replaced at its embedding instead).
INPUT_KEYS = ("radiomics", "clinical")


class GivenEmbedding(nn.Module):
    """Stands in for an encoder: returns the embeddings it was given (one row per subject, or one row
    broadcast), whatever the input."""

    def __init__(self, embedding: torch.Tensor) -> None:
        super().__init__()
        self.embedding = embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        e = self.embedding
        return e.expand(n, -1) if e.shape[0] == 1 else e[:n]


@contextlib.contextmanager
def encoder_replaced(net: nn.Module, embedding: torch.Tensor | None) -> Iterator[None]:
    """Within the block ``net.encoder`` returns ``embedding`` (no-op for None or a net without encoder)."""
    if embedding is None or not hasattr(net, "encoder"):
        yield
        return
    original = net.encoder
    net.encoder = GivenEmbedding(embedding)
    try:
        yield
    finally:
        net.encoder = original


@contextlib.contextmanager
def unfrozen(encoder: nn.Module | None) -> Iterator[None]:
    """A frozen encoder pools under ``no_grad``; gradients w.r.t. the ROI need it off for the block."""
    frozen = bool(getattr(encoder, "frozen", False))
    if frozen:
        encoder.frozen = False
    try:
        yield
    finally:
        if frozen:
            encoder.frozen = True


def fusion_weights(fuser: nn.Module) -> dict[str, np.ndarray]:
    """Weights of the last forward pass per subject: ``gate_<k>`` / ``attention_stage<k>`` columns and their
    summaries (``gate_image_mean``); {} for a fuser that records none (concat)."""
    gate = getattr(fuser, "last_gate", None)
    attention = getattr(fuser, "last_attention", None)
    out: dict[str, np.ndarray] = {}
    if gate is not None:
        g = gate.detach().cpu().numpy().reshape(gate.shape[0], -1)
        out["gate_image_mean"] = g.mean(axis=1)
        out.update({f"gate_{k}": g[:, k] for k in range(g.shape[1])})
    if attention is not None:
        a = attention.detach().cpu().numpy()
        a = a.mean(axis=1) if a.ndim == 3 else a.reshape(a.shape[0], -1)
        out.update({f"attention_stage{k}": a[:, k] for k in range(a.shape[1])})
    return out


def model_inputs(batch: dict, keys: tuple[str, ...] = INPUT_KEYS) -> dict[str, torch.Tensor]:
    """The branch inputs of a batch (image left out: the encoder is replaced by its embeddings)."""
    return {k: batch[k].float() for k in keys if k in batch and torch.is_tensor(batch[k])}


def forward_logits(net: nn.Module, inputs: dict[str, torch.Tensor], embedding: torch.Tensor | None,
                   n: int) -> torch.Tensor:
    """``net(**inputs)`` (a :class:`~radfusion.models.fusion.FusionNet`) for ``n`` subjects whose encoder
    output is ``embedding`` (None: no image branch)."""
    batch = dict(inputs)
    if embedding is not None:
        batch["image"] = torch.zeros(n, 1)  # never read: the encoder is replaced
    with encoder_replaced(net, embedding):
        return net(**batch)


def branch_contributions(net: nn.Module, inputs: dict[str, torch.Tensor], embedding: torch.Tensor | None,
                         means: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """``logit(x) - logit(x with branch b at its training mean)`` per branch, ``(n, n_outputs)`` each.

    ``means`` holds ``image`` (mean embedding ``(1, E)``) and the mean of each input key ``(1, F)``.
    """
    n = next(iter(inputs.values())).shape[0] if inputs else embedding.shape[0]
    with torch.no_grad():
        full = forward_logits(net, inputs, embedding, n)
        out = {}
        if embedding is not None and "image" in means:
            out["image"] = full - forward_logits(net, inputs, means["image"].expand(n, -1), n)
        for key in inputs:
            if key in means:
                swapped = {**inputs, key: means[key].expand(n, -1)}
                out[key] = full - forward_logits(net, swapped, embedding, n)
    return {k: v.cpu().numpy() for k, v in out.items()}
