"""CPU training levers, warm data preparation and the 5-fold ablation (issue 16), for scripts/bench_training.py.

    python scripts/bench_training.py --levers                 # fp32 | bf16-mixed | channels_last | both
    python scripts/bench_training.py --prepare                # warm data preparation, validation cache off/on
    python scripts/bench_training.py --ablation               # the 15-run ablation + evaluate.py (~30+ min)
    python scripts/bench_levers.py --levers --prepare         # the same, without the encoder table

Levers: the default deep model (``model/encoder`` default, ``data.roi.size``, ``data.batch_size``) on the
same pre-augmented batches of cached ROI tensors, each lever its own copy of the same initial weights, the
levers taking turns step by step (so machine load drifts hit all alike; ratios from one process). Per lever:
median step (forward + loss + backward + AdamW) wall and CPU ms, the ratio to fp32, the first step's loss
minus fp32's and the cosine of its whole gradient to fp32's (same weights, same batch, same dropout), and
steps with a non-finite gradient (over ``--repeats`` seeds).

Every table row carries the 1-minute load average while it was measured: on a shared machine only ratios
of figures measured side by side mean anything. These are CPU benchmarks, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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
#: lever -> (bf16 autocast, channels_last_3d)
LEVERS = {"fp32": (False, False), "bf16-mixed": (True, False), "channels_last": (False, True),
          "bf16 + channels_last": (True, True)}
ABLATION = ("idh_handcrafted", "idh_deep", "idh_hybrid")


def compose_train(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train.yaml", overrides=list(overrides))


def load1() -> float:
    return os.getloadavg()[0]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------------------------
# Levers
# --------------------------------------------------------------------------------------------

def _batches(roi_paths: list[Path], cfg, batch: int, n: int) -> list[dict]:
    from torch.utils.data import DataLoader

    from radfusion.data.dataset import SubjectDataset
    from radfusion.imaging.augment import ROIAugment

    torch.manual_seed(0)
    labels = (np.arange(len(roi_paths)) % 2).astype(float)[:, None]
    aug = ROIAugment(int(cfg.model.encoder.in_channels), **cfg.data.augmentation)
    loader = DataLoader(SubjectDataset([p.stem for p in roi_paths], labels, roi_paths=roi_paths, transform=aug),
                        batch_size=batch, shuffle=True, drop_last=True)
    out: list[dict] = []
    while len(out) < n:
        out += [{k: b[k] for k in ("image", "labels", "label_mask")} for b in loader]
    return out[:n]


def bench_levers(roi_paths: list[Path], overrides: list[str], batch: int | None, steps: int, repeats: int,
                 levers: list[str]) -> list[dict]:
    """One row per lever (see the module doc); ``overrides`` of train.yaml pick the encoder and ROI size."""
    from radfusion.models.fusion import FusionNet
    from radfusion.models.lit_module import masked_bce
    from radfusion.training.memory_format import image_to_channels_last, module_to_channels_last

    cfg = compose_train(["experiment=idh_deep", *overrides])
    batch = int(batch or cfg.data.batch_size)
    batches = _batches(roi_paths, cfg, batch, steps + 1)
    stats = {name: {"wall": [], "cpu": [], "nonfinite": 0, "steps": 0, "dloss": [], "gcos": [], "bad": set(),
                    "load": []}
             for name in levers}
    for rep in range(repeats):
        runs = {}
        for name in levers:
            bf16, cl = LEVERS[name]
            torch.manual_seed(rep)
            net = FusionNet("deep", encoder=instantiate(cfg.model.encoder)).train()
            if cl:
                module_to_channels_last(net)
            runs[name] = (net, torch.optim.AdamW(net.parameters(), lr=1e-3), bf16, cl)
        for step, b in enumerate(batches):  # step 0 warms up (allocator, oneDNN kernels); levers take turns
            first_loss, first_grad = {}, {}
            for name, (net, opt, bf16, cl) in runs.items():
                x = image_to_channels_last(b["image"]) if cl else b["image"]
                torch.manual_seed(1000 * rep + step)  # the same dropout masks for every lever
                t0, c0 = time.perf_counter(), time.process_time()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = net(image=x)
                loss = masked_bce(out.float(), b["labels"], b["label_mask"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                bad = [n for n, p in net.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
                opt.step()
                t1, c1 = time.perf_counter(), time.process_time()
                s = stats[name]
                s["steps"] += 1
                s["nonfinite"] += bool(bad)
                s["bad"].update(bad[:3])
                if step:
                    s["wall"].append(t1 - t0)
                    s["cpu"].append(c1 - c0)
                    s["load"].append(load1())
                else:  # same weights, same batch: compare with fp32 (the update is already applied: fine)
                    first_loss[name] = loss.item()
                    first_grad[name] = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
            ref, gref = first_loss.get("fp32"), first_grad.get("fp32")
            for name, value in first_loss.items():
                if ref is not None:
                    stats[name]["dloss"].append(value - ref)
                    cos = torch.nn.functional.cosine_similarity(first_grad[name], gref, dim=0)
                    stats[name]["gcos"].append(float(cos))
    rows = []
    base = statistics.median(stats["fp32"]["wall"]) if "fp32" in stats else None
    for name, s in stats.items():
        wall = statistics.median(s["wall"])
        rows.append({"lever": name, "step_ms": 1000 * wall, "cpu_ms": 1000 * statistics.median(s["cpu"]),
                     "speedup": base / wall if base else float("nan"),
                     "first_loss_minus_fp32": max(s["dloss"], key=abs) if s["dloss"] else float("nan"),
                     "first_grad_cosine_fp32": min(s["gcos"]) if s["gcos"] else float("nan"),
                     "nonfinite_grad_steps": f"{s['nonfinite']}/{s['steps']}", "nonfinite_params": sorted(s["bad"]),
                     "load1": statistics.mean(s["load"]), "batch": batch, "size": int(cfg.data.roi.size),
                     "encoder": cfg.model.encoder._target_.rsplit(".", 1)[-1]})
    return rows


def print_levers(rows: list[dict], steps: int, repeats: int, threads: int) -> None:
    r0 = rows[0]
    print(f"\n### CPU levers, one process ({r0['encoder']}, {r0['size']}^3, batch {r0['batch']}, {threads} threads; "
          f"median of {steps} steps x {repeats} seed(s), levers interleaved)\n")
    print("| lever | step ms | step CPU ms | speed-up vs fp32 | 1st loss - fp32 | 1st grad cosine to fp32 (min) "
          "| steps with non-finite grad | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['lever']} | {r['step_ms']:.0f} | {r['cpu_ms']:.0f} | {r['speedup']:.2f}x | "
              f"{r['first_loss_minus_fp32']:+.2e} | {r['first_grad_cosine_fp32']:.4f} | {r['nonfinite_grad_steps']} | "
              f"{r['load1']:.2f} |")
    bad = {r["lever"]: r["nonfinite_params"] for r in rows if r["nonfinite_params"]}
    if bad:
        print(f"\nnon-finite gradients in: {bad}")


# --------------------------------------------------------------------------------------------
# Warm data preparation, with and without the validation cache
# --------------------------------------------------------------------------------------------

def bench_prepare(overrides: list[str], repeats: int = 1) -> list[dict]:
    """Warm ``prepare_data() + setup("fit")`` of a hybrid run (features and ROIs cached), and validation
    alone, with ``data.cohort.validation_cache`` false and true (after one priming run fills every cache)."""
    from radfusion.cohort.readers import read_validated_cohort

    cfg = compose_train(["experiment=idh_hybrid", "data.progress=false", *overrides])

    def prepare(cache: bool) -> float:
        with open_dict(cfg):
            cfg.data.cohort.validation_cache = cache
        dm = instantiate(cfg.data, use_images=True, use_radiomics=True, reuse_in_process=False)
        t0 = time.perf_counter()
        dm.prepare_data()
        dm.setup("fit")
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    prepare(True)  # cold on a fresh cache: generation, extraction, ROIs, validation entries
    rows = [{"what": "priming run (fills the caches)", "seconds": time.perf_counter() - t0, "load1": load1()}]
    block = OmegaConf.to_container(cfg.data.cohort, resolve=True)
    for label, cache in (("warm data preparation, validation cache off", False),
                         ("warm data preparation, validation cache on", True)):
        times = [prepare(cache) for _ in range(repeats)]
        rows.append({"what": label, "seconds": statistics.median(times), "load1": load1()})
    for label, cache_dir in (("validation alone, cache off", None), ("validation alone, cache on", cfg.data.cache_dir)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            read_validated_cohort(block, progress=False, cache_dir=cache_dir)
            times.append(time.perf_counter() - t0)
        rows.append({"what": label, "seconds": statistics.median(times), "load1": load1()})
    return rows


def print_prepare(rows: list[dict]) -> None:
    print("\n### Warm data preparation (prepare_data + setup of a hybrid run; median)\n")
    print("| step | seconds | load (1 min) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['seconds']:.2f} | {r['load1']:.2f} |")
    by = {r["what"]: r["seconds"] for r in rows}
    off, on = (by.get(f"warm data preparation, validation cache {x}") for x in ("off", "on"))
    if off and on:
        print(f"\nvalidation cache: warm preparation {off:.1f} s -> {on:.1f} s ({off / max(on, 1e-9):.2f}x)")


# --------------------------------------------------------------------------------------------
# The 15-run ablation
# --------------------------------------------------------------------------------------------

def run_ablation(overrides: list[str], folds: str = "0,1,2,3,4", out: Path | None = None) -> dict:
    """``train.py -m experiment=idh_handcrafted,idh_deep,idh_hybrid data.split.strategy=kfold
    data.split.fold=<folds>`` then ``evaluate.py`` over the sweep; wall time per mode (from each run's
    ``metrics.json`` ``seconds_total``), of the sweep process and of evaluate.py."""
    out = Path(out or tempfile.mkdtemp(prefix="bench_ablation_"))
    sweep = out / "multirun"
    env = {**os.environ, "RADFUSION_ROOT": str(ROOT), "WANDB_MODE": "offline"}
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", f"experiment={','.join(ABLATION)}",
           "data.split.strategy=kfold", f"data.split.fold={folds}", f"hydra.sweep.dir={sweep}", *overrides]
    load_before = load1()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    train_wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"ablation sweep failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    t0 = time.perf_counter()
    ev = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), f"runs=[{sweep}]", f"output={out / 'table.csv'}",
                         f"report_dir={out / 'report'}", *[o for o in overrides if o.startswith("paths.")]],
                        capture_output=True, text=True, env=env)
    eval_wall = time.perf_counter() - t0
    if ev.returncode:
        raise SystemExit(f"evaluate.py failed:\n{ev.stderr[-3000:]}")
    modes: dict[str, dict] = {}
    for metrics in sorted(sweep.rglob("metrics.json")):
        m = json.loads(metrics.read_text())
        entry = modes.setdefault(m["mode"], {"runs": 0, "seconds": 0.0, "data_seconds": 0.0, "auc": []})
        entry["runs"] += 1
        entry["seconds"] += float(m.get("seconds_total", float("nan")))
        entry["data_seconds"] += float(m.get("seconds_data", float("nan")))
        entry["auc"].append(m.get("test/auc", float("nan")))
    return {"modes": modes, "train_wall_s": train_wall, "evaluate_wall_s": eval_wall, "load_before": load_before,
            "load_after": load1(), "sweep": str(sweep), "evaluate_stdout": ev.stdout[-4000:]}


def print_ablation(res: dict, folds: str) -> None:
    n = len(folds.split(","))
    print(f"\n### Ablation: {len(ABLATION)} modes x {n} folds, then evaluate.py (load {res['load_before']:.2f} before, "
          f"{res['load_after']:.2f} after)\n")
    print("| mode | runs | run wall s (sum) | of which data s | per run s | mean test AUC |")
    print("|---|---|---|---|---|---|")
    for mode, e in res["modes"].items():
        auc = np.nanmean([a for a in e["auc"] if a is not None]) if e["auc"] else float("nan")
        print(f"| {mode} | {e['runs']} | {e['seconds']:.0f} | {e['data_seconds']:.0f} | "
              f"{e['seconds'] / max(e['runs'], 1):.0f} | {auc:.3f} |")
    total = res["train_wall_s"] + res["evaluate_wall_s"]
    print(f"\nsweep process wall {res['train_wall_s']:.0f} s + evaluate.py {res['evaluate_wall_s']:.0f} s = "
          f"{total:.0f} s ({total / 60:.1f} min; target <= 30 min on 2 quiet cores); sweep: {res['sweep']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("issue-16 levers, preparation and ablation")
    g.add_argument("--levers", action="store_true", help="fp32 vs bf16-mixed vs channels_last vs both")
    g.add_argument("--lever-steps", type=int, default=4, help="timed steps per lever (after one warm-up)")
    g.add_argument("--lever-repeats", type=int, default=1, help="seeds (non-finite gradients are counted over all)")
    g.add_argument("--lever-batch", type=int, default=None, help="default: data.batch_size")
    g.add_argument("--lever-list", default=",".join(LEVERS))
    g.add_argument("--prepare", action="store_true", help="warm data preparation, validation cache off / on")
    g.add_argument("--prepare-repeats", type=int, default=1)
    g.add_argument("--ablation", action="store_true", help="run the 15-run 5-fold ablation + evaluate.py")
    g.add_argument("--folds", default="0,1,2,3,4", help="ablation folds (a tiny check: 0,1)")
    g.add_argument("--reuse", action="store_true",
                   help="ablation with data.reuse_in_process=true (runs of one mode share the prepared cohort)")
    g.add_argument("--override", action="append", default=[],
                   help="train.yaml override for --levers/--prepare/--ablation (repeatable), e.g. "
                        "data.roi.size=32 or paths.root_dir=/tmp/x")


def run_selected(args: argparse.Namespace, threads: int) -> dict:
    """What ``--levers`` / ``--prepare`` / ``--ablation`` ask for; prints the tables, returns the rows."""
    from radfusion.imaging.roi import build_roi_cache

    out: dict = {}
    print(f"\n`uptime`: {uptime()}")
    if args.levers:
        from radfusion.data.prepare import read_validated_cohort

        cfg = compose_train(["experiment=idh_deep", "data.progress=false", *args.override])
        block = OmegaConf.to_container(cfg.data.cohort, resolve=True)  # (a synthetic cohort is generated once)
        cohort = read_validated_cohort(block, progress=False, cache_dir=cfg.data.cache_dir)
        batch = int(args.lever_batch or cfg.data.batch_size)
        cohort.subjects = cohort.subjects[: max(2 * batch, 8)]
        roi = instantiate(cfg.data, use_images=True, use_radiomics=False).roi_settings  # as a run builds them
        paths, _ = build_roi_cache(cohort, roi, cfg.data.cache_dir, n_jobs=1, progress=False)
        rows = bench_levers([paths[s] for s in cohort.ids if s in paths], list(args.override), batch,
                            args.lever_steps, args.lever_repeats, [x for x in args.lever_list.split(",") if x])
        print_levers(rows, args.lever_steps, args.lever_repeats, threads)
        out["levers"] = rows
    if args.prepare:
        out["prepare"] = bench_prepare(list(args.override), args.prepare_repeats)
        print_prepare(out["prepare"])
    if args.ablation:
        res = run_ablation([*args.override, *(["data.reuse_in_process=true"] if args.reuse else [])], args.folds)
        print_ablation(res, args.folds)
        out["ablation"] = res
    print(f"\n`uptime`: {uptime()}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    add_arguments(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("RADFUSION_ROOT", str(ROOT))
    os.environ.setdefault("WANDB_MODE", "offline")
    torch.set_num_threads(args.threads)
    res = run_selected(args, args.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
