"""Shared-filtering engine: equal to PyRadiomics' own ``execute``, ring habitat, parameter files, configs."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from helpers.paths import ROOT
from helpers.radiomics import reference_execute, rel, small_feature_settings
from helpers.subjects import write_subject
from radfusion.cohort.habitats import ALL_HABITATS, RING, habitat_masks, peritumoral_ring
from radfusion.imaging.preprocess import bounding_box, crop, load_preprocessed
from radfusion.radiomics import engine
from radfusion.radiomics.extract import extract_subject, feature_columns
from radfusion.radiomics.pyrad import binning_memo
from radfusion.radiomics.settings import FeatureSettings

FILTER_PARAMS = {
    "setting": {"binWidth": 25, "label": 1, "additionalInfo": False, "voxelArrayShift": 300},
    "imageType": {"Original": {}, "LoG": {"sigma": [1.0, 2.0]}, "Wavelet": {}},
    "featureClass": {"shape": [], "firstorder": [], "glcm": [], "glszm": []},
}


def _mask(arr: np.ndarray, ref: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.CopyInformation(ref)
    return img


def _column(habitat: str, sequence: str, name: str) -> str:
    if "_shape_" in name:
        return f"{habitat}_{name.removeprefix('original_')}"
    return f"{habitat}_{sequence}_{name}"


def _assert_close(features: dict, reference: dict, habitat: str, sequence: str, tol: float = 1e-9) -> int:
    bad = []
    for name, ref in reference.items():
        got = features[_column(habitat, sequence, name)]
        if not (np.isnan(ref) and np.isnan(got)) and not rel(got, ref) <= tol:
            bad.append(f"{habitat}/{sequence}/{name}: engine {got!r}, execute {ref!r}")
    assert not bad, "\n".join(bad[:20])
    return len(reference)


@pytest.mark.parametrize("with_et", [True, False])
def test_shared_filtering_equals_execute_on_the_same_crop(tmp_path: Path, with_et: bool) -> None:
    """Each habitat (ring included) x sequence equals RadiomicsFeatureExtractor.execute on the same
    cropped image and habitat mask (filters included), and Original features equal a plain execute
    on the uncropped image. Without ET, TC = NCR: computed once, still equal to execute on TC."""
    subject = write_subject(tmp_path, "a", with_et=with_et)
    settings = FeatureSettings(params=copy.deepcopy(FILTER_PARAMS), habitats=list(ALL_HABITATS),
                               sequences=["t1ce", "flair"], crop_padding=3, ring_mm=3.0)
    features, diag = extract_subject(subject, settings)

    images, seg = load_preprocessed(subject, 1.0, "zscore", 100.0, ["t1ce", "flair"])
    seg_arr = sitk.GetArrayFromImage(seg)
    box = bounding_box(seg_arr > 0, 3 + 3)  # crop_padding + ring width in 1 mm voxels
    assert diag["bbox"] == [[s.start, s.stop] for s in box]
    original_only = {**copy.deepcopy(FILTER_PARAMS), "imageType": {"Original": {}}}
    n_checked = 0
    for seq in settings.sequences:
        brain = sitk.GetArrayFromImage(images[seq]) != 0
        masks = habitat_masks(seg_arr, "brats2021", ALL_HABITATS, spacing=(1.0, 1.0, 1.0), ring_mm=3.0,
                              brain=brain)
        cropped = crop(images[seq], box)
        for habitat, mask in masks.items():
            if not with_et and habitat == "ET":
                assert features["ET_empty"] == 1.0 and features["ET_voxels"] == 0
                continue
            assert features[f"{habitat}_empty"] == 0.0 and features[f"{habitat}_voxels"] == mask.sum()
            reference = reference_execute(cropped, _mask(mask[box], cropped), FILTER_PARAMS)
            assert any(k.startswith("wavelet-") for k in reference) and any(k.startswith("log-") for k in reference)
            if seq != settings.sequences[0]:  # shape is computed once, from the first sequence
                reference = {k: v for k, v in reference.items() if "_shape_" not in k}
            n_checked += _assert_close(features, reference, habitat, seq)
            uncropped = reference_execute(images[seq], _mask(mask, images[seq]), original_only)
            _assert_close(features, uncropped, habitat, seq)
    # Every feature column of a present habitat was checked: habitats x 2 sequences x all image types.
    assert n_checked == sum(1 for k in features if not k.endswith(("_voxels", "_empty"))
                            and (with_et or not k.startswith("ET_")))


def test_pyradiomics_normalize_from_params_file_equals_execute_on_raw_files(tmp_path: Path) -> None:
    """A user's PyRadiomics YAML (normalize, bin count, its own label) is used as-is; with radfusion's
    preprocessing off, Original features equal a plain execute on the original files."""
    subject = write_subject(tmp_path, "a", seed=3)
    params = {"setting": {"normalize": True, "normalizeScale": 100, "binCount": 16, "label": 2,
                          "voxelArrayShift": 300},
              "imageType": {"Original": {}},
              "featureClass": {"firstorder": None, "glrlm": None, "shape": None}}
    params_file = tmp_path / "my_params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    settings = FeatureSettings.from_config({"params_file": str(params_file), "normalize": "none", "spacing": None,
                                            "habitats": ["ET", "WT"], "sequences": ["t2"]})
    features, _ = extract_subject(subject, settings)
    seg = sitk.ReadImage(str(subject.seg))
    seg_arr = sitk.GetArrayFromImage(seg)
    for habitat in ("ET", "WT"):
        mask = habitat_masks(seg_arr, "brats2021", [habitat])[habitat]
        reference = reference_execute(subject.images["t2"], _mask(mask * 2, seg), params_file, label=2)
        assert _assert_close(features, reference, habitat, "t2") > 40
    # binCount 16 really applied: no more than 16 grey levels inside the WT.
    assert features["WT_t2_original_glrlm_GrayLevelNonUniformityNormalized"] >= 1 / 16 - 1e-9


def test_pyradiomics_resampling_runs_once_on_the_crop(tmp_path: Path) -> None:
    """PyRadiomics' own resampling (2 mm) is applied once per sequence to the whole-tumour crop; each
    habitat then equals execute on that resampled crop and the habitat mask on its grid."""
    from radiomics import imageoperations

    subject = write_subject(tmp_path, "a", seed=5)
    params = {"setting": {"binWidth": 25, "resampledPixelSpacing": [2, 2, 2], "interpolator": "sitkBSpline",
                          "voxelArrayShift": 300},
              "imageType": {"Original": {}, "LoG": {"sigma": [2.0]}},
              "featureClass": {"firstorder": None, "glcm": None}}
    settings = FeatureSettings(params=params, habitats=["NCR", "WT"], sequences=["flair"], crop_padding=2)
    features, _ = extract_subject(subject, settings)
    images, seg = load_preprocessed(subject, 1.0, "zscore", 100.0, ["flair"])
    seg_arr = sitk.GetArrayFromImage(seg)
    box = bounding_box(seg_arr > 0, 2)
    cropped = crop(images["flair"], box)
    whole = _mask(np.ones(seg_arr[box].shape), cropped)
    grid, _ = imageoperations.resampleImage(cropped, sitk.Cast(whole, sitk.sitkUInt32),
                                            resampledPixelSpacing=[2, 2, 2], interpolator="sitkBSpline")
    assert grid.GetSpacing() == (2.0, 2.0, 2.0)
    no_resampling = {**params, "setting": {"binWidth": 25, "voxelArrayShift": 300}}
    for habitat in ("NCR", "WT"):
        mask = _mask(habitat_masks(seg_arr[box], "brats2021", [habitat])[habitat], cropped)
        mask = sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt32)
        reference = reference_execute(grid, mask, no_resampling)
        assert _assert_close(features, reference, habitat, "flair") == 2 * (18 + 24)


def test_peritumoral_ring_matches_brute_force_distances() -> None:
    rng = np.random.default_rng(0)
    wt = np.zeros((9, 14, 12), bool)
    wt[3:6, 5:9, 4:7] = True
    wt[4, 9, 5] = True
    brain = rng.random(wt.shape) > 0.1
    spacing = (2.0, 1.0, 0.8)  # anisotropic: the ring must be 3 mm wide along every axis
    ring = peritumoral_ring(wt, 3.0, spacing, brain)
    tumour = np.argwhere(wt) * spacing
    expected = np.zeros_like(wt)
    for idx in itertools.product(*map(range, wt.shape)):
        dist = np.sqrt(((tumour - np.array(idx) * spacing) ** 2).sum(1)).min()
        expected[idx] = dist <= 3.0 and not wt[idx] and brain[idx]
    np.testing.assert_array_equal(ring, expected)
    assert ring.sum() > 50 and not (ring & wt).any()
    assert not peritumoral_ring(np.zeros((4, 4, 4), bool), 3.0, (1, 1, 1)).any()
    # Cropping with enough margin changes nothing (the engine computes the ring on the crop).
    box = bounding_box(wt, [2, 3, 4])
    np.testing.assert_array_equal(peritumoral_ring(wt[box], 3.0, spacing, brain[box]), ring[box])
    with pytest.raises(ValueError, match="RING habitat needs"):
        habitat_masks(wt.astype(np.uint8), "brats2021", ["WT", RING])


def test_full_config_gives_the_issue_feature_set() -> None:
    """configs/features/full.yaml: 6 habitats x 4 sequences x (Original + LoG 1/3/5 mm + 8 wavelet bands)."""
    from helpers.config import compose_train_cfg

    settings = FeatureSettings.from_config(compose_train_cfg(["features=full"]).features)
    default = FeatureSettings.from_config(compose_train_cfg([]).features)
    columns = feature_columns(settings)
    per_cell = [c for c in columns if c.startswith("ED_t1ce_")]
    original = [c for c in per_cell if c.startswith("ED_t1ce_original_")]
    kinds = sorted({c.split("_")[2] for c in per_cell})
    assert kinds == ["log-sigma-1-0-mm-3D", "log-sigma-3-0-mm-3D", "log-sigma-5-0-mm-3D", "original",
                     *[f"wavelet-{b}" for b in ("HHH", "HHL", "HLH", "HLL", "LHH", "LHL", "LLH", "LLL")]]
    assert len(per_cell) == 12 * len(original) and len(original) > 90
    assert settings.habitats == [*default.habitats, RING] and len(settings.sequences) == 4
    shape = [c for c in columns if c.startswith("ED_shape_")]
    assert len(columns) == 6 * (2 + len(shape) + 4 * len(per_cell))
    assert default.params["imageType"] == {"Original": {}}  # the fast default stays Original-only
    assert settings.cache_key() != default.cache_key()


def test_settings_validation_and_bin_count_from_config() -> None:
    cfg = yaml.safe_load((ROOT / "configs" / "features" / "default.yaml").read_text())
    cfg["params"]["setting"]["binCount"] = 32
    settings = FeatureSettings.from_config(cfg)
    assert settings.pyradiomics_params["setting"]["binCount"] == 32
    cfg["params"]["setting"]["binCount"] = None  # null = not set, PyRadiomics never sees it
    assert "binCount" not in FeatureSettings.from_config(cfg).pyradiomics_params["setting"]
    with pytest.raises(ValueError, match="habitats"):
        FeatureSettings(habitats=["WT", "CORE"])
    with pytest.raises(ValueError, match="backend"):
        FeatureSettings(backend="spark")
    with pytest.raises(ValueError, match="unknown feature setting"):
        FeatureSettings.from_config({"bin_width": 10})
    assert FeatureSettings(n_jobs=4, backend="dask").cache_key() == FeatureSettings().cache_key()
    assert settings.memo_binning is True  # on in configs/features/default.yaml
    with pytest.raises(ValueError, match="memo_binning"):
        FeatureSettings(memo_binning="no")  # a string would be truthy: refused


def test_binning_memo_is_scoped_to_each_item_and_changes_no_value(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The memo wraps PyRadiomics' ``binImage`` only while the engine computes an item: afterwards
    the very function that was there before is back (a user's own PyRadiomics calls in the same
    process never run through it). It does save binning work, and features are identical with
    ``memo_binning`` on and off."""
    from radiomics import imageoperations

    pyradiomics_own = imageoperations.binImage
    assert not getattr(pyradiomics_own, "radfusion_memo", False), "an earlier test left the memo installed"
    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(1)
        return pyradiomics_own(*args, **kwargs)

    monkeypatch.setattr(imageoperations, "binImage", counted)
    wrapped_during_item: list[bool] = []
    real_entries = engine.compute_entries

    def entries(image, masks, *args, **kwargs):
        if set(masks) != {"T"}:  # not the column-name phantom (it runs outside any item)
            wrapped_during_item.append(getattr(imageoperations.binImage, "radfusion_memo", False))
        return real_entries(image, masks, *args, **kwargs)

    monkeypatch.setattr(engine, "compute_entries", entries)
    subject = write_subject(tmp_path, "a", seed=2)
    features, n_calls = {}, {}
    for memo in (True, False):
        calls.clear()
        wrapped_during_item.clear()
        settings = small_feature_settings(sequences=["t1ce", "flair"], memo_binning=memo)
        features[memo], _ = extract_subject(subject, settings)
        assert imageoperations.binImage is counted  # restored: the identical function object
        assert wrapped_during_item == [memo, memo]  # one item per sequence, memo exactly as asked
        n_calls[memo] = len(calls)
    assert 0 < n_calls[True] < n_calls[False]  # repeated binnings were served from the memo
    assert list(features[True]) == list(features[False])
    np.testing.assert_array_equal(np.array(list(features[True].values())), np.array(list(features[False].values())))


