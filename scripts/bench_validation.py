"""Fold-wise AUC / C-index with and without ComBat and selection, on classical models (no deep net).

    python scripts/bench_validation.py                                # default synthetic cohort
    python scripts/bench_validation.py --manifest M.csv --features cache/features/<key>/features.parquet

Runs the in-fold FeatureProcessor under several settings on the same folds (5-fold stratified CV and
leave-one-site-out) and prints one table: IDH AUC (L2 logistic regression), overall-survival
C-index (elastic-net Cox at a fixed penalty) and the site classifier's AUC (lower = less site
information left), each as mean ± SD over folds, plus the seconds per setting. The synthetic cohort
exercises the machinery; its numbers prove nothing clinical.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from radfusion.cohort.readers import load_cohort
from radfusion.data.splits import make_folds, select_fold
from radfusion.features.processor import make_feature_processor

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = {
    "impute+scale": {},
    "+ComBat(age)": {"combat": True, "combat_covariates": ["age"]},
    "+corr0.95+select32": {"corr_threshold": 0.95, "selector": "SELECT", "n_features": 32},
    "+ComBat+corr+select32": {"combat": True, "combat_covariates": ["age"], "corr_threshold": 0.95,
                              "selector": "SELECT", "n_features": 32},
}


def _features(args, cohort) -> pd.DataFrame:
    if args.features:
        return pd.read_parquet(args.features)
    from omegaconf import OmegaConf

    from radfusion.radiomics.extract import extract_cohort
    from radfusion.radiomics.settings import FeatureSettings

    settings = FeatureSettings.from_config(OmegaConf.to_container(OmegaConf.load(args.features_config), resolve=True))
    return extract_cohort(cohort, settings, ROOT / "cache" / "features", n_jobs=args.n_jobs, progress=True)


def _fold_scores(task: str, cfg: dict, X: pd.DataFrame, clinical: pd.DataFrame, fold: dict) -> float:
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.metrics import concordance_index_censored
    from sksurv.util import Surv

    train = fold["train"] + fold["val"]  # no early stopping here: val joins training
    test = fold["test"]
    cfg = {k: (("l1_logistic" if task == "idh" else "coxnet") if v == "SELECT" else v) for k, v in cfg.items()}
    if task == "site":
        cfg = {k: v for k, v in cfg.items() if k not in ("selector", "n_features")}
    proc = make_feature_processor(cfg)
    ctr, cte = clinical.loc[train], clinical.loc[test]
    if task == "idh":
        y = ctr.idh.to_numpy(float)
    elif task == "os":
        y = Surv.from_arrays(ctr.os_event.astype(bool), ctr.os_days.astype(float))
    else:
        y = None
    Ztr = proc.fit_transform(X.loc[train], y, ctr.site, ctr)
    Zte = proc.transform(X.loc[test], cte.site, cte)
    if task == "idh":
        known = ~np.isnan(y)
        model = LogisticRegression(C=0.05, max_iter=5000).fit(Ztr[known], y[known])
        yt = cte.idh.to_numpy(float)
        keep = ~np.isnan(yt)
        return roc_auc_score(yt[keep], model.predict_proba(Zte[keep])[:, 1])
    if task == "os":
        model = CoxnetSurvivalAnalysis(l1_ratio=0.5, alphas=[0.1], fit_baseline_model=False).fit(Ztr, y)
        return concordance_index_censored(cte.os_event.astype(bool).to_numpy(), cte.os_days.to_numpy(float),
                                          model.predict(Zte))[0]
    model = LogisticRegression(C=0.05, max_iter=5000).fit(Ztr, ctr.site.astype(str))
    return roc_auc_score(cte.site.astype(str), model.predict_proba(Zte), multi_class="ovr", labels=model.classes_)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=str(ROOT / "data/synthetic/n100_96_seed0/manifest.csv"))
    parser.add_argument("--features", help="features.parquet (default: extract with --features-config, cached)")
    parser.add_argument("--features-config", default=str(ROOT / "configs/features/default.yaml"))
    parser.add_argument("--n-folds", type=int, default=5)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")

    cohort = load_cohort("manifest", args.manifest)
    X = _features(args, cohort)
    clinical = cohort.clinical.loc[X.index]
    ids = list(X.index)
    protocols = {
        f"{args.n_folds}-fold": make_folds(ids, clinical.idh.to_numpy(float), strategy="kfold", n_folds=args.n_folds,
                                           val_fraction=0.0, seed=args.seed),
        "leave-site-out": make_folds(ids, clinical.idh.to_numpy(float), sites=clinical.site.astype(str).tolist(),
                                     strategy="site", val_fraction=0.0, seed=args.seed),
    }
    rows = []
    for pname, plan in protocols.items():
        folds = [select_fold(plan, k) for k in range(plan["n_folds"])]
        for sname, cfg in SETTINGS.items():
            t0 = time.perf_counter()
            row = {"protocol": pname, "setting": sname}
            for task in ("idh", "os", "site"):
                if task == "site" and pname == "leave-site-out":
                    continue  # the held-out site is unknown to the site classifier
                if task == "site" and "select" in sname:
                    continue
                scores = [_fold_scores(task, cfg, X, clinical, f) for f in folds]
                row[f"{task}"] = f"{np.mean(scores):.3f} ± {np.std(scores, ddof=1):.3f}"
                row[f"{task}_folds"] = " ".join(f"{s:.2f}" for s in scores)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows)
    print(f"\n{len(X)} subjects, {X.shape[1]} features; IDH = AUC, os = Harrell's C, site = one-vs-rest AUC")
    print(table.drop(columns=[c for c in table.columns if c.endswith("_folds")]).to_string(index=False))
    return table


if __name__ == "__main__":
    main()
