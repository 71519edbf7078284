"""Content checksums and atomic writes for the on-disk caches.

Every cached artefact is keyed by a hash of exactly the settings that produce it plus a checksum
of the input files' *contents* (not their mtimes: copying a cohort must not invalidate it).
Files are written to a temporary name and renamed, so a killed run never leaves a half-written
entry that a rerun would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def file_sha1(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-1 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def files_sha1(paths: Iterable[str | Path | None]) -> str:
    """One checksum over several files (order matters; None entries count as absent)."""
    h = hashlib.sha1()
    for p in paths:
        h.update(b"-" if p is None else file_sha1(p).encode())
    return h.hexdigest()


def settings_hash(settings: object, length: int = 12) -> str:
    """Stable short hash of a JSON-serialisable settings object (keys sorted)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (.npy) via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
