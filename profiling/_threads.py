"""Independent pieces of a stage (tables, files) worked on two at a time, in threads of this process.

For work that spends its time outside the GIL (Arrow's readers and compute, the Parquet encoder,
the compiled hash kernels): two such pieces at once keep two cores busy, where one after the
other keeps one. Memory grows by what one more piece holds, so the pieces must each be bounded
(read and written in batches).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["PIECES_AT_ONCE", "available_cores", "two_at_a_time"]

T = TypeVar("T")
R = TypeVar("R")

# Pieces worked on at once: two cores' worth (the machines measured have two); more would hold more rows.
PIECES_AT_ONCE = 2


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def two_at_a_time(work: Callable[[T], R], items: Iterable[T], *, name: str) -> Iterator[R]:
    """``work(item)`` for every item, ``PIECES_AT_ONCE`` at a time (one where one core is available), each
    result yielded in the items' order.

    The first call that raises raises here, at its item's turn; items not started by then are never
    started, and the calls running finish before the error (or a caller that stops early) leaves.
    ``name`` names the threads (seen in profilers and tracebacks).
    """
    with ThreadPoolExecutor(max_workers=min(PIECES_AT_ONCE, available_cores()), thread_name_prefix=name) as workers:
        futures = [workers.submit(work, item) for item in items]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()
