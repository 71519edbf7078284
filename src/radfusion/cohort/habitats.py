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

A *label convention* says which label values make up each base part ``NCR``, ``ED``, ``ET``: a
name from :data:`LABEL_CONVENTIONS` or a dict whose values are one label or a list of labels, e.g.
BraTS 2013-2015 ``{"NCR": [1, 3], "ED": 2, "ET": 4}`` (label 3, non-enhancing tumour, counts as
necrotic core, as the BraTS tumour-core region does). :func:`convention_label_sets` gives every
value of a part; :func:`convention_labels` the one value a part is *written* with (its first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Label values per convention. BraTS <= 2021 use 4 for ET, BraTS 2023 GLI uses 3; BraTS 2013-2015
#: add 3 = non-enhancing tumour, which belongs to the tumour core and is counted as NCR here.
LABEL_CONVENTIONS: dict[str, dict[str, int | list[int]]] = {
    "brats2021": {"NCR": 1, "ED": 2, "ET": 4},
    "brats2023": {"NCR": 1, "ED": 2, "ET": 3},
    "brats2015": {"NCR": [1, 3], "ED": 2, "ET": 4},
}

#: The base parts a convention maps label values to.
PARTS: tuple[str, ...] = ("NCR", "ED", "ET")

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


def plain_convention(convention: Any) -> Any:
    """``convention`` as plain Python containers (an OmegaConf ``DictConfig``/``ListConfig`` from a
    Hydra config becomes ``dict``/``list``), nothing else changed.

    The convention is hashed as JSON into cache keys, so the values are kept as they are: a name stays
    the same string and a dict of ints the same dict (existing keys keep their values).
    """
    if isinstance(convention, (str, bytes)):
        return convention
    if isinstance(convention, Mapping):
        return {k: plain_convention(v) for k, v in convention.items()}
    if isinstance(convention, Sequence) or type(convention).__name__ == "ListConfig":
        return [plain_convention(v) for v in convention]
    return convention


def _as_label(value: Any, part: str, convention: Any) -> int:
    """One label value as an int; refuses 0 (background), negatives, fractions and non-numbers."""
    try:
        label = int(value)
        exact = float(value) == label
    except (TypeError, ValueError, OverflowError):
        exact = False
    if not exact or isinstance(value, bool) or label <= 0:
        raise ValueError(f"label convention {convention}: {part} value {value!r} is not a positive whole "
                         "number (0 is the background)")
    return label


def convention_label_sets(convention: str | Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every label value of each part, ``{"NCR": (..), "ED": (..), "ET": (..)}``, for a name or a dict.

    A dict value is one label or a list of labels (``{"NCR": [1, 3], "ED": 2, "ET": 4}``). A label
    may belong to one part only: a voxel cannot be both necrosis and edema.
    """
    if isinstance(convention, str):
        try:
            convention = LABEL_CONVENTIONS[convention]
        except KeyError:
            raise ValueError(
                f"unknown label convention {convention!r}; known: {sorted(LABEL_CONVENTIONS)} "
                "or pass a dict like {'NCR': 1, 'ED': 2, 'ET': 4} (a list maps several labels to one "
                "part: {'NCR': [1, 3], 'ED': 2, 'ET': 4})"
            ) from None
    conv = plain_convention(convention)
    if not isinstance(conv, Mapping):
        raise ValueError(f"label convention {conv!r} is neither a name nor a dict like {{'NCR': 1, 'ED': 2, 'ET': 4}}")
    missing = set(PARTS) - set(conv)
    if missing:
        raise ValueError(f"label convention {conv} lacks {sorted(missing)}")
    sets: dict[str, tuple[int, ...]] = {}
    for part in PARTS:
        values = conv[part] if isinstance(conv[part], list) else [conv[part]]
        if not values:
            raise ValueError(f"label convention {conv}: {part} has no label value")
        sets[part] = tuple(dict.fromkeys(_as_label(v, part, conv) for v in values))
    owners: dict[int, list[str]] = {}
    for part, labels in sets.items():
        for label in labels:
            owners.setdefault(label, []).append(part)
    shared = {label: parts for label, parts in owners.items() if len(parts) > 1}
    if shared:
        raise ValueError(f"label convention {conv}: label(s) {shared} belong to more than one part; "
                         "give each label one part")
    return sets


def convention_labels(convention: str | Mapping[str, Any]) -> dict[str, int]:
    """The label each part is *written* with, ``{"NCR": .., "ED": .., "ET": ..}`` (the first of its list).

    For the single-label conventions this is the whole convention. Code that *reads* a segmentation
    must use :func:`convention_label_sets` (or :func:`habitat_mask`), which knows every value.
    """
    return {part: labels[0] for part, labels in convention_label_sets(convention).items()}


def allowed_labels(convention: str | Mapping[str, Any]) -> set[int]:
    """Label values a segmentation may contain under ``convention`` (0 is background)."""
    return {0, *(label for labels in convention_label_sets(convention).values() for label in labels)}


def habitat_mask(seg: np.ndarray, habitat: str, convention: str | Mapping[str, Any]) -> np.ndarray:
    """Boolean mask of ``habitat`` in the integer label array ``seg`` (any shape)."""
    labels = convention_label_sets(convention)
    if habitat == RING:
        raise ValueError("the RING habitat needs the voxel spacing and the brain: use peritumoral_ring() "
                         "or habitat_masks(..., spacing=, ring_mm=, brain=)")
    try:
        parts = HABITAT_COMPONENTS[habitat]
    except KeyError:
        raise ValueError(f"unknown habitat {habitat!r}; known: {list(HABITAT_COMPONENTS)}") from None
    return np.isin(seg, [label for p in parts for label in labels[p]])


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
    seg: np.ndarray, convention: str | Mapping[str, Any], habitats: tuple[str, ...] | list[str] = HABITATS,
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
