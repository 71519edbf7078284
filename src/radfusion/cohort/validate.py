"""The one integrity check of a cohort, run before any work is done.

Every error names the subject and the file: unreadable file, missing sequence, image/mask geometry
mismatch (size, spacing, origin, direction beyond a tolerance), labels outside the convention,
non-finite intensities, duplicate subject. The tolerance comes from the config
(``data.cohort.geometry_tolerance``) and reaches every later read of the same files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from radfusion.cohort.habitats import allowed_labels
from radfusion.cohort.subject import SEQUENCES, Cohort, CohortError, Subject, read_image

log = logging.getLogger(__name__)

#: Default image/mask geometry tolerance (mm for spacing/origin, unitless for direction cosines).
GEOMETRY_TOLERANCE: float = 1e-3


def geometry_problem(ref: sitk.Image, img: sitk.Image, tol: float) -> str | None:
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


def _all_finite(path: Path, img: sitk.Image) -> bool:
    # ITK's NIfTI reader silently turns NaN voxels into 0, which would hide corrupt data inside
    # the brain; read NIfTI values with nibabel to see them.
    if str(path).endswith((".nii", ".nii.gz")):
        try:
            return bool(np.all(np.isfinite(np.asanyarray(nib.load(str(path)).dataobj))))
        except Exception:  # noqa: BLE001 - unreadable by nibabel but read by ITK: trust ITK
            pass
    return bool(np.all(np.isfinite(sitk.GetArrayViewFromImage(img))))


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
        seg = sitk.GetArrayViewFromImage(ref)
        bad = sorted(set(np.unique(seg).tolist()) - allowed_labels(label_convention))
        if bad:
            raise CohortError(
                f"subject {sid}: segmentation {subject.seg} has labels {bad} outside the "
                f"{label_convention} convention {sorted(allowed_labels(label_convention))}"
            )
    for seq in SEQUENCES:
        path = subject.images[seq]
        img = read_image(path, sid)
        problem = geometry_problem(ref, img, tolerance)
        if problem:
            raise CohortError(
                f"subject {sid}: geometry mismatch between {path} and {ref_path}: {problem}. "
                "Resample the image onto the mask grid (or fix the header) and rerun."
            )
        if check_intensities and not _all_finite(path, img):
            raise CohortError(f"subject {sid}: {path} contains NaN or infinite intensities")


def validate_cohort(cohort: Cohort, tolerance: float = GEOMETRY_TOLERANCE, skip_invalid: bool = False,
                    min_subjects: int = 1) -> Cohort:
    """Validate every subject.

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
    return Cohort(kept, clinical, cohort.label_convention, cohort.root)
