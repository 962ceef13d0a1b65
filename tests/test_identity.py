"""The identity graph: one identity per person, devices only of one account, consent-gated; a plain reference."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiling.errors import SchemaError
from profiling.identity import (
    DEVICE_IDENTITY_SCHEMA,
    LINKING_RULE,
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


def test_devices_of_one_account_join_it_and_accounts_are_never_linked():
    graph = build([("d1", "pc"), ("d1", "pc"), ("d2", "pb"), ("d3", "pa"), ("d4", "pb")], ["pc", "pb", "pa"],
                  ["pa", "pb", "pc"])
    assert identities(graph) == {"pa": "pa", "pb": "pb", "pc": "pc"}
    assert device_identities(graph) == {"d1": "pc", "d2": "pb", "d3": "pa", "d4": "pb"}
    assert graph.devices["device_id"].to_pylist() == ["d1", "d2", "d3", "d4"]  # first appearance
    assert graph.persons["person_id"].to_pylist() == ["pa", "pb", "pc"]
    assert graph.persons.schema == PERSON_IDENTITY_SCHEMA
    assert graph.devices.schema == DEVICE_IDENTITY_SCHEMA
    assert graph.report == {
        "persons": 3, "identities": 3, "linked_devices": 4, "shared_devices": 0, "linking_rule": LINKING_RULE,
        "largest_identity": {"persons": 1, "devices": 2},
        "devices_per_identity": [{"devices": 1, "identities": 2}, {"devices": 2, "identities": 1}],
    }
    json.dumps(graph.report)

    graph = build([("d1", "B"), ("d1", "A")], ["B", "A", "B"], ["A", "B", "A"])
    assert graph.persons.to_pydict() == {"person_id": ["A", "B"], "identity_id": ["A", "B"]}
    assert graph.devices.num_rows == 0 and graph.report["shared_devices"] == 1


@settings(max_examples=40, deadline=None)
@given(users=st.integers(2, 60), consenting=st.booleans(), sign_ins=st.integers(1, 5))
def test_a_family_tablet_or_an_internet_cafe_merges_nobody_at_any_size(users, consenting, sign_ins):
    people = [f"p{i:02d}" for i in range(users)]
    own = [(f"phone-{p}", p) for p in people]
    tablet = [("tablet", p) for p in people for _ in range(sign_ins)]
    graph = build(own + tablet, people, people if consenting else people[:1])
    assert identities(graph) == {p: p for p in people}
    assert "tablet" not in device_identities(graph)
    assert graph.report["shared_devices"] == 1 and graph.report["largest_identity"]["persons"] == 1


def test_linking_persons_outside_persons_link_nobody():
    graph = build([("d1", "A"), ("d1", "X"), ("d2", "X"), ("d2", "B"), ("d3", "X"), ("d4", "B")],
                  ["A", "B"], ["A", "B", "X"])
    assert identities(graph) == {"A": "A", "B": "B"}
    assert device_identities(graph) == {"d4": "B"}  # d1, d2 were also used by X; d3 is X's alone
    assert "X" not in graph.persons["identity_id"].to_pylist()


def test_a_person_not_allowing_cross_device_sync_gets_no_device_and_still_makes_a_device_shared():
    graph = build([("d1", "A"), ("d2", "R"), ("d3", "A"), ("d3", "R")], ["A", "R"], ["A"])
    assert identities(graph) == {"A": "A", "R": "R"}
    assert device_identities(graph) == {"d1": "A"}
    assert graph.report["shared_devices"] == 1


def test_empty_inputs_give_empty_outputs():
    graph = build([], [], [])
    assert graph.persons.num_rows == 0 and graph.devices.num_rows == 0
    assert graph.persons.schema == PERSON_IDENTITY_SCHEMA and graph.devices.schema == DEVICE_IDENTITY_SCHEMA
    assert graph.report == {"persons": 0, "identities": 0, "linked_devices": 0, "shared_devices": 0,
                            "linking_rule": LINKING_RULE, "largest_identity": {"persons": 0, "devices": 0},
                            "devices_per_identity": []}
    only_persons = build([], ["B", "A"], [])
    assert identities(only_persons) == {"A": "A", "B": "B"}
    no_persons = build([("d1", "A"), ("d1", "B")], [], ["A", "B"])
    assert no_persons.persons.num_rows == 0 and no_persons.devices.num_rows == 0


def test_other_arrow_layouts_give_the_same_graph():
    pairs = [("d1", "pb"), ("d1", "pa"), ("d2", "pb"), ("d2", "pc"), ("d3", None), ("d4", "pa"), ("d5", "pb")]
    expected = build(pairs, ["pa", "pb", "pc"], ["pa", "pb"])
    assert expected.devices.num_rows == 2
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


def reference_graph(pairs, persons, linking):
    """Obviously correct: every person alone; a device goes to its only signed-in account, if that one may link."""
    accounts = {}
    for device, person in pairs:
        if person is not None:
            accounts.setdefault(device, set()).add(person)
    may_link = set(persons) & set(linking)
    person_identity = {person: person for person in persons}
    device_identity = {device: next(iter(people)) for device, people in accounts.items()
                       if len(people) == 1 and next(iter(people)) in may_link}
    shared = sum(len(people) > 1 for people in accounts.values())
    return person_identity, device_identity, shared


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from([f"d{i}" for i in range(8)]),
                                st.none() | st.sampled_from([f"p{i}" for i in range(10)])), max_size=40),
       persons=st.lists(st.sampled_from([f"p{i}" for i in range(12)]), max_size=12),
       linking=st.lists(st.sampled_from([f"p{i}" for i in range(12)]), max_size=12))
def test_matches_a_plain_reference(pairs, persons, linking):
    graph = build(pairs, persons, linking)
    expected_persons, expected_devices, shared = reference_graph(pairs, persons, linking)
    assert identities(graph) == expected_persons
    assert graph.persons["person_id"].to_pylist() == sorted(expected_persons)
    assert device_identities(graph) == expected_devices
    assert graph.devices.num_rows == len(expected_devices)
    assert graph.report["identities"] == len(expected_persons) == graph.report["persons"]
    per_identity = [list(expected_devices.values()).count(p) for p in expected_persons]
    assert graph.report["devices_per_identity"] == [
        {"devices": k, "identities": per_identity.count(k)} for k in sorted(set(per_identity))]
    assert graph.report["largest_identity"] == {"persons": int(bool(expected_persons)),
                                                "devices": max(per_identity, default=0)}
    assert graph.report["shared_devices"] == shared


def test_a_configuration_still_setting_max_accounts_per_device_is_refused(tmp_path, capsys):
    from pipelines.cli import main

    config = tmp_path / "job.toml"
    config.write_text('workspace = "ws"\nas_of = "2026-11-01T00:00:00Z"\n[identity]\nmax_accounts_per_device = 5\n')
    assert main(["-q", "run", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"portrait: error: [identity] in {config} is no longer read")
    assert "remove the [identity] section" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "ws").exists()
