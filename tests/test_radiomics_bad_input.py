"""Bad input: thin and tiny habitats become NaN + indicator; bad files fail with subject and file named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from helpers.radiomics import SMALL_PARAMS, reference_execute, rel, small_feature_settings
from helpers.subjects import cohort_of, write_subject
from radfusion.radiomics.extract import extract_cohort, extract_subject
from radfusion.radiomics.settings import FeatureSettings

PARAMS = SMALL_PARAMS


def _settings(**kw) -> FeatureSettings:
    return small_feature_settings(sequences=["t1ce", "flair"], **kw)


def _rewrite(path: Path, arr: np.ndarray, origin_shift: float = 0.0) -> None:
    ref = sitk.ReadImage(str(path))
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    img.SetOrigin(tuple(o + origin_shift for o in ref.GetOrigin()))
    sitk.WriteImage(img, str(path))


def test_thin_and_tiny_habitats(tmp_path: Path) -> None:
    """A 1-voxel-thick slab is a valid PyRadiomics region (computed, equal to execute); a line is not
    (NaN + indicator, PyRadiomics' reason in the diagnostics); neither is a region below minimumROISize."""
    subject = write_subject(tmp_path, "thin")
    seg = np.zeros((32, 32, 32), np.uint8)
    seg[10:22, 10:22, 10:22] = 2   # ED block
    seg[16, 12:20, 12:20] = 4      # ET: one slice thick, 64 voxels
    seg[12:24, 14, 20] = 1         # NCR: a line of 12 voxels
    _rewrite(subject.seg, seg)
    features, diag = extract_subject(subject, _settings())
    assert features["ET_empty"] == 0.0 and features["ET_voxels"] == 64
    image = sitk.ReadImage(str(subject.images["t1ce"]))
    from radfusion.imaging.preprocess import zscore_in_brain

    mask = sitk.GetImageFromArray((seg == 4).astype(np.uint8))
    mask.CopyInformation(image)
    reference = reference_execute(zscore_in_brain(image, scale=100.0), mask, PARAMS)
    for name, ref in reference.items():
        col = f"ET_{name.removeprefix('original_')}" if "_shape_" in name else f"ET_t1ce_{name}"
        assert rel(features[col], ref) <= 1e-6 or (np.isnan(ref) and np.isnan(features[col])), col
    ncr = {k: v for k, v in features.items() if k.startswith("NCR_") and not k.endswith(("_voxels", "_empty"))}
    assert features["NCR_voxels"] == 12 and features["NCR_empty"] == 1.0 and all(np.isnan(v) for v in ncr.values())
    assert features["TC_empty"] == 0.0  # NCR line + ET slab together span three dimensions

    cohort = cohort_of([subject])
    strict = _settings(params={**PARAMS, "setting": {**PARAMS["setting"], "minimumROISize": 100}})
    df = extract_cohort(cohort, strict, tmp_path / "cache", progress=False)
    assert df.loc["thin", "ET_empty"] == 1.0 and df.loc["thin", "ED_empty"] == 0.0
    diag = pd.read_csv(tmp_path / "cache" / strict.cache_key() / "diagnostics.csv")
    rejected = json.loads(diag.loc[diag["sequence"] == "t1ce", "rejected"].iloc[0])
    assert "too small" in rejected["ET"] and "too few dimensions" in rejected["NCR"]
    assert diag["voxels_ET"].tolist() == [64, 64] and diag["bbox"].notna().all()


def test_bad_files_fail_with_subject_and_file_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    good = write_subject(data, "good", seed=7)
    twin = write_subject(data, "shift_ok", seed=7)       # same data, flair origin off by 5e-4 mm
    _rewrite(twin.images["flair"], sitk.GetArrayFromImage(sitk.ReadImage(str(twin.images["flair"]))), 5e-4)
    moved = write_subject(data, "shift_bad", seed=8)     # flair origin off by 0.5 mm
    _rewrite(moved.images["flair"], sitk.GetArrayFromImage(sitk.ReadImage(str(moved.images["flair"]))), 0.5)
    nan = write_subject(data, "nonfinite", seed=9)             # NaN inside the brain (ITK reads it as 0)
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(nan.images["flair"])))
    arr[16, 16, 16] = np.nan
    _rewrite(nan.images["flair"], arr)
    label = write_subject(data, "label3", seed=10)       # label 3 does not exist under brats2021
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(label.seg)))
    seg[seg == 1] = 3
    _rewrite(label.seg, seg)

    settings = _settings()
    cache = tmp_path / "cache"
    df = extract_cohort(cohort_of([good, twin, moved, nan, label]), settings, cache, n_jobs=2, progress=False)
    assert list(df.index) == ["good", "shift_ok"]
    pd.testing.assert_series_equal(df.loc["good"], df.loc["shift_ok"], check_names=False)
    failures = df.attrs["failures"]
    assert set(failures) == {"shift_bad", "nonfinite", "label3"}
    assert "shift_bad" in failures["shift_bad"] and str(moved.images["flair"]) in failures["shift_bad"]
    assert str(moved.seg) in failures["shift_bad"] and "tolerance" in failures["shift_bad"]
    assert str(nan.images["flair"]) in failures["nonfinite"] and "NaN" in failures["nonfinite"]
    assert str(label.seg) in failures["label3"] and "[3]" in failures["label3"]
    written = pd.read_csv(cache / settings.cache_key() / "failures.csv")
    assert sorted(written["subject_id"]) == ["label3", "nonfinite", "shift_bad"]
    diag = pd.read_csv(cache / settings.cache_key() / "diagnostics.csv")
    status = diag.set_index(["subject_id", "sequence"])["status"]
    assert len(diag) == 10 and status[("nonfinite", "flair")] == "failed"
    # Partial results survive: the NaN subject's t1ce item is computed and cached.
    assert status[("nonfinite", "t1ce")] == "computed"
    assert any(p.name.startswith("t1ce-") for p in (cache / "items").glob("*/nonfinite/*.json"))
