"""The synthetic cohort: determinism, BraTS layout and geometry, planted effects and their
overlap (``effect_scale``), idempotence, and the second timepoint (``n_timepoints=2``)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from radfusion.synthetic.biology import sample_subject
from radfusion.synthetic.generator import generate_cohort

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
    from radfusion.cohort.readers import read_manifest
    from radfusion.cohort.validate import validate_cohort

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
    assert mut["et_fraction"].mean() < 0.6 * wt["et_fraction"].mean()
    assert mut["ncr_fraction"].mean() < wt["ncr_fraction"].mean()
    assert mut["vol_wt_mm3"].median() < wt["vol_wt_mm3"].median()
    assert (t.loc[t["codel"] == 1, "idh"] == 1).all()
    empty_et = t["vol_et_mm3"] == 0
    assert empty_et.sum() >= 1  # the empty-habitat case exists
    assert empty_et[t["idh"] == 1].mean() > empty_et[t["idh"] == 0].mean()  # ... mostly in IDH-mutants
    assert 0.5 <= t["os_event"].mean() <= 0.85
    assert mut["event_time_days"].median() > wt["event_time_days"].median()
    # codeleted tumours sit anteriorly (y > 0 is anterior in the RAS grid)
    if (t["codel"] == 1).any():
        assert t.loc[t["codel"] == 1, "centre_y"].mean() > t.loc[t["codel"] == 0, "centre_y"].mean()


def _latents(effect_scale: float, n: int = 2000) -> pd.DataFrame:
    return pd.DataFrame([sample_subject(11, i, 4, 0.1, effect_scale) for i in range(n)])


def _auc(labels, scores) -> float:
    return float(roc_auc_score(labels, scores))


def test_effect_scale_sets_the_overlap_of_the_latents():
    """The knob: no marker signal at 0, overlapping classes at 1, nearly separable at 3."""
    null, default, easy = (_latents(s) for s in (0.0, 1.0, 3.0))
    for name, t in (("0", null), ("1", default), ("3", easy)):
        assert 0.35 < t["idh"].mean() < 0.45, name  # prevalences do not depend on the knob
    assert abs(_auc(null["idh"], -null["aggressiveness"]) - 0.5) < 0.04
    assert abs(_auc(null["mgmt"], null["mgmt_amp"]) - 0.5) < 0.04
    assert abs(_auc(null["idh"], -null["vol_frac"]) - 0.5) < 0.04
    assert 0.75 < _auc(default["idh"], -default["aggressiveness"]) < 0.88  # 1.2 SD apart: Phi(0.85) = 0.80
    assert _auc(easy["idh"], -easy["aggressiveness"]) > 0.97
    assert _auc(null["mgmt"], null["mgmt_amp"]) < _auc(default["mgmt"], default["mgmt_amp"]) \
        < _auc(easy["mgmt"], easy["mgmt_amp"])
    # realistic overlap at the default: some IDH-wildtype tumours do not enhance or lack necrosis,
    # some IDH-mutants enhance as a full rim
    wt, mut = default[default["idh"] == 0], default[default["idh"] == 1]
    assert 0.08 < (wt["et_mode"] == "none").mean() < 0.22
    assert 0.10 < (wt["has_ncr"] == 0).mean() < 0.30
    assert 0.10 < (mut["et_mode"] == "rim").mean() < 0.30
    assert 0.3 < (mut["et_mode"] == "none").mean() < 0.6
    # volume and eccentricity are signals of their own, independent of the shared aggressiveness
    for t in (wt, mut):
        assert abs(np.corrcoef(np.log(t["vol_frac"]), t["aggressiveness"])[0, 1]) < 0.1
        assert abs(np.corrcoef(t["ecc"], t["aggressiveness"])[0, 1]) < 0.1


def test_effect_scale_on_rendered_segmentations(larger, tmp_path):
    """IDH from volumes measured on the written segmentations (in-fold logistic regression)."""
    def cv_auc(truth: pd.DataFrame) -> float:
        x = np.column_stack([truth["et_fraction"], truth["ncr_fraction"], np.log(truth["vol_wt_mm3"])])
        model = make_pipeline(StandardScaler(), LogisticRegression())
        prob = cross_val_predict(model, x, truth["idh"], cv=StratifiedKFold(5, shuffle=True, random_state=0),
                                 method="predict_proba")[:, 1]
        return _auc(truth["idh"], prob)

    aucs = {1.0: cv_auc(larger)}
    for scale in (0.0, 3.0):
        manifest = generate_cohort(tmp_path / f"s{scale}", n_subjects=60, shape=(32, 32, 32), seed=1,
                                   effect_scale=scale, progress=False)
        aucs[scale] = cv_auc(pd.read_csv(manifest.parent / "ground_truth.csv"))
        assert json.loads((manifest.parent / "params.json").read_text())["parameters"]["effect_scale"] == scale
    assert aucs[0.0] < 0.7 and 0.65 < aucs[1.0] < 0.95 and aucs[3.0] > 0.95, aucs


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
    with pytest.raises(ValueError, match="effect_scale"):
        generate_cohort(out, effect_scale=-1.0)
    with pytest.raises(ValueError, match="n_timepoints"):
        generate_cohort(out, n_timepoints=3)
    # another effect_scale is another cohort: regenerated, and recorded
    t1 = out / "SYN_000" / "SYN_000_t1.nii.gz"
    before = t1.read_bytes()
    generate_cohort(out, seed=0, n_subjects=2, shape=(24, 24, 24), effect_scale=2.0, progress=False)
    assert json.loads((out / "params.json").read_text())["parameters"]["effect_scale"] == 2.0
    assert t1.read_bytes() != before


# ------------------------------------------------------------------ second timepoint
LONG = dict(n_subjects=60, shape=(48, 48, 48), seed=3, progress=False)


@pytest.fixture(scope="module")
def longitudinal(tmp_path_factory) -> Path:
    """60 subjects x 2 timepoints at 48³ (about 10 s)."""
    return generate_cohort(tmp_path_factory.mktemp("syn") / "long", n_timepoints=2, **LONG)


def test_longitudinal_layout(longitudinal):
    table = pd.read_csv(longitudinal, dtype={"subject_id": str})
    assert list(table.columns)[-2:] == ["timepoint", "response"]
    assert len(table) == 2 * LONG["n_subjects"]
    for sid, rows in table.groupby("subject_id"):
        assert rows["timepoint"].tolist() == [0, 1]
        base, follow = rows.iloc[0], rows.iloc[1]
        assert base["seg"] == f"{sid}/{sid}_seg.nii.gz"
        assert follow["seg"] == f"{sid}_tp1/{sid}_tp1_seg.nii.gz" and (longitudinal.parent / follow["seg"]).is_file()
        # the subject's clinical values and labels are the same on both rows
        same = ["site", "age", "sex", "idh", "mgmt", "codeletion", "grade", "os_days", "os_event", "response"]
        pd.testing.assert_series_equal(base[same], follow[same], check_names=False)
    assert set(table["response"]) == {0, 1}
    with open(longitudinal) as f:
        assert ",1.0" not in f.read()  # labels written as integers

    from radfusion.cohort.readers import read_manifest
    from radfusion.cohort.validate import validate_subject

    cohort = read_manifest(longitudinal)  # the project's reader: one scan per row, subject kept
    assert len(cohort) == 2 * LONG["n_subjects"]
    assert cohort.ids[:2] == ["SYN_000_tp0", "SYN_000_tp1"]
    assert (cohort.clinical["patient_id"] == cohort.clinical["subject_id"].str[:-4]).all()
    for scan in cohort.subjects[:2]:
        validate_subject(scan)


def test_longitudinal_is_deterministic_and_keeps_the_baseline(longitudinal, tmp_path):
    again = generate_cohort(tmp_path / "again", n_timepoints=2, **{**LONG, "n_subjects": 4})
    cross = generate_cohort(tmp_path / "cross", n_timepoints=1, **{**LONG, "n_subjects": 4})
    other = generate_cohort(tmp_path / "other", n_timepoints=2, **{**LONG, "n_subjects": 4, "seed": 4})
    full, few = pd.read_csv(longitudinal), pd.read_csv(again)
    pd.testing.assert_frame_equal(few, full.iloc[:8], check_dtype=False)
    base = few[few["timepoint"] == 0].drop(columns="response").reset_index(drop=True)
    pd.testing.assert_frame_equal(base, pd.read_csv(cross), check_dtype=False)
    for i in range(4):
        sid = f"SYN_{i:03d}"
        for kind in KINDS:
            tp0 = f"{sid}/{sid}_{kind}.nii.gz"
            tp1 = f"{sid}_tp1/{sid}_tp1_{kind}.nii.gz"
            assert (again.parent / tp1).read_bytes() == (longitudinal.parent / tp1).read_bytes(), (sid, kind)
            # the baseline scan is the one the cross-sectional cohort has
            assert (again.parent / tp0).read_bytes() == (cross.parent / tp0).read_bytes(), (sid, kind)
    assert (other.parent / "SYN_000_tp1/SYN_000_tp1_t1.nii.gz").read_bytes() != \
        (again.parent / "SYN_000_tp1/SYN_000_tp1_t1.nii.gz").read_bytes()


def test_timepoints_share_anatomy_site_and_location(longitudinal):
    root = longitudinal.parent
    truth = pd.read_csv(root / "ground_truth.csv")
    site_cols = [c for c in truth.columns if c.startswith("site")] + ["centre_x", "centre_y", "centre_z", "head_scale"]
    for _sid, rows in truth.groupby("subject_id"):
        pd.testing.assert_series_equal(rows.iloc[0][site_cols], rows.iloc[1][site_cols], check_names=False)

    def scan(sid: str, tp: int) -> dict[str, np.ndarray]:
        name = sid if tp == 0 else f"{sid}_tp1"
        return {k: np.asarray(nib.load(root / name / f"{name}_{k}.nii.gz").dataobj) for k in ("t1", "seg")}

    for sid, other in (("SYN_000", "SYN_001"), ("SYN_005", "SYN_006")):
        a, b, c = scan(sid, 0), scan(sid, 1), scan(other, 0)
        healthy = (a["seg"] == 0) & (b["seg"] == 0)
        brain_a, brain_b, brain_c = a["t1"] > 0, b["t1"] > 0, c["t1"] > 0
        assert (brain_a == brain_b).mean() > 0.998  # the same brain, on the same grid
        assert (brain_a != brain_c).sum() > 20 * (brain_a != brain_b).sum()  # unlike another subject's
        inside = healthy & brain_a & brain_b
        assert np.corrcoef(a["t1"][inside], b["t1"][inside])[0, 1] > 0.8  # same anatomy ...
        assert not np.array_equal(a["t1"][inside], b["t1"][inside])     # ... new noise (a new scan)
        ca, cb = (np.argwhere(s["seg"] > 0).mean(axis=0) for s in (a, b))
        assert np.linalg.norm(ca - cb) < 4.0  # the same tumour, in the same place (voxels)


def test_response_shows_in_ground_truth_volumes(longitudinal):
    truth = pd.read_csv(longitudinal.parent / "ground_truth.csv")
    vol = truth.pivot(index="subject_id", columns="timepoint", values=["vol_wt_mm3", "vol_et_mm3"])
    first = truth[truth["timepoint"] == 1].set_index("subject_id").loc[vol.index]
    response, pseudo = first["response"], first["pseudoprogression"]
    assert 0.3 < response.mean() < 0.7 and pseudo.sum() >= 3 and (pseudo <= response).all()
    change = np.log(vol[("vol_wt_mm3", 1)] / vol[("vol_wt_mm3", 0)])
    assert change[(response == 1) & (pseudo == 0)].median() < -0.2  # responders shrink
    assert change[response == 0].median() > 0.15                     # non-responders grow
    et_change = vol[("vol_et_mm3", 1)] - vol[("vol_et_mm3", 0)]
    assert (et_change[pseudo == 1] > 0).mean() > 0.7  # pseudoprogression: more enhancement
    # the change predicts response better than either timepoint's volume (orientation chosen freely)
    by_change = _auc(response, -change)
    by_scan = [max(a, 1 - a) for a in (_auc(response, vol[("vol_wt_mm3", t)]) for t in (0, 1))]
    assert by_change > 0.75 and by_change > max(by_scan) + 0.1, (by_change, by_scan)


def test_pseudoprogression_enhances_homogeneously(longitudinal):
    """The documented cue: at follow-up, pseudoprogression's enhancing tissue is more homogeneous.

    Measured on T2 inside ET: on T1ce the thin bright rim's partial-volume edge dominates the variation.
    """
    root = longitudinal.parent
    truth = pd.read_csv(root / "ground_truth.csv")
    follow = truth[truth["timepoint"] == 1].set_index("subject_id")
    cv = {}
    for sid in follow.index:
        name = f"{sid}_tp1"
        seg = np.asarray(nib.load(root / name / f"{name}_seg.nii.gz").dataobj)
        t2 = np.asarray(nib.load(root / name / f"{name}_t2.nii.gz").dataobj)
        et = t2[seg == 4]
        if et.size >= 20:
            cv[sid] = et.std() / et.mean()
    cv = pd.Series(cv)
    pseudo = cv[follow.loc[cv.index, "pseudoprogression"] == 1]
    progression = cv[follow.loc[cv.index, "response"] == 0]
    assert len(pseudo) >= 3 and len(progression) >= 5
    assert pseudo.median() < 0.7 * progression.median()
    assert _auc(np.r_[np.ones(len(pseudo)), np.zeros(len(progression))], -np.r_[pseudo, progression]) > 0.7


def test_back_to_one_timepoint_removes_follow_up_folders(tmp_path):
    out = tmp_path / "back"
    generate_cohort(out, seed=0, n_subjects=2, shape=(24, 24, 24), n_timepoints=2, progress=False)
    assert (out / "SYN_001_tp1" / "SYN_001_tp1_seg.nii.gz").exists()
    manifest = generate_cohort(out, seed=0, n_subjects=2, shape=(24, 24, 24), progress=False)
    assert not list(out.glob("*_tp1")) and "response" not in pd.read_csv(manifest).columns
