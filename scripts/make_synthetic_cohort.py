"""Generate the synthetic BraTS-like cohort, print what it holds, and optionally measure how hard it is.

    python scripts/make_synthetic_cohort.py --out data/synthetic/demo --n-subjects 100 \
        --shape 96 96 96 --seed 0 [--effect-scale 1.0] [--n-timepoints 2] [--overwrite] \
        [--measure [--cache /tmp/radfusion_cache] [--n-jobs 1]]

``--measure`` extracts the default habitat radiomics (configs/features/default.yaml: 1,940 features)
and prints the cross-validated AUC of an L2 logistic regression (median imputation, standardising
and the model fitted inside each training fold; 5-fold stratified CV repeated 5 times) for IDH, MGMT
and codeletion, and, with two timepoints, for response from the baseline features, the follow-up
features and their difference. This is how the default ``effect_scale`` was calibrated (docs/synthetic.md).

The cohort exercises the machinery; it proves nothing clinical. See radfusion.synthetic.generator for
the planted effects and ground_truth.csv / params.json beside the images for their values.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.synthetic.generator import generate_cohort


def _count(series: pd.Series) -> str:
    pos, neg, unknown = int((series == 1).sum()), int((series == 0).sum()), int(series.isna().sum())
    return f"{pos} positive / {neg} negative / {unknown} unknown"


def cv_auc(X: pd.DataFrame, y: np.ndarray, C: float = 0.05, repeats: int = 5) -> tuple[float, float]:
    """Mean and SD over folds of the test AUC of an in-fold imputed, standardised L2 logistic regression.

    Args:
        X: features, one row per subject (NaN allowed: imputed by the training-fold median).
        y: binary labels (0/1) aligned with ``X``.
        C: inverse L2 strength (0.05 suits ~2,000 features and ~100 subjects).
        repeats: repetitions of the stratified 5-fold split.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import RepeatedStratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    values = X.replace([np.inf, -np.inf], np.nan)
    values = values.loc[:, values.notna().any()].to_numpy()
    aucs = []
    folds = RepeatedStratifiedKFold(n_splits=5, n_repeats=repeats, random_state=0)
    for train, test in folds.split(values, y):
        model = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                              LogisticRegression(C=C, max_iter=5000))
        model.fit(values[train], y[train])
        aucs.append(roc_auc_score(y[test], model.predict_proba(values[test])[:, 1]))
    return float(np.mean(aucs)), float(np.std(aucs))


