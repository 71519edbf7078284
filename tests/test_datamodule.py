"""Splits and in-fold processing: fitted transforms never see validation or test subjects."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

import radfusion.data.prepare as dmmod
from radfusion.cohort.subject import CohortError
from radfusion.data.splits import load_or_make_fold, make_splits


def _datamodule(cfg, **kw):
    return instantiate(cfg.data, use_images=False, use_radiomics=True, **kw)


def test_splits_are_disjoint_stratified_and_reused(tmp_path):
    ids = [f"s{i:02d}" for i in range(40)]
    labels = np.array([1.0] * 16 + [0.0] * 20 + [np.nan] * 4)
    splits = make_splits(ids, labels, 0.25, 0.25, seed=1)
    parts = [set(splits[k]) for k in ("train", "val", "test")]
    assert set().union(*parts) == set(ids)
    assert sum(len(p) for p in parts) == len(ids)
    index = dict(zip(ids, labels, strict=False))
    for part in parts[1:]:  # both classes in val and test
        assert {index[s] for s in part if not np.isnan(index[s])} == {0.0, 1.0}
    first, path = load_or_make_fold(tmp_path, ids, labels, val_fraction=0.25, test_fraction=0.25, seed=1)
    again, _ = load_or_make_fold(tmp_path, ids, labels[::-1], val_fraction=0.25, test_fraction=0.25, seed=1)
    assert first == again and path.exists()  # the file, not the labels, decides on reuse


def test_feature_pipeline_is_fitted_on_train_only(cfg_factory, monkeypatch):
    cfg = cfg_factory("idh_handcrafted")
    dm = _datamodule(cfg)
    dm.setup()
    train, val, test = (set(dm.splits[k]) for k in ("train", "val", "test"))
    assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)
    assert set(dm.fitted_on) == train
    fitted = dm.feature_pipeline

    # Poison every non-training subject's features: a pipeline fitted on train only is unchanged.
    real_extract = dmmod.extract_cohort

    def poisoned(*args, **kwargs):
        table = real_extract(*args, **kwargs).copy()
        table.loc[sorted(val | test)] = 1e6
        return table

    monkeypatch.setattr(dmmod, "extract_cohort", poisoned)
    dm2 = _datamodule(cfg)
    dm2.setup()
    assert dm2.splits == dm.splits
    np.testing.assert_array_equal(dm2.feature_pipeline.mean_, fitted.mean_)
    np.testing.assert_array_equal(dm2.feature_pipeline.fill_, fitted.fill_)
    assert dm2.feature_pipeline.feature_names_out_ == fitted.feature_names_out_
    # ... while the poisoned test rows do come out different (the poison was real)
    assert not np.allclose(dm2.radiomics["test"], dm.radiomics["test"])
    np.testing.assert_array_equal(dm2.radiomics["train"], dm.radiomics["train"])


def test_batches_carry_masks_for_unknown_labels(cfg_factory):
    dm = _datamodule(cfg_factory("idh_handcrafted"))
    dm.setup()
    batch = next(iter(dm.split_dataloader("train")))
    assert set(batch) >= {"subject_id", "labels", "label_mask", "radiomics"}
    assert batch["radiomics"].shape[1] == dm.radiomics_dim
    assert torch_all_finite(batch["radiomics"])


def torch_all_finite(t) -> bool:
    import torch

    return bool(torch.isfinite(t).all())


def test_too_small_cohort_is_a_clear_error(cfg_factory):
    cfg = cfg_factory("idh_handcrafted", ["data.split.val_fraction=0.05", "data.split.test_fraction=0.05"])
    dm = _datamodule(cfg)
    with pytest.raises(CohortError, match="too small a cohort"):
        dm.setup()


def test_kfold_combat_and_selection_from_config(cfg_factory):
    """The config's protocol and processing reach the datamodule: k-fold test folds partition the
    cohort, and ComBat + L1 selection are fitted in-fold."""
    extra = ["data.split.strategy=kfold", "data.split.n_folds=3", "data.processing.combat=true",
             "data.processing.selector=l1_logistic", "data.processing.n_features=8"]
    tests = []
    for fold in range(3):
        dm = _datamodule(cfg_factory("idh_handcrafted", [*extra, f"data.split.fold={fold}"]))
        dm.setup()
        tests.append(set(dm.splits["test"]))
        assert set(dm.fitted_on) == set(dm.splits["train"])
        assert dm.feature_pipeline.combat_ is not None
        assert dm.radiomics_dim <= 8
    assert set().union(*tests) == set(dm.ids)
    assert sum(len(t) for t in tests) == len(dm.ids)
