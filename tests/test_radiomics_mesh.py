"""Fast mesh shape coefficients: equal to PyRadiomics' C ``calculate_coefficients`` and shape class."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from radiomics import cShape, imageoperations
from radiomics.shape import RadiomicsShape

from helpers.paths import reference_cases
from radfusion.cohort.habitats import peritumoral_ring
from radfusion.radiomics.mesh import MeshShape, compute_shape, mesh_coefficients
from radfusion.radiomics.pyrad import build_extractor

TOL = 1e-9  # issue 16: a faster path must reproduce PyRadiomics to <= 1e-9 relative


def _flat(result) -> np.ndarray:
    surface, volume, diameters = result
    return np.array([surface, volume, *diameters], dtype=float)


def _assert_same(mask: np.ndarray, spacing) -> None:
    spacing = np.asarray(spacing, dtype=float)
    ours = _flat(mesh_coefficients(mask, spacing))
    theirs = _flat(cShape.calculate_coefficients(mask, spacing))
    err = np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-300)
    assert err.max() <= TOL, f"ours {ours}, PyRadiomics {theirs}, rel {err}"


def test_random_masks_equal_the_c_call() -> None:
    """Random blobs of every density, isotropic and anisotropic: surface, volume and 4 diameters."""
    rng = np.random.default_rng(0)
    for trial in range(150):
        size = rng.integers(2, 13, 3)
        mask = np.zeros(size + 2, dtype=bool)
        mask[1:-1, 1:-1, 1:-1] = rng.random(size) < rng.uniform(0.05, 0.95)
        if not mask.any():
            continue
        _assert_same(mask, np.ones(3) if trial % 3 == 0 else rng.uniform(0.3, 3.0, 3))


def test_large_surfaces_go_through_the_hull_and_still_match() -> None:
    """Thousands of vertices (the hull path), a hollow shell and degenerate thin shapes."""
    z, y, x = np.ogrid[-30:31, -30:31, -30:31]
    r2 = z ** 2 / 2.0 + y ** 2 + 1.3 * x ** 2
    ellipsoid = np.pad(r2 < 27 ** 2, 1)
    shell = np.pad((r2 < 27 ** 2) & (r2 > 22 ** 2), 1)
    line = np.zeros((5, 302, 5), dtype=bool)
    line[2, 1:-1, 2] = True  # one voxel wide: planes of >256 collinear vertices (no 2D hull)
    sheet = np.zeros((3, 50, 60), dtype=bool)
    sheet[1, 1:-1, 1:-1] = True  # one slice thick
    single = np.pad(np.ones((1, 1, 1), dtype=bool), 1)
    for mask in (ellipsoid, shell, line, sheet, single):
        _assert_same(mask, (1.0, 1.0, 1.0))
        _assert_same(mask, (2.5, 0.9375, 0.9375))


def test_peritumoral_ring_like_habitat() -> None:
    """The hollow ring is the habitat whose all-pairs loop was slowest; it must match too."""
    z, y, x = np.ogrid[-20:21, -24:25, -18:19]
    tumour = (z ** 2 + y ** 2 / 1.4 + x ** 2) < 14 ** 2
    ring = peritumoral_ring(tumour, 4.0, (1.0, 1.0, 1.0))
    _assert_same(np.pad(ring, 1), (1.0, 1.0, 1.0))


def test_padded_3d_mask_is_required() -> None:
    with pytest.raises(ValueError, match="padded 3D mask"):
        mesh_coefficients(np.ones((4, 4), dtype=bool), (1.0, 1.0))


CASES = reference_cases()


@pytest.mark.skipif(not CASES, reason="shared PyRadiomics / IBSI data not found (set RADFUSION_SHARED_DATA)")
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_shape_class_equals_pyradiomics_on_reference_cases(case) -> None:
    """Every 3D shape feature of every label of brain1, breast1 and the IBSI phantom, as PyRadiomics'
    own RadiomicsShape gives it, and through ``compute_shape`` as the engine calls it."""
    _, image_path, mask_path = case
    image, mask = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(mask_path))
    labels = [int(v) for v in np.unique(sitk.GetArrayFromImage(mask)) if v != 0]
    extractor = build_extractor({"setting": {"additionalInfo": False},
                                 "imageType": {"Original": {}}, "featureClass": {"shape": []}})
    checked = 0
    for label in labels:
        settings = {**extractor.settings, "label": label}
        try:
            bbox, _ = imageoperations.checkMask(image, mask, **settings)
        except ValueError:
            continue  # a label PyRadiomics itself refuses (too few voxels)
        image_c, mask_c = imageoperations.cropToTumorMask(image, mask, bbox)
        theirs = RadiomicsShape(image_c, mask_c, **settings).execute()
        ours = MeshShape(image_c, mask_c, **settings).execute()
        through_engine = compute_shape(extractor, image, mask, bbox, **settings)
        assert set(ours) == set(theirs) and len(theirs) == 14
        for name, ref in theirs.items():
            for got in (ours[name], through_engine[f"original_shape_{name}"]):
                assert abs(float(got) - float(ref)) <= TOL * abs(float(ref)), (label, name, got, ref)
        checked += 1
    assert checked >= 1
