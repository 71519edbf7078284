"""CPU training levers (issue 16): bf16-mixed precision and the channels_last_3d memory format.

A tiny deep model on random volumes, fitted with a real Lightning Trainer: bf16-mixed must run through
validation and prediction (the metrics and predictions leave torch as float32) with finite outputs and
gradients close to fp32's; channels_last_3d must leave the logits unchanged. bf16 runs at 32³: at 16³ the
last stage sees 2×2×2 maps, whose bf16 weight gradients oneDNN gets wrong, which the guard refuses.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from radfusion.models.encoders import ResNetEncoder
from radfusion.models.fusion import FusionNet
from radfusion.models.lit_module import RadFusionModule
from radfusion.training.memory_format import ChannelsLast3d, batch_to_channels_last, module_to_channels_last
from radfusion.training.precision import Bf16ConvGuard, UnsafeBf16Conv

TINY_WIDTHS = (4, 8, 8, 16)


class _Volumes(Dataset):
    """``n`` random 4-channel 16³ volumes with a balanced binary label (the batch contract of SubjectDataset)."""

    def __init__(self, n: int = 8, seed: int = 0, size: int = 16) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, size, size, size, generator=g)
        self.y = (torch.arange(n) % 2).float()[:, None]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "labels": self.y[i], "label_mask": torch.ones(1), "time": torch.tensor(0.0),
                "event": torch.tensor(0.0), "surv_mask": torch.tensor(0.0), "subject_id": f"s{i}"}


class _GradientProbe(pl.Callback):
    """Records, after every backward, whether every gradient of the model is finite."""

    def __init__(self) -> None:
        self.finite: list[bool] = []

    def on_after_backward(self, trainer, pl_module) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.finite.append(bool(grads) and all(torch.isfinite(g).all().item() for g in grads))


def _module(seed: int = 0) -> RadFusionModule:
    torch.manual_seed(seed)
    return RadFusionModule("deep", encoder=ResNetEncoder(block_inplanes=TINY_WIDTHS))


def _trainer(precision: str, callbacks: list, epochs: int = 2) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, precision=precision, max_epochs=epochs, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, callbacks=callbacks)


def test_bf16_mixed_cpu_fit_validates_and_predicts_finite_values():
    """Used to crash: ``.numpy()`` on a bf16 tensor (TypeError: unsupported ScalarType BFloat16)."""
    torch.set_num_threads(1)
    data = DataLoader(_Volumes(size=32), batch_size=4)
    probe = _GradientProbe()
    model = _module()
    trainer = _trainer("bf16-mixed", [probe, Bf16ConvGuard()])
    trainer.fit(model, train_dataloaders=data, val_dataloaders=data)
    assert trainer.current_epoch == 2 and "val/auc" in trainer.callback_metrics
    assert len(probe.finite) == 4 and all(probe.finite), probe.finite
    assert all(torch.isfinite(p).all() for p in model.parameters())
    batches = trainer.predict(model, dataloaders=data)
    probs = np.concatenate([b["probs"] for b in batches])
    assert probs.dtype == np.float32 and probs.shape == (8, 1)
    assert np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()
    # predictions under bf16 autocast stay close to the fp32 ones of the same weights (bf16: ~3 digits)
    model.eval()
    with torch.no_grad():
        fp32 = torch.sigmoid(model(next(iter(data)))).numpy()
    np.testing.assert_allclose(probs[:4], fp32, atol=2e-2)


def test_channels_last_3d_leaves_the_logits_unchanged():
    torch.manual_seed(0)
    net = FusionNet("deep", n_outputs=2, encoder=ResNetEncoder(block_inplanes=TINY_WIDTHS)).eval()
    batch = {"image": torch.randn(2, 4, 16, 16, 16)}
    with torch.no_grad():
        reference = net(image=batch["image"])
        conv = next(p for p in net.parameters() if p.dim() == 5)
        module_to_channels_last(net)
        assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
        converted = batch_to_channels_last(dict(batch))
        assert converted["image"].is_contiguous(memory_format=torch.channels_last_3d)
        logits = net(image=converted["image"])
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)


def test_channels_last_callback_in_a_fit():
    """The callback converts the model before the optimizer exists and every batch on the way in."""
    seen: list[bool] = []

    class _Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(batch["image"].is_contiguous(memory_format=torch.channels_last_3d))

    model = _module()
    trainer = _trainer("32-true", [ChannelsLast3d(enabled=True), _Spy()], epochs=1)
    trainer.fit(model, train_dataloaders=DataLoader(_Volumes(), batch_size=4))
    assert seen == [True, True]
    conv = next(p for p in model.parameters() if p.dim() == 5)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d)
    off = ChannelsLast3d(enabled=False)
    batch = {"image": torch.randn(1, 4, 8, 8, 8)}
    off.on_train_batch_start(None, None, batch, 0)
    assert batch["image"].is_contiguous()


def test_bf16_gradients_match_fp32():
    """Same weights, same batch: the bf16-autocast gradient points where the fp32 one does (bf16 rounding
    through ten layers of an untrained net moves single tensors by 10-50 %, as it does with oneDNN off;
    the wrong 2x2x2 kernels give cosines near 0 and values up to 1e37)."""
    from radfusion.models.lit_module import masked_bce

    torch.manual_seed(0)
    net = FusionNet("deep", encoder=ResNetEncoder(block_inplanes=TINY_WIDTHS)).eval()  # no dropout
    b = next(iter(DataLoader(_Volumes(size=32), batch_size=4)))
    grads = {}
    for bf16 in (False, True):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(image=b["image"])
        masked_bce(out.float(), b["labels"], b["label_mask"]).backward()
        grads[bf16] = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    cos = torch.nn.functional.cosine_similarity
    whole = cos(torch.cat([g.flatten() for g in grads[True].values()]),
                torch.cat([g.flatten() for g in grads[False].values()]), dim=0)
    assert whole > 0.98, float(whole)
    for name, ref in grads[False].items():
        assert torch.isfinite(grads[True][name]).all(), name
        if name.endswith("conv1.weight") or name.endswith("conv2.weight"):
            assert cos(grads[True][name].flatten(), ref.flatten(), dim=0) > 0.9, name


def test_guard_refuses_bf16_through_2cubed_maps():
    """At 16³ the tiny ResNet's last stage sees 2×2×2 maps: the guard stops the fit before a backward."""
    import pytest

    model = _module()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = _trainer("bf16-mixed", [Bf16ConvGuard()], epochs=1)
    with pytest.raises(UnsafeBf16Conv, match=r"layer4.*\(2, 2, 2\) feature map.*data.roi.size"):
        trainer.fit(model, train_dataloaders=DataLoader(_Volumes(size=16), batch_size=4))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # nothing was trained
    assert all(not m._forward_pre_hooks for m in model.modules())  # hooks released
    # the same shapes in fp32 train normally (the guard only watches bf16 autocast)
    _trainer("32-true", [Bf16ConvGuard()], epochs=1).fit(
        _module(), train_dataloaders=DataLoader(_Volumes(size=16), batch_size=4))


