"""Image preprocessing shared by the radiomics and the deep branch.

Every subject goes through the same steps, in this order:

1. read each sequence and the segmentation once (errors name subject and file);
2. check that every sequence is a 3D scalar image on the segmentation's grid (size, spacing, origin,
   direction, within the cohort's tolerance) with finite values: the checks of
   :mod:`radfusion.cohort.validate`, with the same messages;
3. z-score each sequence with the mean/SD of its *brain* voxels on the native grid, times ``scale``;
   the background becomes 0. Which voxels are brain is the cohort's ``brain_mask`` choice
   (:func:`radfusion.cohort.subject.brain_method`): ``nonzero`` (the default for subjects without a
   brain mask file; BraTS images are skull-stripped, so brain = non-zero voxels of each sequence),
   ``file`` (the subject's brain mask, the same for every sequence) or ``otsu`` (:func:`otsu_brain` of
   all the subject's sequences, the same for every sequence);
4. resample to isotropic ``spacing`` mm (B-spline for images, nearest neighbour for labels).

Normalising before resampling keeps the statistics free of interpolation artefacts (B-spline
ringing at the skull-stripping edge would otherwise leak into the "brain" mask).

Array conventions: numpy arrays from SimpleITK are indexed ``(z, y, x)``; :func:`bounding_box`
returns slices in that order and :func:`crop` translates them to SimpleITK's ``(x, y, z)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from radfusion.cache import file_sha1
from radfusion.cohort.integrity import check_brainmask, check_finite, check_geometry, check_scalar_3d, integer_labels
from radfusion.cohort.subject import (
    GEOMETRY_TOLERANCE,
    SEQUENCES,
    CohortError,
    Subject,
    brain_method,
    read_image,
)

#: Histogram bins of the Otsu threshold (:func:`otsu_brain`).
OTSU_BINS = 256


def _same_spacing(img: sitk.Image, spacing: float) -> bool:
    return bool(np.allclose(img.GetSpacing(), spacing, rtol=0.0, atol=1e-6))


def resample_to_spacing(img: sitk.Image, spacing: float | None, is_label: bool) -> sitk.Image:
    """Resample ``img`` to isotropic voxels of ``spacing`` mm.

    The first voxel centre (origin) and the direction are kept; the size is chosen so that the
    physical extent is preserved (rounded to whole voxels). ``spacing=None`` or an image already at
    that spacing is returned unchanged.

    Args:
        img: a 3D image.
        spacing: target voxel size in mm, or None to keep the native grid.
        is_label: nearest-neighbour interpolation (labels) instead of 3rd-order B-spline (intensities).
    """
    if spacing is None or _same_spacing(img, spacing):
        return img
    if spacing <= 0:
        raise ValueError(f"spacing must be positive (mm), got {spacing}")
    old_spacing = np.asarray(img.GetSpacing(), dtype=float)
    old_size = np.asarray(img.GetSize(), dtype=float)
    new_size = [max(1, int(round(n))) for n in old_size * old_spacing / spacing]
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkBSpline
    return sitk.Resample(
        img, new_size, sitk.Transform(), interpolator, img.GetOrigin(),
        (float(spacing),) * img.GetDimension(), img.GetDirection(), 0, img.GetPixelID(),
    )


def zscore_in_brain(img: sitk.Image, brain: np.ndarray | None = None, scale: float = 1.0) -> sitk.Image:
    """Z-score intensities with the mean and SD of the brain voxels; background set to 0.

    Args:
        img: a (skull-stripped) MR image.
        brain: boolean array in numpy ``(z, y, x)`` order; default ``image != 0``.
        scale: multiplier applied after z-scoring (100 puts 1 SD at 100 grey levels, so PyRadiomics'
            ``binWidth: 25`` means bins of a quarter SD).

    Returns:
        A float32 image with the geometry of ``img``.
    """
    arr = sitk.GetArrayFromImage(img).astype(np.float64)
    if brain is None:
        brain = arr != 0
    elif brain.shape != arr.shape:
        raise ValueError(f"brain mask shape {brain.shape} != image shape {arr.shape}")
    out = np.zeros(arr.shape, dtype=np.float32)
    if brain.any():
        values = arr[brain]
        sd = float(values.std())
        # A constant brain (sd = 0) would divide by zero; centring alone is the honest answer.
        out[brain] = ((values - values.mean()) / (sd if sd > 0 else 1.0) * scale).astype(np.float32)
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(img)
    return result


def otsu_brain(images: Sequence[sitk.Image]) -> np.ndarray:
    """A head mask from intensities alone, for images whose background is not zero.

    Exactly: (1) the voxel-wise mean of ``images`` (all on one grid, float64); (2) Otsu's threshold
    of that mean (ITK's ``OtsuThresholdImageFilter``, :data:`OTSU_BINS` bins), foreground = mean above
    it; (3) the largest 6-connected foreground component; (4) its 3D holes filled (ITK's
    ``BinaryFillholeImageFilter``: background not connected to the image border, e.g. dark ventricles).

    It separates the head from a constant or noisy background (e.g. a z-scored image whose background
    is -3.6); it does not skull-strip: in a raw scan skull and scalp are foreground too. Give brain masks
    from a skull-stripping tool for those.

    Returns:
        Boolean array in numpy ``(z, y, x)`` order.
    """
    mean = np.mean([sitk.GetArrayViewFromImage(img).astype(np.float64) for img in images], axis=0)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetNumberOfHistogramBins(OTSU_BINS)
    otsu.Execute(sitk.GetImageFromArray(mean))
    foreground = sitk.GetImageFromArray((mean > otsu.GetThreshold()).astype(np.uint8))
    components = sitk.RelabelComponent(sitk.ConnectedComponent(foreground, False))  # 1 = the largest
    largest = sitk.Equal(components, 1)
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(largest, False, 1)).astype(bool)


def brain_key(subject: Subject, brain_mask: str = "auto", memo: dict | None = None) -> str | None:
    """What the subject's brain adds to its cache keys: None for ``nonzero`` (the default, so existing
    keys keep their values), else the method plus the checksum of what defines the brain: the brain
    mask file (``file``) or every sequence of the subject (``otsu``: the mask, and so each sequence's
    values, depends on all of them). ``memo`` (path -> sha1) is shared with the item checksums."""
    method = brain_method(subject, brain_mask)
    if method == "nonzero":
        return None

    def sha1(path: Path) -> str:
        if memo is None:
            return file_sha1(path)
        if str(path) not in memo:
            memo[str(path)] = file_sha1(path)
        return memo[str(path)]

    if method == "file":
        return f"file:{sha1(subject.brainmask)}"
    return "otsu:" + ",".join(sha1(subject.images[s]) for s in SEQUENCES if s in subject.images)


def _read_checked(subject: Subject, path: Path, ref: sitk.Image | None, ref_path: Path | None,
                  tolerance: float) -> sitk.Image:
    img = read_image(path, subject.subject_id)
    check_scalar_3d(subject.subject_id, path, img)
    if ref is not None:
        check_geometry(subject.subject_id, path, img, ref_path, ref, tolerance)
        # Headers equal within tolerance but not bit-identical would make later sitk filters
        # (and PyRadiomics' checkMask) complain; one grid for all removes that class of error.
        img.CopyInformation(ref)
    return img


def subject_brain(subject: Subject, method: str, images: dict[str, sitk.Image], ref: sitk.Image,
                  ref_path: Path, tolerance: float = GEOMETRY_TOLERANCE) -> np.ndarray | None:
    """The brain shared by every sequence (numpy order) for ``file`` / ``otsu``; None for ``nonzero``
    (each sequence's own non-zero voxels). ``images`` are the sequences already read (on ``ref``'s
    grid); ``otsu`` reads the subject's other sequences too, so each sequence gets the same brain."""
    sid = subject.subject_id
    if method == "nonzero":
        return None
    if method == "file":
        mask = _read_checked(subject, subject.brainmask, ref, ref_path, tolerance)
        brain = sitk.GetArrayFromImage(mask) != 0
        check_brainmask(sid, subject.brainmask, brain)
        return brain
    every = [images[s] if s in images else _read_checked(subject, subject.images[s], ref, ref_path, tolerance)
             for s in SEQUENCES if s in subject.images]
    brain = otsu_brain(every)
    if not brain.any():
        files = [str(p) for p in subject.images.values()]
        raise CohortError(f"subject {sid}: data.cohort.brain_mask=otsu found no brain in {files}; "
                          "give brain masks (manifest column brainmask / <id>_brainmask.nii.gz)")
    return brain


