"""Precomputed feature tables: real PyRadiomics output joined with a clinical table."""

from __future__ import annotations

import csv
import logging
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from radfusion.cohort.feature_table import load_feature_table
from radfusion.cohort.subject import CohortError


@pytest.fixture(scope="module")
def pyradiomics_rows() -> list[dict]:
    """What PyRadiomics' batch mode writes: the input columns (ID, Image, Mask) then execute()'s
    ordered result, diagnostics first. Three subjects, first-order + shape features."""
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor()
    extractor.disableAllFeatures()
    extractor.enableFeatureClassByName("firstorder")
    extractor.enableFeatureClassByName("shape")
    rng = np.random.default_rng(0)
    rows = []
    for k, sid in enumerate(["BraTS_001", "BraTS_002", "BraTS_003"]):
        mask = np.zeros((16, 16, 16), np.uint8)
        mask[4:10 + k, 4:11, 3:12] = 1
        result = extractor.execute(sitk.GetImageFromArray(rng.normal(100 + 10 * k, 20, mask.shape)),
                                   sitk.GetImageFromArray(mask))
        rows.append({"ID": sid, "Image": f"/data/{sid}/t1ce.nii.gz", "Mask": f"/data/{sid}/seg.nii.gz", **result})
    return rows


def _write_pyradiomics_csv(rows: list[dict], path) -> None:
    with open(path, "w", newline="") as f:  # the csv module, as PyRadiomics' batch script does
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


CLINICAL = """ID,Site,Age,IDH1_status,MGMT,codel,Grade,OS,Dead
BraTS_001,A,54,Mutant,methylated,codeleted,G2,1200,0
BraTS_002,B,61,WT,unmethylated,,IV,310,1
BraTS_003,A,NA,indeterminate,Not Available,intact,III,,
BraTS_999,B,40,wildtype,methylated,,4,800,1
"""
LABELS = {"site": "Site", "age": "Age", "idh": "IDH1_status", "mgmt": "MGMT", "codeletion": "codel",
          "grade": "Grade", "os_days": "OS", "os_event": "Dead"}


def test_real_pyradiomics_output_is_cleaned_and_joined(pyradiomics_rows, tmp_path, caplog):
    rows = pyradiomics_rows + [{**pyradiomics_rows[0], "ID": "Extra_1"}]  # no clinical row
    _write_pyradiomics_csv(rows, tmp_path / "features.csv")
    (tmp_path / "clinical.csv").write_text(CLINICAL)
    with caplog.at_level("WARNING"):
        feats, clin = load_feature_table(tmp_path / "features.csv", tmp_path / "clinical.csv", id_column="ID",
                                         label_columns=LABELS)
    expected_cols = [k for k in pyradiomics_rows[0] if k.startswith("original_")]
    assert list(feats.columns) == expected_cols and len(expected_cols) > 30
    assert feats.index.tolist() == clin.index.tolist() == ["BraTS_001", "BraTS_002", "BraTS_003"]
    for row in pyradiomics_rows:  # values survive the CSV round trip exactly
        np.testing.assert_allclose(feats.loc[row["ID"]].to_numpy(), [float(row[c]) for c in expected_cols],
                                   rtol=1e-15)
    dropped = feats.attrs["dropped_columns"]
    assert len(dropped["diagnostics"]) == sum(k.startswith("diagnostics_") for k in pyradiomics_rows[0])
    assert "diagnostics_Mask-original_VoxelNum" in dropped["diagnostics"]  # numeric, but not a feature
    assert sorted(dropped["settings"]) == ["Image", "Mask"]
    assert feats.attrs["unmatched_ids"] == {"only_features": ["Extra_1"], "only_clinical": ["BraTS_999"]}
    assert "Extra_1" in caplog.text and "BraTS_999" in caplog.text
    assert feats.dtypes.eq(np.float64).all()

    assert list(clin.columns) == ["subject_id", "site", "age", "idh", "mgmt", "codeletion", "grade", "os_days",
                                  "os_event"]
    np.testing.assert_array_equal(clin["idh"], [1.0, 0.0, np.nan])      # indeterminate = unknown
    np.testing.assert_array_equal(clin["mgmt"], [1.0, 0.0, np.nan])     # "Not Available" = unknown
    np.testing.assert_array_equal(clin["codeletion"], [1.0, np.nan, 0.0])
    np.testing.assert_array_equal(clin["grade"], [2.0, 4.0, 3.0])
    np.testing.assert_array_equal(clin["age"], [54.0, 61.0, np.nan])
    np.testing.assert_array_equal(clin["os_days"], [1200.0, 310.0, np.nan])
    np.testing.assert_array_equal(clin["os_event"], [0.0, 1.0, np.nan])
    assert clin["site"].tolist() == ["A", "B", "A"]


