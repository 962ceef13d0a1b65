"""``portrait consent ...`` and ``portrait dsr ...`` through the command line's ``main``.

Requests name accounts the way people type them; they are taken in the form ingest keys them, and
an account the workspace's ingested accounts do not hold is refused with nothing recorded.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipelines.cli as cli
from pipelines.ingest import ingest
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.consent import SqliteConsentStore
from profiling.keys import create_key_file
from profiling.pseudonyms import PERSON, pseudonymize_one

ACCOUNT = "A0000000002"
UNKNOWN = "A9999999999"
# What ingest's normalization (profiling.pseudonyms.normalize, "account_id") trims around an id.
PADDING = " \t\n\r\x0b\x0c\x1c\x85\xa0\u1680\u2003\u2028\u3000"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("consent-cli")
    generate(root / "raw", accounts=20, seed=1, catalogue_items=20, progress=False)
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, progress=False)
    return workspace


@pytest.fixture()
def ws(ingested, tmp_path) -> Workspace:
    """A fresh copy of the module's ingested workspace (no ledger yet)."""
    shutil.copytree(ingested.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


@pytest.mark.parametrize("first", [
    ("budget", "set", "--dataset", "orders", "--epsilon", "1"),
    ("consent", "grant", "--account", ACCOUNT, "--purpose", "personalization", "--at", "2025-01-02T00:00:00Z"),
], ids=["budget-set", "consent-grant"])
def test_the_ledger_file_gets_the_large_pages_whichever_command_makes_it(ws, capsys, first):
    # Every part opens the ledger one way (profiling.ledger_file): the budget ledger once made it with
    # SQLite's 4 KiB pages, and every later bulk load paid for four times as many page writes.
    assert _run(capsys, *first, "--workspace", str(ws.root))[0] == 0
    assert _run(capsys, "consent", "accept-policy", "--account", ACCOUNT, "--at", "2025-01-01T00:00:00Z",
                "--workspace", str(ws.root))[0] == 0
    with sqlite3.connect(ws.ledger) as db:
        assert db.execute("PRAGMA page_size").fetchone()[0] == 65536


def _ledger_rows(workspace: Workspace) -> list[tuple]:
    """Every consent event's account id and type, as stored (empty when there is no ledger)."""
    if not workspace.ledger.is_file():
        return []
    with sqlite3.connect(workspace.ledger) as db:
        return db.execute("SELECT account_id, event_type FROM consent_events ORDER BY seq").fetchall()


def test_grant_revoke_show(ws, capsys):
    root = str(ws.root)
    assert _run(capsys, "consent", "accept-policy", "--account", ACCOUNT, "--at", "2025-01-01T00:00:00Z",
                "--workspace", root)[0] == 0
    code, out, _ = _run(capsys, "consent", "grant", "--account", ACCOUNT, "--purpose", "personalization",
                        "--at", "2025-01-02T00:00:00Z", "--workspace", root)
    assert code == 0 and f"recorded grant personalization for account {ACCOUNT}" in out
    _run(capsys, "consent", "revoke", "--account", ACCOUNT, "--purpose", "personalization",
         "--at", "2025-03-01T00:00:00Z", "--workspace", root)
    _run(capsys, "consent", "dnd", "on", "--account", ACCOUNT, "--at", "2025-01-03T00:00:00Z", "--workspace", root)

    def state(as_of: str, purpose: str) -> str:
        code, out, _ = _run(capsys, "consent", "show", "--account", ACCOUNT, "--as-of", as_of, "--workspace", root)
        assert code == 0
        rows = [line.split() for line in out.splitlines()]
        return next(row[2] for row in rows if row and row[0] == purpose)

    assert state("2025-02-01T00:00:00Z", "personalization") == "allowed"
    assert state("2025-04-01T00:00:00Z", "personalization") == "revoked"
    assert state("2025-04-01T00:00:00Z", "service_provision") == "allowed"
    assert state("2025-04-01T00:00:00Z", "marketing_messages") == "not_granted"
    code, out, _ = _run(capsys, "consent", "show", "--account", f" {ACCOUNT} ", "--as-of", "2025-04-01",
                        "--workspace", root)
    assert "do not disturb on" in out and "4 event(s)" in out
    with SqliteConsentStore(ws.ledger) as store:
        assert [e["source"] for e in store.history(ACCOUNT)] == ["cli"] * 4
        assert store.audit_records() == []  # showing decides nothing for a job


def test_unknown_purpose_lists_the_known_ones(ws, capsys):
    code, _, err = _run(capsys, "consent", "grant", "--account", ACCOUNT, "--purpose", "personalisation",
                        "--workspace", str(ws.root))
    assert code == 2
    assert "unknown purpose 'personalisation'; did you mean 'personalization'?" in err
    assert "marketing_messages" in err
    assert _ledger_rows(ws) == []


def test_show_of_unknown_account_and_bad_time(ws, capsys):
    _run(capsys, "consent", "accept-policy", "--account", ACCOUNT, "--workspace", str(ws.root))  # a ledger
    code, out, _ = _run(capsys, "consent", "show", "--account", UNKNOWN, "--workspace", str(ws.root))
    assert code == 0 and "no consent events" in out and "no_consent_record" in out
    code, _, err = _run(capsys, "consent", "grant", "--account", ACCOUNT, "--purpose", "personalization",
                        "--at", "yesterday", "--workspace", str(ws.root))
    assert code == 2 and "not an ISO 8601 time" in err


def test_event_after_cancellation_is_refused(ws, capsys):
    root = str(ws.root)
    _run(capsys, "consent", "cancel", "--account", ACCOUNT, "--at", "2025-01-01T00:00:00Z", "--workspace", root)
    code, _, err = _run(capsys, "consent", "grant", "--account", ACCOUNT, "--purpose", "personalization",
                        "--at", "2025-02-01T00:00:00Z", "--workspace", root)
    assert code == 2 and "cancellation is final" in err


@pytest.mark.parametrize("command", [
    ["consent", "grant", "--purpose", "personalization"],
    ["consent", "revoke", "--purpose", "personalization"],
    ["consent", "sensitive-grant", "--purpose", "service_provision"],
    ["consent", "accept-policy"],
    ["consent", "dnd", "on"],
    ["dsr", "export", "--out", "{tmp}/export"],
    ["dsr", "correct", "--field", "email", "--value", "new@example.com"],
    ["dsr", "erase"],
])
def test_an_account_the_workspace_does_not_know_is_refused_and_nothing_recorded(ws, tmp_path, capsys, command):
    key_file = tmp_path / "keys" / "master.key"
    create_key_file(key_file)
    _run(capsys, "consent", "accept-policy", "--account", ACCOUNT, "--workspace", str(ws.root))  # a ledger
    before = _ledger_rows(ws)
    files_before = sorted(p for p in ws.root.rglob("*") if p.is_file() and ".job-lock" not in p.name)
    argv = [part.format(tmp=tmp_path) for part in command]
    extra = ["--key-file", str(key_file)] if command[0] == "dsr" else []
    for account in (UNKNOWN, f" {UNKNOWN} ", ACCOUNT.lower()):
        code, out, err = _run(capsys, *argv, "--account", account, "--workspace", str(ws.root), *extra)
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith("portrait: error: account ")
        assert "is not among the" in err and "nothing was recorded" in err
    assert _ledger_rows(ws) == before
    assert sorted(p for p in ws.root.rglob("*") if p.is_file() and ".job-lock" not in p.name) == files_before
    assert not (tmp_path / "export").exists()


def test_a_padded_revocation_is_recorded_as_ingest_keys_it_and_honoured_by_the_next_run(ws, tmp_path, capsys):
    key_file = tmp_path / "keys" / "master.key"
    key = create_key_file(key_file)
    root, now = str(ws.root), dt.datetime.now(dt.UTC)
    run = ["run", "--workspace", root, "--key-file", str(key_file)]
    assert _run(capsys, *run, "--as-of", now.isoformat())[0] == 0
    lists = ds.dataset(ws.outputs("recommendations"), format="parquet").to_table()
    personalized = set(lists.filter(pc.field("personalized"))["person_id"].to_pylist())
    portraits = set(ds.dataset(ws.outputs("portraits"), format="parquet").to_table()["person_id"].to_pylist())
    accounts = ws.read("accounts", ["account_id"])["account_id"].to_pylist()
    account = next(a for a in accounts if pseudonymize_one(a, key, PERSON, identifier="account_id") in
                   personalized & portraits)
    person = pseudonymize_one(account, key, PERSON, identifier="account_id")

    code, out, err = _run(capsys, "consent", "revoke", "--account", f" {account} ", "--purpose", "personalization",
                          "--workspace", root)
    assert code == 0, err
    assert f"recorded revoke personalization for account {account} at" in out
    assert (account, "revoke") in _ledger_rows(ws)
    assert all(stored == stored.strip() for stored, _ in _ledger_rows(ws))

    assert _run(capsys, *run, "--as-of", dt.datetime.now(dt.UTC).isoformat())[0] == 0
    portraits = ds.dataset(ws.outputs("portraits"), format="parquet").to_table()["person_id"].to_pylist()
    assert person not in portraits
    lists = ds.dataset(ws.outputs("recommendations"), format="parquet").to_table()
    theirs = lists.filter(pc.field("person_id") == person)
    assert not any(theirs["personalized"].to_pylist())

    code, _, err = _run(capsys, "dsr", "erase", "--account", f"\t{account}", "--key-file", str(key_file),
                        "--workspace", root)
    assert code == 0, err
    assert [row for row in _ledger_rows(ws) if row[0].strip() == account] == []


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=25)
@given(left=st.text(PADDING, max_size=3), right=st.text(PADDING, max_size=3), lowered=st.booleans())
def test_padding_reaches_the_ingested_account_and_case_is_part_of_the_id(ingested, tmp_path_factory, capsys,
                                                                         left, right, lowered):
    """Ingest keys accounts with the whitespace around them removed and their case kept: so does the CLI."""
    workspace = Workspace(tmp_path_factory.mktemp("padded") / "ws")
    shutil.copytree(ingested.root, workspace.root)
    typed = left + (ACCOUNT.lower() if lowered else ACCOUNT) + right
    code, out, err = _run(capsys, "consent", "revoke", "--account", typed, "--purpose", "marketing_messages",
                          "--workspace", str(workspace.root))
    if lowered:
        assert code == 2 and "is not among the" in err
        assert _ledger_rows(workspace) == []
    else:
        assert code == 0, err
        assert f"for account {ACCOUNT} at" in out
        assert _ledger_rows(workspace) == [(ACCOUNT, "revoke")]


