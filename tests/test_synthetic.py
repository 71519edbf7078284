"""The synthetic cohort: determinism, BraTS layout and geometry, planted effects, idempotence."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from radfusion.data.synthetic import generate_cohort

SMALL = dict(n_subjects=8, shape=(32, 32, 32), progress=False)
KINDS = ("t1", "t1ce", "t2", "flair", "seg")


def _arrays(manifest: Path, subject_index: int) -> dict[str, np.ndarray]:
    row = pd.read_csv(manifest).iloc[subject_index]
    return {k: np.asarray(nib.load(manifest.parent / row[k]).dataobj) for k in KINDS}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("syn") / "a", seed=0, **SMALL)


@pytest.fixture(scope="module")
def larger(tmp_path_factory) -> pd.DataFrame:
    """60 subjects: enough for the planted effects to show in the ground truth (about 2 s)."""
    manifest = generate_cohort(tmp_path_factory.mktemp("syn") / "large", n_subjects=60,
                               shape=(32, 32, 32), seed=1, progress=False)
    return pd.read_csv(manifest.parent / "ground_truth.csv")


def test_same_seed_same_data_other_seed_differs(cohort, tmp_path):
    again = generate_cohort(tmp_path / "b", seed=0, **SMALL)
    other = generate_cohort(tmp_path / "c", seed=1, **SMALL)
    pd.testing.assert_frame_equal(pd.read_csv(cohort), pd.read_csv(again))
    pd.testing.assert_frame_equal(pd.read_csv(cohort.parent / "ground_truth.csv"),
                                  pd.read_csv(again.parent / "ground_truth.csv"))
    for i in (0, 5):
        a, b = _arrays(cohort, i), _arrays(again, i)
        for k in KINDS:
            assert a[k].tobytes() == b[k].tobytes(), f"subject {i} {k} differs for the same seed"
    clinical = [c for c in pd.read_csv(cohort).columns if c not in KINDS]
    assert not pd.read_csv(cohort)[clinical].equals(pd.read_csv(other)[clinical])
    assert not np.array_equal(_arrays(cohort, 0)["t1"], _arrays(other, 0)["t1"])


def test_subject_does_not_depend_on_cohort_size(cohort, tmp_path):
    fewer = generate_cohort(tmp_path / "few", seed=0, n_subjects=3, shape=(32, 32, 32), progress=False)
    pd.testing.assert_frame_equal(pd.read_csv(fewer), pd.read_csv(cohort).iloc[:3], check_dtype=False)
    assert np.array_equal(_arrays(fewer, 2)["flair"], _arrays(cohort, 2)["flair"])


def test_layout_geometry_labels_and_dtypes(cohort):
    table = pd.read_csv(cohort, dtype={"subject_id": str})
    assert list(table.columns) == ["subject_id", "site", "t1", "t1ce", "t2", "flair", "seg", "age",
                                   "sex", "idh", "mgmt", "codeletion", "grade", "os_days",
                                   "os_event", "timepoint"]
    assert table["subject_id"].tolist() == [f"SYN_{i:03d}" for i in range(SMALL["n_subjects"])]
    for _, row in table.iterrows():
        sid = row["subject_id"]
        for k in KINDS:
            assert row[k] == f"{sid}/{sid}_{k}.nii.gz"  # relative to the manifest, BraTS 2021 names
            assert (cohort.parent / row[k]).is_file()
        imgs = {k: nib.load(cohort.parent / row[k]) for k in KINDS}
        ref = imgs["seg"]
        for img in imgs.values():
            assert img.shape == (32, 32, 32)
            np.testing.assert_array_equal(img.affine, ref.affine)
            np.testing.assert_array_equal(img.affine, np.eye(4))
        seg = np.asarray(ref.dataobj)
        assert seg.dtype == np.uint8
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4}
        assert (seg == 2).any()
        t1 = np.asarray(imgs["t1"].dataobj)
        assert t1.dtype == np.float32 and np.isfinite(t1).all()
        assert (t1 == 0).any() and (t1[seg > 0] > 0).mean() > 0.95  # skull-stripped, tumour in brain


def test_manifest_reads_with_the_cohort_reader(cohort):
    from radfusion.data.cohort import read_manifest, validate_cohort

    validated = validate_cohort(read_manifest(cohort))
    assert len(validated) == SMALL["n_subjects"]


def test_manifest_values(larger):
    t = larger
    assert set(t["sex"]) <= {"M", "F"} and set(t["site"]) <= {"A", "B", "C", "D"}
    assert (t["os_days"] > 0).all() and set(t["os_event"]) <= {0, 1}
    assert set(t["grade"]) <= {2, 3, 4}


def test_planted_effects_in_ground_truth(larger):
    t = larger
    mut, wt = t[t["idh"] == 1], t[t["idh"] == 0]
    assert 10 <= len(mut) <= 40
    assert mut["age"].mean() < wt["age"].mean() - 10
    assert mut["et_fraction"].mean() < 0.5 * wt["et_fraction"].mean()
    assert mut["ncr_fraction"].mean() < wt["ncr_fraction"].mean()
    assert mut["vol_wt_mm3"].median() < wt["vol_wt_mm3"].median()
    assert (t.loc[t["codel"] == 1, "idh"] == 1).all()
    assert (t["vol_et_mm3"] == 0).sum() >= 1  # the empty-habitat case exists
    assert (t.loc[t["vol_et_mm3"] == 0, "idh"] == 1).all()
    assert 0.5 <= t["os_event"].mean() <= 0.85
    assert mut["event_time_days"].median() > wt["event_time_days"].median()
    # codeleted tumours sit anteriorly (y > 0 is anterior in the RAS grid)
    if (t["codel"] == 1).any():
        assert t.loc[t["codel"] == 1, "centre_y"].mean() > t.loc[t["codel"] == 0, "centre_y"].mean()


def test_codeletion_column_follows_idh(tmp_path):
    manifest = generate_cohort(tmp_path / "m", n_subjects=40, shape=(24, 24, 24), seed=5,
                               missing_rate=0.0, progress=False)
    table = pd.read_csv(manifest)
    assert table[["idh", "mgmt", "codeletion"]].notna().all().all()  # nothing masked at rate 0
    assert (table.loc[table["idh"] == 0, "codeletion"] == 0).all()
    masked = pd.read_csv(generate_cohort(tmp_path / "n", n_subjects=40, shape=(24, 24, 24), seed=5,
                                         missing_rate=0.5, progress=False))
    assert masked["mgmt"].isna().sum() > masked["idh"].isna().sum() > 0


def test_second_call_is_a_no_op_and_params_written(cohort):
    stamps = {p: p.stat().st_mtime_ns for p in cohort.parent.rglob("*") if p.is_file()}
    assert generate_cohort(cohort.parent, seed=0, **SMALL) == cohort
    assert {p: p.stat().st_mtime_ns for p in cohort.parent.rglob("*") if p.is_file()} == stamps
    params = json.loads((cohort.parent / "params.json").read_text())
    assert params["parameters"]["seed"] == 0 and params["parameters"]["shape"] == [32, 32, 32]
    assert "effects" in params and "sites" in params


def test_unfinished_generation_is_resumed(tmp_path):
    out, args = tmp_path / "r", dict(seed=2, n_subjects=4, shape=(24, 24, 24), progress=False)
    manifest = generate_cohort(out, **args)
    reference = pd.read_csv(out / "ground_truth.csv")
    marker = json.loads((out / "params.json").read_text())["parameters"]
    t1_000 = out / "SYN_000" / "SYN_000_t1.nii.gz"

    # A crash of the same generation: no params.json, its marker present, one subject half written.
    (out / "params.json").unlink()
    (out / ".generating.json").write_text(json.dumps(marker))
    (out / "SYN_001" / "SYN_001_seg.nii.gz").unlink()
    kept = t1_000.stat().st_mtime_ns
    assert generate_cohort(out, **args) == manifest
    assert t1_000.stat().st_mtime_ns == kept  # finished subjects are reused
    assert (out / "SYN_001" / "SYN_001_seg.nii.gz").exists() and (out / "params.json").exists()
    assert not (out / ".generating.json").exists()
    pd.testing.assert_frame_equal(pd.read_csv(out / "ground_truth.csv"), reference)

    # A leftover of some other generation (marker differs): everything is redone.
    (out / "params.json").unlink()
    (out / ".generating.json").write_text(json.dumps({**marker, "seed": 99}))
    generate_cohort(out, **args)
    assert t1_000.stat().st_mtime_ns != kept
    pd.testing.assert_frame_equal(pd.read_csv(out / "ground_truth.csv"), reference)


def test_changed_parameters_regenerate(tmp_path):
    out = tmp_path / "p"
    generate_cohort(out, seed=0, n_subjects=3, shape=(24, 24, 24), progress=False)
    generate_cohort(out, seed=0, n_subjects=2, shape=(24, 24, 24), progress=False)
    assert len(pd.read_csv(out / "manifest.csv")) == 2
    assert not (out / "SYN_002").exists()  # stale subject of the bigger cohort removed
    with pytest.raises(ValueError, match="shape"):
        generate_cohort(out, shape=(8, 8, 8))
