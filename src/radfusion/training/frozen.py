"""Frozen-encoder mode: pooled embeddings computed once per subject and cached on disk.

With ``model.encoder.frozen=true`` the backbone never changes, so its pooled multi-stage embedding
of a subject's (un-augmented) ROI is a constant. :func:`compute_embeddings` computes it once and
stores it as ``<cache>/embeddings/<Encoder>-<weights hash>/<ROI settings key>/<subject>-<input
checksum>.npy``: the key covers the backbone weights and stage selection, the ROI settings and the
content of the subject's image files, so any change makes a new entry and deleting the folder is
always safe. The datamodule then serves these ``(raw_features,)`` vectors in place of the ROI volumes
(:func:`use_frozen_encoder` hands them to
:meth:`RadFusionDataModule.set_embeddings` before training) and only the fusion head trains: one epoch is a few
small matrix products, so a sweep trial takes seconds on a CPU.

Augmentation does not apply in frozen mode (an augmented view would be a new embedding each epoch).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from radfusion.cache import atomic_save_npy

log = logging.getLogger(__name__)


class EmbeddingError(RuntimeError):
    """An embedding that could not be computed; the message names the subject and the ROI file."""


def embedding_dir(encoder: torch.nn.Module, cache_dir: str | Path, roi_key: str) -> Path:
    """Cache folder of one (encoder weights, ROI settings) pair."""
    return Path(cache_dir) / "embeddings" / f"{type(encoder).__name__}-{encoder.backbone_hash()[:16]}" / roi_key


def _load_roi(sid: str, path: Path) -> torch.Tensor:
    try:
        return torch.from_numpy(np.load(path).astype(np.float32))
    except (OSError, ValueError) as err:
        raise EmbeddingError(f"subject {sid}: cannot read ROI tensor {path}: {err}; delete it to rebuild") from err


def compute_embeddings(encoder: torch.nn.Module, roi_paths: dict[str, Path], cache_dir: str | Path,
                       batch_size: int = 8, device: str | torch.device | None = None,
                       progress: bool = False) -> dict[str, np.ndarray]:
    """Pooled embedding ``(encoder.raw_features,)`` float32 of every subject, from cache or computed.

    Args:
        encoder: a :class:`~radfusion.models.encoders.StageEncoder` (its backbone is used in eval mode;
            the caller's module is not modified).
        roi_paths: ROI tensor file per subject id (``cache/rois/<roi key>/<subject>-<checksum>.npy``).
        cache_dir: the run's cache root.
        batch_size: subjects per forward pass.
        device: where to compute (default: CUDA when available).

    Raises:
        EmbeddingError naming the subject and file when a ROI cannot be read or has the wrong number of
        channels; embeddings computed before the failure are kept on disk.
    """
    if not roi_paths:
        return {}
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out: dict[str, np.ndarray] = {}
    todo: list[tuple[str, Path, Path]] = []
    for sid, roi in roi_paths.items():
        roi = Path(roi)
        target = embedding_dir(encoder, cache_dir, roi.parent.name) / f"{roi.stem}.npy"
        if target.exists():
            try:
                out[sid] = np.load(target)
                continue
            except (OSError, ValueError):
                log.warning("subject %s: unreadable cached embedding %s; recomputing", sid, target)
        todo.append((sid, roi, target))
    if todo:
        log.info("frozen encoder: computing %d embedding(s) (%d cached) into %s", len(todo), len(out),
                 todo[0][2].parent)
        model = copy.deepcopy(encoder).to(device).eval()
        bar = tqdm(total=len(todo), desc="embeddings", disable=not progress)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            volumes = []
            for sid, roi, _ in chunk:
                x = _load_roi(sid, roi)
                if x.shape[0] != model.in_channels:
                    raise EmbeddingError(f"subject {sid}: ROI {roi} has {x.shape[0]} channels, the encoder expects "
                                         f"{model.in_channels} (model.encoder.in_channels vs data.roi)")
                volumes.append(x)
            with torch.no_grad():
                pooled = model.pooled(torch.stack(volumes).to(device)).float().cpu().numpy()
            for (sid, _, target), vec in zip(chunk, pooled, strict=True):
                atomic_save_npy(target, vec)
                out[sid] = vec
            bar.update(len(chunk))
        bar.close()
    dims = {v.shape for v in out.values()}
    if dims != {(encoder.raw_features,)}:
        raise EmbeddingError(f"cached embeddings have shapes {sorted(dims)}, the encoder gives "
                             f"({encoder.raw_features},); delete {Path(cache_dir) / 'embeddings'}")
    return out


def use_frozen_encoder(model: torch.nn.Module, dm) -> bool:
    """With a frozen image encoder, compute (or load) every subject's embedding once and hand the
    datamodule these instead of the ROI volumes. Training calls this before ``fit``; the model never
    reaches into the data. Returns whether embeddings are now served."""
    encoder = getattr(getattr(model, "net", None), "encoder", None)
    if not getattr(encoder, "frozen", False) or not dm.use_images:
        return False
    dm.set_embeddings(compute_embeddings(encoder, {s: dm.roi_paths[s] for s in dm.ids}, dm.cache_dir,
                                         batch_size=max(dm.batch_size, 8), progress=dm.progress))
    return True
