"""Cohort reading and validation: every bad input gives an error naming the subject and file."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from helpers.radiomics import small_feature_settings
from radfusion.cohort.habitats import habitat_masks
from radfusion.cohort.readers import read_brats2021, read_manifest
from radfusion.cohort.subject import GEOMETRY_TOLERANCE, SEQUENCES, CohortError
from radfusion.cohort.validate import validate_cohort
from radfusion.imaging.roi import ROISettings, build_roi_cache
from radfusion.radiomics.extract import extract_cohort


def _inside(shape: tuple[int, ...]) -> np.ndarray:
    """All but a 2-voxel frame: the "brain" of :func:`write_case` (the tumour lies in voxels 4-9)."""
    inside = np.zeros(shape, bool)
    inside[2:-2, 2:-2, 2:-2] = True
    return inside


def write_case(root: Path, sid: str, seg_labels=(1, 2, 4), spacing=(1.0, 1.0, 1.0), shape=(16, 16, 16)) -> Path:
    """A minimal BraTS-2021-layout subject: 4 sequences + seg with the given labels."""
    case = root / sid
    case.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    affine = np.diag([*spacing, 1.0])
    for seq in SEQUENCES:
        arr = rng.normal(100, 10, shape).astype(np.float32)
        arr[~_inside(shape)] = 0  # skull-stripped: a zero background (validation checks it)
        nib.save(nib.Nifti1Image(arr, affine), case / f"{sid}_{seq}.nii.gz")
    seg = np.zeros(shape, np.uint8)
    for i, lab in enumerate(seg_labels):
        seg[4 + 2 * i: 6 + 2 * i, 4:10, 4:10] = lab
    nib.save(nib.Nifti1Image(seg, affine), case / f"{sid}_seg.nii.gz")
    return case


def write_manifest(root: Path, ids: list[str], **columns) -> Path:
    rows = []
    for sid in ids:
        row = {"subject_id": sid, "site": "A"}
        for seq in (*SEQUENCES, "seg"):
            row[seq] = f"{sid}/{sid}_{seq}.nii.gz"
        rows.append(row)
    df = pd.DataFrame(rows)
    for k, v in columns.items():
        df[k] = v
    path = root / "manifest.csv"
    df.to_csv(path, index=False)
    return path


def test_manifest_reads_paths_and_markers(tmp_path):
    for sid in ("a", "b", "c"):
        write_case(tmp_path, sid)
    path = write_manifest(tmp_path, ["a", "b", "c"], idh=["mutant", "wildtype", ""], mgmt=[1, 0, None])
    cohort = validate_cohort(read_manifest(path))
    assert cohort.ids == ["a", "b", "c"]
    assert cohort.subjects[0].images["flair"] == (tmp_path / "a" / "a_flair.nii.gz").resolve()
    assert cohort.clinical["idh"].tolist()[:2] == [1.0, 0.0]
    assert np.isnan(cohort.clinical.loc["c", "idh"])  # unknown stays unknown
    assert np.isnan(cohort.clinical.loc["c", "mgmt"])


def test_bad_marker_value_names_subject(tmp_path):
    write_case(tmp_path, "a")
    path = write_manifest(tmp_path, ["a"], idh=["maybe"])
    with pytest.raises(CohortError, match=r"column 'idh': 'maybe' in 1 subject\(s\) \(a\)"):
        read_manifest(path)


def test_missing_sequence_names_subject_and_file(tmp_path):
    # A missing file is a fact the reader records; refusing it (missing_sequences=error) names the file.
    write_case(tmp_path, "s1")
    (tmp_path / "s1" / "s1_t2.nii.gz").unlink()
    with pytest.raises(CohortError, match=r"subject s1: missing sequence\(s\) \['t2'\].*s1_t2\.nii\.gz"):
        validate_cohort(read_brats2021(tmp_path), missing_sequences="error")


def test_unreadable_file_names_subject_and_file(tmp_path):
    write_case(tmp_path, "s1")
    bad = tmp_path / "s1" / "s1_flair.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    with pytest.raises(CohortError, match=r"subject s1: cannot read .*s1_flair\.nii\.gz"):
        validate_cohort(read_brats2021(tmp_path))


def test_geometry_mismatch_names_files_and_difference(tmp_path):
    write_case(tmp_path, "s1")
    t1ce = tmp_path / "s1" / "s1_t1ce.nii.gz"
    img = nib.load(t1ce)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([1.0, 1.0, 1.2, 1.0])), t1ce)
    match = r"subject s1: geometry mismatch between .*s1_t1ce\.nii\.gz.*spacing.*tolerance"
    with pytest.raises(CohortError, match=match):
        validate_cohort(read_brats2021(tmp_path))


def test_size_mismatch(tmp_path):
    write_case(tmp_path, "s1")
    nib.save(nib.Nifti1Image(np.ones((16, 16, 15), np.float32), np.eye(4)), tmp_path / "s1" / "s1_t2.nii.gz")
    with pytest.raises(CohortError, match=r"s1_t2\.nii\.gz.*size"):
        validate_cohort(read_brats2021(tmp_path))


def test_labels_outside_convention(tmp_path):
    write_case(tmp_path, "s1", seg_labels=(1, 2, 3))  # BraTS 2023 ET=3 under the 2021 convention
    with pytest.raises(CohortError, match=r"subject s1: segmentation .*labels \[3\]"):
        validate_cohort(read_brats2021(tmp_path))
    # ... and accepted with the right convention
    assert len(validate_cohort(read_brats2021(tmp_path, label_convention="brats2023"))) == 1


def test_non_finite_intensities(tmp_path):
    write_case(tmp_path, "s1")
    arr = np.ones((16, 16, 16), np.float32)
    arr[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "s1" / "s1_t1.nii.gz")
    with pytest.raises(CohortError, match=r"subject s1: .*s1_t1\.nii\.gz contains NaN"):
        validate_cohort(read_brats2021(tmp_path))


def test_duplicate_subject_in_manifest(tmp_path):
    write_case(tmp_path, "a")
    path = write_manifest(tmp_path, ["a", "a"])
    with pytest.raises(CohortError, match="duplicate subject_id"):  # refused by validation (skip_invalid drops it)
        validate_cohort(read_manifest(path))


def test_skip_invalid_keeps_the_others(tmp_path):
    for sid in ("good1", "good2", "bad"):
        write_case(tmp_path, sid)
    (tmp_path / "bad" / "bad_seg.nii.gz").write_bytes(b"garbage")
    cohort = validate_cohort(read_brats2021(tmp_path), skip_invalid=True)
    assert cohort.ids == ["good1", "good2"]
    with pytest.raises(CohortError, match="only 2 valid subjects"):
        validate_cohort(read_brats2021(tmp_path), skip_invalid=True, min_subjects=3)


def test_wrong_path_is_clear(tmp_path):
    with pytest.raises(CohortError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(CohortError, match="does not exist"):
        read_brats2021(tmp_path / "nope")


def test_habitats_follow_brats_definitions():
    seg = np.array([0, 1, 2, 4, 4, 2])
    m = habitat_masks(seg, "brats2021")
    assert m["ET"].tolist() == [False, False, False, True, True, False]
    assert m["TC"].tolist() == [False, True, False, True, True, False]
    assert m["WT"].tolist() == [False, True, True, True, True, True]
    assert (m["WT"] == (m["NCR"] | m["ED"] | m["ET"])).all()
    m23 = habitat_masks(np.array([0, 1, 2, 3]), "brats2023")
    assert m23["ET"].tolist() == [False, False, False, True]


def test_longitudinal_manifest_keeps_patient_for_splits(tmp_path):
    for sid in ("a", "b"):
        write_case(tmp_path, sid)
    path = write_manifest(tmp_path, ["a", "a", "b"], timepoint=[0, 1, 0])
    cohort = validate_cohort(read_manifest(path))
    assert cohort.ids == ["a_tp0", "a_tp1", "b_tp0"]
    assert cohort.clinical["patient_id"].tolist() == ["a", "a", "b"]
    bad = write_manifest(tmp_path, ["a", "a"], timepoint=[0, 0])
    with pytest.raises(CohortError, match=r"duplicate subject_id.*a_tp0"):
        validate_cohort(read_manifest(bad))


def test_non_scalar_image_is_refused_by_validation(tmp_path):
    """A two-component image on the mask's grid used to pass validation and fail only when loaded for
    extraction; validation now runs the loader's 3D-scalar check too."""
    write_case(tmp_path, "s1")
    flair = tmp_path / "s1" / "s1_flair.nii.gz"
    one = sitk.ReadImage(str(flair))
    sitk.WriteImage(sitk.Compose(one, one), str(flair))
    with pytest.raises(CohortError, match=r"subject s1: .*s1_flair\.nii\.gz is not a 3D scalar image.*2 components"):
        validate_cohort(read_brats2021(tmp_path))