def load_preprocessed(
    subject: Subject,
    spacing: float | None = 1.0,
    normalize: str = "zscore",
    scale: float = 100.0,
    sequences: Sequence[str] = SEQUENCES,
    tolerance: float = GEOMETRY_TOLERANCE,
    brain_mask: str = "auto",
) -> tuple[dict[str, sitk.Image], sitk.Image | None]:
    """Read, check, normalise and resample one subject.

    Each file is read exactly once. Sequences and segmentation must share one grid (within
    ``tolerance``); otherwise a :class:`CohortError` names the subject and both files.

    Args:
        subject: the subject to load.
        spacing: target isotropic voxel size in mm (None keeps the native grid).
        normalize: ``"zscore"`` (in-brain z-score × ``scale``) or ``"none"``.
        scale: multiplier after z-scoring (ignored for ``"none"``).
        sequences: which sequences to load, in this order.
        tolerance: image/mask geometry tolerance; pass the validated cohort's ``geometry_tolerance`` so
            that a subject accepted by validation is accepted here. It decides only whether a subject
            loads: the images are put on the mask grid, so the values do not depend on it.
        brain_mask: the cohort's ``brain_mask`` choice (``Cohort.brain_mask``): which voxels the z-score
            uses (see the module doc); the result is 0 outside them. Unused with ``normalize="none"``.

    Returns:
        ``(images, seg)``: float32 images per sequence (``"none"`` keeps the file's pixel type) and
        the resampled label image (None if the subject has no segmentation).
    """
    if normalize not in ("zscore", "none"):
        raise ValueError(f"normalize must be 'zscore' or 'none', got {normalize!r}")
    sid = subject.subject_id
    missing = [s for s in sequences if s not in subject.images]
    if missing:
        raise CohortError(f"subject {sid}: missing sequence(s) {missing}")

    method = brain_method(subject, brain_mask) if normalize == "zscore" else "nonzero"

    # A float label map (1.0000001) is rounded here as in validation; a 4D one is refused.
    seg = integer_labels(read_image(subject.seg, sid), sid, subject.seg) if subject.seg is not None else None
    ref, ref_path = seg, subject.seg
    raw: dict[str, sitk.Image] = {}
    for seq in sequences:
        path = subject.images[seq]
        img = _read_checked(subject, path, ref, ref_path, tolerance)
        if ref is None:
            ref, ref_path = img, path
        check_finite(sid, path, img)
        raw[seq] = img
    shared = subject_brain(subject, method, raw, ref, ref_path, tolerance) if raw else None
    images: dict[str, sitk.Image] = {}
    for seq, img in raw.items():
        if normalize == "zscore":
            brain = sitk.GetArrayViewFromImage(img) != 0 if shared is None else shared
            img = zscore_in_brain(img, brain, scale)
            img = resample_to_spacing(img, spacing, is_label=False)
            if spacing is not None:
                # Restore an exactly-zero background after B-spline ringing at the brain edge.
                brain_img = sitk.GetImageFromArray(brain.astype(np.uint8))
                brain_img.CopyInformation(ref)
                img = sitk.Mask(img, resample_to_spacing(brain_img, spacing, is_label=True))
        else:
            img = resample_to_spacing(img, spacing, is_label=False)
        images[seq] = img

    if seg is not None:
        seg = resample_to_spacing(seg, spacing, is_label=True)
    return images, seg


