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

An optional brain mask per subject (non-zero = brain, on the images' grid) is the manifest column
``brainmask`` or, in the BraTS 2021 / 2023 layouts, the file ``<id>_brainmask.nii.gz`` (2023 also
``<id>-brainmask.nii.gz``) beside the sequences; ``data.cohort.brain_mask`` decides whether it is used.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from radfusion.cohort.clinical import clinical_frame, read_delimited, separator_hint
from radfusion.cohort.habitats import convention_labels
from radfusion.cohort.subject import SEQUENCES, Cohort, CohortError, Subject, check_sequences
from radfusion.cohort.validate import validate_cohort

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


def _attach_clinical(subjects: list[Subject], clinical_csv: str | Path | None, source: str,
                     label_values: Mapping | None = None) -> pd.DataFrame:
    """Clinical table for ``subjects`` (one row each, unknown where the CSV has no row).

    An id on several CSV rows keeps all of them: which is meant is ambiguous, and validation refuses
    the subject (or drops it with ``skip_invalid``).
    """
    ids = [s.subject_id for s in subjects]
    if clinical_csv is None:
        clinical = clinical_frame(pd.DataFrame({"subject_id": ids}), source)
    else:
        if not Path(clinical_csv).is_file():
            raise CohortError(f"clinical CSV {clinical_csv} does not exist")
        table = read_delimited(clinical_csv, "clinical CSV", dtype={"subject_id": str})
        clinical = clinical_frame(table, str(clinical_csv), label_values)
        unknown = sorted(set(clinical.index) - set(ids))
        if unknown:
            log.warning("%s: %d clinical rows without images ignored (e.g. %s)", clinical_csv, len(unknown),
                        unknown[:3])
        repeated = set(clinical.index[clinical.index.duplicated()])
        if repeated:
            single = clinical[~clinical.index.isin(repeated)].reindex([i for i in ids if i not in repeated])
            clinical = pd.concat([single, clinical[clinical.index.isin(repeated) & clinical.index.isin(ids)]])
            order = {sid: k for k, sid in enumerate(ids)}
            clinical = clinical.iloc[np.argsort([order[i] for i in clinical.index], kind="stable")]
        else:
            clinical = clinical.reindex(ids)
        clinical["subject_id"] = clinical.index
        # A subject without a clinical row is its own patient (splits group by patient_id).
        clinical["patient_id"] = clinical["patient_id"].fillna(clinical["subject_id"])
        clinical["site"] = clinical["site"].fillna("unknown")
    for s in subjects:
        s.clinical = clinical.loc[[s.subject_id]].iloc[0].to_dict()
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
                   label_convention: str | dict = "brats2023", sequences: tuple[str, ...] = SEQUENCES,
                   label_values: Mapping | None = None) -> Cohort:
    """Read the BraTS 2023 layout ``<root>/<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (``_`` also accepted).

    A case without ``-seg`` gets ``seg=None`` (validation data). Only ``sequences`` are read; a folder
    that lacks one of them gives a subject without it (validation's ``missing_sequences`` decides).
    """
    sequences = check_sequences(sequences)
    root = Path(root)
    if not root.is_dir():
        raise CohortError(f"BraTS 2023 folder {root} does not exist")
    subjects = []
    single = any(_brats2023_file(root, BRATS2023_SUFFIXES[seq]) for seq in sequences)  # one case folder
    for case in [root] if single else sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = {}
        absent = {}
        for seq in sequences:
            f = _brats2023_file(case, BRATS2023_SUFFIXES[seq])
            if f is not None:
                images[seq] = f.resolve()
            else:
                absent[seq] = f"expected file {case / f'{case.name}-{BRATS2023_SUFFIXES[seq]}.nii.gz'}"
        seg = _brats2023_file(case, "seg")
        brainmask = _brats2023_file(case, "brainmask")
        subjects.append(Subject(case.name, images, seg.resolve() if seg is not None else None,
                                brainmask=brainmask.resolve() if brainmask is not None else None, absent=absent))
    if not subjects:
        raise CohortError(f"BraTS 2023 folder {root} holds no subject folders")
    clinical = _attach_clinical(subjects, clinical_csv, str(root), label_values)
    return Cohort(subjects, clinical, label_convention, root, sequences=sequences)


# --------------------------------------------------------------------------------------------
# nnU-Net raw
# --------------------------------------------------------------------------------------------

