"""nnU-Net segmentation of subjects without masks, end to end through ``scripts/segment.py``'s function,
on a tiny nnU-Net model trained here for a few seconds; label conversion, errors, quality report."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from sklearn.metrics import f1_score

from helpers.config import compose_config
from radfusion.cohort.readers import read_manifest
from radfusion.cohort.subject import Cohort
from radfusion.cohort.validate import validate_cohort
from radfusion.segmentation.labels import (
    SegmentationError,
    convert_labels,
    model_channels,
    model_label_map,
    model_output_values,
)
from radfusion.segmentation.nnunet import NNUNetSegmenter
from radfusion.segmentation.quality import dice, family_summary, feature_change, feature_family, quality_study
from radfusion.segmentation.run import PROVENANCE_COLUMNS, run_segmentation, segment_manifest
from radfusion.synthetic.toy_nnunet import build_network, tiny_plans, train_toy_model, write_model_folder

N_TRAIN = 12
TOY = {"steps": 40, "patch_size": (24, 24, 24), "features": (4, 8, 16)}
DATASET = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
           "labels": {"background": 0, "NCR": 1, "ED": 2, "ET": 3}, "file_ending": ".nii.gz"}


@pytest.fixture(scope="module")
def toy_model(tiny_cohort, tmp_path_factory) -> Path:
    """A tiny nnU-Net model folder (labels 1 NCR, 2 ED, 3 ET) trained on the first subjects."""
    torch.set_num_threads(2)
    cohort = read_manifest(tiny_cohort)
    train = Cohort(cohort.subjects[:N_TRAIN], cohort.clinical.iloc[:N_TRAIN], cohort.label_convention, cohort.root)
    return train_toy_model(train, tmp_path_factory.mktemp("nnunet") / "nnUNetTrainer__nnUNetPlans__3d_fullres",
                           log_every=0, **TOY)


def _manifest_without_masks(tiny_cohort: Path, out: Path, held_out: list[int]) -> Path:
    """The tiny cohort's manifest with absolute paths and empty ``seg`` on the held-out rows."""
    table = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    for col in ("t1", "t1ce", "t2", "flair", "seg"):
        table[col] = [str((tiny_cohort.parent / c).resolve()) for c in table[col]]
    table.loc[held_out, "seg"] = ""
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "manifest.csv", index=False)
    return out / "manifest.csv"


def _segment_cfg(overrides: list[str]):
    return compose_config("segment.yaml", overrides)


