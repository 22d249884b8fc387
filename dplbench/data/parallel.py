"""Run independent tasks (one shard each) in-process, over local cores, or as Ray tasks.

All three paths yield results as tasks finish. The Ray path is the only place in the data layer
that imports Ray: each task writes its shard to the (shared) output path itself, so only small
results travel back to the driver.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


def run_tasks(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    workers: int = 1,
    ray_address: str | None = None,
    ordered: bool = False,
) -> Iterator[R]:
    """Yield `fn(task)` for every task, in completion order (task order if `ordered`).

    `ray_address` (e.g. "auto", "ray://head:10001", "local") runs each task as a Ray task on
    the cluster; `fn` and the package must be importable on every node and the output path
    shared. Otherwise `workers` > 1 uses a process pool, and 1 runs in this process.
    """
    if not tasks:
        return
    if ray_address:
        yield from _run_ray(fn, tasks, ray_address, ordered)
    elif workers > 1 and len(tasks) > 1:
        # fork: workers inherit the imported modules (no per-worker torch import); tasks only
        # read files and write tars, no threads or CUDA state are involved.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(min(workers, len(tasks))) as pool:
            yield from (pool.imap if ordered else pool.imap_unordered)(fn, tasks)
    else:
        for task in tasks:
            yield fn(task)


def _run_ray(fn: Callable[[T], R], tasks: Sequence[T], address: str, ordered: bool) -> Iterator[R]:
    import ray  # only on this path: the data layer runs without Ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    log.info("submitting %d shard tasks to Ray at %s", len(tasks), address)
    remote = ray.remote(num_cpus=1)(fn)
    pending = [remote.remote(t) for t in tasks]
    if ordered:
        for ref in pending:
            yield ray.get(ref)
        return
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
