"""The radiomics task list on real multi-process Dask clusters (issue 16, section 3).

- a 2-worker ``LocalCluster(processes=True)`` reached through its scheduler address in the feature
  settings (``features.backend=dask features.scheduler=tcp://...``), both workers doing work;
- the cluster the backend starts itself (``n_jobs=2`` worker processes, no scheduler given);
- a worker SIGKILLed mid-run loses only its items in flight: the run completes (Dask reschedules them)
  or a rerun does, recomputing only what is not cached.

Every table must equal the serial one. Tiny volumes keep each test to seconds.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers.subjects import cohort_of, write_subject
from radfusion.radiomics import engine
from radfusion.radiomics.extract import extract_cohort
from radfusion.radiomics.settings import FeatureSettings

distributed = pytest.importorskip("distributed")

PARAMS = {
    "setting": {"binWidth": 25, "label": 1, "additionalInfo": False, "voxelArrayShift": 300},
    "imageType": {"Original": {}, "LoG": {"sigma": [1.0]}},
    "featureClass": {"shape": [], "firstorder": [], "glcm": []},
}


def _settings(**kw) -> FeatureSettings:
    kw.setdefault("params", {k: dict(v) for k, v in PARAMS.items()})
    kw.setdefault("sequences", ["t1ce", "flair"])
    kw.setdefault("habitats", ["ET", "ED", "WT"])
    return FeatureSettings(**kw)


def _items(cache: Path) -> list[Path]:
    return sorted((cache / "items").glob("*/*/*.json"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask_data")
    return cohort_of([write_subject(root, f"s{i}", seed=i, with_et=i != 1) for i in range(4)])


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory) -> pd.DataFrame:
    return extract_cohort(cohort, _settings(), tmp_path_factory.mktemp("serial"), n_jobs=1, progress=False)


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes behind nannies (a killed worker is restarted)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


def test_two_worker_processes_through_the_scheduler_address(cohort, reference, cluster, tmp_path):
    with distributed.Client(cluster.scheduler_address) as observer:
        pids = set(observer.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids  # real processes, not threads of this one
        with distributed.get_task_stream(client=observer) as stream:
            table = extract_cohort(cohort, _settings(backend="dask", scheduler=cluster.scheduler_address),
                                   tmp_path / "cache", progress=False)
    pd.testing.assert_frame_equal(table, reference)
    workers = {t["worker"] for t in stream.data if str(t.get("key", "")).startswith("_run_task")}
    assert len(workers) == 2, workers  # both workers computed items
    diag = pd.read_csv(tmp_path / "cache" / _settings().cache_key() / "diagnostics.csv")
    assert len(diag) == 8 and (diag["status"] == "computed").all()


def test_the_backend_starts_its_own_multiprocess_cluster(cohort, reference, tmp_path):
    table = extract_cohort(cohort, _settings(backend="dask"), tmp_path / "cache", n_jobs=2, progress=False)
    pd.testing.assert_frame_equal(table, reference)


def test_a_killed_worker_loses_only_its_items(cohort, reference, cluster, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    total = 2 * len(cohort)
    with distributed.Client(cluster.scheduler_address) as observer:
        victim = next(iter(observer.run(os.getpid).values()))
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["table"] = extract_cohort(cohort, _settings(backend="dask", scheduler=cluster.scheduler_address),
                                              cache, progress=False)
        except Exception as err:  # noqa: BLE001 - KilledWorker is one allowed outcome; asserted below
            outcome["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 120
    while len(_items(cache)) < 2 and thread.is_alive() and time.time() < deadline:
        time.sleep(0.005)
    at_kill = len(_items(cache))
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=180)
    assert not thread.is_alive()
    assert 2 <= at_kill < total, f"kill came too late ({at_kill} of {total} items done)"
    if "error" in outcome:  # the scheduler gave up on the lost items: only they are missing
        assert type(outcome["error"]).__name__ == "KilledWorker", outcome["error"]
    else:  # Dask rescheduled the killed worker's items on the other one
        pd.testing.assert_frame_equal(outcome["table"], reference)
    done = len(_items(cache))
    print(f"killed worker after {at_kill}/{total} items; run {'failed' if 'error' in outcome else 'completed'}, "
          f"{done} cached")
    assert done >= at_kill  # nothing that was cached was lost

    # resume from the cache: only the missing items are computed (in this process, to count them)
    computed: list[tuple[str, str]] = []
    real = engine.compute_item

    def spy(subject, sequence, *args, **kwargs):
        computed.append((subject.subject_id, sequence))
        return real(subject, sequence, *args, **kwargs)

    monkeypatch.setattr(engine, "compute_item", spy)
    resumed = extract_cohort(cohort, _settings(), cache, n_jobs=1, progress=False)
    assert len(computed) == total - done
    pd.testing.assert_frame_equal(resumed, reference)