def test_segment_fills_missing_masks_with_provenance(tiny_cohort, toy_model, tmp_path):
    held_out = [16, 17, 18, 19]
    manifest = _manifest_without_masks(tiny_cohort, tmp_path / "cohort", held_out)
    table_in = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    broken = tmp_path / "broken_flair.nii.gz"
    broken.write_text("not an image")
    table_in.loc[19, "flair"] = str(broken)  # one subject fails; the others must still be written
    table_in.to_csv(manifest, index=False)

    cfg = _segment_cfg([f"cohort.path={manifest}", f"model.folder={toy_model}", "device=cpu",
                        "use_mirroring=false", f"output_dir={tmp_path / 'run'}", "progress=false"])
    run = run_segmentation(cfg)
    out = manifest.with_name("manifest_nnunet.csv")
    assert run.manifest == out and out.is_file()
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(table.columns[: len(table_in.columns)]) == list(table_in.columns)
    assert set(PROVENANCE_COLUMNS) <= set(table.columns)

    # subjects that had masks: every original cell unchanged, no provenance
    given = [i for i in range(len(table)) if i not in held_out]
    pd.testing.assert_frame_equal(table.loc[given, table_in.columns], table_in.loc[given])
    assert (table.loc[given, list(PROVENANCE_COLUMNS)] == "").all().all()

    # the broken subject is reported with its file, left without a mask
    sid_broken = table_in.at[19, "subject_id"]
    assert set(run.failures) == {sid_broken} and str(broken) in run.failures[sid_broken]
    assert table.at[19, "seg"] == ""
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["counts"] == {"given": 16, "predicted": 3, "failed": 1}

    sha1 = hashlib.sha1((toy_model / "fold_0" / "checkpoint_final.pth").read_bytes()).hexdigest()
    original = read_manifest(tiny_cohort)
    wt_dice = []
    for i in held_out[:3]:
        row = table.loc[i]
        assert row.seg_model == str(toy_model.resolve()) and row.seg_folds == "0"
        assert row.seg_checkpoint_sha1 == sha1 and row.seg_configuration == "3d_fullres"
        assert json.loads(row.seg_label_map) == {"1": "NCR", "2": "ED", "3": "ET"}
        mask = sitk.ReadImage(str(out.parent / row.seg))
        t1 = sitk.ReadImage(table_in.at[i, "t1"])
        assert mask.GetSize() == t1.GetSize() and mask.GetSpacing() == t1.GetSpacing()
        assert mask.GetOrigin() == t1.GetOrigin() and mask.GetDirection() == t1.GetDirection()
        pred = sitk.GetArrayFromImage(mask)
        assert set(np.unique(pred)) <= {0, 1, 2, 4}  # BraTS 2021 convention: the model's ET 3 became 4
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(original.subjects[i].seg)))
        wt_dice.append(f1_score(np.isin(ref, [1, 2, 4]).ravel(), np.isin(pred, [1, 2, 4]).ravel()))
    assert np.mean(wt_dice) > 0.5, wt_dice  # a few seconds of training already find the tumour

    # the new manifest is a valid cohort (labels in the convention, masks on the images' grid)
    segmented = read_manifest(out)
    with_masks = [s for s in segmented.subjects if s.seg is not None]
    validate_cohort(Cohort(with_masks, segmented.clinical.loc[[s.subject_id for s in with_masks]]), min_subjects=19)

    # a rerun reuses the masks instead of predicting again; subjects with masks stay untouched
    segmenter = NNUNetSegmenter(toy_model, device="cpu", use_mirroring=False)
    again = segment_manifest(manifest, segmenter, progress=False)
    assert [again.status[table.at[i, "subject_id"]] for i in held_out[:3]] == ["reused"] * 3


def test_segment_reads_any_cohort_block_like_train(tiny_cohort, toy_model, tmp_path):
    """A non-manifest cohort (here the synthetic one, pointed at the session's tiny cohort) is read by the
    shared cohort_from_config; its rows become a new manifest, given masks untouched."""
    from helpers.config import TINY

    shape = ",".join(map(str, TINY["shape"]))
    cfg = _segment_cfg(["cohort=synthetic", f"cohort.path={tiny_cohort.parent}",
                        f"cohort.synthetic.n_subjects={TINY['n_subjects']}", f"cohort.synthetic.shape=[{shape}]",
                        f"cohort.synthetic.seed={TINY['seed']}", f"cohort.synthetic.n_sites={TINY['n_sites']}",
                        f"model.folder={toy_model}", "device=cpu", f"output_dir={tmp_path / 'run'}", "progress=false"])
    run = run_segmentation(cfg)
    assert run.manifest == tmp_path / "run" / "manifest.csv"
    assert set(run.status.values()) == {"given"} and len(run.status) == TINY["n_subjects"]
    written = read_manifest(run.manifest)
    assert written.ids == read_manifest(tiny_cohort).ids
    assert all(s.seg is not None and s.seg.is_file() for s in written.subjects)


