"""Faster feature-class set-up: every value equal to PyRadiomics' own classes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from radiomics import getFeatureClasses, imageoperations

from helpers.paths import reference_cases
from radfusion.radiomics.classes import _levels_and_counts, compute_features, fast_feature_classes, size_zone_matrix
from radfusion.radiomics.pyrad import binning_memo, build_extractor, capture_warnings

TOL = 1e-12
ALL_CLASSES = {"firstorder": [], "glcm": [], "glrlm": [], "glszm": [], "gldm": [], "ngtdm": []}


def _compare(image: sitk.Image, mask: sitk.Image, settings: dict, label: int = 1) -> int:
    """Every class and feature of (image, mask): fast class == PyRadiomics' class within TOL."""
    params = {"setting": {**settings, "label": label, "additionalInfo": False},
              "imageType": {"Original": {}, "LoG": {"sigma": [2.0]}, "Wavelet": {}}, "featureClass": ALL_CLASSES}
    extractor = build_extractor(params)
    s = dict(extractor.settings)
    bbox, _ = imageoperations.checkMask(image, mask, **s)
    n = 0
    for filtered, name, kwargs in [(image, "original", {})] + list(imageoperations.getLoGImage(image, mask, **s)) \
            + list(imageoperations.getWaveletImage(image, mask, **s))[:3]:
        img_c, mask_c = imageoperations.cropToTumorMask(filtered, mask, bbox)
        theirs = extractor.computeFeatures(img_c, mask_c, name, **{**s, **kwargs})
        with binning_memo():  # as the engine runs them
            ours = compute_features(extractor, img_c, mask_c, name, **{**s, **kwargs})
        assert list(ours) == list(theirs)
        for key, ref in theirs.items():
            got, ref = float(ours[key]), float(ref)
            assert (np.isnan(got) and np.isnan(ref)) or abs(got - ref) <= TOL * abs(ref) or got == ref, \
                (key, got, ref)
        n += len(theirs)
    return n


CASES = reference_cases()


@pytest.mark.skipif(not CASES, reason="shared PyRadiomics / IBSI data not found (set RADFUSION_SHARED_DATA)")
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("binning", [{"binWidth": 25}, {"binCount": 16}])
def test_fast_classes_equal_pyradiomics_on_reference_cases(case, binning) -> None:
    _, image_path, mask_path = case
    image, mask = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(mask_path))
    if case[0] == "ibsi_phantom":
        binning = {"binWidth": 1} if "binWidth" in binning else binning
    assert _compare(image, mask, {**binning, "voxelArrayShift": 300}) == 4 * 93  # 4 images x 93 features


def test_fast_classes_equal_pyradiomics_on_a_synthetic_habitat() -> None:
    """A z-scored-like image (negative values, flat patch) and an irregular mask at anisotropic spacing."""
    rng = np.random.default_rng(5)
    arr = rng.normal(0.0, 60.0, (18, 22, 20))
    arr[5:9, 5:9, 5:9] = 40.0  # a flat patch inside the ROI
    z, y, x = np.ogrid[:18, :22, :20]
    roi = ((z - 9) ** 2 / 1.5 + (y - 11) ** 2 + (x - 10) ** 2) < 64
    roi &= rng.random(roi.shape) > 0.1
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.9, 0.9, 2.5))
    mask = sitk.GetImageFromArray(roi.astype(np.uint8))
    mask.CopyInformation(image)
    assert _compare(image, mask, {"binWidth": 10, "voxelArrayShift": 300}) == 4 * 93


