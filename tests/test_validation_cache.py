"""The validation cache (radfusion.cohort.validation_cache): a warm run skips re-validating unchanged
subjects; a changed file, another setting or a failure is always checked again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import SimpleITK as sitk

from helpers.subjects import cohort_of, write_subject
from radfusion.cohort import validate
from radfusion.cohort.subject import CohortError


@pytest.fixture
def subjects(tmp_path):
    return [write_subject(tmp_path / "data", f"s{i}", seed=i) for i in range(3)]


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """Subjects whose files validate_subject really checks (the cache's misses)."""
    seen: list[str] = []
    real = validate.validate_subject

    def spy(subject, *args, **kwargs):
        seen.append(subject.subject_id)
        return real(subject, *args, **kwargs)

    monkeypatch.setattr(validate, "validate_subject", spy)
    return seen


def test_unchanged_subjects_are_not_validated_again(subjects, calls, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = validate.validate_cohort(cohort_of(subjects), cache_dir=cache)
    assert calls == ["s0", "s1", "s2"] and first.ids == ["s0", "s1", "s2"]
    entries = sorted((cache / "validation").glob("*.json"))
    assert len(entries) == 3 and all(json.loads(p.read_text())["ok"] is True for p in entries)

    # warm: no check at all, and no image is opened (only os.stat): the cost being removed
    calls.clear()
    opened: list[str] = []
    real_open = open

    def watch(file, *args, **kwargs):
        if str(file).endswith(".nii.gz"):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", watch)
    second = validate.validate_cohort(cohort_of(subjects), cache_dir=cache)
    monkeypatch.setattr("builtins.open", real_open)
    assert calls == [] and opened == []
    assert second.ids == first.ids and second.geometry_tolerance == first.geometry_tolerance

    # touching one file re-validates its subject only
    flair = subjects[1].images["flair"]
    st = os.stat(flair)
    os.utime(flair, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    validate.validate_cohort(cohort_of(subjects), cache_dir=cache)
    assert calls == ["s1"]

    # other validation settings are other entries
    calls.clear()
    validate.validate_cohort(cohort_of(subjects), cache_dir=cache, tolerance=1e-2)
    assert calls == ["s0", "s1", "s2"]
    calls.clear()
    validate.validate_cohort(cohort_of(subjects), cache_dir=cache, brain_mask="otsu")
    assert calls == ["s0", "s1", "s2"]
    # without a cache folder everything is checked, as before
    calls.clear()
    validate.validate_cohort(cohort_of(subjects))
    assert calls == ["s0", "s1", "s2"]


def test_a_modified_file_is_checked_again_and_its_failure_never_cached(subjects, calls, tmp_path):
    cache = tmp_path / "cache"
    validate.validate_cohort(cohort_of(subjects), cache_dir=cache)
    # replace s2's t1 with a volume on another grid, restoring the old mtime (ctime still moves)
    t1 = subjects[2].images["t1"]
    st = os.stat(t1)
    img = sitk.ReadImage(str(t1))
    img.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(img, str(t1))
    os.utime(t1, ns=(st.st_atime_ns, st.st_mtime_ns))
    calls.clear()
    with pytest.raises(CohortError, match=r"subject s2: geometry mismatch"):
        validate.validate_cohort(cohort_of(subjects), cache_dir=cache)
    assert calls[-1] == "s2"
    validate.validate_cohort(cohort_of(subjects), cache_dir=cache, skip_invalid=True)  # its own policy: own entries
    calls.clear()
    kept = validate.validate_cohort(cohort_of(subjects), cache_dir=cache, skip_invalid=True)
    assert calls == ["s2"] and kept.ids == ["s0", "s1"] and "geometry mismatch" in kept.excluded["s2"]
    assert len(list((cache / "validation").glob("*.json"))) == 3 + 2  # the failures left no entry


def test_warm_prepare_uses_the_cache_and_the_switch_turns_it_off(tiny_cohort, tmp_path, calls):
    from radfusion.cohort.readers import read_validated_cohort

    block = {"source": "manifest", "path": str(tiny_cohort), "clinical": None}
    cold = read_validated_cohort(block, progress=False, cache_dir=tmp_path / "cache")
    n = len(calls)
    assert n == len(cold) == 20
    warm = read_validated_cohort(block, progress=False, cache_dir=tmp_path / "cache")
    assert len(calls) == n and warm.ids == cold.ids
    read_validated_cohort({**block, "validation_cache": False}, progress=False, cache_dir=tmp_path / "cache")
    assert len(calls) == 2 * n


def test_cache_entries_are_plain_json_keyed_by_stamps(subjects, tmp_path):
    from radfusion.cohort.validation_cache import file_stamp, subject_key

    settings = {"tolerance": 1e-3}
    key = subject_key(subjects[0], settings)
    assert key == subject_key(subjects[0], settings) and len(key) == 40
    assert key != subject_key(subjects[0], {"tolerance": 1e-2})
    assert key != subject_key(subjects[1], settings)
    stamp = file_stamp(subjects[0].seg)
    assert stamp[0] == str(subjects[0].seg) and stamp[1] == Path(subjects[0].seg).stat().st_size
    gone = subjects[0]
    gone.images = {**gone.images, "t2": Path(tmp_path / "missing.nii.gz")}
    assert subject_key(gone, settings) is None  # not stat-able: the check itself reports the file
