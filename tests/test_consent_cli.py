"""``portrait consent ...`` and ``portrait dsr ...`` through the command line's ``main``."""

from __future__ import annotations

import json

import pipelines.cli as cli
from pipelines.ingest import ingest
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.consent import SqliteConsentStore
from profiling.keys import create_key_file


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_grant_revoke_show(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert _run(capsys, "consent", "accept-policy", "--account", "A1", "--at", "2025-01-01T00:00:00Z",
                "--workspace", ws)[0] == 0
    code, out, _ = _run(capsys, "consent", "grant", "--account", "A1", "--purpose", "personalization",
                        "--at", "2025-01-02T00:00:00Z", "--workspace", ws)
    assert code == 0 and "recorded grant personalization for account A1" in out
    _run(capsys, "consent", "revoke", "--account", "A1", "--purpose", "personalization",
         "--at", "2025-03-01T00:00:00Z", "--workspace", ws)
    _run(capsys, "consent", "dnd", "on", "--account", "A1", "--at", "2025-01-03T00:00:00Z", "--workspace", ws)

    def state(as_of: str, purpose: str) -> str:
        code, out, _ = _run(capsys, "consent", "show", "--account", "A1", "--as-of", as_of, "--workspace", ws)
        assert code == 0
        rows = [line.split() for line in out.splitlines()]
        return next(row[2] for row in rows if row and row[0] == purpose)

    assert state("2025-02-01T00:00:00Z", "personalization") == "allowed"
    assert state("2025-04-01T00:00:00Z", "personalization") == "revoked"
    assert state("2025-04-01T00:00:00Z", "service_provision") == "allowed"
    assert state("2025-04-01T00:00:00Z", "marketing_messages") == "not_granted"
    code, out, _ = _run(capsys, "consent", "show", "--account", "A1", "--as-of", "2025-04-01", "--workspace", ws)
    assert "do not disturb on" in out and "4 event(s)" in out
    with SqliteConsentStore(tmp_path / "ws" / "ledger.sqlite") as store:
        assert [e["source"] for e in store.history("A1")] == ["cli"] * 4
        assert store.audit_records() == []  # showing decides nothing for a job


def test_unknown_purpose_lists_the_known_ones(tmp_path, capsys):
    code, _, err = _run(capsys, "consent", "grant", "--account", "A1", "--purpose", "personalisation",
                        "--workspace", str(tmp_path / "ws"))
    assert code == 2
    assert "unknown purpose 'personalisation'; did you mean 'personalization'?" in err
    assert "marketing_messages" in err
    assert not (tmp_path / "ws" / "ledger.sqlite").exists() or \
        SqliteConsentStore(tmp_path / "ws" / "ledger.sqlite").history("A1") == []


def test_show_of_unknown_account_and_bad_time(tmp_path, capsys):
    _run(capsys, "consent", "accept-policy", "--account", "A1", "--workspace", str(tmp_path / "ws"))  # a ledger
    code, out, _ = _run(capsys, "consent", "show", "--account", "A404", "--workspace", str(tmp_path / "ws"))
    assert code == 0 and "no consent events" in out and "no_consent_record" in out
    code, _, err = _run(capsys, "consent", "grant", "--account", "A1", "--purpose", "personalization",
                        "--at", "yesterday", "--workspace", str(tmp_path / "ws"))
    assert code == 2 and "not an ISO 8601 time" in err


def test_event_after_cancellation_is_refused(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    _run(capsys, "consent", "cancel", "--account", "A1", "--at", "2025-01-01T00:00:00Z", "--workspace", ws)
    code, _, err = _run(capsys, "consent", "grant", "--account", "A1", "--purpose", "personalization",
                        "--at", "2025-02-01T00:00:00Z", "--workspace", ws)
    assert code == 2 and "cancellation is final" in err


def test_load_is_idempotent_and_dsr_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PORTRAIT_MASTER_KEY", raising=False)
    generate(tmp_path / "raw", accounts=20, seed=1, catalogue_items=20, progress=False)
    workspace = Workspace(tmp_path / "ws")
    ingest(tmp_path / "raw", workspace, progress=False)
    ws = str(workspace.root)
    code, out, _ = _run(capsys, "consent", "load", "--workspace", ws)
    events = workspace.read("consent_events").num_rows
    assert code == 0 and f"{events} offered, {events} recorded, 0 already" in out
    code, out, _ = _run(capsys, "consent", "load", "--workspace", ws)
    assert f"0 recorded, {events} already in the ledger" in out

    key_file = str(tmp_path / "keys" / "master.key")
    create_key_file(key_file)
    code, out, _ = _run(capsys, "dsr", "export", "--account", "A0000000002", "--key-file", key_file,
                        "--workspace", ws, "--out", str(tmp_path / "export"))
    assert code == 0 and "ingested/accounts" in out
    bundle = json.loads((tmp_path / "export" / "bundle.json").read_text())
    assert bundle["tables"]["ingested/accounts"][0]["account_id"] == "A0000000002"
    code, _, err = _run(capsys, "dsr", "correct", "--account", "A0000000002", "--field", "email",
                        "--value", "nope", "--key-file", key_file, "--workspace", ws)
    assert code == 2 and "rejected by the data model" in err
    code, out, _ = _run(capsys, "dsr", "correct", "--account", "A0000000002", "--field", "email",
                        "--value", "new@example.com", "--key-file", key_file, "--workspace", ws)
    assert code == 0 and "marked stale" in out
    code, out, _ = _run(capsys, "dsr", "erase", "--account", "A0000000002", "--key-file", key_file, "--workspace", ws)
    assert code == 0 and "erased account A0000000002" in out
    code, _, err = _run(capsys, "dsr", "erase", "--account", "A0000000002", "--workspace", ws)
    assert code == 2 and "PORTRAIT_MASTER_KEY" in err
