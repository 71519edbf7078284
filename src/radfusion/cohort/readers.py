"""Every cohort layout radfusion reads, returning the same :class:`Cohort`.

- manifest CSV (one row per subject; paths relative to the manifest);
- BraTS 2021 (``<root>/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``);
BraTS 2023 GLI and nnU-Net raw layouts, returning the same :class:`Cohort` as
:func:`radfusion.cohort.subject.read_manifest` and :func:`radfusion.cohort.subject.read_brats2021`.

BraTS 2023 GLI (also MEN / MET / SSA / PED, which share the layout)::

    <root>/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz

``t1n`` → ``t1``, ``t1c`` → ``t1ce``, ``t2w`` → ``t2``, ``t2f`` → ``flair``; labels ``1 NCR, 2 ED, 3 ET``.

nnU-Net raw (``nnUNet_raw/DatasetXXX_Name``)::

    dataset.json, imagesTr/<case>_0000.nii.gz ... <case>_0003.nii.gz, labelsTr/<case>.nii.gz

The channel order comes from ``dataset.json``'s ``channel_names`` (``{"0": "T1", "1": "T1ce", ...}``,
names matched case-insensitively, e.g. ``t1n/T1w → t1``, ``T1Gd/t1c → t1ce``, ``t2w → t2``,
``t2f/FLAIR → flair``); the label convention from its ``labels``: explicit names
(``{"necrosis": 1, "edema": 2, "enhancing tumor": 3}``) or nnU-Net's BraTS regions
(``{"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}`` → ``ET = 3``,
``NCR = core − ET = 2``, ``ED = whole − core = 1``, as in nnU-Net's ``Dataset137_BraTS21``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.cohort.clinical import clinical_frame
from radfusion.cohort.habitats import convention_labels
from radfusion.cohort.subject import SEQUENCES, Cohort, CohortError, Subject

log = logging.getLogger(__name__)

#: BraTS 2023 file suffix per radfusion sequence name.
BRATS2023_SUFFIXES: dict[str, str] = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}

#: Channel-name spellings (lower case, non-alphanumerics removed) per sequence.
CHANNEL_ALIASES: dict[str, set[str]] = {
    "t1": {"t1", "t1n", "t1w", "t1native", "t1pre", "native"},
    "t1ce": {"t1ce", "t1c", "t1gd", "t1wce", "t1post", "t1contrast", "t1wc", "t1cegd", "t1wgd"},
    "t2": {"t2", "t2w"},
    "flair": {"flair", "t2f", "t2flair", "t2wflair"},
}
_LABEL_ALIASES: dict[str, set[str]] = {
    "NCR": {"ncr", "necrosis", "necrotic", "necroticcore", "ncrnet", "netc", "nonenhancingtumorcore", "nonenhancing"},
    "ED": {"ed", "edema", "oedema", "peritumoraledema", "snfh", "surroundingflairhyperintensity"},
    "ET": {"et", "enhancing", "enhancingtumor", "enhancingtumour"},
}


def normalise_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _attach_clinical(subjects: list[Subject], clinical_csv: str | Path | None, source: str) -> pd.DataFrame:
    """Clinical table for ``subjects`` (one row each, unknown where the CSV has no row)."""
    ids = [s.subject_id for s in subjects]
    if clinical_csv is None:
        clinical = clinical_frame(pd.DataFrame({"subject_id": ids}), source)
    else:
        if not Path(clinical_csv).is_file():
            raise CohortError(f"clinical CSV {clinical_csv} does not exist")
        clinical = clinical_frame(pd.read_csv(clinical_csv, dtype={"subject_id": str}), str(clinical_csv))
        unknown = sorted(set(clinical.index) - set(ids))
        if unknown:
            log.warning("%s: %d clinical rows without images ignored (e.g. %s)", clinical_csv, len(unknown),
                        unknown[:3])
        clinical = clinical.reindex(ids)
        clinical["subject_id"] = ids
        clinical["site"] = clinical["site"].fillna("unknown")
    for s in subjects:
        s.clinical = clinical.loc[s.subject_id].to_dict()
    return clinical


# --------------------------------------------------------------------------------------------
# BraTS 2023
# --------------------------------------------------------------------------------------------

def _brats2023_file(case: Path, suffix: str) -> Path | None:
    for sep in ("-", "_"):
        for ext in (".nii.gz", ".nii"):
            f = case / f"{case.name}{sep}{suffix}{ext}"
            if f.exists():
                return f
    return None


def read_brats2023(root: str | Path, clinical_csv: str | Path | None = None,
                   label_convention: str | dict = "brats2023") -> Cohort:
    """Read the BraTS 2023 layout ``<root>/<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (``_`` also accepted).

    A case without ``-seg`` gets ``seg=None`` (validation data). A folder that lacks a sequence
    raises :class:`CohortError` naming the folder and the expected file.
    """
    root = Path(root)
    if not root.is_dir():
        raise CohortError(f"BraTS 2023 folder {root} does not exist")
    subjects = []
    for case in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = {}
        for seq, suffix in BRATS2023_SUFFIXES.items():
            f = _brats2023_file(case, suffix)
            if f is None:
                raise CohortError(f"subject {case.name}: missing sequence {seq}: expected file "
                                  f"{case / f'{case.name}-{suffix}.nii.gz'}")
            images[seq] = f.resolve()
        seg = _brats2023_file(case, "seg")
        subjects.append(Subject(case.name, images, seg.resolve() if seg is not None else None))
    if not subjects:
        raise CohortError(f"BraTS 2023 folder {root} holds no subject folders")
    clinical = _attach_clinical(subjects, clinical_csv, str(root))
    return Cohort(subjects, clinical, label_convention, root)


# --------------------------------------------------------------------------------------------
# nnU-Net raw
# --------------------------------------------------------------------------------------------

def channels_from_dataset_json(meta: dict, source: str) -> dict[str, int]:
    """Sequence → channel index from ``channel_names`` (nnU-Net v2) or ``modality`` (v1)."""
    names = meta.get("channel_names") or meta.get("modality")
    if not isinstance(names, dict):
        raise CohortError(f"{source}: no channel_names in dataset.json; pass channels={{'t1': 0, ...}}")
    found: dict[str, int] = {}
    for idx, name in names.items():
        for seq, aliases in CHANNEL_ALIASES.items():
            if normalise_name(name) in aliases:
                if seq in found:
                    raise CohortError(f"{source}: channels {found[seq]} and {idx} both look like {seq} ({names})")
                found[seq] = int(idx)
    missing = [s for s in SEQUENCES if s not in found]
    if missing:
        raise CohortError(f"{source}: cannot tell which channel is {missing} from channel_names {names}; "
                          "pass channels={'t1': 0, 't1ce': 1, 't2': 2, 'flair': 3}")
    return found


def convention_from_dataset_json(meta: dict, source: str) -> dict[str, int]:
    """``{"NCR", "ED", "ET"}`` label values from dataset.json ``labels`` (names or BraTS regions)."""
    labels = meta.get("labels")
    if not isinstance(labels, dict):
        raise CohortError(f"{source}: no labels in dataset.json; pass label_convention=")
    as_sets = {normalise_name(k): {int(v)} if isinstance(v, (int, float)) else {int(x) for x in v}
               for k, v in labels.items()}
    named: dict[str, int] = {}
    for name, values in as_sets.items():
        for part, aliases in _LABEL_ALIASES.items():
            if name in aliases and len(values) == 1:
                named[part] = next(iter(values))
    if len(named) == 3:
        return named
    whole = as_sets.get("wholetumor") or as_sets.get("wholetumour") or as_sets.get("wt")
    core = as_sets.get("tumorcore") or as_sets.get("tumourcore") or as_sets.get("tc")
    enh = as_sets.get("enhancingtumor") or as_sets.get("enhancingtumour") or as_sets.get("et")
    if whole and core and enh and enh < core < whole and len(enh) == 1 and len(core - enh) == 1 \
            and len(whole - core) == 1:
        return {"NCR": next(iter(core - enh)), "ED": next(iter(whole - core)), "ET": next(iter(enh))}
    raise CohortError(f"{source}: cannot derive the NCR/ED/ET labels from {labels}; pass label_convention= "
                      "(e.g. {'NCR': 1, 'ED': 2, 'ET': 3})")


def read_nnunet_raw(root: str | Path, clinical_csv: str | Path | None = None,
                    label_convention: str | dict | None = "auto", channels: dict[str, int] | None = None,
                    split: str = "Tr") -> Cohort:
    """Read an nnU-Net raw dataset folder (``dataset.json``, ``images<split>/``, ``labels<split>/``).

    Args:
        root: the ``DatasetXXX_Name`` folder.
        clinical_csv: optional clinical table (``subject_id`` = nnU-Net case identifier).
        label_convention: ``"auto"`` (from dataset.json ``labels``), a convention name or dict.
        channels: sequence → channel index, overriding dataset.json ``channel_names``.
        split: ``"Tr"`` (imagesTr + labelsTr) or ``"Ts"`` (imagesTs; labelsTs if present).
    """
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise CohortError(f"nnU-Net dataset {root}: no dataset.json")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as err:
        raise CohortError(f"nnU-Net dataset {root}: dataset.json is not valid JSON ({err})") from None
    ending = meta.get("file_ending", ".nii.gz")
    if channels is None:
        channels = channels_from_dataset_json(meta, str(meta_path))
    else:
        channels = {s: int(channels[s]) for s in SEQUENCES}
    if label_convention in (None, "auto"):
        label_convention = convention_from_dataset_json(meta, str(meta_path))
    else:
        convention_labels(label_convention)  # fail early on an unknown name
    images_dir, labels_dir = root / f"images{split}", root / f"labels{split}"
    if not images_dir.is_dir():
        raise CohortError(f"nnU-Net dataset {root}: no folder {images_dir.name}")
    pattern = re.compile(rf"^(?P<case>.+)_(?P<ch>\d{{4}}){re.escape(ending)}$")
    cases: dict[str, dict[int, Path]] = {}
    for f in sorted(images_dir.iterdir()):
        m = pattern.match(f.name)
        if m:
            cases.setdefault(m["case"], {})[int(m["ch"])] = f.resolve()
    if not cases:
        raise CohortError(f"nnU-Net dataset {root}: no <case>_0000{ending} files in {images_dir}")
    subjects = []
    for case, files in cases.items():
        images = {}
        for seq in SEQUENCES:
            ch = channels[seq]
            if ch not in files:
                raise CohortError(f"subject {case}: missing sequence {seq}: expected file "
                                  f"{images_dir / f'{case}_{ch:04d}{ending}'}")
            images[seq] = files[ch]
        seg = labels_dir / f"{case}{ending}"
        if not seg.exists() and split == "Tr":
            raise CohortError(f"subject {case}: no segmentation: expected file {seg}")
        subjects.append(Subject(case, images, seg.resolve() if seg.exists() else None))
    clinical = _attach_clinical(subjects, clinical_csv, str(root))
    return Cohort(subjects, clinical, label_convention, root)


def read_manifest(path: str | Path, label_convention: str | dict = "brats2021") -> Cohort:
    """Read a manifest CSV (one row per subject; image paths relative to the manifest)."""
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"manifest {path} does not exist")
    table = pd.read_csv(path, dtype={"subject_id": str}, keep_default_na=True)
    missing_cols = [c for c in ("subject_id", *SEQUENCES) if c not in table.columns]
    if missing_cols:
        raise CohortError(f"manifest {path}: missing columns {missing_cols}")
    clinical = clinical_frame(table, str(path))
    subjects = []
    for (_, row), sid in zip(table.iterrows(), clinical["subject_id"], strict=True):
        images = {}
        for seq in SEQUENCES:
            cell = row[seq]
            if pd.isna(cell) or not str(cell).strip():
                raise CohortError(f"subject {sid}: no {seq} image given in manifest {path}")
            images[seq] = (path.parent / str(cell).strip()).resolve()
        seg_cell = row.get("seg", np.nan)
        has_seg = not pd.isna(seg_cell) and str(seg_cell).strip()
        seg = (path.parent / str(seg_cell).strip()).resolve() if has_seg else None
        subjects.append(Subject(sid, images, seg, clinical.loc[sid].to_dict() if sid in clinical.index else {}))
    return Cohort(subjects, clinical, label_convention, path.parent)


def read_brats2021(root: str | Path, clinical_csv: str | Path | None = None,
                   label_convention: str | dict = "brats2021") -> Cohort:
    """Read the BraTS 2021 layout ``<root>/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``.

    Clinical values come from ``clinical_csv`` (``subject_id`` column) when given. A folder that
    lacks a sequence raises :class:`CohortError` naming the folder and the missing file.
    """
    root = Path(root)
    if not root.is_dir():
        raise CohortError(f"BraTS folder {root} does not exist")
    if clinical_csv is not None:
        clinical = clinical_frame(pd.read_csv(clinical_csv, dtype={"subject_id": str}), str(clinical_csv))
    else:
        clinical = None
    subjects, ids = [], []
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        sid = case.name
        images = {}
        for seq in SEQUENCES:
            f = case / f"{sid}_{seq}.nii.gz"
            if not f.exists():
                raise CohortError(f"subject {sid}: missing sequence {seq}: expected file {f}")
            images[seq] = f.resolve()
        seg = case / f"{sid}_seg.nii.gz"
        subjects.append(Subject(sid, images, seg.resolve() if seg.exists() else None))
        ids.append(sid)
    if not subjects:
        raise CohortError(f"BraTS folder {root} holds no subject folders")
    if clinical is None:
        clinical = clinical_frame(pd.DataFrame({"subject_id": ids}), str(root))
    else:
        clinical = clinical.reindex(ids)
        clinical["subject_id"] = ids
        clinical["site"] = clinical["site"].fillna("unknown")
    for s in subjects:
        s.clinical = clinical.loc[s.subject_id].to_dict()
    return Cohort(subjects, clinical, label_convention, root)


def load_cohort(source: str, path: str | Path, clinical: str | Path | None = None,
                label_convention: str | dict = "brats2021") -> Cohort:
    """Dispatch on ``source``: ``manifest`` (a CSV), ``brats2021`` / ``brats2023`` (folders) or
    ``nnunet`` (an nnU-Net raw dataset folder; ``label_convention="auto"`` reads dataset.json)."""
    if source == "manifest":
        return read_manifest(path, label_convention)
    if source == "brats2021":
        return read_brats2021(path, clinical, label_convention)
    if source in ("brats2023", "nnunet"):
        if source == "brats2023":
            return read_brats2023(path, clinical, label_convention)
        return read_nnunet_raw(path, clinical, label_convention)
    raise CohortError(f"unknown cohort source {source!r}; use 'manifest', 'brats2021', 'brats2023' or 'nnunet'")


def cohort_from_config(cfg: Mapping, progress: bool = True) -> Cohort:
    """The cohort a ``cohort:`` config block names, read but not yet validated.

    ``cfg`` holds ``source`` (``synthetic`` | ``manifest`` | ``brats2021`` | ``brats2023`` |
    ``nnunet``), ``path``, optionally ``clinical`` and ``label_convention``; with
    ``source: synthetic`` its ``synthetic`` block holds the generator's settings and the cohort is
    generated (once, deterministically) into ``path`` first. train.py, predict-style scripts,
    extract_features.py and segment.py all read their cohort through this one function.
    """
    cfg = _plain(cfg)
    source, path = cfg["source"], cfg["path"]
    if source == "synthetic":
        from radfusion.synthetic.generator import generate_cohort

        syn = dict(cfg.get("synthetic") or {})
        if "shape" in syn:
            syn["shape"] = tuple(syn["shape"])
        path, source = generate_cohort(path, progress=progress, **syn), "manifest"
    return load_cohort(source, path, cfg.get("clinical"), cfg.get("label_convention", "brats2021"))


def _plain(cfg) -> dict:
    """An OmegaConf node as plain Python containers (other mappings copied as they are)."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        return dict(cfg)
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
