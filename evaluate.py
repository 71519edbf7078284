"""Compare finished runs: ``python evaluate.py runs='[runs/idh_hybrid/*, runs/idh_deep/*]'``.

Reads each run's ``predictions.csv`` (evaluation never needs the model), recomputes the metrics
with bootstrap confidence intervals and prints one table row per run.
"""

import os
from pathlib import Path

os.environ.setdefault("RADFUSION_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from radfusion.evaluation.compare import evaluate  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
