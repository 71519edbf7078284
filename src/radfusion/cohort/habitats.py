"""BraTS label conventions and tumour habitats.

A *habitat* is a tumour sub-region defined from the segmentation labels:

- ``ET``  enhancing tumour
- ``NCR`` necrotic core
- ``ED``  peritumoral edema
- ``TC``  tumour core = NCR ∪ ET
- ``WT``  whole tumour = NCR ∪ ED ∪ ET
- ``RING`` peritumoral ring: WT dilated by N mm, minus WT, inside the brain (needs the voxel
  spacing and a brain mask, see :func:`peritumoral_ring`)

An empty habitat (many lower-grade gliomas have no enhancing tumour) is a fact about the
tumour, not an error: callers get an all-False mask and decide what that means.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Label values per convention. BraTS <= 2021 use 4 for ET, BraTS 2023 GLI uses 3.
LABEL_CONVENTIONS: dict[str, dict[str, int]] = {
    "brats2021": {"NCR": 1, "ED": 2, "ET": 4},
    "brats2023": {"NCR": 1, "ED": 2, "ET": 3},
}

#: Label-based habitats, in the order features and tables use them.
HABITATS: tuple[str, ...] = ("ET", "NCR", "ED", "TC", "WT")

#: Name of the peritumoral ring habitat (WT dilated by N mm, minus WT, inside the brain).
RING: str = "RING"

#: Every habitat name :func:`habitat_masks` understands.
ALL_HABITATS: tuple[str, ...] = (*HABITATS, RING)

#: Which base labels make up each habitat.
HABITAT_COMPONENTS: dict[str, tuple[str, ...]] = {
    "ET": ("ET",),
    "NCR": ("NCR",),
    "ED": ("ED",),
    "TC": ("NCR", "ET"),
    "WT": ("NCR", "ED", "ET"),
}


def convention_labels(convention: str | dict[str, int]) -> dict[str, int]:
    """Return the ``{"NCR": .., "ED": .., "ET": ..}`` mapping for a convention name or dict."""
    if isinstance(convention, str):
        try:
            return LABEL_CONVENTIONS[convention]
        except KeyError:
            raise ValueError(
                f"unknown label convention {convention!r}; known: {sorted(LABEL_CONVENTIONS)} "
                "or pass a dict like {'NCR': 1, 'ED': 2, 'ET': 4}"
            ) from None
    missing = {"NCR", "ED", "ET"} - set(convention)
    if missing:
        raise ValueError(f"label convention {convention} lacks {sorted(missing)}")
    return {k: int(convention[k]) for k in ("NCR", "ED", "ET")}


def allowed_labels(convention: str | dict[str, int]) -> set[int]:
    """Label values a segmentation may contain under ``convention`` (0 is background)."""
    return {0, *convention_labels(convention).values()}


def habitat_mask(seg: np.ndarray, habitat: str, convention: str | dict[str, int]) -> np.ndarray:
    """Boolean mask of ``habitat`` in the integer label array ``seg`` (any shape)."""
    labels = convention_labels(convention)
    if habitat == RING:
        raise ValueError("the RING habitat needs the voxel spacing and the brain: use peritumoral_ring() "
                         "or habitat_masks(..., spacing=, ring_mm=, brain=)")
    try:
        parts = HABITAT_COMPONENTS[habitat]
    except KeyError:
        raise ValueError(f"unknown habitat {habitat!r}; known: {list(HABITAT_COMPONENTS)}") from None
    return np.isin(seg, [labels[p] for p in parts])


def peritumoral_ring(wt: np.ndarray, width_mm: float, spacing: Sequence[float],
                     brain: np.ndarray | None = None) -> np.ndarray:
    """Peritumoral ring: voxels within ``width_mm`` of the whole tumour, outside it, inside the brain.

    A voxel belongs to the ring when the Euclidean distance between its centre and the nearest
    WT voxel centre is at most ``width_mm`` (an exact distance transform with anisotropic
    ``spacing``, so the ring is as wide in mm along every axis), it is not WT, and ``brain`` is
    true there (tissue outside the skull-stripped brain is not tumour environment).

    The result does not change when all arrays are cropped consistently, provided the crop keeps
    every WT voxel and ``width_mm`` of margin around them: distances are measured to WT voxels only.

    Args:
        wt: boolean whole-tumour mask, shape ``(z, y, x)``.
        width_mm: ring width in mm (> 0).
        spacing: voxel size in mm in the same axis order as ``wt`` (numpy ``(z, y, x)``).
        brain: boolean brain mask of ``wt``'s shape; None = everywhere.

    Returns:
        Boolean ring mask of ``wt``'s shape (all False when ``wt`` is empty).
    """
    from scipy.ndimage import distance_transform_edt

    wt = np.asarray(wt, dtype=bool)
    if width_mm <= 0:
        raise ValueError(f"ring width must be > 0 mm, got {width_mm}")
    if len(spacing) != wt.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} axes, mask has {wt.ndim}")
    if brain is not None and brain.shape != wt.shape:
        raise ValueError(f"brain mask shape {brain.shape} != tumour mask shape {wt.shape}")
    if not wt.any():
        return np.zeros(wt.shape, dtype=bool)
    # distance_transform_edt measures, for every non-zero voxel, the distance to the nearest zero:
    # with ~wt as input the zeros are the WT voxels.
    dist = distance_transform_edt(~wt, sampling=[float(s) for s in spacing])
    # A tiny slack keeps voxels at exactly width_mm (e.g. 5 voxels of 1 mm) despite float rounding.
    ring = (dist <= width_mm + 1e-6) & ~wt
    if brain is not None:
        ring &= np.asarray(brain, dtype=bool)
    return ring


def habitat_masks(
    seg: np.ndarray, convention: str | dict[str, int], habitats: tuple[str, ...] | list[str] = HABITATS,
    *, spacing: Sequence[float] | None = None, ring_mm: float | None = None, brain: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """All requested habitat masks of ``seg``, keyed by habitat name.

    ``RING`` additionally needs ``spacing`` (mm, numpy axis order) and ``ring_mm``; ``brain``
    (boolean, ``seg``'s shape) restricts it to the brain.
    """
    masks = {h: habitat_mask(seg, h, convention) for h in habitats if h != RING}
    if RING in habitats:
        if spacing is None or ring_mm is None:
            raise ValueError("the RING habitat needs spacing= (mm, numpy axis order) and ring_mm=")
        wt = masks["WT"] if "WT" in masks else habitat_mask(seg, "WT", convention)
        masks[RING] = peritumoral_ring(wt, ring_mm, spacing, brain)
    return {h: masks[h] for h in habitats}
