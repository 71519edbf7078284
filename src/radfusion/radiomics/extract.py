"""Habitat radiomics of a cohort: shared filtering per (subject, sequence), parallel, cached, resumable.

Column names (one row per subject) are :mod:`radfusion.radiomics.columns`': per habitat its voxels,
empty flag, shape and per-sequence features (``ET_t1ce_original_firstorder_Mean``), then a
``<sequence>_missing`` indicator for each sequence some subject lacks (its features NaN there).

The work is a task list of (subject, sequence) items (see :mod:`radfusion.radiomics.engine`), run
in this process, on loky worker processes or on a Dask cluster. Each item is cached as soon as it
is done, so a killed run loses at most the items in flight and a rerun gives the identical table.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from radfusion.cache import (
    CacheWriteError,
    atomic_path,
    atomic_write_text,
    ensure_writable,
    remove_stale_temporaries,
    settings_hash,
    write_feature_parquet,
)
from radfusion.cohort.subject import GEOMETRY_TOLERANCE, Cohort, CohortError, Subject
from radfusion.imaging.preprocess import brain_key
from radfusion.radiomics import engine
from radfusion.radiomics.backends import run_tasks
from radfusion.radiomics.columns import (
    assemble_row,
    feature_columns,
    missing_indicators,
    present_sequences,
)
from radfusion.radiomics.pyrad import (
    build_extractor,
    build_plan,
    capture_warnings,
    extract_region,
)
from radfusion.radiomics.settings import FeatureSettings

__all__ = ["build_extractor", "extract_region", "extract_subject", "extract_cohort", "feature_columns"]

log = logging.getLogger(__name__)

_NAN = float("nan")


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------

def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MB (Linux ``VmHWM``; ``ru_maxrss`` would carry the
    parent's peak over into a freshly spawned worker), or None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)  # kB
    except OSError:
        pass
    return None


def _run_task(task: dict, settings: FeatureSettings, label_convention: str | dict,
              sitk_threads: int | None = None, tolerance: float = GEOMETRY_TOLERANCE,
              brain_mask: str = "auto") -> dict:
    """Compute (or complete) one cached item; never raises: a failure comes back as data."""
    if sitk_threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(sitk_threads)
    subject: Subject = task["subject"]
    out = {"subject_id": subject.subject_id, "sequence": task["sequence"], "status": "failed", "item": None,
           "error": "", "seconds": None, "peak_rss_mb": None, "warnings": {}}
    t0 = time.perf_counter()
    try:
        plan = build_plan(settings.pyradiomics_params)
        path = task.get("path")
        cached = engine.read_item(path) if path is not None else None
        with capture_warnings() as counts:
            item = engine.compute_item(subject, task["sequence"], task["with_shape"], settings, plan,
                                       label_convention, cached, tolerance=tolerance, brain_mask=brain_mask)
        item["seconds"] = round(time.perf_counter() - t0, 3)
        item["warnings"] = dict(counts)
        if path is not None:
            item["checksum"] = task.get("checksum")
            engine.write_item(path, item)
        out.update(status="computed", item=item, warnings=dict(counts))
    except CacheWriteError as err:  # the disk, not the subject: extract_cohort stops the run
        out["error"], out["write_error"] = str(err), [err.errno, err.filename, err.detail]
    except CohortError as err:
        out["error"] = str(err)
    except Exception as err:  # noqa: BLE001 - one bad subject must not end the cohort
        out["error"] = (f"subject {subject.subject_id}, sequence {task['sequence']}: feature extraction failed "
                        f"({type(err).__name__}: {err}); inputs: {subject.images.get(task['sequence'])}, "
                        f"segmentation {subject.seg}")
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def extract_subject(subject: Subject, settings: FeatureSettings, label_convention: str | dict = "brats2021",
                    tolerance: float = GEOMETRY_TOLERANCE, brain_mask: str = "auto") -> tuple[dict[str, float], dict]:
    """All habitat features of one subject, in this process, without cache.

    ``tolerance`` is the image/mask geometry tolerance (the validated cohort's ``geometry_tolerance``),
    ``brain_mask`` the brain of the z-score (the cohort's ``brain_mask``).

    Returns:
        ``(features, diagnostics)``. ``features`` maps column name to value (see the module doc);
        an empty habitat has the same columns as a non-empty one, all NaN; so has a sequence the
        subject lacks, plus ``<sequence>_missing = 1`` (absent when it lacks none). ``diagnostics`` holds
        ``voxels`` (per habitat, after resampling), ``bbox`` (``[[start, stop], ...]`` in (z, y, x)
        voxels of the resampled grid, None without tumour), ``seconds`` and ``warnings``.

    Raises:
        CohortError: unreadable file, geometry mismatch, missing segmentation, NaN intensities,
            labels outside the convention (the message names subject and file).
    """
    t0 = time.perf_counter()
    plan = build_plan(settings.pyradiomics_params)
    items, counts = {}, Counter()
    present = present_sequences(subject, settings)
    for seq in present:  # a sequence the subject lacks has no item: NaN features + <sequence>_missing
        with capture_warnings() as c:
            items[seq] = engine.compute_item(subject, seq, seq == present[0], settings, plan, label_convention,
                                             tolerance=tolerance, brain_mask=brain_mask)
        counts.update(c)
    features = dict.fromkeys(feature_columns(settings, plan), _NAN)
    features.update(assemble_row(items, settings, plan))
    missing = {subject.subject_id: subject.missing_sequences(settings.sequences)}
    features.update({k: v[0] for k, v in missing_indicators(missing, settings).items()})
    first = items[present[0]]
    voxels = {h: int(first["voxels"].get(engine.habitat_key(h, settings), 0)) for h in settings.habitats}
    diagnostics = {"voxels": voxels, "bbox": first.get("box"), "seconds": round(time.perf_counter() - t0, 3),
                   "warnings": dict(counts)}
    return features, diagnostics


# --------------------------------------------------------------------------------------------
# A cohort
# --------------------------------------------------------------------------------------------

def _diagnostics_row(result: dict, settings: FeatureSettings) -> dict:
    item = result.get("item") or {}
    warns = result.get("warnings") or item.get("warnings") or {}
    row = {"subject_id": result["subject_id"], "sequence": result["sequence"], "status": result["status"],
           "seconds": result.get("seconds") if result["status"] != "cached" else item.get("seconds"),
           "peak_rss_mb": result.get("peak_rss_mb"), "bbox": json.dumps(item.get("box")),
           "n_warnings": int(sum(warns.values())), "warnings": json.dumps(dict(Counter(warns).most_common(5))),
           "rejected": json.dumps({**item.get("rejected", {}), **item.get("reseg_rejected", {})}),
           "error": result.get("error", "")}
    for h in settings.habitats:
        n = (item.get("voxels") or {}).get(engine.habitat_key(h, settings))
        row[f"voxels_{h}"] = n
    return row


def extract_cohort(cohort: Cohort, settings: FeatureSettings, cache_dir: str | Path, n_jobs: int | None = None,
                   progress: bool = True, backend: str | None = None, scheduler=None) -> pd.DataFrame:
    """Habitat features of every subject: one row per subject (index ``subject_id``).

    Items are cached under ``cache_dir/items/``; ``features.parquet``, ``diagnostics.csv`` (one row
    per subject × sequence: status, seconds, peak memory, crop box, voxel counts, rejections,
    warnings, error) and ``failures.csv`` are written to ``cache_dir/<settings.cache_key()>/``.

    A subject with any failed item is logged, recorded in ``failures.csv`` and in
    ``df.attrs["failures"]`` (``{subject_id: message}``) and left out of the table; its other items
    stay cached, and the other subjects are kept.
    A cache that cannot be written (read-only, full disk, a file in the way) is no subject's failure:
    it raises :class:`~radfusion.cache.CacheWriteError` (probed before any work, and at the first
    item a worker cannot write), leaving no temporary file.

    Args:
        cohort: the cohort (its ``label_convention`` defines the habitats; its ``geometry_tolerance``, the
            one it was validated with, is applied again to every read, outside the cache keys; its
            ``brain_mask`` decides the brain of the z-score and, when not the default, enters the item keys).
        settings: feature settings.
        cache_dir: root of the feature cache.
        n_jobs: worker processes; None uses ``settings.n_jobs``; -1 = all cores.
        progress: show a tqdm progress bar (one step per subject × sequence).
        backend, scheduler: override ``settings.backend`` / ``settings.scheduler`` (``scheduler``
            may also be a ``distributed.Client``).
    """
    from joblib import effective_n_jobs
    from tqdm.auto import tqdm

    ids = cohort.ids
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CohortError(f"duplicate subject_id(s) {dup[:5]}: give each timepoint its own id")
    unknown = [s for s in settings.sequences if s not in cohort.sequences]
    if unknown:
        raise CohortError(f"features.sequences {settings.sequences} include {unknown}, which the cohort does not have "
                          f"(data.cohort.sequences={list(cohort.sequences)}); leave features.sequences at its default")
    n_jobs = effective_n_jobs(settings.n_jobs if n_jobs is None else n_jobs)
    backend = backend or settings.backend
    scheduler = scheduler if scheduler is not None else settings.scheduler
    cache_dir = Path(cache_dir)
    out_dir = cache_dir / settings.cache_key()
    ensure_writable(cache_dir, "feature cache")  # a read-only or misplaced cache stops here, before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    # Validates the parameters here, once, rather than as one failure per item.
    plan = build_plan(settings.pyradiomics_params)
    columns = feature_columns(settings, plan, cache_dir)
    items_root = cache_dir / "items" / engine.prep_key(settings, plan)
    remove_stale_temporaries(items_root)
    conv = cohort.label_convention
    t0 = time.perf_counter()

    # Rows are assembled as soon as a subject's items are all in, and the items dropped: the main
    # process holds the (subjects x columns) matrix and the items in flight, not every item.
    matrix = np.full((len(ids), len(columns)), np.nan)
    row_of = {sid: i for i, sid in enumerate(ids)}
    col_index = {c: j for j, c in enumerate(columns)}
    pending: dict[str, dict[str, dict]] = defaultdict(dict)
    failures, extra, diag_rows, checksums = {}, {}, {}, []
    counts, n_warn = Counter(), Counter()
    # The sequences each subject has (a subject with none fails here; validation refuses it too).
    present: dict[str, list[str]] = {}
    for subject in cohort.subjects:
        try:
            present[subject.subject_id] = present_sequences(subject, settings)
        except CohortError as err:
            present[subject.subject_id], failures[subject.subject_id], diag_rows[subject.subject_id] = [], str(err), []

    def finish(result: dict) -> None:
        sid = result["subject_id"]
        if result.get("write_error"):  # a full or read-only disk fails every later item too: stop
            err_no, name, detail = result["write_error"]
            where = f"writing {name}" + (f"; {detail}" if detail else "")
            raise CacheWriteError(err_no, cache_dir, "feature cache", where)
        counts[result["status"]] += 1
        n_warn.update(result.get("warnings") or {})
        checksums.append((sid, result["sequence"], (result.get("item") or {}).get("checksum")))
        if result["status"] == "failed":
            log.error("radiomics: %s", result["error"])
        pending[sid][result["sequence"]] = result
        if len(pending[sid]) < len(present[sid]):
            return
        res = pending.pop(sid)
        diag_rows[sid] = [_diagnostics_row(res.get(s) or {"subject_id": sid, "sequence": s, "status": "missing"},
                                           settings) for s in settings.sequences]
        errors = list(dict.fromkeys(res[s]["error"] for s in settings.sequences
                                    if s in res and res[s]["status"] == "failed"))
        if errors:
            failures[sid] = "; ".join(errors)
            return
        for k, v in assemble_row({s: r["item"] for s, r in res.items()}, settings, plan).items():
            j = col_index.get(k)
            if j is None:  # a name the phantom did not produce (e.g. LoG sigma wider than 32 mm)
                extra.setdefault(k, {})[sid] = v
            else:
                matrix[row_of[sid], j] = v

    # Look up every item first (reads only small JSON files); only missing work goes to workers.
    tasks = []
    memo: dict[str, str] = {}
    for subject in cohort.subjects:
        for i, seq in enumerate(present[subject.subject_id]):  # no item (no file to hash) for a missing one
            base = {"subject_id": subject.subject_id, "sequence": seq, "error": "", "warnings": {}}
            try:
                brain = brain_key(subject, cohort.brain_mask, memo)
                checksum = engine.input_checksum([subject.images.get(seq), subject.seg], conv, memo, brain=brain)
            except CohortError as err:  # brain_mask=file without a brain mask file
                finish({**base, "status": "failed", "item": None, "error": str(err)})
                continue
            except (OSError, TypeError) as err:
                name = getattr(err, "filename", None) or subject.images.get(seq)
                finish({**base, "status": "failed", "item": None,
                        "error": f"subject {subject.subject_id}: cannot read {name}: "
                                 f"{getattr(err, 'strerror', None) or err}"})
                continue
            path = engine.item_path(items_root, subject.subject_id, seq, checksum)
            item = engine.read_item(path)
            if engine.item_complete(item, settings, plan, i == 0, _expected_margin(item, settings)):
                finish({**base, "status": "cached", "item": item})
            else:
                tasks.append({"subject": subject, "sequence": seq, "with_shape": i == 0, "path": path,
                              "checksum": checksum})

    # Share the cores between the workers' SimpleITK filters; Dask workers are single-threaded
    # processes that may live on other machines, so one thread each there.
    threads = 1 if backend == "dask" else max(1, (os.cpu_count() or 1) // n_jobs) if n_jobs > 1 else None
    fn = functools.partial(_run_task, settings=settings, label_convention=conv, sitk_threads=threads,
                           tolerance=cohort.geometry_tolerance, brain_mask=cohort.brain_mask)
    n_items = sum(len(p) for p in present.values())
    bar = tqdm(total=n_items, initial=n_items - len(tasks), desc="habitat radiomics", unit="item",
               disable=not progress)
    results = run_tasks(fn, tasks, backend, n_jobs, scheduler)
    try:
        for result in results:
            finish(result)
            bar.update(1)
    except CacheWriteError:
        # Stopping the workers may kill one mid-write: clear the temporaries they leave (not on Dask,
        # whose workers on other machines cannot be told from dead ones; the next run clears those).
        getattr(results, "close", lambda: None)()
        if backend != "dask":
            remove_stale_temporaries(items_root, min_age_s=0)
        raise
    finally:
        bar.close()

    kept = [sid for sid in ids if sid not in failures]
    df = pd.DataFrame(matrix[[row_of[s] for s in kept]], index=pd.Index(kept, name="subject_id"), columns=columns)
    if extra:
        df = pd.concat([df, pd.DataFrame(extra, index=df.index, dtype=float)], axis=1)
    indicators = missing_indicators({sid: [q for q in settings.sequences if q not in present[sid]] for sid in kept},
                                    settings)
    if indicators:
        df = pd.concat([df, pd.DataFrame(indicators, index=df.index, dtype=float)], axis=1)
    df.attrs["failures"] = failures
    df.attrs["file_sha1"] = dict(memo)  # path -> sha1 of the inputs, for the run's manifest (not hashed twice)
    diagnostics = pd.DataFrame([row for sid in ids for row in diag_rows[sid]])
    # The table is a function of the settings and of each item's inputs (entries are deterministic):
    # when neither changed, the (slow, for ~27,000 columns) parquet file is already right.
    fingerprint = settings_hash([settings.cache_key(), columns, list(df.columns), kept, failures, sorted(checksums)],
                                40)
    _write_outputs(out_dir, df, diagnostics, failures, fingerprint)

    log.info("radiomics: %d items computed, %d from cache, %d failed; %d subjects x %d features in %.1f s (%s)",
             counts["computed"], counts["cached"], counts["failed"], len(df), df.shape[1],
             time.perf_counter() - t0, out_dir)
    if n_warn:
        log.warning("radiomics: %d warnings in %d kinds; most common: %s (details in %s)",
                    sum(n_warn.values()), len(n_warn), n_warn.most_common(3), out_dir / "diagnostics.csv")
    return df


def _expected_margin(item: dict | None, settings: FeatureSettings) -> list[int] | None:
    # The margin depends on the voxel spacing, which a stored item records.
    if not item or "spacing" not in item:
        return None
    return engine.crop_margin(settings, tuple(item["spacing"]))


def _write_outputs(out_dir: Path, df: pd.DataFrame, diagnostics: pd.DataFrame, failures: dict,
                   fingerprint: str) -> None:
    with atomic_path(out_dir / "diagnostics.csv") as tmp:
        diagnostics.to_csv(tmp, index=False)
    with atomic_path(out_dir / "failures.csv") as tmp:
        pd.DataFrame({"subject_id": list(failures), "error": list(failures.values())}).to_csv(tmp, index=False)
    stamp = out_dir / ".features.fingerprint"
    if (out_dir / "features.parquet").is_file() and stamp.is_file() and stamp.read_text() == fingerprint:
        return
    write_feature_parquet(df, out_dir / "features.parquet")
    atomic_write_text(stamp, fingerprint)

