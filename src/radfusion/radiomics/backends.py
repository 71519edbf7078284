"""Run one task list on this machine (joblib/loky processes) or on a Dask distributed cluster.

Both backends receive the same tasks and the same (picklable, top-level) function, and yield
results as they complete. Memory stays bounded: loky dispatches at most ``2 * n_jobs`` tasks ahead,
and Dask results are released as soon as they have been read. Neither backend is a scheduler of
ours: joblib and Dask do the scheduling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

log = logging.getLogger(__name__)


def run_tasks(fn: Callable[[Any], Any], tasks: list, backend: str = "loky", n_jobs: int = 1,
              scheduler: Any = None) -> Iterator[Any]:
    """Yield ``fn(task)`` for every task, in completion order.

    Args:
        fn: a module-level function (or ``functools.partial`` of one) that never raises; workers
            must be able to import it (``pip install -e .`` on every Dask worker).
        tasks: picklable task descriptions.
        backend: ``"loky"`` (``n_jobs`` processes here; 1 = in this process) or ``"dask"``.
        n_jobs: worker processes (loky, or the LocalCluster Dask starts when no scheduler is given).
        scheduler: Dask scheduler address (``tcp://host:8786``) or a ``distributed.Client``;
            None starts a LocalCluster with ``n_jobs`` single-threaded worker processes.
    """
    if not tasks:
        return iter(())
    if backend == "dask":
        return _dask(fn, tasks, n_jobs, scheduler)
    if backend != "loky":
        raise ValueError(f"unknown backend {backend!r}; use 'loky' or 'dask'")
    if n_jobs == 1 or len(tasks) == 1:
        return (fn(t) for t in tasks)
    from joblib import Parallel, delayed

    runner = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered", pre_dispatch="2*n_jobs")
    return iter(runner(delayed(fn)(t) for t in tasks))


def _dask(fn: Callable[[Any], Any], tasks: Iterable, n_jobs: int, scheduler: Any) -> Iterator[Any]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError("features.backend=dask needs dask[distributed]: pip install 'dask[distributed]'") from err

    cluster = None
    if isinstance(scheduler, Client):
        client, own_client = scheduler, False
    elif scheduler:
        client, own_client = Client(scheduler), True
    else:
        # Processes, one thread each: PyRadiomics and our logging capture are not thread-safe.
        cluster = LocalCluster(n_workers=max(1, n_jobs), threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client, own_client = Client(cluster), True
    log.info("dask: running on %s", client.scheduler.address if client.scheduler else scheduler)
    try:
        futures = [client.submit(fn, t, pure=False) for t in tasks]
        for future in as_completed(futures):
            result = future.result()
            future.release()
            yield result
    finally:
        if own_client:
            client.close()
        if cluster is not None:
            cluster.close()