def test_flat_roi_and_warnings_are_pyradiomics_own() -> None:
    """A flat ROI (skewness/kurtosis guards) and a tiny one: same values, same counted warnings."""
    arr = np.full((6, 6, 6), 7.0)
    image = sitk.GetImageFromArray(arr)
    roi = np.zeros((6, 6, 6), dtype=np.uint8)
    roi[2:4, 2:4, 2:4] = 1
    mask = sitk.GetImageFromArray(roi)
    extractor = build_extractor({"setting": {"binWidth": 25, "additionalInfo": False},
                                 "imageType": {"Original": {}}, "featureClass": ALL_CLASSES})
    s = dict(extractor.settings)
    with capture_warnings() as theirs_warn:
        theirs = extractor.computeFeatures(image, mask, "original", **s)
    with capture_warnings() as ours_warn:
        ours = compute_features(extractor, image, mask, "original", **s)
    assert list(ours) == list(theirs)
    for key, ref in theirs.items():
        assert float(ours[key]) == pytest.approx(float(ref), rel=TOL, abs=0, nan_ok=True), key
    assert ours_warn == theirs_warn and sum(theirs_warn.values()) > 0  # e.g. GLCM's "Sum Average" note


def test_roi_with_nan_goes_to_pyradiomics_own_code() -> None:
    arr = np.random.default_rng(0).normal(0, 50, (8, 8, 8))
    arr[4, 4, 4] = np.nan
    image = sitk.GetImageFromArray(arr)
    mask = sitk.GetImageFromArray(np.pad(np.ones((6, 6, 6), np.uint8), 1))
    cls = fast_feature_classes()["firstorder"]
    features = cls(image, mask, binWidth=25, label=1)
    features._initCalculation()
    assert features._stats is None  # no cached statistics: every getter is PyRadiomics'
    ref = getFeatureClasses()["firstorder"](image, mask, binWidth=25, label=1)
    ref._initCalculation()
    for name in ("10Percentile", "Median", "RobustMeanAbsoluteDeviation", "Skewness", "Kurtosis"):
        got, want = getattr(features, f"get{name}FeatureValue")(), getattr(ref, f"get{name}FeatureValue")()
        np.testing.assert_array_equal(got, want)


def test_levels_and_counts_equal_numpy_unique() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        values = rng.integers(1, rng.integers(2, 300), rng.integers(1, 5000))
        levels, counts = _levels_and_counts(values)
        ref_levels, ref_counts = np.unique(values, return_counts=True)
        np.testing.assert_array_equal(levels, ref_levels)
        np.testing.assert_array_equal(counts, ref_counts)
        assert levels.dtype == ref_levels.dtype
    assert _levels_and_counts(np.array([], dtype=int)) is None
    assert _levels_and_counts(np.array([-1, 2])) is None
    assert _levels_and_counts(np.array([1.0, 2.0])) is None


def test_feature_names_are_pyradiomics_own_and_not_shared_between_classes() -> None:
    fast = fast_feature_classes()
    for name, cls in getFeatureClasses().items():
        if name.startswith("shape"):
            continue
        assert fast[name].getFeatureNames() == cls.getFeatureNames()
        fast[name].getFeatureNames()["not a feature"] = True  # a caller's edit does not stick
        assert fast[name].getFeatureNames() == cls.getFeatureNames()


def test_size_zone_matrix_equals_pyradiomics_c_call() -> None:
    """Zones by connected components == PyRadiomics' C region growing, count for count: random
    grey levels and masks, 3D and flat boxes, one grey level, many small zones."""
    from radiomics import cMatrices

    rng = np.random.default_rng(7)
    shapes = [(9, 11, 10), (1, 15, 13), (12, 1, 9), (7, 8, 1), (1, 1, 6), (20, 18, 16)]
    for trial in range(60):
        shape = shapes[trial % len(shapes)]
        n_levels = int(rng.integers(1, 9))
        binned = rng.integers(1, n_levels + 1, shape)
        mask = rng.random(shape) < rng.uniform(0.2, 1.0)
        if not mask.any():
            mask.flat[0] = True
        binned = np.where(mask, binned, 0)
        want = cMatrices.calculate_glszm(binned, mask, n_levels, int(mask.sum()), False, 0)
        got = size_zone_matrix(binned, mask, n_levels)
        assert got.shape == want.shape and got.dtype == want.dtype, (trial, got.shape, want.shape)
        np.testing.assert_array_equal(got, want)