def test_auto_precision_picks_bf16_only_where_it_is_fast_and_right(monkeypatch):
    from radfusion.training import precision as prec

    encoder = ResNetEncoder(block_inplanes=TINY_WIDTHS)
    assert prec.has_unsafe_maps(encoder, (4, 16, 16, 16))  # the last stage of a 16³ ROI is 2³
    assert not prec.has_unsafe_maps(encoder, (4, 24, 24, 24))  # 3³
    assert encoder.training  # the dry forward leaves the mode as it was

    monkeypatch.setattr(prec, "cpu_bf16_supported", lambda: True)
    assert prec.resolve_precision("auto", "cpu", encoder, 24)[0] == "bf16-mixed"
    assert prec.resolve_precision("auto", "cpu", encoder, 16)[0] == "32-true"
    assert prec.resolve_precision("auto", "cpu", None, 24)[0] == "32-true"  # handcrafted / frozen encoder
    assert prec.resolve_precision("auto", "gpu", encoder, 24)[0] == "32-true"
    assert prec.resolve_precision("32-true", "cpu", encoder, 24) == ("32-true", "as configured")
    assert prec.resolve_precision("bf16-mixed", "cpu", encoder, 16)[0] == "bf16-mixed"  # the guard's job then
    monkeypatch.setattr(prec, "cpu_bf16_supported", lambda: False)
    precision, why = prec.resolve_precision("auto", "cpu", encoder, 24)
    assert precision == "32-true" and "native bf16" in why