def _scan_features(manifest: Path, cache: Path, n_jobs: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Default habitat radiomics of every scan and the reader's clinical table (same index).

    The cohort reader names the scans of a longitudinal manifest ``<subject_id>_tp<k>`` and keeps the
    subject in ``patient_id``; a cross-sectional manifest keeps its ids.
    """
    from radfusion.cohort.readers import read_manifest
    from radfusion.radiomics.extract import extract_cohort
    from radfusion.radiomics.settings import FeatureSettings

    cohort = read_manifest(manifest)
    start = time.perf_counter()
    features = extract_cohort(cohort, FeatureSettings(), cache, n_jobs=n_jobs, progress=True)
    print(f"features: {features.shape[1]} per scan, {len(features)} scans, {time.perf_counter() - start:.0f} s")
    if features.attrs.get("failures"):
        print(f"extraction failures (excluded): {features.attrs['failures']}")
    clinical = cohort.clinical.loc[features.index].copy()
    clinical["timepoint"] = pd.to_numeric(clinical["timepoint"]).fillna(0).astype(int)
    return features, clinical


def measure(manifest: Path, cache: Path, n_jobs: int = 1) -> pd.DataFrame:
    """Print and return the cross-validated AUC per endpoint (see the module docstring)."""
    features, table = _scan_features(manifest, cache, n_jobs)
    truth = pd.read_csv(manifest.parent / "ground_truth.csv", dtype={"subject_id": str})
    base_table = table[table["timepoint"] == 0]
    base = features.loc[base_table.index]
    idh_true = truth[truth["timepoint"] == 0].set_index("subject_id").loc[base_table["patient_id"], "idh"].to_numpy()
    rows = []
    for column, within in (("idh", None), ("mgmt", None), ("codeletion", None), ("codeletion", 1), ("mgmt", 0)):
        known = base_table[column].notna().to_numpy()
        if within is not None:
            known &= idh_true == within
        y = base_table[column].to_numpy()[known].astype(int)
        if len(set(y)) < 2 or min(np.bincount(y)) < 5:
            continue
        mean, sd = cv_auc(base[known], y)
        group = "all" if within is None else f"IDH-{'mutant' if within else 'wildtype'} only"
        rows.append(dict(endpoint=column, subjects=group, n=len(y), positives=int(y.sum()), auc=mean, sd=sd))
    if "response" in table and (table["timepoint"] == 1).any():
        per_tp = {t: features.loc[table.index[table["timepoint"] == t]].set_axis(
            table.loc[table["timepoint"] == t, "patient_id"]) for t in (0, 1)}
        ids = per_tp[0].index.intersection(per_tp[1].index)
        x0, x1 = per_tp[0].loc[ids], per_tp[1].loc[ids]
        y = table.groupby("patient_id")["response"].first().loc[ids].to_numpy().astype(int)
        numeric = [c for c in x0.columns if not c.endswith("_empty")]
        delta = x1[numeric] - x0[numeric]
        for name, X in (("baseline", x0), ("follow-up", x1),
                        ("baseline + follow-up", pd.concat([x0.add_suffix("@0"), x1.add_suffix("@1")], axis=1)),
                        ("delta (follow-up - baseline)", delta)):
            mean, sd = cv_auc(X, y)
            rows.append(dict(endpoint="response", subjects=name, n=len(y), positives=int(y.sum()), auc=mean, sd=sd))
    result = pd.DataFrame(rows)
    print("\ncross-validated L2 logistic regression on the default habitat radiomics (5x repeated 5-fold):")
    print(result.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return result


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
    parser.add_argument("--effect-scale", type=float, default=1.0,
                        help="strength of the planted effects (0 none, 1 default, 3 nearly separable)")
    parser.add_argument("--n-timepoints", type=int, default=1, choices=(1, 2),
                        help="2 adds a follow-up scan per subject and a response label")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--measure", action="store_true",
                        help="extract the default radiomics and print cross-validated AUCs (minutes)")
    parser.add_argument("--cache", default="cache/features", help="feature cache folder for --measure")
    parser.add_argument("--n-jobs", type=int, default=1, help="extraction processes for --measure")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    manifest = generate_cohort(args.out, n_subjects=args.n_subjects, shape=tuple(args.shape),
                               spacing=args.spacing, n_sites=args.n_sites, seed=args.seed,
                               missing_rate=args.missing_rate, effect_scale=args.effect_scale,
                               n_timepoints=args.n_timepoints, overwrite=args.overwrite,
                               progress=not args.quiet)
    elapsed = time.perf_counter() - start
    table = pd.read_csv(manifest)
    truth = pd.read_csv(manifest.parent / "ground_truth.csv")
    subjects = table[table["timepoint"] == 0]
    print(f"manifest: {manifest}  ({len(subjects)} subjects, {len(table)} scans, {elapsed:.1f} s)")
    print(f"sites: {subjects['site'].value_counts().sort_index().to_dict()}")
    for column in ("idh", "mgmt", "codeletion"):
        print(f"{column:<11} (manifest): {_count(subjects[column])}")
    print(f"events: {int(subjects['os_event'].sum())} deaths / {int((subjects['os_event'] == 0).sum())} censored; "
          f"median os_days {subjects['os_days'].median():.0f}")
    base = truth[truth["timepoint"] == 0]
    empty_et = base["vol_et_mm3"] == 0
    n_mut, n_wt = (int((empty_et & (base["idh"] == v)).sum()) for v in (1, 0))
    print(f"empty habitats at baseline: ET {int(empty_et.sum())} (IDH-mutant {n_mut}, IDH-wildtype {n_wt}), "
          f"NCR {int((base['vol_ncr_mm3'] == 0).sum())}")
    print("mean ET / NCR fraction of the whole tumour: "
          + ", ".join(f"{name} {base.loc[base['idh'] == v, 'et_fraction'].mean():.3f} / "
                      f"{base.loc[base['idh'] == v, 'ncr_fraction'].mean():.3f}"
                      for name, v in (("IDH-wt", 0), ("IDH-mut", 1))))
    if args.n_timepoints == 2:
        vol = truth.pivot(index="subject_id", columns="timepoint", values="vol_wt_mm3")
        change = np.log(vol[1] / vol[0])
        follow = truth[truth["timepoint"] == 1].set_index("subject_id").loc[vol.index]
        groups = {"responders": (follow["response"] == 1) & (follow["pseudoprogression"] == 0),
                  "pseudoprogression": follow["pseudoprogression"] == 1, "non-responders": follow["response"] == 0}
        print("median log whole-tumour volume change: "
              + ", ".join(f"{k} {change[m].median():+.2f} (n={int(m.sum())})" for k, m in groups.items()))
    if args.measure:
        measure(manifest, Path(args.cache), args.n_jobs)


if __name__ == "__main__":
    main()
