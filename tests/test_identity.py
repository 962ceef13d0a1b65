"""The identity graph: one identity per person, devices only of one account, trusted once used 24 hours apart,
consent-gated; a plain reference; an intruder's device on a taken-over account joins nobody in the real job."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import re

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portrait_cli import run_cli
from profiling.errors import SchemaError
from profiling.identity import _kernels as identity_kernels
from profiling.identity import (
    DEVICE_IDENTITY_SCHEMA,
    LINKING_RULE,
    PERSON_IDENTITY_SCHEMA,
    TRUSTED_AFTER,
    IdentityGraph,
    build_identity_graph,
)
from profiling.keys import load_master_key
from profiling.pseudonyms import DEVICE, pseudonymize
from profiling.schema import TIMESTAMP

UTC = dt.timezone.utc
START = dt.datetime(2026, 10, 1, tzinfo=UTC)


def at(day: int, hour: float = 9.0) -> dt.datetime:
    """A moment of UTC day ``day`` (0 = 2026-10-01)."""
    return START + dt.timedelta(days=day, hours=hour)


def links_of(*rows, extra=False):
    """A links table from (device, person, day) rows, day an int (see ``at``) or a datetime; person may be None
    (nobody signed in); a row without a day is on day 0."""
    times = [row[2] if len(row) > 2 else 0 for row in rows]
    times = [t if isinstance(t, dt.datetime) else at(t) for t in times]
    columns = {"device_id": pa.array([row[0] for row in rows], pa.string()),
               "person_id": pa.array([row[1] for row in rows], pa.string()),
               "event_at": pa.array(times, TIMESTAMP)}
    if extra:
        columns["event_type"] = pa.array(["open"] * len(rows), pa.string())
    return pa.table(columns)


def on_days(device, person, *days):
    """``device``'s sign-ins by ``person``, one on each of ``days`` (default: days 0 and 1, 24 hours apart: a
    trusted device)."""
    return [(device, person, day) for day in (days or (0, 1))]


def build(pairs, persons, linking, **options) -> IdentityGraph:
    return build_identity_graph(links_of(*pairs), pa.array(persons, pa.string()),
                                pa.array(linking, pa.string()), **options)


def identities(graph):
    return dict(zip(graph.persons["person_id"].to_pylist(), graph.persons["identity_id"].to_pylist(), strict=True))


def device_identities(graph):
    return dict(zip(graph.devices["device_id"].to_pylist(), graph.devices["identity_id"].to_pylist(), strict=True))


def test_devices_of_one_account_join_it_and_accounts_are_never_linked():
    graph = build([*on_days("d1", "pc"), *on_days("d2", "pb", 3, 9, 3), *on_days("d3", "pa"), *on_days("d4", "pb")],
                  ["pc", "pb", "pa"], ["pa", "pb", "pc"])
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
    own = [row for p in people for row in on_days(f"phone-{p}", p)]
    tablet = [("tablet", p, day) for p in people for day in range(sign_ins)]
    graph = build(own + tablet, people, people if consenting else people[:1])
    assert identities(graph) == {p: p for p in people}
    assert "tablet" not in device_identities(graph)
    assert graph.report["shared_devices"] == 1 and graph.report["largest_identity"]["persons"] == 1


def kernel_devices(links, may_link):
    """The engine kernels' devices of each account: ``{device_id: person_id}``."""
    devices = identity_kernels.device_accounts(links)
    edges = identity_kernels.identity_edges(devices, pa.array(sorted(may_link), pa.string()))
    return {v[2:]: u[2:] for u, v in zip(edges["u"].to_pylist(), edges["v"].to_pylist(), strict=True)}


