"""A guard for CPU bf16 autocast: refuse the one convolution shape whose gradients oneDNN gets wrong.

Measured here (torch 2.14 CPU, oneDNN; ``docs/scaling.md``): under ``torch.autocast("cpu", torch.bfloat16)``
the weight gradient of a 3×3×3 ``Conv3d`` whose input feature map is 2×2×2 is garbage (relative errors of
1e37, NaN when the freed memory it reads holds NaN) for most channel counts and batch sizes, contiguous or
channels_last_3d; 1³, 3³, 4³ ... 48³ maps are right to bf16 rounding (~3e-3), and with oneDNN off
(``torch.backends.mkldnn.enabled=False``) 2³ is right too. The default CPU model (ResNet-10 without max pool
at ``data.roi.size=48``) never sees a 2³ map; a 16³ ROI does (its last stage), and deeper or pooled encoders
may at 48³. Training on such gradients corrupts the weights silently (or with NaN), so the guard stops it.

:class:`Bf16ConvGuard` (``configs/callbacks/default.yaml``, always on, free when not in bf16) watches every
``Conv3d`` during the first training batch of each fit and raises :class:`UnsafeBf16Conv` naming the layer,
its input shape and the fixes, before the first backward runs.

:func:`resolve_precision` turns ``trainer.precision: auto`` (the CPU default, ``configs/trainer/cpu.yaml``)
into ``bf16-mixed`` where it is both fast and known to be right, and ``32-true`` everywhere else: a CPU
with native bf16 in oneDNN, a CNN branch that trains (frozen encoders and radiomics/clinical-only models
gain nothing), and no convolution that would see a 2x2x2 map at the run's ROI size. Measured here
(``docs/scaling.md``): 2.4x per training step alone, 3.4x with channels_last_3d; over 3 seeds of the
default ``idh_hybrid`` the validation AUC and loss equal fp32's within seed noise.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn


class UnsafeBf16Conv(RuntimeError):
    """A convolution whose CPU bf16 gradients are known to be wrong."""


def _cpu_bf16_autocast() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def two_cubed(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether ``conv`` on input ``x`` is the shape oneDNN's bf16 weight gradient gets wrong: a spatial size
    of 2 under a kernel wider than 1."""
    return any(k > 1 for k in conv.kernel_size) and 2 in tuple(x.shape[-3:])


def unsafe_input(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether ``conv`` on input ``x`` is :func:`two_cubed`, for a CPU tensor under bf16 autocast with
    gradients on."""
    return (x.device.type == "cpu" and torch.is_grad_enabled() and _cpu_bf16_autocast() and conv.weight.requires_grad
            and two_cubed(conv, x))


class Bf16ConvGuard(pl.Callback):
    """Raise before training on CPU bf16 through a 2×2×2 feature map (see the module doc); no-op otherwise."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = bool(enabled)
        self._handles: list = []

    def _watch(self, pl_module: pl.LightningModule) -> None:
        def check(module: nn.Conv3d, inputs) -> None:
            x = inputs[0] if inputs else None
            if isinstance(x, torch.Tensor) and unsafe_input(module, x):
                raise UnsafeBf16Conv(
                    f"CPU bf16 autocast would train {names[module]} (Conv3d {tuple(module.kernel_size)}) on a "
                    f"{tuple(x.shape[-3:])} feature map: oneDNN computes wrong weight gradients for 2x2x2 maps in "
                    "bf16 (docs/scaling.md). Use a larger data.roi.size (48 for the default encoder), "
                    "trainer.precision=32-true, or a GPU; or switch the guard off with "
                    "callbacks.bf16_guard.enabled=false if your torch build is fixed")

        names = {m: n for n, m in pl_module.named_modules() if isinstance(m, nn.Conv3d)}
        self._handles = [m.register_forward_pre_hook(check) for m in names]

    def _release(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled:
            self._watch(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._release()  # shapes do not change between batches: one batch tells

    def on_train_end(self, trainer, pl_module) -> None:
        self._release()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._release()


def cpu_bf16_supported() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 / AMX); emulated bf16 is slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def has_unsafe_maps(encoder: nn.Module, in_shape: tuple[int, ...]) -> bool:
    """Whether a ``Conv3d`` of ``encoder`` is :func:`two_cubed` on one input of ``in_shape`` ``(C, D, H, W)``:
    one dry forward of zeros, in eval mode and without gradients."""
    seen: list[bool] = []

    def record(module: nn.Conv3d, inputs) -> None:
        seen.append(two_cubed(module, inputs[0]))

    handles = [m.register_forward_pre_hook(record) for m in encoder.modules() if isinstance(m, nn.Conv3d)]
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            encoder(torch.zeros(1, *in_shape))
    finally:
        for h in handles:
            h.remove()
        encoder.train(was_training)
    return any(seen)


def resolve_precision(requested: str, accelerator: str, encoder: nn.Module | None,
                      roi_size: int) -> tuple[str, str]:
    """``(precision, why)`` for the Trainer: ``requested`` as it is unless it is ``auto`` (module doc).

    Args:
        requested: ``trainer.precision`` (``auto``, ``32-true``, ``bf16-mixed``, ...).
        accelerator: ``trainer.accelerator``; ``auto`` resolves to bf16 on ``cpu`` only.
        encoder: the CNN branch that will train, or None (no images, or a frozen encoder).
        roi_size: edge of the ROI cube (``data.roi.size``).
    """
    if str(requested) != "auto":
        return str(requested), "as configured"
    if str(accelerator) != "cpu":
        return "32-true", f"auto on accelerator {accelerator!r} (set trainer.precision for it)"
    if encoder is None:
        return "32-true", "no trained CNN branch (bf16 speeds up 3D convolutions only)"
    if not cpu_bf16_supported():
        return "32-true", "this CPU has no native bf16 in oneDNN"
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv3d)]
    if not convs:
        return "32-true", "the encoder has no 3D convolution"
    if has_unsafe_maps(encoder, (convs[0].in_channels, roi_size, roi_size, roi_size)):
        return "32-true", f"a convolution sees a 2x2x2 map at data.roi.size={roi_size} (wrong bf16 gradients)"
    return "bf16-mixed", "CPU with native bf16 and a trained CNN branch"
