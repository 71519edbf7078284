"""Per-file checks behind cohort validation, each raising a :class:`CohortError` that names the subject,
the file and the fix: complete files (gzip CRC and length, voxel count vs the NIfTI header), 3D scalar
images, geometry against the reference grid (tolerance from the config), finite intensities, a zero
background when "brain = non-zero voxels" is used, brain-mask sanity, and labels (integer, inside the
convention).

:mod:`radfusion.cohort.validate` runs them on every subject before any work; the preprocessing
(:func:`radfusion.imaging.preprocess.load_preprocessed`) re-runs the ones that concern the images it
reads, with the same messages, so nothing that passed validation fails later on a stricter check.
"""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from radfusion.cohort.habitats import allowed_labels
from radfusion.cohort.subject import GEOMETRY_TOLERANCE, CohortError

log = logging.getLogger(__name__)


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
    """Raise :class:`CohortError` unless ``img`` is a 3D image with one value per voxel.

    A 4D file with one volume arrives here as 3D (ITK's NIfTI reader drops trailing axes of length 1);
    one with several volumes is refused as such, before a geometry check would call it a size mismatch.
    """
    if img.GetDimension() == 4 and img.GetNumberOfComponentsPerPixel() == 1:
        raise CohortError(f"subject {subject_id}: {path} is a 4D image with {img.GetSize()[3]} volumes; radfusion "
                          "needs one 3D volume per file: split it (e.g. fslsplit, or nibabel's four_to_three) "
                          "and point the cohort at the volume you mean")
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


def background_problem(arr: np.ndarray) -> str | None:
    """Why ``arr`` does not look skull-stripped with a zero background (None if it does).

    "Brain = non-zero voxels" is right only when the background is exactly 0. Refused: more than half
    of the voxels on the faces of the volume are non-zero (a constant value such as -3.6 after a
    per-volume z-score, or noise of a scan that is not skull-stripped), or non-zero voxels cover more
    than 90 % of the field of view. A skull-stripped brain touches the faces in small patches at most
    (and an ellipsoid fills about half of its bounding box). A non-zero skull inside a zero background
    cannot be told from brain here.
    """
    # Faces only along axes long enough to have an inside (a 1-slice image is all face).
    faces = [np.moveaxis(arr, ax, 0)[[0, -1]].ravel() for ax in range(arr.ndim) if arr.shape[ax] > 2]
    if faces:
        border = np.concatenate(faces)
        if np.count_nonzero(border) > 0.5 * border.size:
            values, counts = np.unique(border, return_counts=True)
            if counts.max() > 0.5 * border.size:
                return (f"background value {float(values[counts.argmax()]):.3g} covers "
                        f"{counts.max() / border.size:.0%} of the border")
            return f"{np.count_nonzero(border) / border.size:.0%} of the border voxels are non-zero and vary"
    inside = np.count_nonzero(arr) / max(arr.size, 1)
    if inside > 0.9:
        return f"non-zero voxels cover {inside:.0%} of the field of view"
    return None


def check_background(subject_id: str, path: Path, img: sitk.Image) -> None:
    """Raise :class:`CohortError` if the image read from ``path`` has a background that is not zero
    (:func:`background_problem`): with ``brain_mask=nonzero`` its brain would be the whole field of view."""
    problem = background_problem(sitk.GetArrayViewFromImage(img))
    if problem:
        raise CohortError(f"subject {subject_id}: {path}: images look not skull-stripped or already normalised "
                          f"({problem}): give brain masks (manifest column brainmask / <id>_brainmask.nii.gz) "
                          "or set data.cohort.brain_mask=otsu")


def check_brainmask(subject_id: str, path: Path, brain: np.ndarray) -> None:
    """Raise :class:`CohortError` if the brain mask read from ``path`` (``brain``: its non-zero voxels) is empty."""
    if not brain.any():
        raise CohortError(f"subject {subject_id}: brain mask {path} is empty (no non-zero voxel); "
                          "fix the file or set data.cohort.brain_mask=otsu")


def check_labels(subject_id: str, seg_path: Path, seg: np.ndarray, label_convention: str | dict) -> None:
    """Raise :class:`CohortError` if the segmentation array holds labels outside ``label_convention``."""
    allowed = allowed_labels(label_convention)
    bad = sorted(set(np.unique(seg).tolist()) - allowed)
    if bad:
        raise CohortError(f"subject {subject_id}: segmentation {seg_path} has labels {bad} outside the "
                          f"{label_convention} convention {sorted(allowed)}")


