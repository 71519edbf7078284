"""What applying a trained model costs: bundle size, and ``predict.py`` time per subject with a cold and a
warm cache.

    python scripts/bench_predict.py --run runs/idh_hybrid/<time> [--data synthetic_external] [--extra subjects=[...]]

Cold: a fresh, empty cache folder (every subject is validated, extracted and gets its ROI built);
warm: the same command again on that cache (validation, then cached features and ROIs). Each row is one
``predict.py`` process, so it includes Python and torch start-up (~5-10 s). Take the figures on a quiet
machine; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bundle_size(run: Path) -> list[tuple[str, int]]:
    model = run / "model"
    if not (model / "bundle.json").is_file():
        raise SystemExit(f"{run}: no model/bundle.json (train it with this radfusion version)")
    return sorted((p.name, p.stat().st_size) for p in model.iterdir() if p.is_file())


def predict_once(run: Path, data: str, cache: Path, out: Path, extra: list[str]) -> tuple[float, dict]:
    cmd = [sys.executable, str(ROOT / "predict.py"), f"model={run}", f"data={data}", f"paths.cache_dir={cache}",
           f"hydra.run.dir={out}", "progress=false", "n_bootstrap=200", *extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"predict.py failed:\n{res.stderr[-3000:]}")
    return seconds, json.loads((out / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="a training run folder holding model/")
    ap.add_argument("--data", default="synthetic_external", help="data config of the cohort to score")
    ap.add_argument("--extra", nargs="*", default=[], help="more predict.py overrides")
    args = ap.parse_args()

    files = bundle_size(args.run)
    total = sum(s for _, s in files)
    print(f"bundle {args.run / 'model'}: {total / 1e6:.2f} MB")
    for name, size in files:
        print(f"  {name:<20} {size / 1e3:>10.1f} kB")
    extra = list(args.extra)
    with tempfile.TemporaryDirectory(prefix="radfusion-bench-predict-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        rows = []
        for label in ("cold", "warm"):
            before = load()
            seconds, metrics = predict_once(args.run, args.data, cache, tmp / label, extra)
            n = sum(metrics["n_subjects"].values())
            rows.append((label, n, seconds, seconds / n, before, load()))
    print(f"\n{'cache':<6} {'subjects':>8} {'seconds':>9} {'s/subject':>10}  load before -> after")
    for label, n, seconds, per, before, after in rows:
        print(f"{label:<6} {n:>8d} {seconds:>9.1f} {per:>10.2f}  {before} -> {after}")
    print(f"\ncold/warm ratio: {rows[0][2] / rows[1][2]:.1f}x")


if __name__ == "__main__":
    main()
