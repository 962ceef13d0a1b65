"""The identity graph as engine kernels: linking rules give account-device edges, components give identities.

Vertices are named ``a:<person_id>`` (accounts) and ``d:<device_id>`` (devices), so a component's
least vertex (what ``Engine.connected_components`` names it by) is its least account: the identity
is named by that person_id. Under the linking rules a device has at most one account, so every
component is one account with its devices (a star); the components are still computed in general.
The rule (one account, trusted once its first and last sign-in are ``TRUSTED_AFTER`` apart) is that of
``profiling.identity._rules``, which the in-memory reference ``build_identity_graph`` reads too.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from profiling.identity._rules import sign_in_ticks, trusted

__all__ = ["ACCOUNT", "ACCOUNT_IDENTITY_SCHEMA", "DEVICE", "DEVICE_ACCOUNTS_SCHEMA", "DEVICE_IDENTITY_ROWS",
           "EDGE_SCHEMA", "IDENTITY_SIZES_SCHEMA", "PERSONS_OUTPUT_SCHEMA", "SHARED_SCHEMA", "account_identities",
           "device_accounts", "device_identities", "identity_edges", "identity_sizes", "person_identities",
           "shared_devices"]

ACCOUNT = "a:"   # vertex prefix of an account (person_id); sorts before DEVICE
DEVICE = "d:"    # vertex prefix of a device (device_id)

DEVICE_ACCOUNTS_SCHEMA = pa.schema([pa.field("device_id", pa.string()), pa.field("person_id", pa.string()),
                                    pa.field("accounts", pa.int64()), pa.field("trusted", pa.bool_())])
EDGE_SCHEMA = pa.schema([pa.field("u", pa.string()), pa.field("v", pa.string())])
SHARED_SCHEMA = pa.schema([pa.field("shared_devices", pa.int64())])
ACCOUNT_IDENTITY_SCHEMA = pa.schema([pa.field("person_id", pa.string()), pa.field("identity_id", pa.string())])
DEVICE_IDENTITY_ROWS = pa.schema([pa.field("device_id", pa.string()), pa.field("identity_id", pa.string())])
PERSONS_OUTPUT_SCHEMA = pa.schema([pa.field("person_id", pa.string()), pa.field("identity_id", pa.string()),
                                   pa.field("cross_device_sync", pa.bool_())])
IDENTITY_SIZES_SCHEMA = pa.schema([pa.field("devices", pa.int64()), pa.field("persons", pa.int64()),
                                   pa.field("identities", pa.int64())])


def device_accounts(links: pa.Table) -> pa.Table:
    """Kernel (per device): sign-in links ``(device_id, person_id, event_at)`` -> one row per device with a
    sign-in: how many distinct accounts signed in on it (at any time), and when there is exactly one, that
    account and whether the device is trusted for it (``trusted``: its first and last sign-in there at least
    ``TRUSTED_AFTER`` apart, exactly, in the unit of ``event_at``; null when shared).

    Rows without a person are ignored; a device_id or event_at missing beside a person is a ``ValueError``.
    """
    signed_in = links.filter(pc.is_valid(links.column("person_id")))
    for name in ("device_id", "event_at"):
        missing = signed_in.column(name).null_count
        if missing:
            raise ValueError(f"table device_events: {missing} row(s) have a person_id but no {name}; "
                             "a sign-in link needs a device_id and an event_at")
    times = signed_in.column("event_at")
    times = times.combine_chunks() if times.num_chunks else pa.array([], times.type)
    # device and person pseudonyms as dictionary codes: grouping and counting run on integers
    devices = _encoded(signed_in.column("device_id"))
    persons = _encoded(signed_in.column("person_id"))
    # rows: (device code, person code, sign-in time in ticks of the unit of event_at)
    sign_ins = pa.table([devices.indices, persons.indices, sign_in_ticks(times)], names=["device", "person", "at"])
    # rows: (device code, accounts, least person code, first and last sign-in): its only account's when accounts == 1
    per_device = sign_ins.group_by("device").aggregate([("person", "count_distinct"), ("person", "min"),
                                                        ("at", "min"), ("at", "max")])
    accounts = per_device.column("person_count_distinct").cast(pa.int64())
    one = pc.equal(accounts, 1)
    only = pc.if_else(one, persons.dictionary.take(per_device.column("person_min")), pa.scalar(None, pa.string()))
    first, last = (per_device.column(name).to_numpy() for name in ("at_min", "at_max"))
    only_trusted = pc.if_else(one, pa.array(trusted(first, last, times.type.unit)), pa.scalar(None, pa.bool_()))
    return pa.table([devices.dictionary.take(per_device.column("device")), only, accounts, only_trusted],
                    schema=DEVICE_ACCOUNTS_SCHEMA)


def _encoded(column: pa.ChunkedArray) -> pa.DictionaryArray:
    """``column`` (strings) as one dictionary array: int32 codes into its distinct values."""
    values = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    return pc.dictionary_encode(values.cast(pa.string()))


def shared_devices(devices: pa.Table) -> pa.Table:
    """Kernel: ``device_accounts`` rows -> one row, the devices seen with two or more accounts."""
    return pa.table({"shared_devices": [pc.sum(pc.greater_equal(devices.column("accounts"), 2)).as_py() or 0]},
                    schema=SHARED_SCHEMA)


def identity_edges(devices: pa.Table, may_link: pa.Array) -> pa.Table:
    """Kernel: ``device_accounts`` rows -> the edges the linking rules allow, ``(a:person_id, d:device_id)``:
    a device of exactly one account, trusted for it (see ``device_accounts``), that account in ``may_link``
    (eligible and allowing cross_device_sync)."""
    kept = devices.filter(pc.and_(pc.and_(pc.equal(devices.column("accounts"), 1), devices.column("trusted")),
                                  pc.is_in(devices.column("person_id"), value_set=may_link)))
    return pa.table([pc.binary_join_element_wise(ACCOUNT, kept.column("person_id"), ""),
                     pc.binary_join_element_wise(DEVICE, kept.column("device_id"), "")], schema=EDGE_SCHEMA)


def _of_kind(components: pa.Table, prefix: str, schema: pa.Schema) -> pa.Table:
    kept = components.filter(pc.starts_with(components.column("vertex"), prefix))
    return pa.table([pc.utf8_slice_codeunits(kept.column("vertex"), len(prefix)),
                     pc.utf8_slice_codeunits(kept.column("component"), len(ACCOUNT))], schema=schema)


def account_identities(components: pa.Table) -> pa.Table:
    """Kernel: ``(vertex, component)`` rows -> ``(person_id, identity_id)`` of the accounts among them."""
    return _of_kind(components, ACCOUNT, ACCOUNT_IDENTITY_SCHEMA)


def device_identities(components: pa.Table) -> pa.Table:
    """Kernel: ``(vertex, component)`` rows -> ``(device_id, identity_id)`` of the devices among them."""
    return _of_kind(components, DEVICE, DEVICE_IDENTITY_ROWS)


def person_identities(rows: pa.Table) -> pa.Table:
    """Kernel (per person) over ``co_partition`` of ``persons`` (person_id, cross_device_sync) and ``accounts``
    (person_id, identity_id): each person once, in the identity of its component, or its own without one."""
    is_person = pc.equal(rows.column("source"), "persons")
    persons = rows.filter(is_person)
    accounts = rows.filter(pc.invert(is_person))
    first = pc.index_in(pc.unique(persons.column("person_id")), value_set=persons.column("person_id"))
    persons = persons.take(first)   # duplicates collapse
    found = pc.index_in(persons.column("person_id"), value_set=accounts.column("person_id"))
    identity = pc.coalesce(accounts.column("identity_id").take(found), persons.column("person_id"))
    return pa.table([persons.column("person_id"), identity, persons.column("cross_device_sync")],
                    schema=PERSONS_OUTPUT_SCHEMA)


def identity_sizes(rows: pa.Table) -> pa.Table:
    """Kernel (per identity) over ``co_partition`` of ``persons`` and ``devices`` by identity_id: how many
    identities hold each (devices, persons) count. Counts only, for the report."""
    is_person = pc.equal(rows.column("source"), "persons")
    flags = pa.table({"identity_id": rows.column("identity_id"), "person": is_person.cast(pa.int64()),
                      "device": pc.invert(is_person).cast(pa.int64())})
    # rows: (identity_id, persons, devices), one per identity
    per_identity = flags.group_by("identity_id").aggregate([("person", "sum"), ("device", "sum")])
    held = per_identity.filter(pc.greater(per_identity.column("person_sum"), 0))  # always; guard all the same
    sizes = held.group_by(["device_sum", "person_sum"]).aggregate([("person_sum", "count")])
    sizes = sizes.sort_by([("device_sum", "ascending"), ("person_sum", "ascending")])
    return pa.table([sizes.column("device_sum"), sizes.column("person_sum"),
                     sizes.column("person_sum_count").cast(pa.int64())], schema=IDENTITY_SIZES_SCHEMA)
