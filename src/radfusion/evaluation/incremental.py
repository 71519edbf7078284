"""Incremental value of imaging over the clinical-only model: "does imaging add anything beyond age?".

For every endpoint, every group that is not clinical-only is compared with each clinical-only group
(mode ``clinical``, e.g. ``idh_clinical`` / ``survival_clinical``; or the group named by ``reference``)
on the subjects both predicted, with the pooled predictions of :mod:`radfusion.evaluation.analysis`
(a subject's test predictions averaged over the group's seeds / repeats; CV folds concatenated):

- markers: ΔAUC = AUC(model) − AUC(clinical), two-sided DeLong test and its Wald CI
  (:func:`radfusion.evaluation.delong.delong_test`);
- survival: ΔC = Harrell's C(model) − C(clinical) on the training-median-centred risks, with a
  paired subject bootstrap (the same resampled subjects for both models): percentile CI and the
  bootstrap z-test p (:func:`radfusion.evaluation.delong.bootstrap_p`).

``with_clinical`` says whether the model itself uses clinical covariates (``model.clinical`` of its
run config): then Δ is what imaging adds *to* the clinic; without, Δ compares imaging *with* the clinic.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from radfusion.evaluation.analysis import Evaluation, Settings, order_groups
from radfusion.evaluation.delong import bootstrap_p, delong_test
from radfusion.evaluation.run_folders import Run
from radfusion.evaluation.survival import bootstrap_counts, concordance_kernel, harrell_c, resampled_concordance

#: Columns of the incremental-value table (``incremental.csv``).
COLUMNS = ["endpoint", "group", "mode", "with_clinical", "reference", "metric", "value", "value_reference",
           "delta", "ci_low", "ci_high", "p", "test", "n_paired", "n_pos"]
#: What the report says above the table.
INCREMENTAL_NOTE = (
    "Each model against the clinical-only model on the subjects both predicted (pooled test predictions): "
    "Δ = model − clinical; AUC by DeLong (Wald CI), Harrell's C by a paired subject bootstrap (percentile CI). "
    "*with clinical* = the model itself takes the clinical covariates, so Δ is what imaging adds to them. "
    "Full numbers: `incremental.csv`.")
#: Header of its Markdown table in the report.
HEADER = ["endpoint", "model", "with clinical", "clinical-only model", "metric", "model", "clinical",
          "Δ [95 % CI]", "p", "n"]


def clinical_groups(groups: dict[str, list[Run]], reference: str | None = None) -> list[str]:
    """The clinical-only groups: ``reference`` if given, else every group whose runs have mode ``clinical``."""
    if reference is not None:
        if reference not in groups:
            raise ValueError(f"clinical reference {reference!r} is not one of the groups {sorted(groups)}")
        return [reference]
    return [n for n in order_groups(groups) if groups[n][0].mode == "clinical"]


def uses_clinical(runs: list[Run]) -> bool:
    """Whether a group's model takes clinical covariates (its first run's ``model.clinical``)."""
    model = (runs[0].config or {}).get("model", {}) or {}
    return bool(model.get("clinical")) or runs[0].mode == "clinical"


def delta_auc(model: pd.DataFrame, clinical: pd.DataFrame, alpha: float = 0.05) -> dict:
    """ΔAUC (model − clinical) with DeLong on the subjects of both pooled tables (``subject_id, prob, label``)."""
    both = model.merge(clinical, on="subject_id", suffixes=("", "_ref"))
    row = {"metric": "AUC", "test": "DeLong", "n_paired": len(both), "n_pos": int(both["label"].sum())}
    if (both["label"] != both["label_ref"]).any():
        who = both.loc[both["label"] != both["label_ref"], "subject_id"].tolist()[:3]
        raise ValueError(f"labels differ for subjects {who}")
    if both["label"].nunique() < 2:
        return row
    dl = delong_test(both["label"], both["prob"], both["prob_ref"], alpha=alpha)
    row.update(value=dl["auc_a"], value_reference=dl["auc_b"], delta=dl["delta"], ci_low=dl["ci_low"],
               ci_high=dl["ci_high"], p=dl["p"])
    return row


def delta_cindex(model: pd.DataFrame, clinical: pd.DataFrame, n_boot: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> dict:
    """ΔC (Harrell; model − clinical) with a paired subject bootstrap, on the subjects of both pooled
    tables (``subject_id, time, event, risk_c``)."""
    both = model.merge(clinical[["subject_id", "risk_c"]], on="subject_id", suffixes=("", "_ref"))
    both = both[both["time"].notna() & both["event"].notna()]
    row = {"metric": "Harrell C", "test": "paired bootstrap", "n_paired": len(both), "n_pos": int(both["event"].sum())}
    if len(both) < 2 or both["event"].sum() < 1:
        return row
    t, e = both["time"].to_numpy(float), both["event"].to_numpy(float)
    ra, rb = both["risk_c"].to_numpy(float), both["risk_c_ref"].to_numpy(float)
    ca, cb = harrell_c(t, e, ra), harrell_c(t, e, rb)
    row.update(value=ca, value_reference=cb, delta=ca - cb)
    counts = bootstrap_counts(len(t), n_boot, np.random.default_rng(seed))
    deltas = (resampled_concordance(*concordance_kernel(t, e, ra), counts)
              - resampled_concordance(*concordance_kernel(t, e, rb), counts))
    deltas = deltas[np.isfinite(deltas)]
    if len(deltas):
        lo, hi = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
        row.update(ci_low=float(lo), ci_high=float(hi), p=bootstrap_p(ca - cb, deltas))
    return row


def incremental_value(ev: Evaluation, groups: dict[str, list[Run]], s: Settings,
                      reference: str | None = None) -> pd.DataFrame:
    """One row per endpoint × model × clinical-only model (columns :data:`COLUMNS`); empty without a
    clinical-only group. Uses the pooled predictions ``ev.curves`` that :func:`evaluate_groups` computed."""
    refs = clinical_groups(groups, reference)
    rows = []
    endpoints = [(m, "marker", cur) for m, cur in (ev.curves.get("markers") or {}).items()]
    if ev.curves.get("survival"):
        endpoints.append(("os", "survival", ev.curves["survival"]))
    for endpoint, kind, curves in endpoints:
        for ref in (r for r in refs if r in curves):
            for name in (n for n in order_groups(groups) if n in curves and n not in refs):
                base = {"endpoint": endpoint, "group": name, "mode": groups[name][0].mode,
                        "with_clinical": uses_clinical(groups[name]), "reference": ref}
                a, b = curves[name]["pooled"], curves[ref]["pooled"]
                try:
                    res = (delta_auc(a, b, s.alpha) if kind == "marker"
                           else delta_cindex(a, b, s.n_bootstrap, s.alpha, s.seed))
                except ValueError as err:
                    res = {"test": f"not compared: {err}"}
                rows.append({**base, **res})
    return pd.DataFrame(rows, columns=COLUMNS)


def _f(v, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def markdown_rows(table: pd.DataFrame) -> list[list[str]]:
    """Rows of the report's table (header :data:`HEADER`)."""
    out = []
    for r in table.to_dict("records"):
        delta = (f"{r['delta']:+.3f} [{_f(r['ci_low'])}, {_f(r['ci_high'])}]"
                 if isinstance(r.get("delta"), float) and math.isfinite(r["delta"]) else "–")
        p = r.get("p")
        p_text = "–" if p is None or not np.isfinite(p) else (f"{p:.3g}" if p >= 1e-4 else "<1e-4")
        out.append([r["endpoint"], r["group"], "yes" if r["with_clinical"] else "no", r["reference"], r["metric"],
                    _f(r.get("value")), _f(r.get("value_reference")), delta, f"{p_text} ({r['test']})",
                    str(int(r["n_paired"])) if np.isfinite(r.get("n_paired", np.nan)) else "–"])
    return out


def format_incremental(table: pd.DataFrame) -> str:
    """The printed table (evaluate.py), or an empty string when there is nothing to compare."""
    if table.empty:
        return ""
    rows = [HEADER, *markdown_rows(table)]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    title = "incremental value over the clinical-only model (model − clinical; on the same subjects):"
    return "\n".join([title, *lines])
