"""The linking rule's one definition, read by the in-memory reference and by the engine kernels alike.

A device is *trusted* for its account once that account signed in on it on at least
``TRUSTED_AFTER_DAYS`` distinct UTC calendar days: a device seen once (an intruder's one sign-in on a
taken-over account, a phone borrowed for an evening) joins nobody until it is used again on another day.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["LINKING_RULE", "TRUSTED_AFTER_DAYS", "utc_days"]

TRUSTED_AFTER_DAYS = 2  # distinct UTC days the only account of a device signed in on it before the device joins it

LINKING_RULE = (f"devices of one account only, signed in on {TRUSTED_AFTER_DAYS} or more distinct UTC days; "
                "accounts never linked")

_UNITS_PER_DAY = {"s": 86_400, "ms": 86_400 * 10**3, "us": 86_400 * 10**6, "ns": 86_400 * 10**9}


def utc_days(times: pa.Array) -> np.ndarray:
    """UTC calendar day (days since 1970-01-01, int64) of each time of ``times``, a timestamp array with a time zone
    and no nulls: the instant is stored in UTC whatever the zone, so the day is the UTC day on every engine."""
    since_epoch = times.cast(pa.int64()).to_numpy(zero_copy_only=False)
    return np.floor_divide(since_epoch, _UNITS_PER_DAY[times.type.unit])
