"""One PyRadiomics run-length (GLRLM) matrix call for several disjoint habitats, split exactly.

PyRadiomics' C ``calculate_glrlm`` walks every line of the ROI's bounding box in 13 directions, so
its cost follows the box, not the voxels: the hollow peritumoral ring (100k voxels in a 680k-voxel
box on a BraTS-sized subject) costs more than the whole tumour, and the ring's box already holds
ET, NCR and edema, each walked again in its own box. Those four habitats are disjoint. This module
bins each habitat as PyRadiomics does, gives each its own range of grey levels (habitat *k*'s
levels shifted by the levels of the habitats before it), and makes **one** C call on the union of
their boxes. A run never crosses from one habitat to another (the grey level jumps), so the rows of
habitat *k* are exactly the matrix PyRadiomics' own call on habitat *k* returns, with two
bookkeeping steps it also takes:

- run lengths are cut to the habitat's own box (PyRadiomics sizes the matrix by the box's longest
  side; longer runs cannot occur in it);
- PyRadiomics zeroes an angle's run-length-1 column when no line in that direction holds two ROI
  voxels ("the segmentation is 2D for this angle"); that is decided here per habitat, with the same
  rule, since the union may hold two voxels on a line where the habitat alone does not.

Only habitats whose boxes are 3D (every side > 1 voxel; PyRadiomics' directions depend on that)
are combined; segment-based, no ``force2D``. :class:`SharedGLRLM` is PyRadiomics' GLRLM class taking
its matrix from :func:`shared_run_lengths`; the rest of its processing (empty grey levels and angles
removed, ``weightingNorm``) is PyRadiomics' own, restated. ``tests/test_radiomics_runlength.py``
checks the split matrices against PyRadiomics' C call per habitat, count for count.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from radiomics import cMatrices, imageoperations

__all__ = ["disjoint_group", "empty_grey_levels", "process_run_lengths", "shared_run_lengths"]


def disjoint_group(masks: dict[str, np.ndarray]) -> list[str]:
    """The largest-box-first greedy set of pairwise disjoint habitats (same-grid boolean masks)."""
    def box_size(mask: np.ndarray) -> int:
        idx = np.nonzero(mask)
        return int(np.prod([i.max() - i.min() + 1 for i in idx])) if idx[0].size else 0

    chosen: list[str] = []
    taken = None
    for hk in sorted(masks, key=lambda h: -box_size(masks[h])):
        mask = masks[hk]
        if not mask.any():
            continue
        if taken is None:
            chosen, taken = [hk], mask.copy()
        elif not (taken & mask).any():
            chosen.append(hk)
            taken |= mask
    return chosen


def _has_two_on_a_line(mask: np.ndarray, angle: np.ndarray) -> bool:
    """Do two voxels of ``mask`` lie on one line along ``angle`` (PyRadiomics' "multiElement")?

    Almost always two neighbours along the angle answer it at once. Otherwise two voxels p, q share
    a line when q - p is a multiple of the angle: the static coordinates are equal and, for the
    other moving dimensions, p_m - angle_m * angle_m0 * p_m0 is equal.
    """
    here = tuple(slice(max(0, -d), mask.shape[i] - max(0, d)) for i, d in enumerate(angle))
    there = tuple(slice(max(0, d), mask.shape[i] - max(0, -d)) for i, d in enumerate(angle))
    if (mask[here] & mask[there]).any():
        return True
    index = np.argwhere(mask)
    moving = np.flatnonzero(angle)
    first = moving[0]
    key_cols = [index[:, d] for d in range(3) if angle[d] == 0]
    key_cols += [index[:, d] - angle[d] * angle[first] * index[:, first] for d in moving[1:]]
    if not key_cols:
        return len(index) > 1
    keys = np.stack(key_cols, axis=1)
    return len(np.unique(keys, axis=0)) < len(keys)


def shared_run_lengths(crops: dict[str, tuple[sitk.Image, sitk.Image, tuple[int, int, int]]],
                       settings: dict, flat_angles: dict | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per habitat, what ``cMatrices.calculate_glrlm`` returns for it alone: ``(P, angles)``.

    Args:
        crops: habitat -> (image, mask) cropped to the habitat as the engine crops them, and the
            crop's lower corner (z, y, x) on a grid common to all habitats. Masks must be disjoint.
        settings: the feature-class settings (binning; ``force2D`` / ``voxelBased`` are refused).
        flat_angles: habitat -> the angles along which it is flat, filled here; pass the same dict
            for every filtered image of one item (it depends on the masks only).

    Returns:
        ``{habitat: (P of shape (1, Ng, Nr, Na), angles)}`` for the habitats combined; habitats that
        cannot be (a flat box) are left out, and the caller computes them on their own.
    """
    if settings.get("force2D", False) or settings.get("voxelBased", False):
        return {}
    parts = {}
    for hk, (image, mask, lower) in crops.items():
        image_arr = sitk.GetArrayFromImage(image)
        mask_arr = sitk.GetArrayFromImage(mask) == settings.get("label", 1)
        if min(mask_arr.shape) < 2 or not mask_arr.any():
            continue
        binned, _ = imageoperations.binImage(image_arr, mask_arr, **settings)
        parts[hk] = (binned, mask_arr, np.asarray(lower))
    if len(parts) < 2:
        return {}
    lows = np.min([lower for _, _, lower in parts.values()], axis=0)
    highs = np.max([lower + np.asarray(b.shape) for b, _, lower in parts.values()], axis=0)
    union = np.zeros(tuple(highs - lows), dtype=np.int64)
    union_mask = np.zeros(union.shape, dtype=bool)
    offsets, n_levels = {}, {}
    offset = 0
    for hk, (binned, mask_arr, lower) in parts.items():
        where = tuple(slice(s, s + n) for s, n in zip(lower - lows, binned.shape, strict=True))
        if union_mask[where][mask_arr].any():
            raise ValueError(f"shared_run_lengths: habitat {hk} overlaps another; only disjoint habitats combine")
        n_levels[hk] = int(binned[mask_arr].max())
        offsets[hk] = offset
        union[where][mask_arr] = binned[mask_arr] + offset
        union_mask[where] |= mask_arr
        offset += n_levels[hk]
    matrix, angles = cMatrices.calculate_glrlm(union, union_mask, offset, int(max(union.shape)), False, 0)
    flat_angles = {} if flat_angles is None else flat_angles
    out = {}
    for hk, (binned, mask_arr, _) in parts.items():
        p = matrix[:, offsets[hk]:offsets[hk] + n_levels[hk], :int(max(binned.shape)), :].copy()
        if hk not in flat_angles:
            flat_angles[hk] = [a for a, angle in enumerate(np.asarray(angles))
                               if not _has_two_on_a_line(mask_arr, angle)]
        for a in flat_angles[hk]:
            p[:, :, 0, a] = 0  # PyRadiomics' rule for an angle along which the ROI is flat
        out[hk] = (p, np.asarray(angles))
    return out


def empty_grey_levels(coefficients: dict) -> np.ndarray:
    """Grey levels 1..Ng absent from the ROI, as PyRadiomics' texture classes drop them from their matrices."""
    present = set(int(g) for g in coefficients["grayLevels"])
    return np.array(sorted(set(range(1, coefficients["Ng"] + 1)) - present), dtype=int)


def process_run_lengths(features, matrix: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """PyRadiomics' GLRLM ``_calculateMatrix`` after its C call, on ``matrix`` (restated, same steps)."""
    matrix = np.delete(matrix, empty_grey_levels(features.coefficients) - 1, 1)
    if features.weightingNorm is not None:
        spacing = np.asarray(features.inputImage.GetSpacing()[::-1])
        norms = {"infinity": lambda d: max(d), "euclidean": lambda d: np.sqrt(np.sum(d ** 2)),
                 "manhattan": lambda d: np.sum(d), "no_weighting": lambda d: 1}
        if features.weightingNorm not in norms:
            features.logger.warning('weigthing norm "%s" is unknown, weighting factor is set to 1',
                                    features.weightingNorm)
        norm = norms.get(features.weightingNorm, norms["no_weighting"])
        weights = np.array([norm(np.abs(a) * spacing) for a in angles], dtype=float)
        matrix = np.sum(matrix * weights[None, None, None, :], 3, keepdims=True)
    n_runs = np.sum(matrix, (1, 2))
    if matrix.shape[3] > 1:
        empty_angles = np.where(np.sum(n_runs, 0) == 0)
        if len(empty_angles[0]) > 0:
            matrix = np.delete(matrix, empty_angles, 3)
            n_runs = np.delete(n_runs, empty_angles, 1)
    n_runs[n_runs == 0] = np.nan
    features.coefficients["Nr"] = n_runs
    return matrix
