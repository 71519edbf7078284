"""Generate the synthetic BraTS-like cohort and print what it holds.

    python scripts/make_synthetic_cohort.py --out data/synthetic/demo --n-subjects 100 \
        --shape 96 96 96 --seed 0 [--overwrite]

The cohort exercises the machinery; it proves nothing clinical. See radfusion.data.synthetic for
the planted effects and ground_truth.csv / params.json beside the images for their values.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from radfusion.data.synthetic import generate_cohort


def _count(series: pd.Series) -> str:
    pos, neg, unknown = int((series == 1).sum()), int((series == 0).sum()), int(series.isna().sum())
    return f"{pos} positive / {neg} negative / {unknown} unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/synthetic/demo", help="output folder")
    parser.add_argument("--n-subjects", type=int, default=100)
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 96], metavar=("X", "Y", "Z"),
                        help="grid size in voxels, e.g. 240 240 155 for BraTS size")
    parser.add_argument("--spacing", type=float, default=1.0, help="isotropic voxel size (mm)")
    parser.add_argument("--n-sites", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--missing-rate", type=float, default=0.1,
                        help="fraction of MGMT / codeletion labels left unknown (half that for IDH)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    manifest = generate_cohort(args.out, n_subjects=args.n_subjects, shape=tuple(args.shape),
                               spacing=args.spacing, n_sites=args.n_sites, seed=args.seed,
                               missing_rate=args.missing_rate, overwrite=args.overwrite,
                               progress=not args.quiet)
    elapsed = time.perf_counter() - start
    table = pd.read_csv(manifest)
    truth = pd.read_csv(manifest.parent / "ground_truth.csv")
    print(f"manifest: {manifest}  ({len(table)} subjects, {elapsed:.1f} s)")
    print(f"sites: {table['site'].value_counts().sort_index().to_dict()}")
    for column in ("idh", "mgmt", "codeletion"):
        print(f"{column:<11} (manifest): {_count(table[column])}")
    print(f"events: {int(table['os_event'].sum())} deaths / {int((table['os_event'] == 0).sum())} censored; "
          f"median os_days {table['os_days'].median():.0f}")
    empty_et = truth["vol_et_mm3"] == 0
    empty_et_mut = int((empty_et & (truth["idh"] == 1)).sum())
    print(f"empty habitats: ET {int(empty_et.sum())} (of which IDH-mutant {empty_et_mut}), "
          f"NCR {int((truth['vol_ncr_mm3'] == 0).sum())}")
    print("mean ET fraction of the whole tumour: "
          + ", ".join(f"{name} {truth.loc[truth['idh'] == v, 'et_fraction'].mean():.3f}"
                      for name, v in (("IDH-wt", 0), ("IDH-mut", 1))))


if __name__ == "__main__":
    main()