def test_a_device_is_trusted_only_once_its_first_and_last_sign_ins_are_24_hours_apart():
    assert TRUSTED_AFTER == dt.timedelta(hours=24) and "24 hours or more apart" in LINKING_RULE
    almost = TRUSTED_AFTER - dt.timedelta(minutes=1)
    rows = [("once", "A", 0),
            ("same-day", "A", at(0, 0)), ("same-day", "A", at(0, 12)), ("same-day", "A", at(0, 23.99)),
            ("23h59m", "A", at(0, 9)), ("23h59m", "A", at(0, 9) + almost),
            ("24h", "A", at(0, 9)), ("24h", "A", at(0, 9) + TRUSTED_AFTER),
            ("across-midnight", "A", at(0, 23.5)), ("across-midnight", "A", at(1, 0.5)),
            *[("all-day-long", "A", at(0, 0.5) + k * almost / 10) for k in range(11)],
            ("weeks-apart", "A", 0), ("weeks-apart", "A", 0), ("weeks-apart", "A", 30)]
    graph = build(rows, ["A"], ["A"])
    assert device_identities(graph) == {"24h": "A", "weeks-apart": "A"}
    assert kernel_devices(links_of(*rows), {"A"}) == {"24h": "A", "weeks-apart": "A"}
    # the instant counts, not how it is written: 24 hours written in China Standard Time and in UTC
    cst = dt.timezone(dt.timedelta(hours=8))
    zoned = build([("p", "A", at(0, 9)), ("p", "A", (at(0, 9) + TRUSTED_AFTER).astimezone(cst)),
                   ("q", "A", at(0, 9).astimezone(cst)), ("q", "A", at(0, 9) + almost)], ["A"], ["A"])
    assert device_identities(zoned) == {"p": "A"}
    # a second account's sign-ins do not stretch the span: shared stays shared, at any distance
    shared = build([("tablet", "A", 0), ("tablet", "B", 1), ("tablet", "A", 9)], ["A", "B"], ["A", "B"])
    assert device_identities(shared) == {} and shared.report["shared_devices"] == 1


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_the_24_hours_are_exact_in_the_unit_of_the_sign_in_times(unit):
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    start = pa.scalar(at(0, 9), TIMESTAMP).cast(pa.timestamp(unit, tz="UTC")).cast(pa.int64()).as_py()
    day = int(TRUSTED_AFTER.total_seconds()) * per_second
    ticks = [start, start + day - 1, start, start + day]  # a tick short of 24 hours, and 24 hours
    links = pa.table({"device_id": ["short", "short", "day", "day"], "person_id": ["A"] * 4,
                      "event_at": pa.array(ticks, pa.int64()).cast(pa.timestamp(unit, tz="UTC"))})
    assert device_identities(build_identity_graph(links, pa.array(["A"]), pa.array(["A"]))) == {"day": "A"}
    assert kernel_devices(links, {"A"}) == {"day": "A"}


def test_an_intruders_device_used_for_hours_on_a_taken_over_account_joins_nobody_even_across_midnight():
    """The victim uses a phone for weeks; an intruder signs in on the victim's account from a device of their own,
    then orders within hours: that device has one account, the victim's, and must not join (nor get the sync),
    also when the session runs across midnight UTC (two UTC days, under two hours)."""
    victim = [*on_days("victims-phone", "V", *range(0, 60, 3)), *on_days("victims-laptop", "V", 5, 40)]
    intruder = [("intruders-device", "V", at(50, hour)) for hour in (2.0, 2.1, 3.5, 5.0)]  # sign-in, orders
    night = [("night-intruders-device", "V", at(52, hour)) for hour in (23.2, 23.5, 24.4, 25.0)]
    graph = build(victim + intruder + night, ["V", "W"], ["V", "W"])
    assert device_identities(graph) == {"victims-phone": "V", "victims-laptop": "V"}
    assert graph.report["linked_devices"] == 2 and graph.report["shared_devices"] == 0
    assert kernel_devices(links_of(*victim, *intruder, *night), {"V", "W"}) == device_identities(graph)


def test_linking_persons_outside_persons_link_nobody():
    graph = build([*on_days("d1", "A"), ("d1", "X"), ("d2", "X"), *on_days("d2", "B"), *on_days("d3", "X"),
                   *on_days("d4", "B")], ["A", "B"], ["A", "B", "X"])
    assert identities(graph) == {"A": "A", "B": "B"}
    assert device_identities(graph) == {"d4": "B"}  # d1, d2 were also used by X; d3 is X's alone
    assert "X" not in graph.persons["identity_id"].to_pylist()


def test_a_person_not_allowing_cross_device_sync_gets_no_device_and_still_makes_a_device_shared():
    graph = build([*on_days("d1", "A"), *on_days("d2", "R"), *on_days("d3", "A"), ("d3", "R")], ["A", "R"], ["A"])
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
    no_persons = build([*on_days("d1", "A"), ("d1", "B")], [], ["A", "B"])
    assert no_persons.persons.num_rows == 0 and no_persons.devices.num_rows == 0


