"""The "Explanations" section of the comparison report: what ``explain=true`` wrote into each run.

For every group whose runs hold ``explain/explain.json`` (:mod:`radfusion.explain`): the explainer, the
top feature groups by mean |SHAP| (e.g. "ED × FLAIR texture"), the saliency summary (share of positive
integrated-gradients attribution inside the tumour vs the tumour's share of the ROI) and the branch
contributions by class; the first run's beeswarm and one saliency overlay are copied into the report.
Runs without explanations are not mentioned (``explain`` is off by default).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd


def _read(run_path: Path) -> dict | None:
    path = Path(run_path) / "explain" / "explain.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _heads(summary: dict) -> dict:
    """``{head: shap info}`` for baselines (``heads``) and networks (``shap``)."""
    if summary.get("kind") == "baseline":
        return dict(summary.get("heads") or {})
    return dict(summary.get("shap") or {})


def explanation_section(groups: dict, names: list[str], out: Path, md_table) -> tuple[list[str], dict[str, Path]]:
    """Markdown lines and copied figures; empty when no run of any group was explained."""
    rows, figures, lines = [], {}, []
    for name in names:
        explained = [(r, s) for r in groups[name] if (s := _read(r.path)) is not None]
        if not explained:
            continue
        run, summary = explained[0]
        for head, info in _heads(summary).items():
            if not isinstance(info, dict) or "top_groups" not in info:
                continue
            rows.append([name, head, info.get("explainer", "?"), info.get("n_subjects", "?"),
                         "; ".join(info.get("top_groups", [])[:5]), f"{len(explained)}/{len(groups[name])}"])
            prefix = f"{head}_" if (Path(run.path) / "explain" / f"{head}_shap_beeswarm.png").is_file() else ""
            png = Path(run.path) / "explain" / f"{prefix}shap_beeswarm.png"
            if png.is_file():
                target = out / f"explain_{_safe(name)}_{_safe(head)}_beeswarm.png"
                shutil.copyfile(png, target)
                figures[target.name] = target
        sal = summary.get("saliency") or {}
        if sal.get("n_subjects"):
            lines.append(f"- {name}: integrated gradients on {sal['n_subjects']} subject(s): median "
                         f"{100 * sal['median_positive_share_in_mask']:.0f}% of the positive attribution inside the "
                         f"tumour, which is {100 * sal['median_mask_fraction']:.0f}% of the ROI "
                         f"({sal.get('seconds_per_subject')} s per subject).")
            overlays = sorted((Path(run.path) / "explain" / "saliency").glob("*.png"))
            if overlays:
                target = out / f"explain_{_safe(name)}_saliency.png"
                shutil.copyfile(overlays[0], target)
                figures[target.name] = target
        contrib = Path(run.path) / "explain" / "branch_contributions_by_class.csv"
        if contrib.is_file():
            table = pd.read_csv(contrib)
            lines.append(f"- {name}: mean change of the logit when a branch is replaced by its training mean, "
                         "by class (`explain/branch_contributions_by_class.csv`): "
                         + "; ".join(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in rec.items()) for rec in table.to_dict("records")[:4]))
    if not rows and not lines:
        return [], {}
    out_lines = ["## Explanations", "",
                 "From `explain/` of the runs trained with `explain=true` (first explained run of each group; "
                 "docs/explain.md). SHAP groups are ranked by the sum of mean |SHAP| of their features.", ""]
    if rows:
        out_lines += md_table(["group", "head", "explainer", "subjects", "top feature groups (mean |SHAP|)",
                               "runs explained"], rows) + [""]
    out_lines += lines + ([""] if lines else [])
    out_lines += [f"![{p.stem}]({p.name})" for p in figures.values()] + ([""] if figures else [])
    return out_lines, figures
