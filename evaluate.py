"""Compare finished runs: ``python evaluate.py runs='[runs/multirun/<time>]' name=idh_modes``.

Reads each run's ``predictions.csv`` (evaluation never needs the model), prints the comparison of
the groups (AUC / C-index with bootstrap CIs, paired tests) and writes ``reports/<name>/``
(report.md/html, PNGs, table.csv). See docs/evaluation.md.
"""

import os
from pathlib import Path

os.environ.setdefault("RADFUSION_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from radfusion.evaluation.run import evaluate  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
