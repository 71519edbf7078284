"""Read a cohort (manifest CSV or BraTS 2021 folder layout) and check it before any work is done.

The in-memory cohort is the same whatever the source: a list of :class:`Subject` with absolute
paths to the four sequences and the segmentation, plus a clinical table (one row per subject,
columns of the data contract in ``DESIGN.md``). Empty cells are unknown: labels stay NaN and are
masked downstream, never guessed.

Validation (:func:`validate_cohort`) names the subject and the file in every error: unreadable
file, missing sequence, image/mask geometry mismatch (size, spacing, origin, direction beyond a
tolerance), labels outside the convention, non-finite intensities, duplicate subject.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import SimpleITK as sitk

from radfusion.data.habitats import allowed_labels

log = logging.getLogger(__name__)

#: The four MRI sequences, in channel order.
SEQUENCES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: Clinical columns of the data contract (all optional except ``subject_id``).
CLINICAL_COLUMNS: tuple[str, ...] = (
    "subject_id", "site", "age", "sex", "idh", "mgmt", "codeletion", "grade",
    "os_days", "os_event", "timepoint",
)

#: Binary marker columns and the spellings that mean 1 / 0. Anything else non-empty is an error.
MARKERS: tuple[str, ...] = ("idh", "mgmt", "codeletion")
_POSITIVE = {"1", "1.0", "true", "yes", "mutant", "mut", "methylated", "codeleted", "positive", "responder"}
_NEGATIVE = {"0", "0.0", "false", "no", "wildtype", "wt", "unmethylated", "intact", "negative",
             "non-responder", "nonresponder"}
#: Optional binary labels parsed like the markers when a cohort has them (e.g. treatment response).
OPTIONAL_BINARY: tuple[str, ...] = ("response",)
_UNKNOWN = {"", "nan", "na", "n/a", "unknown", "indeterminate", "none"}


class CohortError(ValueError):
    """A problem with the input cohort. The message names the subject and the file."""


@dataclass
class Subject:
    """One subject (one timepoint) of a cohort.

    Attributes:
        subject_id: unique identifier.
        images: absolute path per sequence name (keys from :data:`SEQUENCES`).
        seg: absolute path of the tumour segmentation, or None when it has to be predicted.
        clinical: the subject's clinical values (NaN where unknown).
    """

    subject_id: str
    images: dict[str, Path]
    seg: Path | None
    clinical: dict = field(default_factory=dict)


@dataclass
class Cohort:
    """A list of subjects plus their clinical table (index ``subject_id``)."""

    subjects: list[Subject]
    clinical: pd.DataFrame
    label_convention: str | dict = "brats2021"
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.subjects)

    @property
    def ids(self) -> list[str]:
        return [s.subject_id for s in self.subjects]

    def subject(self, subject_id: str) -> Subject:
        for s in self.subjects:
            if s.subject_id == subject_id:
                return s
        raise KeyError(subject_id)


def _parse_marker(value, column: str, subject_id: str) -> float:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    text = str(value).strip().lower()
    if text in _UNKNOWN:
        return np.nan
    if text in _POSITIVE:
        return 1.0
    if text in _NEGATIVE:
        return 0.0
    raise CohortError(
        f"subject {subject_id}: column {column!r} has value {value!r}; expected 0/1 (or "
        f"e.g. mutant/wildtype, methylated/unmethylated), empty for unknown"
    )


def _clinical_frame(rows: pd.DataFrame, source: str) -> pd.DataFrame:
    """Normalise a clinical table: string ids, numeric markers/survival, NaN for unknown."""
    if "subject_id" not in rows.columns:
        raise CohortError(f"{source}: no 'subject_id' column (columns: {list(rows.columns)})")
    df = rows.copy()
    df["subject_id"] = df["subject_id"].astype(str).str.strip()
    df["patient_id"] = df["subject_id"]
    dup = df["subject_id"][df["subject_id"].duplicated()].unique()
    if len(dup):
        if "timepoint" not in df.columns or df["timepoint"].isna().any():
            raise CohortError(f"{source}: duplicate subject_id {list(dup)[:5]} (a longitudinal cohort needs a "
                              "timepoint on every row)")
        tp = pd.to_numeric(df["timepoint"], errors="coerce")
        if tp.isna().any() or (tp != tp.round()).any():
            raise CohortError(f"{source}: timepoint must be an integer on every row")
        # One row per scan: '<patient>_tp<k>'; patient_id keeps the subject for subject-level splits.
        df["subject_id"] = df["patient_id"] + "_tp" + tp.astype(int).astype(str)
        twice = df["subject_id"][df["subject_id"].duplicated()].unique()
        if len(twice):
            raise CohortError(f"{source}: subject and timepoint repeated: {list(twice)[:5]}")
    for col in MARKERS:
        if col in df.columns:
            df[col] = [_parse_marker(v, col, sid) for v, sid in zip(df[col], df["subject_id"], strict=False)]
        else:
            df[col] = np.nan
    for col in OPTIONAL_BINARY:
        if col in df.columns:
            df[col] = [_parse_marker(v, col, sid) for v, sid in zip(df[col], df["subject_id"], strict=False)]
    for col in ("age", "os_days", "os_event", "grade"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
        else:
            df[col] = np.nan
    if "site" not in df.columns:
        df["site"] = "unknown"
    df["site"] = df["site"].fillna("unknown").astype(str)
    return df.set_index("subject_id", drop=False)


def read_manifest(path: str | Path, label_convention: str | dict = "brats2021") -> Cohort:
    """Read a manifest CSV (one row per subject; image paths relative to the manifest)."""
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"manifest {path} does not exist")
    table = pd.read_csv(path, dtype={"subject_id": str}, keep_default_na=True)
    missing_cols = [c for c in ("subject_id", *SEQUENCES) if c not in table.columns]
    if missing_cols:
        raise CohortError(f"manifest {path}: missing columns {missing_cols}")
    clinical = _clinical_frame(table, str(path))
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
        clinical = _clinical_frame(pd.read_csv(clinical_csv, dtype={"subject_id": str}), str(clinical_csv))
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
        clinical = _clinical_frame(pd.DataFrame({"subject_id": ids}), str(root))
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
        from radfusion.data.readers import read_brats2023, read_nnunet_raw

        if source == "brats2023":
            return read_brats2023(path, clinical, label_convention)
        return read_nnunet_raw(path, clinical, label_convention)
    raise CohortError(f"unknown cohort source {source!r}; use 'manifest', 'brats2021', 'brats2023' or 'nnunet'")


def read_image(path: Path, subject_id: str) -> sitk.Image:
    """Read one image, turning any reader failure into a :class:`CohortError` naming subject/file."""
    if not Path(path).exists():
        raise CohortError(f"subject {subject_id}: file {path} does not exist")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reader error"
        raise CohortError(f"subject {subject_id}: cannot read {path}: {first}") from None


def _geometry_problem(ref: sitk.Image, img: sitk.Image, tol: float) -> str | None:
    if ref.GetSize() != img.GetSize():
        return f"size {img.GetSize()} != {ref.GetSize()}"
    for name, a, b in (("spacing", ref.GetSpacing(), img.GetSpacing()),
                       ("origin", ref.GetOrigin(), img.GetOrigin()),
                       ("direction", ref.GetDirection(), img.GetDirection())):
        diff = float(np.max(np.abs(np.subtract(a, b))))
        if diff > tol:
            got, want = tuple(round(x, 6) for x in b), tuple(round(x, 6) for x in a)
            return f"{name} {got} != {want} (max difference {diff:.3g} > tolerance {tol})"
    return None


def _all_finite(path: Path, img: sitk.Image) -> bool:
    # ITK's NIfTI reader silently turns NaN voxels into 0, which would hide corrupt data inside
    # the brain; read NIfTI values with nibabel to see them.
    if str(path).endswith((".nii", ".nii.gz")):
        try:
            return bool(np.all(np.isfinite(np.asanyarray(nib.load(str(path)).dataobj))))
        except Exception:  # noqa: BLE001 - unreadable by nibabel but read by ITK: trust ITK
            pass
    return bool(np.all(np.isfinite(sitk.GetArrayViewFromImage(img))))


def validate_subject(subject: Subject, label_convention: str | dict = "brats2021",
                     tolerance: float = 1e-3, check_intensities: bool = True) -> None:
    """Check one subject's files; raise :class:`CohortError` naming subject and file on the first problem."""
    sid = subject.subject_id
    missing = [s for s in SEQUENCES if s not in subject.images]
    if missing:
        raise CohortError(f"subject {sid}: missing sequence(s) {missing}")
    ref_path = subject.seg if subject.seg is not None else subject.images[SEQUENCES[0]]
    ref = read_image(ref_path, sid)
    if subject.seg is not None:
        seg = sitk.GetArrayViewFromImage(ref)
        bad = sorted(set(np.unique(seg).tolist()) - allowed_labels(label_convention))
        if bad:
            raise CohortError(
                f"subject {sid}: segmentation {subject.seg} has labels {bad} outside the "
                f"{label_convention} convention {sorted(allowed_labels(label_convention))}"
            )
    for seq in SEQUENCES:
        path = subject.images[seq]
        img = read_image(path, sid)
        problem = _geometry_problem(ref, img, tolerance)
        if problem:
            raise CohortError(
                f"subject {sid}: geometry mismatch between {path} and {ref_path}: {problem}. "
                "Resample the image onto the mask grid (or fix the header) and rerun."
            )
        if check_intensities and not _all_finite(path, img):
            raise CohortError(f"subject {sid}: {path} contains NaN or infinite intensities")


def validate_cohort(cohort: Cohort, tolerance: float = 1e-3, skip_invalid: bool = False,
                    min_subjects: int = 1) -> Cohort:
    """Validate every subject.

    With ``skip_invalid`` the failing subjects are logged and dropped (nnU-Net's "reject and
    continue") and the remaining cohort is returned; otherwise the first failure raises.
    """
    ids = cohort.ids
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CohortError(f"duplicate subject_id(s) in cohort: {dup[:5]}")
    kept, failures = [], []
    for s in cohort.subjects:
        try:
            validate_subject(s, cohort.label_convention, tolerance)
            kept.append(s)
        except CohortError as err:
            if not skip_invalid:
                raise
            failures.append(str(err))
            log.error("skipping invalid subject: %s", err)
    if failures:
        log.warning("%d of %d subjects failed validation and were skipped", len(failures), len(ids))
    if len(kept) < min_subjects:
        raise CohortError(f"only {len(kept)} valid subjects; at least {min_subjects} are needed")
    clinical = cohort.clinical.loc[[s.subject_id for s in kept]]
    return Cohort(kept, clinical, cohort.label_convention, cohort.root)