def test_parquet_gives_the_same_result(pyradiomics_rows, tmp_path):
    _write_pyradiomics_csv(pyradiomics_rows, tmp_path / "features.csv")
    (tmp_path / "clinical.csv").write_text(CLINICAL)
    table = pd.read_csv(tmp_path / "features.csv")
    table.to_parquet(tmp_path / "features.parquet")
    pd.read_csv(tmp_path / "clinical.csv", dtype=str).to_parquet(tmp_path / "clinical.parquet")
    a = load_feature_table(tmp_path / "features.csv", tmp_path / "clinical.csv", "ID", LABELS)
    b = load_feature_table(tmp_path / "features.parquet", tmp_path / "clinical.parquet", "ID", LABELS)
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])


def test_labels_inside_the_feature_table_are_not_features(tmp_path):
    (tmp_path / "f.csv").write_text(
        "subject_id,original_firstorder_Mean,original_glcm_Contrast,notes,IDH,OS,status\n"
        "1,1.5,0.2,scanner A,mutant,100,dead\n"
        "2,2.5,,re-scanned,wildtype,200,alive\n"
        "3,3.5,0.4,,NA,50,1\n")
    feats, clin = load_feature_table(tmp_path / "f.csv", None,
                                     label_columns={"idh": "IDH", "os_days": "OS", "os_event": "status"})
    assert list(feats.columns) == ["original_firstorder_Mean", "original_glcm_Contrast"]
    assert np.isnan(feats.loc["2", "original_glcm_Contrast"])  # missing value, imputed in-fold later
    assert feats.attrs["dropped_columns"]["non_numeric"] == ["notes"]
    assert sorted(feats.attrs["dropped_columns"]["labels"]) == ["IDH", "OS", "status"]
    np.testing.assert_array_equal(clin["idh"], [1.0, 0.0, np.nan])
    np.testing.assert_array_equal(clin["os_event"], [1.0, 0.0, 1.0])
    assert clin["site"].tolist() == ["unknown"] * 3
    assert np.isnan(clin["mgmt"]).all()  # not given = unknown


def test_bad_input_names_the_file_subject_and_value(tmp_path):
    f = tmp_path / "f.csv"
    f.write_text("ID,original_firstorder_Mean\nA,1\nB,2\nA,3\n")
    with pytest.raises(CohortError, match=r"duplicate 'ID' value\(s\) \['A'\]"):
        load_feature_table(f, None, id_column="ID")
    with pytest.raises(CohortError, match=r"no id column 'subject_id'.*ID"):
        load_feature_table(f, None)
    f.write_text("subject_id,x,idh\nA,1,mutant\nB,2,maybe\n")
    with pytest.raises(CohortError, match=r"f.csv: 1 marker value.*\n  column 'idh': 'maybe' in 1 subject\(s\) \(B\)"):
        load_feature_table(f, None)
    f.write_text("subject_id,x,y\nA,1,2\nB,2,3 mm\n")
    with pytest.raises(CohortError, match=r"column 'y' is numeric but subject B has '3 mm'"):
        load_feature_table(f, None)
    f.write_text("subject_id,x,os_days,os_event\nA,1,-3,1\nB,2,10,0\n")
    with pytest.raises(CohortError, match=r"negative os_days.*\['A'\]"):
        load_feature_table(f, None)
    with pytest.raises(CohortError, match="not in the table"):
        load_feature_table(f, None, label_columns={"idh": "IDH_status"})
    with pytest.raises(CohortError, match="not data-contract columns"):
        load_feature_table(f, None, label_columns={"survival": "os_days"})
    (tmp_path / "c.csv").write_text("subject_id,idh\nX,1\n")
    with pytest.raises(CohortError, match="no subject ID is in both"):
        load_feature_table(f, tmp_path / "c.csv")
    with pytest.raises(CohortError, match="does not exist"):
        load_feature_table(tmp_path / "missing.csv")


