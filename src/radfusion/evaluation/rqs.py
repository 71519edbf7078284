"""Radiomics Quality Score (Lambin et al., Nat Rev Clin Oncol 2017;14:749): the 16 items with their
official point ranges, scored where the run can know them, "to be filled by the authors" where not.

The total counts only the points the run documents (items scored "from the run", and the scored parts
of partly documented items); what the authors must add is listed with the points still open, so the
total is a floor, never a claim about the study. Every basis names the setting it came from.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from radfusion.evaluation import facts
from radfusion.evaluation.run_folders import Run, group_frame, site_summary

FROM_RUN, PARTLY, TO_FILL = "from the run", "partly from the run", "to be filled by the authors"
MAX_TOTAL = 36

#: (number, item, official points, minimum, maximum)
ITEMS = [
    (1, "Image protocol quality", "+1 protocols well documented; +1 public protocol used", 0, 2),
    (2, "Multiple segmentations", "+1 features' robustness to segmentation variability", 0, 1),
    (3, "Phantom study on all scanners", "+1 features' robustness to scanner variability", 0, 1),
    (4, "Imaging at multiple time points", "+1 features' robustness to temporal variability", 0, 1),
    (5, "Feature reduction or adjustment for multiple testing", "−3 if neither; +3 if either", -3, 3),
    (6, "Multivariable analysis with non-radiomics features", "+1", 0, 1),
    (7, "Detect and discuss biological correlates", "+1", 0, 1),
    (8, "Cut-off analyses", "+1 risk groups by the median or a published cut-off", 0, 1),
    (9, "Discrimination statistics", "+1 statistic and its significance; +1 resampling", 0, 2),
    (10, "Calibration statistics", "+1 statistic and its significance; +1 resampling", 0, 2),
    (11, "Prospective study registered in a trial database", "+7", 0, 7),
    (12, "Validation", "−5 none; +2 same institute; +3 another institute; +4 two datasets; +5 three or more", -5, 5),
    (13, "Comparison to 'gold standard'", "+2", 0, 2),
    (14, "Potential clinical utility", "+2 (e.g. decision-curve analysis)", 0, 2),
    (15, "Cost-effectiveness analysis", "+1", 0, 1),
    (16, "Open science and data", "+1 each: scans, segmentations, code, representative features open", 0, 4),
]


def _fill(why: str) -> tuple[float, str, str]:
    return np.nan, TO_FILL, why


def _feature_reduction(run: Run) -> tuple[float, str, str]:
    if facts.uses_radiomics(run) is False:
        return _fill("learned image embedding: no handcrafted features to reduce")
    steps = facts.feature_reduction(run)
    if steps:
        return 3, FROM_RUN, "in-fold reduction (fitted on each training split): " + "; ".join(steps)
    if not run.config and not run.manifest:
        return _fill("the run records no processing settings")
    return -3, FROM_RUN, (f"no selection, filter or sparse penalty recorded (data.processing.selector, corr_threshold, "
                          f"min_icc unset): {run.meta.get('n_radiomics_model', '?')} features reach the model")


def _clinical(run: Run) -> tuple[float, str, str]:
    cols = facts.clinical_columns(run)
    if cols is None:
        return _fill("model.clinical not recorded")
    if cols:
        return 1, FROM_RUN, f"clinical covariates in the model: {', '.join(cols)} (model.clinical)"
    return 0, FROM_RUN, "radiomics / image features only (model.clinical is empty)"


def _cut_off(runs: list[Run], threshold) -> tuple[float, str, str]:
    if any(r.has_survival for r in runs):
        return 1, FROM_RUN, "risk groups split at each model's training-median risk (KM, log-rank; this report)"
    if threshold == "youden":
        return 1, FROM_RUN, "probability cut-off (Youden) fitted on the training split (this report)"
    return _fill(f"fixed probability threshold {threshold}; no cut-off analysis")


def _discrimination(rows: list[dict], n_boot: int) -> tuple[float, str, str]:
    stats = [("AUC", "auc") if r["kind"] == "marker" else ("Harrell C", "c_harrell") for r in rows]
    ok = [name for (name, key), r in zip(stats, rows, strict=True) if np.isfinite(r.get(key, np.nan))]
    if not ok:
        return 0, FROM_RUN, "no discrimination statistic could be computed"
    with_ci = [r for (_, key), r in zip(stats, rows, strict=True) if np.isfinite(r.get(f"{key}_ci_low", np.nan))]
    score = 1 + (n_boot > 0 and bool(with_ci))
    return score, FROM_RUN, (f"{', '.join(sorted(set(ok)))} with {n_boot}-resample bootstrap 95 % CIs"
                             if score == 2 else f"{', '.join(sorted(set(ok)))} without resampling")


def _calibration(rows: list[dict]) -> tuple[float, str, str]:
    marker = [r for r in rows if r["kind"] == "marker" and np.isfinite(r.get("cal_slope", np.nan))]
    if not marker and any(r["kind"] == "marker" for r in rows):
        n = ", ".join(f"{r['endpoint']} n={r['n']}" for r in rows if r["kind"] == "marker")
        return 0, FROM_RUN, f"calibration slope not estimable ({n}: one class or perfectly separated)"
    if not marker:
        return _fill("no calibration statistic for survival predictions in this report")
    boot = all(np.isfinite(r.get("cal_slope_ci_low", np.nan)) for r in marker)
    small = [r["endpoint"] for r in marker if isinstance(r.get("cal_warning"), str) and r["cal_warning"]]
    note = f"; too few subjects/events for stable calibration: {', '.join(small)}" if small else ""
    return 1 + boot, FROM_RUN, ("calibration slope and intercept (logistic recalibration)"
                                + (" with bootstrap CIs" if boot else "") + note)


def _validation(runs: list[Run], split: str) -> tuple[float, str, str]:
    frame = group_frame(runs)
    external = [r for r in runs if facts.is_external(r)]
    if external:
        cohorts = {facts.get(r.manifest, "cohort.content_sha1") or facts.cohort_line(r) for r in external}
        score = {1: 3, 2: 4}.get(len(cohorts), 5)
        return score, FROM_RUN, f"external: predict run(s) on {len(cohorts)} other cohort(s) (manifest kind predict)"
    if not (frame.split == split).any():
        return -5, FROM_RUN, f"no {split} rows: no validation"
    sites = site_summary(frame, split)
    if sites["unseen"] and len(sites["unseen"]) == len(sites["test_sites"]):
        return 3, FROM_RUN, f"{split} sites {sites['unseen']} held out of training (other institutes)"
    design = "cross-validation" if frame.fold.nunique() > 1 else "hold-out split"
    return 2, FROM_RUN, (f"internal {design} on the same cohort (same institutes); some raters score "
                         "resampling-only validation as missing")


def _open_science(run: Run) -> tuple[float, str, str]:
    source = facts.cohort_block(run).get("source")
    parts, score = [], 0
    code = run.manifest.get("git", {}).get("commit") if run.manifest else None
    if run.config or run.manifest:
        score += 1
        parts.append("code: radfusion (open source) + resolved config" + (f", commit {code[:10]}" if code else ""))
    if source in facts.PUBLIC_SOURCES:
        score += 2
        parts.append(f"scans and expert segmentations: public {source} collection")
    elif facts.is_synthetic(run):
        parts.append("scans / segmentations: synthetic phantoms, no patient data (0)")
    else:
        parts.append("scans and segmentations: to be filled")
    parts.append("representative features open: to be filled")
    return score, PARTLY, "; ".join(parts)


def score_rqs(runs: list[Run], rows: list[dict], split: str = "test", n_bootstrap: int = 2000,
              threshold: float | str = 0.5, decision_curve: bool = False) -> pd.DataFrame:
    """The 16 RQS items of one group of runs: ``item, name, points, min, max, score, status, basis``.

    ``rows``: the group's rows of :attr:`Evaluation.table`; ``decision_curve``: the report drew one.
    """
    first = runs[0]
    scored = {
        1: _fill("acquisition protocol: outside what the run records"),
        2: ((1, FROM_RUN, f"stability filter ICC ≥ {facts.processing(first)['min_icc']} from a segmentation-"
             "perturbation table") if facts.processing(first).get("min_icc")
            else _fill("no ICC filter recorded (data.processing.min_icc); add it if segmentations were repeated")),
        3: _fill("phantom study: outside what the run records"),
        4: _fill("test–retest / multiple time points: outside what the run records"),
        5: _feature_reduction(first), 6: _clinical(first),
        7: _fill("biological correlates: the authors' discussion"),
        8: _cut_off(runs, threshold), 9: _discrimination(rows, n_bootstrap), 10: _calibration(rows),
        11: _fill("prospective registration: outside what the run records"),
        12: _validation(runs, split),
        13: _fill("comparison with the clinical gold standard: the authors' analysis"),
        14: ((2, FROM_RUN, "decision-curve analysis (net benefit; this report)") if decision_curve
             else _fill("no decision-curve analysis in this report")),
        15: _fill("cost-effectiveness: outside what the run records"),
        16: _open_science(first),
    }
    return pd.DataFrame([{"item": k, "name": name, "points": pts, "min": lo, "max": hi, "score": scored[k][0],
                          "status": scored[k][1], "basis": scored[k][2]} for k, name, pts, lo, hi in ITEMS])


def rqs_total(table: pd.DataFrame) -> dict:
    """Total of the documented points, the items counted, and the items (and points) left to the authors."""
    counted = table[table.status != TO_FILL]
    to_fill = table[table.status == TO_FILL]
    open_points = int(to_fill["max"].sum()) + int((counted[counted.status == PARTLY]["max"]
                                                   - counted[counted.status == PARTLY]["score"]).sum())
    return {"total": int(counted.score.sum()), "max": MAX_TOTAL, "counted": counted.item.tolist(),
            "partly": counted.loc[counted.status == PARTLY, "item"].tolist(), "to_fill": to_fill.item.tolist(),
            "open_points": open_points}


def total_line(table: pd.DataFrame) -> str:
    t = rqs_total(table)
    partly = f" ({', '.join(map(str, t['partly']))} partly)" if t["partly"] else ""
    return (f"RQS documented by the run: {t['total']} / {t['max']} from items {', '.join(map(str, t['counted']))}"
            f"{partly}; to be filled by the authors: items {', '.join(map(str, t['to_fill']))}"
            f"{' and the open parts of ' + ', '.join(map(str, t['partly'])) if t['partly'] else ''} "
            f"(up to {t['open_points']} more points)")
