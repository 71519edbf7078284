"""The one integrity check of a cohort, run before any work is done, and the checks behind it.

Every error names the subject and the file: unreadable file, missing sequence, image/mask geometry
mismatch (size, spacing, origin, direction beyond a tolerance), labels outside the convention,
non-finite intensities, duplicate subject. The tolerance comes from the config
(``data.cohort.geometry_tolerance``); :func:`validate_cohort` records it on the returned
:class:`~radfusion.cohort.subject.Cohort` so that every later read of the same files
(:func:`radfusion.imaging.preprocess.load_preprocessed`, for radiomics and ROIs) applies the same one.
A subject that passed validation must not fail later on a stricter check.

The single checks (:func:`check_scalar_3d`, :func:`check_geometry`, :func:`check_finite`,
:func:`check_labels`) live here and nowhere else: the preprocessing re-runs them on the images it
reads, with the same messages.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from radfusion.cohort.habitats import allowed_labels
from radfusion.cohort.subject import GEOMETRY_TOLERANCE, SEQUENCES, Cohort, CohortError, Subject, read_image

log = logging.getLogger(__name__)

__all__ = ["GEOMETRY_TOLERANCE", "check_finite", "check_geometry", "check_labels", "check_scalar_3d",
           "geometry_problem", "validate_cohort", "validate_subject", "values_finite"]


def geometry_problem(ref: sitk.Image, img: sitk.Image, tol: float) -> str | None:
    """What differs between the grids of ``ref`` and ``img`` beyond ``tol`` (None if nothing does)."""
    if ref.GetSize() != img.GetSize():
        return f"size {img.GetSize()} != {ref.GetSize()}"
    for name, a, b in (("spacing", ref.GetSpacing(), img.GetSpacing()),
                       ("origin", ref.GetOrigin(), img.GetOrigin()),
                       ("direction", ref.GetDirection(), img.GetDirection())):
        diff = float(np.max(np.abs(np.subtract(a, b))))
        if diff > tol:
            got, want = tuple(round(x, 6) for x in b), tuple(round(x, 6) for x in a)
            return f"{name} {got} != {want} (max difference {diff:.3g} > tolerance {tol})"
    return None


def check_geometry(subject_id: str, path: Path, img: sitk.Image, ref_path: Path, ref: sitk.Image,
                   tolerance: float = GEOMETRY_TOLERANCE) -> None:
    """Raise :class:`CohortError` if ``img`` (read from ``path``) is not on the grid of ``ref``.

    The message names the subject, both files, what differs and by how much, the tolerance, and the fix.
    """
    problem = geometry_problem(ref, img, tolerance)
    if problem:
        raise CohortError(
            f"subject {subject_id}: geometry mismatch between {path} and {ref_path}: {problem}. "
            "Resample the image onto the mask grid (or fix the header) and rerun."
        )


def check_scalar_3d(subject_id: str, path: Path, img: sitk.Image) -> None:
    """Raise :class:`CohortError` unless ``img`` is a 3D image with one value per voxel."""
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise CohortError(f"subject {subject_id}: {path} is not a 3D scalar image (dimension "
                          f"{img.GetDimension()}, {img.GetNumberOfComponentsPerPixel()} components)")


def values_finite(path: str | Path, img: sitk.Image) -> bool:
    """False if the image read from ``path`` holds NaN or infinite values.

    ITK's NIfTI reader silently turns NaN voxels into 0, which would hide corrupt data inside the
    brain, so a floating-point NIfTI file is read again with nibabel to see them. Integer files
    cannot hold NaN (only their header is parsed); a file nibabel cannot read is left to the check
    of the SimpleITK array.
    """
    if not np.all(np.isfinite(sitk.GetArrayViewFromImage(img))):
        return False
    if not str(path).endswith((".nii", ".nii.gz")):
        return True
    try:
        nii = nib.load(str(path))
        if not np.issubdtype(nii.get_data_dtype(), np.floating):
            return True
        return bool(np.all(np.isfinite(np.asanyarray(nii.dataobj))))
    except Exception:  # noqa: BLE001 - readable by ITK but not by nibabel: trust ITK's array
        return True


def check_finite(subject_id: str, path: Path, img: sitk.Image) -> None:
    """Raise :class:`CohortError` if the image read from ``path`` holds NaN or infinite intensities."""
    if not values_finite(path, img):
        raise CohortError(f"subject {subject_id}: {path} contains NaN or infinite intensities; "
                          "fix or re-export the image (radfusion does not guess values)")


def check_labels(subject_id: str, seg_path: Path, seg: np.ndarray, label_convention: str | dict) -> None:
    """Raise :class:`CohortError` if the segmentation array holds labels outside ``label_convention``."""
    allowed = allowed_labels(label_convention)
    bad = sorted(set(np.unique(seg).tolist()) - allowed)
    if bad:
        raise CohortError(f"subject {subject_id}: segmentation {seg_path} has labels {bad} outside the "
                          f"{label_convention} convention {sorted(allowed)}")


def validate_subject(subject: Subject, label_convention: str | dict = "brats2021",
                     tolerance: float = GEOMETRY_TOLERANCE, check_intensities: bool = True) -> None:
    """Check one subject's files; raise :class:`CohortError` naming subject and file on the first problem."""
    sid = subject.subject_id
    missing = [s for s in SEQUENCES if s not in subject.images]
    if missing:
        raise CohortError(f"subject {sid}: missing sequence(s) {missing}")
    ref_path = subject.seg if subject.seg is not None else subject.images[SEQUENCES[0]]
    ref = read_image(ref_path, sid)
    if subject.seg is not None:
        check_labels(sid, subject.seg, sitk.GetArrayViewFromImage(ref), label_convention)
    for seq in SEQUENCES:
        path = subject.images[seq]
        img = read_image(path, sid)
        # The same checks, in the same order, as load_preprocessed: what passes here loads there.
        check_scalar_3d(sid, path, img)
        check_geometry(sid, path, img, ref_path, ref, tolerance)
        if check_intensities:
            check_finite(sid, path, img)


def validate_cohort(cohort: Cohort, tolerance: float = GEOMETRY_TOLERANCE, skip_invalid: bool = False,
                    min_subjects: int = 1) -> Cohort:
    """Validate every subject with ``tolerance``; the returned cohort records it (``geometry_tolerance``).

    With ``skip_invalid`` the failing subjects are logged and dropped (nnU-Net's "reject and
    continue") and the remaining cohort is returned; otherwise the first failure raises.
    """
    ids = cohort.ids
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CohortError(f"duplicate subject_id(s) in cohort: {dup[:5]}")
    kept, failures = [], []
    for s in cohort.subjects:
        try:
            validate_subject(s, cohort.label_convention, tolerance)
            kept.append(s)
        except CohortError as err:
            if not skip_invalid:
                raise
            failures.append(str(err))
            log.error("skipping invalid subject: %s", err)
    if failures:
        log.warning("%d of %d subjects failed validation and were skipped", len(failures), len(ids))
    if len(kept) < min_subjects:
        raise CohortError(f"only {len(kept)} valid subjects; at least {min_subjects} are needed")
    clinical = cohort.clinical.loc[[s.subject_id for s in kept]]
    return Cohort(kept, clinical, cohort.label_convention, cohort.root, geometry_tolerance=tolerance)
