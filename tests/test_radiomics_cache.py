"""Per-(subject, sequence) cache: kill and resume, targeted recomputation, loky and Dask backends."""

from __future__ import annotations

import copy
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from radfusion.radiomics import engine
from radfusion.radiomics.extract import extract_cohort
from radfusion.radiomics.settings import FeatureSettings
from test_radiomics import _cohort, _write_subject

PARAMS = {
    "setting": {"binWidth": 25, "label": 1, "additionalInfo": False, "voxelArrayShift": 300},
    "imageType": {"Original": {}, "LoG": {"sigma": [1.0]}},
    "featureClass": {"shape": [], "firstorder": [], "glcm": []},
}


def _settings(**kw) -> FeatureSettings:
    kw.setdefault("params", copy.deepcopy(PARAMS))
    kw.setdefault("sequences", ["t1ce", "flair"])
    kw.setdefault("habitats", ["ET", "ED", "WT"])
    return FeatureSettings(**kw)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return _cohort([_write_subject(root, f"s{i}", seed=i, with_et=i != 1) for i in range(3)])


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory) -> pd.DataFrame:
    return extract_cohort(cohort, _settings(), tmp_path_factory.mktemp("ref"), n_jobs=1, progress=False)


def _items(cache: Path) -> list[Path]:
    return sorted((cache / "items").glob("*/*/*.json"))


class _Spy:
    """Records which (subject, sequence) items and which habitat entries get computed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.items: list[tuple[str, str]] = []
        self.entries: list[str] = []
        real_item, real_entries = engine.compute_item, engine.compute_entries

        def item(subject, sequence, *args, **kwargs):
            self.items.append((subject.subject_id, sequence))
            return real_item(subject, sequence, *args, **kwargs)

        def entries(image, masks, plan, with_shape, box, wanted=None, *args):
            if set(masks) != {"T"}:  # not the column-name phantom
                self.entries += sorted(k for keys in (wanted or {}).values() for k in keys)
            return real_entries(image, masks, plan, with_shape, box, wanted, *args)

        monkeypatch.setattr(engine, "compute_item", item)
        monkeypatch.setattr(engine, "compute_entries", entries)


def test_killed_run_resumes_and_gives_the_identical_table(cohort, reference, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    job = tmp_path / "job.pkl"
    job.write_bytes(pickle.dumps((cohort, _settings(), cache)))
    script = ("import pickle, sys\nfrom radfusion.radiomics.extract import extract_cohort\n"
              "c, s, d = pickle.load(open(sys.argv[1], 'rb'))\nextract_cohort(c, s, d, n_jobs=1, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(job)], stderr=subprocess.DEVNULL)
    total = len(cohort) * 2
    deadline = time.time() + 120
    while len(_items(cache)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(_items(cache))
    assert 2 <= done < total, f"kill came too late ({done} of {total} items done)"

    spy = _Spy(monkeypatch)
    resumed = extract_cohort(cohort, _settings(), cache, n_jobs=1, progress=False)
    assert len(spy.items) == total - done  # only the items lost in flight or never started
    pd.testing.assert_frame_equal(resumed, reference)


def test_changed_settings_recompute_only_what_they_affect(cohort, reference, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    extract_cohort(cohort, _settings(), cache, n_jobs=1, progress=False)
    spy = _Spy(monkeypatch)

    # Another LoG sigma: only the new sigma's entries, for every non-empty habitat.
    more = _settings()
    more.params["imageType"]["LoG"]["sigma"] = [1.0, 2.0]
    table = extract_cohort(cohort, more, cache, n_jobs=1, progress=False)
    assert spy.entries and all(k.split("|")[1].startswith("LoG:") for k in spy.entries)
    assert len(spy.entries) == 2 * (3 * 3 - 1)  # 2 sequences x (3 subjects x 3 habitats - the empty ET)
    assert table.filter(like="log-sigma-2-0").notna().any().all()
    pd.testing.assert_frame_equal(table[reference.columns], reference)

    # Another sequence: only its items. A larger min_voxels: nothing at all.
    spy.items.clear()
    extract_cohort(cohort, _settings(sequences=["t1ce", "flair", "t2"]), cache, n_jobs=1, progress=False)
    assert sorted(spy.items) == [(f"s{i}", "t2") for i in range(3)]
    spy.items.clear()
    fewer = extract_cohort(cohort, _settings(min_voxels=500), cache, n_jobs=1, progress=False)
    assert spy.items == [] and (fewer["ET_empty"] == (reference["ET_voxels"] < 500)).all()

    # The ring: its own entries, plus the filtered entries of the others (their crop grows);
    # Original entries of the other habitats are reused.
    spy.entries.clear()
    extract_cohort(cohort, _settings(habitats=["ET", "ED", "WT", "RING"]), cache, n_jobs=1, progress=False)
    original = [k for k in spy.entries if k.split("|")[1].startswith("Original:")]
    assert original and all(k.startswith("RING@") for k in original)

    # A different bin width changes every entry.
    spy.items.clear()
    binned = _settings()
    binned.params["setting"]["binWidth"] = 10
    extract_cohort(cohort, binned, cache, n_jobs=1, progress=False)
    assert len(spy.items) == 6


def test_loky_and_dask_backends_give_the_serial_table(cohort, reference, tmp_path: Path) -> None:
    from distributed import LocalCluster

    loky = extract_cohort(cohort, _settings(), tmp_path / "loky", n_jobs=2, progress=False)
    pd.testing.assert_frame_equal(loky, reference)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        dask = extract_cohort(cohort, _settings(backend="dask", scheduler=cluster.scheduler_address),
                              tmp_path / "dask", progress=False)
    pd.testing.assert_frame_equal(dask, reference)
    diag = pd.read_csv(tmp_path / "dask" / _settings().cache_key() / "diagnostics.csv")
    assert len(diag) == 6 and (diag["status"] == "computed").all() and diag["peak_rss_mb"].gt(0).all()
