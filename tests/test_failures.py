"""Failures a user must be told about, not find out later (issue 14, items 8–10).

- A cache that cannot be written (read-only, full, over quota, a file in the way): one
  :class:`~radfusion.cache.CacheWriteError` naming the path and the fix, raised before the work where
  possible, a run-level stop (not a failure of every subject), and no temporary file left behind.
  The tests run as root, where ``chmod`` does not stop writes, so the disk's answers are simulated by
  raising the ``OSError`` it would give, or by putting a file where a folder is expected (real).
- Subjects dropped by validation (``skip_invalid``) or a failed extraction are listed with their reason
  in ``metrics.json`` (``excluded_subjects``) and in the evaluation report.
- ``scripts/extract_features.py`` validates like train.py and exits 1 when subjects are left out,
  unless ``allow_failures=true``.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import open_dict

from helpers.config import compose_config, compose_train_cfg
from helpers.paths import ROOT
from helpers.radiomics import small_feature_settings
from helpers.subjects import cohort_of, manifest_cohort, write_subject
from radfusion.cache import (
    CacheWriteError,
    atomic_path,
    atomic_save_npy,
    atomic_write,
    ensure_writable,
    remove_stale_temporaries,
)
from radfusion.cohort.subject import CohortError
from radfusion.cohort.validate import validate_cohort
from radfusion.radiomics import engine
from radfusion.radiomics.extract import extract_cohort
from radfusion.radiomics.run import ExtractionFailed, run_extraction

DISK_ERRORS = [
    (errno.EROFS, "read-only file system", "set paths.cache_dir=<a writable folder>"),
    (errno.EACCES, "permission denied", "set paths.cache_dir=<a writable folder>"),
    (errno.ENOSPC, "no space left on device", "free space on that disk, or set paths.cache_dir="),
    (errno.EDQUOT, "disk quota exceeded", "free space on that disk, or set paths.cache_dir="),
]


def temporaries(root: Path) -> list[Path]:
    """Every temporary of the atomic writers (and of the write probe) under ``root``."""
    return [p for p in root.rglob(".*") if ".tmp" in p.name or p.name.startswith(".write-probe")]


# --------------------------------------------------------------------------------------------
# Item 8: the atomic writers and the probe
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("err_no", "reason", "fix"), DISK_ERRORS)
def test_a_disk_error_mid_write_names_the_file_and_leaves_nothing(tmp_path, err_no, reason, fix):
    target = tmp_path / "cache" / "item.json"
    target.parent.mkdir()
    target.write_text("old")
    with pytest.raises(CacheWriteError) as info, atomic_write(target, fsync=True) as f:
        f.write("half an item")
        raise OSError(err_no, os.strerror(err_no))
    err = info.value
    assert str(err) == f"cannot write {target} ({reason}): {fix}" + ("<a folder on a disk with space>"
                                                                    if err_no in (errno.ENOSPC, errno.EDQUOT) else "")
    assert isinstance(err, OSError) and err.errno == err_no and err.filename == str(target)
    assert err.__cause__ is None and err.__suppress_context__  # no errno traceback from inside the writer
    assert target.read_text() == "old" and temporaries(tmp_path) == []
    # it crosses from worker processes whole
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is CacheWriteError and str(again) == str(err) and again.errno == err_no


def test_the_rename_failing_is_translated_and_cleaned_too(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(dst))

    monkeypatch.setattr("radfusion.cache.os.replace", refuse)
    with pytest.raises(CacheWriteError, match=r"^cannot write .*a\.npy \(read-only file system\)"):
        atomic_save_npy(tmp_path / "a.npy", np.arange(3))
    assert list(tmp_path.iterdir()) == []  # the temporary the writer made is gone


def test_other_errors_pass_unchanged_and_are_cleaned(tmp_path):
    with pytest.raises(OSError) as info, atomic_path(tmp_path / "x.csv") as tmp:
        tmp.write_text("partial")
        raise OSError(errno.EIO, "Input/output error")
    assert type(info.value) is OSError and info.value.errno == errno.EIO  # not a cache-folder problem
    assert list(tmp_path.iterdir()) == []


def test_probe_reports_a_read_only_cache_before_any_work(tmp_path, monkeypatch):
    folder = tmp_path / "cache" / "features"

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr("radfusion.cache.open", read_only, raising=False)  # shadows the builtin there only
    with pytest.raises(CacheWriteError) as info:
        ensure_writable(folder, "feature cache")
    assert str(info.value) == (f"cannot write the feature cache at {folder} (read-only file system): "
                               "set paths.cache_dir=<a writable folder>")
    assert list(folder.iterdir()) == []  # no probe left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o555 folder anyway")
def test_probe_reports_a_really_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(CacheWriteError, match=r"cannot write the feature cache at .*ro \(permission denied\)"):
            ensure_writable(folder, "feature cache")
    finally:
        folder.chmod(0o755)


def test_probe_names_a_file_where_the_cache_folder_should_be(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    for folder in (blocker, blocker / "features"):
        with pytest.raises(CacheWriteError) as info:
            ensure_writable(folder, "feature cache")
        assert str(info.value) == (f"cannot write the feature cache at {folder} (a file is where a folder should "
                                   f"be; {blocker} is a file): remove or rename that file, or set "
                                   "paths.cache_dir=<a writable folder>")


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    old = time.time() - 7200
    orphan = tmp_path / "S1" / f".t1-abc.json.{dead_pid}.0123abcd.tmp"
    young = tmp_path / "S1" / f".t2-abc.json.{dead_pid}.89abcdef.tmp"
    mine = tmp_path / "S2" / f".t1-abc.json.{os.getpid()}.0123abcd.tmp.nii.gz"  # a live writer (this process)
    other = tmp_path / "S2" / ".notes.tmp"  # not one of ours
    for p in (orphan, young, mine, other):
        p.parent.mkdir(exist_ok=True)
        p.write_text("x")
        os.utime(p, (old, old))
    os.utime(young, None)
    assert remove_stale_temporaries(tmp_path) == 1
    assert not orphan.exists() and young.exists() and mine.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path, min_age_s=0) == 1 and not young.exists()


# --------------------------------------------------------------------------------------------
# Item 8: extraction stops at a disk error instead of failing every subject
# --------------------------------------------------------------------------------------------

@pytest.fixture
def two_subjects(tmp_path):
    return cohort_of([write_subject(tmp_path / "data", f"S{i}", seed=i) for i in range(2)])


def test_extraction_stops_on_a_full_disk(two_subjects, tmp_path, monkeypatch):
    calls = []

    def disk_full(path, item):  # the real atomic writer, on a disk that fills up half-way
        calls.append(path)
        with atomic_write(path, "w", fsync=True) as f:
            f.write('{"schema": ')
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine, "write_item", disk_full)
    cache = tmp_path / "cache"
    settings = small_feature_settings(sequences=["t1ce", "flair"])
    with pytest.raises(CacheWriteError) as info:
        extract_cohort(two_subjects, settings, cache, n_jobs=1, progress=False)
    message = str(info.value)
    assert message.startswith(f"cannot write the feature cache at {cache} (no space left on device; writing "
                              f"{cache / 'items'}")
    assert message.endswith("free space on that disk, or set paths.cache_dir=<a folder on a disk with space>")
    assert len(calls) == 1  # stopped at the first item, not one "extraction failure" per subject
    assert temporaries(cache) == []
    assert not (cache / settings.cache_key() / "failures.csv").exists()  # nothing recorded as a subject failure


@pytest.mark.filterwarnings("ignore:.*tasks which were still being processed:UserWarning")  # joblib, on the stop
def test_extraction_workers_stop_on_a_file_in_the_way(two_subjects, tmp_path):
    """Two loky workers: the error crosses the process boundary and still stops the run."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "items").write_text("someone's file")  # where the item folders should go
    with pytest.raises(CacheWriteError) as info:
        extract_cohort(two_subjects, small_feature_settings(sequences=["t1ce", "flair"]), cache, n_jobs=2,
                       progress=False)
    message = str(info.value)
    assert message.startswith(f"cannot write the feature cache at {cache} (a file is where a folder should be")
    assert f"{cache / 'items'} is a file" in message and "remove or rename that file" in message
    assert temporaries(cache) == []


