"""Exact resume: a run killed after epoch 1 and resumed from ``last.ckpt`` equals the uninterrupted run
(same seed, CPU): byte-identical ``predictions.csv``, the same metrics, the same CSV log."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from helpers.interrupt import SimulatedKill
from radfusion.training.run import train

# What legitimately differs between two runs: wall times and the run folder's own path.
VOLATILE = ("seconds_", "best_checkpoint", "splits_file")


def _metrics(run: Path) -> dict:
    saved = json.loads((run / "metrics.json").read_text())
    out = {k: v for k, v in saved.items() if not k.startswith(VOLATILE)}
    out["best_checkpoint"] = Path(saved["best_checkpoint"]).name
    return out


def _cfg(cfg_factory, experiment: str, out: Path, extra: list[str]):
    cfg = cfg_factory(experiment, ["trainer.max_epochs=4", "data.batch_size=4", *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["survival_hybrid", "idh_deep"])
def test_killed_and_resumed_run_equals_uninterrupted_run(cfg_factory, tmp_path, experiment):
    """survival_hybrid: EventBatchSampler order; idh_deep: the shuffling sampler. In both, ROI augmentation,
    dropout and the best-checkpoint record continue across the kill."""
    full = tmp_path / "full"
    train(_cfg(cfg_factory, experiment, full, []))

    part = tmp_path / "part"
    with pytest.raises(SimulatedKill):
        train(_cfg(cfg_factory, experiment, part, ["+callbacks.kill._target_=helpers.interrupt.KillAtEpoch",
                                       "+callbacks.kill.epoch=2"]))
    last = part / "checkpoints" / "last.ckpt"
    assert last.is_file() and not (part / "predictions.csv").exists()
    # The checkpoint holds plain types only: it loads without executing code.
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1

    # Resumed from a new (Hydra) folder: the run folder the checkpoint lives in is continued.
    train(_cfg(cfg_factory, experiment, tmp_path / "elsewhere", [f"ckpt_path={last}"]))
    # The weights after the last epoch: the best checkpoint of a tiny run may be an early epoch.
    end_full, end_part = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True) for r in (full, part))
    assert end_part["epoch"] == end_full["epoch"] == 3
    for name, value in end_full["state_dict"].items():
        assert torch.equal(value, end_part["state_dict"][name]), name
    assert (full / "predictions.csv").read_bytes() == (part / "predictions.csv").read_bytes()
    assert _metrics(part) == _metrics(full)
    log_full = pd.read_csv(full / "csv" / "metrics.csv")
    log_part = pd.read_csv(part / "csv" / "metrics.csv")
    pd.testing.assert_frame_equal(log_part, log_full)


def test_training_loader_order_depends_on_seed_and_epoch_only():
    """The plain shuffling loader: epoch e's order is a function of (seed, e), whatever the global RNG,
    and iterating a loader leaves the global RNG (dropout) alone."""
    from torch.utils.data import TensorDataset

    from radfusion.data.samplers import training_loader

    data = TensorDataset(torch.arange(23))

    def order(epoch: int, global_seed: int) -> list[int]:
        torch.manual_seed(global_seed)
        loader = training_loader(data, batch_size=4, seed=7)
        loader.sampler.set_epoch(epoch)  # what Lightning calls each epoch
        before = torch.get_rng_state()
        out = [int(i) for (batch,) in loader for i in batch]
        assert torch.equal(before, torch.get_rng_state())
        return out

    assert order(3, global_seed=0) == order(3, global_seed=1)
    assert order(3, global_seed=0) != order(4, global_seed=0)
    assert sorted(order(2, global_seed=0)) == list(range(23))  # 23 % 4 != 1: nothing dropped
