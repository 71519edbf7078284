"""The encoder half of MONAI's SegResNet (the BraTS 2018 winner's architecture)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import SegResNet

from radfusion.models.encoders.base import StageEncoder


class SegResNetEncoder(StageEncoder):
    """MONAI :class:`~monai.networks.nets.SegResNet` encoder; stage ``i`` is down level ``i``.

    Uses ``SegResNet.encode(x) -> (x, down_x)``; the decoder is removed. Level ``i`` (1-based) has
    ``init_filters * 2**(i-1)`` channels at ``1 / 2**(i-1)`` of the input size.

    Args:
        in_channels: input channels.
        init_filters: channels of level 1 (MONAI default 8; 16-32 for BraTS segmentation on GPU).
        blocks_down: residual blocks per level (MONAI default ``(1, 2, 2, 4)``).
        stages: which levels (1..len(blocks_down)) to pool.
        norm: normalisation (MONAI's group norm by default; works with batch size 1).
        combine, proj_dim, frozen, pretrained_path: see :class:`StageEncoder`. A trained MONAI
            SegResNet state dict loads directly (its decoder keys are reported as skipped).

    Shapes:
        ``(B, in_channels, D, H, W)`` → ``(B, num_features)``.
    """

    def __init__(
        self,
        in_channels: int = 4,
        init_filters: int = 8,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        stages: Sequence[int] = (2, 3, 4),
        norm: tuple | str = ("GROUP", {"num_groups": 8}),
        combine: str = "concat",
        proj_dim: int = 64,
        frozen: bool = False,
        pretrained_path: str | None = None,
        allow_unsafe_load: bool = False,
    ) -> None:
        super().__init__()
        self.stages = self._check_stages(stages, range(1, len(blocks_down) + 1), "SegResNetEncoder")
        self.in_channels = in_channels
        self.net = SegResNet(spatial_dims=3, init_filters=init_filters, in_channels=in_channels, out_channels=1,
                             norm=norm, blocks_down=tuple(blocks_down), blocks_up=(1,) * (len(blocks_down) - 1))
        # Only `encode` is used: drop the decoder so it costs neither memory nor optimiser state.
        del self.net.up_layers, self.net.up_samples, self.net.conv_final
        self._finish([init_filters * 2 ** (s - 1) for s in self.stages], combine, proj_dim, frozen, pretrained_path,
                     allow_unsafe_load=allow_unsafe_load)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = self.net
        x = n.convInit(x)
        maps = []
        for level, down in enumerate(n.down_layers, start=1):
            x = down(x)
            if level in self.stages:
                maps.append(x)
            if level == self.stages[-1]:
                break
        return maps