def _nifti_data_end(head: bytes) -> tuple[int, str] | None:
    """``(offset + voxel bytes, description)`` the NIfTI-1/2 header at the start of ``head`` promises;
    None when ``head`` is not a NIfTI header (then only the gzip stream is checked).

    Raises:
        ValueError: the header is a NIfTI header but unusable (no datatype or shape).
    """
    for size, header_class in ((348, nib.Nifti1Header), (540, nib.Nifti2Header)):
        if len(head) >= size and size in (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")):
            hdr = header_class.from_fileobj(io.BytesIO(head[:size]), check=False)
            shape = hdr.get_data_shape()
            itemsize = hdr.get_data_dtype().itemsize
            # A single-file NIfTI holds its data after the header and the 4 extension-flag bytes at least.
            offset = max(int(hdr.get_data_offset()), size + 4)
            n_bytes = int(np.prod(shape, dtype=np.int64)) * itemsize
            return offset + n_bytes, f"{'x'.join(map(str, shape))} voxels of {itemsize} bytes after byte {offset}"
    return None


def check_file_intact(subject_id: str, path: str | Path, chunk_size: int = 1 << 20) -> None:
    """Raise :class:`CohortError` if ``path`` is truncated or corrupt; read it completely to know.

    SimpleITK reads a ``.nii.gz`` cut short without complaint and fills the missing voxels with
    zeros; the features of such a file are silently wrong. So before anything is extracted every
    image and mask is read once, as a stream through one reused buffer (never held in memory):

    - a gzip file (a ``.gz`` name and the gzip magic bytes) is decompressed to its end, where Python's
      gzip checks the CRC-32 and the length of the data (a cut file or a flipped bit raise);
    - a NIfTI file (``.nii``/``.nii.gz``) must hold, after the header's ``vox_offset``, the bytes of
      every voxel its header declares (shape x datatype size).

    Other formats are left to their reader.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".gz", ".nii")) or not path.is_file():
        return  # a missing file is read_image's message
    is_nifti = name.endswith((".nii", ".nii.gz"))
    with open(path, "rb") as f:
        # By content, as ITK's reader does: an uncompressed file named .nii.gz is readable, not corrupt.
        is_gzip = f.read(2) == b"\x1f\x8b"

    def corrupt(what: str) -> CohortError:
        return CohortError(f"subject {subject_id}: {path} is truncated or corrupt ({what}): "
                           "re-export or re-download it")

    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    total, head = 0, b""
    try:
        with (gzip.open(path, "rb") if is_gzip else open(path, "rb")) as stream:
            while n := stream.readinto(view):
                if len(head) < 540:
                    head += bytes(view[:min(n, 540 - len(head))])
                total += n
    except (EOFError, OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise corrupt(f"{'gzip stream' if is_gzip else 'read'}: {err}") from None
    if not is_nifti:
        return
    try:
        promised = _nifti_data_end(head)
    except Exception as err:  # noqa: BLE001 - nibabel raises several kinds on a damaged header
        raise corrupt(f"unreadable NIfTI header: {err}") from None
    if promised is None:
        return  # not a NIfTI file at all: SimpleITK refuses it with its own message ("cannot read ...")
    end, described = promised
    if total < end:
        raise corrupt(f"the header declares {described}, {end} bytes in all, but the "
                      f"{'decompressed ' if is_gzip else ''}file has {total}")


#: How far from a whole number a label of a floating-point segmentation may be and still be rounded.
LABEL_ROUNDING_TOLERANCE: float = 1e-3


def integer_labels(seg: sitk.Image, subject_id: str, path: str | Path) -> sitk.Image:
    """The segmentation ``seg`` (read from ``path``) as a 3D image of whole-number labels.

    Segmentations exported as float (e.g. after a resampling that kept the pixel type) hold values
    like 1.0000001: these are rounded to the nearest integer with a warning naming the subject, the
    file and the largest deviation, and the image gets an integer pixel type. An integer image, or a
    float one that already holds whole numbers, is returned unchanged. Values further than
    :data:`LABEL_ROUNDING_TOLERANCE` from a whole number (an interpolated or probability map) are refused.
    """
    check_scalar_3d(subject_id, Path(path), seg)
    if seg.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return seg
    arr = sitk.GetArrayViewFromImage(seg)
    if not np.all(np.isfinite(arr)):
        raise CohortError(f"subject {subject_id}: segmentation {path} contains NaN or infinite values; "
                          "re-export it as an integer label map")
    rounded = np.rint(arr)
    deviation = float(np.max(np.abs(arr - rounded))) if arr.size else 0.0
    if deviation > LABEL_ROUNDING_TOLERANCE:
        worst = float(arr.flat[int(np.argmax(np.abs(arr - rounded)))])
        raise CohortError(f"subject {subject_id}: segmentation {path} holds non-integer labels (e.g. {worst:.6g}, "
                          f"{deviation:.3g} from a whole number > {LABEL_ROUNDING_TOLERANCE}): is it an interpolated "
                          "or probability map? Export the label map with integer values (nearest-neighbour "
                          "resampling)")
    if deviation == 0:
        return seg
    log.warning("subject %s: segmentation %s is stored as floating point with labels up to %.3g from whole "
                "numbers; rounded to integer labels", subject_id, path, deviation)
    low, high = (float(rounded.min()), float(rounded.max())) if arr.size else (0.0, 0.0)
    dtype = np.uint8 if low >= 0 and high <= 255 else np.int32
    out = sitk.GetImageFromArray(rounded.astype(dtype))
    out.CopyInformation(seg)
    return out
