"""Content checksums and atomic writes: the one home of radfusion's cache plumbing.

Every cached artefact is keyed by a hash of exactly the settings that produce it plus a checksum
of the input files' *contents* (not their mtimes: copying a cohort must not invalidate it).
Files are written to a temporary name beside the target and renamed, so a killed run never
leaves a half-written entry that a rerun would trust.

Hashing:

- :func:`file_sha1` / :func:`files_sha1`: file contents;
- :func:`settings_hash`: a JSON-serialisable settings object (canonical JSON, see :func:`canonical_json`);
- :func:`text_sha1` / :func:`chunks_sha1`: anything else, as a string or a stream of byte chunks.

Every key built from these is stored somewhere (folder and file names of the feature, item, ROI,
embedding and split caches, segmentation sidecars): changing how any of them is computed
invalidates every user's caches. ``tests/test_radiomics_cache.py`` pins a few values.

Writing: :func:`atomic_path` (a temporary path for writers that want a file name),
:func:`atomic_write` (an open temporary file), and the shortcuts :func:`atomic_write_text` and
:func:`atomic_save_npy`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------


def chunks_sha1(chunks: Iterable[bytes | str]) -> str:
    """SHA-1 hex of the concatenated ``chunks`` (str as UTF-8), consumed one at a time (a
    generator of large buffers, e.g. model weights, is never held in memory at once)."""
    h = hashlib.sha1()
    for chunk in chunks:
        h.update(chunk.encode() if isinstance(chunk, str) else chunk)
    return h.hexdigest()


def text_sha1(text: str | bytes) -> str:
    """SHA-1 hex of a string (UTF-8) or of bytes."""
    return chunks_sha1([text])


def file_sha1(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-1 of a file's bytes, read in 1 MiB chunks."""
    with open(path, "rb") as f:
        return chunks_sha1(iter(lambda: f.read(chunk), b""))


def files_sha1(paths: Iterable[str | Path | None]) -> str:
    """One checksum over several files (order matters; None entries count as absent)."""
    return chunks_sha1(b"-" if p is None else file_sha1(p) for p in paths)


def canonical_json(obj: Any, compact: bool = False) -> str:
    """The JSON text settings are hashed from: keys sorted, non-JSON values (paths, ...) as ``str``.

    ``compact`` drops the blanks after ``,`` and ``:`` (the feature cache key's spelling; the
    other keys use json's default separators). The two spellings hash differently, so each key
    keeps the one it was created with.
    """
    separators = (",", ":") if compact else None
    return json.dumps(obj, sort_keys=True, default=str, separators=separators)


def settings_hash(settings: Any, length: int | None = 12, compact: bool = False) -> str:
    """Stable hash of a JSON-serialisable settings object: the SHA-1 hex of :func:`canonical_json`,
    cut to ``length`` characters (None: all 40)."""
    digest = text_sha1(canonical_json(settings, compact))
    return digest if length is None else digest[:length]


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends
    normally, deleted when it raises (also on KeyboardInterrupt).

    The temporary name is hidden and ends in ``.tmp`` + ``suffix``: globs for the real files'
    extension do not see a stray one left by a killed process, while writers that choose the
    format from the extension (SimpleITK, nibabel) get it with ``suffix=".nii.gz"``. The process
    id and a random token keep concurrent writers (processes or threads) apart. The file is
    created by the writer, so it gets the usual umask permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", fsync: bool = False,
                 encoding: str | None = None) -> Iterator[IO]:
    """An open temporary file (mode ``"w"`` or ``"wb"``) that replaces ``path`` once the block
    ends normally; see :func:`atomic_path`. ``fsync`` flushes it to disk before the rename (for
    entries a crash of the machine must not leave empty)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as f:
        yield f
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (.npy) atomically (see :func:`atomic_path`)."""
    with atomic_write(path, "wb") as f:
        np.save(f, array)
