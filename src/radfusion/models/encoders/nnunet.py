"""The encoder of a trained nnU-Net v2 model as a feature extractor.

A BraTS user has usually trained nnU-Net already; its encoder has learned what tumour tissue looks
like in these four sequences. This wraps ``network.encoder`` (PlainConvEncoder / ResidualEncoder of
dynamic-network-architectures, built with ``return_skips=True``) and pools the selected stages.

Input conventions to respect (nnU-Net's, not ours): the channel order of its ``dataset.json``
(``channel_names``) must match ``data.roi.sequences``, and its voxel spacing (``plans.json``, ~1 mm
for BraTS) should match the ROI's: use ``data.roi.extent=fixed`` so the crop is not rescaled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from radfusion.models.encoders.base import StageEncoder
from radfusion.models.pretrained import load_nnunet_network

log = logging.getLogger(__name__)


class NNUNetEncoder(StageEncoder):
    """Pooled stage embeddings from the encoder of an nnU-Net v2 checkpoint.

    Args:
        checkpoint: local ``fold_N/checkpoint_final.pth`` of a trained nnU-Net v2 model.
        plans: ``plans.json`` (default: from the checkpoint, else next to the fold folder).
        configuration: nnU-Net configuration (default: the checkpoint's, e.g. ``3d_fullres``).
        stages: encoder stages to pool (1..n_stages); default the last three.
        in_channels: expected input channels (checked against the checkpoint; None = don't check).
        combine, proj_dim, frozen: see :class:`StageEncoder`. Frozen by default: the point is to reuse
            what the segmentation model learned, and the cached embeddings make training fast.
        allow_unsafe_load: read a checkpoint the weights-only unpickler refuses (trusted files only;
            :func:`radfusion.safe_load.load_torch_file`).

    Shapes:
        ``(B, C, D, H, W)`` with ``C`` the checkpoint's input channels → ``(B, num_features)``.
    """

    def __init__(
        self,
        checkpoint: str,
        plans: str | None = None,
        configuration: str | None = None,
        stages: Sequence[int] | None = None,
        in_channels: int | None = None,
        combine: str = "project",
        proj_dim: int = 64,
        frozen: bool = True,
        allow_unsafe_load: bool = False,
    ) -> None:
        super().__init__()
        network, self.info = load_nnunet_network(checkpoint, plans, configuration, allow_unsafe_load=allow_unsafe_load)
        n_stages = len(self.info["features_per_stage"])
        if stages is None:
            stages = tuple(range(max(1, n_stages - 2), n_stages + 1))
        self.stages = self._check_stages(stages, range(1, n_stages + 1), "NNUNetEncoder")
        if in_channels is not None and in_channels != self.info["input_channels"]:
            raise ValueError(f"nnU-Net checkpoint {checkpoint} expects {self.info['input_channels']} input "
                             f"channels, the ROI has {in_channels} (data.roi.sequences / habitats)")
        self.in_channels = self.info["input_channels"]
        self.net = network.encoder  # the decoder is dropped with `network`
        self.net.return_skips = True
        self._finish([self.info["features_per_stage"][s - 1] for s in self.stages], combine, proj_dim, frozen)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = self.net
        if getattr(n, "stem", None) is not None:
            x = n.stem(x)
        maps = []
        for i, stage in enumerate(n.stages, start=1):
            x = stage(x)
            if i in self.stages:
                maps.append(x)
            if i == self.stages[-1]:
                break
        return maps
