"""The in-memory cohort: subjects with absolute paths to their four sequences and mask, and a
clinical table (one row per subject, columns of the data contract in ``DESIGN.md``).

Every reader (:mod:`radfusion.cohort.readers`) returns a :class:`Cohort`, whatever the layout on
disk; :mod:`radfusion.cohort.validate` checks it before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

#: The four MRI sequences, in channel order.
SEQUENCES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: Default image/mask geometry tolerance (mm for spacing/origin, unitless for direction cosines);
#: ``data.cohort.geometry_tolerance`` overrides it.
GEOMETRY_TOLERANCE: float = 1e-3


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
    """A list of subjects plus their clinical table (index ``subject_id``).

    ``geometry_tolerance`` is the image/mask tolerance the cohort was validated with
    (:func:`radfusion.cohort.validate.validate_cohort` sets it); every later read of its files uses it,
    so a subject accepted by validation is not refused by the extraction. It changes which subjects
    are accepted, never a value, so it is part of no cache key.
    """

    subjects: list[Subject]
    clinical: pd.DataFrame
    label_convention: str | dict = "brats2021"
    root: Path | None = None
    geometry_tolerance: float = GEOMETRY_TOLERANCE

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


def read_image(path: Path, subject_id: str) -> sitk.Image:
    """Read one image, turning any reader failure into a :class:`CohortError` naming subject/file."""
    if not Path(path).exists():
        raise CohortError(f"subject {subject_id}: file {path} does not exist")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown reader error"
        raise CohortError(f"subject {subject_id}: cannot read {path}: {first}") from None

