"""A cohort as an older public glioma collection ships it, end to end through ``train.py``'s ``train``.

BraTS 2013–2015 style: only T1ce and FLAIR, label 3 (non-enhancing tumour) in the masks, images
that are not skull-stripped (a non-zero background), and a brain mask file per subject. It is made
from the tiny synthetic cohort, so every value it should produce is known: with the brain masks
given and label 3 counted as necrosis/non-enhancing core (``brats2015``: NCR = {1, 3}), its radiomics
must equal those of the original skull-stripped cohort restricted to the two sequences.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from omegaconf import open_dict

from helpers.config import compose_train_cfg
from radfusion.cohort.readers import read_manifest
from radfusion.cohort.subject import CohortError
from radfusion.training.run import train

SEQUENCES = ("t1ce", "flair")
BACKGROUND = 35.0  # what an un-stripped scan shows outside the brain, here a constant offset


def _write_clean(manifest, root) -> pd.DataFrame:
    """The synthetic cohort's T1ce and FLAIR in the BraTS 2021 folder layout on one brain per subject
    (voxels non-zero in both sequences; zero elsewhere), labels 1/2/4, no brain mask: the reference."""
    cohort = read_manifest(manifest)
    for s in cohort.subjects:
        case = root / s.subject_id
        case.mkdir(parents=True)
        arrays = {seq: sitk.GetArrayFromImage(sitk.ReadImage(str(s.images[seq]), sitk.sitkFloat32))
                  for seq in SEQUENCES}
        brain = np.logical_and.reduce([a != 0 for a in arrays.values()])
        ref = sitk.ReadImage(str(s.seg))
        for seq, arr in arrays.items():
            _write(np.where(brain, arr, 0).astype(np.float32), ref, case / f"{s.subject_id}_{seq}.nii.gz")
        sitk.WriteImage(ref, str(case / f"{s.subject_id}_seg.nii.gz"))
    clinical = cohort.clinical.reset_index(drop=True)[["subject_id", "site", "age", "idh"]]
    clinical.to_csv(root / "clinical.csv", index=False)
    return clinical


def _write_old_style(clean_root, root, clinical: pd.DataFrame) -> pd.DataFrame:
    """The clean cohort made to look like BraTS 2015 data: background ``BACKGROUND`` (not skull-stripped),
    the brain as mask files, half the necrotic core relabelled 3, marker words as real tables write them
    and a clinical table with ';' separators."""
    for sid in clinical["subject_id"]:
        src, case = clean_root / sid, root / sid
        case.mkdir(parents=True)
        images = {seq: sitk.ReadImage(str(src / f"{sid}_{seq}.nii.gz")) for seq in SEQUENCES}
        brain = np.logical_and.reduce([sitk.GetArrayFromImage(img) != 0 for img in images.values()])
        for seq, img in images.items():
            _write(np.where(brain, sitk.GetArrayFromImage(img), BACKGROUND).astype(np.float32), img,
                   case / f"{sid}_{seq}.nii.gz")
        _write(brain.astype(np.uint8), images["t1ce"], case / f"{sid}_brainmask.nii.gz")
        seg = sitk.ReadImage(str(src / f"{sid}_seg.nii.gz"))
        labels = sitk.GetArrayFromImage(seg)
        ncr = np.flatnonzero(labels.ravel() == 1)
        labels.ravel()[ncr[::2]] = 3  # half the core is "non-enhancing tumour" (label 3)
        _write(labels, seg, case / f"{sid}_seg.nii.gz")
    words = clinical.assign(idh=clinical["idh"].map({1.0: "IDH1 R132H", 0.0: "wild-type"}).fillna("not assessed"))
    words.to_csv(root / "clinical.csv", sep=";", index=False)  # as a spreadsheet export writes it
    return words


def _write(arr: np.ndarray, like: sitk.Image, path) -> None:
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(like)
    sitk.WriteImage(img, str(path))


def _brats(root, convention: str, *extra) -> list[str]:
    return ["data=brats", f"data.cohort.path={root}", f"data.cohort.clinical={root / 'clinical.csv'}",
            f"data.cohort.label_convention={convention}", "data.cohort.sequences=[t1ce,flair]", *extra]


def _cfg(cohort: list[str], shared_cache, tmp_path):
    cfg = compose_train_cfg([
        "experiment=idh_handcrafted", "logger=csv", *cohort,
        "data.split.val_fraction=0.25", "data.split.test_fraction=0.25", "data.n_jobs=1", "data.progress=false",
        "~features.params.featureClass", "+features.params.featureClass={shape: null, firstorder: null, glcm: null}",
        f"paths.cache_dir={shared_cache}", f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'runs'}",
        "trainer.max_epochs=2", "+trainer.enable_progress_bar=false", "n_bootstrap=100"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


@pytest.mark.slow
def test_brats2015_style_cohort_trains_with_brain_masks_and_two_sequences(tiny_cohort, shared_cache, tmp_path):
    clean_root, root = tmp_path / "clean", tmp_path / "BraTS2015like"
    clinical = _write_old_style(clean_root, root, _write_clean(tiny_cohort, clean_root))
    assert (clinical["idh"] == "IDH1 R132H").sum() >= 3  # both classes present, in real-table spellings

    # Without the masks the non-zero background is refused before any extraction, naming the fix.
    with pytest.raises(CohortError, match="not skull-stripped or already normalised.*brain_mask=otsu"):
        train(_cfg(_brats(root, "brats2015", "data.cohort.brain_mask=nonzero"), shared_cache, tmp_path))

    metrics, objects = train(_cfg(_brats(root, "brats2015"), shared_cache, tmp_path))
    dm = objects["datamodule"]
    assert metrics["excluded_subjects"] == {} and len(dm.ids) == len(clinical)
    columns = list(dm.features.columns)
    assert not any("_t1_" in c or "_t2_" in c for c in columns)
    assert any(c.startswith("NCR_flair_") for c in columns) and any(c.startswith("ET_t1ce_") for c in columns)
    assert dm.radiomics_dim > 0 and np.isfinite(metrics["test/auc_idh"])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["n_radiomics_raw"] == len(columns)

    # The same features as the skull-stripped cohort with labels 1/2/4: the brain masks replace
    # "non-zero = brain" and label 3 joins the necrotic/non-enhancing core.
    clean = train(_cfg(_brats(clean_root, "brats2021"), shared_cache, tmp_path / "clean_run"))[1]["datamodule"]
    assert list(clean.features.columns) == columns
    np.testing.assert_allclose(dm.features.loc[clean.features.index].to_numpy(float),
                               clean.features.to_numpy(float), rtol=1e-5, atol=1e-6, equal_nan=True)
    assert clean.splits == dm.splits
