"""Encoders: multi-stage embeddings checked against MONAI's / nnU-Net's own forward passes, pretrained
weights from local files (MedicalNet / Lightning / SwinUNETR / nnU-Net formats built here), frozen
mode, and the ROI tensors (habitat channels, fixed extent, augmentation) they consume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet, ResNet, SegResNet, SwinUNETR

from radfusion.models.encoders import (
    DenseNetEncoder,
    NNUNetEncoder,
    ResNetEncoder,
    SegResNetEncoder,
    SwinEncoder,
)
from radfusion.models.pretrained import PretrainedError, load_matching

TINY = {
    "resnet": lambda **kw: ResNetEncoder(block_inplanes=(4, 8, 12, 16), **kw),
    "densenet": lambda **kw: DenseNetEncoder(init_features=8, growth_rate=4, block_config=(2, 2, 2, 2), **kw),
    "segresnet": lambda **kw: SegResNetEncoder(init_filters=8, **kw),
    "swin": lambda **kw: SwinEncoder(feature_size=12, depths=(1, 1, 1, 1), window_size=4, **kw),
}


def _pool(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=(2, 3, 4))


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("stages", [(2, 3, 4), (1, 4)])
def test_encoder_shapes_follow_stage_dims(name, stages):
    enc = TINY[name](stages=stages).eval()
    maps = enc.forward_features(torch.randn(2, 4, 32, 32, 32))
    assert [m.shape[1] for m in maps] == enc.stage_dims
    # deeper stages are smaller in space
    assert all(a.shape[2] >= b.shape[2] for a, b in zip(maps, maps[1:], strict=False))
    out = enc(torch.randn(2, 4, 32, 32, 32))
    assert out.shape == (2, enc.num_features) and enc.num_features == sum(enc.stage_dims)


def test_resnet_last_stage_equals_monai_pooled_output():
    torch.manual_seed(0)
    enc = ResNetEncoder(depth=18, block_inplanes=(4, 8, 12, 16), stages=(1, 2, 3, 4)).eval()
    ref = ResNet("basic", [2, 2, 2, 2], [4, 8, 12, 16], spatial_dims=3, n_input_channels=4, conv1_t_size=3,
                 conv1_t_stride=1, no_max_pool=True, feed_forward=False).eval()
    ref.load_state_dict(enc.net.state_dict())
    x = torch.randn(2, 4, 24, 24, 24)
    out = enc(x)
    assert torch.allclose(out[:, -16:], ref(x), atol=1e-5)  # MONAI: avgpool(layer4) flattened


def test_densenet_last_stage_equals_monai_features():
    torch.manual_seed(0)
    enc = DenseNetEncoder(init_features=8, growth_rate=4, block_config=(2, 2, 2, 2), stages=(4,),
                          small_stem=False).eval()
    ref = DenseNet(3, 4, 2, init_features=8, growth_rate=4, block_config=(2, 2, 2, 2)).eval()
    missing, unexpected = ref.load_state_dict(enc.net.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("class_layers") for k in missing)
    x = torch.randn(2, 4, 32, 32, 32)
    expected = _pool(torch.relu(ref.features(x)))
    assert torch.allclose(enc(x), expected, atol=1e-5)


def test_segresnet_stages_equal_monai_encode():
    torch.manual_seed(0)
    enc = SegResNetEncoder(init_filters=8, stages=(1, 2, 3, 4)).eval()
    ref = SegResNet(spatial_dims=3, init_filters=8, in_channels=4, out_channels=3).eval()
    report = load_matching(ref, _save(enc.net.state_dict()))
    assert not report["skipped"] and all(k.startswith(("up_", "conv_final")) for k in report["missing"])
    x = torch.randn(2, 4, 32, 32, 32)
    _, down = ref.encode(x)
    assert torch.allclose(enc(x), torch.cat([_pool(d) for d in down], dim=1), atol=1e-5)


def test_swin_stages_equal_swinunetr_swinvit_and_load_its_weights():
    torch.manual_seed(0)
    unetr = SwinUNETR(in_channels=4, out_channels=3, feature_size=12, depths=(1, 1, 1, 1)).eval()
    enc = SwinEncoder(feature_size=12, depths=(1, 1, 1, 1), stages=(1, 2, 3, 4))
    report = enc.load_pretrained(_save({f"module.{k}": v for k, v in unetr.state_dict().items()}))
    assert report["prefix"] == "module.swinViT." and not report["missing"]
    assert any(k.startswith("module.decoder") for k in report["skipped"])  # the decoder is not ours
    enc.eval()
    x = torch.randn(1, 4, 32, 32, 32)
    hidden = unetr.swinViT(x, normalize=True)
    assert torch.allclose(enc(x), torch.cat([_pool(h) for h in hidden[1:]], dim=1), atol=1e-5)


def test_project_combine_gives_equal_tokens_per_stage():
    enc = TINY["resnet"](stages=(2, 3, 4), combine="project", proj_dim=10)
    assert enc.token_dims == [10, 10, 10] and enc.num_features == 30 and enc.raw_features == 8 + 12 + 16
    assert enc(torch.randn(2, 4, 16, 16, 16)).shape == (2, 30)


def test_frozen_backbone_trains_only_the_projection():
    enc = TINY["resnet"](combine="project", frozen=True)
    enc.train()
    assert not enc.net.training and enc.training  # BatchNorm statistics stay fixed
    before = {k: v.clone() for k, v in enc.net.state_dict().items()}
    enc(torch.randn(3, 4, 16, 16, 16)).sum().backward()
    assert all(p.grad is None for p in enc.net.parameters())
    assert all(p.grad is not None for p in enc.projections.parameters())
    assert all(torch.equal(before[k], v) for k, v in enc.net.state_dict().items())  # no BN update either
    # a cached pooled embedding gives the same output as the image
    x = torch.randn(2, 4, 16, 16, 16)
    assert torch.allclose(enc(enc.pooled(x)), enc(x))
    with pytest.raises(ValueError, match="cached embedding must have"):
        enc(torch.randn(2, 5))


def test_wrong_channel_count_names_the_setting():
    with pytest.raises(ValueError, match="model.encoder.in_channels=4"):
        TINY["resnet"]()(torch.randn(1, 7, 16, 16, 16))
    with pytest.raises(ValueError, match="stages must be"):
        TINY["resnet"](stages=(5,))


# --------------------------------------------------------------------------- pretrained weights
_SAVED: list = []


def _save(state: dict, wrap: str | None = None) -> str:
    import tempfile

    path = tempfile.NamedTemporaryFile(suffix=".pt", delete=False).name
    torch.save({wrap: state} if wrap else state, path)
    _SAVED.append(path)
    return path


def test_medicalnet_style_weights_adapt_single_channel_stem():
    # MedicalNet: one input channel, 'module.' prefix, a segmentation head we do not have.
    src = ResNetEncoder(in_channels=1, block_inplanes=(4, 8, 12, 16)).net
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(2, 16, 1, 1, 1)
    enc = ResNetEncoder(in_channels=4, block_inplanes=(4, 8, 12, 16))
    report = enc.load_pretrained(_save(state))
    assert report["prefix"] == "module." and report["adapted"] == ["conv1.weight"]
    assert "module.conv_seg.0.weight" in report["skipped"] and not report["missing"]
    # identical input channels: the adapted 4-channel stem reproduces the 1-channel network
    src.eval(), enc.eval()
    x1 = torch.randn(1, 1, 16, 16, 16)
    ref = _pool(src.layer4(src.layer3(src.layer2(src.layer1(src.act(src.bn1(src.conv1(x1))))))))
    assert torch.allclose(enc(x1.repeat(1, 4, 1, 1, 1))[:, -16:], ref, atol=1e-5)


def test_lightning_checkpoint_of_a_previous_run_loads_into_the_encoder():
    trained = ResNetEncoder(block_inplanes=(4, 8, 12, 16))
    state = {f"net.encoder.net.{k}": v for k, v in trained.net.state_dict().items()}
    state["net.head.1.weight"] = torch.zeros(1, 32)
    enc = ResNetEncoder(block_inplanes=(4, 8, 12, 16))
    report = enc.load_pretrained(_save(state, wrap="state_dict"))
    assert report["prefix"] == "net.encoder.net." and len(report["matched"]) == len(trained.net.state_dict())
    trained.eval(), enc.eval()
    x = torch.randn(1, 4, 16, 16, 16)
    assert torch.equal(trained(x), enc(x))


def test_shape_mismatch_is_skipped_with_reason_and_nothing_matching_is_an_error(tmp_path):
    wide = ResNetEncoder(block_inplanes=(8, 8, 12, 16)).net.state_dict()
    report = TINY["resnet"]().load_pretrained(_save(wide))
    assert "shape" in report["skipped"]["layer1.0.conv1.weight"] and "layer1.0.conv1.weight" in report["missing"]
    with pytest.raises(PretrainedError, match="no tensor matches"):
        TINY["resnet"]().load_pretrained(_save({"foo.weight": torch.zeros(3)}))
    with pytest.raises(PretrainedError, match="nothing is downloaded"):
        TINY["resnet"]().load_pretrained(str(tmp_path / "missing.pth"))


# --------------------------------------------------------------------------- nnU-Net
def _nnunet_plans(residual: bool) -> dict:
    kwargs = {
        "n_stages": 4, "features_per_stage": [8, 16, 24, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 4, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        "n_conv_per_stage_decoder": [1, 1, 1],
    }
    if residual:
        kwargs["n_blocks_per_stage"] = [1, 1, 2, 2]
        cls = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    else:
        kwargs["n_conv_per_stage"] = [2, 2, 2, 2]
        cls = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    return {"dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans",
            "configurations": {"3d_fullres": {"patch_size": [32, 32, 32], "spacing": [1.0, 1.0, 1.0],
                                              "architecture": {"network_class_name": cls, "arch_kwargs": kwargs,
                                                               "_kw_requires_import": ["conv_op", "norm_op",
                                                                                       "dropout_op", "nonlin"]}}}}


def _write_nnunet_model(root, residual: bool, plans_in_checkpoint: bool):
    """A trained-nnU-Net results folder: plans.json, dataset.json, fold_0/checkpoint_final.pth."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans = _nnunet_plans(residual)
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    torch.manual_seed(1)
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                 4, 4, deep_supervision=False)
    dataset = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
               "labels": {"background": 0, "NCR": 1, "ED": 2, "ET": 3}, "file_ending": ".nii.gz"}
    (root / "fold_0").mkdir(parents=True)
    (root / "plans.json").write_text(json.dumps(plans))
    (root / "dataset.json").write_text(json.dumps(dataset))
    init_args = {"configuration": "3d_fullres", "fold": 0, "dataset_json": dataset, "device": torch.device("cpu")}
    if plans_in_checkpoint:
        init_args["plans"] = plans
    torch.save({"network_weights": net.state_dict(), "optimizer_state": {}, "init_args": init_args,
                "trainer_name": "nnUNetTrainer", "current_epoch": 1000,
                "inference_allowed_mirroring_axes": (0, 1, 2)}, root / "fold_0" / "checkpoint_final.pth")
    return net.eval(), root / "fold_0" / "checkpoint_final.pth"


