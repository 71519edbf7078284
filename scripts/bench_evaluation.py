"""Time to build an evaluation report from fake run folders, by cohort size, runs and resamples.

    python scripts/bench_evaluation.py            # a table: seconds, report size, seconds per run
    python scripts/bench_evaluation.py --quick    # smaller grid

Fake runs come from ``radfusion.synthetic.runs`` (markers + survival, 3 modes × seeds);
nothing is trained. Speed targets live here, never in the timed tests.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from radfusion.evaluation.run import evaluate
from radfusion.synthetic.runs import write_sweep


def one(n_subjects: int, seeds: int, n_folds: int, n_boot: int, root: Path) -> dict:
    sweep = write_sweep(root / f"n{n_subjects}_s{seeds}_f{n_folds}", n=n_subjects, seeds=tuple(range(seeds)),
                        n_folds=n_folds)
    out = root / f"rep_n{n_subjects}_s{seeds}_f{n_folds}_b{n_boot}"
    cfg = OmegaConf.create({"runs": [str(sweep)], "report_dir": str(out), "name": out.name, "n_bootstrap": n_boot})
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluate(cfg)
    seconds = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return {"subjects": n_subjects, "runs": 3 * seeds, "folds": n_folds, "n_boot": n_boot, "seconds": seconds,
            "kB": size / 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    grid = ([(100, 3, 1, 2000), (100, 3, 1, 500)] if args.quick else
            [(100, 3, 1, 2000), (100, 3, 1, 500), (100, 3, 5, 2000), (300, 3, 5, 2000), (100, 10, 1, 2000)])
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one(*g, Path(tmp)) for g in grid]
    base = rows[0]["seconds"]
    print(f"{'subjects':>8} {'runs':>5} {'folds':>5} {'n_boot':>6} {'seconds':>8} {'x first':>7} {'report kB':>9}")
    for r in rows:
        print(f"{r['subjects']:>8} {r['runs']:>5} {r['folds']:>5} {r['n_boot']:>6} {r['seconds']:>8.1f} "
              f"{r['seconds'] / base:>7.2f} {r['kB']:>9.0f}")


if __name__ == "__main__":
    main()
