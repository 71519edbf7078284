"""Training-step benchmark of the deep branch: data loading vs compute per encoder, and frozen-mode trials.

    python scripts/bench_training.py                       # 4x96^3 ROIs, batch 2, every encoder (CPU: minutes)
    python scripts/bench_training.py --size 48 --steps 4   # quick
    python scripts/bench_training.py --device cuda --amp   # GPU with mixed precision (+ utilisation)
    python scripts/bench_training.py --levers --prepare    # issue 16: CPU levers, validation cache (minutes)
    python scripts/bench_training.py --ablation            # the 15-run 5-fold ablation + evaluate.py (~30+ min)

``--levers`` / ``--prepare`` / ``--ablation`` (scripts/bench_levers.py) replace the tables below: fp32 vs
bf16-mixed vs channels_last_3d vs both per step on the default encoder and ROI size (levers interleaved in
one process, non-finite gradients counted), warm data preparation with the validation cache off / on, and
the ablation's wall time per mode; every figure with the load average beside it.

Per encoder (the configs in configs/model/encoder/), on ROI tensors of the default synthetic cohort
cached at ``--size``³ (built once into cache/rois/):

- ``data``: one training batch from the DataLoader (``.npy`` read + training augmentation);
- ``compute``: forward + loss + backward + AdamW step of the deep model;
- ``data %``: data / (data + compute) — the target is < 10 % with the cache;
- ``.npy read`` / ``from NIfTI``: reading the batch's ROI tensors from the cache vs building them from
  the NIfTI files (what the cache saves; augmentation is the rest of ``data``).

Each is given as wall time and as this process's CPU time (robust to other users of the machine).

Frozen mode: the one-off embedding time per subject, then two whole ``train(cfg)`` trials of the hybrid
(``--epochs`` epochs from cached embeddings; fit, test, predictions, bootstrap CI, plots): the first in
a fresh process (it validates the cohort), the next as further sweep trials run (the cohort reused
in-process). Target for a sweep trial: <= 10 s.

Timings on a shared machine are noisy: the script reports medians over ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = ("resnet10", "resnet18", "densenet121", "segresnet", "swin")


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train.yaml", overrides=overrides)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_encoder(name: str, roi_paths: list[Path], cohort, size: int, batch: int, steps: int, device: torch.device,
                  amp: bool) -> dict:
    from torch.utils.data import DataLoader

    from radfusion.data.dataset import SubjectDataset
    from radfusion.imaging.augment import ROIAugment
    from radfusion.imaging.roi import ROISettings, build_roi
    from radfusion.models.fusion import FusionNet
    from radfusion.models.lit_module import masked_bce

    cfg = _compose(["experiment=idh_deep", f"model/encoder={name}", f"data.roi.size={size}"])
    torch.manual_seed(0)
    encoder = instantiate(cfg.model.encoder)
    net = FusionNet("deep", encoder=encoder).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    n_params = sum(p.numel() for p in net.parameters())
    aug = ROIAugment(4, **cfg.data.augmentation)
    labels = np.zeros((len(roi_paths), 1))
    loader = DataLoader(SubjectDataset([p.stem for p in roi_paths], labels, roi_paths=roi_paths, transform=aug),
                        batch_size=batch, shuffle=True, drop_last=True)
    scaler = torch.amp.GradScaler(enabled=amp and device.type == "cuda")
    data_t, comp_t, data_cpu, comp_cpu, util = [], [], [], [], []
    it = iter(loader)
    for step in range(steps + 1):  # step 0 warms up (allocator, MONAI lazy imports, cuDNN autotune)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        x = b["image"].to(device, non_blocking=True)
        y, m = b["labels"].to(device), b["label_mask"].to(device)
        _sync(device)
        t1, c1 = time.perf_counter(), time.process_time()
        with torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16,
                            enabled=amp):
            loss = masked_bce(net(image=x).float(), y, m)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)
        t2, c2 = time.perf_counter(), time.process_time()
        if step:
            data_t.append(t1 - t0)
            comp_t.append(t2 - t1)
            data_cpu.append(c1 - c0)
            comp_cpu.append(c2 - c1)
            if device.type == "cuda":
                try:
                    util.append(torch.cuda.utilization(device))
                except Exception:  # noqa: BLE001 - needs pynvml; utilisation is optional
                    pass
    # what the ROI cache saves: the same batch built from NIfTI
    settings = ROISettings(size=size)
    subjects = [s for s in cohort.subjects][:batch]
    c0 = time.process_time()
    for s in subjects:
        build_roi(s, settings, cohort.label_convention, cohort.geometry_tolerance, cohort.brain_mask)
    nifti_cpu = time.process_time() - c0
    c0 = time.process_time()
    for p in roi_paths[:batch]:
        torch.from_numpy(np.load(p).astype(np.float32))
    load_cpu = time.process_time() - c0
    d, c = statistics.median(data_t), statistics.median(comp_t)
    dc, cc = statistics.median(data_cpu), statistics.median(comp_cpu)
    row = {"encoder": name, "params_M": n_params / 1e6, "data_ms": 1000 * d, "compute_ms": 1000 * c,
           "data_pct": 100 * d / (d + c), "step_s": d + c, "data_cpu_ms": 1000 * dc, "compute_cpu_ms": 1000 * cc,
           "data_cpu_pct": 100 * dc / (dc + cc), "nifti_cpu_ms": 1000 * nifti_cpu, "load_cpu_ms": 1000 * load_cpu}
    if util:
        row["gpu_util_pct"] = statistics.mean(util)
    if device.type == "cuda":
        row["peak_mem_GB"] = torch.cuda.max_memory_allocated(device) / 1e9
        torch.cuda.reset_peak_memory_stats(device)
    return row


def bench_frozen(name: str, epochs: int, threads: int) -> dict:
    """Embedding time per subject, head-only fit time and a whole train() trial, default cohort."""
    import pytorch_lightning as pl

    from radfusion.training.frozen import compute_embeddings
    from radfusion.training.run import train

    out = Path(tempfile.mkdtemp(prefix="bench_frozen_"))
    overrides = ["experiment=idh_hybrid", f"model/encoder={name}", "model.encoder.frozen=true", "logger=csv",
                 "data.reuse_in_process=true",
                 f"trainer.max_epochs={epochs}", "+trainer.enable_progress_bar=false",
                 "+trainer.enable_model_summary=false", "data.progress=false", f"threads={threads}"]
    cfg = _compose(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out / "prepare")
    # 1. one-off embeddings (into a scratch cache so the measurement always computes them)
    dm = instantiate(cfg.data, use_images=True, use_radiomics=True, reuse_in_process=False)  # trial 1 prepares
    dm.prepare_data()
    dm.setup("fit")
    pl.seed_everything(cfg.seed)
    encoder = instantiate(cfg.model.encoder)
    t0 = time.perf_counter()
    compute_embeddings(encoder, {s: dm.roi_paths[s] for s in dm.ids}, out / "scratch_cache")
    embed_s = (time.perf_counter() - t0) / len(dm.ids)
    # 2. whole trials as a sweep runs them: the first in a fresh process (validates the cohort), the
    #    second reusing it (data.reuse_in_process, as hparams_search sets)
    walls, fits = [], []
    for i in range(2):
        with open_dict(cfg):
            cfg.paths.output_dir = str(out / f"trial{i}")
        t0 = time.perf_counter()
        metrics, objects = train(cfg)
        walls.append(time.perf_counter() - t0)
        fits.append(metrics["seconds_total"] - metrics["seconds_data"])
    return {"encoder": name, "embed_ms_per_subject": 1000 * embed_s, "epochs": epochs,
            "first_trial_wall_s": walls[0], "trial_fit_test_predict_s": fits[-1],
            "trial_data_prep_s": walls[-1] - fits[-1], "trial_wall_s": walls[-1],
            "val_auc_best": metrics.get("val/auc_best")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=96, help="ROI edge in voxels (channels: 4 sequences)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per encoder (after one warm-up)")
    parser.add_argument("--encoders", default=",".join(ENCODERS))
    parser.add_argument("--subjects", type=int, default=16, help="ROIs built/used for the step benchmark")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    parser.add_argument("--frozen", default="resnet10", help="encoders for the frozen-trial benchmark ('' = skip)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of one frozen-mode trial")
    parser.add_argument("--frozen-threads", type=int, default=1,
                        help="torch threads of a frozen trial (a small MLP: more threads only add sync overhead)")
    parser.add_argument("--json", help="also write the results here")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_levers  # scripts/bench_levers.py: the issue-16 benchmarks

    bench_levers.add_arguments(parser)
    args = parser.parse_args(argv)

    os.environ.setdefault("RADFUSION_ROOT", str(ROOT))
    os.environ.setdefault("WANDB_MODE", "offline")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.levers or args.prepare or args.ablation:
        res = bench_levers.run_selected(args, args.threads)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2, default=str))
        return
    from radfusion.data.prepare import read_validated_cohort
    from radfusion.imaging.roi import ROISettings, build_roi_cache

    cfg = _compose(["experiment=idh_deep"])
    cohort = read_validated_cohort(OmegaConf.to_container(cfg.data.cohort, resolve=True), progress=False)
    cohort.subjects = cohort.subjects[: args.subjects]
    t0 = time.perf_counter()
    paths, failures = build_roi_cache(cohort, ROISettings(size=args.size), ROOT / "cache", n_jobs=1, progress=False)
    print(f"ROI cache: {len(paths)} subjects at {args.size}^3 ready in {time.perf_counter() - t0:.1f} s "
          f"({len(failures)} failures)", file=sys.stderr)
    roi_paths = [paths[s.subject_id] for s in cohort.subjects if s.subject_id in paths]

    rows = []
    for name in [e for e in args.encoders.split(",") if e]:
        rows.append(bench_encoder(name, roi_paths, cohort, args.size, args.batch, args.steps, device, args.amp))
        print(rows[-1], file=sys.stderr)
    frozen = [bench_frozen(name, args.epochs, args.frozen_threads) for name in args.frozen.split(",") if name]

    title = f"4x{args.size}^3, batch {args.batch}, {args.device}{' AMP' if args.amp else ''}, {args.threads} threads"
    print(f"\n### Training step: data loading vs compute ({title}; median of {args.steps} steps)\n")
    extra = [k for k in ("gpu_util_pct", "peak_mem_GB") if any(k in r for r in rows)]
    # CPU seconds of this process are robust to other users of the machine; wall time is what you wait.
    print("| encoder | params (M) | data ms | compute ms | data % | data CPU ms | compute CPU ms | data % (CPU) "
          "| of which .npy read CPU ms | same ROIs from NIfTI CPU ms |" + "".join(f" {k} |" for k in extra))
    print("|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(extra))
    for r in rows:
        cells = [r["encoder"], f"{r['params_M']:.2f}", f"{r['data_ms']:.0f}", f"{r['compute_ms']:.0f}",
                 f"{r['data_pct']:.1f}", f"{r['data_cpu_ms']:.0f}", f"{r['compute_cpu_ms']:.0f}",
                 f"{r['data_cpu_pct']:.1f}", f"{r['load_cpu_ms']:.0f}", f"{r['nifti_cpu_ms']:.0f}"]
        cells += [f"{r.get(k, float('nan')):.1f}" for k in extra]
        print("| " + " | ".join(cells) + " |")
    if rows:
        ratio = statistics.median(r["nifti_cpu_ms"] / max(r["load_cpu_ms"], 1e-9) for r in rows)
        print(f"\nReading the batch's ROI tensors from the cache: {ratio:.0f}x less CPU than building them from "
              "NIfTI (median over encoders); the rest of 'data' is augmentation")
    if frozen:
        print(f"\n### Frozen-encoder mode (default cohort, {args.epochs} epochs per trial, "
              f"{args.frozen_threads} thread(s))\n")
        print("| encoder | embedding ms/subject (once) | first trial wall s (fresh process) | next trial: data s | "
              "next trial: fit+test+predict s | next trial wall s | val AUC best |")
        print("|---|---|---|---|---|---|---|")
        for f in frozen:
            print(f"| {f['encoder']} | {f['embed_ms_per_subject']:.0f} | {f['first_trial_wall_s']:.1f} | "
                  f"{f['trial_data_prep_s']:.1f} | {f['trial_fit_test_predict_s']:.1f} | {f['trial_wall_s']:.1f} | "
                  f"{f['val_auc_best']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": rows, "frozen": frozen}, indent=2))


if __name__ == "__main__":
    main()
