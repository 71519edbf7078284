"""A tiny nnU-Net v2 model folder, trained in seconds on a labelled cohort: for tests, demos and benchmarks.

The folder is a genuine nnU-Net results folder, so nnU-Net's own ``nnUNetPredictor`` loads it::

    <out>/dataset.json                 channel_names, labels, file_ending
    <out>/plans.json                   one tiny 3d_fullres configuration (patch 32³, 3 stages, 8-32 features)
    <out>/fold_0/checkpoint_final.pth  network_weights, init_args, trainer_name, inference_allowed_mirroring_axes

Training is a plain torch loop (cross-entropy + soft Dice, Adam) on random patches of cases
preprocessed by nnU-Net's own ``DefaultPreprocessor`` (crop to the non-zero region, z-score inside it,
resample to the plans' spacing), so training and inference see identical inputs. It segments the
synthetic cohort roughly after a few hundred steps on CPU; it is no substitute for ``nnUNetv2_train``
on real data.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from radfusion.cohort.habitats import convention_label_sets
from radfusion.cohort.subject import SEQUENCES, Cohort

log = logging.getLogger(__name__)

#: nnU-Net channel names in radfusion's sequence order (what BraTS nnU-Net datasets call them).
CHANNEL_NAMES: dict[str, str] = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}

#: Labels of the toy model: BraTS 2023 style (ET = 3), so that conversion to a cohort's convention is exercised.
TOY_LABELS: dict[str, int] = {"background": 0, "NCR": 1, "ED": 2, "ET": 3}


def tiny_plans(spacing_zyx: Sequence[float], median_shape_zyx: Sequence[int], n_channels: int = 4,
               patch_size: Sequence[int] = (32, 32, 32), features: Sequence[int] = (8, 16, 32)) -> dict:
    """An nnU-Net v2 plans dict with one small ``3d_fullres`` configuration (PlainConvUNet).

    Args:
        spacing_zyx: target spacing in mm, numpy (z, y, x) order (nnU-Net's order after transpose).
        median_shape_zyx: typical image size in voxels (informational for nnU-Net).
        n_channels: input channels (only the normalisation lists depend on it).
        patch_size: sliding-window patch, voxels; each axis divisible by 2**(len(features) - 1).
        features: features per encoder stage; the number of stages is ``len(features)``.
    """
    n = len(features)
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": [int(f) for f in features],
            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * n,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1), "n_conv_per_stage": [2] * n,
            "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resampling = {"order_z": 0, "force_separate_z": None}
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": [int(p) for p in patch_size],
        "median_image_size_in_voxels": [int(s) for s in median_shape_zyx],
        "spacing": [float(s) for s in spacing_zyx],
        "normalization_schemes": ["ZScoreNormalization"] * n_channels, "use_mask_for_norm": [True] * n_channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, **resampling},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, **resampling},
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, **resampling},
        "architecture": arch, "batch_dice": False,
    }
    intensity = {"max": 1.0, "mean": 0.0, "median": 0.0, "min": 0.0, "percentile_00_5": 0.0,
                 "percentile_99_5": 1.0, "std": 1.0}  # unused by ZScoreNormalization
    return {
        "dataset_name": "Dataset900_RadfusionToy", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [float(s) for s in spacing_zyx],
        "original_median_shape_after_transp": [int(s) for s in median_shape_zyx],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(i): dict(intensity) for i in range(n_channels)},
    }


def build_network(plans: dict, dataset_json: dict, configuration: str = "3d_fullres") -> torch.nn.Module:
    """The network of ``plans`` (no deep supervision), built by nnU-Net's ``get_network_from_plans``."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    conf = manager.get_configuration(configuration)
    n_out = manager.get_label_manager(dataset_json).num_segmentation_heads
    return get_network_from_plans(conf.network_arch_class_name, conf.network_arch_init_kwargs,
                                  conf.network_arch_init_kwargs_req_import, len(dataset_json["channel_names"]),
                                  n_out, allow_init=True, deep_supervision=False)


def write_model_folder(out_dir: str | Path, plans: dict, dataset_json: dict, network: torch.nn.Module,
                       fold: int = 0, configuration: str = "3d_fullres", trainer_name: str = "nnUNetTrainer",
                       mirroring_axes: tuple[int, ...] | None = (0, 1, 2)) -> Path:
    """Write an nnU-Net results folder (``dataset.json``, ``plans.json``, ``fold_<k>/checkpoint_final.pth``)."""
    out = Path(out_dir)
    (out / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    (out / "plans.json").write_text(json.dumps(plans, indent=1))
    (out / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    checkpoint = {
        "network_weights": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "optimizer_state": {}, "grad_scaler_state": None, "logging": {}, "_best_ema": None,
        "current_epoch": 1, "trainer_name": trainer_name,
        "init_args": {"plans": plans, "configuration": configuration, "fold": fold, "dataset_json": dataset_json,
                      "device": "cpu"},
        "inference_allowed_mirroring_axes": mirroring_axes,
    }
    torch.save(checkpoint, out / f"fold_{fold}" / "checkpoint_final.pth")
    return out


def _preprocess(subject, plans_manager, conf, dataset_json, to_model: dict[int, int]):
    """nnU-Net-preprocessed (data (C, z, y, x), seg (z, y, x) in model labels, outside-brain 0)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    rw = plans_manager.image_reader_writer_class()
    data, props = rw.read_images([str(subject.images[s]) for s in SEQUENCES])
    seg, _ = rw.read_seg(str(subject.seg))
    lut = np.zeros(int(seg.max()) + 1, dtype=np.int16)
    for src, dst in to_model.items():
        if src < len(lut):
            lut[src] = dst
    seg = lut[seg.astype(np.int64)]
    pre = DefaultPreprocessor(verbose=False)
    data, seg, _ = pre.run_case_npy(data, seg, props, plans_manager, conf, dataset_json)
    return data.astype(np.float32), np.maximum(seg[0], 0).astype(np.int64)


def _random_patch(data: np.ndarray, seg: np.ndarray, size: Sequence[int], rng: np.random.Generator,
                  foreground: bool) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` patch (zero-padded where the case is smaller), centred on tumour when ``foreground``."""
    pad = [(0, 0)] + [(0, max(0, s - d)) for s, d in zip(size, seg.shape, strict=True)]
    data = np.pad(data, pad)
    seg = np.pad(seg, pad[1:])
    if foreground and seg.any():
        centre = np.argwhere(seg > 0)[rng.integers(int((seg > 0).sum()))]
        start = [int(np.clip(c - s // 2, 0, d - s)) for c, s, d in zip(centre, size, seg.shape, strict=True)]
    else:
        start = [int(rng.integers(0, d - s + 1)) for s, d in zip(size, seg.shape, strict=True)]
    sl = tuple(slice(a, a + s) for a, s in zip(start, size, strict=True))
    return data[(slice(None), *sl)], seg[sl]


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + (1 - soft Dice over foreground classes), as nnU-Net trains."""
    ce = torch.nn.functional.cross_entropy(logits, target)
    probs = logits.softmax(1)[:, 1:]
    onehot = torch.nn.functional.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3)[:, 1:].float()
    dims = (0, 2, 3, 4)
    dice = (2 * (probs * onehot).sum(dims) + 1e-5) / (probs.sum(dims) + onehot.sum(dims) + 1e-5)
    return ce + (1 - dice.mean())


def train_toy_model(cohort: Cohort, out_dir: str | Path, steps: int = 200, batch_size: int = 2, lr: float = 1e-2,
                    patch_size: Sequence[int] = (32, 32, 32), features: Sequence[int] = (8, 16, 32),
                    labels: dict[str, int] | None = None, seed: int = 0, log_every: int = 50) -> Path:
    """Train a tiny nnU-Net-format model on the labelled subjects of ``cohort``; return its folder.

    Args:
        cohort: subjects with ``seg`` (labels in ``cohort.label_convention``) are the training cases.
        out_dir: the model folder to write (``dataset.json``, ``plans.json``, ``fold_0/``).
        steps: optimiser steps of ``batch_size`` random patches (two thirds centred on tumour).
        labels: the model's own label values (default :data:`TOY_LABELS`, ET = 3).
        seed: seeds patch sampling and initialisation.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    t0 = time.perf_counter()
    train = [s for s in cohort.subjects if s.seg is not None]
    if not train:
        raise ValueError("train_toy_model: the cohort has no subject with a segmentation to learn from")
    labels = dict(labels or TOY_LABELS)
    conv = convention_label_sets(cohort.label_convention)  # every label of a part (BraTS 2015 NCR = [1, 3])
    to_model = {value: labels[k] for k in ("NCR", "ED", "ET") for value in conv[k]}
    rw_probe = sitk.ReadImage(str(train[0].images[SEQUENCES[0]]))
    spacing_zyx = list(rw_probe.GetSpacing())[::-1]
    shape_zyx = list(rw_probe.GetSize())[::-1]
    plans = tiny_plans(spacing_zyx, shape_zyx, len(SEQUENCES), patch_size, features)
    dataset_json = {"channel_names": {str(i): CHANNEL_NAMES[s] for i, s in enumerate(SEQUENCES)},
                    "labels": labels, "numTraining": len(train), "file_ending": ".nii.gz"}
    manager = PlansManager(plans)
    conf = manager.get_configuration("3d_fullres")
    cases = [_preprocess(s, manager, conf, dataset_json, to_model) for s in train]

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_network(plans, dataset_json)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (1 - i / max(steps, 1)) ** 0.9)  # nnU-Net's poly decay
    net.train()
    for step in range(steps):
        batch = [_random_patch(*cases[rng.integers(len(cases))], patch_size, rng, foreground=rng.random() < 2 / 3)
                 for _ in range(batch_size)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))
        y = torch.from_numpy(np.stack([b[1] for b in batch]))
        loss = _loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            log.info("toy nnU-Net: step %d/%d, loss %.3f", step + 1, steps, float(loss.detach()))
    net.eval()
    out = write_model_folder(out_dir, plans, dataset_json, net)
    log.info("toy nnU-Net: %d cases, %d steps in %.1f s -> %s", len(cases), steps, time.perf_counter() - t0, out)
    return out
