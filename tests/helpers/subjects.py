"""Small BraTS-2021-style subjects written as NIfTI files, and a cohort of them (no manifest needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from radfusion.cohort.subject import SEQUENCES, Cohort, Subject


def write_subject(root: Path, sid: str, with_et: bool = True, seed: int = 0, n: int = 32) -> Subject:
    """A skull-stripped ``n``³ head (1 mm) with ED shell, NCR core and (optionally) an ET rim.

    Written to ``root/sid/{sid}_{seq}.nii.gz`` and ``{sid}_seg.nii.gz`` (BraTS 2021 labels 1/2/4) with a
    non-zero origin, so that code which drops the geometry is caught. Each sequence has its own offset
    and the habitats their own contrast, so features differ between sequences and habitats.
    """
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:n, :n, :n].astype(float)
    c = n / 2
    brain = ((zz - c) / 14) ** 2 + ((yy - c) / 14) ** 2 + ((xx - c) / 15) ** 2 <= 1
    r = np.sqrt((zz - c - 2) ** 2 + (yy - c) ** 2 + (xx - c + 1) ** 2)
    seg = np.zeros((n, n, n), np.uint8)
    seg[r <= 8] = 2                        # ED
    seg[r <= 5] = 4 if with_et else 1      # ET rim (or more necrosis)
    seg[r <= 3] = 1                        # NCR
    seg[~brain] = 0
    folder = root / sid
    folder.mkdir(parents=True)
    images = {}
    for i, seq in enumerate(SEQUENCES):
        contrast = 80 * (seg == 2) - 60 * (seg == 1) + 150 * (seg == 4)
        arr = 400 + 50 * i + rng.normal(0, 30, seg.shape) + contrast
        arr = np.where(brain, arr, 0).astype(np.float32)
        images[seq] = folder / f"{sid}_{seq}.nii.gz"
        img = sitk.GetImageFromArray(arr)
        img.SetOrigin((-10.0, 5.0, 2.0))
        sitk.WriteImage(img, str(images[seq]))
    seg_img = sitk.GetImageFromArray(seg)
    seg_img.SetOrigin((-10.0, 5.0, 2.0))
    sitk.WriteImage(seg_img, str(folder / f"{sid}_seg.nii.gz"))
    return Subject(sid, images, folder / f"{sid}_seg.nii.gz")


def cohort_of(subjects: list[Subject]) -> Cohort:
    """A BraTS 2021 cohort of ``subjects`` whose clinical table holds only their IDs (no labels)."""
    ids = [s.subject_id for s in subjects]
    clinical = pd.DataFrame({"subject_id": ids}).set_index("subject_id", drop=False)
    return Cohort(subjects, clinical, "brats2021")


def manifest_cohort(root: Path, n: int, corrupt: str | None = None) -> Path:
    """``root/manifest.csv``: a manifest cohort of ``n`` small subjects (IDH alternating, two sites);
    ``corrupt``'s t1ce is not a NIfTI file."""
    rows = []
    for i in range(n):
        s = write_subject(root / "data", f"P{i:02d}", seed=i)
        if s.subject_id == corrupt:
            s.images["t1ce"].write_bytes(b"not a NIfTI file")
        rows.append({"subject_id": s.subject_id, **{q: s.images[q] for q in SEQUENCES}, "seg": s.seg,
                     "idh": i % 2, "site": f"site{i % 2}"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"
