"""Segmentation-quality sensitivity: Dice per habitat and feature change per family, automatic vs reference.

    # a manifest made by `scripts/segment.py only_missing=false` (seg = automatic, seg_reference = given)
    python scripts/segmentation_quality.py --manifest /data/cohort/manifest_nnunet.csv --out results/segq
    # segment here first (every subject with a mask is re-segmented into <out>/auto_seg)
    python scripts/segmentation_quality.py --manifest /data/cohort/manifest.csv --model /models/<trainer>__... \
        --out results/segq
    # demo on the synthetic cohort: a toy nnU-Net trained on the first half, evaluated on the second
    python scripts/segmentation_quality.py --synthetic 40 --out results/segq_syn

Writes into ``--out``: ``dice.csv``, ``dice_summary.csv``, ``feature_change.csv``, ``feature_families.csv``
(most sensitive family first), ``feature_families_by_habitat.csv``, ``segmentation_quality.png``,
``summary.json``, ``failures.csv`` (see ``docs/segmentation.md``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pandas as pd

from radfusion.cohort.readers import read_manifest
from radfusion.cohort.subject import Cohort
from radfusion.radiomics.settings import FeatureSettings
from radfusion.segmentation.nnunet import NNUNetSegmenter
from radfusion.segmentation.quality import quality_study
from radfusion.segmentation.run import segment_cohort, summarise


def _segment_all(manifest: Path, model: Path, out: Path, args, start: int = 0) -> Path:
    """Re-segment every subject from row ``start`` on; returns the manifest with seg + seg_reference."""
    cohort = read_manifest(manifest, args.label_convention)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    part = Cohort(cohort.subjects[start:], cohort.clinical.iloc[start:], cohort.label_convention, cohort.root)
    segmenter = NNUNetSegmenter(model, folds=args.folds, device=args.device, use_mirroring=not args.no_mirroring)
    t0 = time.perf_counter()
    run = segment_cohort(part, segmenter, out / "manifest_auto.csv", out / "auto_seg", table=table.iloc[start:],
                         table_dir=manifest.parent, only_missing=False, progress=not args.quiet)
    summary = summarise(run, segmenter, out / "segmentation", time.perf_counter() - t0)
    sec = summary["seconds_per_subject"]
    if sec["n"]:
        print(f"segmented {sec['n']} subjects: {sec['mean']:.2f} s per subject (median {sec['median']:.2f}) "
              f"on {summary['device']}")
    return run.manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, help="cohort manifest (with seg_reference, or with --model)")
    p.add_argument("--model", type=Path, help="nnU-Net model folder: segment every subject with a mask first")
    p.add_argument("--synthetic", type=int, help="demo: generate this many synthetic subjects and train a toy model")
    p.add_argument("--shape", type=int, default=48, help="synthetic grid edge, voxels (default 48)")
    p.add_argument("--toy-steps", type=int, default=300, help="toy model training steps (default 300)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--folds", type=int, nargs="+", default=[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--no-mirroring", action="store_true", help="skip nnU-Net's test-time mirroring (8x faster)")
    p.add_argument("--label-convention", default="brats2021")
    p.add_argument("--feature-classes", nargs="+", default=None,
                   help="PyRadiomics feature classes (default: all seven)")
    p.add_argument("--cache", type=Path, default=Path("cache/features"))
    p.add_argument("--n-jobs", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    manifest = args.manifest
    if args.synthetic:
        from radfusion.synthetic.generator import generate_cohort
        from radfusion.synthetic.toy_nnunet import train_toy_model

        manifest = generate_cohort(args.out / "cohort", n_subjects=args.synthetic, shape=(args.shape,) * 3,
                                   seed=11, n_sites=2, progress=not args.quiet)
        cohort = read_manifest(manifest, args.label_convention)
        half = len(cohort) // 2
        train = Cohort(cohort.subjects[:half], cohort.clinical.iloc[:half], cohort.label_convention, cohort.root)
        t1 = time.perf_counter()
        model = train_toy_model(train, args.out / "toy_nnunet", steps=args.toy_steps)
        print(f"toy nnU-Net: {half} training subjects, {args.toy_steps} steps in {time.perf_counter() - t1:.0f} s")
        manifest = _segment_all(manifest, model, args.out, args, start=half)
    elif args.model is not None:
        if manifest is None:
            p.error("--model needs --manifest")
        manifest = _segment_all(manifest, args.model, args.out, args)
    elif manifest is None:
        p.error("give --manifest (and optionally --model) or --synthetic N")

    settings = FeatureSettings()
    if args.feature_classes:
        settings.params["featureClass"] = {c: None for c in args.feature_classes}
    summary = quality_study(manifest, args.out, settings, args.cache, args.label_convention, n_jobs=args.n_jobs,
                            progress=not args.quiet)
    families = pd.read_csv(args.out / "feature_families.csv")
    dice = pd.read_csv(args.out / "dice_summary.csv", index_col=0)
    print(f"\nDice (median over {summary['subjects']} subjects):")
    print(dice.round(3).to_string())
    print("\nfeature change per family (most sensitive first):")
    print(families.round(4).to_string(index=False))
    print(f"\n{time.perf_counter() - t0:.0f} s; written to {args.out} ({json.dumps(summary['failures'])[:200]})")


if __name__ == "__main__":
    main()
