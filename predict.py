"""Apply a trained model to another cohort: ``python predict.py model=runs/<exp>/<time> data=<cohort>``.

Thin entry point like train.py; the work lives in ``radfusion.inference.predict.predict``. The run
folder (``runs/predict/<time>/``) gets predictions.csv (split ``external``), metrics.json, ROC plots and
manifest.json; ``python evaluate.py`` compares it with the training runs. See docs/bundle.md.
"""

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("RADFUSION_ROOT", str(Path(__file__).resolve().parent))
os.environ.setdefault("WANDB_MODE", "offline")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from omegaconf.errors import MissingMandatoryValue  # noqa: E402

log = logging.getLogger("radfusion.predict")


@hydra.main(version_base="1.3", config_path="configs", config_name="predict.yaml")
def main(cfg: DictConfig) -> None:
    from radfusion import quiet

    quiet.silence_third_party()  # as train.py: alembic/pykwalify INFO lines dropped, counted in one closing line
    from radfusion.cache import CacheWriteError
    from radfusion.cohort.subject import CohortError
    from radfusion.inference.predict import predict
    from radfusion.training.bundle import BundleError
    from radfusion.training.run import missing_setting

    try:
        predict(cfg)
    except (BundleError, CohortError, CacheWriteError) as err:
        log.error("%s", err)
        raise SystemExit(f"predict.py: {err}") from None
    except MissingMandatoryValue as err:  # a `???` in the chosen config, e.g. data=brats without its clinical CSV
        log.error("%s", missing_setting(err))
        raise SystemExit(f"predict.py: {missing_setting(err)}") from None
    finally:
        quiet.log_summary(log)


def _model_to_bundle(argv: list[str]) -> list[str]:
    """``model=<run>`` on the command line means the bundle (``configs/model/`` is a config group of train.py)."""
    return [("bundle=" + a[len("model="):]) if a.startswith("model=") else a for a in argv]


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *_model_to_bundle(sys.argv[1:])]
    main()