def test_roi_building_stops_on_a_file_in_the_way(two_subjects, tmp_path):
    from radfusion.imaging.roi import ROISettings, build_roi_cache

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "rois").write_text("someone's file")
    with pytest.raises(CacheWriteError) as info:
        build_roi_cache(two_subjects, ROISettings(size=8, min_extent_mm=12), cache, progress=False)
    message = str(info.value)
    assert message.startswith(f"cannot write the ROI cache at {cache} (a file is where a folder should be; writing ")
    assert f"{cache / 'rois'} is a file" in message and temporaries(cache) == []


# --------------------------------------------------------------------------------------------
# Item 9: who was excluded, and why, reaches metrics.json and the report
# --------------------------------------------------------------------------------------------

def test_validate_cohort_records_the_subjects_it_skipped(tmp_path):
    subjects = [write_subject(tmp_path, sid, seed=i) for i, sid in enumerate(["P1", "P2", "P3"])]
    subjects[1].images["t2"].write_bytes(b"not a NIfTI file")
    kept = validate_cohort(cohort_of(subjects), skip_invalid=True)
    assert kept.ids == ["P1", "P3"] and list(kept.excluded) == ["P2"]
    assert kept.excluded["P2"].startswith("subject P2: ") and str(subjects[1].images["t2"]) in kept.excluded["P2"]
    assert validate_cohort(cohort_of(subjects[::2])).excluded == {}


