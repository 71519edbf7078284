"""Brain masks: a background that is not zero is refused, a brain mask file or Otsu fixes it.

"Brain = non-zero voxels" (the z-score's brain for skull-stripped images) silently becomes the whole
field of view when the images are not skull-stripped or were already normalised. The corrupt copies
here are made from a 32³ synthetic cohort: its images are skull-stripped (background exactly 0), so
the true brain is known, and the copies differ from the originals only outside it (and, for one, by
an affine map of the intensities inside it, which a z-score in the true brain undoes).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from helpers.radiomics import small_feature_settings
from radfusion.cohort.readers import cohort_from_config, read_brats2021, read_brats2023, read_manifest
from radfusion.cohort.subject import SEQUENCES, CohortError
from radfusion.cohort.validate import validate_cohort
from radfusion.data.prepare import read_validated_cohort
from radfusion.imaging.preprocess import brain_key, load_preprocessed, otsu_brain
from radfusion.imaging.roi import ROISettings, build_roi_cache, roi_cache_path
from radfusion.radiomics.extract import extract_cohort
from radfusion.synthetic.generator import generate_cohort

SID = "SYN_000"
FIX = (r"give brain masks \(manifest column brainmask / <id>_brainmask\.nii\.gz\) or set "
       r"data\.cohort\.brain_mask=otsu")


def _write(arr: np.ndarray, like: sitk.Image, path: Path) -> None:
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(like)
    sitk.WriteImage(img, str(path))


def _write_case(root: Path, original, arrays: dict[str, np.ndarray], brain: np.ndarray | None) -> Path:
    """``original``'s subject in the BraTS 2021 layout under ``root`` with ``arrays`` as its sequences
    (and ``brain`` as ``<id>_brainmask.nii.gz`` when given); returns ``root``."""
    case = root / original.subject_id
    case.mkdir(parents=True)
    like = sitk.ReadImage(str(original.seg))
    for seq, arr in arrays.items():
        _write(arr, like, case / f"{original.subject_id}_{seq}.nii.gz")
    shutil.copy(original.seg, case / f"{original.subject_id}_seg.nii.gz")
    if brain is not None:
        _write(brain.astype(np.uint8), like, case / f"{original.subject_id}_brainmask.nii.gz")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """The original (skull-stripped) subject, its true brain and corrupt copies, with and without masks:
    ``neg``: inside the brain each sequence z-scored, outside -3.6 (an already normalised export);
    ``noisy``: the original intensities in the brain, |N(0, 20)| noise outside (a scan not skull-stripped)."""
    root = tmp_path_factory.mktemp("brain")
    manifest = generate_cohort(root / "synthetic", n_subjects=1, shape=(32, 32, 32), progress=False)
    original = validate_cohort(read_manifest(manifest))  # the synthetic cohort passes the background check
    subject = original.subjects[0]
    arrays = {s: sitk.GetArrayFromImage(sitk.ReadImage(str(subject.images[s]))) for s in SEQUENCES}
    brain = arrays["t1"] != 0
    assert all(((a != 0) == brain).all() for a in arrays.values())  # one brain for every sequence
    rng = np.random.default_rng(0)
    neg = {s: np.where(brain, (a - a[brain].mean()) / a[brain].std(), -3.6).astype(np.float32)
           for s, a in arrays.items()}
    noisy = {s: np.where(brain, a, np.abs(rng.normal(0.0, 20.0, a.shape)) + 1.0).astype(np.float32)
             for s, a in arrays.items()}
    out = {"original": original, "brain": brain}
    for name, corrupt in (("neg", neg), ("noisy", noisy)):
        out[name] = _write_case(root / name, subject, corrupt, None)
        out[f"{name}_masked"] = _write_case(root / f"{name}_masked", subject, corrupt, brain)
    return out


def _first_line(err: pytest.ExceptionInfo) -> str:
    return str(err.value).splitlines()[0]


def test_nonzero_refuses_a_background_that_is_not_zero(data) -> None:
    """Without a brain mask (``auto`` = ``nonzero``), and with ``nonzero`` chosen explicitly even where a
    mask file exists (an explicit choice wins), validation refuses the subject before any extraction,
    naming subject, file, what it saw and the fix."""
    for folder in ("neg", "neg_masked"):
        for choice in ("auto", "nonzero") if folder == "neg" else ("nonzero",):
            with pytest.raises(CohortError) as err:
                validate_cohort(read_brats2021(data[folder]), brain_mask=choice)
            assert re.fullmatch(rf"subject {SID}: \S*{SID}_t1\.nii\.gz: images look not skull-stripped or already "
                                rf"normalised \(background value -3\.6 covers 100% of the border\): {FIX}",
                                _first_line(err)), _first_line(err)
    with pytest.raises(CohortError, match=rf"subject {SID}: .*{SID}_t1\.nii\.gz: images look not skull-stripped "
                                          rf".*100% of the border voxels are non-zero and vary\): {FIX}"):
        validate_cohort(read_brats2021(data["noisy"]))
    # Otsu needs no zero background, so it is not checked for one (the original, with its zero
    # background, passed in the fixture).
    assert validate_cohort(read_brats2021(data["neg"]), brain_mask="otsu").brain_mask == "otsu"


def test_brain_mask_file_gives_the_values_of_the_skull_stripped_original(data, tmp_path: Path) -> None:
    """With the true brain as ``<id>_brainmask.nii.gz`` (used by default: ``auto``), the z-scored images,
    the radiomics and the ROI tensors of both corrupt copies equal those of the skull-stripped original."""
    original = data["original"]
    ref_images, _ = load_preprocessed(original.subjects[0], sequences=("t1ce", "flair"))
    settings = small_feature_settings(sequences=["t1ce", "flair"], habitats=["ET", "ED", "WT"])
    ref = extract_cohort(original, settings, tmp_path / "ref", progress=False)
    roi = ROISettings(size=16, min_extent_mm=8.0, sequences=("t1ce", "flair"))
    ref_rois, _ = build_roi_cache(original, roi, tmp_path / "ref", progress=False)
    for name in ("neg_masked", "noisy_masked"):
        cohort = validate_cohort(read_brats2021(data[name]))
        subject = cohort.subjects[0]
        assert cohort.brain_mask == "auto" and subject.brainmask is not None
        images, _ = load_preprocessed(subject, sequences=("t1ce", "flair"), brain_mask=cohort.brain_mask)
        for seq, img in images.items():  # z x 100: 1e-3 is 1e-5 SD
            np.testing.assert_allclose(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ref_images[seq]),
                                       atol=1e-3, rtol=0)
        table = extract_cohort(cohort, settings, tmp_path / name, progress=False)
        assert table.attrs["failures"] == {} and table.shape == ref.shape
        first_order = [c for c in ref.columns if "_firstorder_" in c]
        assert len(first_order) > 50
        pd.testing.assert_frame_equal(table[first_order], ref[first_order], rtol=1e-6, atol=1e-6)
        pd.testing.assert_frame_equal(table, ref, rtol=1e-5, atol=1e-6)
        rois, failures = build_roi_cache(cohort, roi, tmp_path / name, progress=False)
        assert failures == {}
        np.testing.assert_allclose(np.load(rois[SID]).astype(np.float32), np.load(ref_rois[SID]).astype(np.float32),
                                   atol=2e-3)
    # Without the mask the same files would have been z-scored over the whole field of view.
    nonzero, _ = load_preprocessed(read_brats2021(data["neg"]).subjects[0], sequences=("flair",))
    assert np.count_nonzero(sitk.GetArrayFromImage(nonzero["flair"])) > 0.9 * data["brain"].size


def test_otsu_finds_the_brain(data) -> None:
    """``otsu`` (threshold of the mean image, largest component, holes filled) recovers the true brain of
    both corrupt copies (Dice > 0.9), and the z-score then uses it: zero outside, centred inside."""
    truth = data["brain"]
    for name in ("neg", "noisy"):
        subject = validate_cohort(read_brats2021(data[name]), brain_mask="otsu").subjects[0]
        brain = otsu_brain([sitk.ReadImage(str(subject.images[s])) for s in SEQUENCES])
        dice = 2 * np.count_nonzero(brain & truth) / (np.count_nonzero(brain) + np.count_nonzero(truth))
        assert dice > 0.9, (name, dice)
        images, _ = load_preprocessed(subject, sequences=("flair",), brain_mask="otsu")
        arr = sitk.GetArrayFromImage(images["flair"])
        assert not arr[~brain].any() and abs(arr[brain].mean()) < 1e-3 and arr[brain].std() == pytest.approx(100, 1e-3)


def test_brain_mask_enters_the_cache_keys_only_when_not_the_default(data, tmp_path: Path) -> None:
    """A cohort without masks (``auto`` or ``nonzero``) adds nothing to any key (existing caches stay
    valid); a mask file adds its content, Otsu every sequence's: an edited mask recomputes the items."""
    plain = data["original"].subjects[0]
    assert brain_key(plain, "auto") is None and brain_key(plain, "nonzero") is None
    roi = ROISettings(size=16, min_extent_mm=8.0, sequences=("t1ce", "flair"))
    assert roi_cache_path(plain, roi, tmp_path) == roi_cache_path(plain, roi, tmp_path, "nonzero")
    assert brain_key(plain, "otsu").startswith("otsu:")

    folder = tmp_path / "masked"
    shutil.copytree(data["neg_masked"], folder)
    cohort = validate_cohort(read_brats2021(folder))
    subject = cohort.subjects[0]
    key = brain_key(subject, "auto")
    assert key.startswith("file:") and brain_key(subject, "file") == key != brain_key(subject, "otsu")
    settings = small_feature_settings(sequences=["flair"], habitats=["WT"])
    first = extract_cohort(cohort, settings, tmp_path / "cache", progress=False)
    path = roi_cache_path(subject, roi, tmp_path)

    brain = data["brain"].copy()
    brain[:, :, :17] = False  # half the brain: another z-score
    _write(brain.astype(np.uint8), sitk.ReadImage(str(subject.seg)), subject.brainmask)
    assert brain_key(subject, "auto") != key and roi_cache_path(subject, roi, tmp_path) != path
    second = extract_cohort(cohort, settings, tmp_path / "cache", progress=False)
    status = pd.read_csv(tmp_path / "cache" / settings.cache_key() / "diagnostics.csv")["status"]
    assert status.tolist() == ["computed"]
    assert first["WT_flair_original_firstorder_Mean"].iloc[0] != second["WT_flair_original_firstorder_Mean"].iloc[0]