@pytest.mark.parametrize("residual,plans_in_checkpoint", [(False, True), (True, False)])
def test_nnunet_encoder_reproduces_the_trained_networks_encoder(tmp_path, residual, plans_in_checkpoint):
    net, ckpt = _write_nnunet_model(tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres", residual,
                                    plans_in_checkpoint)
    enc = NNUNetEncoder(str(ckpt), stages=(2, 3, 4), in_channels=4, combine="concat")
    assert enc.frozen and enc.stage_dims == [16, 24, 32] and enc.info["configuration"] == "3d_fullres"
    x = torch.randn(2, 4, 32, 32, 32)
    skips = net.encoder(x)
    assert torch.allclose(enc(x), torch.cat([_pool(s) for s in skips[1:]], dim=1), atol=1e-5)
    default = NNUNetEncoder(str(ckpt))  # default: the last three stages, projected
    assert default.stages == (2, 3, 4) and default.token_dims == [64, 64, 64]


def test_nnunet_errors_name_the_problem(tmp_path):
    _, ckpt = _write_nnunet_model(tmp_path / "model", residual=False, plans_in_checkpoint=True)
    with pytest.raises(ValueError, match="expects 4 input channels, the ROI has 7"):
        NNUNetEncoder(str(ckpt), in_channels=7)
    with pytest.raises(PretrainedError, match="configuration 2d"):
        NNUNetEncoder(str(ckpt), configuration="2d")
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(PretrainedError, match="not an nnU-Net v2 checkpoint"):
        NNUNetEncoder(str(plain))