def test_other_arrow_layouts_give_the_same_graph():
    pairs = [("d1", "pb"), ("d1", "pa"), ("d2", "pb"), ("d2", "pc"), ("d3", None), *on_days("d4", "pa", 0, 0, 2),
             *on_days("d5", "pb"), ("d6", "pa", at(3, 23.9)), ("d6", "pa", at(4, 23.9)), ("d7", "pb", at(3, 23.9)),
             ("d7", "pb", at(4, 0.1))]
    expected = build(pairs, ["pa", "pb", "pc"], ["pa", "pb"])
    assert expected.devices.num_rows == 3
    table = links_of(*pairs, extra=True)
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=2))
    large = table.cast(pa.schema([("device_id", pa.large_string()), ("person_id", pa.large_string()),
                                  ("event_at", TIMESTAMP), ("event_type", pa.string())]))
    encoded = table.set_column(0, "device_id", table["device_id"].dictionary_encode())
    # the same instants in seconds, and written in China Standard Time: the instant is what counts
    local = table.set_column(2, "event_at", table["event_at"].cast(pa.timestamp("s", tz="Asia/Shanghai")))
    nanos = table.set_column(2, "event_at", table["event_at"].cast(pa.timestamp("ns", tz="UTC")))
    persons = pa.chunked_array([["pa"], ["pb", "pc"]])
    for links in (chunked, large, encoded, local, nanos):
        graph = build_identity_graph(links, persons, pa.array(["pa", "pb"], pa.large_string()))
        assert graph.persons.equals(expected.persons)
        assert graph.devices.sort_by("device_id").equals(expected.devices.sort_by("device_id"))
        assert graph.report == expected.report


@pytest.mark.parametrize("missing", ["device_id", "person_id", "event_at"])
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


@pytest.mark.parametrize("times", [pa.array([dt.datetime(2026, 10, 1, 9)], pa.timestamp("us")),
                                   pa.array(["2026-10-01T09:00:00Z"]), pa.array([dt.date(2026, 10, 1)])],
                         ids=["no-time-zone", "text", "date"])
def test_sign_in_times_that_are_not_zoned_timestamps_are_refused(times):
    links = links_of(("d1", "A")).set_column(2, "event_at", times)
    with pytest.raises(SchemaError, match=r"column 'event_at' of table links must hold sign-in times as timestamps "
                                          rf"with a time zone \(UTC\), got {re.escape(str(times.type))}$"):
        build_identity_graph(links, pa.array(["A"]), pa.array(["A"]))


def test_a_signed_in_row_without_a_device_names_the_row():
    links = links_of(("d1", None), (None, None), ("d2", "A"), (None, "B"))
    with pytest.raises(ValueError, match=r"table links, row 3: column 'device_id' is null while person_id is 'B'"):
        build_identity_graph(links, pa.array(["A", "B"]), pa.array(["A", "B"]))
    links = links_of(("d1", None), ("d2", "A"), ("d3", "B")).set_column(
        2, "event_at", pa.array([None, at(0), None], TIMESTAMP))
    with pytest.raises(ValueError, match=r"table links, row 2: column 'event_at' is null while person_id is 'B'"):
        build_identity_graph(links, pa.array(["A", "B"]), pa.array(["A", "B"]))


@pytest.mark.parametrize(("links", "persons", "message"), [
    ({"device_id": ["d"], "person_id": ["A"]}, pa.array(["A"]), "links must be a pyarrow Table"),
    (links_of(("d", "A")), ["A"], "persons must be a pyarrow Array of person pseudonyms, got list"),
    (links_of(("d", "A")), pa.array([1]), "persons must hold person pseudonyms as strings, got int64"),
])
def test_inputs_of_the_wrong_kind_are_refused(links, persons, message):
    with pytest.raises(TypeError, match=message):
        build_identity_graph(links, persons, pa.array(["A"]))


def reference_graph(rows, persons, linking):
    """Obviously correct: every person alone; a device goes to its only signed-in account, if that one may link
    and its first and last sign-in on it are TRUSTED_AFTER or more apart."""
    days = {}
    for device, person, when in rows:
        if person is not None:
            days.setdefault(device, {}).setdefault(person, []).append(when)
    may_link = set(persons) & set(linking)
    person_identity = {person: person for person in persons}
    device_identity = {}
    for device, accounts in days.items():
        (person, times), *others = accounts.items()
        if not others and person in may_link and max(times) - min(times) >= TRUSTED_AFTER:
            device_identity[device] = person
    shared = sum(len(accounts) > 1 for accounts in days.values())
    return person_identity, device_identity, shared


