"""Feature stability under mask perturbations: ICC(3,1) table and histogram.

    python scripts/stability.py --manifest /data/cohort/manifest.csv --out results/stability
    python scripts/stability.py --synthetic 20 --out results/stability_syn     # generated cohort

Re-extracts every habitat feature with the original segmentation and with perturbed ones
(erode / dilate by one voxel, random boundary noise; see radfusion.radiomics.stability), then
writes to ``--out``:

- ``icc.csv``: ``feature, icc, ci_low, ci_high, n_subjects`` (ICC(3,1), 95 % CI);
- ``icc_hist.png``: histogram of ICCs per feature class with the ``--min-icc`` line;
- ``features_perturbed.parquet``: the long table (subject x condition rows);
- ``failures.csv``: subjects left out and why.

Use the table in training with ``features.min_icc=0.75 features.icc_table=<out>/icc.csv`` (the
keys of :func:`radfusion.features.processor.make_feature_processor`).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.cohort.readers import load_cohort
from radfusion.radiomics.settings import FeatureSettings
from radfusion.radiomics.stability import PERTURBATIONS, stability_study

ROOT = Path(__file__).resolve().parents[1]


def feature_class(name: str) -> str:
    """``ET_t1ce_original_glcm_Contrast`` -> ``glcm``; ``WT_shape_X`` -> ``shape``; book-keeping -> ``other``."""
    parts = name.split("_")
    for cls in ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"):
        if cls in parts:
            return cls
    return "other"


def plot_icc(icc: pd.DataFrame, path: Path, min_icc: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = icc.index.map(feature_class)
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(-0.2, 1.0, 49)
    groups = [(cls, icc.icc[classes == cls].dropna().clip(-0.2, 1.0)) for cls in sorted(set(classes))]
    ax.hist([g for _, g in groups], bins=bins, stacked=True, label=[f"{c} ({len(g)})" for c, g in groups])
    ax.axvline(min_icc, color="k", ls="--", lw=1)
    ax.set_xlabel("ICC(3,1) under mask perturbation")
    ax.set_ylabel("features")
    kept = float((icc.icc >= min_icc).mean())
    ax.set_title(f"{len(icc)} features, median ICC {icc.icc.median():.2f}, {kept:.0%} >= {min_icc}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _settings(args) -> FeatureSettings:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(args.features_config), resolve=True)
    if args.feature_classes:
        cfg["params"]["featureClass"] = {c: None for c in args.feature_classes}
    if args.habitats:
        cfg["habitats"] = args.habitats
    return FeatureSettings.from_config(cfg)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="manifest CSV (or a BraTS 2021 folder with --source brats2021)")
    src.add_argument("--synthetic", type=int, metavar="N",
                     help="generate an N-subject synthetic cohort into OUT/cohort")
    parser.add_argument("--source", default="manifest", choices=["manifest", "brats2021"])
    parser.add_argument("--clinical", help="clinical CSV for the brats2021 layout")
    parser.add_argument("--label-convention", default="brats2021")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--features-config", default=str(ROOT / "configs/features/default.yaml"),
                        help="feature settings YAML (configs/features/*.yaml)")
    parser.add_argument("--feature-classes", nargs="*", help="override PyRadiomics classes, e.g. shape firstorder")
    parser.add_argument("--habitats", nargs="*", help="override habitats, e.g. WT TC")
    parser.add_argument("--perturbations", nargs="+", default=list(PERTURBATIONS), choices=list(PERTURBATIONS))
    parser.add_argument("--noise-fraction", type=float, default=0.3, help="boundary voxels moved by 'noise'")
    parser.add_argument("--min-icc", type=float, default=0.75, help="threshold drawn and counted")
    parser.add_argument("--synthetic-shape", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.synthetic:
        from radfusion.synthetic.generator import generate_cohort

        manifest = generate_cohort(out / "cohort", n_subjects=args.synthetic, shape=tuple(args.synthetic_shape),
                                   seed=args.seed, progress=not args.quiet)
        cohort = load_cohort("manifest", manifest, label_convention=args.label_convention)
    else:
        cohort = load_cohort(args.source, args.manifest, args.clinical, args.label_convention)
    settings = _settings(args)
    t0 = time.perf_counter()
    long, icc, failures = stability_study(cohort, settings, args.perturbations, n_jobs=args.n_jobs, seed=args.seed,
                                          noise_fraction=args.noise_fraction, work_dir=None,
                                          progress=not args.quiet)
    seconds = time.perf_counter() - t0
    icc.to_csv(out / "icc.csv")
    long.to_parquet(out / "features_perturbed.parquet")
    pd.DataFrame({"subject_id": list(failures), "error": list(failures.values())}).to_csv(out / "failures.csv",
                                                                                         index=False)
    plot_icc(icc, out / "icc_hist.png", args.min_icc)

    by_class = icc.assign(cls=icc.index.map(feature_class)).groupby("cls").icc
    print(f"{len(long.subject_id.unique())} subjects x {1 + len(args.perturbations)} masks, {len(icc)} features, "
          f"{len(failures)} failed, {seconds:.0f} s")
    stable = icc.icc >= args.min_icc
    print(f"ICC(3,1): median {icc.icc.median():.3f}; >= {args.min_icc}: {stable.sum()} ({stable.mean():.0%}); "
          f">= 0.9: {(icc.icc >= 0.9).mean():.0%}; NaN: {icc.icc.isna().sum()}")
    print(pd.DataFrame({"n": by_class.size(), "median": by_class.median(),
                        f"frac>={args.min_icc}": by_class.apply(lambda v: (v >= args.min_icc).mean())}).round(3))
    print(f"wrote {out / 'icc.csv'} and {out / 'icc_hist.png'}")
    return icc


if __name__ == "__main__":
    main()