def test_a_skipped_subject_is_listed_in_metrics_json(tmp_path):
    """End to end through train(): a baseline on a manifest cohort with one corrupt subject."""
    from radfusion.training.run import train

    manifest = manifest_cohort(tmp_path, 17, corrupt="P05")
    cfg = compose_train_cfg([
        "experiment=idh_baseline_lr", "data=manifest", f"data.cohort.path={manifest}", "data.cohort.skip_invalid=true",
        "data.cohort.sequences=[t1ce,flair]", "~features.params.featureClass",
        "+features.params.featureClass={shape: null, firstorder: null}", "features.habitats=[ET,WT]",
        "data.split.val_fraction=0.25", "data.split.test_fraction=0.25", "data.n_jobs=1", "data.progress=false",
        "logger=csv", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.data_dir={tmp_path / 'd'}",
        f"paths.log_dir={tmp_path / 'runs'}", "n_bootstrap=20",
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    _, objects = train(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    excluded = saved["excluded_subjects"]
    assert list(excluded) == ["P05"] and saved["n_excluded"] == 1
    assert excluded["P05"].startswith("validation: subject P05: ") and "P05_t1ce.nii.gz" in excluded["P05"]
    assert "P05" not in objects["datamodule"].ids and len(objects["datamodule"].ids) == 16
    assert "P05" not in set(pd.read_csv(tmp_path / "run" / "predictions.csv").subject_id)


def test_the_report_lists_excluded_subjects(tmp_path):
    from radfusion.evaluation.run import evaluate
    from radfusion.synthetic.runs import cohort, write_run

    run = write_run(tmp_path / "r", cohort(40, seed=2), "idh_x", "handcrafted", 0, 1.5, markers=("idh",),
                    survival=False)
    meta = json.loads((run / "metrics.json").read_text())
    reasons = {"S900": "validation: subject S900: cannot read /d/S900_t1.nii.gz: truncated",
               "S901": "extraction: subject S901, sequence flair: feature extraction failed (ValueError: x)"}
    (run / "metrics.json").write_text(json.dumps({**meta, "excluded_subjects": reasons}))
    evaluate(compose_config("eval.yaml", [f"runs=[{run}]", f"report_dir={tmp_path / 'rep'}", "name=t",
                                          "n_bootstrap=50", "html=false"]))
    report = (tmp_path / "rep" / "report.md").read_text()
    line = "- idh_x: 2 subjects excluded: S900 — " + reasons["S900"] + "; S901 — " + reasons["S901"]
    assert line in report
    check = pd.read_csv(tmp_path / "rep" / "checklist.csv").set_index("item")
    assert check.loc["Excluded subjects", "idh_x"].startswith("2 subjects excluded: S900 — validation: ")


# --------------------------------------------------------------------------------------------
# Item 10: extract_features.py validates first and fails loudly
# --------------------------------------------------------------------------------------------

def extract_cfg(tmp_path: Path, manifest: Path, extra: list[str] = ()):
    cfg = compose_config("extract.yaml", [
        "cohort=manifest", f"cohort.path={manifest}", f"paths.cache_dir={tmp_path / 'cache'}",
        "cohort.sequences=[t1ce,flair]", "features.n_jobs=1", "progress=false", "features.habitats=[ET,WT]",
        "~features.params.featureClass", "+features.params.featureClass={shape: null, firstorder: null}", *extra])
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "out")
    return cfg


def test_run_extraction_validates_like_train_and_fails_loudly(tmp_path, monkeypatch):
    manifest = manifest_cohort(tmp_path, 3, corrupt="P02")
    # default: the up-front validation refuses the cohort before any extraction
    with pytest.raises(CohortError, match=r"^subject P02: .*P02_t1ce\.nii\.gz") as info:
        run_extraction(extract_cfg(tmp_path, manifest))
    assert not isinstance(info.value, ExtractionFailed) and not (tmp_path / "cache" / "items").exists()

    # skip_invalid drops it, and a failed extraction of another subject is added; both make the run fail
    real = engine.compute_item

    def fail_p01(subject, *args, **kwargs):
        if subject.subject_id == "P01":
            raise RuntimeError("PyRadiomics fell over")
        return real(subject, *args, **kwargs)

    monkeypatch.setattr(engine, "compute_item", fail_p01)
    with pytest.raises(ExtractionFailed) as info:
        run_extraction(extract_cfg(tmp_path, manifest, ["cohort.skip_invalid=true"]))
    out = tmp_path / "out"
    assert str(info.value).startswith(f"2 of 3 subjects failed and are not in {out / 'features.parquet'} (list in "
                                      f"{out / 'failures.csv'}; first: P02 — validation: subject P02: ")
    assert str(info.value).endswith("or set allow_failures=true to accept the table without them")
    failures = pd.read_csv(out / "failures.csv")
    assert failures[["subject_id", "step"]].values.tolist() == [["P02", "validation"], ["P01", "extraction"]]
    assert "PyRadiomics fell over" in failures.set_index("subject_id").at["P01", "error"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["subjects"], summary["extracted"], summary["failed"]) == (3, 1, 2)
    assert (summary["failed_validation"], summary["failed_extraction"]) == (1, 1)
    assert list(pd.read_parquet(out / "features.parquet").index) == ["P00"]  # written before raising

    # allow_failures: the same outputs, no error
    assert run_extraction(extract_cfg(tmp_path, manifest, ["cohort.skip_invalid=true", "allow_failures=true"])) == out


def test_extract_script_exits_1_with_the_message(tmp_path):
    manifest = manifest_cohort(tmp_path, 2, corrupt="P01")
    cmd = [sys.executable, str(ROOT / "scripts" / "extract_features.py"), "cohort=manifest",
           f"cohort.path={manifest}", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'out'}",
           "cohort.sequences=[t1ce,flair]", "features.n_jobs=1", "progress=false", "cohort.skip_invalid=true",
           "~features.params.featureClass", "+features.params.featureClass={shape: null, firstorder: null}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("extract_features: 1 of 2 subjects failed") and "allow_failures=true" in last
    assert "Traceback" not in proc.stderr
    assert "1 of 2 subjects" in proc.stdout and str(tmp_path / "out" / "failures.csv") in proc.stdout
