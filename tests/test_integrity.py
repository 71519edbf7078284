"""Files that are damaged or unusual but read "fine": truncated or corrupt NIfTI, files changed after
caching, label maps with several labels per habitat (BraTS 2015), float label maps, 4D images.

Each test builds its bad input from tiny synthetic subjects (24³ voxels) in ``tmp_path``.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.radiomics import small_feature_settings
from helpers.subjects import cohort_of, write_subject
from radfusion.cohort.habitats import (
    allowed_labels,
    convention_label_sets,
    convention_labels,
    habitat_mask,
    habitat_masks,
)
from radfusion.cohort.integrity import check_file_intact, integer_labels
from radfusion.cohort.subject import Cohort, CohortError
from radfusion.cohort.validate import validate_cohort
from radfusion.imaging.preprocess import load_preprocessed
from radfusion.radiomics import engine
from radfusion.radiomics.extract import extract_cohort
from radfusion.radiomics.stability import perturb_labels

N = 24


def _cut(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _write_like(path: Path, arr: np.ndarray, like: Path) -> None:
    """Write ``arr`` (numpy z, y, x) to ``path`` on the grid of the image at ``like``."""
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(sitk.ReadImage(str(like)))
    sitk.WriteImage(img, str(path))


def _subjects(root: Path, n: int = 3) -> list:
    return [write_subject(root, f"s{i}", seed=i, n=N) for i in range(n)]


# ------------------------------------------------------------------ 1. truncated / corrupt files


def test_truncated_image_is_refused_or_skipped(tmp_path: Path) -> None:
    subjects = _subjects(tmp_path)
    flair = subjects[1].images["flair"]
    _cut(flair)
    # Why the check exists: SimpleITK reads the cut file without complaint, half of it zeros.
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(flair))).shape == (N, N, N)
    with pytest.raises(CohortError) as err:
        validate_cohort(cohort_of(subjects))
    msg = str(err.value)
    assert msg.startswith(f"subject s1: {flair} is truncated or corrupt (gzip stream: ")
    assert msg.endswith("re-export or re-download it")
    kept = validate_cohort(cohort_of(subjects), skip_invalid=True)
    assert kept.ids == ["s0", "s2"]
    assert list(kept.clinical.index) == ["s0", "s2"]


def test_truncated_mask_and_brain_mask_are_refused(tmp_path: Path) -> None:
    subjects = _subjects(tmp_path, 2)
    _cut(subjects[0].seg, 0.7)
    with pytest.raises(CohortError, match=r"subject s0: .*s0_seg\.nii\.gz is truncated or corrupt"):
        validate_cohort(cohort_of(subjects))
    brainmask = tmp_path / "s1" / "s1_brainmask.nii.gz"
    shutil.copy(subjects[1].seg, brainmask)
    _cut(brainmask)
    subjects[1].brainmask = brainmask
    with pytest.raises(CohortError, match=r"subject s1: .*s1_brainmask\.nii\.gz is truncated or corrupt"):
        validate_cohort(cohort_of(subjects[1:]))


def test_uncompressed_nifti_voxel_count_and_gzip_crc(tmp_path: Path) -> None:
    subject = write_subject(tmp_path, "a", n=N)
    nii = tmp_path / "a_t1.nii"
    sitk.WriteImage(sitk.ReadImage(str(subject.images["t1"])), str(nii))
    check_file_intact("a", nii)  # a whole file passes
    _cut(nii)
    with pytest.raises(CohortError, match=r"truncated or corrupt \(the header declares 24x24x24 voxels of 4 bytes "
                                          r"after byte 352, 55648 bytes in all, but the file has 27824\)"):
        check_file_intact("a", nii)
    # The gzip stream is whole but holds half the voxels: only the header's voxel count catches it.
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(nii.read_bytes()))
    with pytest.raises(CohortError, match=r"but the decompressed file has 27824"):
        check_file_intact("a", short)
    # One flipped byte inside the compressed data: the CRC (or the deflate stream) catches it.
    flipped = tmp_path / "flipped.nii.gz"
    data = bytearray(subject.images["t2"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(CohortError, match=r"flipped\.nii\.gz is truncated or corrupt \(gzip stream: "):
        check_file_intact("a", flipped)
    # An uncompressed file named .nii.gz is read by ITK as it is: not corrupt.
    plain = tmp_path / "plain.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(subject.images["t1"])), str(tmp_path / "whole.nii"))
    shutil.copy(tmp_path / "whole.nii", plain)
    check_file_intact("a", plain)


def test_changed_file_invalidates_its_cached_item(tmp_path: Path) -> None:
    """The item key hashes the file's contents: overwriting an image (even keeping its mtime) makes its
    items recompute, with the new values; the other sequence's items stay cached."""
    subject = write_subject(tmp_path / "data", "s0", seed=0, n=N)
    other = write_subject(tmp_path / "other", "s0", seed=7, n=N)
    settings = small_feature_settings(sequences=["t1ce", "flair"], habitats=["WT"])
    cohort = cohort_of([subject])
    first = extract_cohort(cohort, settings, tmp_path / "cache", n_jobs=1, progress=False)

    flair = subject.images["flair"]
    stat = flair.stat()
    shutil.copy(other.images["flair"], flair)
    os.utime(flair, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = extract_cohort(cohort, settings, tmp_path / "cache", n_jobs=1, progress=False)
    fresh = extract_cohort(cohort, settings, tmp_path / "fresh", n_jobs=1, progress=False)

    flair_cols = [c for c in first.columns if "_flair_" in c]
    t1ce_cols = [c for c in first.columns if "_t1ce_" in c]
    assert flair_cols and t1ce_cols
    assert (second[flair_cols] != first[flair_cols]).to_numpy().mean() > 0.5  # recomputed, not the cached values
    assert np.allclose(second[flair_cols], fresh[flair_cols], rtol=1e-12, equal_nan=True)
    assert np.array_equal(second[t1ce_cols], first[t1ce_cols], equal_nan=True)
    items = sorted(p.name for p in (tmp_path / "cache" / "items").glob("*/s0/flair-*.json"))
    assert len(items) == 2  # the old item and the item of the new contents


# ------------------------------------------------------------------ 4. label maps


def test_brats2015_maps_two_labels_to_necrosis() -> None:
    seg = np.array([0, 1, 2, 3, 4])
    for conv in ("brats2015", {"NCR": [1, 3], "ED": 2, "ET": 4}):
        assert convention_label_sets(conv) == {"NCR": (1, 3), "ED": (2,), "ET": (4,)}
        assert convention_labels(conv) == {"NCR": 1, "ED": 2, "ET": 4}  # the label each part is written with
        assert allowed_labels(conv) == {0, 1, 2, 3, 4}
        masks = habitat_masks(seg, conv)
        assert masks["NCR"].tolist() == [False, True, False, True, False]
        assert masks["TC"].tolist() == [False, True, False, True, True]
        assert masks["WT"].tolist() == [False, True, True, True, True]
    # The single-label conventions are what they were.
    assert convention_labels("brats2021") == {"NCR": 1, "ED": 2, "ET": 4}
    assert convention_labels("brats2023") == {"NCR": 1, "ED": 2, "ET": 3}
    assert allowed_labels("brats2021") == {0, 1, 2, 4}
    assert habitat_mask(seg, "NCR", "brats2021").tolist() == [False, True, False, False, False]
    assert habitat_mask(seg, "ET", {"NCR": 1, "ED": 2, "ET": 3}).tolist() == [False, False, False, True, False]
    with pytest.raises(ValueError, match="belong to more than one part"):
        convention_label_sets({"NCR": [1, 2], "ED": 2, "ET": 4})
    with pytest.raises(ValueError, match="not a positive whole number"):
        convention_label_sets({"NCR": [0, 1], "ED": 2, "ET": 4})
    # Perturbations for the stability analysis know every label of a part.
    block = np.zeros((7, 7, 7), np.uint8)
    block[1:6, 1:6, 1:6], block[2:5, 2:5, 2:5], block[3, 3, 3] = 2, 4, 3
    assert perturb_labels(block, "erode", "brats2015").shape == block.shape


def test_convention_from_hydra_is_plain_and_keeps_its_cache_key(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"label_convention": {"NCR": [1, 3], "ED": 2, "ET": 4}, "named": "brats2021",
                            "ints": {"NCR": 1, "ED": 2, "ET": 4}})
    cohort = Cohort([], None, cfg.label_convention)
    assert type(cohort.label_convention) is dict and type(cohort.label_convention["NCR"]) is list
    seg = tmp_path / "seg.nii.gz"
    seg.write_bytes(b"mask-bytes\n")
    plain = engine.input_checksum([None, seg], {"NCR": [1, 3], "ED": 2, "ET": 4})
    assert engine.input_checksum([None, seg], cohort.label_convention) == plain
    # Existing conventions hash exactly as before (this literal is pinned in test_radiomics_cache.py too).
    image = tmp_path / "image.nii.gz"
    image.write_bytes(b"image-bytes\n")
    named = Cohort([], None, cfg.named).label_convention
    assert engine.input_checksum([image, seg], named) == "c23cac90618c923665b54c0fd1bbda05da133106"
    ints = Cohort([], None, cfg.ints).label_convention
    assert type(ints) is dict
    want = engine.input_checksum([image, seg], {"NCR": 1, "ED": 2, "ET": 4})
    assert engine.input_checksum([image, seg], ints) == want