def test_custom_unknown_values(tmp_path):
    f = tmp_path / "f.csv"
    f.write_text("subject_id,x,idh\nA,1,mutant\nB,-,?\nC,3,wildtype\n")
    feats, clin = load_feature_table(f, None, unknown_values=("-", "?"))
    assert np.isnan(feats.loc["B", "x"]) and np.isnan(clin.loc["B", "idh"])


def test_feature_table_feeds_the_in_fold_pipeline_and_a_baseline(tmp_path):
    """End to end without images: table → in-fold processing (fitted on train) → L2 logistic baseline."""
    from radfusion.baselines import run_baseline
    from radfusion.features.processor import make_feature_processor

    rng = np.random.default_rng(0)
    n = 80
    ids = [f"P{i:02d}" for i in range(n)]
    x = rng.normal(size=(n, 6))
    idh = np.where(x[:, 0] + 0.5 * rng.normal(size=n) > 0, "Mutant", "WT")
    pd.DataFrame({"pid": ids, "diagnostics_Versions_PyRadiomics": "v3.0.1",
                  **{f"original_firstorder_F{j}": x[:, j] for j in range(6)}}).to_csv(tmp_path / "f.csv", index=False)
    pd.DataFrame({"pid": ids, "IDH": idh}).to_csv(tmp_path / "c.csv", index=False)
    feats, clin = load_feature_table(tmp_path / "f.csv", tmp_path / "c.csv", "pid", {"idh": "IDH"})
    splits = {"train": ids[:40], "val": ids[40:60], "test": ids[60:]}
    pipe = make_feature_processor({}).fit(feats.loc[splits["train"]], clin.loc[splits["train"], "idh"].to_numpy())
    dm = SimpleNamespace(ids=list(feats.index), targets=["idh"], labels=clin[["idh"]].to_numpy(float),
                         survival=clin[["os_days", "os_event"]], splits=splits, fold=0,
                         radiomics={s: pipe.transform(feats.loc[v]) for s, v in splits.items()})
    lr = {"_target_": "sklearn.linear_model.LogisticRegression", "C": 1.0, "l1_ratio": 0.0, "class_weight": "balanced",
          "max_iter": 5000, "random_state": 0}  # configs/model/baseline_lr_l2.yaml without its grid
    pred = run_baseline({"baseline": "lr_l2", "estimator": lr}, dm)
    test = pred[pred.split == "test"]
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(test.label_idh, test.prob_idh) > 0.8


def test_data_config_composes():
    from helpers.config import compose_train_cfg

    cfg = compose_train_cfg(["experiment=idh_baseline_lr", "data=feature_table", "data.cohort.features=/x/f.csv",
                             "data.cohort.clinical=/x/c.csv", "data.cohort.id_column=ID",
                             "data.cohort.label_columns={idh: IDH1_status}"])
    c = cfg.data.cohort
    assert c.source == "feature_table" and c.features == "/x/f.csv" and c.clinical == "/x/c.csv"
    assert c.id_column == "ID" and dict(c.label_columns) == {"idh": "IDH1_status"}
    assert "indeterminate" in list(c.unknown_values)
