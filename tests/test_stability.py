"""Stability analysis: ICC against Shrout & Fleiss, mask perturbations against scipy, the script."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from helpers.paths import ROOT
from radfusion.features.processor import FeatureProcessor
from radfusion.radiomics.stability import icc_anova, icc_table, perturb_labels, read_icc_table

#: Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; their Table 4 gives the ICCs.
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
SHROUT_FLEISS_ICC = {"ICC1": 0.17, "ICC2": 0.29, "ICC3": 0.71, "ICC1k": 0.44, "ICC2k": 0.62, "ICC3k": 0.91}


def test_icc_reproduces_shrout_fleiss_table():
    got = icc_anova(SHROUT_FLEISS)
    for key, value in SHROUT_FLEISS_ICC.items():
        assert round(got[key], 2) == value, key
    assert got["ICC3_low"] < got["ICC3"] < got["ICC3_high"]


def test_icc3_confidence_interval_covers_the_truth_about_95_percent():
    """Subjects N(0,1) + fixed rater offsets + N(0,1) noise: the true ICC(3,1) is 0.5."""
    rng = np.random.default_rng(0)
    hits, n_sim = 0, 600
    for _ in range(n_sim):
        Y = rng.normal(size=(20, 1)) + np.array([0.0, 0.5, -0.3, 1.0]) + rng.normal(size=(20, 4))
        res = icc_anova(Y)
        hits += res["ICC3_low"] <= 0.5 <= res["ICC3_high"]
    assert 0.92 <= hits / n_sim <= 0.98


def test_icc_table_handles_missing_and_constant_features():
    rows = []
    for i, ratings in enumerate(SHROUT_FLEISS):
        for j, v in enumerate(ratings):
            rows.append({"subject_id": f"s{i}", "condition": f"c{j}", "a": float(v), "const": 1.0,
                         "gappy": np.nan if (i, j) == (2, 1) else float(v)})
    table = icc_table(pd.DataFrame(rows))
    assert round(table.loc["a", "icc"], 2) == 0.71 and table.loc["a", "n_subjects"] == 6
    assert np.isnan(table.loc["const", "icc"])
    expected = icc_anova(np.delete(SHROUT_FLEISS, 2, axis=0))["ICC3"]  # subject 2 left out
    assert table.loc["gappy", "icc"] == pytest.approx(expected) and table.loc["gappy", "n_subjects"] == 5
    assert read_icc_table(table.reset_index())["a"] == pytest.approx(table.loc["a", "icc"])


def _label_map(seed: int = 0) -> np.ndarray:
    """Nested blobs: edema (2) around enhancing (4) around necrosis (1), brats2021 labels."""
    zz, yy, xx = np.mgrid[:32, :32, :32]
    rng = np.random.default_rng(seed)
    r = np.sqrt((zz - 16) ** 2 + (yy - 15) ** 2 + (xx - 17) ** 2) + rng.normal(0, 0.6, zz.shape)
    seg = np.zeros(zz.shape, dtype=np.uint8)
    seg[r < 10] = 2
    seg[r < 6] = 4
    seg[r < 3.5] = 1
    seg[(r < 6) & (xx > 19) & (r >= 3.5)] = 2  # edema reaching the necrosis on one side
    return seg


@pytest.mark.parametrize("kind, op", [("erode", ndimage.binary_erosion), ("dilate", ndimage.binary_dilation)])
def test_erode_dilate_move_every_nested_habitat_by_one_voxel(kind, op):
    seg = _label_map()
    out = perturb_labels(seg, kind, "brats2021")
    structure = ndimage.generate_binary_structure(3, 1)
    for labels in ([1, 2, 4], [1, 4], [1]):  # WT, TC, NCR, each against scipy's binary morphology
        np.testing.assert_array_equal(np.isin(out, labels), op(np.isin(seg, labels), structure))
    assert set(np.unique(out)) <= {0, 1, 2, 4} and out.dtype == seg.dtype


def test_dilation_stays_in_the_brain_and_noise_only_moves_boundaries():
    seg = _label_map()
    brain = np.zeros(seg.shape, dtype=bool)
    brain[:, :, :24] = True
    grown = perturb_labels(seg, "dilate", "brats2021", brain=brain)
    assert not (grown[~brain] != seg[~brain]).any()
    noisy = perturb_labels(seg, "noise", "brats2021", seed=3)
    changed = noisy != seg
    six = ndimage.generate_binary_structure(3, 1)
    # a voxel with a differently labelled face neighbour has a larger or a smaller one
    on_boundary = (ndimage.grey_dilation(seg, footprint=six) != seg) | (ndimage.grey_erosion(seg, footprint=six) != seg)
    assert changed.any() and not (changed & ~on_boundary).any()
    # 30 % of boundary voxels are picked, half of those move the way they can: ~15 % change
    assert 0.08 < changed.sum() / on_boundary.sum() < 0.25
    np.testing.assert_array_equal(noisy, perturb_labels(seg, "noise", "brats2021", seed=3))
    assert (noisy != perturb_labels(seg, "noise", "brats2021", seed=4)).any()
    with pytest.raises(ValueError, match=r"labels \[3\] outside the brats2021"):
        perturb_labels(np.full((4, 4, 4), 3, dtype=np.uint8), "erode", "brats2021")


def test_stability_script_writes_table_and_plot_and_feeds_min_icc(tmp_path):
    spec = importlib.util.spec_from_file_location("stability_script", ROOT / "scripts" / "stability.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "stab"
    icc = script.main(["--synthetic", "5", "--synthetic-shape", "40", "40", "40", "--feature-classes", "shape",
                       "firstorder", "--habitats", "WT", "TC", "--out", str(out), "--quiet"])
    table = pd.read_csv(out / "icc.csv")
    assert {"feature", "icc", "ci_low", "ci_high", "n_subjects"} <= set(table.columns)
    assert (out / "icc_hist.png").stat().st_size > 5000
    long = pd.read_parquet(out / "features_perturbed.parquet")
    assert sorted(long.condition.unique()) == ["dilate", "erode", "noise", "original"]
    assert long.groupby("subject_id").size().eq(4).all()
    # a one-voxel outline change barely moves the whole tumour's volume relative to the spread
    # between tumours, while the ICC of a boundary-sensitive feature is not 1
    assert icc.loc["WT_shape_VoxelVolume", "icc"] > 0.9
    assert icc.icc.min() < 0.9
    unstable = set(icc.index[icc.icc < 0.75])
    features = long[long.condition == "original"].set_index("subject_id").drop(columns="condition")
    proc = FeatureProcessor(min_icc=0.75, icc_table=out / "icc.csv", missing_indicators=False).fit(features)
    assert unstable and not unstable & set(proc.feature_names_out_)
