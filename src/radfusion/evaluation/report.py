"""The comparison report: ``reports/<name>/`` with report.md, report.html, PNGs and CSV tables."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.evaluation.analysis import Evaluation, Settings, order_groups
from radfusion.evaluation.checklist import checklist, config_differences, excluded_line, excluded_subjects
from radfusion.evaluation.decision import net_benefit
from radfusion.evaluation.explanations import explanation_section
from radfusion.evaluation.facts import is_synthetic
from radfusion.evaluation.incremental import HEADER as INCREMENTAL_HEADER
from radfusion.evaluation.incremental import INCREMENTAL_NOTE, incremental_value
from radfusion.evaluation.incremental import markdown_rows as incremental_rows
from radfusion.evaluation.plots import plot_calibration, plot_decision_curve, plot_km, plot_roc, plot_td_auc
from radfusion.evaluation.run_folders import Run, group_frame
from radfusion.evaluation.standards import standards_section

SYNTHETIC_NOTE = ("**Synthetic-cohort results exercise the machinery; they are not a clinical claim.** "
                  "Only results on a real, external cohort say anything about patients.")


def _f(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float | np.floating) else str(v)


def _n(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else str(int(v))


def _p(v) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _ci(row, key: str) -> str:
    return f"{_f(row.get(key))} [{_f(row.get(key + '_ci_low'))}, {_f(row.get(key + '_ci_high'))}]"


def _msd(row, key: str) -> str:
    n = int(row.get("n_replicates", 0) or 0)
    if n < 2:
        return "–"
    what = row.get("replicates")
    return f"{_f(row.get(key + '_mean'))} ± {_f(row.get(key + '_sd'))} ({what if isinstance(what, str) else f'k={n}'})"


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown pipe table (cells turned to text, pipes escaped)."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(cell, r)) + " |" for r in rows]


def summary_rows(ev: Evaluation) -> list[list]:
    """Headline table: AUC for markers, Harrell's C for survival, pooled [CI] and mean ± sd."""
    out = []
    for r in ev.table.to_dict("records"):
        if r["kind"] == "marker":
            n = f"{_n(r['n'])} ({_n(r['n_pos'])} pos)"
            out.append([r["group"], r["mode"], r["endpoint"], n, "AUC", _ci(r, "auc"), _msd(r, "auc")])
        else:
            n = f"{_n(r.get('n'))} ({_n(r.get('n_events'))} events)"
            out.append([r["group"], r["mode"], "overall survival", n, "Harrell C", _ci(r, "c_harrell"),
                        _msd(r, "c_harrell")])
    return out


SUMMARY_HEADER = ["group", "mode", "endpoint", "n", "metric", "pooled [95 % CI]", "mean ± sd over replicates"]


def _comparison_lines(comps: pd.DataFrame, kind: str) -> list[str]:
    part = comps[comps.kind == kind] if len(comps) else comps
    if part.empty:
        return ["No paired comparison (fewer than two groups)."]
    rows = []
    for r in part.to_dict("records"):
        rows.append([f"{r['group_a']} − {r['group_b']}", r["endpoint"], r["n_paired"], _f(r.get("delta")),
                     *([_f(r.get("delong_z"), 2), _p(r.get("delong_p")), _p(r.get("delong_p_holm"))]
                       if kind == "marker" else []),
                     f"[{_f(r.get('boot_ci_low'))}, {_f(r.get('boot_ci_high'))}]", _p(r.get("boot_p")),
                     _p(r.get("boot_p_holm"))])
    metric = "ΔAUC" if kind == "marker" else "ΔHarrell C"
    header = ["A − B", "endpoint", "n paired", metric,
              *(["DeLong z", "DeLong p", "DeLong p (Holm)"] if kind == "marker" else []),
              "bootstrap 95 % CI", "bootstrap p", "bootstrap p (Holm)"]
    return md_table(header, rows)


