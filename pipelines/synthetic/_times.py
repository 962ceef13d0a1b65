"""Time in the generator: int64 microseconds since 1970-01-01 UTC, the fixed dates, random times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from profiling.schema import TIMESTAMP

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = 1_000_000
_HOUR = 3_600 * _SECOND
_DAY = 24 * _HOUR
_BEIJING_OFFSET = 8 * _HOUR


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


_ACCOUNTS_FROM = _micros(datetime(2018, 1, 1, tzinfo=UTC))   # first account creation
_LISTINGS_FROM = _micros(datetime(2012, 1, 1, tzinfo=UTC))   # first catalogue listing
_POLICY_CHANGE = _micros(datetime(2019, 6, 10, tzinfo=UTC))  # the 2019-06 policy takes effect
_NEVER = np.iinfo(np.int64).max


def _timestamps(micros: np.ndarray) -> pa.Array:
    values = np.ascontiguousarray(micros, dtype=np.int64)
    return pa.Array.from_buffers(TIMESTAMP, len(values), [None, pa.py_buffer(values)])


def _uniform_between(rng: np.random.Generator, low: np.ndarray, high: np.ndarray | int) -> np.ndarray:
    """Microsecond times uniform in ``[low, high]`` (element-wise)."""
    span = np.maximum(np.asarray(high, dtype=np.int64) - low, 0)
    return low + (rng.random(len(low)) * span).astype(np.int64)


def _exponential_delay(rng: np.random.Generator, n: int, mean_days: float) -> np.ndarray:
    return (rng.exponential(mean_days * _DAY, n)).astype(np.int64) + _SECOND
