"""The engine on irregular habitats (fragmented ET, scattered necrosis, a tumour at the brain's edge) equals
PyRadiomics' ``execute`` on the same crops, every feature of every class, within 1e-9.

The other engine tests use concentric habitats; these shapes exercise the shared run-length call
(habitats interleaved in one box), the GLSZM zone labelling (many small zones) and the mesh shape
(holes, islands, a ring clipped by the brain) where a geometric shortcut would be most likely to slip.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from helpers.radiomics import reference_execute, rel
from radfusion.cohort.habitats import ALL_HABITATS, habitat_masks
from radfusion.cohort.subject import Subject
from radfusion.imaging.preprocess import crop, load_preprocessed
from radfusion.radiomics.extract import extract_subject
from radfusion.radiomics.settings import FeatureSettings

PARAMS = {"setting": {"binWidth": 25, "label": 1, "additionalInfo": False, "voxelArrayShift": 300},
          "imageType": {"Original": {}, "LoG": {"sigma": [1.0]}, "Wavelet": {}},
          "featureClass": {c: [] for c in ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")}}
SEQUENCES = ["t1ce", "flair"]


def _irregular_subject(root: Path, sid: str, seed: int, n: int = 40) -> Subject:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:n, :n, :n].astype(float)
    c = n / 2
    brain = ((zz - c) / 17) ** 2 + ((yy - c) / 18) ** 2 + ((xx - c) / 17) ** 2 <= 1
    noise = ndimage.gaussian_filter(rng.normal(size=(n, n, n)), 2.0)
    cz, cy, cx = rng.uniform(c - 8, c + 10, 3)  # sometimes at the brain's edge: the ring is clipped
    r = np.sqrt((zz - cz) ** 2 + (yy - cy) ** 2 / rng.uniform(0.6, 1.6) + (xx - cx) ** 2) + 4 * noise / noise.std()
    seg = np.zeros((n, n, n), np.uint8)
    seg[r <= rng.uniform(8, 12)] = 2                                      # ED, ragged
    seg[(r <= 7) & (rng.random((n, n, n)) < rng.uniform(0.3, 0.9))] = 4   # ET in islands
    seg[(r <= 4) | ((rng.random((n, n, n)) < 0.01) & (seg > 0))] = 1     # NCR core + scattered voxels
    seg[~brain] = 0
    folder = root / sid
    folder.mkdir(parents=True)
    images = {}
    for i, seq in enumerate(SEQUENCES):
        arr = 400 + 50 * i + rng.normal(0, 40, seg.shape) + 90 * (seg == 2) - 70 * (seg == 1) + 160 * (seg == 4)
        images[seq] = folder / f"{sid}_{seq}.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(np.where(brain, arr, 0).astype(np.float32)), str(images[seq]))
    sitk.WriteImage(sitk.GetImageFromArray(seg), str(folder / f"{sid}_seg.nii.gz"))
    return Subject(sid, images, folder / f"{sid}_seg.nii.gz")


@pytest.mark.parametrize("seed", [0, 3])
def test_irregular_habitats_equal_execute(tmp_path: Path, seed: int) -> None:
    subject = _irregular_subject(tmp_path, f"s{seed}", seed)
    settings = FeatureSettings(params=copy.deepcopy(PARAMS), habitats=list(ALL_HABITATS), sequences=SEQUENCES,
                               crop_padding=3, ring_mm=3.0)
    features, diag = extract_subject(subject, settings)
    images, seg = load_preprocessed(subject, 1.0, "zscore", 100.0, SEQUENCES)
    seg_arr = sitk.GetArrayFromImage(seg)
    box = tuple(slice(a, b) for a, b in diag["bbox"])
    bad, n = [], 0
    for seq in SEQUENCES:
        brain = sitk.GetArrayFromImage(images[seq]) != 0
        masks = habitat_masks(seg_arr, "brats2021", ALL_HABITATS, spacing=(1.0, 1.0, 1.0), ring_mm=3.0, brain=brain)
        cropped = crop(images[seq], box)
        for habitat, mask in masks.items():
            assert features[f"{habitat}_empty"] == 0.0
            mask_img = sitk.GetImageFromArray(mask[box].astype(np.uint8))
            mask_img.CopyInformation(cropped)
            for name, ref in reference_execute(cropped, mask_img, PARAMS).items():
                if "_shape_" in name and seq != SEQUENCES[0]:
                    continue  # shape comes from the first sequence
                col = f"{habitat}_{name.removeprefix('original_')}" if "_shape_" in name else f"{habitat}_{seq}_{name}"
                got = features[col]
                n += 1
                if not (np.isnan(ref) and np.isnan(got)) and not rel(got, ref) <= 1e-9:
                    bad.append(f"{col}: engine {got!r}, execute {ref!r}")
    assert not bad, "\n".join(bad[:10])
    assert n == 11244  # 6 habitats x 2 sequences x 10 images x 93 + 6 x 14 shape
