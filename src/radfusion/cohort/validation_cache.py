"""Remember which subjects passed validation, so a warm run does not re-read every file to re-check it.

Validation (:func:`radfusion.cohort.validate.validate_subject`) reads every image completely (gzip CRC
and length, finite intensities, labels, geometry): ~17 s of a 25 s warm data preparation on the default
cohort, spent again by every run of a multirun and every Optuna trial. A passed check is stored under
``<cache_dir>/validation/<key>.json`` (atomic JSON writes, :mod:`radfusion.cache`), the key being the
SHA-1 of

- the subject's files as the file system describes them: path, size, ``mtime_ns`` and ``ctime_ns`` of
  every image, the mask and the brain mask (``os.stat`` only: looking the entry up reads no file; a
  content checksum would cost the very read this cache removes);
- the validation settings: label convention, geometry tolerance, brain-mask choice, the cohort's
  sequences, the missing-sequence policy;
- the source of the checks themselves (``validate.py`` + ``integrity.py``), so stricter checks
  re-validate everything once.

A file that is edited, replaced, re-copied or merely touched gets a new stamp and its subject is checked
again (``ctime`` changes even when a tool restores the old ``mtime``). Failures are never stored: a
subject that failed is checked again next time (its error message is what the user needs, and the
cause may be gone). Deleting ``cache/validation/`` is always safe; ``data.cohort.validation_cache=false``
switches the cache off.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from radfusion.cache import CacheWriteError, atomic_write_text, canonical_json, settings_hash, text_sha1
from radfusion.cohort.subject import Subject

log = logging.getLogger(__name__)

#: Folder under the cache root.
FOLDER = "validation"


@functools.cache
def checks_fingerprint() -> str:
    """SHA-1 of the source of the validation checks (``validate.py`` and ``integrity.py``)."""
    here = Path(__file__).resolve().parent
    try:
        return text_sha1(b"".join((here / name).read_bytes() for name in ("validate.py", "integrity.py")))
    except OSError:  # no source files (a zipped install): the package version stands in for them
        from radfusion import __version__

        return f"version:{__version__}"


def file_stamp(path: str | Path) -> list:
    """``[path, size, mtime_ns, ctime_ns]`` of a file (raises OSError when it cannot be stat'ed)."""
    st = os.stat(path)
    return [str(path), int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns)]


def subject_key(subject: Subject, settings: dict[str, Any]) -> str | None:
    """The cache key of one subject's validation under ``settings``; None when a file cannot be stat'ed
    (the check itself then reports the file)."""
    try:
        files = {f"image:{seq}": file_stamp(p) for seq, p in sorted(subject.images.items())}
        files["seg"] = None if subject.seg is None else file_stamp(subject.seg)
        files["brainmask"] = None if subject.brainmask is None else file_stamp(subject.brainmask)
    except OSError:
        return None
    return settings_hash({"subject": subject.subject_id, "files": files, "absent": dict(subject.absent),
                          "settings": settings, "checks": checks_fingerprint()}, length=None)


def entry_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / FOLDER / f"{key}.json"


def validate_with_cache(subject: Subject, settings: dict[str, Any], cache_dir: str | Path | None,
                        check: Callable[[], None]) -> bool:
    """Run ``check()`` (the full validation of ``subject``) unless a stored pass for the same files and
    ``settings`` exists; store a pass. Returns True when the stored pass was used.

    ``check`` raises :class:`~radfusion.cohort.subject.CohortError` on a failure, which propagates and
    is not stored. A cache that cannot be written only costs the next run a re-validation (logged).
    """
    key = None if cache_dir is None else subject_key(subject, settings)
    if key is None:
        check()
        return False
    path = entry_path(cache_dir, key)
    try:
        if json.loads(path.read_text()).get("ok") is True:
            return True
    except (OSError, ValueError, AttributeError):  # absent, unreadable or half-written by hand: check again
        pass
    check()
    entry = {"ok": True, "subject_id": subject.subject_id, "settings": settings,
             "files": [str(p) for p in (*subject.images.values(), subject.seg, subject.brainmask) if p is not None]}
    try:
        atomic_write_text(path, canonical_json(entry) + "\n")
    except CacheWriteError as err:
        log.warning("validation cache not written (%s): the next run validates %s again", err, subject.subject_id)
    return False