def test_masks_are_nnunets_prediction_converted(tiny_cohort, toy_model):
    """Independent reference: nnU-Net's predictor on the same subject, labels mapped by hand (3 -> 4)."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    subject = read_manifest(tiny_cohort).subjects[15]
    mask, seconds = NNUNetSegmenter(toy_model, device="cpu", use_mirroring=False).predict(subject, "brats2021")
    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), perform_everything_on_device=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(toy_model), use_folds=(0,))
    data, props = SimpleITKIO().read_images([str(subject.images[s]) for s in ("t1", "t1ce", "t2", "flair")])
    raw = predictor.predict_single_npy_array(data, props)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), np.array([0, 1, 2, 4])[raw])
    assert seconds > 0
    assert sitk.GetArrayFromImage(NNUNetSegmenter(toy_model, device="cpu", use_mirroring=False).predict(
        subject, "brats2023")[0]).max() <= 3


def test_label_and_channel_mapping():
    assert model_label_map(DATASET, "m") == {1: "NCR", 2: "ED", 3: "ET"}
    regions = {"channel_names": DATASET["channel_names"], "regions_class_order": [1, 2, 3],
               "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}}
    assert model_output_values(regions) == [1, 2, 3]
    assert model_label_map(regions, "m") == {1: "ED", 2: "NCR", 3: "ET"}  # nnU-Net's Dataset137 convention
    seg = np.array([[0, 1], [2, 3]])
    np.testing.assert_array_equal(convert_labels(seg, {1: "ED", 2: "NCR", 3: "ET"}, "brats2021"), [[0, 2], [1, 4]])
    np.testing.assert_array_equal(convert_labels(seg, {1: "NCR", 2: "ED", 3: "ET"}, "brats2023"), seg)
    other = {**DATASET, "labels": {"background": 0, "liver": 1, "tumour": 2}}
    with pytest.raises(SegmentationError, match="liver.*not tumour sub-regions"):
        model_label_map(other, "m")
    assert model_label_map(other, "m", {"1": "ED", 2: "et"}) == {1: "ED", 2: "ET"}
    with pytest.raises(SegmentationError, match="value\\(s\\) \\[2\\].*map to no tumour part"):
        model_label_map(other, "m", {1: "ED"})
    assert model_channels({"channel_names": {"0": "FLAIR", "1": "t1c"}}, "m") == ["flair", "t1ce"]
    assert model_channels(DATASET, "m", {"flair": 0, "t2": 1, "t1": 2, "t1ce": 3}) == ["flair", "t2", "t1", "t1ce"]
    with pytest.raises(SegmentationError, match="channel 1 \\('ADC'\\) matches none"):
        model_channels({"channel_names": {"0": "T1", "1": "ADC"}}, "m")


def _untrained_folder(root: Path, dataset: dict, n_in: int) -> Path:
    plans = tiny_plans([1, 1, 1], [40, 40, 40], n_in, (16, 16, 16), (4, 8))
    net = build_network(plans, {**dataset, "channel_names": {str(i): f"c{i}" for i in range(n_in)}})
    return write_model_folder(root, plans, dataset, net)


def test_model_errors_name_the_problem(tmp_path):
    with pytest.raises(SegmentationError, match="model folder .*nope does not exist"):
        NNUNetSegmenter(tmp_path / "nope")
    five = {**DATASET, "channel_names": {**DATASET["channel_names"], "4": "T2star"}}
    with pytest.raises(SegmentationError, match="expects 5 input channels .* cohort provides 4 sequences"):
        NNUNetSegmenter(_untrained_folder(tmp_path / "five", five, 5))
    three = {**DATASET, "channel_names": {"0": "T1", "1": "T1ce", "2": "FLAIR"}}
    with pytest.raises(SegmentationError, match="expects 4 input channels but dataset.json lists 3"):
        NNUNetSegmenter(_untrained_folder(tmp_path / "three", three, 4))
    liver = {**DATASET, "labels": {"background": 0, "liver": 1, "liver tumour": 2}}
    with pytest.raises(SegmentationError, match="not tumour sub-regions radfusion knows"):
        NNUNetSegmenter(_untrained_folder(tmp_path / "liver", liver, 4))
    folder = _untrained_folder(tmp_path / "ok", DATASET, 4)
    with pytest.raises(SegmentationError, match="fold_1/checkpoint_final.pth.*present: \\['checkpoint_final.pth'\\]"):
        NNUNetSegmenter(folder, folds=[1])
    (folder / "plans.json").unlink()
    with pytest.raises(SegmentationError, match="has no plans.json"):
        NNUNetSegmenter(folder)


def test_dice_and_feature_change_against_references():
    rng = np.random.default_rng(0)
    a, b = rng.random((8, 8, 8)) > 0.6, rng.random((8, 8, 8)) > 0.5
    assert dice(a, b) == pytest.approx(f1_score(a.ravel(), b.ravel()))
    assert dice(np.zeros(3), np.zeros(3)) == 1.0 and dice(a, np.zeros_like(a)) == 0.0
    assert feature_family("WT_shape_MeshVolume") == ("WT", "shape", "original")
    assert feature_family("ED_flair_wavelet-LLH_glszm_ZoneEntropy") == ("ED", "glszm", "wavelet-LLH")
    assert feature_family("ET_voxels") is None and feature_family("ET_empty") is None
    ids = [f"S{i}" for i in range(6)]
    ref = pd.DataFrame({"WT_shape_MeshVolume": rng.uniform(100, 200, 6),
                        "WT_t1_original_firstorder_Mean": rng.uniform(50, 80, 6), "WT_voxels": 1.0}, index=ids)
    auto = ref.copy()
    auto["WT_shape_MeshVolume"] *= 1.2  # 20 % larger volumes; first-order untouched
    per = feature_change(ref, auto)
    assert per.at["WT_shape_MeshVolume", "median_abs_rel_change"] == pytest.approx(0.2)
    assert per.at["WT_t1_original_firstorder_Mean", "median_abs_rel_change"] == 0.0
    assert per.at["WT_t1_original_firstorder_Mean", "icc"] == pytest.approx(1.0)
    assert per.at["WT_shape_MeshVolume", "icc"] < 1.0 and "WT_voxels" not in per.index
    assert list(family_summary(per)["family"]) == ["shape", "firstorder"]


@pytest.mark.slow
def test_quality_report_on_resegmented_subjects(tiny_cohort, toy_model, tmp_path):
    from radfusion.radiomics.settings import DEFAULT_PYRADIOMICS_PARAMS, FeatureSettings
    from radfusion.segmentation.run import segment_cohort

    cohort = read_manifest(tiny_cohort)
    part = Cohort(cohort.subjects[13:16], cohort.clinical.iloc[13:16], cohort.label_convention, cohort.root)
    table = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False).iloc[13:16]
    segmenter = NNUNetSegmenter(toy_model, device="cpu", use_mirroring=False)
    run = segment_cohort(part, segmenter, tmp_path / "auto.csv", tmp_path / "auto_seg", table=table,
                         table_dir=tiny_cohort.parent, only_missing=False, progress=False)
    auto = pd.read_csv(run.manifest, dtype=str, keep_default_na=False)
    # the given masks are kept as the reference (paths now relative to the new manifest's folder)
    assert [(tmp_path / p).resolve() for p in auto.seg_reference] == [s.seg for s in part.subjects]
    assert all(p.startswith("auto_seg/") for p in auto.seg)
    params = copy.deepcopy(DEFAULT_PYRADIOMICS_PARAMS)
    params["featureClass"] = {"shape": None, "firstorder": None}
    settings = FeatureSettings(params=params)
    summary = quality_study(run.manifest, tmp_path / "report", settings, tmp_path / "cache", progress=False)
    for name in ("dice.csv", "feature_change.csv", "feature_families.csv", "segmentation_quality.png"):
        assert (tmp_path / "report" / name).is_file()
    dice_table = pd.read_csv(tmp_path / "report" / "dice.csv")
    assert len(dice_table) == 3 * 5 and dice_table.dice.between(0, 1).all()
    first = dice_table.iloc[0]
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / auto.seg[0])))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(tiny_cohort.parent / table.seg.iloc[0])))
    assert first.habitat == "ET" and first.dice == pytest.approx(dice(pred == 4, ref == 4))
    assert set(summary["families_most_to_least_sensitive"]) == {"shape", "firstorder"}
    shutil.rmtree(tmp_path / "cache")
