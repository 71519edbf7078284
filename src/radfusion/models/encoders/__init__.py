"""Image encoders: MONAI ResNet / DenseNet / SegResNet / Swin and nnU-Net's encoder, all exposing
pooled multi-stage embeddings through :class:`StageEncoder` (``num_features``, ``token_dims``)."""

from radfusion.models.encoders.base import StageEncoder
from radfusion.models.encoders.densenet import DenseNetEncoder
from radfusion.models.encoders.nnunet import NNUNetEncoder
from radfusion.models.encoders.resnet import ResNetEncoder
from radfusion.models.encoders.segresnet import SegResNetEncoder
from radfusion.models.encoders.swin import SwinEncoder

__all__ = ["DenseNetEncoder", "NNUNetEncoder", "ResNetEncoder", "SegResNetEncoder", "StageEncoder", "SwinEncoder"]
