"""IBSI conformance: radfusion's PyRadiomics extraction of the IBSI-1 digital phantom against the IBSI
consensus values (``/work/shared/data/ibsi``, see its README and ``docs/ibsi.md``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from helpers.paths import SHARED_DATA
from radfusion.radiomics import engine
from radfusion.radiomics.ibsi import (
    KNOWN_DEVIATIONS,
    MAPPING,
    PHANTOM_PARAMS,
    allowed_difference,
    conformance,
    ibsi_names,
    read_reference,
)
from radfusion.radiomics.pyrad import binning_memo, build_plan, capture_warnings, extract_region

IBSI = SHARED_DATA / "ibsi"
IMAGE, MASK = IBSI / "digital_phantom_image.nii.gz", IBSI / "digital_phantom_mask.nii.gz"
REFERENCE = IBSI / "reference_values_digital_phantom.csv"

pytestmark = pytest.mark.skipif(not REFERENCE.is_file(), reason=f"IBSI phantom not found in {IBSI}")


@pytest.fixture(scope="module")
def reference():
    return read_reference(REFERENCE)


def engine_features() -> dict[str, float]:
    """The phantom through the habitat engine (what extract_cohort runs: shared filters, binning memo)."""
    image, mask = sitk.ReadImage(str(IMAGE), sitk.sitkFloat32), sitk.ReadImage(str(MASK))
    with binning_memo(True), capture_warnings():
        entries = engine.compute_entries(image, {"phantom": mask}, build_plan(PHANTOM_PARAMS), True, None)
    return {k: v for entry in entries.values() for k, v in entry.items()}


@pytest.mark.parametrize("how", ["extract_region", "engine"])
def test_phantom_matches_ibsi_consensus_except_two_documented_axes(reference, how):
    features = extract_region(IMAGE, MASK, PHANTOM_PARAMS) if how == "extract_region" else engine_features()
    table = conformance(features, reference)
    assert len(table) == len(MAPPING) == 102 and table["ibsi_tag"].is_unique
    failed = table.loc[~table["pass"]].set_index("radfusion")
    # every mapped feature passes but the two documented axis lengths ...
    assert sorted(failed.index) == sorted(KNOWN_DEVIATIONS) == ["shape_LeastAxisLength", "shape_MinorAxisLength"]
    assert int(table["pass"].sum()) == 100
    # ... which lie just outside: below the reference by 0.7 %, a little more than the tolerance allows
    for name, ref, tol in (("shape_MinorAxisLength", 9.31, 0.06), ("shape_LeastAxisLength", 8.54, 0.05)):
        row = failed.loc[name]
        assert row["reference"] == ref and row["tolerance"] == tol
        assert -0.075 < row["difference"] < -row["allowed"] and row["allowed"] == pytest.approx(tol + 0.005)
        assert row["difference"] / ref == pytest.approx(-0.0068, abs=0.0006)


def test_axis_deviation_is_the_covariance_normalisation(reference):
    """Independent numpy check of the documented reason: PyRadiomics' axes are 4·sqrt(eigenvalues) of the
    population covariance of the voxel centres (÷N); with the sample covariance (÷(N-1)) all three axis
    lengths fall inside the IBSI tolerance."""
    mask = sitk.ReadImage(str(MASK))
    zyx = np.argwhere(sitk.GetArrayFromImage(mask) == 1) * np.array(mask.GetSpacing()[::-1])
    features = extract_region(IMAGE, MASK, PHANTOM_PARAMS)
    names = ("LeastAxisLength", "MinorAxisLength", "MajorAxisLength")
    tags = ("morph_pca_least_axis", "morph_pca_min_axis", "morph_pca_maj_axis")
    population = 4 * np.sqrt(np.sort(np.linalg.eigvalsh(np.cov(zyx.T, ddof=0))))
    sample = 4 * np.sqrt(np.sort(np.linalg.eigvalsh(np.cov(zyx.T, ddof=1))))
    for k, (name, tag) in enumerate(zip(names, tags, strict=True)):
        assert features[f"original_shape_{name}"] == pytest.approx(population[k], rel=1e-9)
        ref, tol = reference[tag]
        assert abs(sample[k] - ref) <= allowed_difference(ref, tol), name
    assert len(zyx) == 74 and sample[0] / population[0] == pytest.approx(math.sqrt(74 / 73))


def test_reference_file_and_kurtosis_convention(reference):
    assert reference["stat_kurt"] == (-0.355, 0.0) and "morph_vol_dens_ombb" not in reference  # no consensus
    features = extract_region(IMAGE, MASK, PHANTOM_PARAMS)
    row = conformance(features, reference).set_index("radfusion").loc["firstorder_Kurtosis"]
    assert row["value"] == pytest.approx(features["original_firstorder_Kurtosis"] - 3) and row["pass"]
    assert allowed_difference(2.15, 0) == pytest.approx(0.005) and allowed_difference(556, 4) == pytest.approx(4.5)


def test_feature_table_columns_get_ibsi_names():
    cols = ["WT_voxels", "WT_empty", "WT_shape_MeshVolume", "ET_t1ce_original_glcm_JointAverage",
            "ED_flair_original_firstorder_Kurtosis", "ET_t1ce_original_glcm_MCC",
            "WT_flair_log-sigma-3-0-mm-3D_glcm_Idm", "t2_missing"]
    names = ibsi_names(cols).set_index("column")
    assert list(names.index) == ["WT_shape_MeshVolume", "ET_t1ce_original_glcm_JointAverage",
                                 "ED_flair_original_firstorder_Kurtosis"]
    assert names.loc["WT_shape_MeshVolume", "ibsi_code"] == "RNU0"
    assert names.loc["ET_t1ce_original_glcm_JointAverage", "ibsi_tag"] == "cm_joint_avg_3D_avg"
    assert names.loc["ED_flair_original_firstorder_Kurtosis", "offset"] == -3.0
