"""Cohort reading and validation: every bad input gives an error naming the subject and file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from radfusion.cohort.habitats import habitat_masks
from radfusion.cohort.readers import read_brats2021, read_manifest
from radfusion.cohort.subject import SEQUENCES, CohortError
from radfusion.cohort.validate import validate_cohort


def write_case(root: Path, sid: str, seg_labels=(1, 2, 4), spacing=(1.0, 1.0, 1.0), shape=(16, 16, 16)) -> Path:
    """A minimal BraTS-2021-layout subject: 4 sequences + seg with the given labels."""
    case = root / sid
    case.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    affine = np.diag([*spacing, 1.0])
    for seq in SEQUENCES:
        nib.save(nib.Nifti1Image(rng.normal(100, 10, shape).astype(np.float32), affine),
                 case / f"{sid}_{seq}.nii.gz")
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
    with pytest.raises(CohortError, match=r"subject a.*'idh'.*maybe"):
        read_manifest(path)


def test_missing_sequence_names_subject_and_file(tmp_path):
    write_case(tmp_path, "s1")
    (tmp_path / "s1" / "s1_t2.nii.gz").unlink()
    with pytest.raises(CohortError, match=r"subject s1: missing sequence t2.*s1_t2\.nii\.gz"):
        read_brats2021(tmp_path)


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
    with pytest.raises(CohortError, match="duplicate subject_id"):
        read_manifest(path)


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
    with pytest.raises(CohortError, match="repeated"):
        read_manifest(bad)