def channels_from_dataset_json(meta: dict, source: str, sequences: tuple[str, ...] = SEQUENCES) -> dict[str, int]:
    """Sequence → channel index from ``channel_names`` (nnU-Net v2) or ``modality`` (v1); each of
    ``sequences`` must be found (the dataset may hold others)."""
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
    missing = [s for s in sequences if s not in found]
    if missing:
        raise CohortError(f"{source}: cannot tell which channel is {missing} from channel_names {names}; "
                          "pass channels={'t1': 0, 't1ce': 1, 't2': 2, 'flair': 3}, or leave the sequences the "
                          "dataset lacks out of data.cohort.sequences")
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
                    split: str = "Tr", sequences: tuple[str, ...] = SEQUENCES,
                    label_values: Mapping | None = None) -> Cohort:
    """Read an nnU-Net raw dataset folder (``dataset.json``, ``images<split>/``, ``labels<split>/``).

    Args:
        root: the ``DatasetXXX_Name`` folder.
        clinical_csv: optional clinical table (``subject_id`` = nnU-Net case identifier).
        label_convention: ``"auto"`` (from dataset.json ``labels``), a convention name or dict.
        channels: sequence → channel index, overriding dataset.json ``channel_names``.
        split: ``"Tr"`` (imagesTr + labelsTr) or ``"Ts"`` (imagesTs; labelsTs if present).
        sequences: the sequences to read; a case without one of their files lacks that sequence.
    """
    sequences = check_sequences(sequences)
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
        channels = channels_from_dataset_json(meta, str(meta_path), sequences)
    else:
        channels = {s: int(channels[s]) for s in sequences}
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
        images = {seq: files[channels[seq]] for seq in sequences if channels[seq] in files}
        absent = {seq: f"expected file {images_dir / f'{case}_{channels[seq]:04d}{ending}'}" for seq in sequences
                  if seq not in images}
        seg = labels_dir / f"{case}{ending}"
        if not seg.exists() and split == "Tr":
            raise CohortError(f"subject {case}: no segmentation: expected file {seg}")
        subjects.append(Subject(case, images, seg.resolve() if seg.exists() else None, absent=absent))
    clinical = _attach_clinical(subjects, clinical_csv, str(root), label_values)
    return Cohort(subjects, clinical, label_convention, root, sequences=sequences)


def read_manifest(path: str | Path, label_convention: str | dict = "brats2021",
                  sequences: tuple[str, ...] = SEQUENCES, label_values: Mapping | None = None) -> Cohort:
    """Read a manifest CSV (one row per subject; image paths relative to the manifest).

    Only the columns of ``sequences`` are read (and required); an empty cell is a sequence the subject
    lacks (validation's ``missing_sequences`` decides what that means).
    """
    sequences = check_sequences(sequences)
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"manifest {path} does not exist")
    table = read_delimited(path, "manifest", dtype={"subject_id": str}, keep_default_na=True)
    missing_cols = [c for c in ("subject_id", *sequences) if c not in table.columns]
    if missing_cols:
        hint = "" if "subject_id" in missing_cols else (
            f" (data.cohort.sequences is {list(sequences)}: set it to the sequences the manifest has, "
            "e.g. data.cohort.sequences=[t1ce,flair])")
        raise CohortError(f"manifest {path}: missing columns {missing_cols}{separator_hint(path, table.columns)}"
                          f"{hint}")
    clinical = clinical_frame(table, str(path), label_values)
    subjects = []
    for k, ((_, row), sid) in enumerate(zip(table.iterrows(), clinical["subject_id"], strict=True)):
        # an empty cell: the subject lacks that sequence
        images = {seq: (path.parent / str(row[seq]).strip()).resolve() for seq in sequences
                  if not pd.isna(row[seq]) and str(row[seq]).strip()}
        absent = {seq: f"empty {seq} cell in manifest {path}" for seq in sequences if seq not in images}
        seg_cell = row.get("seg", np.nan)
        has_seg = not pd.isna(seg_cell) and str(seg_cell).strip()
        seg = (path.parent / str(seg_cell).strip()).resolve() if has_seg else None
        mask_cell = row.get("brainmask", np.nan)  # optional column; an empty cell = no brain mask
        has_mask = not pd.isna(mask_cell) and str(mask_cell).strip()
        brainmask = (path.parent / str(mask_cell).strip()).resolve() if has_mask else None
        # by position: a repeated id (refused by validation) must not merge its rows here
        subjects.append(Subject(sid, images, seg, clinical.iloc[k].to_dict(), brainmask=brainmask, absent=absent))
    return Cohort(subjects, clinical, label_convention, path.parent, sequences=sequences)


