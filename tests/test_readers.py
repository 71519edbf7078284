"""BraTS 2023 GLI and nnU-Net raw readers: same cohort, same habitats, same features as BraTS 2021."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from helpers.subjects import write_subject
from radfusion.cohort.habitats import HABITATS, habitat_masks
from radfusion.cohort.readers import (
    convention_from_dataset_json,
    load_cohort,
    read_brats2021,
    read_brats2023,
    read_nnunet_raw,
)
from radfusion.cohort.subject import SEQUENCES, CohortError
from radfusion.cohort.validate import validate_cohort
from radfusion.radiomics.extract import extract_cohort
from radfusion.radiomics.settings import FeatureSettings

PARAMS = {"setting": {"binWidth": 25, "label": 1, "additionalInfo": False},
          "imageType": {"Original": {}}, "featureClass": {"shape": [], "firstorder": []}}
BRATS2023 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """Two subjects in the BraTS 2021 layout, converted to BraTS 2023 and to nnU-Net raw (with
    nnU-Net's own BraTS label conversion and dataset.json writer)."""
    from nnunetv2.dataset_conversion.Dataset137_BraTS21 import copy_BraTS_segmentation_and_convert_labels_to_nnUNet
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    root = tmp_path_factory.mktemp("layouts")
    b21, b23, nn = root / "brats2021", root / "brats2023", root / "Dataset137_BraTS2021"
    ids = ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000"]
    for i, sid in enumerate(ids):
        subject = write_subject(b21, sid, seed=i, with_et=True)
        (b23 / sid).mkdir(parents=True)
        sep = "-" if i == 0 else "_"  # both spellings occur in redistributed copies
        for seq, suffix in BRATS2023.items():
            shutil.copy(subject.images[seq], b23 / sid / f"{sid}{sep}{suffix}.nii.gz")
        seg = sitk.ReadImage(str(subject.seg))
        arr = sitk.GetArrayFromImage(seg)
        arr[arr == 4] = 3  # BraTS 2023: ET = 3
        new = sitk.GetImageFromArray(arr)
        new.CopyInformation(seg)
        sitk.WriteImage(new, str(b23 / sid / f"{sid}{sep}seg.nii.gz"))
        (nn / "imagesTr").mkdir(parents=True, exist_ok=True)
        (nn / "labelsTr").mkdir(exist_ok=True)
        # Channels deliberately not in radfusion's order: the reader must go by channel_names.
        for ch, seq in enumerate(["flair", "t1", "t1ce", "t2"]):
            shutil.copy(subject.images[seq], nn / "imagesTr" / f"{sid}_{ch:04d}.nii.gz")
        copy_BraTS_segmentation_and_convert_labels_to_nnUNet(str(subject.seg), str(nn / "labelsTr" / f"{sid}.nii.gz"))
    generate_dataset_json(str(nn), channel_names={0: "FLAIR", 1: "T1w", 2: "T1Gd", 3: "T2w"},
                          labels={"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3),
                                  "enhancing tumor": (3,)},
                          num_training_cases=2, file_ending=".nii.gz", regions_class_order=(1, 2, 3))
    pd.DataFrame({"subject_id": ids, "idh": ["mutant", ""], "site": ["A", "B"]}).to_csv(root / "clinical.csv",
                                                                                        index=False)
    return {"brats2021": b21, "brats2023": b23, "nnunet": nn, "clinical": root / "clinical.csv"}


def test_readers_give_the_same_subjects_images_and_habitats(layouts) -> None:
    ref = read_brats2021(layouts["brats2021"], layouts["clinical"])
    b23 = load_cohort("brats2023", layouts["brats2023"], layouts["clinical"], "brats2023")
    nn = load_cohort("nnunet", layouts["nnunet"], layouts["clinical"], "auto")
    assert nn.label_convention == {"NCR": 2, "ED": 1, "ET": 3}  # nnU-Net's Dataset137 relabelling
    for cohort in (b23, nn):
        assert cohort.ids == ref.ids
        assert cohort.clinical["idh"].tolist()[0] == 1.0 and np.isnan(cohort.clinical["idh"].tolist()[1])
        validate_cohort(cohort)
        for s_ref, s in zip(ref.subjects, cohort.subjects, strict=True):
            for seq in SEQUENCES:  # same voxels behind each sequence name
                a = sitk.GetArrayFromImage(sitk.ReadImage(str(s_ref.images[seq])))
                np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(s.images[seq]))), a)
            seg_ref = sitk.GetArrayFromImage(sitk.ReadImage(str(s_ref.seg)))
            seg = sitk.GetArrayFromImage(sitk.ReadImage(str(s.seg)))
            masks_ref = habitat_masks(seg_ref, ref.label_convention)
            masks = habitat_masks(seg, cohort.label_convention)
            for h in HABITATS:
                assert masks[h].any()
                np.testing.assert_array_equal(masks[h], masks_ref[h])


def test_features_do_not_depend_on_the_layout(layouts, tmp_path: Path) -> None:
    settings = FeatureSettings(params=copy.deepcopy(PARAMS), sequences=["t1ce", "flair"])
    tables = []
    for source, conv in (("brats2021", "brats2021"), ("brats2023", "brats2023"), ("nnunet", "auto")):
        cohort = load_cohort(source, layouts[source], None, conv)
        tables.append(extract_cohort(cohort, settings, tmp_path / source, progress=False))
    assert tables[0].shape[0] == 2 and tables[0]["ET_empty"].eq(0).all()
    for table in tables[1:]:
        pd.testing.assert_frame_equal(table, tables[0])


def test_reader_errors_name_the_file(tmp_path: Path, layouts) -> None:
    broken = tmp_path / "b23"
    shutil.copytree(layouts["brats2023"], broken)
    victim = next((broken / "BraTS-GLI-00002-000").glob("*t2f*"))
    victim.unlink()
    # a missing file is recorded (missing sequence); refusing it names the file it expected
    with pytest.raises(CohortError, match=r"BraTS-GLI-00002-000.*flair.*BraTS-GLI-00002-000-t2f\.nii\.gz"):
        validate_cohort(read_brats2023(broken), missing_sequences="error")
    nn = tmp_path / "nn"
    shutil.copytree(layouts["nnunet"], nn)
    (nn / "imagesTr" / "BraTS-GLI-00001-000_0003.nii.gz").unlink()
    with pytest.raises(CohortError, match=r"BraTS-GLI-00001-000.*t2.*_0003\.nii\.gz"):
        validate_cohort(read_nnunet_raw(nn), missing_sequences="error")
    meta = json.loads((nn / "dataset.json").read_text())
    meta["channel_names"] = {"0": "PD", "1": "T1", "2": "T1ce", "3": "T2"}
    (nn / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(CohortError, match=r"flair.*channels="):
        read_nnunet_raw(nn)
    with pytest.raises(CohortError, match="unknown cohort source"):
        load_cohort("brats2019", nn)


def test_label_conventions_from_dataset_json() -> None:
    named = {"labels": {"background": 0, "necrosis": 1, "edema": 2, "enhancing tumor": 3}}
    assert convention_from_dataset_json(named, "x") == {"NCR": 1, "ED": 2, "ET": 3}
    regions = {"labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}}
    assert convention_from_dataset_json(regions, "x") == {"NCR": 2, "ED": 1, "ET": 3}
    with pytest.raises(CohortError, match="label_convention"):
        convention_from_dataset_json({"labels": {"background": 0, "liver": 1, "tumour": 2}}, "x")