# --------------------------------------------------------------------------- ROI input
@pytest.fixture(scope="module")
def one_subject(tmp_path_factory):
    from radfusion.cohort.readers import load_cohort
    from radfusion.synthetic.generator import generate_cohort

    path = generate_cohort(tmp_path_factory.mktemp("roi_cohort"), n_subjects=2, shape=(40, 40, 40), seed=3,
                           n_sites=1, progress=False)
    return load_cohort("manifest", path)


def test_roi_habitat_channels_and_fixed_extent(one_subject):
    import SimpleITK as sitk

    from radfusion.cohort.habitats import habitat_mask
    from radfusion.imaging.roi import ROISettings, build_roi

    subject = one_subject.subjects[0]
    settings = ROISettings(size=24, habitats=("ET", "ED"), extent="fixed")
    roi = build_roi(subject, settings, one_subject.label_convention)
    assert roi.shape == (6, 24, 24, 24) and roi.dtype == np.float16
    # fixed extent: the mask channels are the habitat masks of a 24^3 crop around the tumour box centre
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(subject.seg)))
    wt = habitat_mask(seg, "WT", one_subject.label_convention)
    idx = np.argwhere(wt)
    lo = np.round((idx.min(0) + idx.max(0) + 1) / 2 - 12).astype(int)
    padded = np.pad(seg, 24)
    crop = padded[tuple(slice(a + 24, a + 48) for a in lo)]
    for c, name in enumerate(("ET", "ED"), start=4):
        assert np.array_equal(roi[c].astype(bool), habitat_mask(crop, name, one_subject.label_convention))
    assert ROISettings().key() != settings.key()
    with pytest.raises(ValueError, match="unknown habitat"):
        ROISettings(habitats=("XX",))


