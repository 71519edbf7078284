"""Loading torch files without executing code stored in them.

``torch.load`` without ``weights_only`` restrictions runs Python's full unpickler, which can execute any code a file
carries; a weights file from the internet or a colleague is then a program. Every torch file radfusion
reads (its own checkpoints, pretrained encoder weights, nnU-Net checkpoints) goes through
:func:`load_torch_file`: the weights-only unpickler, plus numpy scalars, dtypes and arrays (plain data
nnU-Net checkpoints store in their training log). A file that needs more (arbitrary pickled objects)
is refused with :class:`UnsafeLoadError` unless the caller passes ``allow_unsafe_load=True``, which the
user sets explicitly (``model.encoder.allow_unsafe_load=true``, ``model.allow_unsafe_load=true`` for
``scripts/segment.py``), and only for a file from a source they trust.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


class UnsafeLoadError(RuntimeError):
    """A torch file that the weights-only unpickler refuses; the message says why and how to opt in."""


def _numpy_globals() -> list:
    """numpy classes that reconstruct data only (scalars, dtypes, arrays), for ``torch.serialization.safe_globals``."""
    core = getattr(np, "_core", None) or np.core
    names = [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # numpy >= 1.25 pickles a dtype as its class, e.g. numpy.dtypes.Float64DType
        names += [getattr(dtypes, n) for n in dir(dtypes)
                  if n.endswith("DType") and isinstance(getattr(dtypes, n), type)]
    return names


def load_torch_file(path: str | Path, what: str = "torch file", allow_unsafe_load: bool = False,
                    map_location: str | torch.device = "cpu") -> object:
    """``torch.load`` with the weights-only unpickler (tensors, containers, numbers, strings, numpy data).

    Args:
        path: the file.
        what: what the file is, for messages (``"pretrained weights"``, ``"nnU-Net checkpoint"``).
        allow_unsafe_load: if the weights-only unpickler refuses the file, load it with the full
            unpickler (may execute code in the file). Only for files from a trusted source.

    Raises:
        FileNotFoundError: no such file.
        UnsafeLoadError: the file needs the full unpickler and ``allow_unsafe_load`` is false.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not allow_unsafe_load:
            raise UnsafeLoadError(
                f"{what} {path} cannot be loaded safely: it stores Python objects beyond tensors and plain data "
                f"({reason}). Loading it would run Python's full unpickler, which can execute code hidden in the "
                "file. If you trust the file's source, opt in with allow_unsafe_load=true (e.g. "
                "model.encoder.allow_unsafe_load=true); better, re-save it as a plain state dict: "
                "torch.save(obj['state_dict'], 'weights.pt').") from None
    log.warning("%s %s: loading with the full unpickler because allow_unsafe_load=true (the file's code runs)",
                what, path)
    # The one unsafe load in radfusion, reached only through the explicit opt-in above.
    return torch.load(path, map_location=map_location, weights_only=False)
