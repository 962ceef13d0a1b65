"""Writing the tables: each batch of accounts, and everything they did, as one part file per table;
the catalogue, common to all batches, as one part of its own.

``_write_batch`` runs in worker processes: it takes only picklable arguments and rebuilds the
shared world from the run's parameters (once per process).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.synthetic._accounts import _accounts
from pipelines.synthetic._consent import _consent_events, _consent_plan
from pipelines.synthetic._device_events import _devices_and_events
from pipelines.synthetic._households import _households
from pipelines.synthetic._orders import _orders, _waybills
from pipelines.synthetic._output import _write
from pipelines.synthetic._risk import _incidents
from pipelines.synthetic._run import _Run
from pipelines.synthetic._truth import _write_truth
from pipelines.synthetic._world import _world


def _write_catalogue(run: _Run, directory: Path) -> int:
    """Write the catalogue as ``catalogue/part-00000.parquet``; return its rows."""
    return _write(directory, "catalogue", 0, _world(run).catalogue)


def _appended(columns: dict[str, pa.Array], more: dict[str, pa.Array]) -> dict[str, pa.Array]:
    """The batch's columns with the planted rows after them (same column order)."""
    return {name: pa.concat_arrays([column, more[name].cast(column.type)]) for name, column in columns.items()}


def _write_batch(run: _Run, batch_index: int, directory: str, truth_directory: str | None = None) -> dict[str, int]:
    """Generate and write batch ``batch_index``: one part file per table except the catalogue.

    With ``truth_directory``, also the batch's ground truth there (``pipelines.synthetic._truth``).
    """
    out = Path(directory)
    world = _world(run)
    rng = np.random.default_rng([run.seed, batch_index])
    first, n = run.batch_accounts_range(batch_index)
    rows = {}
    holders, accounts = _accounts(rng, run, first, n)
    rows["accounts"] = _write(out, "accounts", batch_index, accounts)
    del accounts
    plan = _consent_plan(rng, holders, run.until)
    orders, order_columns = _orders(rng, run, world, holders, batch_index)
    waybills, cross_holder, cross_time, sender, sent_at = _waybills(
        rng, run, world, holders, orders, order_columns["order_id"], batch_index)
    devices, events, signed_holder, signed_at, ownership = _devices_and_events(
        rng, run, world, holders, plan["location"], batch_index)
    households = _households(run, world, holders, batch_index, first_event=len(events["event_id"]))
    risk = _incidents(run, world, holders, batch_index, first_order=len(order_columns["order_id"]),
                      first_waybill=len(waybills["waybill_id"]),
                      first_event=len(events["event_id"]) + len(households.events["event_id"]))
    rows["orders"] = _write(out, "orders", batch_index, _appended(order_columns, risk.orders))
    del order_columns
    rows["waybills"] = _write(out, "waybills", batch_index, _appended(waybills, risk.waybills))
    del waybills
    devices = pa.concat_tables([devices, households.devices, risk.devices])
    events = {name: pa.concat_arrays([column, households.events[name], risk.events[name]])
              for name, column in events.items()}
    signed_holder = np.concatenate([signed_holder, households.signed_holder])
    signed_at = np.concatenate([signed_at, households.signed_at])
    if truth_directory is not None:
        _write_truth(Path(truth_directory), batch_index, first, holders.account_id, ownership.second_account,
                     ownership.device_id, ownership.owner, households.device_id,
                     world.shared_device_id if batch_index == 0 else None,
                     risk.devices.column("device_id").combine_chunks(), risk.truth)
    rows["devices"] = _write(out, "devices", batch_index, devices)
    rows["device_events"] = _write(out, "device_events", batch_index, events)
    del devices, events
    with_account = sender >= 0
    activity = [(orders.account, orders.placed), (sender[with_account], sent_at[with_account]),
                (signed_holder, signed_at), *risk.activity]
    consent = _consent_events(rng, run, holders, plan, cross_holder, cross_time, activity, batch_index)
    rows["consent_events"] = _write(out, "consent_events", batch_index, consent)
    return rows
