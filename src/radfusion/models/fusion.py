"""The radiomics branch, the fusion of both branches, and the prediction heads.

One network, three modes, so that comparisons are fair (same heads, same training loop):

- ``handcrafted``: radiomics MLP → heads
- ``deep``:        CNN embedding → projection → heads
- ``hybrid``:      fuser(CNN embedding, radiomics embedding) → heads, with the fuser one of

  - :class:`ConcatFusion`: concatenation (late fusion; the default);
  - :class:`GatedFusion`: a gated multimodal unit (Arevalo et al., 2017): per dimension, a sigmoid gate
    computed from both branches mixes their (tanh) projections, so the model can weigh each branch per
    subject;
  - :class:`CrossAttentionFusion`: cross-attention between learned tokens of the radiomics vector and
    one token per pooled CNN stage (radiomics tokens query image tokens and vice versa, residual +
    LayerNorm), then the mean of each side's tokens is concatenated.

Every fuser has one interface: it is built as ``fuser(d_image, d_radiomics)`` from the two branch
widths (its own settings bound beforehand, e.g. ``functools.partial`` or Hydra's ``_partial_: true``
in ``configs/model/fusion/<name>.yaml``), exposes ``out_features`` and maps
``forward(image, radiomics)`` to ``(B, out_features)``. Its class attribute ``image_input`` says what
it fuses: ``"projected"`` (the CNN embedding after :class:`FusionNet`'s ``image_proj``, ``d_image`` an
int) or ``"stages"`` (the raw pooled stage embeddings, ``d_image`` the list of stage widths). A new
fusion is such a class plus a YAML, not a branch in :class:`FusionNet`.

A third, optional branch takes the fold-processed clinical covariates (``clinical_dim`` > 0, see
:mod:`radfusion.features.clinical`): a small MLP whose embedding is concatenated to the fuser's output
in every mode, so the fusers above (and their outputs without clinical inputs) are unchanged. Mode
``clinical`` has the clinical branch only (the clinical-only reference model).

``modality_dropout`` (hybrid, training only): each subject's image or radiomics embedding is zeroed with
this probability (never both), so the head cannot learn to rely on one branch and ignore the other.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

MODES = ("handcrafted", "deep", "hybrid", "clinical")

#: What builds a fuser from the branch widths: ``factory(d_image, d_radiomics) -> nn.Module``.
FusionFactory = Callable[..., nn.Module]


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


class ConcatFusion(nn.Module):
    """Late fusion: the branch embeddings side by side, image first (no parameters).

    Also the "fusion" of the single-branch modes: a missing branch (width 0, tensor None) is left out.
    Shapes: ``(B, d_image)``, ``(B, d_radiomics)`` → ``(B, d_image + d_radiomics)``.
    """

    image_input = "projected"

    def __init__(self, d_image: int, d_radiomics: int) -> None:
        super().__init__()
        self.out_features = int(d_image) + int(d_radiomics)

    def forward(self, image: torch.Tensor | None, radiomics: torch.Tensor | None) -> torch.Tensor:
        return torch.cat([t for t in (image, radiomics) if t is not None], dim=1)


class GatedFusion(nn.Module):
    """Gated multimodal unit: ``z * tanh(W_i x_i) + (1 - z) * tanh(W_r x_r)``, ``z = σ(W [x_i; x_r])``.

    Shapes: ``(B, d_image)``, ``(B, d_radiomics)`` → ``(B, dim)``.
    """

    image_input = "projected"

    def __init__(self, d_image: int, d_radiomics: int, dim: int = 32) -> None:
        super().__init__()
        self.image = nn.Linear(d_image, dim)
        self.radiomics = nn.Linear(d_radiomics, dim)
        self.gate = nn.Linear(d_image + d_radiomics, dim)
        self.out_features = dim
        self.last_gate: torch.Tensor | None = None

    def forward(self, image: torch.Tensor, radiomics: torch.Tensor) -> torch.Tensor:
        z = torch.sigmoid(self.gate(torch.cat([image, radiomics], dim=1)))
        self.last_gate = z.detach()  # (B, dim): weight of the image side per subject, for explanations
        return z * torch.tanh(self.image(image)) + (1 - z) * torch.tanh(self.radiomics(radiomics))


class CrossAttentionFusion(nn.Module):
    """Bidirectional cross-attention between radiomics tokens and CNN stage tokens.

    Args:
        token_dims: width of each image token (one per pooled encoder stage).
        d_radiomics: width of the radiomics embedding, split into ``n_radiomics_tokens`` learned tokens.
        dim: token width; ``heads`` must divide it.

    Shapes: ``(B, sum(token_dims))``, ``(B, d_radiomics)`` → ``(B, 2 * dim)``.
    """

    image_input = "stages"

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


def fusion_factory(fuser: FusionFactory | Mapping | None) -> FusionFactory:
    """The callable that builds a fuser: ``None`` → :class:`ConcatFusion`; a class or partial as it is;
    a ``{_target_: ..., **settings}`` mapping (a ``configs/model/fusion/`` block, or what a checkpoint
    stores) → its partial, instantiated by Hydra."""
    if fuser is None:
        return ConcatFusion
    if isinstance(fuser, Mapping):
        from hydra.utils import instantiate

        return instantiate(dict(fuser), _partial_=True, _convert_="all")
    if not callable(fuser):
        raise TypeError(f"fusion: expected a class, a partial or a {{_target_: ...}} mapping, got {fuser!r}")
    return fuser


def fusion_config(fuser: FusionFactory | Mapping | None) -> dict[str, Any] | None:
    """A fuser factory as plain containers, ``{_target_, _partial_: True, **settings}``.

    Hydra hands :class:`~radfusion.models.lit_module.RadFusionModule` an instantiated partial; its
    checkpoint stores this description instead, so it loads with ``torch.load(weights_only=True)``
    and :func:`fusion_factory` rebuilds the same fuser from it.
    """
    if fuser is None:
        return None
    if isinstance(fuser, Mapping):
        return _plain(dict(fuser))
    func = getattr(fuser, "func", fuser)
    if isinstance(fuser, functools.partial) and fuser.args:
        raise ValueError(f"fusion: bind the settings of {func.__qualname__} by keyword, not position")
    keywords = dict(fuser.keywords) if isinstance(fuser, functools.partial) else {}
    return {"_target_": f"{func.__module__}.{func.__qualname__}", "_partial_": True, **_plain(keywords)}


def _plain(d: dict) -> dict:
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        return d
    return {k: (OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v) for k, v in d.items()}


def _image_input(factory: FusionFactory) -> str:
    """``"projected"`` or ``"stages"``: the ``image_input`` of the class a factory (or partial) builds."""
    return getattr(getattr(factory, "func", factory), "image_input", "projected")


class FusionNet(nn.Module):
    """Fuse a CNN embedding with a radiomics vector and predict one logit per target.

    Args:
        mode: ``handcrafted`` | ``deep`` | ``hybrid`` | ``clinical`` (clinical branch only).
        n_outputs: number of logits (one per target marker).
        encoder: an image encoder with attribute ``num_features`` (needed for deep/hybrid); a
            :class:`~radfusion.models.encoders.StageEncoder` also gives ``token_dims`` for attention.
        radiomics_dim: length of the (fold-processed) radiomics vector (needed for handcrafted/hybrid).
        radiomics_hidden: widths of the radiomics MLP.
        image_hidden: width of the projection of the CNN embedding (fusers with ``image_input =
            "projected"``; deep mode).
        head_hidden: widths of the MLP after fusion.
        dropout: dropout in every MLP.
        fuser: how the two branches are fused (hybrid only; the single-branch modes always use
            :class:`ConcatFusion`): a factory ``fuser(d_image, d_radiomics)`` (class or partial) or a
            ``{_target_: ..., **settings}`` mapping (see :func:`fusion_factory`); None = concat.
        modality_dropout: probability, per training subject, of zeroing one branch (hybrid only).
        clinical_dim: width of the fold-processed clinical vector; > 0 adds the clinical branch (any
            mode; required by ``clinical``). None/0: no clinical branch (the network is as before).
        clinical_hidden: widths of the clinical MLP.

    Shapes:
        ``image`` ``(B, C, D, H, W)`` (or a cached ``(B, raw_features)`` embedding for a frozen
        encoder), ``radiomics`` ``(B, radiomics_dim)``, ``clinical`` ``(B, clinical_dim)`` → logits
        ``(B, n_outputs)``.
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
        fuser: FusionFactory | Mapping | None = None,
        modality_dropout: float = 0.0,
        clinical_dim: int | None = None,
        clinical_hidden: Sequence[int] = (16,),
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        if mode == "clinical" and not clinical_dim:
            raise ValueError("mode 'clinical' needs clinical covariates: set model.clinical (e.g. [age, sex])")
        factory = fusion_factory(fuser) if mode == "hybrid" else ConcatFusion
        if _image_input(factory) not in ("projected", "stages"):
            raise ValueError(f"fusion {factory!r}: image_input must be 'projected' or 'stages'")
        self.mode = mode
        self.modality_dropout = float(modality_dropout) if mode == "hybrid" else 0.0
        self.uses_images = mode in ("deep", "hybrid")
        self.uses_radiomics = mode in ("handcrafted", "hybrid")
        if self.uses_images:
            if encoder is None:
                raise ValueError(f"mode {mode!r} needs an image encoder (model.encoder is null)")
            self.encoder = encoder
        # Construction order = parameter initialisation order (the global RNG): radiomics MLP, image
        # projection, fuser, head. Runs with a fixed seed depend on it; keep it.
        if self.uses_radiomics:
            if not radiomics_dim:
                raise ValueError(f"mode {mode!r} needs radiomics features, but the vector is empty")
            self.radiomics_mlp = mlp(radiomics_dim, radiomics_hidden, dropout)
        d_rad = (radiomics_hidden[-1] if radiomics_hidden else radiomics_dim) if self.uses_radiomics else 0

        self.image_proj: nn.Module | None = None
        d_img: int | list[int] = 0
        if self.uses_images and _image_input(factory) == "stages":
            d_img = list(getattr(encoder, "token_dims", None) or [encoder.num_features])
        elif self.uses_images:
            self.image_proj = mlp(encoder.num_features, [image_hidden], dropout)
            d_img = image_hidden
        self.fuser = factory(d_img, d_rad)
        width = int(self.fuser.out_features) if self.uses_images or self.uses_radiomics else 0
        self.uses_clinical = bool(clinical_dim)
        if self.uses_clinical:  # built after the fuser: networks without clinical inputs keep their init
            self.clinical_mlp = mlp(int(clinical_dim), clinical_hidden, dropout)
            width += int(clinical_hidden[-1]) if clinical_hidden else int(clinical_dim)
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
            if self.image_proj is not None:
                img = self.image_proj(img)
        if self.uses_radiomics:
            if radiomics is None:
                raise ValueError(f"mode {self.mode!r} needs the batch's 'radiomics'")
            rad = self.radiomics_mlp(radiomics)
        if self.training and self.modality_dropout > 0:
            keep_img, keep_rad = modality_dropout_masks(rad.shape[0], self.modality_dropout, rad.device)
            img, rad = img * keep_img, rad * keep_rad
        return img, rad

    def embed_clinical(self, clinical: torch.Tensor | None = None) -> torch.Tensor | None:
        """The clinical branch's embedding (None without a clinical branch; the input is then ignored)."""
        if not self.uses_clinical:
            return None
        if clinical is None:
            raise ValueError("this model has a clinical branch (model.clinical) but the batch has no 'clinical'")
        return self.clinical_mlp(clinical)

    def fuse(self, image: torch.Tensor | None, radiomics: torch.Tensor | None,
             clinical: torch.Tensor | None = None) -> torch.Tensor:
        """The head's input from branch embeddings: the fuser's output, then the clinical embedding."""
        parts = [self.fuser(image, radiomics)] if self.uses_images or self.uses_radiomics else []
        if clinical is not None:
            parts.append(clinical)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(self, image: torch.Tensor | None = None, radiomics: torch.Tensor | None = None,
                clinical: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.fuse(*self.embed(image, radiomics), self.embed_clinical(clinical)))
