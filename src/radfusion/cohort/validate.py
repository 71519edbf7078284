"""The one integrity check of a cohort, run before any work is done, and the checks behind it.

Every error names the subject and the file: unreadable file, missing sequence, image/mask geometry
mismatch (size, spacing, origin, direction beyond a tolerance), labels outside the convention,
non-finite intensities, duplicate subject. The tolerance comes from the config
(``data.cohort.geometry_tolerance``); :func:`validate_cohort` records it on the returned
:class:`~radfusion.cohort.subject.Cohort` so that every later read of the same files
(:func:`radfusion.imaging.preprocess.load_preprocessed`, for radiomics and ROIs) applies the same one.
A subject that passed validation must not fail later on a stricter check.

The single per-file checks live in :mod:`radfusion.cohort.integrity` and nowhere else: the
preprocessing re-runs them on the images it reads, with the same messages.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from radfusion.cohort.integrity import (
    check_background,
    check_brainmask,
    check_file_intact,
    check_finite,
    check_geometry,
    check_labels,
    check_scalar_3d,
    integer_labels,
)
from radfusion.cohort.subject import (
    BRAIN_MASKS,
    GEOMETRY_TOLERANCE,
    SEQUENCES,
    Cohort,
    CohortError,
    Subject,
    brain_method,
    missing_sequence_policy,
    read_image,
)
from radfusion.cohort.validation_cache import validate_with_cache

log = logging.getLogger(__name__)



def validate_subject(subject: Subject, label_convention: str | dict = "brats2021",
                     tolerance: float = GEOMETRY_TOLERANCE, check_intensities: bool = True,
                     brain_mask: str | None = None, sequences: Sequence[str] = SEQUENCES,
                     allow_missing: bool = False) -> None:
    """Check one subject's files; raise :class:`CohortError` naming subject and file on the first problem.

    ``sequences`` are the cohort's (``Cohort.sequences``). A subject lacking some of them is refused
    unless ``allow_missing``; one with none of them always is. The geometry reference is the mask, or
    without one the first sequence the subject has.

    ``brain_mask`` (the cohort's choice, see :func:`~radfusion.cohort.subject.brain_method`) adds the
    brain's checks: a ``file`` brain mask on the grid and not empty, a zero background for ``nonzero``
    (:func:`check_background`). None (e.g. before segmentation, which needs no brain) skips them.
    """
    sid = subject.subject_id
    method = None if brain_mask is None else brain_method(subject, brain_mask)
    present = [s for s in sequences if s in subject.images]
    if not present:
        raise CohortError(f"subject {sid}: none of the cohort's sequences {list(sequences)} has an image "
                          f"({subject.where_missing(sequences)}); give at least one, or drop the subject "
                          "(data.cohort.skip_invalid=true)")
    missing = subject.missing_sequences(sequences)
    if missing and not allow_missing:
        raise CohortError(f"subject {sid}: missing sequence(s) {missing} ({subject.where_missing(missing)}); "
                          "data.cohort.missing_sequences=impute keeps the subject (NaN features + "
                          "<sequence>_missing, zero ROI channel), or leave them out of data.cohort.sequences")
    # Every file is read completely first: a truncated one would otherwise load with zeros.
    for path in (*subject.images.values(), subject.seg, subject.brainmask):
        if path is not None:
            check_file_intact(sid, path)
    ref_path = subject.seg if subject.seg is not None else subject.images[present[0]]
    ref = read_image(ref_path, sid)
    if subject.seg is not None:
        ref = integer_labels(ref, sid, subject.seg)
        check_labels(sid, subject.seg, sitk.GetArrayViewFromImage(ref), label_convention)
    for seq in present:
        path = subject.images[seq]
        img = read_image(path, sid)
        # The same checks, in the same order, as load_preprocessed: what passes here loads there.
        check_scalar_3d(sid, path, img)
        check_geometry(sid, path, img, ref_path, ref, tolerance)
        if check_intensities:
            check_finite(sid, path, img)
        if method == "nonzero":
            check_background(sid, path, img)
    if method == "file":
        mask = read_image(subject.brainmask, sid)
        check_scalar_3d(sid, subject.brainmask, mask)
        check_geometry(sid, subject.brainmask, mask, ref_path, ref, tolerance)
        check_brainmask(sid, subject.brainmask, sitk.GetArrayViewFromImage(mask) != 0)


def validate_cohort(cohort: Cohort, tolerance: float = GEOMETRY_TOLERANCE, skip_invalid: bool = False,
                    min_subjects: int = 1, brain_mask: str | None = None, missing_sequences: str = "auto",
                    cache_dir: str | Path | None = None) -> Cohort:
    """Validate every subject with ``tolerance``; the returned cohort records it (``geometry_tolerance``),
    and the ``brain_mask`` choice (``data.cohort.brain_mask``; None: the cohort's own, as
    :func:`~radfusion.cohort.readers.cohort_from_config` set it) it checked the brains for (``brain_mask``).

    With ``skip_invalid`` the failing subjects are logged and dropped (nnU-Net's "reject and
    continue", reasons in the returned ``excluded``) and the rest is returned; otherwise the first failure raises.

    Only the cohort's ``sequences`` are checked. A subject lacking some of them (never all) is handled by
    ``missing_sequences`` (``data.cohort.missing_sequences``, one of :data:`MISSING_SEQUENCE_POLICIES`):
    ``impute`` keeps it (its features of those sequences are NaN with a ``<sequence>_missing`` indicator,
    imputed in-fold; its ROI channel is zero), ``skip`` drops it, ``error`` makes it a validation failure
    (raised, or dropped with ``skip_invalid``); ``auto`` is ``error`` with ``skip_invalid``, else ``impute``.

    ``cache_dir``: remember passed subjects under ``<cache_dir>/validation/``, keyed by their files' stamps
    and these settings (:mod:`radfusion.cohort.validation_cache`); None checks every subject.
    """
    policy = missing_sequence_policy(missing_sequences, skip_invalid)
    brain_mask = cohort.brain_mask if brain_mask is None else brain_mask
    if brain_mask not in BRAIN_MASKS:  # a config error, not one per subject
        raise CohortError(f"data.cohort.brain_mask must be one of {list(BRAIN_MASKS)}, got {brain_mask!r}")
    ids = cohort.ids
    kept, failures, reused = [], {}, 0  # failures: subject -> reason
    # An id on several rows (manifest or clinical table) is ambiguous: which row's images and labels
    # are meant cannot be told, so every row of it is a failure; skip_invalid drops them all, by name.
    n_rows = Counter(cohort.clinical.index)
    dup = {i: max(n, n_rows[i]) for i, n in sorted(Counter(ids).items()) if max(n, n_rows[i]) > 1}
    for i, n in dup.items():
        failures[i] = (f"subject {i}: duplicate subject_id ({n} rows of the manifest / clinical table; which one is "
                       "meant is ambiguous): give each scan its own subject_id, or a timepoint on every row of a "
                       "longitudinal cohort")
        if not skip_invalid:
            raise CohortError(f"duplicate subject_id(s) in cohort: {list(dup)[:5]}{' …' if len(dup) > 5 else ''} "
                              f"({failures[i]}); or set data.cohort.skip_invalid=true to drop every row of them")
        log.error("skipping invalid subject: %s", failures[i])
    for s in cohort.subjects:
        if s.subject_id in dup:
            continue
        try:
            missing = s.missing_sequences(cohort.sequences)
            if missing and policy == "skip" and len(missing) < len(cohort.sequences):
                failures[s.subject_id] = (f"subject {s.subject_id}: lacks sequence(s) {missing} "
                                          "(data.cohort.missing_sequences=skip)")
                log.warning("skipping subject: %s", failures[s.subject_id])
                continue
            settings = {"label_convention": cohort.label_convention, "tolerance": tolerance,
                        "brain_mask": brain_mask, "sequences": list(cohort.sequences), "policy": policy}
            reused += validate_with_cache(s, settings, cache_dir, functools.partial(
                validate_subject, s, cohort.label_convention, tolerance, brain_mask=brain_mask,
                sequences=cohort.sequences, allow_missing=policy == "impute"))
            kept.append(s)
        except CohortError as err:
            if not skip_invalid:
                raise
            failures[s.subject_id] = str(err)
            log.error("skipping invalid subject: %s", err)
    if reused:
        log.info("validation: %d of %d subjects unchanged since they passed (cache/validation/)", reused, len(ids))
    if failures:
        log.warning("%d of %d subjects failed validation and were skipped", len(failures), len(ids))
    if len(kept) < min_subjects:
        raise CohortError(f"only {len(kept)} valid subjects; at least {min_subjects} are needed")
    lacking = {s.subject_id: m for s in kept if (m := s.missing_sequences(cohort.sequences))}
    if lacking:  # their values are imputed, not measured: say so once
        log.warning("%d of %d subjects lack a sequence, kept with NaN features + <sequence>_missing and a zero ROI "
                    "channel (data.cohort.missing_sequences=impute): %s", len(lacking), len(kept), lacking)
    clinical = cohort.clinical.loc[[s.subject_id for s in kept]]
    return Cohort(kept, clinical, cohort.label_convention, cohort.root, geometry_tolerance=tolerance,
                  brain_mask=brain_mask, sequences=cohort.sequences, excluded={**cohort.excluded, **failures})
