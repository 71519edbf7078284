"""How much do automatic masks differ from reference masks, and how much does that move the radiomics?

Two measurements per subject that has both masks:

- **Dice per habitat** (ET, NCR, ED, TC, WT) between the automatic and the reference mask, with the
  BraTS convention that two empty masks agree perfectly (Dice 1; ``ref_voxels``/``auto_voxels``
  columns let you leave those out);
- **feature change per family**: the same habitat features extracted with each mask; per feature
  the median over subjects of ``|auto − ref| / max(|ref|, eps)`` and the ICC(2,1) (two-way random,
  absolute agreement, single measure: the two masks as raters) across subjects; summarised per
  feature family (``shape``, ``firstorder``, ``glcm``, ``glrlm``, ``glszm``, ``gldm``, ``ngtdm``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from radfusion.cohort.habitats import HABITATS, habitat_mask
from radfusion.radiomics.stability import icc_anova

log = logging.getLogger(__name__)

#: Feature families, in report order (PyRadiomics' feature classes).
FAMILIES: tuple[str, ...] = ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")

#: ICC at or above which agreement counts as good (Koo & Li 2016).
GOOD_ICC = 0.75


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks; 1.0 when both are empty (BraTS convention)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def mask_agreement(auto: np.ndarray, ref: np.ndarray, auto_convention: str | dict, ref_convention: str | dict,
                   habitats: Sequence[str] = HABITATS) -> list[dict]:
    """Dice and voxel counts per habitat of two label arrays of the same shape."""
    if auto.shape != ref.shape:
        raise ValueError(f"automatic mask shape {auto.shape} != reference shape {ref.shape}")
    rows = []
    for h in habitats:
        a, r = habitat_mask(auto, h, auto_convention), habitat_mask(ref, h, ref_convention)
        rows.append({"habitat": h, "dice": dice(a, r), "auto_voxels": int(a.sum()), "ref_voxels": int(r.sum())})
    return rows


def cohort_dice(pairs: Iterable[tuple[str, str | Path, str | Path]], convention: str | dict = "brats2021",
                ref_convention: str | dict | None = None, habitats: Sequence[str] = HABITATS,
                tolerance: float = 1e-3) -> tuple[pd.DataFrame, dict[str, str]]:
    """Dice per subject × habitat for ``(subject_id, automatic mask, reference mask)`` triples.

    Returns:
        ``(table, failures)``: columns ``subject_id, habitat, dice, auto_voxels, ref_voxels, auto_mm3,
        ref_mm3``; failures (unreadable file, different grids) name subject and files.
    """
    rows, failures = [], {}
    for sid, auto_path, ref_path in pairs:
        try:
            auto_img, ref_img = sitk.ReadImage(str(auto_path)), sitk.ReadImage(str(ref_path))
            if auto_img.GetSize() != ref_img.GetSize() or not np.allclose(
                    auto_img.GetSpacing(), ref_img.GetSpacing(), atol=tolerance):
                raise ValueError(f"grids differ: {auto_path} size {auto_img.GetSize()} spacing "
                                 f"{auto_img.GetSpacing()} vs {ref_path} size {ref_img.GetSize()} spacing "
                                 f"{ref_img.GetSpacing()}")
            voxel_mm3 = float(np.prod(ref_img.GetSpacing()))
            res = mask_agreement(sitk.GetArrayFromImage(auto_img), sitk.GetArrayFromImage(ref_img), convention,
                                 ref_convention or convention, habitats)
        except (RuntimeError, ValueError) as err:
            failures[sid] = f"subject {sid}: cannot compare {auto_path} with {ref_path}: {str(err).strip()[-300:]}"
            log.error("segmentation quality: %s", failures[sid])
            continue
        for r in res:
            rows.append({"subject_id": sid, **r, "auto_mm3": r["auto_voxels"] * voxel_mm3,
                         "ref_mm3": r["ref_voxels"] * voxel_mm3})
    cols = ["subject_id", "habitat", "dice", "auto_voxels", "ref_voxels", "auto_mm3", "ref_mm3"]
    return pd.DataFrame(rows, columns=cols), failures


def feature_family(column: str) -> tuple[str, str, str] | None:
    """``(habitat, family, image_type)`` of a feature column; None for ``<habitat>_voxels``/``_empty``.

    ``WT_shape_MeshVolume`` → ``(WT, shape, original)``; ``ET_t1ce_original_glcm_Idm`` →
    ``(ET, glcm, original)``; ``ED_flair_wavelet-LLH_glszm_ZoneEntropy`` → ``(ED, glszm, wavelet-LLH)``.
    """
    parts = str(column).split("_")
    if len(parts) >= 3 and parts[1] == "shape":
        return parts[0], "shape", "original"
    if len(parts) >= 5:
        return parts[0], parts[3], parts[2]
    return None


def feature_change(ref: pd.DataFrame, auto: pd.DataFrame, eps: float = 1e-6) -> pd.DataFrame:
    """Per feature: how far the automatic-mask values are from the reference-mask values.

    Args:
        ref, auto: feature tables (index = subject id) from the reference and the automatic masks.
        eps: smallest denominator of the relative change (feature units).

    Returns:
        One row per feature (index ``feature``): ``habitat, family, image_type, n_subjects`` (with a
        finite value under both masks), ``median_abs_rel_change``, ``icc`` (ICC(2,1), NaN with fewer
        than 3 subjects or no between-subject variance).
    """
    common = ref.index.intersection(auto.index)
    rows = []
    for col in ref.columns.intersection(auto.columns):
        fam = feature_family(col)
        if fam is None:
            continue
        r = ref.loc[common, col].to_numpy(np.float64)
        a = auto.loc[common, col].to_numpy(np.float64)
        ok = np.isfinite(r) & np.isfinite(a)
        r, a = r[ok], a[ok]
        # the reference-mask value is the baseline (same formula as radfusion.radiomics.delta.relative_change,
        # not imported: that module pulls in the Lightning datamodule)
        change = float(np.median(np.abs(a - r) / np.maximum(np.abs(r), eps))) if len(r) else np.nan
        icc = np.nan
        if len(r) >= 3 and np.ptp(np.concatenate([r, a])) > 0:
            icc = icc_anova(np.column_stack([r, a]))["ICC2"]
        rows.append({"feature": col, "habitat": fam[0], "family": fam[1], "image_type": fam[2],
                     "n_subjects": int(ok.sum()), "median_abs_rel_change": change, "icc": icc})
    return pd.DataFrame(rows).set_index("feature") if rows else pd.DataFrame(
        columns=["habitat", "family", "image_type", "n_subjects", "median_abs_rel_change", "icc"])


def family_summary(per_feature: pd.DataFrame, by: Sequence[str] = ("family",)) -> pd.DataFrame:
    """Summary per family (or per ``by`` columns): feature count, median / quartiles of the per-feature
    median relative change, median ICC and the fraction of features with ICC >= :data:`GOOD_ICC`.
    Sorted from most to least sensitive (largest median change first)."""
    def agg(g: pd.DataFrame) -> pd.Series:
        ch, icc = g["median_abs_rel_change"].dropna(), g["icc"].dropna()
        return pd.Series({"n_features": len(g), "median_rel_change": ch.median() if len(ch) else np.nan,
                          "q25_rel_change": ch.quantile(0.25) if len(ch) else np.nan,
                          "q75_rel_change": ch.quantile(0.75) if len(ch) else np.nan,
                          "median_icc": icc.median() if len(icc) else np.nan,
                          "frac_icc_good": float((icc >= GOOD_ICC).mean()) if len(icc) else np.nan})

    by = list(by)
    out = pd.DataFrame([{**dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)), **agg(g)}
                        for key, g in per_feature.groupby(by, sort=False)])
    return out.sort_values("median_rel_change", ascending=False, ignore_index=True)


def plot_quality(dice_table: pd.DataFrame, per_feature: pd.DataFrame, path: str | Path,
                 title: str = "segmentation quality") -> Path:
    """Two panels: Dice per habitat (box + points) and |relative change| per feature family (box, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    habitats = [h for h in HABITATS if h in set(dice_table["habitat"])]
    data = [dice_table.loc[dice_table.habitat == h, "dice"].dropna().to_numpy() for h in habitats]
    ax1.boxplot(data, tick_labels=habitats, showfliers=False)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax1.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=10, alpha=0.6)
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_ylabel("Dice (automatic vs reference)")
    ax1.set_title(f"Dice per habitat (n = {dice_table.subject_id.nunique()} subjects)")
    families = [f for f in FAMILIES if f in set(per_feature["family"])]
    changes = [per_feature.loc[per_feature.family == f, "median_abs_rel_change"].dropna().to_numpy() for f in families]
    changes = [np.clip(c, 1e-4, None) for c in changes]
    ax2.boxplot(changes, tick_labels=families, showfliers=False)
    ax2.set_yscale("log")
    ax2.set_ylabel("per-feature median |relative change|")
    ax2.set_title("feature change per family")
    ax2.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def reference_pairs(manifest: str | Path, label_convention: str | dict = "brats2021"):
    """Cohorts of the automatic and the reference masks from a manifest written by ``segment.py
    only_missing=false`` (``seg`` automatic, ``seg_reference`` given): rows with both only."""
    import dataclasses

    from radfusion.cohort.readers import read_manifest
    from radfusion.cohort.subject import Cohort

    manifest = Path(manifest)
    cohort = read_manifest(manifest, label_convention)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    if "seg_reference" not in table or "seg_model" not in table:
        raise ValueError(f"manifest {manifest} has no seg_reference / seg_model columns: make it with "
                         "scripts/segment.py only_missing=false (or pass --model to segment here)")
    auto, ref = [], []
    for subject, (_, row) in zip(cohort.subjects, table.iterrows(), strict=True):
        if row["seg_reference"].strip() and row["seg_model"].strip() and subject.seg is not None:
            auto.append(subject)
            ref.append(dataclasses.replace(subject, seg=(manifest.parent / row["seg_reference"].strip()).resolve()))
    if not auto:
        raise ValueError(f"manifest {manifest}: no subject has both an automatic and a reference mask")
    ids = [s.subject_id for s in auto]
    clinical = cohort.clinical.loc[ids]
    return (Cohort(auto, clinical, cohort.label_convention, cohort.root),
            Cohort(ref, clinical, cohort.label_convention, cohort.root))


