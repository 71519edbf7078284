"""Column names of the habitat feature table and one subject's row, from its cached items.

Column names (one row per subject):

- ``<habitat>_voxels``: voxel count of the habitat after resampling;
- ``<habitat>_empty``: 1.0 if the habitat has fewer than ``min_voxels`` voxels or PyRadiomics'
  ``checkMask`` rejects it (too thin, below ``minimumROISize``); its features are then NaN;
- ``<habitat>_shape_<Feature>``: PyRadiomics shape features (they depend on the mask only);
- ``<habitat>_<sequence>_<imageType>_<class>_<Feature>``, e.g. ``ET_t1ce_original_firstorder_Mean``,
  ``WT_flair_log-sigma-3-0-mm-3D_glcm_Idm``, ``ED_t2_wavelet-LLH_glszm_ZoneEntropy``;
- ``<sequence>_missing`` (last; only for a sequence some subject of the table lacks): 1.0 for the
  subjects without that sequence, whose ``<habitat>_<sequence>_*`` features are then NaN (imputed
  in-fold, like an empty habitat's); 0.0 for the others. A table where every subject has every
  sequence has no such column, so its columns are those of earlier releases.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from radfusion.cache import atomic_write_text, settings_hash
from radfusion.cohort.subject import CohortError, Subject
from radfusion.radiomics import engine
from radfusion.radiomics.pyrad import Plan, build_plan, capture_warnings
from radfusion.radiomics.settings import FeatureSettings

_TEMPLATES: dict[str, dict[str, list[str]]] = {}


def unit_feature_names(plan: Plan, cache_dir: Path | None = None) -> dict[str, list[str]]:
    """PyRadiomics feature names per unit key (and the shape key), from a small phantom.

    Running the engine on a 32³ noise image with a ball mask gives exactly the names of any
    configuration (filters, feature subsets) without re-implementing PyRadiomics' naming. The
    result is memoised per process and, with ``cache_dir``, on disk (a warm run then reads no image).
    """
    digest = settings_hash([engine.ITEM_SCHEMA, plan.prep_key, plan.shape_key, [u.key for u in plan.units]], 20)
    if digest in _TEMPLATES:
        return _TEMPLATES[digest]
    path = None if cache_dir is None else Path(cache_dir) / "templates" / f"{digest}.json"
    if path is not None and path.is_file():
        _TEMPLATES[digest] = json.loads(path.read_text())
        return _TEMPLATES[digest]
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.normal(0.0, 100.0, (32, 32, 32)).astype(np.float32))
    zz, yy, xx = np.mgrid[:32, :32, :32]
    ball = ((zz - 16) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 <= 64).astype(np.uint32)
    mask = sitk.GetImageFromArray(ball)
    with capture_warnings():
        entries = engine.compute_entries(image, {"T": mask}, plan, True, None)
    names = {}
    if plan.shape_key:
        names[plan.shape_key] = list(entries.get(engine.entry_key("T", plan.shape_key, None), {}))
    for unit in plan.units:
        names[unit.key] = list(entries.get(engine.entry_key("T", unit, None), {}))
    _TEMPLATES[digest] = names
    if path is not None:
        atomic_write_text(path, json.dumps(names))
    return names


def _shape_column(habitat: str, key: str) -> str:
    # "original_shape_MeshVolume" -> "WT_shape_MeshVolume": shape has no image type or sequence.
    return f"{habitat}_{key.removeprefix('original_')}"


def feature_columns(settings: FeatureSettings, plan: Plan | None = None, cache_dir: Path | None = None) -> list[str]:
    """Every column of the feature table, in order: per habitat its voxels, empty flag, shape
    features, then per sequence its features (image types in PyRadiomics' order)."""
    plan = plan or build_plan(settings.pyradiomics_params)
    names = unit_feature_names(plan, cache_dir)
    columns = []
    for h in settings.habitats:
        columns += [f"{h}_voxels", f"{h}_empty"]
        if plan.shape_key:
            columns += [_shape_column(h, k) for k in names[plan.shape_key]]
        for seq in settings.sequences:
            for unit in plan.units:
                columns += [f"{h}_{seq}_{k}" for k in names[unit.key]]
    return columns


def assemble_row(items: dict[str, dict], settings: FeatureSettings, plan: Plan) -> dict[str, float]:
    """One subject's features from its items (one per sequence it has; the first of them holds shape).

    A sequence without an item (the subject lacks it) has no values here, so its columns stay NaN; its
    ``<sequence>_missing`` indicator is :func:`missing_indicators`'.
    """
    present = [s for s in settings.sequences if s in items]
    first = items[present[0]]
    row: dict[str, float] = {}
    for h in settings.habitats:
        hk = engine.habitat_key(h, settings)
        n = int(first.get("voxels", {}).get(hk, 0))
        empty = n < settings.min_voxels or hk in first.get("rejected", {})
        row[f"{h}_voxels"] = float(n)
        row[f"{h}_empty"] = 1.0 if empty else 0.0
        if empty:
            continue
        if plan.shape_key:
            shape = first["entries"].get(engine.entry_key(hk, plan.shape_key, None), {})
            row.update({_shape_column(h, k): v for k, v in shape.items()})
        for seq in present:
            item = items[seq]
            for unit in plan.units:
                values = item["entries"].get(engine.entry_key(hk, unit, item.get("box")), {})
                row.update({f"{h}_{seq}_{k}": v for k, v in values.items()})
    return row


def present_sequences(subject: Subject, settings: FeatureSettings) -> list[str]:
    """The sequences of ``settings`` the subject has an image of, in order; a subject with none is a
    :class:`CohortError` (validation refuses it too)."""
    present = [s for s in settings.sequences if s in subject.images]
    if not present:
        raise CohortError(f"subject {subject.subject_id}: none of the sequences {settings.sequences} has an image "
                          f"(it has {sorted(subject.images)}); give one or drop the subject")
    return present


def missing_indicators(missing: dict[str, list[str]], settings: FeatureSettings) -> dict[str, list[float]]:
    """``<sequence>_missing`` columns for the sequences some subject lacks: ``missing`` maps each subject
    (in table order) to the sequences it lacks; 1.0 where it lacks it, else 0.0. None lacking: ``{}``."""
    lacking = [s for s in settings.sequences if any(s in m for m in missing.values())]
    return {f"{s}_missing": [1.0 if s in m else 0.0 for m in missing.values()] for s in lacking}
