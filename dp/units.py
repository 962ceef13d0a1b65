"""The identity as privacy unit: each analytics row attributed to the identity it belongs to.

An identity is what the identity graph (``profiling.identity``) makes of a person: one account
plus the devices on which only that account ever signed in. Releases bounded per identity bound
all of that account's rows *and* its devices' anonymous events together.

Attribution (``attach_identity``):

* a row with a person (``person_id`` not null) belongs to that person's identity: its entry in
  the identity graph's ``persons`` table, or the person itself when the graph does not list it
  (a person with no linked identity is their own identity);
* a row with a device but no person (an anonymous device event) belongs to the identity its
  device is linked to in the graph's ``devices`` table;
* a row of neither kind is **dropped**: an anonymous event on a device shared by several accounts
  (a family tablet), on a device whose only account did not allow cross-device sync, or on a
  device nobody signed in on cannot be attributed to one person, and no bound could hold for a
  row of nobody. A signed-in event on a shared device is its account's.

Two accounts are never linked by the graph, so a human with two accounts is two identities. The
group bound ``accounts_per_human=k`` (``PrivateSession``, ``QueryPlan.start``) calibrates the noise
so that any k identities together get the claimed epsilon (group privacy: every sensitivity is
scaled by k), and the charge records it in its query line ("per identity_id, groups of k").

What is not protected: the graph is computed from all the device events, so one human's sign-in on
a device decides whether that device is shared, and with it whether its anonymous events count for
another identity or for nobody. The guarantee holds per identity for the graph as given; the group
bound covers the rows of k identities, not a change of the graph itself.

Device statistics across an identity's devices (devices per identity, events per device type)
are in ``dp.cross_device``.

>>> import pandas as pd
>>> persons = pd.DataFrame({"person_id": ["A", "B"], "identity_id": ["A", "B"]})
>>> devices = pd.DataFrame({"device_id": ["phone"], "identity_id": ["B"]})
>>> events = pd.DataFrame({"device_id": ["phone", "phone", "family", "family", "pc"],
...                        "person_id": [None, "B", "A", None, "C"]})
>>> attach_identity(events, persons=persons, devices=devices)["identity_id"].tolist()
['B', 'B', 'A', 'C']
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from profiling.errors import PortraitError

__all__ = ["IDENTITY", "PERSON", "attach_identity", "covers", "mapping"]

IDENTITY = "identity_id"
PERSON = "person_id"
# A registered unit -> the units a release may be bounded by instead: each covers all of the registered
# unit's rows (an identity holds exactly one person and that person's own devices), so a release that is
# epsilon-DP per identity is epsilon-DP per person too.
_COVERING = {PERSON: (PERSON, IDENTITY), IDENTITY: (IDENTITY,)}


def covers(registered: str, unit: str) -> bool:
    """True when bounding per ``unit`` keeps the guarantee of a dataset registered per ``registered``.

    >>> covers("person_id", "identity_id"), covers("identity_id", "person_id")
    (True, False)
    """
    return unit in _COVERING.get(registered, (registered,))


def mapping(table: pd.DataFrame | pa.Table | None, name: str, columns: tuple[str, ...]) -> pd.DataFrame | None:
    """``table``'s (key, identity_id) pairs, one identity per key (a key mapped to two is refused); None for None."""
    if table is None:
        return None
    frame = table.to_pandas() if isinstance(table, pa.Table) else table
    if not isinstance(frame, pd.DataFrame):
        raise PortraitError(f"{name} must be a pandas DataFrame or an Arrow table, got {type(table).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PortraitError(f"{name} has no column {', '.join(missing)}; it has {', '.join(map(str, frame.columns))} "
                            f"(pass the identity graph's output: WS/outputs/identity/{name})")
    mapping = frame[list(columns)].dropna().drop_duplicates()
    clash = mapping[columns[0]].duplicated(keep=False)
    if clash.any():
        raise PortraitError(f"{name} maps {columns[0]} {mapping.loc[clash, columns[0]].iloc[0]!r} to more than one "
                            f"identity; pass the identity graph's output, one identity per {columns[0]}")
    return mapping


def attach_identity(rows: pd.DataFrame | pa.Table, *, persons: pd.DataFrame | pa.Table | None = None,
                    devices: pd.DataFrame | pa.Table | None = None, person_column: str = PERSON,
                    device_column: str = "device_id") -> pd.DataFrame:
    """``rows`` with an ``identity_id`` column, attributed as the module docstring says; unattributable rows dropped.

    ``persons`` (person_id -> identity_id) and ``devices`` (device_id -> identity_id) are the identity
    graph's output (``WS/outputs/identity/persons`` and ``devices``). Person-keyed tables (orders,
    waybills) need only ``rows``; device-keyed rows without a person need ``devices`` to be kept.
    The result keeps the rows' order (bounding keeps each identity's first rows in it).
    """
    frame = rows.to_pandas() if isinstance(rows, pa.Table) else rows
    if not isinstance(frame, pd.DataFrame):
        raise PortraitError(f"rows must be a pandas DataFrame or an Arrow table, got {type(rows).__name__}")
    if IDENTITY in frame.columns:
        raise PortraitError(f"rows already have an {IDENTITY!r} column; attach the identity once")
    has_person, has_device = person_column in frame.columns, device_column in frame.columns
    if not (has_person or has_device):
        raise PortraitError(f"rows have neither {person_column!r} nor {device_column!r}; nothing says whose they are")
    person_map = mapping(persons, "persons", (PERSON, IDENTITY))
    device_map = mapping(devices, "devices", ("device_id", IDENTITY))
    identity = pd.Series(pd.NA, index=frame.index, dtype=object)
    if has_person:
        person = frame[person_column]
        mapped = person.map(person_map.set_index(PERSON)[IDENTITY]) if person_map is not None else person
        identity = identity.where(person.isna(), mapped.where(mapped.notna(), person))   # their own when unlisted
    if has_device and device_map is not None:
        by_device = frame[device_column].map(device_map.set_index("device_id")[IDENTITY])
        identity = identity.where(identity.notna(), by_device)
    keep = identity.notna().to_numpy()
    # rows: (the rows' columns, identity_id) of attributable rows, in their order
    result = frame.loc[keep].copy()
    result[IDENTITY] = identity[keep].astype(str).to_numpy()
    return result.reset_index(drop=True)
