"""The radiomics branch, the fusion of both branches, and the prediction heads.

One network, three modes, so that comparisons are fair (same heads, same training loop):

- ``handcrafted``: radiomics MLP → heads
- ``deep``:        CNN encoder embedding → projection → heads
- ``hybrid``:      concat(radiomics embedding, CNN embedding) → heads
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MODES = ("handcrafted", "deep", "hybrid")


def mlp(in_features: int, hidden: Sequence[int], dropout: float) -> nn.Sequential:
    """Linear → LayerNorm → GELU → Dropout blocks; returns an empty Sequential for ``hidden=[]``."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout)]
        in_features = width
    return nn.Sequential(*layers)


class FusionNet(nn.Module):
    """Fuse a CNN embedding with a radiomics vector and predict one logit per target.

    Args:
        mode: ``handcrafted`` | ``deep`` | ``hybrid``.
        n_outputs: number of logits (one per target marker).
        encoder: an image encoder with attribute ``num_features`` (needed for deep/hybrid).
        radiomics_dim: length of the (fold-processed) radiomics vector (needed for
            handcrafted/hybrid).
        radiomics_hidden: widths of the radiomics MLP.
        image_hidden: width of the projection of the CNN embedding.
        head_hidden: widths of the MLP after fusion.
        dropout: dropout in every MLP.

    Shapes:
        ``image`` ``(B, C, D, H, W)``, ``radiomics`` ``(B, radiomics_dim)`` → logits ``(B, n_outputs)``.
    """

    def __init__(
        self,
        mode: str,
        n_outputs: int = 1,
        encoder: nn.Module | None = None,
        radiomics_dim: int | None = None,
        radiomics_hidden: Sequence[int] = (128, 32),
        image_hidden: int = 32,
        head_hidden: Sequence[int] = (),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.uses_images = mode in ("deep", "hybrid")
        self.uses_radiomics = mode in ("handcrafted", "hybrid")
        width = 0
        if self.uses_images:
            if encoder is None:
                raise ValueError(f"mode {mode!r} needs an image encoder (model.encoder is null)")
            self.encoder = encoder
            self.image_proj = mlp(encoder.num_features, [image_hidden], dropout)
            width += image_hidden
        if self.uses_radiomics:
            if not radiomics_dim:
                raise ValueError(f"mode {mode!r} needs radiomics features, but the vector is empty")
            self.radiomics_mlp = mlp(radiomics_dim, radiomics_hidden, dropout)
            width += radiomics_hidden[-1] if radiomics_hidden else radiomics_dim
        self.head = nn.Sequential(mlp(width, head_hidden, dropout),
                                  nn.Linear(head_hidden[-1] if head_hidden else width, n_outputs))

    def forward(self, image: torch.Tensor | None = None, radiomics: torch.Tensor | None = None) -> torch.Tensor:
        parts = []
        if self.uses_images:
            parts.append(self.image_proj(self.encoder(image)))
        if self.uses_radiomics:
            parts.append(self.radiomics_mlp(radiomics))
        return self.head(torch.cat(parts, dim=1))
