"""Small PyRadiomics settings for fast extraction tests, and an extraction that shares nothing with the
engine's caches (the reference the engine is compared with)."""

from __future__ import annotations

import copy
from typing import Any

from radfusion.radiomics.extract import extract_region
from radfusion.radiomics.settings import FeatureSettings

#: Original image only, three cheap classes: a subject extracts in about a second.
SMALL_PARAMS: dict[str, Any] = {
    "setting": {"binWidth": 25, "label": 1, "additionalInfo": False, "voxelArrayShift": 300},
    "imageType": {"Original": {}},
    "featureClass": {"shape": [], "firstorder": [], "glcm": []},
}


def small_feature_settings(params: dict[str, Any] | None = None, **kw: Any) -> FeatureSettings:
    """``FeatureSettings`` on a deep copy of ``params`` (default :data:`SMALL_PARAMS`), so that a test
    which edits its settings' params cannot change the next test's."""
    return FeatureSettings(params=copy.deepcopy(SMALL_PARAMS if params is None else params), **kw)


def rel(a: float, b: float) -> float:
    """Relative difference of ``a`` from the reference ``b`` (absolute where ``b`` is 0)."""
    return abs(a - b) / max(abs(b), 1e-12) if b != 0 else abs(a)


def reference_execute(*args: Any, **kwargs: Any) -> dict[str, float]:
    """Plain ``extract_region`` with PyRadiomics' own ``binImage``, so that the reference shares nothing
    with the code under test (the engine's binning memo is installed only while it computes an item)."""
    from radiomics import imageoperations

    assert not getattr(imageoperations.binImage, "radfusion_memo", False), "the binning memo outlived its item"
    return extract_region(*args, **kwargs)