def test_binning_memo_nests_restores_on_error_and_returns_pyradiomics_values() -> None:
    from radiomics import imageoperations

    own = imageoperations.binImage
    rng = np.random.default_rng(0)
    image, mask = rng.normal(0.0, 100.0, (6, 7, 8)), rng.random((6, 7, 8)) > 0.4
    expected, expected_edges = own(image.copy(), mask, binWidth=25)
    with binning_memo():
        outer = imageoperations.binImage
        assert outer is not own and outer.__wrapped__ is own
        with binning_memo():  # nested (or another thread's item): the same wrapper, kept until the last exit
            assert imageoperations.binImage is outer
        assert imageoperations.binImage is outer
        first, _ = imageoperations.binImage(image, mask, binWidth=25)
        first[...] = -1  # a caller editing its result must not change what the memo returns next
        second, edges = imageoperations.binImage(image, mask, binWidth=25)
    assert imageoperations.binImage is own
    np.testing.assert_array_equal(second, expected)
    np.testing.assert_array_equal(edges, expected_edges)
    with pytest.raises(RuntimeError, match="boom"), binning_memo():
        raise RuntimeError("boom")
    assert imageoperations.binImage is own
    with binning_memo(enabled=False):
        assert imageoperations.binImage is own


def test_bin_edges_from_the_range_equal_pyradiomics_own() -> None:
    """Inside the memo, getBinEdges sees only [min, max]: the edges (binWidth and binCount, float and
    integer ROIs, flat and single-bin ROIs) are exactly PyRadiomics' own; NaN goes to PyRadiomics as is."""
    from radiomics import imageoperations

    own = imageoperations.getBinEdges
    rng = np.random.default_rng(3)
    cases = [rng.normal(0.0, 100.0, 5000), rng.normal(0.0, 1.0, 50) * 7.3 + 0.01,
             rng.integers(-300, 900, 4000).astype(np.int16), np.full(40, 50.0), np.full(40, 3.7),
             np.array([0.0, 25.0, 24.999999, 49.0])]
    settings = [{"binWidth": 25}, {"binWidth": 0.3}, {"binCount": 16}, {"binCount": 1}, {}]
    with binning_memo():
        fast = imageoperations.getBinEdges
        assert fast is not own and fast.__wrapped__ is own
        for values in cases:
            for kw in settings:
                np.testing.assert_array_equal(np.asarray(fast(values, **kw)), np.asarray(own(values, **kw)))
    assert imageoperations.getBinEdges is own
    with_nan = np.array([1.0, np.nan, 30.0, 70.0])
    seen = []

    def spy(values, **kwargs):
        seen.append(np.asarray(values).copy())
        return own(values, **kwargs)

    from radfusion.radiomics.pyrad import _range_bin_edges

    _range_bin_edges(spy)(with_nan, binWidth=25)
    assert len(seen) == 1 and seen[0].size == 4  # not reduced to a range: PyRadiomics decides
    _range_bin_edges(spy)(cases[0], binWidth=25)
    assert seen[1].tolist() == [cases[0].min(), cases[0].max()]
