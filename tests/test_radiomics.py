"""Habitat radiomics: PyRadiomics baseline match, empty habitats, crop invariance, cache, failures."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from helpers.paths import SHARED_DATA
from helpers.radiomics import SMALL_PARAMS, rel, small_feature_settings
from helpers.subjects import cohort_of, write_subject
from radfusion.cohort.habitats import habitat_mask
from radfusion.cohort.subject import SEQUENCES
from radfusion.imaging.preprocess import load_preprocessed
from radfusion.radiomics import engine
from radfusion.radiomics.extract import extract_cohort, extract_region, extract_subject
from radfusion.radiomics.settings import FeatureSettings

PYRAD = SHARED_DATA / "pyradiomics"
BASELINE_CLASSES = ["firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm", "shape"]
# Shape features computed on the marching-cubes surface mesh differ from the (older) baseline by up
# to ~1e-3 with the installed PyRadiomics; diameters, axis lengths and VoxelVolume match to ~1e-13.
MESH_FEATURES = {"MeshVolume", "SurfaceArea", "SurfaceVolumeRatio", "Sphericity"}

# ------------------------------------------------------------------ 1. PyRadiomics baseline

@pytest.mark.parametrize("feature_class", BASELINE_CLASSES)
def test_pyradiomics_baseline(feature_class: str) -> None:
    csv = PYRAD / "baseline" / f"baseline_{feature_class}.csv"
    if not csv.is_file():
        pytest.skip(f"PyRadiomics reference data not found at {csv} (set RADFUSION_SHARED_DATA)")
    import radiomics
    import yaml

    column = pd.read_csv(csv, index_col=0)["brain1"]
    settings = ast.literal_eval(column["diagnostics_Configuration_Settings"])
    image_types = ast.literal_eval(column["diagnostics_Configuration_EnabledImageTypes"])
    # Settings the installed PyRadiomics' schema does not know would make it reject the whole
    # dict: drop them, but say so (in the test log and on stdout with -s).
    schema_file, _ = radiomics.getParameterValidationFiles()
    known = set(yaml.safe_load(Path(schema_file).read_text())["mapping"]["setting"]["mapping"])
    dropped = sorted(set(settings) - known)
    if dropped:
        logging.getLogger(__name__).warning("%s: settings not accepted, dropped: %s", feature_class, dropped)
        print(f"baseline {feature_class}: settings unknown to this PyRadiomics, dropped: {dropped}")
    settings = {k: v for k, v in settings.items() if k in known}
    params = {"setting": settings, "imageType": image_types, "featureClass": {feature_class: []}}

    got = extract_region(PYRAD / "brain1_image.nrrd", PYRAD / "brain1_label.nrrd", params,
                         label=settings.get("label", 1))
    expected = {k: float(v) for k, v in column.items() if k.startswith(f"original_{feature_class}_")}
    assert expected, f"no original_{feature_class}_* rows in {csv}"
    missing = sorted(set(expected) - set(got))
    assert not missing, f"features not produced: {missing}"
    worst, failures = 0.0, []
    for name, ref in expected.items():
        tol = 2e-3 if feature_class == "shape" and name.rsplit("_", 1)[1] in MESH_FEATURES else 1e-6
        err = rel(got[name], ref)
        worst = max(worst, err)
        if not err <= tol:
            failures.append(f"{name}: got {got[name]!r}, baseline {ref!r}, rel diff {err:.3g} > {tol}")
    print(f"baseline {feature_class}: max relative difference {worst:.3g}")
    assert not failures, "\n".join(failures)


@pytest.fixture()
def small_settings() -> FeatureSettings:
    return small_feature_settings()


# ------------------------------------------------------------------ 2. empty habitat

def test_empty_habitat_is_nan_with_indicator(tmp_path: Path, small_settings: FeatureSettings) -> None:
    with_et, _ = extract_subject(write_subject(tmp_path, "a", with_et=True), small_settings)
    no_et, diag = extract_subject(write_subject(tmp_path, "b", with_et=False, seed=1), small_settings)
    assert set(no_et) == set(with_et)
    et_cols = [k for k in no_et if k.startswith("ET_") and k not in ("ET_empty", "ET_voxels")]
    assert et_cols and all(np.isnan(no_et[k]) for k in et_cols)
    assert no_et["ET_empty"] == 1.0 and no_et["ET_voxels"] == 0.0 and diag["voxels"]["ET"] == 0
    assert with_et["ET_empty"] == 0.0 and all(np.isfinite(with_et[k]) for k in et_cols)
    for hab in ("NCR", "ED", "TC", "WT"):
        assert no_et[f"{hab}_empty"] == 0.0
        assert all(np.isfinite(v) for k, v in no_et.items() if k.startswith(f"{hab}_"))
    assert "WT_shape_MeshVolume" in no_et and "ET_t1ce_original_firstorder_Mean" in no_et


# ------------------------------------------------------------------ 3. crop invariance

def test_crop_does_not_change_features(tmp_path: Path, small_settings: FeatureSettings) -> None:
    subject = write_subject(tmp_path, "a")
    features, diag = extract_subject(subject, small_settings)
    assert diag["bbox"] is not None  # the crop really happened
    images, seg = load_preprocessed(subject, small_settings.spacing, small_settings.normalize,
                                    small_settings.normalize_scale, small_settings.sequences)
    for hab in ("ET", "WT"):
        mask_arr = habitat_mask(sitk.GetArrayFromImage(seg), hab, "brats2021")
        mask = sitk.GetImageFromArray(mask_arr.astype(np.uint8))
        mask.CopyInformation(seg)
        for seq in ("t1ce", "flair"):
            full = extract_region(images[seq], mask, SMALL_PARAMS)
            for name, ref in full.items():
                shape = "_shape_" in name
                col = f"{hab}_{name.removeprefix('original_')}" if shape else f"{hab}_{seq}_{name}"
                assert rel(features[col], ref) <= 1e-6, (col, features[col], ref)


# ------------------------------------------------------------------ 4. cache

def test_cache_reused_and_keyed_by_settings(tmp_path: Path, small_settings: FeatureSettings,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cohort = cohort_of([write_subject(tmp_path / "data", s, seed=i) for i, s in enumerate(["s1", "s2"])])
    first = extract_cohort(cohort, small_settings, tmp_path / "cache", n_jobs=1, progress=False)
    key_dir = tmp_path / "cache" / small_settings.cache_key()
    items = sorted((tmp_path / "cache" / "items").glob("*/*/*.json"))
    # One cached item per subject x sequence.
    assert sorted((p.parent.name, p.name.split("-")[0]) for p in items) == sorted(
        (s, q) for s in ("s1", "s2") for q in SEQUENCES)
    assert (key_dir / "features.parquet").is_file() and (key_dir / "diagnostics.csv").is_file()

    def boom(*args, **kwargs):
        raise AssertionError("recomputed despite cache")

    monkeypatch.setattr(engine, "compute_item", boom)
    second = extract_cohort(cohort, small_settings, tmp_path / "cache", n_jobs=1, progress=False)
    pd.testing.assert_frame_equal(first, second)
    assert second.attrs["failures"] == {}
    pd.testing.assert_frame_equal(pd.read_parquet(key_dir / "features.parquet"), first)

    changed = small_feature_settings(crop_padding=3)
    changed.params["setting"]["binWidth"] = 10
    assert changed.cache_key() != small_settings.cache_key()
    parallel = small_feature_settings(n_jobs=4)
    assert parallel.cache_key() == small_settings.cache_key()


# ------------------------------------------------------------------ 5. failure isolation

def test_corrupt_subject_is_reported_not_dropped(tmp_path: Path, small_settings: FeatureSettings) -> None:
    subjects = [write_subject(tmp_path / "data", s, seed=i) for i, s in enumerate(["good1", "bad", "good2"])]
    subjects[1].images["t2"].write_bytes(b"this is not a NIfTI file" * 10)
    df = extract_cohort(cohort_of(subjects), small_settings, tmp_path / "cache", n_jobs=2, progress=False)
    assert list(df.index) == ["good1", "good2"]
    message = df.attrs["failures"]["bad"]
    assert "bad" in message and str(subjects[1].images["t2"]) in message
    failures = pd.read_csv(tmp_path / "cache" / small_settings.cache_key() / "failures.csv")
    assert failures["subject_id"].tolist() == ["bad"]
    assert df.notna().all().all() and df.filter(like="_empty").eq(0).all().all()
