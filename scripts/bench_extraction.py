"""Benchmark habitat radiomics: naive PyRadiomics loop vs the shared-filtering engine.

    python scripts/bench_extraction.py --n-subjects 2                      # default cohort (96³) + a BraTS-sized case
    python scripts/bench_extraction.py --n-subjects 4 --features default --datasets default
    python scripts/bench_extraction.py --verify                            # engine == execute at BraTS size

For each dataset (the first ``--n-subjects`` of the default synthetic cohort, 96³ at 1 mm, and one
synthetic 240×240×155 case) it runs, each in a fresh process, on the same machine:

- ``naive``: one ``RadiomicsFeatureExtractor.execute`` per habitat × sequence on the image file, with
  PyRadiomics doing its own normalisation, 1 mm resampling and diagnostics (its defaults), 1 process;
- ``engine 1``: :func:`radfusion.radiomics.extract.extract_cohort` on 1 process, cold cache;
- ``engine N``: the same on ``--jobs`` processes (default: all cores), cold cache;
- ``warm``: ``engine N`` again on its filled cache;
- with ``--backend dask``, ``engine N`` and ``warm`` run on a Dask ``LocalCluster`` of ``--jobs``
  single-threaded worker processes (started and stopped inside the timed call, as a run does), and
  ``dask 1`` (one worker) is added, so the 2-worker ratio is measured inside Dask too.

and prints one table: seconds, patients/hour, speed-up over the naive loop, features per subject and
peak resident memory per process (the worker maximum for the engine). Times on a shared machine are
noisy; the ratios are what to compare.

``--verify`` instead extracts the BraTS-sized case through the engine and compares every feature with
PyRadiomics' ``execute`` on the same crops (the engine tests' check, at full size); it prints the
number compared and the largest relative difference.

``--profile`` instead computes one item of the BraTS-sized case (``--profile-sequence``, shape on) in
this process and prints where its time goes: per PyRadiomics feature class, the class set-up (array
copies, binning), its C texture matrix (``radiomics._cmatrices``) and the rest of its feature code, and
per image type; what remains (reading, z-scoring, filters, crops, shape) is one line. It is what decides
which part of the engine is worth attacking.
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
IMAGE_TYPES = {
    "full": {"Original": {}, "LoG": {"sigma": [1.0, 3.0, 5.0]}, "Wavelet": {}},
    "default": {"Original": {}},
}


def _settings(args: argparse.Namespace):
    from radfusion.cohort.habitats import ALL_HABITATS, HABITATS
    from radfusion.radiomics.settings import FeatureSettings

    settings = FeatureSettings(habitats=list(ALL_HABITATS if args.features == "full" else HABITATS),
                               sequences=list(args.sequences))
    settings.params["imageType"] = IMAGE_TYPES[args.features]
    return settings


def _peak_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries the parent's peak over exec into ru_maxrss.
    from radfusion.radiomics.extract import peak_rss_mb

    return peak_rss_mb() or float("nan")


def run_naive(args: argparse.Namespace, manifest: str, ids: list[str]) -> dict:
    """One execute per habitat x sequence, PyRadiomics preprocessing everything itself each time."""
    import numpy as np
    import SimpleITK as sitk
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    from radfusion.cohort.habitats import habitat_masks
    from radfusion.cohort.readers import load_cohort
    from radfusion.radiomics.pyrad import quiet_pyradiomics

    settings = _settings(args)
    params = settings.pyradiomics_params
    # What a PyRadiomics user gets out of the box on MRI: its own z-score normalisation (x100, to
    # match binWidth 25), 1 mm B-spline resampling, and diagnostics (additionalInfo, the default).
    params["setting"].update(normalize=True, normalizeScale=100, resampledPixelSpacing=[1, 1, 1],
                             interpolator="sitkBSpline", additionalInfo=True)
    quiet_pyradiomics()
    extractor = RadiomicsFeatureExtractor(params)
    cohort = load_cohort("manifest", manifest)
    t0 = time.perf_counter()
    n_features = 0
    for sid in ids:
        subject = cohort.subject(sid)
        seg = sitk.ReadImage(str(subject.seg))
        arr = sitk.GetArrayFromImage(seg)
        brain = sitk.GetArrayFromImage(sitk.ReadImage(str(subject.images[settings.sequences[0]]))) != 0
        masks = habitat_masks(arr, cohort.label_convention, settings.habitats,
                              spacing=seg.GetSpacing()[::-1], ring_mm=settings.ring_mm, brain=brain)
        names = set()
        for habitat, mask in masks.items():
            if mask.sum() < settings.min_voxels:
                continue
            mask_img = sitk.GetImageFromArray(mask.astype(np.uint8))
            mask_img.CopyInformation(seg)
            for seq in settings.sequences:
                result = extractor.execute(str(subject.images[seq]), mask_img, label=1)
                names.update(f"{habitat}_{seq}_{k}" for k in result if not k.startswith("diagnostics_"))
        n_features = max(n_features, len(names))
    return {"seconds": time.perf_counter() - t0, "peak_mb": _peak_mb(), "features": n_features}


def run_engine(args: argparse.Namespace, manifest: str, ids: list[str], cache: str, n_jobs: int,
               backend: str = "loky") -> dict:
    import pandas as pd

    from radfusion.cohort.readers import load_cohort
    from radfusion.cohort.subject import Cohort
    from radfusion.radiomics.extract import extract_cohort

    full = load_cohort("manifest", manifest)
    cohort = Cohort([full.subject(i) for i in ids], full.clinical.loc[ids], full.label_convention, full.root)
    settings = _settings(args)
    settings.backend = backend
    t0 = time.perf_counter()
    df = extract_cohort(cohort, settings, cache, n_jobs=n_jobs, progress=False)
    seconds = time.perf_counter() - t0
    diag = pd.read_csv(Path(cache) / settings.cache_key() / "diagnostics.csv")
    worker_peak = float(diag["peak_rss_mb"].max()) if diag["peak_rss_mb"].notna().any() else _peak_mb()
    return {"seconds": seconds, "peak_mb": max(worker_peak, _peak_mb()) if n_jobs == 1 else worker_peak,
            "features": int(df.shape[1]), "failed": len(df.attrs.get("failures", {})),
            "computed": int((diag["status"] == "computed").sum())}


def _child(args: argparse.Namespace) -> None:
    ids = args.ids.split(",")
    if args.mode == "naive":
        out = run_naive(args, args.manifest, ids)
    else:
        out = run_engine(args, args.manifest, ids, args.cache, args.child_jobs, args.child_backend)
    print("RESULT " + json.dumps(out))


def _spawn(args: argparse.Namespace, mode: str, manifest: Path, ids: list[str], cache: Path | None = None,
           jobs: int = 1, backend: str = "loky") -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--manifest", str(manifest), "--ids", ",".join(ids),
           "--features", args.features, "--sequences", *args.sequences, "--child-jobs", str(jobs),
           "--child-backend", backend]
    if cache is not None:
        cmd += ["--cache", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def bench(args: argparse.Namespace, name: str, manifest: Path, ids: list[str], work: Path) -> list[dict]:
    rows = []
    n = len(ids)

    def add(mode: str, procs: int, r: dict) -> None:
        rows.append({"dataset": name, "mode": mode, "procs": procs, "subjects": n, **r,
                     "s_per_subject": r["seconds"] / n, "patients_per_hour": 3600.0 * n / r["seconds"]})
        print(f"  {name:<28} {mode:<9} {procs} proc: {r['seconds']:8.1f} s", flush=True)

    if not args.skip_naive:
        add("naive", 1, _spawn(args, "naive", manifest, ids))
    add("engine", 1, _spawn(args, "engine", manifest, ids, work / f"{name}_1", 1))
    parallel = "engine" if args.backend == "loky" else "dask"
    if args.backend == "dask":
        add("dask", 1, _spawn(args, "engine", manifest, ids, work / f"{name}_dask1", 1, "dask"))
    cache = work / f"{name}_{args.jobs}"
    add(parallel, args.jobs, _spawn(args, "engine", manifest, ids, cache, args.jobs, args.backend))
    add("warm", args.jobs, _spawn(args, "engine", manifest, ids, cache, args.jobs, args.backend))
    return rows


def profile_item(manifest: Path, sid: str, sequence: str, args: argparse.Namespace) -> str:
    """Markdown tables of where one item's time goes (see the module doc); timing wrappers are removed after."""
    import collections

    import radiomics

    from radfusion.cohort.readers import load_cohort
    from radfusion.radiomics import classes as classes_module
    from radfusion.radiomics import engine
    from radfusion.radiomics.pyrad import build_plan

    settings = _settings(args)
    settings.sequences = [sequence]
    plan = build_plan(settings.pyradiomics_params)
    cohort = load_cohort("manifest", manifest)
    times: dict = collections.defaultdict(float)
    state = {"image_type": "?"}
    classes = radiomics.getFeatureClasses()
    saved_classes = dict(classes)
    saved_c: list[tuple] = []

    def timed_class(base, name):
        class Timed(base):
            def __init__(self, *a, **kw):
                t = time.perf_counter()
                super().__init__(*a, **kw)
                times[(name, "set-up", state["image_type"])] += time.perf_counter() - t

            def execute(self):
                t = time.perf_counter()
                out = super().execute()
                times[(name, "features", state["image_type"])] += time.perf_counter() - t
                return out
        Timed.__module__ = base.__module__  # PyRadiomics' logger name, kept quiet
        return Timed

    def timed_c(name, real):
        def call(*a, **kw):
            t = time.perf_counter()
            out = real(*a, **kw)
            times[(name, "C matrix", state["image_type"])] += time.perf_counter() - t
            return out
        return call

    real_compute = classes_module.compute_features

    def compute(extractor, image, mask, image_type_name, **kw):
        state["image_type"] = image_type_name.split("-")[0]
        return real_compute(extractor, image, mask, image_type_name, **kw)

    for name in list(classes):
        if not name.startswith("shape"):
            classes[name] = timed_class(saved_classes[name], name)
            module = __import__(saved_classes[name].__module__, fromlist=["cMatrices"])
            fn = getattr(getattr(module, "cMatrices", None), f"calculate_{name}", None)
            if fn is not None:
                saved_c.append((module.cMatrices, f"calculate_{name}", fn))
                setattr(module.cMatrices, f"calculate_{name}", timed_c(name, fn))
    real_shared = engine.shared_run_lengths

    def shared(crops, kw, flat_angles=None):  # the GLRLM call several habitats share (engine.py)
        key = ("glrlm", "C matrix", state["image_type"])
        t, c0 = time.perf_counter(), times[key]
        out = real_shared(crops, kw, flat_angles)
        in_c = times[key] - c0
        times[key] -= in_c  # booked under its own row of the image-type table
        where = "GLRLM call shared by the disjoint habitats"
        times[("glrlm", "C matrix", where)] += in_c
        times[("glrlm", "set-up", where)] += time.perf_counter() - t - in_c
        times[("glrlm", "shared C", where)] += in_c
        return out

    # The engine's faster classes are built on the registry's: rebuild them on the timed ones.
    classes_module.fast_feature_classes.cache_clear()
    engine.compute_features = compute
    engine.shared_run_lengths = shared
    try:
        t0 = time.perf_counter()
        item = engine.compute_item(cohort.subject(sid), sequence, True, settings, plan, cohort.label_convention)
        total = time.perf_counter() - t0
    finally:
        engine.compute_features = real_compute
        engine.shared_run_lengths = real_shared
        classes.clear()
        classes.update(saved_classes)
        classes_module.fast_feature_classes.cache_clear()
        for owner, attr, fn in saved_c:
            setattr(owner, attr, fn)
    # "features" includes the C matrix (glrlm's shared call: "set-up" does): split it into C and the rest.
    per_class: dict = collections.defaultdict(lambda: collections.defaultdict(float))
    per_type: dict = collections.defaultdict(float)
    for (name, phase, image_type), v in times.items():
        per_class[name][phase] += v
        if phase != "C matrix":  # class time (its own C included), set-up, the shared call's C
            per_type[image_type] += v
    lines = [f"### One item: subject {sid}, {sequence}, shape on; {total:.1f} s "
             f"({len(item['entries'])} entries; habitat voxels {item['voxels']})", "",
             "| feature class | set-up s | C matrix s | rest of its features s | total s | % of item |",
             "|---|---|---|---|---|---|"]
    classes_total = 0.0
    by_total = sorted(per_class.items(), key=lambda kv: -(kv[1]["set-up"] + kv[1]["features"] + kv[1]["shared C"]))
    for name, ph in by_total:
        # The shared GLRLM call's C time is outside the class's own execute ("features").
        tot = ph["set-up"] + ph["features"] + ph["shared C"]
        rest = ph["features"] - (ph["C matrix"] - ph["shared C"])
        classes_total += tot
        lines.append(f"| {name} | {ph['set-up']:.2f} | {ph['C matrix']:.2f} | {rest:.2f} "
                     f"| {tot:.2f} | {100 * tot / total:.0f} |")
    c_total = sum(ph["C matrix"] for ph in per_class.values())
    lines.append(f"| **all classes** | | **{c_total:.2f}** | | **{classes_total:.2f}** | "
                 f"**{100 * classes_total / total:.0f}** |")
    lines.append(f"| reading, z-score, filters, crops, masks, shape (the rest) | | | | {total - classes_total:.2f} | "
                 f"{100 * (total - classes_total) / total:.0f} |")
    lines += ["", "| image type | feature classes s |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in sorted(per_type.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def verify_item(manifest: Path, sid: str, sequences: list[str], args: argparse.Namespace) -> str:
    """Every feature of one subject through the engine vs PyRadiomics' ``execute`` on the same crops.

    The engine tests do this on small volumes; this is the same comparison on the BraTS-sized case
    with the full set (shape from the first sequence), as a one-off check of the faster paths
    (``radfusion.radiomics.mesh``, ``.classes``, ``.runlength``) on large habitats.
    """
    import numpy as np
    import SimpleITK as sitk

    from radfusion.cohort.habitats import habitat_masks
    from radfusion.cohort.readers import load_cohort
    from radfusion.imaging.preprocess import crop, load_preprocessed
    from radfusion.radiomics.extract import extract_subject
    from radfusion.radiomics.pyrad import extract_region

    settings = _settings(args)
    settings.sequences = list(sequences)
    cohort = load_cohort("manifest", manifest)
    subject = cohort.subject(sid)
    t0 = time.perf_counter()
    features, diag = extract_subject(subject, settings)
    engine_s = time.perf_counter() - t0
    images, seg = load_preprocessed(subject, settings.spacing, settings.normalize, settings.normalize_scale,
                                    settings.sequences)
    seg_arr = sitk.GetArrayFromImage(seg)
    box = tuple(slice(a, b) for a, b in diag["bbox"])
    worst, worst_name, n = 0.0, "", 0
    t0 = time.perf_counter()
    for seq in settings.sequences:
        brain = sitk.GetArrayFromImage(images[seq]) != 0
        masks = habitat_masks(seg_arr, cohort.label_convention, settings.habitats, spacing=seg.GetSpacing()[::-1],
                              ring_mm=settings.ring_mm, brain=brain)
        cropped = crop(images[seq], box)
        for habitat, mask in masks.items():
            mask_img = sitk.GetImageFromArray(mask[box].astype(np.uint8))
            mask_img.CopyInformation(cropped)
            for name, ref in extract_region(cropped, mask_img, settings.pyradiomics_params).items():
                if "_shape_" in name and seq != settings.sequences[0]:
                    continue  # shape comes from the first sequence
                col = (f"{habitat}_{name.removeprefix('original_')}" if "_shape_" in name
                       else f"{habitat}_{seq}_{name}")
                got = features[col]
                n += 1
                if np.isnan(ref) and np.isnan(got):
                    continue
                err = abs(got - ref) / abs(ref) if ref != 0 else abs(got)
                if not err <= worst:  # NaN against a number counts as the worst
                    worst, worst_name = err, col
    reference_s = time.perf_counter() - t0
    return (f"subject {sid}, {', '.join(settings.sequences)}: engine {engine_s:.1f} s, PyRadiomics execute on the "
            f"same crops {reference_s:.1f} s; {n} features compared, largest relative difference {worst:.3g}"
            f"{f' ({worst_name})' if worst_name else ''}")


def _table(rows: list[dict]) -> str:
    lines = ["| dataset | mode | procs | seconds | s/subject | patients/h | x naive | x engine-1 | features/subject "
             "| peak MB/process |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        same = [x for x in rows if x["dataset"] == r["dataset"]]
        naive = next((x for x in same if x["mode"] == "naive"), None)
        one = next(x for x in same if x["mode"] == "engine" and x["procs"] == 1)
        vs_naive = f"{naive['seconds'] / r['seconds']:.2f}" if naive else "-"
        lines.append(f"| {r['dataset']} | {r['mode']} | {r['procs']} | {r['seconds']:.1f} | {r['s_per_subject']:.1f} "
                     f"| {r['patients_per_hour']:.0f} | {vs_naive} | {one['seconds'] / r['seconds']:.2f} "
                     f"| {r['features']} | {r['peak_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-subjects", type=int, default=2, help="subjects of the default (96³) cohort")
    p.add_argument("--shape", type=int, nargs=3, default=[96, 96, 96], help="grid of the default cohort")
    p.add_argument("--datasets", nargs="+", choices=["default", "brats"], default=["default", "brats"],
                   help="default: the first --n-subjects of the 96³ cohort; brats: one synthetic 240x240x155 case")
    p.add_argument("--features", choices=sorted(IMAGE_TYPES), default="full",
                   help="full: 6 habitats (ring included) x Original + LoG 1/3/5 mm + wavelet; "
                        "default: 5 habitats, Original")
    p.add_argument("--sequences", nargs="+", default=["t1", "t1ce", "t2", "flair"])
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes of the parallel engine run")
    p.add_argument("--backend", choices=["loky", "dask"], default="loky",
                   help="parallel engine runs on loky processes or a Dask LocalCluster of --jobs worker processes")
    p.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "radfusion_bench"))
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--output", help="also write the table (Markdown) and rows (JSON) here")
    p.add_argument("--profile", action="store_true",
                   help="profile one item of the BraTS-sized case instead (see the module doc)")
    p.add_argument("--profile-sequence", default="t1ce")
    p.add_argument("--verify", action="store_true",
                   help="instead compare every feature of the BraTS-sized case (--verify-sequences) through "
                        "the engine with PyRadiomics' execute on the same crops (about a minute)")
    p.add_argument("--verify-sequences", nargs="+", default=["t1ce", "flair"])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--manifest", help=argparse.SUPPRESS)
    p.add_argument("--ids", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--child-jobs", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--child-backend", default="loky", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.mode = args.child
        _child(args)
        return

    from radfusion.cohort.readers import load_cohort
    from radfusion.synthetic.generator import generate_cohort

    data = Path(args.data_dir)
    if args.verify:
        from radfusion.radiomics.pyrad import quiet_pyradiomics

        quiet_pyradiomics()
        manifest = generate_cohort(data / "brats_240", n_subjects=2, shape=(240, 240, 155), seed=0, progress=False)
        print(verify_item(manifest, load_cohort("manifest", manifest).ids[1], args.verify_sequences, args))
        return
    if args.profile:
        manifest = generate_cohort(data / "brats_240", n_subjects=2, shape=(240, 240, 155), seed=0, progress=False)
        print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
        print(profile_item(manifest, load_cohort("manifest", manifest).ids[1], args.profile_sequence, args))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return
    work = Path(tempfile.mkdtemp(prefix="cache_", dir=data if data.exists() else None))
    datasets = []
    shape = tuple(args.shape)
    if "default" in args.datasets:
        manifest = generate_cohort(data / f"default_{shape[0]}", n_subjects=max(args.n_subjects, 1), shape=shape,
                                   seed=0, progress=False)
        datasets.append((f"default {shape[0]}³ x{args.n_subjects}", manifest,
                         load_cohort("manifest", manifest).ids[: args.n_subjects]))
    if "brats" in args.datasets:
        # Subject 1 of seed 0 has every habitat (ET, NCR, ED); its WT is ~209 cm³.
        manifest = generate_cohort(data / "brats_240", n_subjects=2, shape=(240, 240, 155), seed=0, progress=False)
        datasets.append(("BraTS-sized 240x240x155", manifest, [load_cohort("manifest", manifest).ids[1]]))
    print(f"habitat radiomics benchmark: features={args.features}, sequences={args.sequences}, backend={args.backend}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for name, man, ids in datasets:
        rows += bench(args, name.split(" x")[0].replace("³", "^3"), man, ids, work)
    table = _table(rows)
    print("\n" + table)
    for name in dict.fromkeys(r["dataset"] for r in rows):
        one = next((r for r in rows if r["dataset"] == name and r["mode"] == "dask" and r["procs"] == 1), None)
        many = next((r for r in rows if r["dataset"] == name and r["mode"] == "dask" and r["procs"] > 1), None)
        if one and many:
            print(f"{name}: Dask {many['procs']} workers vs 1 worker: {one['seconds'] / many['seconds']:.2f}x")
    print(f"\nload average after: {os.getloadavg()[0]:.1f} (other processes on the machine inflate every time)")
    if args.output:
        Path(args.output).with_suffix(".md").write_text(table + "\n")
        Path(args.output).with_suffix(".json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