def _markers_section(ev: Evaluation, out: Path, s: Settings, figures: list[Path]) -> list[str]:
    lines = []
    thr = ("Youden threshold fitted on the training split" if s.threshold == "youden"
           else f"threshold {s.threshold}")
    for marker, per_group in ev.curves.get("markers", {}).items():
        tab = ev.table[(ev.table.kind == "marker") & (ev.table.endpoint == marker)]
        rows = [[r["group"], r["mode"], _n(r["n"]), _n(r["n_pos"]), _ci(r, "auc"), _msd(r, "auc"), _f(r["ap"]),
                 _f(r["balanced_accuracy"]), _f(r["sensitivity"]), _f(r["specificity"]), _f(r["brier"]),
                 _ci2(r, "cal_slope"), _ci2(r, "cal_intercept")] for r in tab.to_dict("records")]
        warn = [f"- ⚠ **{r['group']}**: {r['cal_warning']}." for r in tab.to_dict("records")
                if isinstance(r.get("cal_warning"), str) and r["cal_warning"]]
        lines += [f"### {marker.upper()}", "", *md_table(
            ["group", "mode", "n", "pos", "AUC [95 % CI]", "AUC mean ± sd", "AP", "bal. acc.", "sens.", "spec.",
             "Brier", "cal. slope [95 % CI]", "cal. intercept [95 % CI]"], rows), "",
            f"Sensitivity, specificity and balanced accuracy at {thr}. Pooled predictions; mean ± sd over replicates. "
            "Calibration slope (1 ideal) and intercept with the slope fixed at 1 (0 ideal).", "", *warn,
            *([""] if warn else [])]
        roc = plot_roc({g: (c["pooled"].label, c["pooled"].prob) for g, c in per_group.items()},
                       out / f"roc_{marker}.png", f"{marker.upper()} — {s.split} (pooled)")
        cal = plot_calibration({g: c["calibration"] for g, c in per_group.items()}, out / f"calibration_{marker}.png",
                               f"{marker.upper()} calibration ({s.calibration_bins} quantile bins)")
        dca = plot_decision_curve({g: net_benefit(c["pooled"].label, c["pooled"].prob) for g, c in per_group.items()},
                                  out / f"decision_{marker}.png", f"{marker.upper()} decision curve ({s.split})")
        figures += [roc, cal, dca]
        lines += [f"![ROC {marker}]({roc.name}) ![calibration {marker}]({cal.name})", "",
                  f"![decision curve {marker}]({dca.name})", "",
                  "Paired comparisons on the subjects both groups predicted:", "",
                  *_comparison_lines(ev.comparisons[ev.comparisons.endpoint == marker]
                                     if len(ev.comparisons) else ev.comparisons, "marker"), ""]
    return lines


def _survival_section(ev: Evaluation, out: Path, figures: list[Path]) -> list[str]:
    per_group = ev.curves.get("survival", {})
    if not per_group:
        return []
    tab = ev.table[ev.table.kind == "survival"]
    rows = [[r["group"], r["mode"], _n(r.get("n")), _n(r.get("n_events")), _ci(r, "c_harrell"), _msd(r, "c_harrell"),
             _ci(r, "c_uno"), _f(r.get("td_auc_mean")), _f(r.get("ibs")), _p(r.get("logrank_p")),
             _hr(r)] for r in tab.to_dict("records")]
    km = plot_km({g: {"time": c["pooled"].time, "event": c["pooled"].event, "high": c["pooled"].risk_c > 0,
                      "label": f"log-rank p {_p(tab.set_index('group').loc[g].get('logrank_p'))}, HR "
                               f"{_hr(tab.set_index('group').loc[g], ci=False)}"}
                  for g, c in per_group.items()}, out / "km.png", "risk groups split at the training median")
    td = plot_td_auc({g: (np.asarray(c["td_times"]), np.asarray(c["td_auc"])) for g, c in per_group.items()},
                     out / "td_auc.png", "time-dependent AUC (pooled)")
    figures += [km, td]
    return ["## Overall survival", "", *md_table(
        ["group", "mode", "n", "events", "Harrell C [95 % CI]", "Harrell C mean ± sd", "Uno C [95 % CI]",
         "mean td-AUC", "IBS", "log-rank p", "HR high vs low [95 % CI]"], rows), "",
        *[f"- {n}" for n in ev.notes if n.startswith("survival")],
        "- Uno's C is truncated at τ = the last grid time; IBS integrates the Brier score over the grid.", "",
        f"![Kaplan–Meier]({km.name})", "", f"![time-dependent AUC]({td.name})", "",
        "Paired comparisons (same subjects, paired bootstrap of ΔC):", "",
        *_comparison_lines(ev.comparisons, "survival"), ""]


def _ci2(row, key: str) -> str:
    return f"{_f(row.get(key), 2)} [{_f(row.get(key + '_ci_low'), 2)}, {_f(row.get(key + '_ci_high'), 2)}]"


def _hr(row, ci: bool = True) -> str:
    """Hazard ratio [CI], or why it is not estimable (a separated Cox fit is not printed as 3e7)."""
    note = row.get("hr_note")
    if isinstance(note, str) and note:
        return note
    interval = f" [{_f(row.get('hr_ci_low'), 2)}, {_f(row.get('hr_ci_high'), 2)}]" if ci else ""
    return f"{_f(row.get('hr'), 2)}{interval}"


