"""The door: the analytics zone holds no raw identifier, keeps every row and is replaced atomically."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import pipelines.door as door
from pipelines.door import door_plan, pseudonymize_workspace
from pipelines.ingest import ingest
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.errors import WorkspaceError
from profiling.keys import MasterKey
from profiling.pseudonyms import PERSON, pseudonymize
from profiling.schema import TABLE_NAMES, TABLES, PrivacyClass

KEY = MasterKey({1: bytes(range(32))})
ROTATED = MasterKey({1: bytes(range(32)), 2: bytes(range(2, 34))})
AS_OF = dt.date(2026, 11, 1)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("door")
    generate(root / "raw", accounts=150, seed=5, catalogue_items=40, progress=False)
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, progress=False)
    return workspace


@pytest.fixture(scope="module")
def zone(ingested):
    return ingested, pseudonymize_workspace(ingested, KEY, as_of=AS_OF, batch_rows=97)


def _strings(column: pa.ChunkedArray) -> set[str]:
    while pa.types.is_list(column.type):
        column = pc.list_flatten(column)
    if not pa.types.is_string(column.type):
        return set()
    return {v for v in column.to_pylist() if v is not None}


def test_no_raw_identifier_or_sensitive_column_in_the_zone(zone):
    workspace, _ = zone
    raw_identifiers: set[str] = set()
    sensitive_names: set[str] = set()
    for name, model in TABLES.items():
        raw = workspace.read(name)
        for field in model.fields:
            if field.privacy in (PrivacyClass.DIRECT_IDENTIFIER, PrivacyClass.SENSITIVE):
                raw_identifiers |= _strings(raw.column(field.name))
            if field.privacy is PrivacyClass.SENSITIVE:
                sensitive_names.add(field.name)
    # phones also in canonical form (the door could have leaked a normalized copy)
    raw_identifiers |= {p.replace(" ", "").replace("-", "")[-11:] for p in raw_identifiers
                        if sum(c.isdigit() for c in p) == 11}
    assert len(raw_identifiers) > 1000
    files = sorted((workspace.root / "pseudonymized").rglob("*.parquet"))
    assert {f.parent.name for f in files} == set(TABLE_NAMES)
    for path in files:
        found = pq.read_table(path)
        assert not sensitive_names & set(found.column_names), path
        for column_name in found.column_names:
            leaked = _strings(found.column(column_name)) & raw_identifiers
            assert not leaked, f"{path.parent.name}.{column_name} holds {len(leaked)} raw identifiers"


def test_rows_kept_and_pseudonyms_join(zone):
    workspace, summary = zone
    for name in TABLE_NAMES:
        assert pq.read_table(workspace.pseudonymized(name)).num_rows == workspace.read(name).num_rows
        assert summary["tables"][name]["rows"] == workspace.read(name).num_rows
    accounts = pq.read_table(workspace.pseudonymized("accounts"))
    expected = pseudonymize(workspace.read("accounts").column("account_id"), KEY, PERSON, identifier="account_id")
    assert accounts.column("person_id").combine_chunks().equals(expected)
    orders = pq.read_table(workspace.pseudonymized("orders"))
    assert pc.all(pc.is_in(orders.column("person_id"), value_set=accounts.column("person_id").combine_chunks())).as_py()
    assert set(accounts.column_names) == {"person_id", "age_band", "gender", "province", "created_at"}
    assert all(p is None or len(p) == 2 for p in accounts.column("province").to_pylist())
    events = pq.read_table(workspace.pseudonymized("device_events"))
    assert all(p is None or p.endswith(("/24", "/48")) for p in events.column("ip_prefix").to_pylist())
    catalogue = pq.read_table(workspace.pseudonymized("catalogue"))
    assert catalogue.equals(workspace.read("catalogue").replace_schema_metadata(catalogue.schema.metadata))


def test_key_version_recorded_and_rotation_rewrites(ingested):
    summary = pseudonymize_workspace(ingested, ROTATED, as_of=AS_OF)
    assert summary["key_version"] == 2
    accounts = pq.read_table(ingested.pseudonymized("accounts"))
    assert accounts.schema.metadata[b"portrait.key_version"] == b"2"
    assert accounts.schema.field("person_id").metadata[b"portrait.key_version"] == b"2"
    assert accounts.schema.field("person_id").metadata[b"portrait.domain"] == b"person"
    old = pseudonymize(ingested.read("accounts").column("account_id"), ROTATED, PERSON, identifier="account_id",
                       version=1)
    assert not set(accounts.column("person_id").to_pylist()) & set(old.to_pylist())
    pseudonymize_workspace(ingested, KEY, as_of=AS_OF)  # back to version 1 for the other tests
    assert pq.read_table(ingested.pseudonymized("accounts")).column("person_id").combine_chunks().equals(old)


def test_the_plan_follows_the_registry():
    for name, model in TABLES.items():
        for rule in door_plan(name):
            field = model[rule.source]
            if field.privacy is PrivacyClass.SENSITIVE:
                assert rule.action == "drop"
            if field.privacy is PrivacyClass.NON_PERSONAL:
                assert (rule.action, rule.output) == ("pass", field.name)
            if field.identifier in ("phone", "person_name", "email", "address", "id_card"):
                assert rule.action == "drop"


def test_a_crash_midway_leaves_the_previous_zone(ingested, monkeypatch):
    pseudonymize_workspace(ingested, KEY, as_of=AS_OF)
    before = {p: p.read_bytes() for p in (ingested.root / "pseudonymized").rglob("*.parquet")}
    real = door._transform

    def failing(batch, rules, schema, *args):
        if schema.metadata[b"table"] == b"waybills":
            raise RuntimeError("disk on fire")
        return real(batch, rules, schema, *args)

    monkeypatch.setattr(door, "_transform", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        pseudonymize_workspace(ingested, ROTATED, as_of=AS_OF)
    after = {p: p.read_bytes() for p in (ingested.root / "pseudonymized").rglob("*.parquet")}
    assert after == before
    assert not list(ingested.root.glob(".staging-*"))


def test_needs_an_ingested_workspace_and_a_key(tmp_path, ingested):
    with pytest.raises(WorkspaceError, match="run `portrait ingest"):
        pseudonymize_workspace(Workspace(tmp_path / "empty"), KEY)
    with pytest.raises(TypeError, match="needs a MasterKey"):
        pseudonymize_workspace(ingested, b"\x00" * 32)
    with pytest.raises(ValueError, match="batch_rows must be at least 1"):
        pseudonymize_workspace(ingested, KEY, batch_rows=0)


@pytest.fixture(scope="module")
def portrait_run(tmp_path_factory):
    """A workspace after a real `portrait run` on synthetic data (the command line, in process)."""
    from pipelines.cli import main

    root = tmp_path_factory.mktemp("run")
    key_file, ws = root / "keys" / "master.key", root / "ws"
    for argv in (["synth", "--out", str(root / "raw"), "--accounts", "200", "--seed", "7"],
                 ["keys", "init", "--key-file", str(key_file)],
                 ["ingest", "--raw", str(root / "raw"), "--workspace", str(ws)],
                 ["run", "--workspace", str(ws), "--key-file", str(key_file), "--as-of", "2026-11-01"]):
        assert main(["--quiet", *argv]) == 0, argv
    return Workspace(ws)


def _raw_identifier_values(workspace: Workspace) -> set[str]:
    """Every raw value that identifies a person or their record, derived from the registry.

    The string values of every column that is not NON_PERSONAL (closed vocabularies such as
    gender excepted: "female" names nobody), plus the primary key of every table holding a
    direct identifier (a row key such as an event id leads back to the row, whatever its class).
    """
    values: set[str] = set()
    for name, model in TABLES.items():
        personal = any(f.privacy is PrivacyClass.DIRECT_IDENTIFIER for f in model.fields)
        raw = workspace.read(name)
        for field in model.fields:
            identifying = field.privacy is not PrivacyClass.NON_PERSONAL and field.allowed is None
            if identifying or (personal and field.name == model.primary_key):
                values |= _strings(raw.column(field.name))
    return values


def test_no_analytics_table_joins_back_to_a_raw_identifier(portrait_run):
    raw_identifiers = _raw_identifier_values(portrait_run)
    event_ids = _strings(portrait_run.read("consent_events").column("event_id"))
    assert event_ids and event_ids <= raw_identifiers and len(raw_identifiers) > 5000
    identifiable = {portrait_run.root / zone for zone in ("ingested", "rejects", "vault")}
    files = [p for p in sorted(portrait_run.root.rglob("*.parquet")) if not identifiable & set(p.parents)]
    assert {p.parent.name for p in files} >= set(TABLE_NAMES) | {"portraits", "recommendations"}
    for path in files:
        found = pq.read_table(path)
        for column_name in found.column_names:
            matches = _strings(found.column(column_name)) & raw_identifiers
            assert not matches, (f"{path.relative_to(portrait_run.root)} column {column_name} joins "
                                 f"{len(matches)} raw identifier values, e.g. {sorted(matches)[:3]}")


def test_event_ids_are_identifiers_and_never_cross_the_door():
    for name in ("consent_events", "device_events"):
        field = TABLES[name]["event_id"]
        assert field.privacy is PrivacyClass.DIRECT_IDENTIFIER
        assert [r.action for r in door_plan(name) if r.source == "event_id"] == ["drop"]