def test_augmentation_moves_masks_with_images_and_leaves_their_values():
    from radfusion.imaging.augment import ROIAugment

    torch.manual_seed(5)
    image = torch.randn(4, 20, 20, 20)
    mask = (torch.rand(2, 20, 20, 20) > 0.7).float()
    roi = torch.cat([image, mask])
    flip = ROIAugment(4, flip_prob=1.0, affine_prob=0, intensity_prob=0, bias_field_prob=0)
    out = flip(roi)
    assert torch.equal(out, roi.flip(-1))  # left-right = last axis, images and masks together
    full = ROIAugment(4, flip_prob=0.5, affine_prob=1.0, intensity_prob=1.0, bias_field_prob=1.0)
    out = full(roi)
    assert out.shape == roi.shape and out.dtype == torch.float32
    assert set(out[4:].unique().tolist()) <= {0.0, 1.0}  # nearest-neighbour, no intensity change on masks
    assert not torch.allclose(out[:4], image)


def test_nnunet_experiment_config_instantiates(tmp_path):
    from hydra.utils import instantiate

    from helpers.config import compose_train_cfg

    _, ckpt = _write_nnunet_model(tmp_path / "model", residual=False, plans_in_checkpoint=True)
    cfg = compose_train_cfg(["experiment=idh_hybrid_nnunet", f"model.encoder.checkpoint={ckpt}"])
    assert cfg.data.roi.extent == "fixed"
    enc = instantiate(cfg.model.encoder)
    assert isinstance(enc, NNUNetEncoder) and enc.frozen and enc.stages == (2, 3, 4)
