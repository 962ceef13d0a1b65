"""The parameters of one ``generate`` call: their checks, their batches and the worker processes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from pipelines.synthetic._times import _micros
from profiling._threads import available_cores
from profiling.checks import check_int

_MAX_ACCOUNTS = 9_999_999_999     # account ids have ten digits
_MAX_BATCHES = 99_999             # part-NNNNN and the batch digits of event ids
_MAX_BATCH_ACCOUNTS = 1_000_000   # keeps one batch's string columns under Arrow's 2 GB (int32 offsets)
_MAX_CATALOGUE_ITEMS = 10_000_000  # every worker holds the catalogue in memory (ids have room for 10^8)
_EARLIEST_UNTIL = datetime(2018, 3, 1, tzinfo=UTC)


@dataclass(frozen=True)
class _Run:
    """Parameters of one ``generate`` call (hashable: keys the per-process cache of ``_World``)."""

    accounts: int
    seed: int
    catalogue_items: int
    batch_accounts: int
    until: int  # microseconds

    @property
    def batches(self) -> int:
        return math.ceil(self.accounts / self.batch_accounts)

    def batch_accounts_range(self, batch_index: int) -> tuple[int, int]:
        first = batch_index * self.batch_accounts
        return first, min(self.batch_accounts, self.accounts - first)


def _checked_run(accounts: int, seed: int, catalogue_items: int, batch_accounts: int, until: datetime) -> _Run:
    """The run ``generate`` was asked for; ``ValueError`` names the first bad parameter."""
    accounts = check_int(accounts, "accounts", maximum=_MAX_ACCOUNTS)
    seed = check_int(seed, "seed", minimum=0, maximum=2 ** 63 - 1)
    catalogue_items = check_int(catalogue_items, "catalogue_items", maximum=_MAX_CATALOGUE_ITEMS)
    batch_accounts = check_int(batch_accounts, "batch_accounts", maximum=_MAX_BATCH_ACCOUNTS)
    if not isinstance(until, datetime) or until.tzinfo is None:
        raise ValueError(f"until must be a timezone-aware datetime, got {until!r}")
    if until < _EARLIEST_UNTIL:
        raise ValueError(f"until must be on or after {_EARLIEST_UNTIL:%Y-%m-%d} (accounts are created from "
                         f"2018-01-01), got {until.isoformat()}")
    run = _Run(accounts, seed, catalogue_items, batch_accounts, _micros(until.astimezone(UTC)))
    if run.batches > _MAX_BATCHES:
        raise ValueError(f"{accounts:,} accounts in batches of {batch_accounts:,} make {run.batches:,} batches, more "
                         f"than {_MAX_BATCHES:,}; raise batch_accounts")
    return run


def _workers(batches: int) -> int:
    """Processes to use: one per core (at most 4, each holds one batch in memory), no more than batches."""
    return max(1, min(available_cores(), 4, batches))
