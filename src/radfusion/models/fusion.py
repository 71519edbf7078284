"""The radiomics branch, the fusion of both branches, and the prediction heads.

One network, three modes, so that comparisons are fair (same heads, same training loop):

- ``handcrafted``: radiomics MLP → heads
- ``deep``:        CNN embedding → projection → heads
- ``hybrid``:      fuse(radiomics embedding, CNN embedding) → heads, with ``fusion``:

  - ``concat``: concatenation (late fusion);
  - ``gated``: a gated multimodal unit (Arevalo et al., 2017): per dimension, a sigmoid gate computed
    from both branches mixes their (tanh) projections, so the model can weigh each branch per subject;
  - ``attention``: cross-attention between ``radiomics_tokens`` learned tokens of the radiomics vector and
    one token per pooled CNN stage (radiomics tokens query image tokens and vice versa, residual +
    LayerNorm), then the mean of each side's tokens is concatenated.

``modality_dropout`` (hybrid, training only): each subject's image or radiomics embedding is zeroed with
this probability (never both), so the head cannot learn to rely on one branch and ignore the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MODES = ("handcrafted", "deep", "hybrid")
FUSIONS = ("concat", "gated", "attention")


def mlp(in_features: int, hidden: Sequence[int], dropout: float) -> nn.Sequential:
    """Linear → LayerNorm → GELU → Dropout blocks; returns an empty Sequential for ``hidden=[]``."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout)]
        in_features = width
    return nn.Sequential(*layers)


