"""Batch samplers for survival training: every mini-batch gets events.

A Cox partial likelihood computed on a mini-batch only sees the risk sets inside that batch, and a
batch without a single event contributes nothing at all (zero loss, zero gradient). With ~40 %
censoring and batches of 8, plain shuffling produces such batches regularly. :class:`EventBatchSampler`
deals the events out like cards, so the events of an epoch are spread as evenly as possible over
its batches; the censored subjects fill the rest. See ``docs/survival.md``.

Under DDP every sampler here shards itself (``rank``, ``world_size``), so training sets
``Trainer(use_distributed_sampler=False)``: :class:`EventBatchSampler` deals the events over the
batches of all ranks and gives each rank the same number of batches; :class:`ShardSampler` splits an
evaluation set without padding, so gathered epoch metrics see every subject exactly once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

log = logging.getLogger(__name__)


class EventBatchSampler(Sampler[list[int]]):
    """Shuffled batches of dataset indices with at least ``min_events`` events each (when possible).

    Args:
        events: ``(N,)`` event indicator per dataset index (1 = event, 0 = censored; NaN = unknown
            survival, treated as censored since the loss masks it anyway).
        batch_size: largest batch size. Without ``drop_last`` the ``ceil(N / batch_size)`` batches
            have balanced sizes (they differ by at most one), so there is no one-subject tail batch.
        min_events: events wanted per batch. Guaranteed whenever the data have at least
            ``min_events * n_batches`` events; otherwise a warning is logged once and the events are
            still spread as evenly as possible (counts differ by at most one).
        seed: base seed; the order of epoch ``e`` depends only on ``(seed, e)``.
        drop_last: use ``floor(N / batch_size)`` full batches; the subjects left out of an epoch are
            drawn from the censored ones first, so no event is wasted.
        rank, world_size: DDP shard. The epoch's batches are formed over all subjects (a multiple of
            ``world_size`` of them, events dealt over all) and rank ``r`` takes every ``world_size``-th
            one, so every rank gets the same number of batches, each with its share of the events.

    Use it as ``DataLoader(dataset, batch_sampler=EventBatchSampler(...))``. Every ``iter()`` is the
    next epoch (0, 1, 2, …). Lightning 2.x calls ``set_epoch`` only on ``loader.sampler`` and
    ``loader.batch_sampler.sampler``, not on a batch sampler, so within one ``fit`` the iteration
    count is the epoch; call :meth:`set_epoch` (e.g. in ``on_train_epoch_start`` with
    ``trainer.current_epoch``) to make a resumed run replay the same orders.
    """

    def __init__(self, events: np.ndarray, batch_size: int, min_events: int = 2, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1) -> None:
        events = np.asarray(events, dtype=np.float64).reshape(-1)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"EventBatchSampler: need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        if batch_size < 1:
            raise ValueError(f"EventBatchSampler: batch_size must be >= 1, got {batch_size}")
        if min_events < 0 or min_events > batch_size:
            raise ValueError(f"EventBatchSampler: min_events must be in [0, batch_size={batch_size}], "
                             f"got {min_events}")
        bad = ~np.isnan(events) & (events != 0) & (events != 1)
        if bad.any():
            raise ValueError(f"EventBatchSampler: event indicators must be 0, 1 or NaN; index "
                             f"{int(np.argmax(bad))} has {events[bad][0]}")
        self.is_event = events == 1
        self.batch_size = int(batch_size)
        self.min_events = int(min_events)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        n = len(events)
        per_rank = (n // (self.batch_size * self.world_size) if self.drop_last
                    else math.ceil(n / (self.batch_size * self.world_size)))
        #: batches of one epoch over all ranks (``len(self)`` is this rank's share)
        self.n_batches = per_rank * self.world_size
        if n and self.n_batches == 0:
            raise ValueError(f"EventBatchSampler: {n} subjects are fewer than batch_size={batch_size} x "
                             f"world_size={world_size} with drop_last=True; no batch can be formed")
        if not self.drop_last and n < self.n_batches:
            raise ValueError(f"EventBatchSampler: {n} subjects cannot fill {self.n_batches} batches "
                             f"({world_size} ranks); use fewer devices")
        n_events = int(self.is_event.sum())
        need = self.min_events * self.n_batches
        if n_events < need:
            log.warning(
                "EventBatchSampler: %d events for %d batches of up to %d; %d are needed for %d events "
                "per batch, so some batches get fewer%s. Use a larger batch size (fewer batches) or "
                "full-batch training.", n_events, self.n_batches, self.batch_size, need, self.min_events,
                " (none: every Cox loss term is zero)" if n_events == 0 else "")

    def __len__(self) -> int:
        return self.n_batches // self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the (deterministic) order of epoch ``epoch``."""
        self.epoch = int(epoch)

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch``: a pure function of ``(seed, epoch, rank, world_size)``."""
        return self.all_batches(epoch)[self.rank::self.world_size]

    def all_batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch`` over all ranks: a pure function of ``(seed, epoch)``."""
        rng = np.random.default_rng([self.seed, epoch])
        event_idx = rng.permutation(np.flatnonzero(self.is_event))
        other_idx = rng.permutation(np.flatnonzero(~self.is_event))
        n = len(self.is_event)
        if self.drop_last:
            sizes = np.full(self.n_batches, self.batch_size)
            n_used = int(sizes.sum())
            # Leave out censored subjects first (events are the scarce resource of a Cox loss).
            n_censored_used = max(0, n_used - len(event_idx))
            other_idx = other_idx[:n_censored_used]
            event_idx = event_idx[: n_used - len(other_idx)]
        else:
            base, extra = divmod(n, max(self.n_batches, 1))
            sizes = np.array([base + (b < extra) for b in range(self.n_batches)])
        # Deal the events one per batch in turn, skipping full batches: the event counts then
        # differ by at most one between batches that are not full.
        n_ev = np.zeros(self.n_batches, dtype=int)
        b = 0
        for _ in range(len(event_idx)):
            while n_ev[b] >= sizes[b]:
                b = (b + 1) % self.n_batches
            n_ev[b] += 1
            b = (b + 1) % self.n_batches
        batches, e_pos, o_pos = [], 0, 0
        for size, k in zip(sizes, n_ev, strict=True):
            members = np.concatenate([event_idx[e_pos:e_pos + k], other_idx[o_pos:o_pos + size - k]])
            e_pos, o_pos = e_pos + k, o_pos + size - k
            batches.append(rng.permutation(members).tolist())
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        # Used without set_epoch (outside Lightning), the next iteration is a new epoch.
        self.epoch += 1
        yield from self.batches(epoch)


