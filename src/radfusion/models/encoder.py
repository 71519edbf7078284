"""Backwards-compatible home of the encoders; they live in :mod:`radfusion.models.encoders`."""

from radfusion.models.encoders import (
    DenseNetEncoder,
    NNUNetEncoder,
    ResNetEncoder,
    SegResNetEncoder,
    StageEncoder,
    SwinEncoder,
)

__all__ = ["DenseNetEncoder", "NNUNetEncoder", "ResNetEncoder", "SegResNetEncoder", "StageEncoder", "SwinEncoder"]
