"""Delta radiomics between two timepoints: formulas, empty habitats, exclusions, and the
``response_delta_hybrid`` experiment end to end on a small synthetic longitudinal cohort."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from omegaconf import open_dict
from sklearn.metrics import roc_auc_score

from radfusion.data.prepare import stack_rois
from radfusion.radiomics.delta import delta_features, patient_table, relative_change


def test_relative_change_formulas():
    before = np.array([10.0, -4.0, 0.0, 0.0, 2.0, np.nan])
    after = np.array([15.0, -2.0, 0.0, 3.0, 1.0, 1.0])
    base = relative_change(before, after, "baseline", eps=1e-3, clip=10.0)
    np.testing.assert_allclose(base[:5], [0.5, 0.5, 0.0, 10.0, -0.5])  # 3 / 1e-3 clipped to 10
    assert np.isnan(base[5])
    assert relative_change(before[3:4], after[3:4], "baseline", eps=1e-3, clip=None)[0] == pytest.approx(3000.0)
    sym = relative_change(before, after, "symmetric", eps=1e-3)
    np.testing.assert_allclose(sym[:5], [5 / 12.5, 2 / 3, 0.0, 2.0, -1 / 1.5])
    with pytest.raises(ValueError, match="baseline' or 'symmetric"):
        relative_change(before, after, "ratio")


def _scan_tables():
    """Three patients: P1 complete, P2 with ET empty at baseline, P3 without follow-up; P4 failed at tp1."""
    scans = ["P1_tp0", "P1_tp1", "P2_tp0", "P2_tp1", "P3_tp0", "P4_tp0", "P4_tp1"]
    clinical = pd.DataFrame({
        "subject_id": scans, "patient_id": [s.split("_")[0] for s in scans],
        "timepoint": [0, 1, 0, 1, 0, 0, 1], "response": [np.nan, 1.0, np.nan, 0.0, np.nan, np.nan, 1.0],
        "site": ["A", "A", "B", "B", "A", "B", "B"]}, index=scans)
    features = pd.DataFrame({
        "ET_voxels": [100.0, 50.0, 0.0, 80.0, 10.0, 5.0],
        "ET_empty": [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
        "ET_t1ce_original_firstorder_Mean": [200.0, 150.0, np.nan, 120.0, 3.0, 4.0],
        "WT_shape_MeshVolume": [1000.0, 800.0, 500.0, 900.0, 10.0, 11.0],
    }, index=["P1_tp0", "P1_tp1", "P2_tp0", "P2_tp1", "P3_tp0", "P4_tp0"])  # P4_tp1 extraction failed
    return features, clinical


def test_delta_table_values_empty_habitats_and_exclusions():
    features, clinical = _scan_tables()
    delta, patients = delta_features(features, clinical, blocks=("abs", "rel", "followup"), eps=1e-6, clip=10.0)
    assert list(delta.index) == ["P1", "P2"] == list(patients.index)
    assert set(delta.attrs["excluded"]) == {"P3", "P4"}
    assert "timepoint(s) [1]" in delta.attrs["excluded"]["P3"] and "P4_tp1" in delta.attrs["excluded"]["P4"]
    # independent reference: per patient, straight from the scan rows
    for p in ("P1", "P2"):
        f0, f1 = features.loc[f"{p}_tp0"], features.loc[f"{p}_tp1"]
        for col in ("ET_voxels", "WT_shape_MeshVolume", "ET_t1ce_original_firstorder_Mean"):
            np.testing.assert_allclose(delta.at[p, f"delta_abs_{col}"], f1[col] - f0[col])
            assert delta.at[p, f"followup_{col}"] == f1[col]
        assert delta.at[p, "baseline_ET_empty"] == f0["ET_empty"] and delta.at[p, "followup_ET_empty"] == f1["ET_empty"]
    assert delta.at["P1", "delta_rel_WT_shape_MeshVolume"] == pytest.approx(-0.2)
    # ET appeared in P2: its intensity change is undefined (NaN, imputed in-fold), its volume change is
    # defined, the relative one bounded, and the flags say what happened
    assert np.isnan(delta.at["P2", "delta_abs_ET_t1ce_original_firstorder_Mean"])
    assert delta.at["P2", "delta_abs_ET_voxels"] == 80.0 and delta.at["P2", "delta_rel_ET_voxels"] == 10.0
    assert "delta_abs_ET_empty" not in delta and "baseline_ET_voxels" not in delta
    # labels and clinical values from the follow-up scan; the scans are recorded
    assert patients.at["P1", "response"] == 1.0 and patients.at["P2", "response"] == 0.0
    assert patients.at["P2", "baseline_subject_id"] == "P2_tp0" and patients.at["P2", "followup_subject_id"] == "P2_tp1"
    # swapping the timepoints negates the absolute change
    rev, _ = delta_features(features, clinical, baseline_timepoint=1, followup_timepoint=0, blocks=("abs",))
    np.testing.assert_allclose(rev.filter(like="delta_abs_"), -delta.filter(like="delta_abs_"))


def test_delta_errors_name_the_problem():
    features, clinical = _scan_tables()
    with pytest.raises(ValueError, match="lacks \\['timepoint'\\]"):
        delta_features(features, clinical.drop(columns="timepoint"))
    with pytest.raises(ValueError, match="no patient has scans at both timepoints 0 and 2"):
        patient_table(clinical, 0, 2)
    with pytest.raises(ValueError, match="subset of"):
        delta_features(features, clinical, blocks=("ratio",))
    bad = clinical.copy()
    bad["timepoint"] = bad["timepoint"].astype(object)
    bad.loc["P1_tp1", "timepoint"] = "later"
    with pytest.raises(ValueError, match="P1_tp1"):
        patient_table(bad)


def test_both_timepoints_stack_roi_channels(tmp_path):
    a, b = tmp_path / "P1_tp0-abc.npy", tmp_path / "P1_tp1-def.npy"
    np.save(a, np.zeros((4, 3, 3, 3), np.float32))
    np.save(b, np.ones((4, 3, 3, 3), np.float32))
    out = stack_rois(a, b)
    arr = np.load(out)
    assert arr.shape == (8, 3, 3, 3) and arr[:4].sum() == 0 and arr[4:].min() == 1
    assert stack_rois(a, b) == out  # made once


#: The longitudinal cohort's generator arguments (the run's ``data.cohort.synthetic`` must say the same).
LONG = {"n_subjects": 16, "shape": (40, 40, 40), "seed": 3, "n_sites": 2}


@pytest.fixture(scope="module")
def long_cohort(tmp_path_factory) -> Path:
    from radfusion.synthetic.generator import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("long"), n_timepoints=2, progress=False, **LONG)


@pytest.mark.slow
def test_response_delta_hybrid_runs_at_patient_level(long_cohort, tmp_path):
    from helpers.config import compose_train_cfg, tiny_data_overrides
    from radfusion.training.run import train

    cfg = compose_train_cfg([
        "experiment=response_delta_hybrid", "logger=csv", *tiny_data_overrides(long_cohort.parent, LONG),
        "data.batch_size=4", "model.encoder.block_inplanes=[4,8,8,16]",
        f"paths.cache_dir={tmp_path / 'cache'}", f"paths.data_dir={tmp_path / 'data'}",
        f"paths.log_dir={tmp_path / 'runs'}", "trainer.max_epochs=2", "+trainer.enable_progress_bar=false",
        "n_bootstrap=50"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        # assigned, not overridden: a Hydra override of a dict merges into the seven default classes
        cfg.features.params.featureClass = {"shape": None, "firstorder": None}
    metrics, objects = train(cfg)
    dm = objects["datamodule"]
    manifest = pd.read_csv(long_cohort)
    patients = sorted(manifest.subject_id.unique())
    assert sorted(dm.ids) == patients  # one row per patient, not per scan
    assert all(c.startswith(("delta_abs_", "delta_rel_", "baseline_", "followup_")) for c in dm.features.columns)
    # the delta of the whole-tumour voxel count is the change of the reference masks' tumour size
    for p in patients[:3]:
        rows = manifest[manifest.subject_id == p].set_index("timepoint")
        n = [int(np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(long_cohort.parent / rows.at[t, "seg"]))),
                         [1, 2, 4]).sum()) for t in (0, 1)]
        assert dm.features.at[p, "delta_abs_WT_voxels"] == n[1] - n[0]
    pred = pd.read_csv(Path(cfg.paths.output_dir) / "predictions.csv")
    assert sorted(pred.subject_id) == patients
    labels = manifest[manifest.timepoint == 1].set_index("subject_id")["response"]
    np.testing.assert_array_equal(pred.set_index("subject_id").loc[patients, "label_response"], labels[patients])
    test = pred[pred.split == "test"]
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert saved["test/auc_response"] == pytest.approx(roc_auc_score(test.label_response, test.prob_response))