def modality_dropout_masks(batch: int, p: float, device: torch.device | None = None,
                           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep-masks ``(B, 1)`` for the image and radiomics branches.

    Each subject loses one branch with probability ``p`` (which one: a fair coin); never both, so
    every subject still carries signal.
    """
    drop = torch.rand(batch, 1, device=device, generator=generator) < p
    image_side = torch.rand(batch, 1, device=device, generator=generator) < 0.5
    keep_image = ~(drop & image_side)
    keep_radiomics = ~(drop & ~image_side)
    return keep_image.float(), keep_radiomics.float()


class GatedFusion(nn.Module):
    """Gated multimodal unit: ``z * tanh(W_i x_i) + (1 - z) * tanh(W_r x_r)``, ``z = σ(W [x_i; x_r])``.

    Shapes: ``(B, d_image)``, ``(B, d_radiomics)`` → ``(B, dim)``.
    """

    def __init__(self, d_image: int, d_radiomics: int, dim: int) -> None:
        super().__init__()
        self.image = nn.Linear(d_image, dim)
        self.radiomics = nn.Linear(d_radiomics, dim)
        self.gate = nn.Linear(d_image + d_radiomics, dim)
        self.out_features = dim

    def forward(self, image: torch.Tensor, radiomics: torch.Tensor) -> torch.Tensor:
        z = torch.sigmoid(self.gate(torch.cat([image, radiomics], dim=1)))
        return z * torch.tanh(self.image(image)) + (1 - z) * torch.tanh(self.radiomics(radiomics))


class CrossAttentionFusion(nn.Module):
    """Bidirectional cross-attention between radiomics tokens and CNN stage tokens.

    Args:
        token_dims: width of each image token (one per pooled encoder stage).
        d_radiomics: width of the radiomics embedding, split into ``n_radiomics_tokens`` learned tokens.
        dim: token width; ``heads`` must divide it.

    Shapes: ``(B, sum(token_dims))``, ``(B, d_radiomics)`` → ``(B, 2 * dim)``.
    """

    def __init__(self, token_dims: Sequence[int], d_radiomics: int, dim: int = 32, n_radiomics_tokens: int = 4,
                 heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention fusion: dim ({dim}) must be a multiple of heads ({heads})")
        self.token_dims = [int(d) for d in token_dims]
        self.n_radiomics_tokens = n_radiomics_tokens
        self.dim = dim
        self.image_tokens = nn.ModuleList(nn.Linear(d, dim) for d in self.token_dims)
        self.radiomics_tokens = nn.Linear(d_radiomics, n_radiomics_tokens * dim)
        # Tokens of each side share a type embedding so attention can tell them apart after mixing.
        self.type_embedding = nn.Parameter(torch.zeros(2, dim))
        self.rad_to_img = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.img_to_rad = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_r, self.norm_i = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.out_features = 2 * dim
        self.last_attention: torch.Tensor | None = None

    def forward(self, image: torch.Tensor, radiomics: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(image, self.token_dims, dim=1)
        img = torch.stack([proj(c) for proj, c in zip(self.image_tokens, chunks, strict=True)], dim=1)
        rad = self.radiomics_tokens(radiomics).view(-1, self.n_radiomics_tokens, self.dim)
        img, rad = img + self.type_embedding[0], rad + self.type_embedding[1]
        r_att, weights = self.rad_to_img(rad, img, img, need_weights=True)
        i_att, _ = self.img_to_rad(img, rad, rad, need_weights=False)
        self.last_attention = weights.detach()  # (B, radiomics tokens, image tokens), for inspection
        rad, img = self.norm_r(rad + r_att), self.norm_i(img + i_att)
        return torch.cat([rad.mean(dim=1), img.mean(dim=1)], dim=1)


class FusionNet(nn.Module):
    """Fuse a CNN embedding with a radiomics vector and predict one logit per target.

    Args:
        mode: ``handcrafted`` | ``deep`` | ``hybrid``.
        n_outputs: number of logits (one per target marker).
        encoder: an image encoder with attribute ``num_features`` (needed for deep/hybrid); a
            :class:`~radfusion.models.encoders.StageEncoder` also gives ``token_dims`` for attention.
        radiomics_dim: length of the (fold-processed) radiomics vector (needed for handcrafted/hybrid).
        radiomics_hidden: widths of the radiomics MLP.
        image_hidden: width of the projection of the CNN embedding (concat / gated).
        head_hidden: widths of the MLP after fusion.
        dropout: dropout in every MLP.
        kind: fusion of the two branches, ``concat`` | ``gated`` | ``attention`` (hybrid only).
        fusion_dim: width of the gated unit's output / of the attention tokens.
        attention_heads, radiomics_tokens: cross-attention settings.
        modality_dropout: probability, per training subject, of zeroing one branch (hybrid only).

    Shapes:
        ``image`` ``(B, C, D, H, W)`` (or a cached ``(B, raw_features)`` embedding for a frozen
        encoder), ``radiomics`` ``(B, radiomics_dim)`` → logits ``(B, n_outputs)``.
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
        kind: str = "concat",
        fusion_dim: int = 32,
        attention_heads: int = 4,
        radiomics_tokens: int = 4,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if kind not in FUSIONS:
            raise ValueError(f"fusion kind must be one of {FUSIONS}, got {kind!r}")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.mode = mode
        self.kind = kind if mode == "hybrid" else "concat"
        self.modality_dropout = float(modality_dropout) if mode == "hybrid" else 0.0
        self.uses_images = mode in ("deep", "hybrid")
        self.uses_radiomics = mode in ("handcrafted", "hybrid")
        if self.uses_images:
            if encoder is None:
                raise ValueError(f"mode {mode!r} needs an image encoder (model.encoder is null)")
            self.encoder = encoder
        if self.uses_radiomics:
            if not radiomics_dim:
                raise ValueError(f"mode {mode!r} needs radiomics features, but the vector is empty")
            self.radiomics_mlp = mlp(radiomics_dim, radiomics_hidden, dropout)
        d_rad = (radiomics_hidden[-1] if radiomics_hidden else radiomics_dim) if self.uses_radiomics else 0

        if self.kind == "attention":
            token_dims = getattr(encoder, "token_dims", None) or [encoder.num_features]
            self.fuser = CrossAttentionFusion(token_dims, d_rad, fusion_dim, radiomics_tokens, attention_heads,
                                              dropout=min(dropout, 0.1))
            width = self.fuser.out_features
        else:
            width = d_rad
            if self.uses_images:
                self.image_proj = mlp(encoder.num_features, [image_hidden], dropout)
                width += image_hidden
            if self.kind == "gated":
                self.fuser = GatedFusion(image_hidden, d_rad, fusion_dim)
                width = fusion_dim
        self.head = nn.Sequential(mlp(width, head_hidden, dropout),
                                  nn.Linear(head_hidden[-1] if head_hidden else width, n_outputs))

    def embed(self, image: torch.Tensor | None = None,
              radiomics: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Branch embeddings before fusion (after modality dropout when training)."""
        img = rad = None
        if self.uses_images:
            if image is None:
                raise ValueError(f"mode {self.mode!r} needs the batch's 'image'")
            img = self.encoder(image)
            if self.kind != "attention":
                img = self.image_proj(img)
        if self.uses_radiomics:
            if radiomics is None:
                raise ValueError(f"mode {self.mode!r} needs the batch's 'radiomics'")
            rad = self.radiomics_mlp(radiomics)
        if self.training and self.modality_dropout > 0:
            keep_img, keep_rad = modality_dropout_masks(rad.shape[0], self.modality_dropout, rad.device)
            img, rad = img * keep_img, rad * keep_rad
        return img, rad

    def forward(self, image: torch.Tensor | None = None, radiomics: torch.Tensor | None = None) -> torch.Tensor:
        img, rad = self.embed(image, radiomics)
        if self.mode == "hybrid" and self.kind != "concat":
            return self.head(self.fuser(img, rad))
        return self.head(torch.cat([t for t in (img, rad) if t is not None], dim=1))
