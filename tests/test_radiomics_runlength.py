"""One GLRLM C call for disjoint habitats: the split matrices equal PyRadiomics' per-habitat call."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from radiomics import cMatrices, imageoperations

from helpers.radiomics import reference_execute, rel
from helpers.subjects import write_subject
from radfusion.cohort.habitats import ALL_HABITATS, habitat_masks
from radfusion.imaging.preprocess import bounding_box, crop, load_preprocessed
from radfusion.radiomics import engine
from radfusion.radiomics.extract import extract_subject
from radfusion.radiomics.runlength import disjoint_group, shared_run_lengths
from radfusion.radiomics.settings import FeatureSettings


def _image(arr: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    return img


def _pyradiomics_matrix(image_arr: np.ndarray, mask_arr: np.ndarray, settings: dict):
    binned, _ = imageoperations.binImage(image_arr, mask_arr, **settings)
    ng = int(binned[mask_arr].max())
    return cMatrices.calculate_glrlm(binned, mask_arr, ng, int(max(binned.shape)), False, 0)


def _crops(image: sitk.Image, masks: dict[str, np.ndarray]):
    crops = {}
    for hk, m in masks.items():
        mask = _image(m.astype(np.uint8), image.GetSpacing())
        bbox, _ = imageoperations.checkMask(image, mask, label=1)
        img_c, mask_c = imageoperations.cropToTumorMask(image, mask, bbox)
        crops[hk] = (img_c, mask_c, engine._lower_zyx(bbox))
    return crops


@pytest.mark.parametrize("seed", range(6))
def test_split_matrices_equal_pyradiomics_per_habitat(seed: int) -> None:
    """Random nested-shell habitats (a core, a shell, a ring, a scattered sparse one whose lines
    rarely hold two voxels): each habitat's rows, count for count, and the same angles."""
    rng = np.random.default_rng(seed)
    shape = (24, 28, 26)
    arr = rng.normal(0.0, 80.0, shape)
    z, y, x = np.ogrid[:24, :28, :26]
    r = np.sqrt((z - 12) ** 2 + (y - 14) ** 2 / 1.3 + (x - 13) ** 2)
    core, shell, ring = r < 4, (r >= 4) & (r < 7), (r >= 9) & (r < 11)
    sparse = np.zeros(shape, dtype=bool)
    sparse[::5, ::6, ::7] = True  # far apart: most directions see one voxel per line
    sparse &= r >= 12
    masks = {"core": core, "shell": shell, "ring": ring, "sparse": sparse}
    settings = {"binWidth": float(rng.choice([10.0, 25.0])), "label": 1}
    image = _image(arr, (1.0, 0.8, 1.2))
    assert disjoint_group(masks) == ["sparse", "ring", "shell", "core"]  # largest box first
    shared = shared_run_lengths(_crops(image, masks), settings)
    assert set(shared) == set(masks)
    for hk, (img_c, mask_c, _) in _crops(image, masks).items():
        want, want_angles = _pyradiomics_matrix(sitk.GetArrayFromImage(img_c), sitk.GetArrayFromImage(mask_c) == 1,
                                                settings)
        got, got_angles = shared[hk]
        np.testing.assert_array_equal(got_angles, want_angles)
        assert got.shape == want.shape, hk
        np.testing.assert_array_equal(got, want, err_msg=hk)


def test_overlapping_and_flat_habitats_are_not_combined() -> None:
    rng = np.random.default_rng(0)
    image = _image(rng.normal(0, 50, (10, 12, 12)))
    a = np.zeros((10, 12, 12), dtype=bool)
    a[2:6, 2:6, 2:6] = True
    b = np.zeros_like(a)
    b[4:8, 4:8, 4:8] = True
    assert disjoint_group({"a": a, "b": b}) in (["a"], ["b"])
    with pytest.raises(ValueError, match="overlaps"):
        shared_run_lengths(_crops(image, {"a": a, "b": b}), {"binWidth": 25, "label": 1})
    flat = np.zeros_like(a)
    flat[8, 1:10, 1:10] = True  # one slice: its box is 2D, PyRadiomics' angles differ
    assert shared_run_lengths(_crops(image, {"a": a, "flat": flat}), {"binWidth": 25, "label": 1}) == {}
    assert shared_run_lengths(_crops(image, {"a": a}), {"binWidth": 25, "label": 1, "force2D": True}) == {}


def test_engine_with_shared_run_lengths_equals_execute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every habitat (ring included) x Original/LoG/wavelet GLRLM feature through the engine equals
    execute within 1e-9, and the shared call really served the disjoint habitats."""
    params = {"setting": {"binWidth": 25, "label": 1, "additionalInfo": False, "voxelArrayShift": 300,
                          "weightingNorm": "euclidean"},
              "imageType": {"Original": {}, "LoG": {"sigma": [2.0]}, "Wavelet": {}},
              "featureClass": {"glrlm": []}}
    served: list[set] = []
    real = engine.shared_run_lengths

    def spy(crops, settings, flat_angles=None):
        out = real(crops, settings, flat_angles)
        served.append(set(out))
        return out

    monkeypatch.setattr(engine, "shared_run_lengths", spy)
    from radiomics.glrlm import RadiomicsGLRLM

    own_calls: list[int] = []
    pyradiomics_matrix = RadiomicsGLRLM._calculateMatrix

    def counted(self, *args, **kwargs):  # PyRadiomics' own C call: TC and WT only, not a fallback
        own_calls.append(1)
        return pyradiomics_matrix(self, *args, **kwargs)

    monkeypatch.setattr(RadiomicsGLRLM, "_calculateMatrix", counted)
    subject = write_subject(tmp_path, "a", with_et=True)
    settings = FeatureSettings(params=copy.deepcopy(params), habitats=list(ALL_HABITATS), sequences=["t1ce"],
                               crop_padding=3, ring_mm=3.0)
    features, _ = extract_subject(subject, settings)
    assert served and all(s == {"ET", "NCR", "ED", "RING@3mm"} for s in served), served
    # Per filtered image PyRadiomics' own call ran for TC and WT, and for the one-habitat phantom that
    # names the feature columns; the four shared habitats used the shared matrix (no silent fallback).
    assert len(own_calls) == 3 * len(served)

    images, seg = load_preprocessed(subject, 1.0, "zscore", 100.0, ["t1ce"])
    seg_arr = sitk.GetArrayFromImage(seg)
    box = bounding_box(seg_arr > 0, 3 + 3)
    brain = sitk.GetArrayFromImage(images["t1ce"]) != 0
    masks = habitat_masks(seg_arr, "brats2021", ALL_HABITATS, spacing=(1.0, 1.0, 1.0), ring_mm=3.0, brain=brain)
    cropped = crop(images["t1ce"], box)
    n = 0
    for habitat, mask in masks.items():
        mask_img = sitk.GetImageFromArray(mask[box].astype(np.uint8))
        mask_img.CopyInformation(cropped)
        for name, ref in reference_execute(cropped, mask_img, params).items():
            got = features[f"{habitat}_t1ce_{name}"]
            assert rel(got, ref) <= 1e-9, (habitat, name, got, ref)
            n += 1
    assert n == len(masks) * 10 * 16  # 6 habitats x (original + 1 LoG + 8 wavelet) x 16 GLRLM features
