"""3D CNN encoders that expose pooled embeddings of intermediate stages.

We wrap MONAI's :class:`monai.networks.nets.ResNet` rather than writing a 3D ResNet. Deep
radiomics uses features from *intermediate* layers, not only the last one, so the encoder
returns the global-average-pooled output of each requested stage, concatenated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet
from torch import nn

_RESNET_LAYERS = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


class ResNetEncoder(nn.Module):
    """MONAI 3D ResNet (basic blocks) returning multi-stage pooled embeddings.

    Args:
        depth: 10, 18 or 34.
        in_channels: input channels (4 MRI sequences by default).
        block_inplanes: channel widths of the four stages. MONAI's full width is
            ``[64, 128, 256, 512]``; the CPU default ``[16, 32, 64, 128]`` trains ~40x faster.
        stages: which stages (1..4) to pool and concatenate.
        conv1_t_size, conv1_t_stride, no_max_pool: stem settings (small ROIs want a 3³ stride-1
            stem with no max-pool so that stage 4 still has spatial extent).
        pretrained_path: optional local state dict (never downloaded); matching keys are loaded.

    Shapes:
        input ``(B, in_channels, D, H, W)`` → output ``(B, num_features)`` where
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
    ) -> None:
        super().__init__()
        if depth not in _RESNET_LAYERS:
            raise ValueError(f"ResNet depth {depth} not supported; choose from {sorted(_RESNET_LAYERS)}")
        if not stages or any(s not in (1, 2, 3, 4) for s in stages):
            raise ValueError(f"stages must be a non-empty subset of 1..4, got {list(stages)}")
        self.stages = tuple(sorted(stages))
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
        self.num_features = int(sum(block_inplanes[s - 1] for s in self.stages))
        if pretrained_path:
            self.load_pretrained(pretrained_path)

    def load_pretrained(self, path: str) -> dict[str, list[str]]:
        """Load a local state dict (MedicalNet/MONAI style, optional ``module.``/``net.`` prefixes).

        Returns the matched / skipped key lists so callers can report partial loading.
        """
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        own = self.net.state_dict()
        matched, skipped = {}, []
        for key, value in state.items():
            k = key.removeprefix("module.").removeprefix("net.")
            if k in own and own[k].shape == value.shape:
                matched[k] = value
            else:
                skipped.append(key)
        self.net.load_state_dict(matched, strict=False)
        return {"matched": sorted(matched), "skipped": skipped}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            x = n.maxpool(x)
        pooled = []
        for i, layer in enumerate((n.layer1, n.layer2, n.layer3, n.layer4), start=1):
            x = layer(x)
            if i in self.stages:
                pooled.append(torch.flatten(nn.functional.adaptive_avg_pool3d(x, 1), 1))
            if i == self.stages[-1]:
                break
        return torch.cat(pooled, dim=1)
