"""The report's RQS and TRIPOD+AI sections and their CSV files (``rqs.csv``, ``tripod_ai.csv``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.evaluation.rqs import TO_FILL, score_rqs, total_line
from radfusion.evaluation.run_folders import Run
from radfusion.evaluation.tripod import tripod_items


def _merge(values: dict[str, str]) -> str:
    """One value when every group agrees, else one ``**group**: value`` line per group."""
    if len(set(values.values())) == 1:
        return next(iter(values.values()))
    return "<br>".join(f"**{g}**: {v}" for g, v in values.items())


def _score(row) -> str:
    return "to fill" if not np.isfinite(row["score"]) else f"{int(row['score']):+d}".replace("+0", "0")


def standards_section(groups: dict[str, list[Run]], names: list[str], table: pd.DataFrame, split: str,
                      n_bootstrap: int, threshold, decision_curve: set[str], out: Path,
                      md_table: Callable[[list[str], list[list]], list[str]]) -> tuple[list[str], dict[str, Path]]:
    """Markdown lines of both sections and the two CSV files (long format, one row per group × item).

    ``decision_curve``: the groups the report drew a decision curve for (RQS item 14).
    """
    rqs, tripod = {}, {}
    for n in names:
        rows = table[table.group == n].to_dict("records") if len(table) else []
        rqs[n] = score_rqs(groups[n], rows, split, n_bootstrap, threshold, decision_curve=n in decision_curve)
        tripod[n] = tripod_items(groups[n], rows, split, n_bootstrap, threshold)
    files = {"rqs.csv": out / "rqs.csv", "tripod_ai.csv": out / "tripod_ai.csv"}
    pd.concat([t.assign(group=n) for n, t in rqs.items()]).to_csv(files["rqs.csv"], index=False)
    pd.concat([t.assign(group=n) for n, t in tripod.items()]).to_csv(files["tripod_ai.csv"], index=False)

    first = rqs[names[0]]
    rows = []
    for i in range(len(first)):
        item = first.iloc[i]
        rows.append([item["item"], item["name"], item["points"],
                     _merge({n: _score(rqs[n].iloc[i]) for n in names}),
                     _merge({n: f"{rqs[n].iloc[i]['status']}: {rqs[n].iloc[i]['basis']}" for n in names})])
    lines = ["## Radiomics Quality Score (RQS)", "",
             "The 16 items of Lambin et al. 2017 with their official points. Scored only where the run records the "
             "evidence; \"to fill\" items are for the authors (their points are not in the total). `rqs.csv` has "
             "every item per group.", "", *md_table(["#", "item", "points", "score", "basis"], rows), "",
             *[f"- **{n}**: {total_line(t)}" for n, t in rqs.items()], ""]

    ft = tripod[names[0]]
    documented = ft.index[ft.status != TO_FILL]
    rows = [[ft.loc[i, "item"], ft.loc[i, "topic"], _merge({n: tripod[n].loc[i, "status"] for n in names}),
             _merge({n: tripod[n].loc[i, "value"] for n in names})] for i in documented]
    to_fill = ft.loc[ft.status == TO_FILL, "item"].tolist()
    lines += ["## TRIPOD+AI checklist", "",
              "Items of Collins et al. 2024 (BMJ 385:e078378) the run documents, with what it records; check the "
              "wording against the official checklist. `tripod_ai.csv` lists every item.", "",
              *md_table(["item", "topic", "status", "what the run records"], rows), "",
              f"To be filled by the authors: items {', '.join(to_fill)}.", ""]
    return lines, files
