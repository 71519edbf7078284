"""The in-memory cohort: subjects with absolute paths to their four sequences and mask, and a
clinical table (one row per subject, columns of the data contract in ``DESIGN.md``).

Every reader (:mod:`radfusion.cohort.readers`) returns a :class:`Cohort`, whatever the layout on
disk; :mod:`radfusion.cohort.validate` checks it before any work is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from radfusion.cohort.habitats import plain_convention

#: The four MRI sequences, in channel order.
SEQUENCES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: Default image/mask geometry tolerance (mm for spacing/origin, unitless for direction cosines);
#: ``data.cohort.geometry_tolerance`` overrides it.
GEOMETRY_TOLERANCE: float = 1e-3


class CohortError(ValueError):
    """A problem with the input cohort. The message names the subject and the file."""


def check_sequences(sequences: Sequence[str], what: str = "data.cohort.sequences") -> tuple[str, ...]:
    """``sequences`` as a tuple of distinct names from :data:`SEQUENCES` (at least one), else a
    :class:`CohortError` naming the setting ``what``."""
    if isinstance(sequences, str):
        sequences = [sequences]
    seqs = tuple(str(s) for s in sequences)
    unknown = [s for s in seqs if s not in SEQUENCES]
    if unknown or not seqs or len(set(seqs)) != len(seqs):
        raise CohortError(f"{what} must be distinct names from {list(SEQUENCES)} (at least one), got {list(seqs)}")
    return seqs


@dataclass
class Subject:
    """One subject (one timepoint) of a cohort.

    Attributes:
        subject_id: unique identifier.
        images: absolute path per sequence name (keys from :data:`SEQUENCES`).
        seg: absolute path of the tumour segmentation, or None when it has to be predicted.
        clinical: the subject's clinical values (NaN where unknown).
        absent: where the reader looked for each of the cohort's sequences the subject lacks (an
            expected file, an empty manifest cell), for messages; its ``images`` have no key for them.
        brainmask: absolute path of a brain mask (non-zero = brain) on the images' grid, or None;
            which brain the z-score uses is the cohort's ``brain_mask`` choice (:func:`brain_method`).
    """

    subject_id: str
    images: dict[str, Path]
    seg: Path | None
    clinical: dict = field(default_factory=dict)
    brainmask: Path | None = None
    absent: dict[str, str] = field(default_factory=dict)

    def missing_sequences(self, sequences: Sequence[str] = SEQUENCES) -> list[str]:
        """Those of ``sequences`` this subject has no image of (an empty manifest cell, an absent file)."""
        return [s for s in sequences if s not in self.images]

    def where_missing(self, sequences: Sequence[str]) -> str:
        """Where the reader looked for the missing ``sequences`` (for messages), e.g. ``t2: expected file ...``."""
        return "; ".join(f"{s}: {self.absent.get(s, 'no image')}" for s in sequences)


@dataclass
class Cohort:
    """A list of subjects plus their clinical table (index ``subject_id``).

    ``geometry_tolerance`` is the image/mask tolerance the cohort was validated with
    (:func:`radfusion.cohort.validate.validate_cohort` sets it); every later read of its files uses it,
    so a subject accepted by validation is not refused by the extraction. It changes which subjects
    are accepted, never a value, so it is part of no cache key.

    ``brain_mask`` (``data.cohort.brain_mask``, one of :data:`BRAIN_MASKS`) says which voxels are brain
    for the z-score; :func:`brain_method` resolves it per subject. Unlike the tolerance it changes
    values, so a non-default brain enters the item and ROI cache keys.

    ``sequences`` (``data.cohort.sequences``) are the MRI sequences the cohort is made of, in channel
    order (a subset of :data:`SEQUENCES`, e.g. ``("t1ce", "flair")`` for older BraTS). A subject lacking
    one of them has no key for it in ``images`` (:meth:`Subject.missing_sequences`); whether that is
    allowed is the validation's ``missing_sequences`` policy.

    ``excluded`` maps each subject validation dropped (``skip_invalid``) to why, so that the run's
    ``metrics.json`` and report can say who is missing and why.
    """

    subjects: list[Subject]
    clinical: pd.DataFrame
    label_convention: str | dict = "brats2021"
    root: Path | None = None
    geometry_tolerance: float = GEOMETRY_TOLERANCE
    brain_mask: str = "auto"
    sequences: tuple[str, ...] = SEQUENCES
    excluded: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sequences = check_sequences(self.sequences)
        # A convention from a Hydra config arrives as DictConfig/ListConfig; every reader, the habitat
        # masks and the cache keys (JSON of the convention) expect plain dicts and lists.
        self.label_convention = plain_convention(self.label_convention)

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


#: ``data.cohort.brain_mask`` choices: which voxels are brain for the z-score (see README "Brain masks").
#: ``auto`` (default): the subject's brain mask file if it has one, else ``nonzero``; ``nonzero``: every
#: non-zero voxel (skull-stripped images); ``otsu``: an Otsu head mask of the subject's images
#: (:func:`radfusion.imaging.preprocess.otsu_brain`); ``file``: the brain mask file, required.
BRAIN_MASKS: tuple[str, ...] = ("auto", "nonzero", "otsu", "file")


def brain_method(subject: Subject, brain_mask: str = "auto") -> str:
    """The brain ``subject`` is z-scored in under the cohort's ``brain_mask`` choice: ``nonzero``,
    ``otsu`` or ``file``. ``auto`` is ``file`` when the subject has a brain mask, else ``nonzero``, so a
    cohort without brain masks keeps today's values; an explicit choice wins over a given file."""
    if brain_mask not in BRAIN_MASKS:
        raise CohortError(f"data.cohort.brain_mask must be one of {list(BRAIN_MASKS)}, got {brain_mask!r}")
    if brain_mask == "auto":
        return "file" if subject.brainmask is not None else "nonzero"
    if brain_mask == "file" and subject.brainmask is None:
        raise CohortError(f"subject {subject.subject_id}: data.cohort.brain_mask=file but the subject has no "
                          "brain mask: give one (manifest column brainmask / <id>_brainmask.nii.gz) or set "
                          "data.cohort.brain_mask=otsu")
    return brain_mask


#: ``data.cohort.missing_sequences`` choices: what a subject lacking some (not all) of the cohort's
#: sequences gets in :func:`radfusion.cohort.validate.validate_cohort`; see README "Missing sequences".
MISSING_SEQUENCE_POLICIES: tuple[str, ...] = ("auto", "impute", "skip", "error")


def missing_sequence_policy(policy: str, skip_invalid: bool = False) -> str:
    """``impute`` (kept: NaN features + ``<sequence>_missing``, zero ROI channel), ``skip`` (dropped) or
    ``error`` (a validation failure, which ``skip_invalid`` drops); ``auto`` is ``error`` with
    ``skip_invalid``, else ``impute``."""
    if policy not in MISSING_SEQUENCE_POLICIES:
        raise CohortError(f"data.cohort.missing_sequences must be one of {list(MISSING_SEQUENCE_POLICIES)}, "
                          f"got {policy!r}")
    if policy == "auto":
        return "error" if skip_invalid else "impute"
    return policy


def read_image(path: Path, subject_id: str) -> sitk.Image:
    """Read one image, turning any reader failure into a :class:`CohortError` naming subject/file."""
    if not Path(path).exists():
        raise CohortError(f"subject {subject_id}: file {path} does not exist")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reader error"
        raise CohortError(f"subject {subject_id}: cannot read {path}: {first}") from None

