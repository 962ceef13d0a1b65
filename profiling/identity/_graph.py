"""The identity graph: each eligible person is one identity, with the devices only they ever signed in on.

Linking rules (the README's Identity section states them for users):

* A device joins a person's identity only when that person is the *only* account ever signed in on
  it (in every device event the analytics zone holds, whoever signed in: consenting or not, eligible
  or not), the device is *trusted* (the person's first and last sign-in on it are at least
  ``TRUSTED_AFTER`` = 24 hours apart), and the person allows ``cross_device_sync``. A family
  tablet, a shop tablet or an internet-cafe PC (two or more accounts) joins nobody, at any count;
  nor does a device used for less than a day: an intruder's device in an account takeover (a
  sign-in on the victim's account, then orders within hours) would otherwise join the victim, and
  sync the victim's data to it. Counting distinct UTC days instead would trust a takeover session
  of an hour that runs across midnight UTC. The cost: a person's device used within one day only
  stays out of their identity (see the README's Measured).
* Two accounts are never linked. Nothing in the data tells one person holding two accounts apart
  from two people sharing a device, a phone plan or an address, so no evidence is strong enough:
  a second account of the same human stays an identity of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from profiling.identity._inputs import encode_inputs
from profiling.identity._rules import LINKING_RULE, TRUSTED_AFTER, trusted

__all__ = [
    "DEVICE_IDENTITY_SCHEMA",
    "LINKING_RULE",
    "PERSON_IDENTITY_SCHEMA",
    "TRUSTED_AFTER",
    "IdentityGraph",
    "build_identity_graph",
    "identity_report",
]

PERSON_IDENTITY_SCHEMA = pa.schema([pa.field("person_id", pa.string(), nullable=False),
                                    pa.field("identity_id", pa.string(), nullable=False)])
DEVICE_IDENTITY_SCHEMA = pa.schema([pa.field("device_id", pa.string(), nullable=False),
                                    pa.field("identity_id", pa.string(), nullable=False)])


@dataclass(frozen=True)
class IdentityGraph:
    """Who is who across devices.

    ``persons``: one row per person passed to ``build_identity_graph``, sorted by person_id, with
    the identity it belongs to (its own person_id: accounts are never linked). ``devices``: one row
    per device attached to an identity, in order of first appearance in the links (sorting millions
    of pseudonyms would cost seconds). ``report``: JSON-able counts (no pseudonyms), see
    ``build_identity_graph``.
    """

    persons: pa.Table  # rows: (person_id, identity_id)
    devices: pa.Table  # rows: (device_id, identity_id)
    report: dict


def build_identity_graph(links: pa.Table, persons: pa.Array, linking_persons: pa.Array) -> IdentityGraph:
    """One identity per person; a device joins it only when that person alone ever signed in on it, their first and
    last sign-in there at least ``TRUSTED_AFTER`` (24 hours) apart.

    ``links`` needs string columns ``device_id`` and ``person_id`` (pseudonyms) and ``event_at``
    (timestamps with a time zone; other columns are ignored, rows with a null person_id are ignored,
    duplicates are fine): a row says the account was signed in on the device at that moment.
    ``persons`` are the persons that get an identity (those eligible for personalization; no nulls,
    duplicates collapse). ``linking_persons`` are the persons allowing the
    ``cross_device_sync`` purpose; only those also in ``persons`` get devices.

    A device seen with two or more distinct person_ids in ``links`` (consenting or not, eligible or
    not, on any day) is *shared*: it belongs to no identity, whatever the count, so neither a family
    tablet nor an internet-cafe PC merges or mixes its users. A device seen with exactly one person
    joins that person's identity when it is trusted, the person's first and last sign-in on it being
    at least ``TRUSTED_AFTER`` (24 hours, exactly, in the unit of ``event_at``) apart (a device used
    for less, however often, is not: the device of an intruder's session of a few hours on a
    taken-over account, across midnight UTC or not), and the person is in ``persons`` and in
    ``linking_persons``. Two accounts are never linked: each identity holds exactly one person and is
    named by its person_id. A device with no sign-in at all belongs to nobody.

    ``report``: ``persons``, ``identities``, ``linked_devices``, ``shared_devices`` (devices seen
    with two or more accounts), ``linking_rule``, ``largest_identity`` (``{"persons": 1, "devices":
    m}``, the most devices of one identity) and ``devices_per_identity`` (``[{"devices": k,
    "identities": count}]`` sorted by k). Counts only: it names nobody, but it is not
    differentially private and stays inside the analytics zone.

    Raises SchemaError (a ValueError) naming the table and column when a column of ``links`` is
    missing or not of its type; ValueError for a null in ``persons``/``linking_persons`` or a null
    device_id or event_at beside a signed-in person. Runs in time about linear in the rows of ``links``.

    >>> import datetime as dt
    >>> day = [dt.datetime(2026, 10, d, 9, tzinfo=dt.timezone.utc) for d in (1, 2, 3)]
    >>> links = pa.table({"device_id": ["family", "family", "phone", "phone", "pc", "new"],
    ...                   "person_id": ["B", "A", "B", "B", "C", "A"],
    ...                   "event_at": [day[0], day[1], day[0], day[2], day[0], day[1]]})
    >>> graph = build_identity_graph(links, pa.array(["A", "B", "C"]), pa.array(["A", "B"]))
    >>> graph.persons.to_pydict()
    {'person_id': ['A', 'B', 'C'], 'identity_id': ['A', 'B', 'C']}
    >>> graph.devices.to_pydict()  # "new" was seen once: not trusted yet
    {'device_id': ['phone'], 'identity_id': ['B']}
    >>> graph.report["shared_devices"], graph.report["devices_per_identity"]
    (1, [{'devices': 0, 'identities': 2}, {'devices': 1, 'identities': 1}])
    """
    inputs = encode_inputs(links, persons, linking_persons)
    n_devices = len(inputs.device_names)

    # Every distinct signed-in person counts, consenting or not, eligible or not.
    accounts_per_device = np.bincount(inputs.link_devices, minlength=n_devices)
    one_account = accounts_per_device[inputs.link_devices] == 1
    is_trusted = trusted(inputs.link_first, inputs.link_last, inputs.time_unit)
    may_link = inputs.eligible & inputs.linking
    attach = one_account & is_trusted & may_link[inputs.link_persons]
    # rows: (device, person) of devices attached, one row per device (its only account)
    attached_devices = inputs.link_devices[attach]
    attached_persons = inputs.link_persons[attach]
    order = np.argsort(attached_devices, kind="stable")  # device codes follow first appearance
    attached_devices, attached_persons = attached_devices[order], attached_persons[order]

    eligible_codes = np.flatnonzero(inputs.eligible)  # in string order
    names = inputs.person_names
    eligible_names = _names(names, eligible_codes)
    person_table = pa.table([eligible_names, eligible_names], schema=PERSON_IDENTITY_SCHEMA)
    device_table = pa.table([_names(inputs.device_names, attached_devices), _names(names, attached_persons)],
                            schema=DEVICE_IDENTITY_SCHEMA)
    devices_of = np.bincount(attached_persons, minlength=len(names))[eligible_codes]
    report = _report(devices_of, int((accounts_per_device >= 2).sum()))
    return IdentityGraph(person_table, device_table, report)


def _names(names: pa.Array, codes: np.ndarray) -> pa.Array:
    return names.take(pa.array(codes, type=pa.int64())).cast(pa.string())


def _report(devices_of: np.ndarray, shared_devices: int) -> dict:
    """Counts of the graph: ``devices_of`` holds the devices of each identity (one person each)."""
    counts, identities = np.unique(devices_of, return_counts=True)
    sizes = pa.table({"devices": counts.astype(np.int64), "persons": np.ones(len(counts), dtype=np.int64),
                      "identities": identities.astype(np.int64)})
    return identity_report(sizes, shared_devices)


def identity_report(sizes: pa.Table, shared_devices: int) -> dict:
    """The identity report (see ``build_identity_graph``) from ``sizes``: rows ``(devices, persons, identities)``,
    how many identities hold that many devices and persons (a pair may repeat: its rows are summed)."""
    totals = sizes.group_by(["devices", "persons"]).aggregate([("identities", "sum")])
    devices, persons, identities = (totals.column(c).to_numpy().astype(np.int64)
                                    for c in ("devices", "persons", "identities_sum"))
    per_devices: dict[int, int] = {}
    for k, count in zip(devices.tolist(), identities.tolist(), strict=True):
        per_devices[k] = per_devices.get(k, 0) + count
    return {
        "persons": int((persons * identities).sum()),
        "identities": int(identities.sum()),
        "linked_devices": int((devices * identities).sum()),
        "shared_devices": int(shared_devices),
        "linking_rule": LINKING_RULE,
        "largest_identity": {"persons": int(persons.max(initial=0)), "devices": int(devices.max(initial=0))},
        "devices_per_identity": [{"devices": k, "identities": per_devices[k]} for k in sorted(per_devices)],
    }