# moments around UTC midnights, a microsecond short of 24 hours apart and 24 hours apart, some written in China
# Standard Time (the same instant, another local date)
MOMENTS = [at(0, 0), at(0, 23.99), at(1, 0) - dt.timedelta(microseconds=1), at(1, 0),
           at(1, 12).astimezone(dt.timezone(dt.timedelta(hours=8))),
           at(1, 23.99).astimezone(dt.timezone(dt.timedelta(hours=8))), at(2, 0.5), at(40, 3)]


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from([f"d{i}" for i in range(6)]),
                               st.none() | st.sampled_from([f"p{i}" for i in range(8)]), st.sampled_from(MOMENTS)),
                     max_size=40),
       persons=st.lists(st.sampled_from([f"p{i}" for i in range(10)]), max_size=10),
       linking=st.lists(st.sampled_from([f"p{i}" for i in range(10)]), max_size=10))
def test_matches_a_plain_reference(rows, persons, linking):
    graph = build(rows, persons, linking)
    expected_persons, expected_devices, shared = reference_graph(rows, persons, linking)
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
    # the engine kernels apply the same rule
    assert kernel_devices(links_of(*rows), set(persons) & set(linking)) == expected_devices
    devices = identity_kernels.device_accounts(links_of(*rows))
    assert identity_kernels.shared_devices(devices)["shared_devices"].to_pylist() == [shared]


def test_the_device_kernel_refuses_a_sign_in_without_a_time():
    links = links_of(("d1", "A"), ("d2", "B")).set_column(2, "event_at", pa.array([at(0), None], TIMESTAMP))
    with pytest.raises(ValueError, match=r"table device_events: 1 row\(s\) have a person_id but no event_at"):
        identity_kernels.device_accounts(links)


def test_a_configuration_still_setting_max_accounts_per_device_is_refused(tmp_path, capsys):
    from pipelines.cli import main

    config = tmp_path / "job.toml"
    config.write_text('workspace = "ws"\nas_of = "2026-11-01T00:00:00Z"\n[identity]\nmax_accounts_per_device = 5\n')
    assert main(["-q", "run", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"portrait: error: [identity] in {config} is no longer read")
    assert "remove the [identity] section" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "ws").exists()


@pytest.fixture(scope="module")
def takeovers(tmp_path_factory):
    """Synthetic data with planted account takeovers (truth kept apart), ingested, and the job's identity stage."""
    from pipelines.run import parse_as_of, run_pipeline
    from pipelines.workspace import Workspace

    root = tmp_path_factory.mktemp("identity-takeovers")
    assert run_cli("synth", "--out", root / "raw", "--accounts", 2000, "--seed", 7, "--truth", root / "truth") == 0
    assert run_cli("ingest", "--raw", root / "raw", "--workspace", root / "ws") == 0
    assert run_cli("keys", "init", "--key-file", root / "master.key") == 0
    workspace = Workspace(root / "ws")
    with contextlib.redirect_stdout(io.StringIO()):
        run_pipeline(workspace, root / "master.key", parse_as_of("2026-11-01T00:00:00Z"), progress=False,
                     stages=["consent-ledger", "pseudonymize", "identity"])
    return root, workspace


def test_the_jobs_identity_links_no_intruder_device_of_a_planted_takeover(takeovers):
    root, workspace = takeovers
    key = load_master_key(root / "master.key")
    truth = pq.read_table(root / "truth" / "devices")
    use = dict(zip(pseudonymize(truth["device_id"], key, DEVICE, identifier="device_id").to_pylist(),
                   truth["use"].to_pylist(), strict=True))
    linked = set(ds.dataset(workspace.outputs("identity") / "devices").to_table()["device_id"].to_pylist())
    persons = ds.dataset(workspace.outputs("identity") / "persons").to_table()
    syncing = set(persons.filter(persons["cross_device_sync"])["person_id"].to_pylist())
    events = ds.dataset(workspace.pseudonymized("device_events")).to_table(columns=["device_id", "person_id"])
    events = events.filter(events["person_id"].is_valid())
    accounts = {}
    for device, person in zip(events["device_id"].to_pylist(), events["person_id"].to_pylist(), strict=True):
        accounts.setdefault(device, set()).add(person)
    # intruder devices whose only account is a victim allowing sync: what the one-account rule alone would link
    exposed = {d for d, people in accounts.items() if use.get(d) == "intruder" and len(people) == 1
               and people <= syncing}
    assert exposed, "the data set plants no takeover the one-account rule alone would link"
    assert not linked & exposed
    assert linked and {use[d] for d in linked} == {"personal"}
    report = json.loads((workspace.root / "identity-report.json").read_text())
    assert report["linking_rule"] == LINKING_RULE and report["linked_devices"] == len(linked)
