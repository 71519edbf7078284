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
:func:`atomic_write` (an open temporary file), the shortcuts :func:`atomic_write_text` and
:func:`atomic_save_npy`, and :func:`write_feature_parquet` for wide feature tables. A write that
fails for a reason of the disk (read-only, permission, full, over quota, a file where a folder
should be) raises :class:`CacheWriteError`, naming the path and
the fix, and leaves no temporary behind; :func:`ensure_writable` probes a cache folder before any
work is done, and :func:`remove_stale_temporaries` clears what killed processes left.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

log = logging.getLogger(__name__)

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


#: errno values that say "this disk or folder cannot take the write", with the words used for them.
WRITE_ERRNOS: dict[int, str] = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a file is where a folder should be",
    errno.EEXIST: "a file is where a folder should be",
}


class CacheWriteError(OSError):
    """A cache (or other radfusion output) cannot be written: the path, why, and what to do.

    An :class:`OSError` (``errno``, ``filename`` set), so ``except OSError`` still catches it; its
    message is one line a user can act on instead of an errno deep inside a writer. It is a
    run-level error: every later write to the same disk would fail the same way, so callers stop
    rather than record it as a failure of one subject. It pickles (it crosses from worker processes).
    """

    def __init__(self, err_no: int | None, path: str | Path, what: str = "", detail: str = "") -> None:
        reason = WRITE_ERRNOS.get(err_no, os.strerror(err_no) if err_no else "write failed")
        super().__init__(err_no, reason, str(path))
        self.what, self.detail = what, detail
        where = f"the {what} at {path}" if what else str(path)
        if err_no in (errno.ENOSPC, errno.EDQUOT):
            fix = "free space on that disk, or set paths.cache_dir=<a folder on a disk with space>"
        elif err_no in (errno.ENOTDIR, errno.EEXIST):
            fix = "remove or rename that file, or set paths.cache_dir=<a writable folder>"
        else:
            fix = "set paths.cache_dir=<a writable folder>"
        self.message = f"cannot write {where} ({reason}{'; ' + detail if detail else ''}): {fix}"

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return type(self), (self.errno, self.filename, self.what, self.detail)


def is_write_error(err: BaseException) -> bool:
    """True for an :class:`OSError` whose errno says the disk or folder cannot take a write."""
    return isinstance(err, OSError) and getattr(err, "errno", None) in WRITE_ERRNOS


def make_dirs(folder: str | Path, what: str = "") -> Path:
    """``folder`` and its parents, created if needed; a disk problem raises :class:`CacheWriteError`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if not is_write_error(err):
            raise
        # A file in the way may be any parent: name it, it is what the user has to move.
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        raise CacheWriteError(err.errno, folder, what, f"{blocker} is a file" if blocker else "") from None
    return folder


def _discard(tmp: Path) -> None:
    # Cleanup must never hide the error that made it necessary.
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends
    normally, deleted when it raises (also on KeyboardInterrupt).

    The temporary name is hidden and ends in ``.tmp`` + ``suffix``: globs for the real files'
    extension do not see a stray one left by a killed process, while writers that choose the
    format from the extension (SimpleITK, nibabel) get it with ``suffix=".nii.gz"``. The process
    id and a random token keep concurrent writers (processes or threads) apart. The file is
    created by the writer, so it gets the usual umask permissions.

    An :class:`OSError` of the disk (:data:`WRITE_ERRNOS`: read-only, permission, full, quota, a
    file in the way), raised by the writer, the rename or the folder's creation, becomes a
    :class:`CacheWriteError` naming ``path``; any other exception passes unchanged.
    """
    path = Path(path)
    make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        _discard(tmp)
        if is_write_error(err) and not isinstance(err, CacheWriteError):
            raise CacheWriteError(err.errno, path) from None
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


