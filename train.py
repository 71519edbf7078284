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
if os.environ["WANDB_MODE"] in ("offline", "dryrun", "disabled"):
    # W&B's console lines (offline notice, run-history block) say nothing a local run needs: radfusion
    # logs the run folder and the `wandb sync` command itself (radfusion.training.tracking).
    os.environ.setdefault("WANDB_SILENT", "true")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from omegaconf.errors import MissingMandatoryValue  # noqa: E402

import radfusion  # noqa: E402,F401  (registers the config resolvers, --help's experiment list among them)

log = logging.getLogger("radfusion.train")


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    # Imported here, not at the top: `python train.py --help` (handled by Hydra before main runs) then
    # needs no torch, Lightning or MONAI import and answers in a few seconds.
    from radfusion import quiet

    quiet.silence_third_party()  # before the imports below, whose libraries log as they load (numexpr, alembic)
    from radfusion.cache import CacheWriteError
    from radfusion.cohort.subject import CohortError
    from radfusion.training.run import missing_setting, optimized_value, run_task, train

    try:
        metrics, _ = run_task(train, cfg)
    except (CohortError, CacheWriteError) as err:
        # Bad input or an unwritable cache: the message names subject, file and fix; a traceback
        # from deep inside would only hide it. Logged (train.log) and exit status 1.
        log.error("%s", err)
        raise SystemExit(f"train.py: {err}") from None
    except MissingMandatoryValue as err:  # a `???` in the chosen config, e.g. data=brats without its clinical CSV
        log.error("%s", missing_setting(err))
        raise SystemExit(f"train.py: {missing_setting(err)}") from None
    finally:
        quiet.log_summary(log)
    return optimized_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
