"""TRIPOD+AI checklist (Collins et al., BMJ 2024;385:e078378): the items a run can document, filled
from the run; the rest "to be filled by the authors".

Numbering follows the published checklist (items 1–27, with sub-items); check the wording against the
official checklist before submission. The run documents data handling and analysis; it cannot know
the clinical context, dates, ethics, funding or the discussion.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from radfusion.evaluation import facts
from radfusion.evaluation.checklist import excluded_line, excluded_subjects
from radfusion.evaluation.rqs import FROM_RUN, PARTLY, TO_FILL
from radfusion.evaluation.run_folders import Run, group_frame, site_summary

#: (item, section, topic)
ITEMS = [
    ("1", "Title", "Title"), ("2", "Abstract", "Abstract"),
    ("3a", "Introduction", "Background: healthcare context and rationale"), ("3b", "Introduction", "Target population"),
    ("3c", "Introduction", "Known health inequalities"), ("4", "Introduction", "Objectives"),
    ("5a", "Methods", "Data: sources"), ("5b", "Methods", "Data: dates of collection"),
    ("6a", "Methods", "Participants: setting and centres"), ("6b", "Methods", "Participants: eligibility"),
    ("6c", "Methods", "Participants: treatments"), ("7", "Methods", "Data preparation"),
    ("8a", "Methods", "Outcome: definition"), ("8b", "Methods", "Outcome: assessment"),
    ("8c", "Methods", "Outcome: blinding to predictors"), ("9a", "Methods", "Predictors: choice"),
    ("9b", "Methods", "Predictors: definition and measurement"), ("9c", "Methods", "Predictors: assessors"),
    ("10", "Methods", "Sample size"), ("11", "Methods", "Missing data"),
    ("12a", "Methods", "Analysis: how the data were used"), ("12b", "Methods", "Analysis: predictor handling"),
    ("12c", "Methods", "Analysis: model type, building, tuning, internal validation"),
    ("12d", "Methods", "Analysis: heterogeneity across centres"), ("12e", "Methods", "Analysis: performance measures"),
    ("12f", "Methods", "Analysis: model updating"), ("12g", "Methods", "Analysis: how predictions were calculated"),
    ("13", "Methods", "Class imbalance"), ("14", "Methods", "Fairness"), ("15", "Methods", "Model output"),
    ("16", "Methods", "Training versus evaluation data"), ("17", "Methods", "Ethical approval"),
    ("18a", "Open science", "Funding"), ("18b", "Open science", "Conflicts of interest"),
    ("18c", "Open science", "Protocol"), ("18d", "Open science", "Registration"),
    ("18e", "Open science", "Data sharing"), ("18f", "Open science", "Code sharing"),
    ("19", "Patient and public involvement", "Patient and public involvement"),
    ("20a", "Results", "Participants: flow"), ("20b", "Results", "Participants: characteristics"),
    ("20c", "Results", "Development versus evaluation data"), ("21", "Results", "Participants and events per analysis"),
    ("22", "Results", "Model specification"), ("23a", "Results", "Performance with CIs"),
    ("23b", "Results", "Heterogeneity across centres"), ("24", "Results", "Model updating"),
    ("25", "Discussion", "Interpretation"), ("26", "Discussion", "Limitations"),
    ("27a", "Discussion", "Usability: poor-quality or missing input"), ("27b", "Discussion", "Usability: users"),
    ("27c", "Discussion", "Future research"),
]


def _counts(runs: list[Run], split: str) -> str:
    frame = group_frame(runs)
    parts = []
    for part in ("train", "val", split):
        sub = frame[frame.split == part].drop_duplicates("subject_id")
        if sub.empty or (part == split and part in ("train", "val")):
            continue
        bits = [f"{m} {int(sub[f'label_{m}'].notna().sum())} labelled / {int(sub[f'label_{m}'].sum())} positive"
                for m in runs[0].markers if f"label_{m}" in sub]
        if runs[0].has_survival:
            known = sub.os_days.notna() & sub.os_event.notna()
            bits.append(f"os {int(known.sum())} with follow-up / {int(sub.loc[known, 'os_event'].sum())} deaths")
        parts.append(f"{part}: {len(sub)} subjects ({'; '.join(bits)})")
    return " · ".join(parts)


def _model(run: Run) -> str:
    est = facts.get(run.config, "model.estimator._target_")
    chosen = facts.get(run.meta, "baseline.chosen")
    if est:
        return f"{run.mode}: {est}" + (f", hyperparameters chosen on the validation split: {chosen}" if chosen else "")
    fusion = facts.get(run.config, "model.fusion._target_") or facts.get(run.config, "model.fusion.name")
    encoder = facts.get(run.config, "model.encoder._target_") or facts.get(run.config, "model.encoder.name")
    bits = [b for b in (f"encoder {encoder}" if encoder else "", f"fusion {fusion}" if fusion else "") if b]
    return f"{run.mode} network" + (f" ({', '.join(bits)})" if bits else "") + "; full settings in config_resolved.yaml"


def tripod_items(runs: list[Run], rows: list[dict], split: str = "test", n_bootstrap: int = 2000,
                 threshold: float | str = 0.5) -> pd.DataFrame:
    """One row per TRIPOD+AI item: ``item, section, topic, status, value``."""
    first, frame = runs[0], group_frame(runs)
    pro = facts.processing(first)
    sites = site_summary(frame, split)
    outcomes = [*first.markers, *(["overall survival (os_days, os_event)"] if first.has_survival else [])]
    clinical = facts.clinical_columns(first)
    perf = []
    for r in rows:
        key = "auc" if r["kind"] == "marker" else "c_harrell"
        if np.isfinite(r.get(key, np.nan)):
            perf.append(f"{r['endpoint']} {'AUC' if key == 'auc' else 'Harrell C'} {r[key]:.3f} "
                        f"[{r.get(key + '_ci_low', np.nan):.3f}, {r.get(key + '_ci_high', np.nan):.3f}]")
    known = {
        "5a": (FROM_RUN, facts.cohort_line(first)),
        "6a": (PARTLY, f"{len(sites['train_sites'])} site(s) in training: {', '.join(sites['train_sites'])}"
               if sites["train_sites"] else "no site column"),
        "6b": (PARTLY, "exclusions by the pipeline: " + _excluded(runs)),
        "7": (FROM_RUN, "radiomics: " + facts.preprocessing_line(first)
              + (f"; ROI: {facts.roi_line(first)}" if facts.roi_line(first) else "")),
        "8a": (PARTLY, "outcomes predicted: " + ", ".join(outcomes)),
        "9a": (PARTLY, f"{first.meta.get('n_radiomics_model', facts.NOT_RECORDED)} radiomics features reach the model "
               f"(of {first.meta.get('n_radiomics_raw', '?')} extracted)"
               + (f"; clinical: {', '.join(clinical)}" if clinical else "")),
        "10": (PARTLY, "events per predictor (training): " + facts.epv_line(runs)),
        "11": (FROM_RUN, f"predictors: imputation {pro.get('impute', facts.NOT_RECORDED)}"
               f"{' with missing-value indicators' if pro.get('missing_indicators') else ''}, fitted on the training "
               "split; unknown labels masked (not imputed), excluded from the metrics"),
        "12a": (FROM_RUN, f"{facts.replicate_label(runs)}; split settings {facts.split_settings(first) or '?'}"),
        "12b": (FROM_RUN, f"in-fold processing: {pro or facts.NOT_RECORDED}"),
        "12c": (FROM_RUN, _model(first)),
        "12d": (PARTLY, "ComBat by site (training split)" if pro.get("combat") else "no harmonisation across sites"),
        "12e": (FROM_RUN, "AUC / Harrell's and Uno's C with bootstrap CIs, td-AUC, IBS, calibration slope and "
                "intercept, Brier score, DeLong and paired-bootstrap tests with Holm correction (this report)"),
        "13": (PARTLY, "class counts in 20a/21; class weighting: "
               + str(facts.get(first.config, "model.estimator.class_weight") or facts.NOT_RECORDED)),
        "15": (FROM_RUN, "probabilities per marker / a Cox risk score; "
               + ("Youden threshold fitted on training" if threshold == "youden" else f"threshold {threshold}")),
        "18f": (PARTLY, "radfusion (open source); " + (f"git {facts.get(first.manifest, 'git.commit', '?')[:10]}"
                                                       if first.manifest else "no manifest.json")),
        "20a": (FROM_RUN, _counts(runs, split) + f"; excluded: {_excluded(runs)}"),
        "21": (FROM_RUN, _counts(runs, split)),
        "22": (PARTLY, "config_resolved.yaml and the run's model files (weights); no closed-form equation"),
        "23a": (FROM_RUN, "; ".join(perf) or "no finite estimate"),
    }
    out = []
    for item, section, topic in ITEMS:
        status, value = known.get(item, (TO_FILL, ""))
        out.append({"item": item, "section": section, "topic": topic, "status": status, "value": value})
    return pd.DataFrame(out)


def _excluded(runs: list[Run]) -> str:
    return excluded_line(excluded_subjects(runs), limit=3, width=60)
