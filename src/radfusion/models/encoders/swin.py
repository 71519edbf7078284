"""SwinUNETR's encoder (MONAI ``SwinTransformer``, the ``swinViT`` of SwinUNETR) as a multi-stage encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.swin_unetr import SwinTransformer

from radfusion.models.encoders.base import StageEncoder


class SwinEncoder(StageEncoder):
    """Hierarchical 3D Swin transformer; stage ``i`` (1..4) is the output of Swin layer ``i``.

    Stage 0 (the patch embedding, ``feature_size`` channels at 1/2 size) may be selected too.
    Stage ``i`` has ``feature_size * 2**i`` channels at ``1 / 2**(i+1)`` of the input size. The input
    edge should be a multiple of 32 for every stage to keep spatial extent (48³ works: MONAI pads the
    odd sizes of the last patch merging).

    Args:
        in_channels: input channels.
        feature_size: embedding width (SwinUNETR: 48 on GPU; the CPU default 12 is the smallest that
            keeps 3/6/12/24 heads).
        depths, num_heads: blocks and attention heads per layer.
        window_size: attention window edge in tokens.
        stages: which of 0..4 to pool.
        combine, proj_dim, frozen, pretrained_path: see :class:`StageEncoder`. SwinUNETR weights
            (``swinViT.*`` keys, e.g. MONAI's self-supervised BraTS/BTCV weights on disk) load directly.

    Shapes:
        ``(B, in_channels, D, H, W)`` → ``(B, num_features)``.
    """

    def __init__(
        self,
        in_channels: int = 4,
        feature_size: int = 12,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        stages: Sequence[int] = (2, 3, 4),
        combine: str = "concat",
        proj_dim: int = 64,
        frozen: bool = False,
        pretrained_path: str | None = None,
        allow_unsafe_load: bool = False,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError("SwinEncoder: depths and num_heads need 4 entries (SwinUNETR's layout)")
        self.stages = self._check_stages(stages, (0, 1, 2, 3, 4), "SwinEncoder")
        self.in_channels = in_channels
        self.net = SwinTransformer(in_chans=in_channels, embed_dim=feature_size, window_size=(window_size,) * 3,
                                   patch_size=(2, 2, 2), depths=tuple(depths), num_heads=tuple(num_heads),
                                   spatial_dims=3)
        self._finish([feature_size * 2 ** s for s in self.stages], combine, proj_dim, frozen, pretrained_path,
                     allow_unsafe_load=allow_unsafe_load)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = self.net
        x = n.pos_drop(n.patch_embed(x))
        outs = [n.proj_out(x, normalize=True)]
        for i, layer in enumerate((n.layers1, n.layers2, n.layers3, n.layers4), start=1):
            if i > self.stages[-1]:
                break  # deeper layers are not needed: skip their compute
            x = layer[0](x.contiguous())
            outs.append(n.proj_out(x, normalize=True))
        return [outs[s] for s in self.stages]