def bounding_box(mask: np.ndarray, padding: int | Sequence[int] = 0) -> tuple[slice, ...]:
    """Tight bounding box of the non-zero voxels of ``mask``, grown by ``padding`` voxels per side.

    Args:
        mask: array of any dimension (numpy order, e.g. ``(z, y, x)``).
        padding: voxels added on every side, clipped to the array; one number for all axes or one
            per axis (numpy order).

    Returns:
        One slice per axis, in the array's axis order.

    Raises:
        ValueError: if ``mask`` has no non-zero voxel.
    """
    pads = [int(padding)] * mask.ndim if np.isscalar(padding) else [int(p) for p in padding]
    if len(pads) != mask.ndim or min(pads) < 0:
        raise ValueError(f"padding must be >= 0 voxels, one value or one per axis, got {padding}")
    nonzero = np.nonzero(mask)
    if len(nonzero[0]) == 0:
        raise ValueError("bounding_box of an empty mask")
    return tuple(
        slice(max(int(idx.min()) - pad, 0), min(int(idx.max()) + 1 + pad, n))
        for idx, n, pad in zip(nonzero, mask.shape, pads, strict=True)
    )


def crop(img: sitk.Image, box: Sequence[slice]) -> sitk.Image:
    """Crop ``img`` to ``box`` (slices in numpy axis order, as from :func:`bounding_box`).

    SimpleITK's slicing moves the origin to the first kept voxel, so physical positions (and
    hence any later resampling or overlay) stay correct.
    """
    if len(box) != img.GetDimension():
        raise ValueError(f"box has {len(box)} axes, image has {img.GetDimension()}")
    # numpy (z, y, x) -> SimpleITK (x, y, z)
    return img[tuple(reversed(tuple(box)))]
