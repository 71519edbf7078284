"""MONAI 3D ResNet-10/18/34 (basic blocks) as a multi-stage encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet

from radfusion.models.encoders.base import StageEncoder

_RESNET_LAYERS = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


class ResNetEncoder(StageEncoder):
    """MONAI :class:`~monai.networks.nets.ResNet` returning pooled embeddings of stages 1..4.

    Args:
        depth: 10, 18 or 34.
        in_channels: input channels (4 MRI sequences, plus habitat masks if the ROI adds them).
        block_inplanes: channel widths of the four stages. MONAI's full width is
            ``[64, 128, 256, 512]`` (GPU, and MedicalNet weights); the CPU default ``[16, 32, 64, 128]``
            trains ~40x faster.
        stages: which stages (1..4) to pool.
        conv1_t_size, conv1_t_stride, no_max_pool: stem. Small ROIs want a 3³ stride-1 stem and no
            max-pool so that stage 4 still has spatial extent; MedicalNet weights use 7³ stride 2.
        combine, proj_dim, frozen: see :class:`StageEncoder`.
        pretrained_path: local state dict (MedicalNet / MONAI / a radfusion checkpoint); never downloaded.

    Shapes:
        ``(B, in_channels, D, H, W)`` → ``(B, num_features)``; with ``combine="concat"``
        ``num_features = sum(block_inplanes[s - 1] for s in stages)``.
    """

    def __init__(
        self,
        depth: int = 10,
        in_channels: int = 4,
        block_inplanes: Sequence[int] = (16, 32, 64, 128),
        stages: Sequence[int] = (2, 3, 4),
        conv1_t_size: int = 3,
        conv1_t_stride: int = 1,
        no_max_pool: bool = True,
        pretrained_path: str | None = None,
        allow_unsafe_load: bool = False,
        combine: str = "concat",
        proj_dim: int = 64,
        frozen: bool = False,
    ) -> None:
        super().__init__()
        if depth not in _RESNET_LAYERS:
            raise ValueError(f"ResNet depth {depth} not supported; choose from {sorted(_RESNET_LAYERS)}")
        self.stages = self._check_stages(stages, (1, 2, 3, 4), "ResNetEncoder")
        self.in_channels = in_channels
        self.net = ResNet(
            block="basic",
            layers=_RESNET_LAYERS[depth],
            block_inplanes=list(block_inplanes),
            spatial_dims=3,
            n_input_channels=in_channels,
            conv1_t_size=conv1_t_size,
            conv1_t_stride=conv1_t_stride,
            no_max_pool=no_max_pool,
            feed_forward=False,
        )
        self._finish([block_inplanes[s - 1] for s in self.stages], combine, proj_dim, frozen, pretrained_path,
                     allow_unsafe_load=allow_unsafe_load)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = self.net
        x = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            x = n.maxpool(x)
        maps = []
        for i, layer in enumerate((n.layer1, n.layer2, n.layer3, n.layer4), start=1):
            x = layer(x)
            if i in self.stages:
                maps.append(x)
            if i == self.stages[-1]:
                break  # deeper stages are not needed: skip their compute
        return maps
