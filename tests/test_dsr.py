"""Data-subject requests: export finds everything, corrections are checked, erasure sticks through re-ingest."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.door import pseudonymize_workspace
from pipelines.dsr import (
    DsrError,
    clear_stale,
    correct_account,
    erase_account,
    export_account,
    linked_identifiers,
    stale_persons,
)
from pipelines.dsr_overlay import load_tombstones
from pipelines.ingest import ingest
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.consent import ConsentGate, SqliteConsentStore
from profiling.errors import WorkspaceError
from profiling.keys import MasterKey
from profiling.pseudonyms import DEVICE, ORDER, PERSON, TOMBSTONE, WAYBILL, pseudonymize

KEY = MasterKey({1: bytes(range(32)), 2: bytes(range(5, 37))}, tombstone_secret=bytes(range(9, 41)))
AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def _build(root) -> Workspace:
    """Raw data -> ingested -> consent ledger -> analytics zone -> an output and an ID-number vault."""
    generate(root / "raw", accounts=60, seed=3, catalogue_items=30, progress=False)
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, progress=False)
    with SqliteConsentStore(workspace.ledger) as store:
        store.append_table(workspace.read("consent_events"), source="ingest")
        decision = ConsentGate(store).decide("personalization", AS_OF, job="portraits")
    pseudonymize_workspace(workspace, KEY, as_of=AS_OF.date())
    out = workspace.outputs("portraits")
    out.mkdir(parents=True)
    frame = decision.person_frame(KEY)
    pq.write_table(pa.table({"person_id": frame["person_id"], "score": [1.0] * len(frame)}), out / "part-0.parquet")
    waybills = workspace.read("waybills", ["waybill_id", "id_card_number"])
    vault = workspace.root / "vault" / "waybill_id_numbers"
    vault.mkdir(parents=True)
    pq.write_table(pa.table({"waybill_id": waybills.column("waybill_id"),
                             "sealed": pa.array([b"sealed"] * waybills.num_rows, pa.binary())}),
                   vault / "part-00000.parquet")
    return workspace


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("dsr"))


@pytest.fixture
def workspace(base, tmp_path):
    shutil.copytree(base.root.parent, tmp_path / "copy")
    return Workspace(tmp_path / "copy" / "ws")


def _busiest_account(workspace: Workspace) -> str:
    """An account with orders, waybills, devices, consent, an ID number and a portrait row."""
    cross = workspace.read("waybills").filter(pc.is_valid(pc.field("id_card_number")))
    candidates = [a for a in pc.unique(cross.column("account_id").drop_null()).to_pylist()]
    signed_in = set(workspace.read("device_events").column("account_id").drop_null().to_pylist())
    portraits = set(pq.read_table(workspace.outputs("portraits")).column("person_id").to_pylist())
    for account in sorted(candidates):
        person = pseudonymize([account], KEY, PERSON, identifier="account_id")[0].as_py()
        if account in signed_in and person in portraits:
            return account
    raise AssertionError("the synthetic data has no account with every kind of link; change the seed")


def _secrets(workspace: Workspace, account: str) -> tuple[set[str], set[str]]:
    """Raw identifiers of the person, and every pseudonym of them."""
    linked = linked_identifiers(workspace, account)
    row = workspace.read("accounts").filter(pc.field("account_id") == account).to_pylist()[0]
    waybills = workspace.read("waybills").filter(pc.is_in(pc.field("waybill_id"),
                                                           pa.array(sorted(linked.ids["waybill_id"]), pa.string())))
    raw = linked.raw_values() | {row["phone"], row["nickname"]} | ({row["email"]} if row["email"] else set())
    raw |= set(waybills.column("id_card_number").drop_null().to_pylist())
    pseudonyms = linked.pseudonyms(KEY)
    return raw, pseudonyms


def _workspace_text(workspace: Workspace) -> str:
    """Every file of the workspace as text: Parquet decoded, SQLite dumped, anything else as bytes."""
    parts = []
    for path in sorted(p for p in workspace.root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            parts.append(json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False))
        elif path.suffix == ".sqlite":
            connection = sqlite3.connect(path)
            parts.append("\n".join(connection.iterdump()))
            connection.close()
        else:
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


def _assert_gone(workspace: Workspace, raw: set[str], pseudonyms: set[str]) -> None:
    text = _workspace_text(workspace)
    assert [value for value in sorted(raw) if value in text] == []
    assert [value for value in sorted(pseudonyms) if value in text] == []


def test_erase_leaves_only_the_tombstone_and_reingest_does_not_resurrect(workspace):
    account = _busiest_account(workspace)
    raw, pseudonyms = _secrets(workspace, account)
    before = _workspace_text(workspace)
    person = pseudonymize([account], KEY, PERSON, identifier="account_id")[0].as_py()
    assert account in before and person in before  # the scan does see them while they are there
    report = erase_account(workspace, account, KEY)
    assert report.consent_events_removed > 0 and report.tombstones >= 2  # the account id and its phone at least
    assert report.other_files_naming_them == []
    assert any(path.startswith("vault/") for path in report.rows_removed)
    assert any(path.startswith("pseudonymized/") for path in report.rows_removed)
    assert any(path.startswith("outputs/portraits") for path in report.rows_removed)
    _assert_gone(workspace, raw, pseudonyms)
    stones = load_tombstones(workspace)
    assert stones.by_kind["account_id"] == {pseudonymize([account], KEY, TOMBSTONE, identifier="account_id")[0].as_py()}
    assert len(stones.by_kind["phone"]) == 1 and stones.legacy == frozenset()
    # Others are untouched: another account still has its rows.
    assert workspace.read("accounts").num_rows == 59

    with pytest.raises(WorkspaceError, match="tombstone.*master key"):
        ingest(workspace.root.parent / "raw", workspace, progress=False)
    reports = ingest(workspace.root.parent / "raw", workspace, progress=False, key=KEY)
    assert reports["accounts"].erased == 1 and reports["orders"].erased > 0
    assert sum(r.rejected for r in reports.values()) == 0  # linked rows are dropped, not rejected
    pseudonymize_workspace(workspace, KEY, as_of=AS_OF.date())
    _assert_gone(workspace, raw, pseudonyms)
    assert workspace.read("accounts").num_rows == 59


def test_erase_refuses_a_key_without_a_tombstone_secret(workspace):
    files = {p: p.read_bytes() for p in workspace.ingested("accounts").glob("*.parquet")}
    versions_only = MasterKey({v: KEY.secret_bytes(v) for v in KEY.versions})
    with pytest.raises(DsrError, match="needs a key with a tombstone secret"):
        erase_account(workspace, "A0000000001", versions_only)
    assert {p: p.read_bytes() for p in workspace.ingested("accounts").glob("*.parquet")} == files
    assert not load_tombstones(workspace)


def test_erase_unknown_account_changes_nothing(workspace):
    with pytest.raises(DsrError, match="not in workspace"):
        erase_account(workspace, "A9999999999", KEY)
    assert not load_tombstones(workspace)


def test_export_bundles_every_zone_and_the_consent_history(workspace, tmp_path):
    account = _busiest_account(workspace)
    bundle = export_account(workspace, account, KEY, tmp_path / "export")
    tables = bundle["tables"]
    for section in ("ingested/accounts", "ingested/orders", "ingested/waybills", "ingested/device_events",
                    "ingested/devices", "pseudonymized/accounts", "pseudonymized/orders", "outputs/portraits",
                    "vault/waybill_id_numbers"):
        assert tables.get(section), section
    assert [r["account_id"] for r in tables["ingested/accounts"]] == [account]
    person = pseudonymize([account], KEY, PERSON, identifier="account_id")[0].as_py()
    assert {r["person_id"] for r in tables["pseudonymized/orders"]} == {person}
    assert bundle["consent_history"] and bundle["requests"][-1]["kind"] == "export"
    files = {p.name for p in (tmp_path / "export").iterdir()}
    assert {"bundle.json", "ingested__accounts.csv", "consent_history.csv"} <= files
    assert json.loads((tmp_path / "export" / "bundle.json").read_text())["account_id"] == account
    linked = linked_identifiers(workspace, account)
    orders = {pseudonymize([o], KEY, ORDER, identifier="order_id")[0].as_py() for o in linked.ids["order_id"]}
    assert {r["order_id"] for r in tables["pseudonymized/orders"]} == orders
    assert DEVICE and WAYBILL  # every domain the door writes is covered by LinkedIdentifiers.pseudonyms


def test_export_refuses_unknown_account_and_used_folder(workspace, tmp_path):
    with pytest.raises(DsrError, match="not in workspace"):
        export_account(workspace, "A9999999999", KEY, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(DsrError, match="not empty"):
        export_account(workspace, "A0000000000", KEY, tmp_path / "used")


def test_correct_updates_the_row_records_it_and_marks_stale(workspace):
    account = "A0000000001"
    row = correct_account(workspace, account, "email", "fixed@example.com", KEY)
    assert row["email"] == "fixed@example.com"
    accounts = workspace.read("accounts")
    assert accounts.filter(pc.field("account_id") == account).column("email").to_pylist() == ["fixed@example.com"]
    assert accounts.num_rows == 60
    person = pseudonymize([account], KEY, PERSON, identifier="account_id")[0].as_py()
    assert [(s["person_id"], s["field"]) for s in stale_persons(workspace)] == [(person, "email")]
    assert clear_stale(workspace, [person]) == 1 and stale_persons(workspace) == []
    with sqlite3.connect(workspace.ledger) as db:
        assert db.execute("SELECT account_id, kind, field FROM dsr_requests").fetchall() == \
            [(account, "correct", "email")]


@pytest.mark.parametrize(("field", "value", "match"), [
    ("email", "not-an-email", "rejected by the data model.*malformed_email"),
    ("phone", "12", "rejected by the data model"),
    ("birthday", "1999-13-45", "rejected by the data model"),
    ("gender", "robot", "rejected by the data model.*unknown_value"),
    ("account_id", "A1", "cannot be corrected"),
    ("shoe_size", "42", "cannot be corrected"),
])
def test_bad_correction_is_refused_and_nothing_written(workspace, field, value, match):
    files = {p: p.read_bytes() for p in workspace.ingested("accounts").glob("*.parquet")}
    with pytest.raises(DsrError, match=match):
        correct_account(workspace, "A0000000001", field, value, KEY)
    assert {p: p.read_bytes() for p in workspace.ingested("accounts").glob("*.parquet")} == files
    assert stale_persons(workspace) == []


def test_correct_unknown_account(workspace):
    with pytest.raises(DsrError, match="has no row"):
        correct_account(workspace, "A9999999999", "email", "x@example.com", KEY)


def _reference_removed(workspace: Workspace, account: str) -> dict[str, int]:
    """Rows of each ingested table that are the account's alone, by plain loops over the rows.

    A waybill naming their phone is theirs only when no account or order owns it; a device is theirs
    only when nobody else signed in on it, and then so are its unsigned events.
    """
    rows = {name: workspace.read(name).to_pylist() for name in
            ("accounts", "orders", "waybills", "device_events", "devices", "consent_events")}

    def digits(phone: str) -> str:
        return "".join(c for c in phone if c.isdigit())[-11:]

    phone = digits(next(r["phone"] for r in rows["accounts"] if r["account_id"] == account))
    if any(digits(r["phone"]) == phone for r in rows["accounts"] if r["account_id"] != account):
        phone = "shared with another account"
    orders = {r["order_id"] for r in rows["orders"] if r["account_id"] == account}
    waybills = {r["waybill_id"] for r in rows["waybills"]
                if r["account_id"] == account or r["order_id"] in orders
                or (r["account_id"] is None and r["order_id"] is None
                    and phone in (digits(r["shipper_phone"]), digits(r["receiver_phone"])))}
    users: dict[str, set] = {}
    for r in rows["device_events"]:
        if r["account_id"] is not None:
            users.setdefault(r["device_id"], set()).add(r["account_id"])
    devices = {device for device, who in users.items() if who == {account}}
    return {
        "accounts": sum(r["account_id"] == account for r in rows["accounts"]),
        "orders": len(orders),
        "waybills": len(waybills),
        "device_events": sum(r["account_id"] == account or (r["account_id"] is None and r["device_id"] in devices)
                             for r in rows["device_events"]),
        "devices": sum(r["device_id"] in devices for r in rows["devices"]),
        "consent_events": sum(r["account_id"] == account for r in rows["consent_events"]),
    }


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(min_value=0, max_value=59))
def test_erase_removes_exactly_the_linked_rows(base, tmp_path_factory, index):
    workspace = Workspace(tmp_path_factory.mktemp("erase") / "ws")
    shutil.copytree(base.root, workspace.root)
    account = f"A{index:010d}"
    expected = _reference_removed(workspace, account)
    before = {name: workspace.read(name).num_rows for name in expected}
    raw, pseudonyms = _secrets(workspace, account)
    erase_account(workspace, account, KEY)
    assert {name: before[name] - workspace.read(name).num_rows for name in expected} == expected
    _assert_gone(workspace, raw, pseudonyms)


def test_erase_lists_other_files_that_still_name_the_person(workspace):
    (workspace.root / "outputs" / "notes").mkdir(parents=True)
    (workspace.root / "outputs" / "notes" / "call.txt").write_text("called A0000000003 about a parcel")
    report = erase_account(workspace, "A0000000003", KEY)
    assert report.other_files_naming_them == ["outputs/notes/call.txt"]
