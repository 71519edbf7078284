"""Missing sequences: a cohort made of fewer sequences (``data.cohort.sequences``) and subjects that lack one.

The references are extractions of the same subjects with every file present: a sequence's features, shape
and ROI channel must not change because another sequence is absent, and the absent one must be NaN (plus
``<sequence>_missing = 1``) or an all-zero channel, never a value borrowed from somewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.config import compose_train_cfg
from helpers.radiomics import small_feature_settings
from helpers.subjects import write_subject
from radfusion.cohort.readers import read_brats2021, read_manifest
from radfusion.cohort.subject import SEQUENCES, CohortError, Subject
from radfusion.cohort.validate import validate_cohort, validate_subject
from radfusion.features.processor import FeatureProcessor
from radfusion.imaging.augment import ROIAugment
from radfusion.imaging.roi import ROISettings, build_roi, build_roi_cache, roi_cache_path
from radfusion.radiomics.extract import extract_cohort, extract_subject
from radfusion.radiomics.settings import FeatureSettings

TWO = ("t1ce", "flair")


def write_manifest(path: Path, subjects: list[Subject], sequences: tuple[str, ...],
                   blank: dict[str, list[str]] | None = None) -> Path:
    """A manifest with only the ``sequences`` columns (absolute paths); ``blank``: cells left empty."""
    rows = []
    for s in subjects:
        row = {"subject_id": s.subject_id, "site": "A", "seg": str(s.seg)}
        row.update({q: "" if q in (blank or {}).get(s.subject_id, []) else str(s.images[q]) for q in sequences})
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def subjects(tmp_path_factory) -> tuple[Path, list[Subject]]:
    root = tmp_path_factory.mktemp("missing_sequences")
    return root, [write_subject(root / "cases", f"s{i}", with_et=i != 2, seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("missing_sequences_cache")


@pytest.fixture(scope="module")
def two_sequence_table(subjects, cache) -> pd.DataFrame:
    """Every subject complete, extracted with sequences [t1ce, flair]: the reference of the tests below."""
    root, subs = subjects
    cohort = validate_cohort(read_manifest(write_manifest(root / "two.csv", subs, TWO), sequences=TWO))
    return extract_cohort(cohort, small_feature_settings(sequences=list(TWO)), cache, progress=False)


@pytest.fixture(scope="module")
def lacking(subjects) -> Path:
    """s1 lacks flair, s2 lacks t1ce (the first sequence, which otherwise holds the shape features)."""
    root, subs = subjects
    return write_manifest(root / "lacking.csv", subs, TWO, blank={"s1": ["flair"], "s2": ["t1ce"]})


# --------------------------------------------------------------------------- a cohort of fewer sequences

def test_readers_read_and_require_only_the_cohort_sequences(subjects):
    root, subs = subjects
    path = write_manifest(root / "no_t1_t2.csv", subs, TWO)
    with pytest.raises(CohortError, match=r"missing columns \['t1', 't2'\].*data\.cohort\.sequences=\[t1ce,flair\]"):
        read_manifest(path)  # the default cohort needs all four columns
    cohort = read_manifest(path, sequences=TWO)
    assert cohort.sequences == TWO and all(set(s.images) == set(TWO) for s in cohort.subjects)
    brats = read_brats2021(root / "cases", sequences=TWO)  # the folders hold all four: only two are read
    assert brats.sequences == TWO and all(set(s.images) == set(TWO) for s in brats.subjects)
    assert read_brats2021(root / "cases").sequences == SEQUENCES
    validated = validate_cohort(cohort)
    assert validated.ids == ["s0", "s1", "s2"] and validated.sequences == TWO
    with pytest.raises(CohortError, match="data.cohort.sequences must be distinct names"):
        read_manifest(path, sequences=("t1ce", "dwi"))


def test_two_sequence_features_are_the_full_extraction_columns(subjects, cache, two_sequence_table):
    root, subs = subjects
    table = two_sequence_table
    assert not [c for c in table.columns if "_t1_" in c or "_t2_" in c or c.endswith("_missing")]
    assert {"ET_t1ce_original_firstorder_Mean", "WT_flair_original_glcm_Idm", "WT_shape_MeshVolume"} <= set(table)
    full_cohort = validate_cohort(read_manifest(write_manifest(root / "full.csv", subs, SEQUENCES)))
    full = extract_cohort(full_cohort, small_feature_settings(), cache, progress=False)
    assert any("_t1_" in c for c in full.columns)
    # the same values: leaving sequences out changes no other feature (shape now comes from the t1ce item)
    pd.testing.assert_frame_equal(table, full[table.columns])
    two = validate_cohort(read_manifest(root / "two.csv", sequences=TWO))
    with pytest.raises(CohortError, match=r"features\.sequences .* include \['t1', 't2'\].*data\.cohort\.sequences"):
        extract_cohort(two, small_feature_settings(), cache, progress=False)


def test_two_sequence_roi_has_two_channels(subjects):
    root, subs = subjects
    two = validate_cohort(read_manifest(root / "two.csv", sequences=TWO))
    roi = build_roi(two.subjects[0], ROISettings(size=16, sequences=TWO), two.label_convention)
    full = build_roi(subs[0], ROISettings(size=16), "brats2021")
    assert roi.shape == (2, 16, 16, 16)
    np.testing.assert_array_equal(roi, full[[SEQUENCES.index("t1ce"), SEQUENCES.index("flair")]])
    with pytest.raises(CohortError, match=r"data\.roi\.sequences .* include \['t1', 't2'\]"):
        build_roi_cache(two, ROISettings(size=16), root / "roi_cache", progress=False)


def test_the_cohort_sequences_drive_features_roi_and_encoder_width():
    default = compose_train_cfg(["experiment=idh_hybrid"])
    assert list(default.features.sequences) == list(SEQUENCES) == list(default.data.roi.sequences)
    assert default.model.encoder.in_channels == 4
    # the interpolated default keeps the key configs/features/default.yaml had with a literal list
    assert FeatureSettings.from_config(default.features).cache_key() == "070a4f743a22b5f81917dfff00a79f2294e6a20b"
    assert ROISettings(**{**default.data.roi, "sequences": tuple(default.data.roi.sequences),
                          "habitats": ()}).key() == ROISettings().key()
    cfg = compose_train_cfg(["experiment=idh_hybrid", "data.cohort.sequences=[t1ce,flair]"])
    assert list(cfg.features.sequences) == list(TWO) == list(cfg.data.roi.sequences)
    assert cfg.model.encoder.in_channels == 2
    cfg = compose_train_cfg(["experiment=idh_hybrid", "data.cohort.sequences=[t1ce,flair]",
                             "data.roi.habitats=[ET,NCR,ED]", "data.roi.presence_channels=true"])
    assert cfg.model.encoder.in_channels == 2 + 3 + 2
    for name in ("resnet10", "resnet18", "densenet121", "segresnet", "swin"):
        cfg = compose_train_cfg(["experiment=idh_deep", f"model/encoder={name}", "data.cohort.sequences=[flair]"])
        assert cfg.model.encoder.in_channels == 1, name
    cfg = compose_train_cfg(["experiment=response_delta_hybrid", "data.longitudinal.image=both"])
    assert cfg.model.encoder.in_channels == 8  # baseline and follow-up ROIs stacked


# --------------------------------------------------------------------------- subjects lacking a sequence

def test_validation_policy_for_a_missing_sequence(lacking):
    raw = read_manifest(lacking, sequences=TWO)
    assert raw.subject("s1").missing_sequences(TWO) == ["flair"]
    assert validate_cohort(raw).ids == ["s0", "s1", "s2"]  # a fact, not an error, by default
    assert validate_cohort(raw, skip_invalid=True).ids == ["s0"]
    assert validate_cohort(raw, missing_sequences="skip").ids == ["s0"]
    assert validate_cohort(raw, skip_invalid=True, missing_sequences="impute").ids == ["s0", "s1", "s2"]
    with pytest.raises(CohortError, match=r"subject s1: missing sequence\(s\) \['flair'\] \(flair: empty flair cell"):
        validate_cohort(raw, missing_sequences="error")
    with pytest.raises(CohortError, match="missing_sequences must be one of"):
        validate_cohort(raw, missing_sequences="drop")
    nothing = Subject("s9", {}, raw.subject("s1").seg, absent={"t1ce": "empty t1ce cell", "flair": "empty flair cell"})
    with pytest.raises(CohortError, match=r"subject s9: none of the cohort's sequences \['t1ce', 'flair'\]"):
        validate_subject(nothing, sequences=TWO, allow_missing=True)


def test_missing_sequence_features_are_nan_with_an_indicator(lacking, tmp_path, two_sequence_table):
    cache = tmp_path / "cache"  # its own cache: the items in it are those this cohort made
    cohort = validate_cohort(read_manifest(lacking, sequences=TWO))
    settings = small_feature_settings(sequences=list(TWO))
    table = extract_cohort(cohort, settings, cache, progress=False)
    ref = two_sequence_table
    assert list(table.columns[-2:]) == ["t1ce_missing", "flair_missing"]  # after every feature column
    assert table["flair_missing"].tolist() == [0.0, 1.0, 0.0] and table["t1ce_missing"].tolist() == [0.0, 0.0, 1.0]
    base = list(ref.columns)
    assert list(table.columns[:-2]) == base
    flair = [c for c in base if "_flair_" in c]
    t1ce = [c for c in base if "_t1ce_" in c]
    other = [c for c in base if c not in flair and c not in t1ce]  # voxels, empty flags, shape
    pd.testing.assert_series_equal(table.loc["s0", base], ref.loc["s0"])
    assert table.loc["s1", flair].isna().all() and table.loc["s2", t1ce].isna().all()
    pd.testing.assert_series_equal(table.loc["s1", t1ce + other], ref.loc["s1", t1ce + other])
    # s2 lacks the first sequence: its shape features come from flair's item and are the same
    pd.testing.assert_series_equal(table.loc["s2", flair + other], ref.loc["s2", flair + other])
    assert table.loc["s2", [c for c in other if "_shape_" in c]].notna().any()

    # one subject on its own: the same row, and an indicator only for what it lacks
    features, _ = extract_subject(cohort.subject("s1"), settings)
    assert features["flair_missing"] == 1.0 and "t1ce_missing" not in features
    assert np.allclose(pd.Series(features)[base].to_numpy(float), table.loc["s1", base].to_numpy(float),
                       equal_nan=True, rtol=0, atol=0)
    assert "flair_missing" not in extract_subject(cohort.subject("s0"), settings)[0]

    # a missing sequence's item is never computed (no file to hash) and diagnostics say "missing"
    assert list(cache.glob("items/*/s1/flair-*.json")) == [] and list(cache.glob("items/*/s1/t1ce-*.json"))
    diag = pd.read_csv(cache / settings.cache_key() / "diagnostics.csv")
    assert diag.set_index(["subject_id", "sequence"]).loc[("s1", "flair"), "status"] == "missing"

    # in-fold processing: the NaNs are imputed and the indicator reaches the model
    processor = FeatureProcessor(clip=None).fit(table)
    out = processor.transform(table)
    assert np.isfinite(out).all() and "flair_missing" in processor.feature_names_out_


def test_missing_sequence_roi_channel_is_zero_with_presence_flags(lacking, subjects, tmp_path):
    _, subs = subjects
    cohort = validate_cohort(read_manifest(lacking, sequences=TWO))
    s1 = cohort.subject("s1")
    ref = build_roi(subs[1], ROISettings(size=16, sequences=TWO), "brats2021")
    roi = build_roi(s1, ROISettings(size=16, sequences=TWO), "brats2021")
    assert roi.shape == (2, 16, 16, 16) and not roi[1].any()
    np.testing.assert_array_equal(roi[0], ref[0])
    flagged = build_roi(s1, ROISettings(size=16, sequences=TWO, presence_channels=True), "brats2021")
    assert flagged.shape == (4, 16, 16, 16)
    np.testing.assert_array_equal(flagged[:2], roi)
    assert (flagged[2] == 1).all() and (flagged[3] == 0).all()
    # the cache name reflects the absent file, so a file that appears later is not served a stale ROI
    settings = ROISettings(size=16, sequences=TWO)
    assert roi_cache_path(s1, settings, tmp_path) != roi_cache_path(subs[1], settings, tmp_path)
    assert ROISettings(presence_channels=True).key() != ROISettings().key()


def test_augmentation_keeps_a_missing_channel_zero_and_presence_flags_unchanged():
    torch.manual_seed(0)
    roi = torch.cat([torch.randn(1, 12, 12, 12), torch.zeros(1, 12, 12, 12),         # t1ce, missing flair
                     (torch.rand(1, 12, 12, 12) > 0.5).float(),                       # a habitat mask
                     torch.ones(1, 12, 12, 12), torch.zeros(1, 12, 12, 12)])          # presence flags
    augment = ROIAugment(2, flip_prob=1.0, affine_prob=1.0, intensity_prob=1.0, bias_field_prob=1.0,
                         n_presence_channels=2)
    out = augment(roi)
    assert out.shape == roi.shape
    assert not out[1].any() and torch.equal(out[3:], roi[3:])
    assert not torch.allclose(out[0], roi[0])  # the present sequence was augmented


@pytest.mark.slow
def test_tiny_hybrid_run_on_a_two_sequence_cohort_with_a_missing_flair(cfg_factory, tiny_cohort, tmp_path):
    from radfusion.training.run import train

    table = pd.read_csv(tiny_cohort, dtype={"subject_id": str}).drop(columns=["t1", "t2"])
    for col in ("t1ce", "flair", "seg"):
        table[col] = [str((tiny_cohort.parent / p).resolve()) for p in table[col]]
    lacking_id = table.loc[0, "subject_id"]
    table.loc[0, "flair"] = ""
    manifest = tmp_path / "two_sequences.csv"
    table.to_csv(manifest, index=False)
    cfg = cfg_factory("idh_hybrid", ["data.cohort.source=manifest", f"data.cohort.path={manifest}",
                                     "data.cohort.sequences=[t1ce,flair]", "trainer.max_epochs=1"])
    metrics, objects = train(cfg)
    dm, model = objects["datamodule"], objects["model"]
    assert np.isfinite(metrics["test/auc"]) and lacking_id in dm.ids
    assert model.net.encoder.in_channels == 2 == dm.roi_settings.n_channels
    assert not [c for c in dm.features.columns if "_t1_" in c or "_t2_" in c]
    assert dm.features.loc[lacking_id, "flair_missing"] == 1.0 and dm.features["flair_missing"].sum() == 1.0
    lacking_roi = np.load(dm.roi_paths[lacking_id])
    assert lacking_roi.shape == (2, 16, 16, 16) and not lacking_roi[1].any() and lacking_roi[0].any()