def quality_study(manifest: str | Path, out_dir: str | Path, settings, cache_dir: str | Path,
                  label_convention: str | dict = "brats2021", n_jobs: int = 1, progress: bool = True) -> dict:
    """Dice and feature change for every subject of ``manifest`` with both masks; writes into ``out_dir``:

    ``dice.csv`` (subject × habitat), ``dice_summary.csv`` (per habitat), ``feature_change.csv`` (per
    feature), ``feature_families.csv`` (per family, most sensitive first), ``feature_families_by_habitat.csv``,
    ``segmentation_quality.png``, ``failures.csv``. Returns a summary dict (also ``summary.json``).
    """
    import json

    from radfusion.radiomics.extract import extract_cohort

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    auto, ref = reference_pairs(manifest, label_convention)
    dice_table, failures = cohort_dice(((a.subject_id, a.seg, r.seg) for a, r in zip(auto.subjects, ref.subjects,
                                                                                      strict=True)),
                                       auto.label_convention, habitats=HABITATS)
    dice_table.to_csv(out / "dice.csv", index=False)
    dice_sum = dice_table.groupby("habitat", sort=False)["dice"].describe()[["count", "mean", "50%", "25%", "75%"]]
    dice_sum = dice_sum.rename(columns={"50%": "median", "25%": "q25", "75%": "q75"}).reindex(
        [h for h in HABITATS if h in dice_sum.index])
    dice_sum.to_csv(out / "dice_summary.csv")
    feats_ref = extract_cohort(ref, settings, cache_dir, n_jobs=n_jobs, progress=progress)
    feats_auto = extract_cohort(auto, settings, cache_dir, n_jobs=n_jobs, progress=progress)
    for name, df in (("reference", feats_ref), ("automatic", feats_auto)):
        failures.update({k: f"{name} mask features: {v}" for k, v in df.attrs.get("failures", {}).items()})
    per_feature = feature_change(feats_ref, feats_auto)
    per_feature.to_csv(out / "feature_change.csv")
    families = family_summary(per_feature)
    families.to_csv(out / "feature_families.csv", index=False)
    family_summary(per_feature, ("habitat", "family")).to_csv(out / "feature_families_by_habitat.csv", index=False)
    plot_quality(dice_table, per_feature, out / "segmentation_quality.png")
    pd.DataFrame({"subject_id": list(failures), "error": list(failures.values())}).to_csv(out / "failures.csv",
                                                                                           index=False)
    summary = {"subjects": len(auto), "dice_median": dice_sum["median"].round(4).to_dict(),
               "families_most_to_least_sensitive": families["family"].tolist(),
               "family_median_rel_change": dict(zip(families["family"], families["median_rel_change"].round(4),
                                                    strict=True)),
               "family_median_icc": dict(zip(families["family"], families["median_icc"].round(4), strict=True)),
               "failures": failures}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
