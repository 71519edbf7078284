"""What a radiomics column is about, read from its name (habitat, sequence, image type, feature class).

Names follow :mod:`radfusion.radiomics.columns` after in-fold processing
(``dm.feature_pipeline.feature_names_out_``)::

    ET_t1ce_original_firstorder_Mean          habitat ET, sequence t1ce, image type original, class firstorder
    WT_flair_wavelet-LLH_glszm_ZoneEntropy    habitat WT, sequence flair, image type wavelet-LLH, class glszm
    WT_shape_MeshVolume, WT_voxels            habitat WT, shape (no sequence)
    NCR_empty                                 habitat NCR, the empty-habitat flag
    flair_missing                             the missing-sequence flag of flair
    missing:<name>                            the processor's missingness indicator of <name>

Anything else (a feature table's own columns, delta radiomics) is kept as ``other``. The coarse class
groups PyRadiomics' classes into what a reader asks about: ``intensity`` (firstorder), ``texture`` (glcm,
glrlm, glszm, gldm, ngtdm), ``shape`` (shape features and voxel counts) and ``flag`` (indicators).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from radfusion.cohort.habitats import ALL_HABITATS
from radfusion.cohort.subject import SEQUENCES

TEXTURE_CLASSES = ("glcm", "glrlm", "glszm", "gldm", "ngtdm")
COARSE = {"firstorder": "intensity", "shape": "shape", **{c: "texture" for c in TEXTURE_CLASSES}}


def parse_feature_name(name: str) -> dict[str, str]:
    """``{habitat, sequence, image_type, feature_class, coarse, feature}`` of one column (``-`` where the
    name carries no such part)."""
    out = {"habitat": "-", "sequence": "-", "image_type": "-", "feature_class": "other", "coarse": "other",
           "feature": name}
    if name.startswith("missing:"):
        inner = parse_feature_name(name.removeprefix("missing:"))
        return {**inner, "feature_class": "indicator", "coarse": "flag", "feature": name}
    parts = name.split("_")
    if len(parts) == 2 and parts[0] in SEQUENCES and parts[1] == "missing":
        return {**out, "sequence": parts[0], "feature_class": "indicator", "coarse": "flag"}
    if parts[0] not in ALL_HABITATS or len(parts) < 2:
        return out
    out["habitat"] = parts[0]
    if len(parts) == 2 and parts[1] in ("voxels", "empty"):
        cls = "shape" if parts[1] == "voxels" else "indicator"
        return {**out, "feature_class": cls, "coarse": "shape" if cls == "shape" else "flag", "feature": parts[1]}
    if parts[1] == "shape":
        return {**out, "image_type": "original", "feature_class": "shape", "coarse": "shape",
                "feature": "_".join(parts[2:])}
    if parts[1] in SEQUENCES and len(parts) >= 5:
        cls = parts[3]
        return {**out, "sequence": parts[1], "image_type": parts[2], "feature_class": cls,
                "coarse": COARSE.get(cls, "other"), "feature": "_".join(parts[4:])}
    return out


def feature_groups(names: Sequence[str]) -> pd.DataFrame:
    """One row per column: its name and parsed parts, plus ``group`` (e.g. ``ED × FLAIR texture``)."""
    rows = [{"name": n, **parse_feature_name(n)} for n in names]
    table = pd.DataFrame(rows, columns=["name", "habitat", "sequence", "image_type", "feature_class", "coarse",
                                        "feature"])
    seq = table["sequence"].where(table["sequence"] == "-", table["sequence"].str.upper())
    table["group"] = [f"{h} × {s} {c}" if s != "-" else f"{h} {c}"
                      for h, s, c in zip(table["habitat"], seq, table["coarse"], strict=True)]
    return table
