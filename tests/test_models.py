"""Encoder, fusion and loss: shapes, modes and the masking of unknown labels."""

from __future__ import annotations

import pytest
import torch

from radfusion.evaluation.metrics import binary_metrics
from radfusion.models.encoders import ResNetEncoder
from radfusion.models.fusion import FusionNet
from radfusion.models.lit_module import masked_bce


def test_encoder_pools_requested_stages():
    enc = ResNetEncoder(block_inplanes=(4, 8, 12, 16), stages=(2, 4))
    out = enc(torch.randn(2, 4, 16, 16, 16))
    assert enc.num_features == 8 + 16
    assert out.shape == (2, 24)


def test_encoder_loads_local_weights_and_reports_keys(tmp_path):
    src = ResNetEncoder(block_inplanes=(4, 8, 12, 16))
    state = {f"module.{k}": v for k, v in src.net.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(3, 3)  # a head the encoder does not have
    torch.save(state, tmp_path / "w.pt")
    dst = ResNetEncoder(block_inplanes=(4, 8, 12, 16))
    report = dst.load_pretrained(str(tmp_path / "w.pt"))
    assert "module.fc.weight" in report["skipped"]
    assert len(report["matched"]) == len(src.net.state_dict())
    x = torch.randn(1, 4, 16, 16, 16)
    src.eval(), dst.eval()
    assert torch.allclose(src(x), dst(x))


@pytest.mark.parametrize("mode", ["handcrafted", "deep", "hybrid"])
def test_fusion_modes_use_only_their_inputs(mode):
    enc = ResNetEncoder(block_inplanes=(4, 8, 8, 16))
    net = FusionNet(mode, n_outputs=3, encoder=enc, radiomics_dim=10).eval()
    image, rad = torch.randn(2, 4, 16, 16, 16), torch.randn(2, 10)
    out = net(image=image if mode != "handcrafted" else None, radiomics=rad if mode != "deep" else None)
    assert out.shape == (2, 3)
    if mode == "hybrid":  # both inputs matter
        assert not torch.allclose(out, net(image=image, radiomics=rad + 1))
        assert not torch.allclose(out, net(image=image + 1, radiomics=rad))


def test_fusion_rejects_missing_branch():
    with pytest.raises(ValueError, match="needs an image encoder"):
        FusionNet("deep", encoder=None)
    with pytest.raises(ValueError, match="needs radiomics"):
        FusionNet("hybrid", encoder=ResNetEncoder(), radiomics_dim=0)


def test_masked_bce_ignores_unknown_labels():
    logits = torch.tensor([[2.0], [-1.0], [5.0]])
    labels = torch.tensor([[1.0], [0.0], [0.0]])
    mask = torch.tensor([[1.0], [1.0], [0.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:2], labels[:2])
    assert torch.isclose(masked_bce(logits, labels, mask), expected)
    # changing a masked entry changes nothing
    logits2 = logits.clone()
    logits2[2] = -50
    assert torch.isclose(masked_bce(logits2, labels, mask), expected)
    assert masked_bce(logits, labels, torch.zeros_like(mask)) == 0


def test_epoch_auc_skips_unknown_and_single_class():
    import numpy as np

    assert binary_metrics(np.array([1, 0, np.nan]), np.array([0.9, 0.1, 0.5]))["auc"] == 1.0
    assert np.isnan(binary_metrics(np.array([1, 1, np.nan]), np.array([0.9, 0.1, 0.5]))["auc"])


@pytest.mark.parametrize("name", ["resnet10", "resnet18", "resnet34", "resnet_medicalnet", "densenet121",
                                  "segresnet", "swin"])
def test_every_encoder_config_instantiates_and_runs(name):
    """configs/model/encoder/*.yaml match their classes' signatures (a typo would fail here)."""
    from hydra.utils import instantiate

    from helpers.config import compose_train_cfg

    cfg = compose_train_cfg(["experiment=idh_deep", f"model/encoder={name}"])
    enc = instantiate(cfg.model.encoder).eval()
    assert enc.in_channels == 4 and not enc.frozen
    if name not in ("resnet34", "resnet_medicalnet"):  # full depth/width: instantiating is the check
        with torch.no_grad():
            assert enc(torch.randn(1, 4, 16, 16, 16)).shape == (1, enc.num_features)
