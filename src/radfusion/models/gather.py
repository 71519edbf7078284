"""Epoch outputs of all DDP ranks in one place, so AUC and C-index are computed on the union.

AUC and Harrell's C are not decomposable: the mean of per-rank AUCs is not the AUC of the epoch. Each
rank keeps its per-batch outputs (dicts of numpy arrays); at epoch end :func:`gather_outputs` collects
every rank's list with ``torch.distributed.all_gather_object`` (any sizes, gloo or NCCL) and returns the
concatenation in rank order, the same on every rank. The evaluation loaders shard without padding
(:class:`radfusion.data.samplers.ShardSampler`), so the union holds every subject exactly once.
"""

from __future__ import annotations

import torch.distributed as dist


def world_size() -> int:
    """Processes in the default process group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_outputs(outputs: list[dict]) -> list[dict]:
    """``outputs`` of every rank, concatenated in rank order (``outputs`` itself with one process)."""
    n = world_size()
    if n == 1:
        return outputs
    gathered: list[list[dict] | None] = [None] * n
    dist.all_gather_object(gathered, outputs)
    return [rec for part in gathered for rec in (part or [])]