def test_brats2015_cohort_validates_and_extracts_label_3_as_necrosis(tmp_path: Path) -> None:
    subject = write_subject(tmp_path, "s0", n=N)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(subject.seg)))
    zz = np.arange(N)[:, None, None] * np.ones((1, N, N))
    seg[(seg == 2) & (zz < N // 2)] = 3  # half of the edema becomes non-enhancing tumour
    _write_like(subject.seg, seg.astype(np.uint8), subject.seg)
    with pytest.raises(CohortError, match=r"labels \[3\] outside the brats2021 convention"):
        validate_cohort(cohort_of([subject]))
    cohort = validate_cohort(Cohort([subject], cohort_of([subject]).clinical, "brats2015"))
    settings = small_feature_settings(sequences=["flair"], habitats=["NCR", "WT"])
    table = extract_cohort(cohort, settings, tmp_path / "cache", n_jobs=1, progress=False)
    assert table.loc["s0", "NCR_voxels"] == np.count_nonzero(np.isin(seg, [1, 3]))
    assert table.loc["s0", "WT_voxels"] == np.count_nonzero(seg)


def test_float_segmentation_is_rounded_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    subject = write_subject(tmp_path, "s0", n=N)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(subject.seg)))
    noisy = seg.astype(np.float32) * np.float32(1.0000001)  # 4 * 1.0000001 in float32 = 4.0000005
    _write_like(subject.seg, noisy, subject.seg)
    assert sitk.ReadImage(str(subject.seg)).GetPixelID() == sitk.sitkFloat32
    with caplog.at_level(logging.WARNING, logger="radfusion.cohort.validate"):
        validate_cohort(cohort_of([subject]))
    warned = [r.getMessage() for r in caplog.records if "rounded to integer labels" in r.getMessage()]
    assert warned and warned[0].startswith(f"subject s0: segmentation {subject.seg} is stored as floating point")
    assert "4.77e-07" in warned[0]  # the largest deviation
    _, loaded = load_preprocessed(subject, spacing=None, sequences=["flair"])
    assert np.array_equal(sitk.GetArrayFromImage(loaded), seg)  # the habitats see the intended labels
    assert np.issubdtype(sitk.GetArrayViewFromImage(loaded).dtype, np.integer)

    # An integer image, or a float one holding whole numbers, is returned as it is.
    whole = sitk.GetImageFromArray(seg.astype(np.float32))
    assert integer_labels(whole, "s0", "x") is whole

    # An interpolated map is not a label map: refused, naming the subject and the file.
    blurred = seg.astype(np.float32)
    blurred[seg == 2] = 1.6
    _write_like(subject.seg, blurred, subject.seg)
    with pytest.raises(CohortError, match=rf"subject s0: segmentation {subject.seg} holds non-integer labels "
                                          r"\(e\.g\. 1\.6, 0\.4 from a whole number > 0\.001\)"):
        validate_cohort(cohort_of([subject]))


def _as_4d(path: Path, volumes: int) -> None:
    img = sitk.ReadImage(str(path))
    sitk.WriteImage(sitk.JoinSeries([img] * volumes), str(path))


@pytest.mark.parametrize("which", ["flair", "seg"])
def test_4d_files_one_volume_squeezed_several_refused(tmp_path: Path, which: str) -> None:
    subject = write_subject(tmp_path, "s0", n=N)
    path = subject.seg if which == "seg" else subject.images[which]
    _as_4d(path, 1)
    assert len(validate_cohort(cohort_of([subject]))) == 1  # one volume: read as 3D
    _as_4d(path, 3)
    with pytest.raises(CohortError) as err:
        validate_cohort(cohort_of([subject]))
    assert str(err.value).startswith(f"subject s0: {path} is a 4D image with 3 volumes; ")
    assert "geometry mismatch" not in str(err.value)
    if which == "seg":
        with pytest.raises(CohortError, match="4D image with 3 volumes"):
            load_preprocessed(subject, spacing=None, sequences=["flair"])
