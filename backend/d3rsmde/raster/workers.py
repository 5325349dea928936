"""Model calls in a few worker threads, each with its own share of torch's intra-op threads, results in order.

On a CPU the model's many small kernels each end in an OpenMP barrier, and one call spread over all cores leaves
them waiting on each other (whole rasters kept 1.6 of 2 cores busy). Two calls at once, each on half the cores,
need no barrier between the halves: lean model, batches of 8 tiles of 256, 2-core Xeon, 60-68 instead of 81-89 ms
per tile; whole rasters 1.09-1.19x faster (README, Performance). OpenMP's thread count is per calling thread, so
a worker's setting leaves the caller's alone.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")


def default_workers(device: str | torch.device) -> int:
    """Two on a CPU that gives torch at least 2 threads; one on a GPU, which queues the work of one caller."""
    return 2 if torch.device(device).type == "cpu" and torch.get_num_threads() >= 2 else 1


class WorkerPool:
    """``map(fn, items)`` over ``workers`` threads, each running torch on its share of the caller's intra-op
    threads; at most ``workers`` items in flight (memory: one batch per worker). One worker calls ``fn`` in the
    caller's thread."""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor = None
        if workers > 1:
            threads = max(torch.get_num_threads() // workers, 1)
            self._executor = ThreadPoolExecutor(workers, thread_name_prefix="d3rsmde-infer",
                                                initializer=torch.set_num_threads, initargs=(threads,))

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:  # on an error or a cancel: drop what has not started, wait for the rest
            self._executor.shutdown(wait=True, cancel_futures=True)

    def map(self, fn: Callable[[Item], Result], items: Iterable[Item]) -> Iterator[tuple[Item, Result]]:
        """(item, fn(item)) in the order of ``items``; an exception in ``fn`` is raised here."""
        if self._executor is None:
            for item in items:
                yield item, fn(item)
            return
        pending: deque = deque()
        for item in items:
            pending.append((item, self._executor.submit(fn, item)))
            if len(pending) >= self.workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
