"""MONAI DenseNet-121 as a multi-stage encoder (pooled output of each dense block)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DenseNet
from torch import nn

from radfusion.models.encoders.base import StageEncoder


class DenseNetEncoder(StageEncoder):
    """MONAI :class:`~monai.networks.nets.DenseNet` (121 layout by default) returning pooled dense blocks.

    Stage ``i`` is the output of dense block ``i`` (before its transition; block 4 after the final
    norm + ReLU).

    Args:
        in_channels: input channels.
        init_features, growth_rate, bn_size: widths. DenseNet-121 proper is 64 / 32 / 4 (GPU, MONAI
            weights); the CPU default 16 / 8 / 4 keeps the 121-layer depth at 1/16 of the FLOPs.
        block_config: layers per dense block ((6, 12, 24, 16) is DenseNet-121).
        stages: which dense blocks (1..4) to pool.
        small_stem: replace the 7³ stride-2 convolution + max-pool stem by a 3³ stride-2 convolution
            without pooling, so that a 48³ ROI still has 3³ voxels at block 4 instead of 1³.
        combine, proj_dim, frozen, pretrained_path: see :class:`StageEncoder`.

    Shapes:
        ``(B, in_channels, D, H, W)`` → ``(B, num_features)``.
    """

    def __init__(
        self,
        in_channels: int = 4,
        init_features: int = 16,
        growth_rate: int = 8,
        block_config: Sequence[int] = (6, 12, 24, 16),
        bn_size: int = 4,
        stages: Sequence[int] = (2, 3, 4),
        small_stem: bool = True,
        combine: str = "concat",
        proj_dim: int = 64,
        frozen: bool = False,
        pretrained_path: str | None = None,
        allow_unsafe_load: bool = False,
    ) -> None:
        super().__init__()
        n_blocks = self.n_blocks = len(block_config)
        self.stages = self._check_stages(stages, range(1, n_blocks + 1), "DenseNetEncoder")
        self.in_channels = in_channels
        self.net = DenseNet(spatial_dims=3, in_channels=in_channels, out_channels=1, init_features=init_features,
                            growth_rate=growth_rate, block_config=tuple(block_config), bn_size=bn_size)
        del self.net.class_layers  # the classifier is not part of the encoder
        if small_stem:
            self.net.features.conv0 = nn.Conv3d(in_channels, init_features, 3, stride=2, padding=1, bias=False)
            nn.init.kaiming_normal_(self.net.features.conv0.weight)
            self.net.features.pool0 = nn.Identity()
        dims, channels = [], init_features
        for i, n_layers in enumerate(block_config, start=1):
            channels += n_layers * growth_rate
            dims.append(channels)
            if i < n_blocks:
                channels //= 2
        self._final_act = nn.ReLU()
        self._finish([dims[s - 1] for s in self.stages], combine, proj_dim, frozen, pretrained_path,
                     allow_unsafe_load=allow_unsafe_load)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for name, module in self.net.features.named_children():
            x = module(x)
            if name.startswith("denseblock"):
                block = int(name.removeprefix("denseblock"))
                if block in self.stages and block < self.n_blocks:
                    maps.append(x)
                if block == self.stages[-1] and block < self.n_blocks:
                    return maps  # deeper blocks are not needed: skip their compute
            elif name == "norm5" and self.n_blocks in self.stages:
                maps.append(self._final_act(x))
        return maps