def test_brain_mask_problems_name_subject_file_and_fix(data, tmp_path: Path) -> None:
    """``file`` without a mask, an empty mask, a mask on another grid and an unknown choice are refused."""
    with pytest.raises(CohortError) as err:
        validate_cohort(read_brats2021(data["neg"]), brain_mask="file")
    assert _first_line(err) == (f"subject {SID}: data.cohort.brain_mask=file but the subject has no brain mask: give "
                                "one (manifest column brainmask / <id>_brainmask.nii.gz) or set "
                                "data.cohort.brain_mask=otsu")
    with pytest.raises(CohortError, match=r"brain_mask must be one of \['auto', 'nonzero', 'otsu', 'file'\], got 'sk"):
        validate_cohort(read_brats2021(data["neg_masked"]), brain_mask="skull")

    folder = tmp_path / "bad"
    shutil.copytree(data["neg_masked"], folder)
    mask = folder / SID / f"{SID}_brainmask.nii.gz"
    like = sitk.ReadImage(str(mask))
    _write(np.zeros(data["brain"].shape, np.uint8), like, mask)
    with pytest.raises(CohortError, match=rf"subject {SID}: brain mask \S*{SID}_brainmask\.nii\.gz is empty"):
        validate_cohort(read_brats2021(folder))
    small = sitk.GetImageFromArray(np.ones((30, 32, 32), np.uint8))
    sitk.WriteImage(small, str(mask))
    with pytest.raises(CohortError, match=rf"subject {SID}: geometry mismatch between \S*{SID}_brainmask\.nii\.gz"):
        validate_cohort(read_brats2021(folder))