class ShardSampler(Sampler[int]):
    """Rank ``rank``'s share ``rank, rank + world_size, ...`` of ``n`` indices, in order and without
    padding (evaluation under DDP: gathered outputs then hold every subject exactly once; ranks may
    differ by one subject)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"ShardSampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if 0 < n < world_size:
            # A rank without a single batch would skip the epoch's end and leave the others waiting in the gather.
            raise ValueError(f"ShardSampler: {n} subjects cannot be shared by {world_size} processes "
                             "(each needs at least one); use fewer devices or a larger split")
        self.indices = list(range(int(rank), int(n), int(world_size)))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def training_loader(dataset: Dataset, batch_size: int, seed: int, events: np.ndarray | None = None,
                    min_events: int = 2, rank: int = 0, world_size: int = 1, num_workers: int = 0) -> DataLoader:
    """The shuffled training loader; epoch ``e``'s order depends only on ``(seed, e)`` and the shard.

    With ``events`` (survival) an :class:`EventBatchSampler`, else torch's :class:`DistributedSampler`
    (also with one process: it has ``set_epoch``, which Lightning calls, and is seeded by ``seed + epoch``
    instead of the global RNG, so a resumed run replays the same orders). A last batch of one subject
    makes BatchNorm statistics meaningless: it is dropped. The loader has its own generator, so creating
    its iterator (which draws the workers' base seed) leaves the global torch RNG (dropout) untouched.
    """
    persistent = num_workers > 0
    generator = torch.Generator().manual_seed(int(seed))
    if events is not None:
        sampler = EventBatchSampler(events, batch_size, min_events=min_events, seed=seed, rank=rank,
                                    world_size=world_size)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, persistent_workers=persistent,
                          generator=generator)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    per_rank = len(sampler)
    drop_last = per_rank % batch_size == 1 and per_rank > batch_size
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=num_workers, persistent_workers=persistent, generator=generator)


def evaluation_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                      num_workers: int = 0) -> DataLoader:
    """In-order loader of this rank's :class:`ShardSampler` share (everything with one process); its own
    generator keeps the global torch RNG out of it (see :func:`training_loader`)."""
    sampler = ShardSampler(len(dataset), rank, world_size) if world_size > 1 else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(0))
