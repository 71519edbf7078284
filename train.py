"""Train one radfusion model: ``python train.py experiment=idh_hybrid``.

Thin entry point (lightning-hydra-template style): the work lives in
``radfusion.training.run.train``. ``main`` returns the value of ``optimized_metric`` so
that Hydra sweepers (Optuna) can maximise it.
"""

import logging
import os
from pathlib import Path

os.environ.setdefault("RADFUSION_ROOT", str(Path(__file__).resolve().parent))
os.environ.setdefault("WANDB_MODE", "offline")  # no account, no network needed

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from radfusion.cache import CacheWriteError  # noqa: E402
from radfusion.cohort.subject import CohortError  # noqa: E402
from radfusion.training.run import optimized_value, run_task, train  # noqa: E402

log = logging.getLogger("radfusion.train")


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = run_task(train, cfg)
    except (CohortError, CacheWriteError) as err:
        # Bad input or an unwritable cache: the message names subject, file and fix; a traceback
        # from deep inside would only hide it. Logged (train.log) and exit status 1.
        log.error("%s", err)
        raise SystemExit(f"train.py: {err}") from None
    return optimized_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
