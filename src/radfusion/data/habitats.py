"""BraTS label conventions and tumour habitats.

A *habitat* is a tumour sub-region defined from the segmentation labels:

- ``ET``  enhancing tumour
- ``NCR`` necrotic core
- ``ED``  peritumoral edema
- ``TC``  tumour core = NCR ∪ ET
- ``WT``  whole tumour = NCR ∪ ED ∪ ET

An empty habitat (many lower-grade gliomas have no enhancing tumour) is a fact about the
tumour, not an error: callers get an all-False mask and decide what that means.
"""

from __future__ import annotations

import numpy as np

#: Label values per convention. BraTS <= 2021 use 4 for ET, BraTS 2023 GLI uses 3.
LABEL_CONVENTIONS: dict[str, dict[str, int]] = {
    "brats2021": {"NCR": 1, "ED": 2, "ET": 4},
    "brats2023": {"NCR": 1, "ED": 2, "ET": 3},
}

#: Habitats in the order features and tables use them.
HABITATS: tuple[str, ...] = ("ET", "NCR", "ED", "TC", "WT")

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
    try:
        parts = HABITAT_COMPONENTS[habitat]
    except KeyError:
        raise ValueError(f"unknown habitat {habitat!r}; known: {list(HABITAT_COMPONENTS)}") from None
    return np.isin(seg, [labels[p] for p in parts])


def habitat_masks(
    seg: np.ndarray, convention: str | dict[str, int], habitats: tuple[str, ...] | list[str] = HABITATS
) -> dict[str, np.ndarray]:
    """All requested habitat masks of ``seg``, keyed by habitat name."""
    return {h: habitat_mask(seg, h, convention) for h in habitats}
