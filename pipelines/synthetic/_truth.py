"""The ground truth of who is who: which accounts and devices belong to one human.

Written only when ``generate`` is given a ``truth_dir``, a folder apart from the raw data set (never
inside it, nor it inside the truth), so that ingest and the job cannot read it; benchmarks compare
the identity graph with it. One part file per batch, like the raw tables:

* ``accounts/``: ``(account_id, human_id)``: every account. A human holds one account, or also the
  next holder's account of the batch when they keep a second one (a chain of such holders is one
  human). ``human_id`` is ``H`` and the ten-digit number of the human's lowest account.
* ``devices/``: ``(device_id, human_id, use)``: every device. ``use`` is ``personal`` (the device of
  one human: ``human_id`` set), ``household`` (a family device several holders sign in on) or
  ``public`` (an internet-cafe PC or shop tablet of the shared pool, in batch 0) or ``intruder``
  (the device of someone who took an account over, ``pipelines.synthetic._risk``); ``human_id`` is
  null for these.
* ``risk_incidents/``: ``(account_id, pattern, started_at, ended_at)``: every planted account-risk
  incident (``pipelines.synthetic._risk``): ``account_takeover`` or ``order_burst``, from its first
  planted row to its last waybill (UTC).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from pipelines.synthetic._arrays import _ascii, _digits, _text

TRUTH_TABLES = ("accounts", "devices", "risk_incidents")
TRUTH_SCHEMAS = {
    "accounts": pa.schema([pa.field("account_id", pa.string(), nullable=False),
                           pa.field("human_id", pa.string(), nullable=False)]),
    "devices": pa.schema([pa.field("device_id", pa.string(), nullable=False), pa.field("human_id", pa.string()),
                          pa.field("use", pa.string(), nullable=False)]),
    "risk_incidents": pa.schema([pa.field("account_id", pa.string(), nullable=False),
                                 pa.field("pattern", pa.string(), nullable=False),
                                 pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
                                 pa.field("ended_at", pa.timestamp("us", tz="UTC"), nullable=False)]),
}
PERSONAL, HOUSEHOLD, PUBLIC, INTRUDER = "personal", "household", "public", "intruder"


def _human_of(first: int, second_account: np.ndarray) -> np.ndarray:
    """Global account number of each holder's human: the lowest account of its chain of second accounts."""
    n = len(second_account)
    holders = np.flatnonzero(second_account)
    links = sp.csr_matrix((np.ones(len(holders), dtype=np.int8), (holders, (holders + 1) % n)), shape=(n, n))
    _, component = connected_components(links, directed=False)
    lowest = np.full(component.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(lowest, component, np.arange(n))
    return first + lowest[component]


def _human_ids(numbers: np.ndarray) -> pa.Array:
    return _text(np.hstack([_ascii("H", len(numbers)), _digits(numbers, 10)]))


def _write_truth(directory: Path, batch_index: int, first: int, account_id: pa.Array, second_account: np.ndarray,
                 own_device_id: pa.Array, owner: np.ndarray, household_device_id: pa.Array,
                 public_device_id: pa.Array | None, intruder_device_id: pa.Array, risk_incidents: pa.Table) -> None:
    """Write batch ``batch_index``'s truth: its accounts, own and family devices (and the public pool),
    and its planted risk incidents."""
    human = _human_of(first, second_account)
    accounts = pa.table([account_id, _human_ids(human)], schema=TRUTH_SCHEMAS["accounts"])
    parts = [(own_device_id, _human_ids(human[owner]), PERSONAL),
             (household_device_id, pa.nulls(len(household_device_id), pa.string()), HOUSEHOLD),
             (intruder_device_id, pa.nulls(len(intruder_device_id), pa.string()), INTRUDER)]
    if public_device_id is not None:
        parts.append((public_device_id, pa.nulls(len(public_device_id), pa.string()), PUBLIC))
    devices = pa.concat_tables(pa.table([ids, humans, pa.array([use] * len(ids), pa.string())],
                                        schema=TRUTH_SCHEMAS["devices"]) for ids, humans, use in parts)
    for name, table in (("accounts", accounts), ("devices", devices), ("risk_incidents", risk_incidents)):
        pq.write_table(table, directory / name / f"part-{batch_index:05d}.parquet", compression="snappy")
