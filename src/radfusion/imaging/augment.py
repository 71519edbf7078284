"""Training-only augmentation of ROI tensors with MONAI dictionary transforms: spatial ones move
images and habitat masks together, intensity ones touch the images only."""

from __future__ import annotations

import os

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)


class ROIAugment:
    """Training-only augmentation of one ROI tensor ``(C, S, S, S)`` with MONAI dictionary transforms.

    The first ``n_image_channels`` channels are intensities (z-scores), the rest habitat masks, then
    ``n_presence_channels`` constant presence flags (``data.roi.presence_channels``), passed through
    unchanged. An intensity channel that is all zero (a sequence the subject lacks) stays all zero.
    Spatial transforms (left-right flip, small affine) move images and masks together (masks with
    nearest-neighbour interpolation); intensity transforms (scale, shift, bias field) touch images only.
    Probabilities of 0 remove a transform. Called with ``seed=`` (as :class:`SubjectDataset` does, from
    ``(seed, epoch, item)``) the draws depend on that seed only; without it the random state is seeded
    lazily per process from ``torch.initial_seed()``.

    Args:
        n_image_channels: number of intensity channels (``len(data.roi.sequences)``).
        flip_prob: left-right flip (axis x only: hemispheres are nearly symmetric, front/back is not).
        affine_prob, rotate_deg, scale: random rotation (± degrees, each axis) and zoom (± fraction).
        intensity_prob, intensity_scale, intensity_shift: ``x * (1 + U(±scale))`` and ``x + U(±shift)``
            (z-score units).
        bias_field_prob, bias_field_coeff: smooth multiplicative bias field (MONAI ``RandBiasField``).
        n_presence_channels: trailing constant channels left as they are (a rotation would pad them with 0).
    """

    def __init__(self, n_image_channels: int, flip_prob: float = 0.5, affine_prob: float = 0.25,
                 rotate_deg: float = 10.0, scale: float = 0.1, intensity_prob: float = 0.5,
                 intensity_scale: float = 0.1, intensity_shift: float = 0.1, bias_field_prob: float = 0.25,
                 bias_field_coeff: float = 0.1, n_presence_channels: int = 0) -> None:
        self.n_image_channels = n_image_channels
        self.n_presence_channels = n_presence_channels
        both = ["image", "mask"]
        steps = []
        if flip_prob > 0:
            steps.append(RandFlipd(both, prob=flip_prob, spatial_axis=2, allow_missing_keys=True))
        if affine_prob > 0:
            steps.append(RandAffined(both, prob=affine_prob, rotate_range=[np.deg2rad(rotate_deg)] * 3,
                                     scale_range=[scale] * 3, mode=["bilinear", "nearest"], padding_mode="zeros",
                                     allow_missing_keys=True))
        if intensity_prob > 0:
            steps += [RandScaleIntensityd("image", factors=intensity_scale, prob=intensity_prob),
                      RandShiftIntensityd("image", offsets=intensity_shift, prob=intensity_prob)]
        if bias_field_prob > 0:
            steps.append(RandBiasFieldd("image", prob=bias_field_prob, coeff_range=(0.0, bias_field_coeff)))
        self.transform = Compose(steps)
        self._seeded_pid: int | None = None

    def __call__(self, roi: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Augment one ROI; with ``seed`` its random draws depend on that seed only (exact resume)."""
        if seed is not None:
            self.transform.set_random_state(seed=int(seed) % (2**32))
            self._seeded_pid = None
        elif self._seeded_pid != os.getpid():
            self.transform.set_random_state(seed=torch.initial_seed() % (2**32))
            self._seeded_pid = os.getpid()
        end = roi.shape[0] - self.n_presence_channels
        data = {"image": roi[: self.n_image_channels]}
        if end > self.n_image_channels:
            data["mask"] = roi[self.n_image_channels:end]
        absent = data["image"].flatten(1).abs().amax(1) == 0  # missing sequences: no shift/bias may fill them
        out = self.transform(data)
        # MONAI returns MetaTensors; plain tensors keep the default collate and the batch contract simple.
        parts = [out[k].as_tensor() if hasattr(out[k], "as_tensor") else torch.as_tensor(out[k])
                 for k in ("image", "mask") if k in out]
        parts[0] = parts[0].clone()
        parts[0][absent] = 0
        return torch.cat([*parts, roi[end:]], dim=0).float()
