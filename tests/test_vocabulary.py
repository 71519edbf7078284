"""Real-world tables (issue 14 items 3, 6, 7): marker vocabularies and one error for every unrecognised
value, separators other than ',', duplicate ids under skip_invalid, and cohorts too small to split."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from helpers.config import compose_train_cfg
from helpers.subjects import write_subject
from radfusion.cohort.clinical import clinical_frame, parse_marker
from radfusion.cohort.feature_table import load_feature_table
from radfusion.cohort.readers import cohort_from_config, read_brats2021, read_manifest
from radfusion.cohort.subject import SEQUENCES, CohortError
from radfusion.cohort.validate import validate_cohort
from radfusion.data.splits import make_folds, make_splits
from radfusion.data.targets import check_cohort_size

# The spellings of the issue, as real tables write them, and what they must mean (NaN = unknown).
SPELLINGS = {
    "idh": {1.0: ["mutant", "mutated", "mutated (NOS)", "IDH1 R132H", "IDH1 p.R132H", "IDH2 mutant"],
            0.0: ["wildtype", "wild-type", "wt", "negative"]},
    "codeletion": {1.0: ["codeleted", "co-deleted", "co-deletion", "1p/19q deleted"],
                   0.0: ["intact", "non-codeleted", "no deletion"]},
    "mgmt": {1.0: ["methylated", "positive", "M"], 0.0: ["unmethylated", "negative", "U"]},
}
UNKNOWN = ["indeterminate", "not assessed", "NOS", "n/a", "NA", "-"]


def _manifest(root: Path, rows: list[dict], sep: str = ",", name: str = "manifest.csv") -> Path:
    """A manifest with image paths under ``root/<id>/`` (files need not exist unless validated)."""
    table = pd.DataFrame([{"subject_id": r["subject_id"], **{s: f"{r['subject_id']}/{r['subject_id']}_{s}.nii.gz"
                                                             for s in (*SEQUENCES, "seg")}, **r} for r in rows])
    path = root / name
    table.to_csv(path, index=False, sep=sep)
    return path


def _override_of(err: CohortError) -> dict:
    """The ``data.cohort.label_values={...}`` line of an error, parsed the way Hydra parses it."""
    line = re.search(r"'(data\.cohort\.label_values=\{.*\})'", str(err)).group(1)
    return OverridesParser.create().parse_override(line).value()


# ------------------------------------------------------------------ item 3: vocabularies
@pytest.mark.parametrize("column", sorted(SPELLINGS))
def test_every_documented_spelling_means_what_the_table_says(column):
    for code, words in SPELLINGS[column].items():
        for word in words:
            # case, surrounding and internal whitespace do not matter
            for variant in (word, word.upper(), f"  {word.lower()} ", word.replace(" ", "   ")):
                assert parse_marker(variant, column, "s1") == code, (column, variant)
    for word in UNKNOWN:
        assert np.isnan(parse_marker(word, column, "s1"))
    # the spellings accepted before keep their meaning
    for old, code in (("1", 1.0), ("0", 0.0), ("yes", 1.0), ("false", 0.0), (1, 1.0), (0.0, 0.0), ("", np.nan)):
        np.testing.assert_equal(parse_marker(old, column, "s1"), code)


def test_vocabularies_are_per_column():
    assert parse_marker("negative", "idh", "s") == 0.0  # IDH-wildtype
    assert parse_marker("IDH2 p.R172K", "idh", "s") == 1.0  # any hotspot variant, not only R132H
    for word in ("M", "U", "methylated"):  # MGMT words are refused in the IDH column
        with pytest.raises(CohortError, match="idh"):
            parse_marker(word, "idh", "s")
    with pytest.raises(CohortError):  # R132H immunohistochemistry negative is not "wildtype"
        parse_marker("IDH1 R132H negative", "idh", "s")
    with pytest.raises(CohortError):  # by default relative co-deletion needs the user's decision
        parse_marker("relative co-deletion", "codeletion", "s")
    assert parse_marker("Relative  Co-Deletion", "codeletion", "s",
                        label_values={"codeletion": {"relative co-deletion": 1}}) == 1.0


def test_all_unrecognised_values_in_one_error_with_a_mapping_that_works(tmp_path):
    rows = [{"subject_id": "a", "idh": "IDH1 R132H", "codeletion": "relative co-deletion", "mgmt": "M"},
            {"subject_id": "b", "idh": "maybe", "codeletion": "Relative co-deletion", "mgmt": "grey zone"},
            {"subject_id": "c", "idh": "methylated", "codeletion": "intact", "mgmt": "U"},
            {"subject_id": "d", "idh": "wt", "codeletion": "relative co-deletion", "mgmt": ""}]
    path = _manifest(tmp_path, rows)
    with pytest.raises(CohortError) as info:
        read_manifest(path)
    msg = str(info.value)
    assert msg.splitlines()[0].startswith(f"{path}: 4 marker value(s) not recognised in column(s) idh, ")
    assert "column 'codeletion': 'relative co-deletion' in 3 subject(s) (a, b, d)" in msg  # case-insensitive
    assert "column 'idh': 'maybe' in 1 subject(s) (b)" in msg
    assert "'methylated' in 1 subject(s) (c) - a mgmt spelling in the idh column" in msg
    assert "'grey zone' in 1 subject(s) (b)" in msg
    mapping = _override_of(info.value)
    assert mapping == {"idh": {"maybe": None, "methylated": None}, "codeletion": {"relative co-deletion": None},
                       "mgmt": {"grey zone": None}}
    # pasted as it is (null = unknown): the run reads, and those labels are masked, not guessed
    clinical = read_manifest(path, label_values=mapping).clinical
    assert clinical["codeletion"].isna().tolist() == [True, True, False, True]
    mapping["codeletion"]["relative co-deletion"] = 1
    clinical = read_manifest(path, label_values=mapping).clinical
    assert clinical["codeletion"].tolist()[:2] == [1.0, 1.0] and clinical.loc["c", "codeletion"] == 0.0
    assert clinical["mgmt"].tolist()[0] == 1.0 and clinical.loc["c", "mgmt"] == 0.0


def test_values_hydra_cannot_take_unquoted_are_escaped_or_named(tmp_path):
    frame = pd.DataFrame({"subject_id": ["a", "b"], "mgmt": ["methylated (10%), weak", "müde"]})
    with pytest.raises(CohortError) as info:
        clinical_frame(frame, "t.csv")
    assert _override_of(info.value) == {"mgmt": {"methylated (10%), weak": None}}  # escaped, round trip exact
    assert "values ['müde'] cannot be written on the command line" in str(info.value)


def test_label_values_are_checked():
    frame = pd.DataFrame({"subject_id": ["a"], "idh": ["mutant"]})
    with pytest.raises(CohortError, match=r"label_values: \['IDH'\] are not marker columns"):
        clinical_frame(frame, "t.csv", label_values={"IDH": {"x": 1}})
    with pytest.raises(CohortError, match=r"label_values.idh: 'x' maps to 2; use 1, 0 or null"):
        clinical_frame(frame, "t.csv", label_values={"idh": {"x": 2}})


def test_clinical_csv_of_a_folder_layout_and_the_config_key(tmp_path):
    root = tmp_path / "brats"
    for sid in ("s1", "s2"):
        (root / sid).mkdir(parents=True)
    csv = tmp_path / "clinical.csv"
    pd.DataFrame({"subject_id": ["s1", "s2"], "codeletion": ["relative co-deletion", "no deletion"]}).to_csv(csv)
    with pytest.raises(CohortError, match=r"clinical.csv: 1 marker value"):
        read_brats2021(root, csv)
    # the override, as a user types it, through the real config (every cohort block has the key)
    cfg = compose_train_cfg(["data=brats", f"data.cohort.path={root}", f"data.cohort.clinical={csv}",
                             "data.cohort.label_values={codeletion: {relative co-deletion: 1}}"])
    assert compose_train_cfg(["data=manifest"]).data.cohort.label_values is None
    assert cohort_from_config(cfg.data.cohort).clinical["codeletion"].tolist() == [1.0, 0.0]


def test_feature_table_reports_every_value_with_its_source_column(tmp_path):
    f = tmp_path / "f.csv"
    f.write_text("ID,x,IDH1_status,codel\nA,1,IDH1 p.R132H,co-deleted\nB,2,unclear,partial deletion\n"
                 "C,3,Wild-type,relative co-deletion\nD,4,unclear,NOS\n")
    labels = {"idh": "IDH1_status", "codeletion": "codel"}
    with pytest.raises(CohortError) as info:
        load_feature_table(f, None, id_column="ID", label_columns=labels)
    msg = str(info.value)
    assert "column 'IDH1_status' (idh): 'unclear' in 2 subject(s) (B, D)" in msg
    assert "column 'codel' (codeletion): 'partial deletion' in 1 subject(s) (B) - a partial 1p or 19q loss" in msg
    mapping = _override_of(info.value)
    assert set(mapping) == {"idh", "codeletion"}  # contract names, not the table's
    _, clin = load_feature_table(f, None, id_column="ID", label_columns=labels,
                                 label_values={"idh": {"unclear": None}, "codeletion": {"partial deletion": 0,
                                                                                        "relative co-deletion": 1}})
    np.testing.assert_array_equal(clin["idh"], [1.0, np.nan, 0.0, np.nan])
    np.testing.assert_array_equal(clin["codeletion"], [1.0, 0.0, 1.0, np.nan])


# ------------------------------------------------------------------ item 7: separators, duplicates
@pytest.mark.parametrize("sep, shown", [(";", "';'"), ("\t", "'\\t'")])
def test_manifest_separator_is_sniffed(tmp_path, caplog, sep, shown):
    rows = [{"subject_id": "a", "idh": "mutant", "age": "54,5" if sep == ";" else "54.5"},
            {"subject_id": "b", "idh": "wildtype", "age": "61"}]
    path = _manifest(tmp_path, rows, sep=sep)
    with caplog.at_level(logging.INFO, logger="radfusion.cohort.clinical"):
        cohort = read_manifest(path)
    assert f"read with {shown} as the column separator" in caplog.text
    assert cohort.ids == ["a", "b"] and cohort.clinical["idh"].tolist() == [1.0, 0.0]
    assert cohort.clinical["age"].tolist() == [54.5, 61.0]  # a ';' export's decimal comma is a decimal point
    assert cohort.subjects[0].images["flair"] == (tmp_path / "a" / "a_flair.nii.gz").resolve()


def test_header_that_cannot_be_split_says_which_separator(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text('"subject_id;t1;t1ce;t2;flair"\n"a;a/t1.nii.gz;a/t1ce.nii.gz;a/t2.nii.gz;a/flair.nii.gz"\n')
    with pytest.raises(CohortError, match=r"missing columns \['subject_id'.*this file uses ';' as separator"):
        read_manifest(path)


def test_feature_table_with_semicolons_and_decimal_commas(tmp_path):
    f = tmp_path / "f.csv"
    f.write_text("subject_id;original_firstorder_Mean;idh\nA;1,5;mutant\nB;-2,25e1;wildtype\nC;3;\n")
    feats, clin = load_feature_table(f, None)
    np.testing.assert_array_equal(feats["original_firstorder_Mean"], [1.5, -22.5, 3.0])
    np.testing.assert_array_equal(clin["idh"], [1.0, 0.0, np.nan])


def test_duplicate_ids_are_skipped_like_every_validation_failure(tmp_path, caplog):
    for sid in ("a", "b", "c"):
        write_subject(tmp_path, sid)
    rows = [{"subject_id": s, "idh": i} for s, i in (("a", 1), ("b", 0), ("a", 0), ("c", 1))]
    path = _manifest(tmp_path, rows)
    cohort = read_manifest(path)  # reading keeps every row: validation decides
    assert cohort.ids == ["a", "b", "a", "c"] and cohort.subjects[2].clinical["idh"] == 0.0
    with pytest.raises(CohortError, match=r"duplicate subject_id\(s\) in cohort: \['a'\].*skip_invalid=true"):
        validate_cohort(cohort)
    with caplog.at_level(logging.ERROR, logger="radfusion.cohort.validate"):
        kept = validate_cohort(read_manifest(path), skip_invalid=True)
    assert kept.ids == ["b", "c"]  # every row of the ambiguous id is dropped, not the first one kept
    assert kept.clinical.index.tolist() == ["b", "c"]
    assert "skipping invalid subject: subject a: duplicate subject_id (2 rows" in caplog.text


def test_duplicate_clinical_rows_of_a_folder_layout(tmp_path):
    for sid in ("s1", "s2", "s3"):
        write_subject(tmp_path / "brats", sid)
        for seq in (*SEQUENCES, "seg"):  # write_subject's names are already the BraTS 2021 ones
            assert (tmp_path / "brats" / sid / f"{sid}_{seq}.nii.gz").exists()
    csv = tmp_path / "clinical.csv"
    pd.DataFrame({"subject_id": ["s1", "s2", "s2", "s9"], "idh": [1, 0, 1, 0]}).to_csv(csv, index=False)
    cohort = read_brats2021(tmp_path / "brats", csv)
    assert cohort.clinical.index.tolist() == ["s1", "s2", "s2", "s3"]  # s3: no row, unknown; s9: no images
    assert cohort.clinical.loc["s3", "patient_id"] == "s3"  # its own patient for the splits
    with pytest.raises(CohortError, match=r"duplicate subject_id\(s\) in cohort: \['s2'\]"):
        validate_cohort(cohort)
    kept = validate_cohort(read_brats2021(tmp_path / "brats", csv), skip_invalid=True)
    assert kept.ids == ["s1", "s3"] and kept.clinical.loc["s1", "idh"] == 1.0


def test_feature_table_duplicates_and_empty_ids_under_skip_invalid(tmp_path):
    f = tmp_path / "f.csv"
    f.write_text("subject_id,x,idh\nA,1,mutant\nB,2,wildtype\nA,3,wildtype\n,4,mutant\nC,5,wildtype\n")
    with pytest.raises(CohortError, match=r"empty 'subject_id' in row\(s\) \[5\].*skip_invalid=true"):
        load_feature_table(f, None)
    feats, clin = load_feature_table(f, None, skip_invalid=True)
    assert feats.index.tolist() == ["B", "C"] and clin.index.tolist() == ["B", "C"]
    assert sorted(feats.attrs["invalid"]) == ["<feature table line 5>", "A"]
    # with a separate clinical table an id dropped from one is dropped from both
    c = tmp_path / "c.csv"
    c.write_text("subject_id,idh\nB,0\nC,1\nC,0\n")
    f.write_text("subject_id,x\nB,2\nC,5\n")
    feats, clin = load_feature_table(f, c, skip_invalid=True)
    assert feats.index.tolist() == ["B"] and feats.attrs["unmatched_ids"]["only_features"] == []


# ------------------------------------------------------------------ item 6: tiny cohorts
@pytest.mark.parametrize("n", [2, 3, 5])
def test_tiny_cohorts_say_what_is_needed_before_splitting(n):
    ids = [f"s{i}" for i in range(n)]
    labels = np.array([1.0 if i % 2 else 0.0 for i in range(n)])
    with pytest.raises(CohortError) as info:
        check_cohort_size(labels[:, None], ["idh"], ids, {"val_fraction": 0.2, "test_fraction": 0.2})
    n_mut = int(labels.sum())
    assert str(info.value).startswith(
        f"too small a cohort for a holdout split (val 0.2 / test 0.2): the cohort has {n} labelled subjects for "
        f"'idh' ({n_mut} mutant, {n - n_mut} wildtype); every split (train, val, test) needs both classes, so at "
        "least 3 of each")
    assert "at least 7 subjects are needed" in str(info.value)
    if n == 2:  # scikit-learn's own "With n_samples=1 ..." is never what the user sees
        with pytest.raises(ValueError, match=r"too small a cohort: a holdout split .* of 2 subject\(s\).*train 0"):
            make_splits(ids, labels)
        with pytest.raises(ValueError, match=r"too small a cohort: 2-fold .*at least 4 subjects"):
            make_folds(ids, labels, strategy="kfold", n_folds=2)


def test_a_cohort_big_enough_passes_and_kfold_is_suggested_when_it_fits():
    ids = [f"s{i}" for i in range(12)]
    labels = np.array([1.0, 0.0] * 6)
    check_cohort_size(labels[:, None], ["idh"], ids, {"val_fraction": 0.2, "test_fraction": 0.2})
    # a test fraction of 0.1 gives 1 test subject of 10; 5-fold CV would test 2 at a time
    with pytest.raises(CohortError, match=r"at least 11 subjects.*data.split.strategy=kfold data.split.n_folds=5"):
        check_cohort_size(labels[:10, None], ["idh"], ids[:10], {"val_fraction": 0.3, "test_fraction": 0.1})
    # longitudinal rows count as their patient: 12 rows of 6 patients are too few
    with pytest.raises(CohortError, match=r"the cohort has 6 labelled patients"):
        check_cohort_size(labels[:, None], ["idh"], [f"p{i // 2}" for i in range(12)], {})


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_datamodule_refuses_a_tiny_cohort_before_splitting(tmp_path, n):
    from radfusion.data.datamodule import RadFusionDataModule

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"subject_id": [f"s{i}" for i in range(n)], "original_firstorder_Mean": rng.normal(size=n),
                          "original_glcm_Contrast": rng.normal(size=n), "idh": [i % 2 for i in range(n)]})
    table.to_csv(tmp_path / "f.csv", index=False)
    dm = RadFusionDataModule(cohort={"source": "feature_table", "path": None, "features": str(tmp_path / "f.csv"),
                                     "clinical": None}, features={}, roi={}, cache_dir=str(tmp_path / "cache"),
                             splits_dir=str(tmp_path / "splits"), use_images=False, progress=False)
    if n == 10:
        dm.setup()
        assert sum(len(v) for v in dm.splits.values()) == 10
        return
    with pytest.raises(CohortError, match=rf"too small a cohort for a holdout split.*the cohort has {n} labelled"):
        dm.setup()
    assert not (tmp_path / "splits").exists()  # refused before any split was made or written
