"""Statistics across an identity's devices, with the devices per identity bounded before any per-device aggregate.

An identity's devices are those the identity graph linked to it (``WS/outputs/identity/devices``:
devices on which only that account ever signed in, for a person allowing cross-device sync); a
shared device belongs to no identity and is not counted here.

* ``devices_per_identity``: one row per identity with its linked devices, clamped to
  ``max_devices_per_identity``; a histogram of it moves by one count when an identity comes or goes.
* ``bound_devices``: the rows of at most ``max_devices_per_identity`` devices of each identity,
  chosen by a keyed hash of (identity, device), never by the rows (``dp.join_devices``), and at most
  ``max_events_per_device`` rows of each kept device in stored order. Which of an identity's rows are
  kept depends only on that identity's rows, so one identity moves a per-device aggregate computed on
  the result by at most ``max_devices_per_identity * max_events_per_device`` rows.
* ``release_devices_per_identity`` and ``release_events_per_device_type`` release them through a
  ``PrivateSession`` with the identity as privacy unit, charged to the ``device_events`` dataset:
  epsilon-DP per identity (per group of ``accounts_per_human`` identities).

>>> import pandas as pd
>>> devices = pd.DataFrame({"device_id": ["p1", "p2", "p3", "q1"], "identity_id": ["A", "A", "A", "B"]})
>>> devices_per_identity(devices, ["A", "B", "C"], max_devices_per_identity=2)["devices"].tolist()
[2, 1, 0]
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa

from dp._bounding import join_devices
from dp._parameters import check_positive_int
from dp.budget import BudgetLedger
from dp.session import PrivateSession
from dp.units import IDENTITY, mapping
from profiling.errors import PortraitError
from profiling.schema import TABLES

__all__ = ["DATASET", "DEVICE_TYPES", "bound_devices", "devices_per_identity", "release_devices_per_identity",
           "release_events_per_device_type"]

DATASET = "device_events"   # the links and the events come from it
DEVICE_TYPES: tuple[str, ...] = tuple(TABLES["devices"]["device_type"].allowed)   # public keys: the schema's values


def devices_per_identity(devices: pd.DataFrame | pa.Table, identities, *,
                         max_devices_per_identity: int) -> pd.DataFrame:
    """``identity_id, devices``: each identity of ``identities`` (duplicates collapse) with its linked devices
    in ``devices`` (device_id -> identity_id), at most ``max_devices_per_identity``; 0 for none."""
    limit = check_positive_int(max_devices_per_identity, "max_devices_per_identity")
    links = mapping(devices, "devices", ("device_id", IDENTITY))
    names = pd.Series(pd.unique(pd.Series(list(identities), dtype=object).dropna()), dtype=object)
    linked = names.map(links.groupby(IDENTITY).size()).fillna(0).to_numpy(dtype=np.int64)
    return pd.DataFrame({IDENTITY: names.astype(str).to_numpy(), "devices": np.minimum(linked, limit)})


def bound_devices(rows: pd.DataFrame | pa.Table, devices: pd.DataFrame | pa.Table, *, max_devices_per_identity: int,
                  max_events_per_device: int | None = None, seed: int = 0,
                  device_column: str = "device_id") -> pd.DataFrame:
    """The rows of linked devices, at most ``max_devices_per_identity`` devices per identity (and at most
    ``max_events_per_device`` rows per device), with ``identity_id``; rows of unlinked devices are dropped."""
    limit = check_positive_int(max_devices_per_identity, "max_devices_per_identity")
    links = mapping(devices, "devices", ("device_id", IDENTITY)).rename(columns={"device_id": device_column})
    frame = rows.to_pandas() if isinstance(rows, pa.Table) else rows
    if isinstance(frame, pd.DataFrame) and IDENTITY in frame.columns:
        frame = frame.drop(columns=IDENTITY)    # the device's identity is the graph's
    kept = join_devices(frame, links, max_devices_per_person=limit, seed=seed, device_column=device_column,
                        person_column=IDENTITY)
    # rows: (the rows' columns, identity_id) of at most max_devices_per_identity devices per identity
    if max_events_per_device is not None:
        per_device = check_positive_int(max_events_per_device, "max_events_per_device")
        position = kept.groupby(device_column, sort=False).cumcount().to_numpy()
        kept = kept.loc[position < per_device].reset_index(drop=True)
    return kept


def release_devices_per_identity(identities, devices: pd.DataFrame | pa.Table, *,
                                 ledger: BudgetLedger | str | os.PathLike, purpose: str, epsilon: float,
                                 max_devices_per_identity: int, accounts_per_human: int = 1,
                                 confidence: float = 0.95, analyst: str | None = None) -> pd.DataFrame:
    """Noisy number of identities with 0, 1, ..., ``max_devices_per_identity`` linked devices (the last bin
    holds those with more), each with its half-width; epsilon-DP per identity, charged to ``device_events``."""
    limit = check_positive_int(max_devices_per_identity, "max_devices_per_identity")
    frame = devices_per_identity(devices, identities, max_devices_per_identity=limit)
    session = PrivateSession(frame, dataset=DATASET, ledger=ledger, purpose=purpose, privacy_unit=IDENTITY,
                             accounts_per_human=accounts_per_human, analyst=analyst)
    edges = list(range(limit + 2))   # public: [0, 1), [1, 2), ..., [limit, limit + 1]
    released = (session.query(epsilon=epsilon, confidence=confidence)
                .histogram("devices", edges).count().release())
    released["devices"] = list(range(limit + 1))
    return released


def release_events_per_device_type(events: pd.DataFrame | pa.Table, device_types: pd.DataFrame | pa.Table,
                                   devices: pd.DataFrame | pa.Table, *, ledger: BudgetLedger | str | os.PathLike,
                                   purpose: str, epsilon: float, max_devices_per_identity: int,
                                   max_events_per_device: int, accounts_per_human: int = 1, seed: int = 0,
                                   confidence: float = 0.95, analyst: str | None = None) -> pd.DataFrame:
    """Noisy device events per device type across identities' linked devices, each with its half-width.

    ``events`` has ``device_id`` (device events), ``device_types`` maps ``device_id`` -> ``device_type``
    (the analytics zone's devices table), ``devices`` is the identity graph's device_id -> identity_id.
    Each identity counts at most ``max_devices_per_identity`` devices and ``max_events_per_device``
    events of each, bounded before the count; the release is epsilon-DP per identity, charged to
    ``device_events``. The noise is calibrated for an identity moving ``max_devices_per_identity x
    max_events_per_device`` events in each of up to that many types (conservative: the true total is
    at most that once).
    """
    kinds = device_types.to_pandas() if isinstance(device_types, pa.Table) else device_types
    if not isinstance(kinds, pd.DataFrame) or not {"device_id", "device_type"} <= set(kinds.columns):
        raise PortraitError("device_types needs columns device_id and device_type (the analytics zone's devices)")
    limit = check_positive_int(max_devices_per_identity, "max_devices_per_identity")
    per_device = check_positive_int(max_events_per_device, "max_events_per_device")
    kept = bound_devices(events, devices, max_devices_per_identity=limit, max_events_per_device=per_device, seed=seed)
    # rows: (event columns, identity_id, device_type): each event with its own device's type, row by row
    typed = kept.merge(kinds[["device_id", "device_type"]].drop_duplicates("device_id"), on="device_id", how="inner",
                       sort=False)
    session = PrivateSession(typed, dataset=DATASET, ledger=ledger, purpose=purpose, privacy_unit=IDENTITY,
                             accounts_per_human=accounts_per_human, analyst=analyst)
    return (session.query(epsilon=epsilon, confidence=confidence)
            .group_by("device_type", keys=list(DEVICE_TYPES))
            .bound(max_partitions=min(limit, len(DEVICE_TYPES)), max_rows_per_partition=limit * per_device)
            .count().release())
