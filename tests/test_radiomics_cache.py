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

from helpers.subjects import cohort_of, write_subject
from radfusion.radiomics import engine
from radfusion.radiomics.extract import extract_cohort
from radfusion.radiomics.settings import FeatureSettings

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
    return cohort_of([write_subject(root, f"s{i}", seed=i, with_et=i != 1) for i in range(3)])


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


# --------------------------------------------------------------------------------------------
# Key values and atomic writes (radfusion.cache)
# --------------------------------------------------------------------------------------------

#: Settings the pinned keys below are computed from (nothing else in these tests uses them, so the
#: per-process plan memo cannot hold a plan built under another PyRadiomics version).
PIN_PARAMS = {
    "setting": {"binWidth": 20, "label": 1, "additionalInfo": False, "voxelArrayShift": 300},
    "imageType": {"Original": {}, "LoG": {"sigma": [1.5]}},
    "featureClass": {"shape": [], "firstorder": [], "glcm": []},
}


def test_cache_keys_keep_their_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every key below names folders or files of users' caches (feature tables, items, ROI tensors):
    a changed value silently recomputes all of them. If this test fails, the hashing changed; only
    update a literal when invalidating every existing cache is intended (and bump the schema
    version that explains why). The values were computed with the code before the hashing moved into
    radfusion.cache and again after. PyRadiomics' version enters the keys by design; it is pinned
    here so that the test checks the formula, not the installed release."""
    import radiomics

    from radfusion.cache import file_sha1, files_sha1, settings_hash
    from radfusion.imaging.roi import ROISettings
    from radfusion.radiomics.pyrad import build_plan

    monkeypatch.setattr(radiomics, "__version__", "v3.0.1")
    image, seg = tmp_path / "image.nii.gz", tmp_path / "seg.nii.gz"
    image.write_bytes(b"image-bytes\n")
    seg.write_bytes(b"mask-bytes\n")
    settings = FeatureSettings(params=copy.deepcopy(PIN_PARAMS), habitats=["ET", "WT"], sequences=["t1ce", "flair"])
    plan = build_plan(settings.pyradiomics_params)

    assert file_sha1(image) == "2a3374752ca945b4ffc93ab52f853aa482abdc5c"  # = `sha1sum`
    assert files_sha1([image, None, seg]) == "79c4701dc19e3ebf13a1e1f60336d7432092aa23"
    assert settings_hash({"b": 1, "a": [1, 2.5, None]}) == "780edc0d696d"
    assert settings.cache_key() == "3b20ca5b38358e42fbf028a37d771beb848fa999"
    ring = FeatureSettings(params=copy.deepcopy(PIN_PARAMS), habitats=["ET", "WT", "RING"], ring_mm=3.0)
    assert ring.cache_key() == "2d02a96b341cfef8bb5027b58b7196f1f37f0fe1"
    assert plan.prep_key == "f32b761c2e6a9c36"
    assert [u.key for u in plan.units] == ["Original:8c034b496b81", "LoG:e3beb3a78f24"]
    assert plan.shape_key == "shape:39e86396ec8c"
    assert engine.prep_key(settings, plan) == "c9003d5b9f81a6d889b5"
    assert engine.input_checksum([image, seg], "brats2021") == "c23cac90618c923665b54c0fd1bbda05da133106"
    assert engine.input_checksum([None, seg], {"ET": [3]}) == "eaddf8e6045a839c0b6e1566b2e1891a43cf361d"
    assert ROISettings().key() == "cd2ffbb51a78" and ROISettings(extent="fixed").key() == "7304197c9484"
    # Settings that change only how the work is done stay out of the feature key.
    fast = FeatureSettings(params=copy.deepcopy(PIN_PARAMS), habitats=["ET", "WT"], sequences=["t1ce", "flair"],
                           n_jobs=4, memo_binning=False)
    assert fast.cache_key() == settings.cache_key()


def test_atomic_writes_replace_whole_or_leave_the_old_file(tmp_path: Path) -> None:
    """A write that fails half-way leaves the previous file and no temporary; a successful one
    replaces it. Temporaries are hidden and end in .tmp (+ the requested suffix), so the cache
    globs (``*.json``, ``*.npy``) never see a stray one from a killed process."""
    import numpy as np

    from radfusion.cache import atomic_path, atomic_save_npy, atomic_write, atomic_write_text

    target = tmp_path / "sub" / "item.json"
    atomic_write_text(target, "old")  # creates the folder
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["item.json"]
    with atomic_path(target, suffix=".nii.gz") as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".item.json.") and tmp.name.endswith(".tmp.nii.gz")
        assert not tmp.exists()  # the writer creates it (with the usual permissions, not mkstemp's 0600)
        tmp.write_text("new")
    assert target.read_text() == "new" and list(target.parent.glob("*.tmp*")) == []
    atomic_save_npy(tmp_path / "a.npy", np.arange(3))
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="mode"), atomic_write(target, "a"):
        pass


def test_feature_parquet_reads_back_equal_to_pandas_own_writer(tmp_path: Path) -> None:
    import numpy as np

    from radfusion.cache import write_feature_parquet

    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 500))
    values[1, 7] = np.nan  # a feature PyRadiomics could not compute
    wide = pd.DataFrame(values, index=pd.Index(["s1", "s-2", "s 3"], name="subject_id"),
                        columns=[f"WT_t1_original_glcm_F{i}" for i in range(500)])
    wide.attrs["failures"] = {"s4": "no segmentation"}
    mixed = wide.iloc[:, :3].assign(site=["A", "B", "A"])  # not all float: pandas' own writer
    unnamed = wide.iloc[:, :3].rename_axis(None)
    for name, df in [("wide", wide), ("mixed", mixed), ("unnamed", unnamed)]:
        ours, theirs = tmp_path / f"{name}_ours.parquet", tmp_path / f"{name}_pandas.parquet"
        write_feature_parquet(df, ours)
        plain = df.copy()
        plain.attrs = {}
        plain.to_parquet(theirs)
        got, want = pd.read_parquet(ours), pd.read_parquet(theirs)
        pd.testing.assert_frame_equal(got, want, check_exact=True)
        assert got.index.name == df.index.name and list(got.columns) == list(df.columns)
        assert got.attrs == {}
    assert np.isnan(pd.read_parquet(tmp_path / "wide_ours.parquet").iloc[1, 7])
    assert not list(tmp_path.glob(".*.tmp*"))  # written atomically
