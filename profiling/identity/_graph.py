"""The devices <-> accounts graph: one identity per connected component, linked only with consent."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from profiling.errors import InternalError
from profiling.identity._inputs import check_max_accounts, encode_inputs

__all__ = [
    "DEFAULT_MAX_ACCOUNTS_PER_DEVICE",
    "DEVICE_IDENTITY_SCHEMA",
    "PERSON_IDENTITY_SCHEMA",
    "IdentityGraph",
    "build_identity_graph",
]

DEFAULT_MAX_ACCOUNTS_PER_DEVICE = 5

PERSON_IDENTITY_SCHEMA = pa.schema([pa.field("person_id", pa.string(), nullable=False),
                                    pa.field("identity_id", pa.string(), nullable=False)])
DEVICE_IDENTITY_SCHEMA = pa.schema([pa.field("device_id", pa.string(), nullable=False),
                                    pa.field("identity_id", pa.string(), nullable=False)])


@dataclass(frozen=True)
class IdentityGraph:
    """Who is who across devices.

    ``persons``: one row per person passed to ``build_identity_graph``, sorted by person_id, with
    the identity it belongs to. ``devices``: one row per device attached to an identity, in order of
    first appearance in the links (sorting millions of pseudonyms would cost seconds). ``report``: JSON-able counts (no pseudonyms), see ``build_identity_graph``.
    """

    persons: pa.Table  # rows: (person_id, identity_id)
    devices: pa.Table  # rows: (device_id, identity_id)
    report: dict


def build_identity_graph(links: pa.Table, persons: pa.Array, linking_persons: pa.Array, *,
                         max_accounts_per_device: int = DEFAULT_MAX_ACCOUNTS_PER_DEVICE) -> IdentityGraph:
    """Link accounts and devices into identities, only through persons who allow ``cross_device_sync``.

    ``links`` needs string columns ``device_id`` and ``person_id`` (pseudonyms; other columns are
    ignored, rows with a null person_id are ignored, duplicates are fine): a row says the account was
    signed in on the device. ``persons`` are the persons that get an identity (those eligible for
    personalization; no nulls, duplicates collapse). ``linking_persons`` are the persons allowing the
    ``cross_device_sync`` purpose; only those also in ``persons`` link anything.

    A device seen with more than ``max_accounts_per_device`` distinct person_ids in ``links``
    (consenting or not, eligible or not) is *shared*: it links nobody and belongs to no identity, so
    one internet-cafe tablet cannot merge its users. The graph has an edge (device, person) for each
    link of a linking, eligible person to a device that is not shared; each connected component is
    one identity, named by the smallest person_id (string order) in it. A person who may not link is
    an identity of its own with no devices. ``devices`` lists the devices of components holding at
    least one person of ``persons``; devices seen only with non-linking persons are absent.

    ``report``: ``persons``, ``identities``, ``linked_devices``, ``shared_devices``,
    ``max_accounts_per_device``, ``largest_identity`` (``{"persons": n, "devices": m}`` of the
    identity with the most persons, ties by most devices) and ``identity_sizes`` (``[{"persons": k,
    "identities": count}]`` sorted by k). Counts only: it names nobody, but it is not differentially
    private and stays inside the analytics zone.

    Raises SchemaError (a ValueError) naming the table and column when a column of ``links`` is
    missing or not strings; ValueError for a null in ``persons``/``linking_persons`` or a null
    device_id beside a signed-in person; TypeError/ValueError for a ``max_accounts_per_device`` that
    is not an int of at least 1. Runs in time about linear in the rows of ``links`` (vectorized).

    >>> links = pa.table({"device_id": ["d1", "d1", "d2", "d2", "d3"],
    ...                   "person_id": ["B", "A", "B", "C", "D"]})
    >>> graph = build_identity_graph(links, pa.array(["A", "B", "C", "D"]), pa.array(["A", "B", "C"]))
    >>> graph.persons.to_pydict()
    {'person_id': ['A', 'B', 'C', 'D'], 'identity_id': ['A', 'A', 'A', 'D']}
    >>> graph.devices.to_pydict()
    {'device_id': ['d1', 'd2'], 'identity_id': ['A', 'A']}
    >>> graph.report["largest_identity"], graph.report["identity_sizes"]
    ({'persons': 3, 'devices': 2}, [{'persons': 1, 'identities': 1}, {'persons': 3, 'identities': 1}])
    """
    max_accounts = check_max_accounts(max_accounts_per_device)
    inputs = encode_inputs(links, persons, linking_persons)
    n_persons, n_devices = len(inputs.person_names), len(inputs.device_names)

    # Shared devices count every distinct signed-in person, consenting or not.
    accounts_per_device = np.bincount(inputs.link_devices, minlength=n_devices)
    shared = accounts_per_device > max_accounts
    may_link = inputs.eligible & inputs.linking
    edge = ~shared[inputs.link_devices] & may_link[inputs.link_persons]
    # rows: edges (person node, device node); person nodes 0..P-1, device nodes P..P+D-1
    edge_persons = inputs.link_persons[edge]
    edge_devices = inputs.link_devices[edge] + n_persons

    labels = _component_labels(n_persons + n_devices, edge_persons, edge_devices)
    # Person codes follow string order, so the first eligible person met in code order is the smallest.
    eligible_codes = np.flatnonzero(inputs.eligible)
    eligible_components = labels[eligible_codes]
    components, first = np.unique(eligible_components, return_index=True)
    identity_of_component = np.full(labels.max() + 1 if labels.size else 0, -1, dtype=np.int64)
    identity_of_component[components] = eligible_codes[first]
    person_identity = identity_of_component[eligible_components]

    has_edge = np.zeros(n_devices, dtype=bool)
    has_edge[inputs.link_devices[edge]] = True
    linked_devices = np.flatnonzero(has_edge)
    device_identity = identity_of_component[labels[linked_devices + n_persons]]
    if (device_identity < 0).any():
        raise InternalError("a device with a consenting link landed in a component without an eligible person")

    names = inputs.person_names
    person_table = pa.table([_names(names, eligible_codes), _names(names, person_identity)],
                            schema=PERSON_IDENTITY_SCHEMA)
    device_table = pa.table([_names(inputs.device_names, linked_devices), _names(names, device_identity)],
                            schema=DEVICE_IDENTITY_SCHEMA)
    report = _report(person_identity, device_identity, n_persons, int(shared.sum()), max_accounts)
    return IdentityGraph(person_table, device_table, report)


def _component_labels(n_nodes: int, edge_persons: np.ndarray, edge_devices: np.ndarray) -> np.ndarray:
    """Connected-component label of every node (int64; isolated nodes get their own label)."""
    if n_nodes == 0:
        return np.zeros(0, dtype=np.int64)
    adjacency = sp.csr_matrix((np.ones(edge_persons.size, dtype=np.int8), (edge_persons, edge_devices)),
                              shape=(n_nodes, n_nodes))
    _, labels = connected_components(adjacency, directed=False)
    return labels.astype(np.int64, copy=False)


def _names(names: pa.Array, codes: np.ndarray) -> pa.Array:
    return names.take(pa.array(codes, type=pa.int64())).cast(pa.string())


def _report(person_identity: np.ndarray, device_identity: np.ndarray, n_person_codes: int, shared_devices: int,
            max_accounts: int) -> dict:
    persons_per_identity = np.bincount(person_identity, minlength=n_person_codes)
    devices_per_identity = np.bincount(device_identity, minlength=n_person_codes)
    identities = np.flatnonzero(persons_per_identity)
    largest = {"persons": 0, "devices": 0}
    if identities.size:
        best = identities[np.lexsort((devices_per_identity[identities], persons_per_identity[identities]))[-1]]
        largest = {"persons": int(persons_per_identity[best]), "devices": int(devices_per_identity[best])}
    sizes, counts = np.unique(persons_per_identity[identities], return_counts=True)
    return {
        "persons": int(person_identity.size),
        "identities": int(identities.size),
        "linked_devices": int(device_identity.size),
        "shared_devices": shared_devices,
        "max_accounts_per_device": max_accounts,
        "largest_identity": largest,
        "identity_sizes": [{"persons": int(k), "identities": int(c)} for k, c in zip(sizes, counts, strict=True)],
    }