def write_feature_parquet(df, path: str | Path) -> None:
    """``df.to_parquet(path)`` atomically, without ``df.attrs``, and fast for wide float tables.

    A habitat feature table has ~27,000 float columns; pandas converts them to Arrow one column
    at a time through ``DataFrame.__getitem__`` (3.7 s for a 4-subject table, against 1.0 s here:
    a fixed cost of every extraction run). When every column is float64 with a unique string name and the index is a
    single named one, the Arrow table is built from the numpy columns directly, with the pandas
    metadata of the same frame's first column extended to all: ``pd.read_parquet`` returns an
    equal frame (``tests/test_radiomics_cache.py``). Anything else takes ``to_parquet``.
    ``df.attrs`` (failures, input checksums) are run bookkeeping, not part of the table.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    plain = df.copy(deep=False)
    plain.attrs = {}
    cols = list(plain.columns)
    fast = (plain.shape[1] > 0 and not isinstance(plain.columns, pd.MultiIndex)
            and not isinstance(plain.index, pd.MultiIndex) and plain.index.name is not None
            and plain.index.name not in set(cols) and plain.columns.is_unique
            and all(isinstance(c, str) for c in cols) and bool((plain.dtypes == np.float64).all()))
    with atomic_path(path) as tmp:
        if not fast:
            plain.to_parquet(tmp)
            return
        head = pa.Table.from_pandas(plain.iloc[:, :1])  # the index column and the pandas metadata
        meta = json.loads(head.schema.metadata[b"pandas"])
        entry = meta["columns"][0]
        meta["columns"] = [{**entry, "name": c, "field_name": c} for c in cols] + meta["columns"][1:]
        values = plain.to_numpy()
        arrays = [pa.array(values[:, j]) for j in range(values.shape[1])] + head.columns[1:]
        table = pa.Table.from_arrays(arrays, names=cols + head.column_names[1:])
        table = table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})
        pq.write_table(table, tmp, use_dictionary=False, write_statistics=False)


# --------------------------------------------------------------------------------------------
# Before the work: is the cache writable? After a crash: what did killed writers leave?
# --------------------------------------------------------------------------------------------

#: Free space below which :func:`ensure_writable` warns (a run may need far more).
LOW_SPACE_BYTES = 200 * 1024 * 1024

_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp(\..*)?$")


def ensure_writable(folder: str | Path, what: str = "cache") -> Path:
    """Create ``folder`` and write (then delete) a small file in it, so that a read-only, full or
    misplaced cache is reported before minutes of work, not after; warns when little space is left.

    Raises:
        CacheWriteError: naming ``the <what> at <folder>``, why and the fix.
    """
    folder = make_dirs(folder, what)
    probe = folder / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(probe, "wb") as f:
            f.write(b"radfusion write probe\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        _discard(probe)
        if not is_write_error(err):
            raise
        raise CacheWriteError(err.errno, folder, what) from None
    _discard(probe)
    free = shutil.disk_usage(folder).free
    if free < LOW_SPACE_BYTES:
        log.warning("only %.0f MB free on the disk of the %s at %s; a full disk stops the run "
                    "(set paths.cache_dir=<a folder on a disk with space>)", free / 2**20, what, folder)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | Path, min_age_s: float = 3600.0) -> int:
    """Delete the temporaries of :func:`atomic_path` under ``folder`` that a killed process left:
    those whose writer (the process id in the name) is not running on this machine and that are at
    least ``min_age_s`` old (the age protects writers on other machines sharing the folder, whose
    process ids mean nothing here; a write takes seconds). Returns how many were deleted."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    now, removed = time.time(), 0
    for path in folder.rglob(".*.tmp*"):
        match = _TEMPORARY.match(path.name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            if now - path.stat().st_mtime >= min_age_s:
                path.unlink()
                removed += 1
        except OSError:  # gone meanwhile, or not ours to delete
            continue
    if removed:
        log.info("removed %d temporary file(s) left by killed writers under %s", removed, folder)
    return removed