def _compact(check: pd.DataFrame) -> list[list[str]]:
    """Checklist rows as (item, value): the shared value, or one line per group where they differ."""
    rows = []
    for r in check.to_dict("records"):
        values = {k: v for k, v in r.items() if k != "item"}
        if len(set(values.values())) == 1:
            rows.append([r["item"], next(iter(values.values()))])
        else:
            rows.append([r["item"], "<br>".join(f"**{g}**: {v}" for g, v in values.items())])
    return rows


METHODS = [
    "- **Pooled predictions**: for each subject, the mean test probability (risk) over the group's replicates "
    "(seeds × repeats); the test folds of a cross-validation are disjoint, so within a replicate they are "
    "concatenated. **Mean ± sd**: each metric computed per replicate (run × repeat), then mean and sample sd.",
    "- **AUC CI**: percentile bootstrap over subjects, stratified by class. **DeLong**: structural components "
    "(DeLong 1988) via midranks (Sun & Xu 2014), two-sided z-test of ΔAUC on the paired subjects. "
    "**Paired bootstrap**: the same stratified resamples for both groups; percentile CI of Δ; "
    "p from Δ / sd(Δ*) referred to N(0, 1) (as pROC's bootstrap test).",
    "- **Multiple comparisons**: p-values adjusted with Holm's step-down method within each endpoint "
    "(raw p shown beside them).",
    "- **Survival**: Harrell's C (scikit-survival `concordance_index_censored`), Uno's C "
    "(`concordance_index_ipcw`, censoring Kaplan–Meier fitted on training subjects), cumulative/dynamic AUC "
    "and integrated Brier score (`cumulative_dynamic_auc`, `integrated_brier_score`). Survival probabilities "
    "for the Brier score: a Breslow baseline cumulative hazard fitted on each model's training rows, "
    "S(t) = exp(−H0(t)·exp(risk)), averaged over replicates. Risk groups: risk above the model's training-median "
    "risk; log-rank test and Cox hazard ratio of the group indicator (lifelines).",
    "- **Calibration**: quantile-binned reliability curve; logistic recalibration on logit(p): slope from "
    "y ~ a + b·logit(p) (1 = ideal), intercept from y ~ a + offset(logit(p)) (0 = ideal), both with percentile "
    "bootstrap CIs (`evaluation/calibration.py`); a warning below 50 subjects or 10 events; Brier score.",
    "- **Kaplan–Meier**: 95 % pointwise bands from Greenwood's variance on the log(−log) scale, number at risk "
    "under each panel. A hazard ratio whose Cox fit has no finite maximum (the groups separate) is reported as "
    "not estimable.",
    "- **Decision curves**: net benefit TP/n − FP/n·pt/(1 − pt) over threshold probabilities pt, against "
    "treat-all and treat-none (Vickers & Elkin 2006).",
]


