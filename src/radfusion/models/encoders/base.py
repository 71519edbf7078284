"""The interface every image encoder shares: pooled embeddings of several intermediate stages.

Deep radiomics uses features of *intermediate* layers, not only the last one. Each encoder wraps a
MONAI / nnU-Net network (``self.net``), returns the feature maps of the requested ``stages``
(:meth:`forward_features`), global-average-pools each one and then either concatenates them
(``combine="concat"``) or projects each stage to ``proj_dim`` first (``combine="project"``, so that a
512-channel stage does not drown a 64-channel one). The fusion head sizes itself from
``num_features`` (timm naming) and, for attention fusion, from ``token_dims`` (one token per stage).

Frozen mode (``frozen=True``): the backbone is fixed (no gradients, BatchNorm in eval mode) and only
the projection trains. Its pooled output then depends only on the input, so it is computed once per
subject and cached (:mod:`radfusion.training.frozen`); :meth:`forward` accepts such a cached
``(B, raw_features)`` tensor in place of the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from radfusion.cache import chunks_sha1
from radfusion.models.pretrained import load_matching

COMBINE = ("concat", "project")


class StageEncoder(nn.Module):
    """Base class. Subclasses build ``self.net``, implement :meth:`forward_features` and call
    :meth:`_finish` with the channel count of each selected stage.

    Attributes:
        stages: selected stages (sorted, 1-based unless the subclass says otherwise).
        stage_dims: channels of each selected stage; ``raw_features = sum(stage_dims)``.
        token_dims: width of each stage's embedding after ``combine``; ``num_features = sum(token_dims)``.
        frozen: whether the backbone is fixed (embeddings cacheable).

    Shapes:
        ``(B, C, D, H, W)`` image, or ``(B, raw_features)`` cached pooled embedding → ``(B, num_features)``.
    """

    net: nn.Module

    def _finish(self, stage_dims: Sequence[int], combine: str = "concat", proj_dim: int = 64,
                frozen: bool = False, pretrained_path: str | None = None, allow_unsafe_load: bool = False) -> None:
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
        self.stage_dims = [int(c) for c in stage_dims]
        self.raw_features = int(sum(self.stage_dims))
        self.combine = combine
        if combine == "project":
            self.projections = nn.ModuleList(
                nn.Sequential(nn.Linear(c, proj_dim), nn.LayerNorm(proj_dim)) for c in self.stage_dims)
            self.token_dims = [int(proj_dim)] * len(self.stage_dims)
        else:
            self.projections = None
            self.token_dims = list(self.stage_dims)
        self.num_features = int(sum(self.token_dims))
        self.pretrained_report: dict | None = None
        if pretrained_path:
            self.load_pretrained(pretrained_path, allow_unsafe_load=allow_unsafe_load)
        self.frozen = bool(frozen)
        if self.frozen:
            self.net.requires_grad_(False)
            self.net.eval()

    @staticmethod
    def _check_stages(stages: Sequence[int], allowed: Sequence[int], name: str) -> tuple[int, ...]:
        stages = tuple(sorted(int(s) for s in stages))
        if not stages or any(s not in allowed for s in stages) or len(set(stages)) != len(stages):
            raise ValueError(f"{name}: stages must be a non-empty subset of {list(allowed)}, got {list(stages)}")
        return stages

    # ------------------------------------------------------------------ interface
    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps ``(B, stage_dims[i], d, h, w)`` of the selected stages, shallow to deep."""
        raise NotImplementedError

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenated global-average-pooled stage maps ``(B, raw_features)`` (what frozen mode caches)."""
        if self.frozen:
            with torch.no_grad():
                maps = self.forward_features(x)
        else:
            maps = self.forward_features(x)
        return torch.cat([torch.flatten(nn.functional.adaptive_avg_pool3d(m, 1), 1) for m in maps], dim=1)

    def combine_stages(self, raw: torch.Tensor) -> torch.Tensor:
        """``(B, raw_features)`` → ``(B, num_features)`` (identity for ``concat``)."""
        if self.projections is None:
            return raw
        chunks = torch.split(raw, self.stage_dims, dim=1)
        return torch.cat([p(c) for p, c in zip(self.projections, chunks, strict=True)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            if x.shape[1] != self.raw_features:
                raise ValueError(f"{type(self).__name__}: a cached embedding must have {self.raw_features} "
                                 f"columns, got {tuple(x.shape)}; was the cache made with another encoder?")
            return self.combine_stages(x)
        if x.dim() != 5:
            raise ValueError(f"{type(self).__name__}: expected (B, C, D, H, W) images, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: the image has {x.shape[1]} channels (data.roi.sequences + "
                             f"data.roi.habitats) but model.encoder.in_channels={self.in_channels}")
        return self.combine_stages(self.pooled(x))

    def train(self, mode: bool = True) -> StageEncoder:
        super().train(mode)
        if getattr(self, "frozen", False):
            self.net.eval()  # a frozen backbone keeps its BatchNorm statistics
        return self

    def load_pretrained(self, path: str, adapt_in_channels: bool = True, allow_unsafe_load: bool = False) -> dict:
        """Load matching tensors of a local weights file into the backbone; return the key report
        (``matched``, ``skipped`` with reasons, ``missing``, ``adapted``, ``prefix``). The file is read
        without executing code unless ``allow_unsafe_load`` (:func:`radfusion.safe_load.load_torch_file`)."""
        self.pretrained_report = load_matching(self.net, path, adapt_in_channels=adapt_in_channels,
                                               allow_unsafe_load=allow_unsafe_load)
        return self.pretrained_report

    def backbone_hash(self) -> str:
        """SHA-1 of the backbone's weights and the stage selection (the embedding cache key)."""

        def chunks():  # one tensor's bytes at a time, never the whole model's
            yield f"{type(self).__name__}:{self.stages}"
            for name, tensor in sorted(self.net.state_dict().items()):
                yield name
                yield tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes()

        return chunks_sha1(chunks())