def test_readers_and_config_carry_the_brain_mask(data, tmp_path: Path) -> None:
    """Manifest column ``brainmask`` (an empty cell: none), BraTS 2023 ``<id>-brainmask.nii.gz``, and
    ``data.cohort.brain_mask`` reaching the validated cohort."""
    case = data["neg_masked"] / SID
    rows = [{"subject_id": sid, "site": "A", **{s: str(case / f"{SID}_{s}.nii.gz") for s in (*SEQUENCES, "seg")},
             "brainmask": mask} for sid, mask in ((SID, str(case / f"{SID}_brainmask.nii.gz")), ("other", ""))]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    cohort = read_manifest(tmp_path / "manifest.csv")
    assert cohort.subjects[0].brainmask == (case / f"{SID}_brainmask.nii.gz").resolve()
    assert cohort.subjects[1].brainmask is None

    b23 = tmp_path / "brats2023" / SID
    b23.mkdir(parents=True)
    for name, suffix in (("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f"), ("seg", "seg"),
                         ("brainmask", "brainmask")):
        shutil.copy(case / f"{SID}_{name}.nii.gz", b23 / f"{SID}-{suffix}.nii.gz")
    assert read_brats2023(b23.parent).subjects[0].brainmask == (b23 / f"{SID}-brainmask.nii.gz").resolve()

    cfg = {"source": "brats2021", "path": str(data["neg"]), "clinical": None, "brain_mask": "otsu"}
    assert read_validated_cohort(cfg, progress=False, min_subjects=1).brain_mask == "otsu"
    # Read without validation (as scripts/extract_features.py does), the cohort still carries the choice.
    assert cohort_from_config(cfg).brain_mask == "otsu"
    assert validate_cohort(cohort_from_config(cfg)).brain_mask == "otsu"  # None: the cohort's own