def _shift_origin(path: Path, shift_mm: float) -> None:
    img = nib.load(path)
    affine = img.affine.copy()
    affine[:3, 3] += shift_mm
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), path)


def test_geometry_tolerance_reaches_extraction_and_rois(tmp_path):
    """``data.cohort.geometry_tolerance`` is applied to every read, not only by validation.

    Subject ``off`` has its t1ce origin 5e-3 mm from the mask's; ``twin`` holds the same data, aligned.
    At the default tolerance (1e-3) ``off`` is refused with a message naming subject, both files, the
    difference, the tolerance and the fix, by validation and by the extraction alike. Validated with
    1e-2, it must then also be extracted and get an ROI; the loader used to re-check with a hard-coded
    1e-3 and lost it as an extraction/ROI failure. The tolerance is no part of any cache key: ``twin``'s
    items and ROI, made at the default tolerance, are reused under the loosened one.
    """
    data = tmp_path / "data"
    for sid in ("off", "twin"):
        write_case(data, sid)  # same random seed: identical arrays
    _shift_origin(data / "off" / "off_t1ce.nii.gz", 5e-3)
    message = (r"subject off: geometry mismatch between \S*off_t1ce\.nii\.gz and \S*off_seg\.nii\.gz: origin .*"
               r"\(max difference 0\.005 > tolerance 0\.001\)\. Resample the image onto the mask grid")
    with pytest.raises(CohortError, match=message):
        validate_cohort(read_brats2021(data))

    settings = small_feature_settings(sequences=["t1ce", "flair"])
    roi = ROISettings(size=8, min_extent_mm=8.0, sequences=("t1ce", "flair"))
    cache = tmp_path / "cache"
    strict = read_brats2021(data)  # not validated: the default tolerance
    assert strict.geometry_tolerance == GEOMETRY_TOLERANCE
    df = extract_cohort(strict, settings, cache, n_jobs=1, progress=False)
    assert list(df.index) == ["twin"]
    assert list(df.attrs["failures"]) == ["off"]
    assert re.search(message, df.attrs["failures"]["off"])  # the same check and message as validation
    paths, failures = build_roi_cache(strict, roi, cache, progress=False)
    assert set(paths) == {"twin"} and re.search(message, failures["off"])
    twin_roi = paths["twin"]

    cohort = validate_cohort(read_brats2021(data), tolerance=1e-2)
    assert cohort.ids == ["off", "twin"] and cohort.geometry_tolerance == 1e-2
    df = extract_cohort(cohort, settings, cache, n_jobs=1, progress=False)
    assert df.attrs["failures"] == {} and list(df.index) == ["off", "twin"]
    # The image is put on the mask's grid, so the offset (and the tolerance) change no value.
    pd.testing.assert_series_equal(df.loc["off"], df.loc["twin"], check_names=False)
    status = pd.read_csv(cache / settings.cache_key() / "diagnostics.csv").set_index(["subject_id", "sequence"])
    assert status.loc[("twin", "t1ce"), "status"] == "cached" and status.loc[("off", "t1ce"), "status"] == "computed"
    paths, failures = build_roi_cache(cohort, roi, cache, progress=False)
    assert failures == {} and set(paths) == {"off", "twin"}
    assert paths["twin"] == twin_roi  # same ROI cache file: the tolerance is not in its key
    np.testing.assert_array_equal(np.load(paths["off"]), np.load(paths["twin"]))