def test_load_is_idempotent_and_dsr_commands(ws, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PORTRAIT_MASTER_KEY", raising=False)
    root = str(ws.root)
    code, out, _ = _run(capsys, "consent", "load", "--workspace", root)
    events = ws.read("consent_events").num_rows
    assert code == 0 and f"{events} offered, {events} recorded, 0 already" in out
    code, out, _ = _run(capsys, "consent", "load", "--workspace", root)
    assert f"0 recorded, {events} already in the ledger" in out

    key_file = str(tmp_path / "keys" / "master.key")
    create_key_file(key_file)
    code, out, _ = _run(capsys, "dsr", "export", "--account", f" {ACCOUNT}", "--key-file", key_file,
                        "--workspace", root, "--out", str(tmp_path / "export"))
    assert code == 0 and "ingested/accounts" in out
    bundle = json.loads((tmp_path / "export" / "bundle.json").read_text())
    assert bundle["tables"]["ingested/accounts"][0]["account_id"] == ACCOUNT
    code, _, err = _run(capsys, "dsr", "correct", "--account", ACCOUNT, "--field", "email",
                        "--value", "nope", "--key-file", key_file, "--workspace", root)
    assert code == 2 and "rejected by the data model" in err
    code, out, _ = _run(capsys, "dsr", "correct", "--account", f"{ACCOUNT}\t", "--field", "email",
                        "--value", "new@example.com", "--key-file", key_file, "--workspace", root)
    assert code == 0 and f"of account {ACCOUNT};" in out and "marked stale" in out
    code, out, _ = _run(capsys, "dsr", "erase", "--account", ACCOUNT, "--key-file", key_file, "--workspace", root)
    assert code == 0 and f"erased account {ACCOUNT}" in out
    code, _, err = _run(capsys, "dsr", "erase", "--account", ACCOUNT, "--workspace", root)
    assert code == 2 and "PORTRAIT_MASTER_KEY" in err
