"""One GPU check of the deep branch (issue 16): steps/s, GPU utilisation, and whether the data loader keeps up.

Run through ``scripts/gpu_check.sh`` (which prints the machine first); nothing in radfusion requires a GPU or
this script. A real ``trainer.fit`` of ``experiment=idh_deep`` on the default synthetic cohort with
``trainer=gpu``, ``bf16-mixed`` and a widened ResNet-10 (``--widths``) at ``--size``³, timed per batch by a
callback: ``step`` = on_train_batch_start -> on_train_batch_end (forward, backward, optimizer; CUDA
synchronised), ``data wait`` = previous batch end -> this batch start (the loader, collation and the host ->
device copy). ``nvidia-smi`` is sampled every 250 ms during the fit for utilisation and memory.

A CPU dry run at toy size checks the script itself:
    python scripts/gpu_check.py --accelerator cpu --precision 32-true --size 16 --widths 4,8,8,16 --epochs 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]


class StepTimer(pl.Callback):
    """Per training batch: compute time and the wait for the batch before it (seconds)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.step, self.wait, self._start, self._last = cuda, [], [], 0.0, None

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last = self._now()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = self._now()
        self.wait.append(self._start - self._last)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last = self._now()
        self.step.append(self._last - self._start)


def sample_gpu(period_ms: int = 250):
    """``nvidia-smi`` printing ``utilization.gpu, memory.used`` every ``period_ms`` (None without one)."""
    if not shutil.which("nvidia-smi"):
        return None
    return subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                             f"-lms={period_ms}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def read_samples(proc) -> list[tuple[float, float]]:
    if proc is None:
        return []
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    rows = []
    for line in out.splitlines():
        try:
            util, mem = (float(x) for x in line.split(",")[:2])
        except ValueError:
            continue
        rows.append((util, mem))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accelerator", default="gpu")
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--size", type=int, default=96, help="ROI edge (voxels)")
    p.add_argument("--widths", default="64,128,256,512", help="ResNet-10 block widths (CPU default 16,32,64,128)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--channels-last", action="store_true", help="callbacks.channels_last.enabled=true")
    p.add_argument("--override", action="append", default=[], help="further train.yaml overrides (repeatable)")
    args = p.parse_args(argv)
    os.environ.setdefault("RADFUSION_ROOT", str(ROOT))
    os.environ.setdefault("WANDB_MODE", "offline")

    overrides = ["experiment=idh_deep", f"trainer={'gpu' if args.accelerator == 'gpu' else 'cpu'}",
                 f"+trainer.precision={args.precision}" if args.accelerator != "gpu" else
                 f"trainer.precision={args.precision}", f"data.roi.size={args.size}",
                 f"model.encoder.block_inplanes=[{args.widths}]", f"data.batch_size={args.batch}",
                 f"data.num_workers={args.workers}", f"data.n_jobs={max(1, (os.cpu_count() or 2) // 2)}",
                 f"trainer.max_epochs={args.epochs}", "data.progress=false", "logger=none",
                 f"callbacks.channels_last.enabled={str(args.channels_last).lower()}", *args.override]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train.yaml", overrides=overrides)
    out = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    pl.seed_everything(cfg.seed)
    t0 = time.perf_counter()
    dm = instantiate(cfg.data, use_images=True, use_radiomics=False)
    dm.prepare_data()
    dm.setup("fit")
    prep_s = time.perf_counter() - t0
    model = instantiate(cfg.model, radiomics_dim=None)
    cuda = args.accelerator == "gpu" and torch.cuda.is_available()
    timer = StepTimer(cuda)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if "_target_" in c] + [timer]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0)
    gpu = sample_gpu()
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_s = time.perf_counter() - t0
    samples = read_samples(gpu)

    steady = slice(1, None) if len(timer.step) > 2 else slice(None)  # the first batch warms up (cuDNN, workers)
    step, wait = timer.step[steady], timer.wait[steady]
    med_step, med_wait = statistics.median(step), statistics.median(wait)
    busy = [u for u, _ in samples]
    rows = [
        ("device", torch.cuda.get_device_name(0) if cuda else f"cpu ({torch.get_num_threads()} threads)"),
        ("setting", f"{args.precision}, ResNet-10 [{args.widths}], {args.size}^3, batch {args.batch}, "
                    f"{args.workers} loader workers{', channels_last_3d' if args.channels_last else ''}"),
        ("parameters (M)", f"{sum(q.numel() for q in model.parameters()) / 1e6:.1f}"),
        ("data preparation s (cold: cohort + ROI cache)", f"{prep_s:.1f}"),
        ("fit s (incl. validation)", f"{fit_s:.1f}"),
        ("training batches timed", f"{len(step)} (+{len(timer.step) - len(step)} warm-up)"),
        ("median step ms", f"{1000 * med_step:.1f}"),
        ("steps/s (compute only)", f"{1 / med_step:.2f}"),
        ("steps/s (with data wait)", f"{1 / (med_step + med_wait):.2f}"),
        ("samples/s", f"{args.batch / (med_step + med_wait):.1f}"),
        ("median data wait ms", f"{1000 * med_wait:.1f}"),
        ("data wait % of step time (total)", f"{100 * sum(wait) / max(sum(wait) + sum(step), 1e-9):.1f}"),
        ("data loader keeps up (< 10 %)", "yes" if sum(wait) < 0.1 * (sum(wait) + sum(step)) else "NO"),
    ]
    if busy:
        rows += [("GPU utilisation % (mean / median of samples)", f"{statistics.mean(busy):.0f} / "
                  f"{statistics.median(busy):.0f} ({len(busy)} samples)"),
                 ("GPU memory used MiB (max)", f"{max(m for _, m in samples):.0f}")]
    if cuda:
        rows.append(("peak allocated by torch GB", f"{torch.cuda.max_memory_allocated() / 1e9:.2f}"))
    print("\n| GPU check | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
