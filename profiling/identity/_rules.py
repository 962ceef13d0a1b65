"""The linking rule's one definition, read by the in-memory reference and by the engine kernels alike.

A device is *trusted* for its account once that account's first and last sign-in on it are at least
``TRUSTED_AFTER`` (24 hours) apart: a device seen for a few hours (an intruder's session on a taken-over
account, even one running across midnight UTC; a phone borrowed for an evening) joins nobody until it
is used again a day later.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

__all__ = ["LINKING_RULE", "TRUSTED_AFTER", "sign_in_ticks", "trusted"]

TRUSTED_AFTER = dt.timedelta(hours=24)  # first to last sign-in of a device's only account before the device joins it

LINKING_RULE = ("devices of one account only, its first and last sign-in on the device 24 hours or more apart; "
                "accounts never linked")

_TICKS_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def sign_in_ticks(times: pa.Array) -> np.ndarray:
    """The instants of ``times`` (a timestamp array without nulls) as int64 ticks of its own unit since the epoch
    (UTC, whatever the time zone it is written in); ``trusted`` reads them with that unit."""
    return times.cast(pa.int64()).to_numpy(zero_copy_only=False)


def trusted(first: np.ndarray, last: np.ndarray, unit: str) -> np.ndarray:
    """Whether a device is trusted for its only account, whose first and last sign-in on it were at ``first`` and
    ``last`` (int64 ticks of ``unit``, ``"s"``, ``"ms"``, ``"us"`` or ``"ns"``): ``last - first >= TRUSTED_AFTER``,
    exactly, in that unit (no rounding)."""
    per_second = _TICKS_PER_SECOND[unit]
    # the least whole number of ticks not shorter than TRUSTED_AFTER (microseconds are its finest part)
    threshold = -(-(TRUSTED_AFTER // dt.timedelta(microseconds=1)) * per_second // 10**6)
    return np.subtract(last, first) >= threshold
