"""What W&B gets (whole config, plots, predictions, manifest), the quiet console and ``train.py --help``."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import warnings

import pytest
from omegaconf import open_dict

from helpers.config import compose_train_cfg, tiny_data_overrides
from helpers.paths import CONFIG_DIR, ROOT
from radfusion import experiment_list, quiet


@pytest.mark.slow
def test_wandb_run_config_holds_the_whole_resolved_config(tiny_cohort, shared_cache, tmp_path, monkeypatch):
    import wandb

    from radfusion.training.run import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_train_cfg([
        "experiment=idh_handcrafted", "logger=default", *tiny_data_overrides(tiny_cohort.parent),
        "~features.params.featureClass", "+features.params.featureClass={shape: null, firstorder: null, glcm: null}",
        f"paths.cache_dir={shared_cache}", f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'runs'}",
        "trainer.max_epochs=1", "+trainer.enable_progress_bar=false", "n_bootstrap=20", "data.processing.combat=true",
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    try:
        _, objects = train(cfg)
        from pytorch_lightning.loggers import CSVLogger, WandbLogger

        loggers = objects["trainer"].loggers
        assert len(loggers) == 2 and sum(isinstance(lg, CSVLogger) for lg in loggers) == 1  # CSV stays alongside
        assert sum(isinstance(lg, WandbLogger) for lg in loggers) == 1
        run = wandb.run
        config = run.config.as_dict()
        for key in ("data", "features", "model", "trainer", "seed", "task_name"):
            assert key in config, key
        assert config["data"]["processing"]["combat"] is True and "split" in config["data"]
        assert config["data"]["split"]["seed"] == cfg.data.split.seed
        assert config["features"]["params"]["setting"]["binWidth"] == 25
        assert config["model"]["mode"] == "handcrafted" and config["trainer"]["max_epochs"] == 1
        assert "hydra" not in config
        summary = dict(run.summary)
        assert "predictions" in summary and "plots/roc" in summary
        assert (tmp_path / "run" / "manifest.json").is_file() and (tmp_path / "run" / "csv").is_dir()
    finally:
        wandb.finish()


def test_debug_small_keeps_the_users_logger():
    cfg = compose_train_cfg(["debug=small"])
    assert sorted(cfg.logger) == ["csv", "wandb"]
    cfg = compose_train_cfg(["debug=small", "logger=csv"])
    assert sorted(cfg.logger) == ["csv"]


def test_third_party_noise_is_dropped_and_counted(caplog):
    quiet.summary()  # start from zero
    quiet.silence_third_party()
    try:
        with caplog.at_level(logging.INFO):
            logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate.schemas")
            logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate.tables")
            logging.getLogger("pytorch_lightning.utilities.rank_zero").info("💡 Tip: try installing litlogger")
            logging.getLogger("pytorch_lightning.utilities.rank_zero").info("GPU available: False, used: False")
            logging.getLogger("alembic.runtime.plugins").warning("a real alembic problem")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)
            warnings.warn("A worker stopped while some jobs were given to the executor. This can be caused by a too "
                          "short worker timeout or by a memory leak.", UserWarning, stacklevel=1)
        shown = []
        forward = quiet._state["showwarning"]
        quiet._state["showwarning"] = lambda message, *args, **kw: shown.append(str(message))
        try:  # any other UserWarning still reaches the user
            warnings.showwarning(UserWarning("a real problem"), UserWarning, __file__, 1)
        finally:
            quiet._state["showwarning"] = forward
        assert shown == ["a real problem"]
        messages = [r.getMessage() for r in caplog.records]
        assert "GPU available: False, used: False" in messages and "a real alembic problem" in messages
        assert not any("setup plugin" in m or "litlogger" in m for m in messages)
        text = quiet.summary()
        assert text is not None and "2 alembic INFO line(s)" in text and "1 Lightning litlogger tip(s)" in text
        assert "1 torch LeafSpec deprecation warning(s)" in text
        assert "1 loky worker replacement warning(s)" in text
        assert quiet.summary() is None  # said once
    finally:
        quiet.restore()


def test_train_help_is_fast_and_lists_every_experiment():
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    seconds = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    experiments = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
    listed = experiment_list(str(CONFIG_DIR / "experiment")).splitlines()
    assert [line.split()[0] for line in listed] == experiments
    for line in listed:  # one line each, with its description
        assert line.replace("$$", "$") in out and len(line.split(None, 1)) == 2
    assert "== Config ==" not in out and len(out.splitlines()) < 40 + len(experiments)
    assert "torch" not in res.stderr
    assert seconds < 30, seconds  # ~3 s alone on 2 cores; generous for a loaded machine


def test_silencing_twice_under_a_library_wrapper_does_not_recurse():
    """A sweep calls main() per trial; MONAI wraps showwarning at import, between two installs."""
    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
        quiet.silence_third_party()
        inner = warnings.showwarning

        def library_wrapper(message, category, filename, lineno, file=None, line=None):
            return inner(message, category, filename, lineno, file, line)

        warnings.showwarning = library_wrapper
        quiet.silence_third_party()  # the second trial
        warnings.warn("a user-visible warning", UserWarning, stacklevel=1)
        warnings.warn("`LeafSpec` is deprecated", FutureWarning, stacklevel=1)
        quiet.restore()
    assert shown == ["a user-visible warning"]
    assert "LeafSpec" in (quiet.summary() or "")
