"""Independent pieces of a stage (tables, files, a local engine's partitions) worked on two at a time, in
threads of this process; and the next item of a stream made by a thread while the caller works on one.

For work that spends its time outside the GIL (Arrow's readers and compute, the Parquet encoder,
the compiled hash kernels): two such pieces at once keep two cores busy, where one after the
other keeps one. Results that wait for the caller are held in memory: a caller of large results
bounds how many (``held``), and each piece must be bounded (read and written in batches, a
partition of bounded rows).
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from profiling.checks import check_int

__all__ = ["LARGE_RESULTS_HELD", "PIECES_AT_ONCE", "available_cores", "made_ahead", "two_at_a_time"]

T = TypeVar("T")
R = TypeVar("R")

# Pieces worked on at once: two cores' worth (the machines measured have two); more would hold more rows.
PIECES_AT_ONCE = 2
# A ``held`` bound for large results: both threads at work and one piece more, so a thread goes on to the next
# piece while the caller waits for a slower one.
LARGE_RESULTS_HELD = PIECES_AT_ONCE + 1
# What ``made_ahead``'s thread gives past the last item (an item may be None).
_END = object()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def two_at_a_time(work: Callable[[T], R], items: Iterable[T], *, name: str, held: int | None = None) -> Iterator[R]:
    """``work(item)`` for every item, ``PIECES_AT_ONCE`` at a time (one where one core is available), each
    result yielded in the items' order.

    ``held`` bounds the pieces started (or waiting for a thread) and not yet taken by the caller, so
    at most that many results wait in memory besides the one the caller holds; items are taken from
    ``items`` as the caller takes results. A bound of more than two lets a thread go on to the next
    piece while the caller waits for a slower one. None: no bound (every item is queued at once; for
    small results). The first call that raises raises here, at its item's turn; items not started by
    then are never started, and the calls running finish before the error (or a caller that stops
    early) leaves. ``name`` names the threads (seen in profilers and tracebacks).
    """
    at_once = min(PIECES_AT_ONCE, available_cores())
    held = None if held is None else check_int(held, "held")
    upcoming = iter(items)
    started: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix=name) as workers:

        def start(count: int | None) -> None:
            for item in itertools.islice(upcoming, count):
                started.append(workers.submit(work, item))

        try:
            start(held)
            while started:
                result = started[0].result()
                started.popleft()
                start(1)     # queued while the caller takes this result
                yield result
        finally:
            for future in started:
                future.cancel()


def made_ahead(items: Iterator[T], *, name: str) -> Iterator[T]:
    """``items`` in order, each next one made by a thread while the caller works on the one before (two held).

    For a stream whose making and whose use both spend their time outside the GIL (reading and writing
    Parquet, hashing). An error making an item raises here, at its turn; a caller that stops early
    waits for the item being made. ``name`` names the thread.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) as worker:
        upcoming = worker.submit(next, items, _END)
        while (item := upcoming.result()) is not _END:
            upcoming = worker.submit(next, items, _END)
            yield item
