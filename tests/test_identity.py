"""The identity graph: consent-gated linking, shared devices, and a union-find reference."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiling.errors import SchemaError
from profiling.identity import (
    DEFAULT_MAX_ACCOUNTS_PER_DEVICE,
    DEVICE_IDENTITY_SCHEMA,
    PERSON_IDENTITY_SCHEMA,
    IdentityGraph,
    build_identity_graph,
)


def links_of(*pairs, extra=False):
    """A links table from (device, person) pairs; person may be None (nobody signed in)."""
    columns = {"device_id": [d for d, _ in pairs], "person_id": [p for _, p in pairs]}
    if extra:
        columns["event_type"] = ["open"] * len(pairs)
    return pa.table({"device_id": pa.array(columns["device_id"], pa.string()),
                     "person_id": pa.array(columns["person_id"], pa.string()),
                     **({"event_type": columns["event_type"]} if extra else {})})


def build(pairs, persons, linking, **options) -> IdentityGraph:
    return build_identity_graph(links_of(*pairs), pa.array(persons, pa.string()),
                                pa.array(linking, pa.string()), **options)


def identities(graph):
    return dict(zip(graph.persons["person_id"].to_pylist(), graph.persons["identity_id"].to_pylist(), strict=True))


def device_identities(graph):
    return dict(zip(graph.devices["device_id"].to_pylist(), graph.devices["identity_id"].to_pylist(), strict=True))


def test_a_chain_through_two_devices_is_one_identity_named_by_its_smallest_person():
    graph = build([("d1", "pc"), ("d1", "pb"), ("d2", "pb"), ("d2", "pa")], ["pc", "pb", "pa"], ["pa", "pb", "pc"])
    assert identities(graph) == {"pa": "pa", "pb": "pa", "pc": "pa"}
    assert device_identities(graph) == {"d1": "pa", "d2": "pa"}
    assert graph.persons["person_id"].to_pylist() == ["pa", "pb", "pc"]
    assert graph.persons.schema == PERSON_IDENTITY_SCHEMA
    assert graph.devices.schema == DEVICE_IDENTITY_SCHEMA
    assert graph.report == {
        "persons": 3, "identities": 1, "linked_devices": 2, "shared_devices": 0,
        "max_accounts_per_device": DEFAULT_MAX_ACCOUNTS_PER_DEVICE,
        "largest_identity": {"persons": 3, "devices": 2},
        "identity_sizes": [{"persons": 3, "identities": 1}],
    }
    json.dumps(graph.report)


def test_a_non_linking_person_in_the_middle_breaks_the_chain():
    graph = build([("d1", "A"), ("d1", "B"), ("d2", "B"), ("d2", "C")], ["A", "B", "C"], ["A", "C"])
    assert identities(graph) == {"A": "A", "B": "B", "C": "C"}
    assert device_identities(graph) == {"d1": "A", "d2": "C"}  # B's devices are not attached to B
    assert graph.report["identity_sizes"] == [{"persons": 1, "identities": 3}]
    assert graph.report["largest_identity"] == {"persons": 1, "devices": 1}


@pytest.mark.parametrize("max_accounts", [1, 2, 3, 5])
def test_a_device_with_exactly_max_accounts_links_them_and_one_more_makes_it_shared(max_accounts):
    people = [f"p{i}" for i in range(max_accounts + 1)]
    at_limit = build([("d", p) for p in people[:max_accounts]], people, people, max_accounts_per_device=max_accounts)
    assert set(identities(at_limit).values()) == {"p0", people[-1]}
    assert device_identities(at_limit) == {"d": "p0"}
    assert at_limit.report["shared_devices"] == 0

    over = build([("d", p) for p in people], people, people, max_accounts_per_device=max_accounts)
    assert identities(over) == {p: p for p in people}
    assert over.devices.num_rows == 0
    assert over.report["shared_devices"] == 1
    assert over.report["max_accounts_per_device"] == max_accounts


def test_the_shared_device_count_includes_persons_who_do_not_consent_or_are_not_eligible():
    pairs = [("cafe", "A"), ("cafe", "B"), ("cafe", "refuser"), ("cafe", "stranger"), ("home", "A")]
    graph = build(pairs, ["A", "B", "refuser"], ["A", "B"], max_accounts_per_device=3)
    assert identities(graph) == {"A": "A", "B": "B", "refuser": "refuser"}
    assert device_identities(graph) == {"home": "A"}
    assert graph.report["shared_devices"] == 1
    # With room for all four, the cafe tablet links the two consenting persons only.
    roomy = build(pairs, ["A", "B", "refuser"], ["A", "B"], max_accounts_per_device=4)
    assert identities(roomy) == {"A": "A", "B": "A", "refuser": "refuser"}


def test_a_person_with_no_links_is_an_identity_of_its_own():
    graph = build([("d1", "A")], ["A", "lonely"], ["A", "lonely"])
    assert identities(graph) == {"A": "A", "lonely": "lonely"}
    assert device_identities(graph) == {"d1": "A"}
    assert graph.report["largest_identity"] == {"persons": 1, "devices": 1}


def test_devices_seen_only_signed_out_or_only_with_non_linking_persons_belong_to_nobody():
    graph = build([("anon", None), ("anon", None), ("d1", "A"), ("d1", None), ("theirs", "refuser")],
                  ["A", "refuser"], ["A"])
    assert device_identities(graph) == {"d1": "A"}
    assert identities(graph) == {"A": "A", "refuser": "refuser"}
    assert graph.report["linked_devices"] == 1


def test_duplicate_links_count_once():
    pairs = [("d1", "A"), ("d1", "B")]
    graph = build(pairs * 4 + [("d1", None)] * 3, ["A", "B"], ["A", "B"], max_accounts_per_device=2)
    assert identities(graph) == {"A": "A", "B": "A"}
    assert device_identities(graph) == {"d1": "A"}
    assert graph.report["shared_devices"] == 0


def test_duplicate_persons_give_one_row_each():
    graph = build([("d1", "B"), ("d1", "A")], ["B", "A", "B"], ["A", "B", "A"])
    assert graph.persons.to_pydict() == {"person_id": ["A", "B"], "identity_id": ["A", "A"]}


def test_linking_persons_outside_persons_link_nobody():
    graph = build([("d1", "A"), ("d1", "X"), ("d2", "X"), ("d2", "B")], ["A", "B"], ["A", "B", "X"])
    assert identities(graph) == {"A": "A", "B": "B"}
    assert device_identities(graph) == {"d1": "A", "d2": "B"}
    assert "X" not in graph.persons["identity_id"].to_pylist()


def test_empty_inputs_give_empty_outputs():
    graph = build([], [], [])
    assert graph.persons.num_rows == 0 and graph.devices.num_rows == 0
    assert graph.persons.schema == PERSON_IDENTITY_SCHEMA and graph.devices.schema == DEVICE_IDENTITY_SCHEMA
    assert graph.report == {"persons": 0, "identities": 0, "linked_devices": 0, "shared_devices": 0,
                            "max_accounts_per_device": 5, "largest_identity": {"persons": 0, "devices": 0},
                            "identity_sizes": []}
    only_persons = build([], ["B", "A"], [])
    assert identities(only_persons) == {"A": "A", "B": "B"}
    no_persons = build([("d1", "A"), ("d1", "B")], [], ["A", "B"])
    assert no_persons.persons.num_rows == 0 and no_persons.devices.num_rows == 0


def test_other_arrow_layouts_give_the_same_graph():
    pairs = [("d1", "pb"), ("d1", "pa"), ("d2", "pb"), ("d2", "pc"), ("d3", None)]
    expected = build(pairs, ["pa", "pb", "pc"], ["pa", "pb"])
    table = links_of(*pairs, extra=True)
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=2))
    large = table.cast(pa.schema([("device_id", pa.large_string()), ("person_id", pa.large_string()),
                                  ("event_type", pa.string())]))
    encoded = table.set_column(0, "device_id", table["device_id"].dictionary_encode())
    persons = pa.chunked_array([["pa"], ["pb", "pc"]])
    for links in (chunked, large, encoded):
        graph = build_identity_graph(links, persons, pa.array(["pa", "pb"], pa.large_string()))
        assert graph.persons.equals(expected.persons)
        assert graph.devices.sort_by("device_id").equals(expected.devices.sort_by("device_id"))
        assert graph.report == expected.report


@pytest.mark.parametrize("missing", ["device_id", "person_id"])
def test_a_missing_column_names_the_column_and_the_table(missing):
    links = links_of(("d1", "A")).drop_columns([missing])
    with pytest.raises(SchemaError, match=rf"table links is missing column '{missing}'"):
        build_identity_graph(links, pa.array(["A"]), pa.array(["A"]))


def test_a_column_that_is_not_strings_is_refused():
    links = pa.table({"device_id": [1, 2], "person_id": ["A", "B"]})
    with pytest.raises(SchemaError, match=r"column 'device_id' of table links must hold pseudonyms as strings"):
        build_identity_graph(links, pa.array(["A"]), pa.array(["A"]))


@pytest.mark.parametrize(("value", "error", "message"), [
    (0, ValueError, "must be at least 1, got 0"),
    (-3, ValueError, "must be at least 1, got -3"),
    (True, TypeError, "must be an int, got bool"),
    (2.0, TypeError, "must be an int, got float"),
    ("5", TypeError, "must be an int, got str"),
    (None, TypeError, "must be an int, got NoneType"),
])
def test_a_bad_max_accounts_per_device_is_refused(value, error, message):
    with pytest.raises(error, match=rf"max_accounts_per_device {message}"):
        build([("d1", "A")], ["A"], ["A"], max_accounts_per_device=value)


def test_numpy_integers_are_fine_for_max_accounts():
    graph = build([("d1", "A")], ["A"], ["A"], max_accounts_per_device=np.int64(2))
    assert graph.report["max_accounts_per_device"] == 2 and type(graph.report["max_accounts_per_device"]) is int


@pytest.mark.parametrize("name", ["persons", "linking_persons"])
def test_a_null_person_is_refused(name):
    arrays = {"persons": pa.array(["A", "B"]), "linking_persons": pa.array(["A"])}
    arrays[name] = pa.array(["A", None, "C"])
    with pytest.raises(ValueError, match=rf"{name} holds 1 null person id\(s\), the first at position 1"):
        build_identity_graph(links_of(("d1", "A")), arrays["persons"], arrays["linking_persons"])


def test_a_signed_in_row_without_a_device_names_the_row():
    links = links_of(("d1", None), (None, None), ("d2", "A"), (None, "B"))
    with pytest.raises(ValueError, match=r"table links, row 3: column 'device_id' is null while person_id is 'B'"):
        build_identity_graph(links, pa.array(["A", "B"]), pa.array(["A", "B"]))


@pytest.mark.parametrize(("links", "persons", "message"), [
    ({"device_id": ["d"], "person_id": ["A"]}, pa.array(["A"]), "links must be a pyarrow Table"),
    (links_of(("d", "A")), ["A"], "persons must be a pyarrow Array of person pseudonyms, got list"),
    (links_of(("d", "A")), pa.array([1]), "persons must hold person pseudonyms as strings, got int64"),
])
def test_inputs_of_the_wrong_kind_are_refused(links, persons, message):
    with pytest.raises(TypeError, match=message):
        build_identity_graph(links, persons, pa.array(["A"]))


def reference_graph(pairs, persons, linking, max_accounts):
    """Obviously correct: count accounts per device, then a union-find over the allowed edges."""
    accounts = {}
    for device, person in pairs:
        if person is not None:
            accounts.setdefault(device, set()).add(person)
    may_link = set(persons) & set(linking)
    parent = {}

    def find(node):
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    attached = set()
    for device, people in accounts.items():
        if len(people) > max_accounts:
            continue
        for person in people:
            if person in may_link:
                parent[find(("device", device))] = find(("person", person))
                attached.add(device)
    members = {}
    for person in set(persons):
        members.setdefault(find(("person", person)), []).append(person)
    name = {root: min(people) for root, people in members.items()}
    person_identity = {person: name[find(("person", person))] for person in set(persons)}
    device_identity = {device: name[find(("device", device))] for device in attached}
    return person_identity, device_identity


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from([f"d{i}" for i in range(8)]),
                                st.none() | st.sampled_from([f"p{i}" for i in range(10)])), max_size=40),
       persons=st.lists(st.sampled_from([f"p{i}" for i in range(12)]), max_size=12),
       linking=st.lists(st.sampled_from([f"p{i}" for i in range(12)]), max_size=12),
       max_accounts=st.integers(1, 4))
def test_matches_a_union_find_reference(pairs, persons, linking, max_accounts):
    graph = build(pairs, persons, linking, max_accounts_per_device=max_accounts)
    expected_persons, expected_devices = reference_graph(pairs, persons, linking, max_accounts)
    assert identities(graph) == expected_persons
    assert graph.persons["person_id"].to_pylist() == sorted(expected_persons)
    assert device_identities(graph) == expected_devices
    assert graph.devices.num_rows == len(expected_devices)
    sizes = {}
    for identity in expected_persons.values():
        sizes[identity] = sizes.get(identity, 0) + 1
    assert graph.report["identities"] == len(sizes)
    assert graph.report["identity_sizes"] == [
        {"persons": k, "identities": list(sizes.values()).count(k)} for k in sorted(set(sizes.values()))]
    device_counts = {identity: list(expected_devices.values()).count(identity) for identity in sizes}
    largest = max(((sizes[i], device_counts[i]) for i in sizes), default=(0, 0))
    assert graph.report["largest_identity"] == {"persons": largest[0], "devices": largest[1]}
    shared = {d for d, _ in pairs} - {d for d, p in pairs if p is not None}
    assert graph.report["shared_devices"] == sum(
        len({p for d2, p in pairs if d2 == d and p is not None}) > max_accounts for d in {d for d, _ in pairs} - shared)