def read_brats2021(root: str | Path, clinical_csv: str | Path | None = None,
                   label_convention: str | dict = "brats2021", sequences: tuple[str, ...] = SEQUENCES,
                   label_values: Mapping | None = None) -> Cohort:
    """Read the BraTS 2021 layout ``<root>/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``.

    ``root`` may also be one case folder (``<id>/<id>_t1.nii.gz``...): a cohort of that one subject.
    Clinical values come from ``clinical_csv`` (``subject_id`` column) when given. Only ``sequences``
    are read; a folder that lacks one of their files gives a subject without that sequence.
    """
    sequences = check_sequences(sequences)
    root = Path(root)
    if not root.is_dir():
        raise CohortError(f"BraTS folder {root} does not exist")
    subjects, ids = [], []
    single = any((root / f"{root.name}_{seq}.nii.gz").exists() for seq in sequences)  # one case folder
    for case in [root] if single else sorted(p for p in root.iterdir() if p.is_dir()):
        sid = case.name
        files = {seq: case / f"{sid}_{seq}.nii.gz" for seq in sequences}
        images = {seq: f.resolve() for seq, f in files.items() if f.exists()}
        absent = {seq: f"expected file {f}" for seq, f in files.items() if seq not in images}
        seg = case / f"{sid}_seg.nii.gz"
        brainmask = case / f"{sid}_brainmask.nii.gz"  # optional: the brain the z-score uses
        subjects.append(Subject(sid, images, seg.resolve() if seg.exists() else None,
                                brainmask=brainmask.resolve() if brainmask.exists() else None, absent=absent))
        ids.append(sid)
    if not subjects:
        raise CohortError(f"BraTS folder {root} holds no subject folders")
    clinical = _attach_clinical(subjects, clinical_csv, str(root), label_values)
    return Cohort(subjects, clinical, label_convention, root, sequences=sequences)


def load_cohort(source: str, path: str | Path, clinical: str | Path | None = None,
                label_convention: str | dict = "brats2021", sequences: tuple[str, ...] = SEQUENCES,
                label_values: Mapping | None = None) -> Cohort:
    """Dispatch on ``source``: ``manifest`` (a CSV), ``brats2021`` / ``brats2023`` (folders) or
    ``nnunet`` (an nnU-Net raw dataset folder; ``label_convention="auto"`` reads dataset.json).
    ``sequences`` (``data.cohort.sequences``) are the sequences read; the others are ignored."""
    if source == "manifest":
        return read_manifest(path, label_convention, sequences, label_values)
    if source == "brats2021":
        return read_brats2021(path, clinical, label_convention, sequences, label_values)
    if source in ("brats2023", "nnunet"):
        if source == "brats2023":
            return read_brats2023(path, clinical, label_convention, sequences, label_values)
        return read_nnunet_raw(path, clinical, label_convention, sequences=sequences, label_values=label_values)
    raise CohortError(f"unknown cohort source {source!r}; use 'manifest', 'brats2021', 'brats2023' or 'nnunet'")


def cohort_from_config(cfg: Mapping, progress: bool = True) -> Cohort:
    """The cohort a ``cohort:`` config block names, read but not yet validated.

    ``cfg`` holds ``source`` (``synthetic`` | ``manifest`` | ``brats2021`` | ``brats2023`` |
    ``nnunet``), ``path``, optionally ``clinical``, ``label_convention`` and ``sequences``; with
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
    cohort = load_cohort(source, path, cfg.get("clinical"), cfg.get("label_convention", "brats2021"),
                         tuple(cfg.get("sequences") or SEQUENCES), cfg.get("label_values"))
    cohort.brain_mask = cfg.get("brain_mask", "auto")  # every later z-score reads it, validated or not
    return cohort


def read_validated_cohort(cohort_cfg: dict, progress: bool = True, min_subjects: int = 2,
                          cache_dir: str | Path | None = None) -> Cohort:
    """The cohort of a ``cohort:`` config block, validated once with the config's tolerance and brain mask choice:
    what train.py (:func:`radfusion.data.prepare.prepare_cohort`) and extract_features.py read, so that both
    accept and refuse the same subjects (those dropped by ``skip_invalid`` in the result's ``excluded``).
    With ``cache_dir`` (and ``validation_cache`` not false in the block) passed subjects are remembered
    there (:mod:`radfusion.cohort.validation_cache`)."""
    cohort = cohort_from_config(cohort_cfg, progress=progress)
    return validate_cohort(cohort, tolerance=cohort_cfg.get("geometry_tolerance", 1e-3),
                           skip_invalid=cohort_cfg.get("skip_invalid", False), min_subjects=min_subjects,
                           brain_mask=cohort_cfg.get("brain_mask", "auto"),
                           missing_sequences=cohort_cfg.get("missing_sequences", "auto"),
                           cache_dir=cache_dir if cohort_cfg.get("validation_cache", True) else None)


def _plain(cfg) -> dict:
    """An OmegaConf node as plain Python containers (other mappings copied as they are)."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a core dependency
        return dict(cfg)
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
