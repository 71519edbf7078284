"""DDP on CPU (gloo): samplers shard across ranks, epoch metrics are computed on the union of all ranks.

The sharding and gathering are tested on two real processes with ``torch.distributed`` (gloo); one
short ``train.py ... trainer.strategy=ddp trainer.devices=2`` run checks the whole path end to end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import roc_auc_score

from helpers.config import tiny_data_overrides
from helpers.paths import ROOT
from radfusion.data.samplers import EventBatchSampler, ShardSampler
from radfusion.evaluation.survival import harrell_c
from radfusion.models.gather import gather_outputs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rng = np.random.default_rng(0)
        events = (rng.random(37) < 0.35).astype(float)
        sampler = EventBatchSampler(events, batch_size=4, min_events=1, seed=3, rank=rank, world_size=world)
        sampler.set_epoch(2)
        batches = list(sampler)
        # Evaluation: this rank's unpadded shard of 23 subjects, outputs gathered from every rank.
        y = (np.arange(23) % 3 == 0).astype(float)
        p = np.linspace(0, 1, 23) ** 2
        t, e = np.arange(23, 0, -1).astype(float), (np.arange(23) % 2).astype(float)
        shard = list(ShardSampler(23, rank, world))
        outputs = [{"idx": np.array([i]), "probs": p[[i]], "labels": y[[i]], "time": t[[i]], "event": e[[i]]}
                   for i in shard]
        union = gather_outputs(outputs)
        cat = {k: np.concatenate([o[k] for o in union]) for k in union[0]}
        np.savez(Path(out_dir) / f"rank{rank}.npz", n_batches=len(batches), lens=len(sampler),
                 batches=np.array([i for b in batches for i in b]),
                 batch_events=np.array([events[b].sum() for b in batches]), **cat)
    finally:
        dist.destroy_process_group()


def test_event_sampler_shards_and_outputs_gather_across_two_processes(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    r0, r1 = (np.load(tmp_path / f"rank{r}.npz") for r in (0, 1))
    # Same number of batches on every rank (DDP would hang otherwise), each with events,
    # and together every subject exactly once.
    assert int(r0["n_batches"]) == int(r1["n_batches"]) == int(r0["lens"]) == 5
    assert (r0["batch_events"] >= 1).all() and (r1["batch_events"] >= 1).all()
    assert sorted(np.concatenate([r0["batches"], r1["batches"]]).tolist()) == list(range(37))
    single = EventBatchSampler((np.random.default_rng(0).random(37) < 0.35).astype(float), 4, min_events=1,
                               seed=3, world_size=1)
    assert single.n_batches == 10  # one process: the same 37 subjects in 10 batches
    # Gathered outputs: identical on both ranks, each subject once, metrics on the union.
    for key in ("idx", "probs", "labels"):
        assert np.array_equal(r0[key], r1[key])
    assert sorted(r0["idx"].tolist()) == list(range(23))
    y = (np.arange(23) % 3 == 0).astype(float)
    p = np.linspace(0, 1, 23) ** 2
    assert roc_auc_score(r0["labels"], r0["probs"]) == pytest.approx(roc_auc_score(y, p))
    t, e = np.arange(23, 0, -1).astype(float), (np.arange(23) % 2).astype(float)
    assert harrell_c(r0["time"], r0["event"], r0["probs"]) == pytest.approx(harrell_c(t, e, p))


def test_gather_outputs_is_the_identity_without_a_process_group():
    outputs = [{"probs": np.ones(2)}]
    assert gather_outputs(outputs) is outputs
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["survival_hybrid", "idh_deep", "idh_handcrafted"])
def test_train_cli_ddp_two_cpu_processes(tiny_cohort, shared_cache, tmp_path, experiment):
    """``train.py ... trainer.strategy=ddp trainer.devices=2`` (gloo) in each mode: survival_hybrid (the
    event batch sampler, augmentation and the gathered C-index on two ranks), idh_deep and
    idh_handcrafted (the gathered AUC); rank 0 writes the run folder."""
    cmd = [sys.executable, str(ROOT / "train.py"), f"experiment={experiment}",
           *tiny_data_overrides(tiny_cohort.parent),
           "~features.params.featureClass", "+features.params.featureClass={shape: null, firstorder: null, glcm: null}",
           f"paths.root_dir={tmp_path}", f"paths.cache_dir={shared_cache}", "logger=csv", "trainer.max_epochs=1",
           "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "threads=1", "data.batch_size=4",
           "+trainer.enable_progress_bar=false", "n_bootstrap=50"]
    if not experiment.endswith("handcrafted"):  # a small CNN where there is one
        cmd.append("model.encoder.block_inplanes=[4,8,8,16]")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = [p.parent for p in (tmp_path / "runs").rglob("predictions.csv")]
    assert (run / "train_ddp_process_1.log").is_file()  # the second rank ran, in the same run folder
    pred = pd.read_csv(run / "predictions.csv")
    assert pred.subject_id.is_unique and len(pred) == 20
    # The epoch metric logged by the module is the one of all test subjects (gathered over ranks), i.e.
    # the one computed independently from predictions.csv, not a per-rank value.
    test = pred[pred.split == "test"]
    metrics = pd.read_csv(run / "csv" / "metrics.csv")
    if experiment.startswith("survival"):
        name = "test/cindex"
        expected = harrell_c(test.os_days.to_numpy(float), test.os_event.to_numpy(float), test.risk.to_numpy(float))
    else:
        name = "test/auc_idh"
        labelled = test[test.label_idh.notna()]
        expected = roc_auc_score(labelled.label_idh.astype(int), labelled.prob_idh)
    logged = metrics[name].dropna()
    assert len(logged) == 1
    assert float(logged.iloc[0]) == pytest.approx(expected, abs=1e-6)
    assert json.loads((run / "metrics.json").read_text())[name] == pytest.approx(expected, abs=1e-6)