def write_report(ev: Evaluation, groups: dict[str, list[Run]], skipped: list[tuple[str, str]], s: Settings,
                 out: Path, name: str, html_too: bool = True) -> dict[str, Path]:
    """Write report.md (+ report.html), PNGs, table.csv, replicates.csv, comparisons.csv, checklist.csv."""
    out.mkdir(parents=True, exist_ok=True)
    names = order_groups(groups)
    figures: list[Path] = []
    synthetic = sorted(n for n, rs in groups.items() if any(is_synthetic(r) for r in rs))
    n_runs = sum(len(v) for v in groups.values())
    lines = [f"# radfusion comparison report — {name}", "",
             f"{time.strftime('%Y-%m-%d %H:%M')} · {n_runs} runs in {len(groups)} groups · split `{s.split}` · "
             f"{s.n_bootstrap} bootstrap resamples · α = {s.alpha}", "",
             *([f"> {SYNTHETIC_NOTE} **Synthetic cohort: {', '.join(synthetic)}.**", ""] if synthetic else []),
             "## Summary", "", *md_table(SUMMARY_HEADER, summary_rows(ev)), "",
             "**Pooled**: per-subject predictions averaged over the group's replicates (CV folds concatenated); "
             "**mean ± sd**: per-replicate metrics. Full numbers: `table.csv`; per replicate: `replicates.csv`; "
             "tests: `comparisons.csv`.", ""]
    if ev.curves.get("markers"):
        lines += ["## Molecular markers", "", *_markers_section(ev, out, s, figures)]
    lines += _survival_section(ev, out, figures)
    incremental = incremental_value(ev, groups, s)  # imaging vs the clinical-only model (evaluation/incremental.py)
    if len(incremental):
        lines += ["## Incremental value over the clinical-only model", "", INCREMENTAL_NOTE, "",
                  *md_table(INCREMENTAL_HEADER, incremental_rows(incremental)), ""]
    explained, explain_figures = explanation_section(groups, names, out, md_table)  # explain=true runs
    lines += explained
    lines += ["## Runs", ""]
    rows = []
    for n in names:
        rs = groups[n]
        targets = ", ".join(dict.fromkeys(t for r in rs for t in [*r.markers, *(["os"] if r.has_survival else [])]))
        rows.append([n, rs[0].mode, targets, len(rs), ", ".join(sorted({str(r.seed) for r in rs})),
                     group_frame(rs)[["run", "repeat"]].drop_duplicates().shape[0],
                     "<br>".join(f"`{r.path}`" for r in rs[:6]) + (" …" if len(rs) > 6 else "")])
    lines += md_table(["group", "mode", "targets", "runs", "seeds", "replicates", "folders"], rows) + [""]
    excluded = {n: excluded_subjects(groups[n]) for n in names}
    if any(excluded.values()):  # who is missing from the cohort, and why (metrics.json excluded_subjects)
        lines += ["**Subjects excluded** before the split (validation with skip_invalid, failed extraction or ROI):",
                  "", *[f"- {n}: {excluded_line(ex, limit=None, width=None)}" for n, ex in excluded.items() if ex], ""]
    if skipped:
        lines += ["**Runs skipped** (unreadable or failing the predictions.csv contract):", ""]
        lines += [f"- `{p}`: {why}" for p, why in skipped] + [""]
    other_notes = [n for n in ev.notes if not n.startswith("survival")]
    if other_notes:
        lines += ["**Notes**:", "", *[f"- {n}" for n in other_notes], ""]
    diff = config_differences(groups, names)
    lines += ["## Configurations compared", "",
              "Settings that differ between groups (first run of each; paths, logger and seeds left out):", ""]
    lines += (md_table(list(diff.columns), diff.astype(str).values.tolist()) if len(diff)
              else ["No differences (or no config_resolved.yaml)."]) + [""]
    check = checklist(groups, names, s)
    standards, standard_files = standards_section(groups, names, ev.table, s.split, s.n_bootstrap, s.threshold,
                                                  set(ev.table.loc[ev.table.kind == "marker", "group"])
                                                  if len(ev.table) else set(), out, md_table)
    lines += ["## Reporting checklist", "",
              "Filled from `manifest.json`, `config_resolved.yaml`, `metrics.json` and `predictions.csv`; "
              "\"not recorded\" = the run does not say. One value when all groups agree.", "",
              *md_table(["item", "value"], _compact(check)), "", *standards, "## Methods", "", *METHODS, ""]
    files = {"report.md": out / "report.md", "table.csv": out / "table.csv",
             "replicates.csv": out / "replicates.csv", "comparisons.csv": out / "comparisons.csv",
             "checklist.csv": out / "checklist.csv"}
    ev.table.to_csv(files["table.csv"], index=False)
    ev.replicates.to_csv(files["replicates.csv"], index=False)
    ev.comparisons.to_csv(files["comparisons.csv"], index=False)
    check.to_csv(files["checklist.csv"], index=False)
    files.update(standard_files)
    if len(incremental):
        files["incremental.csv"] = out / "incremental.csv"
        incremental.to_csv(files["incremental.csv"], index=False)
    text = "\n".join(lines) + "\n"
    files["report.md"].write_text(text)
    if html_too:
        files["report.html"] = out / "report.html"
        files["report.html"].write_text(markdown_to_html(text, title=f"radfusion report — {name}"))
    files.update({p.name: p for p in figures})
    files.update(explain_figures)
    return files


_INLINE = [(re.compile(r"!\[([^\]]*)\]\(([^)]+)\)"), r'<img alt="\1" src="\2">'),
           (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
           (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
           (re.compile(r"&lt;br&gt;"), "<br>")]


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    return text


def markdown_to_html(md: str, title: str = "report") -> str:
    """HTML for the Markdown subset report.md uses: headings, pipe tables, lists, quotes, images, bold, code."""
    body, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", lines[i].strip())[1:-1]])
                i += 1
            head, rows = block[0], block[2:]
            body.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                        + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</tbody></table>")
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.startswith("> "):
            body.append(f"<blockquote>{_inline(line[2:])}</blockquote>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
        i += 1
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0;font-size:.9em}th,td{border:1px solid #ccc;"
             "padding:3px 7px;text-align:left;vertical-align:top}th{background:#f2f2f2}img{max-width:48%;"
             "margin:4px}p>img:only-child{max-width:100%}"
             "blockquote{border-left:4px solid #c33;margin:1em 0;padding:.3em 1em;background:#fdf3f3}"
             "code{font-size:.9em}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
