"""Cross-border transfers through the real job and the command line (PIPL Art. 38-39).

One workspace is built once (``portrait synth``, ``ingest``, ``keys init``, ``run``: the run seals
the ID numbers into the vault); each test works on a copy. What may leave is computed here from
the raw synthetic tables and the ledger's events with a plain reference of the consent rules, not
with the gate the export uses.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
from collections import Counter

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from portrait_cli import run_cli

from pipelines.workspace import Workspace
from profiling.consent import ConsentEvent, SqliteConsentStore
from profiling.errors import PortraitError
from profiling.keys import load_key_file
from profiling.overseas import OVERSEAS_RECEIVERS, checked_transfer
from profiling.pseudonyms import PERSON, pseudonymize
from profiling.schema import TABLES

ACCOUNTS, SEED = 600, 11
PURPOSE = "cross_border_transfer"
BROKER, CARRIER = "hk_customs_broker", "hk_line_haul_carrier"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross-border")
    assert run_cli("synth", "--out", root / "raw", "--accounts", ACCOUNTS, "--seed", SEED) == 0
    assert run_cli("ingest", "--raw", root / "raw", "--workspace", root / "ws") == 0
    assert run_cli("keys", "init", "--key-file", root / "keys" / "master.key") == 0
    assert run_cli("run", "--workspace", root / "ws", "--key-file", root / "keys" / "master.key",
                   "--as-of", "2026-11-01T00:00:00Z") == 0
    return root


@pytest.fixture()
def site(base, tmp_path):
    """A copy of the built workspace (with its raw tables and key) that a test may change."""
    shutil.copytree(base, tmp_path / "site")
    return tmp_path / "site"


def _export(site, out, receiver=BROKER, *extra):
    return run_cli("export", "--recipient", receiver, "--out", out, "--workspace", site / "ws",
                   "--key-file", site / "keys" / "master.key", "--by", "test operator", *extra)


def _raw_waybills(site) -> list[dict]:
    """The raw waybills as synthesized (the only place plaintext ID numbers remain after the run), of the
    waybills ingest accepted."""
    accepted = set(Workspace(site / "ws").read("waybills", columns=["waybill_id"])["waybill_id"].to_pylist())
    return [w for w in pq.read_table(site / "raw" / "waybills").to_pylist() if w["waybill_id"] in accepted]


def _may_receive(site, *, sensitive: bool) -> set[str]:
    """Accounts whose separate consent to cross_border_transfer holds now, replayed event by event.

    Rules (profiling.purposes): no grant means no; the latest grant/revoke decides; a sensitive
    grant is needed on top when ``sensitive``; a cancellation ends everything.
    """
    now = dt.datetime.now(dt.timezone.utc)
    with SqliteConsentStore(site / "ws" / "ledger.sqlite") as store:
        events = store.events().to_pylist()
    granted: dict[str, bool] = {}
    sensitive_granted: dict[str, bool] = {}
    cancelled: set[str] = set()
    for event in sorted(events, key=lambda e: e["event_at"]):
        if event["event_at"] > now:
            continue
        account, kind = event["account_id"], event["event_type"]
        if kind == "cancel":
            cancelled.add(account)
        elif event["purpose"] == PURPOSE and kind in ("grant", "revoke"):
            granted[account] = kind == "grant"
        elif event["purpose"] == PURPOSE and kind in ("sensitive_grant", "sensitive_revoke"):
            sensitive_granted[account] = kind == "sensitive_grant"
    return {a for a, yes in granted.items()
            if yes and a not in cancelled and (not sensitive or sensitive_granted.get(a, False))}


def _log(site) -> tuple[list[dict], list[dict]]:
    connection = sqlite3.connect(site / "ws" / "ledger.sqlite")
    connection.row_factory = sqlite3.Row
    try:
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "transfer_log" not in tables:
            return [], []
        log = [dict(r) for r in connection.execute("SELECT * FROM transfer_log ORDER BY id")]
        persons = [dict(r) for r in connection.execute("SELECT * FROM transfer_persons ORDER BY id")]
    finally:
        connection.close()
    return log, persons


def _revoke_everyone(site) -> int:
    """Every person whose separate consent holds revokes it (through the ledger's API, as an app would)."""
    holding = sorted(_may_receive(site, sensitive=False))
    said = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    with SqliteConsentStore(site / "ws" / "ledger.sqlite") as store:
        store.append([ConsentEvent(a, said, "revoke", PURPOSE, channel="app") for a in holding], source="app")
    return len(holding)


def _person(site, account: str) -> str:
    key = load_key_file(site / "keys" / "master.key")
    return pseudonymize([account], key, PERSON, identifier="account_id")[0].as_py()


def test_the_synthetic_data_grants_the_separate_consent_to_a_share_of_cross_border_senders(base):
    waybills = pq.read_table(base / "raw" / "waybills").to_pylist()
    cross_accounts = {w["account_id"] for w in waybills if w["cross_border"] and w["account_id"]}
    events = pq.read_table(base / "raw" / "consent_events").to_pylist()
    grants = {e["account_id"] for e in events if e["purpose"] == PURPOSE and e["event_type"] == "grant"}
    with_ids = {e["account_id"] for e in events if e["purpose"] == PURPOSE and e["event_type"] == "sensitive_grant"}
    assert grants <= cross_accounts and with_ids <= grants
    assert 0.65 <= len(grants) / len(cross_accounts) <= 0.95
    assert 0.7 <= len(with_ids) / len(grants) <= 0.97
    assert any(e["purpose"] == PURPOSE and e["event_type"] == "revoke" for e in events)


def test_only_consenting_persons_cross_border_waybills_and_declared_fields_leave(site, capsys):
    out = site / "out"
    capsys.readouterr()
    assert _export(site, out) == 0
    printed = capsys.readouterr().out
    raw = {w["waybill_id"]: w for w in _raw_waybills(site)}
    allowed = _may_receive(site, sensitive=True)
    expected = {w for w, row in raw.items() if row["cross_border"] and row["account_id"] in allowed}
    not_cross = sum(1 for row in raw.values() if not row["cross_border"])
    assert expected and not_cross > 10 * len(expected)  # most waybills stay home: the filter has teeth
    sent = pacsv.read_csv(out / f"{BROKER}.csv", convert_options=pacsv.ConvertOptions(
        column_types={"id_card_number": "string", "waybill_id": "string"}))
    assert sent.column_names == list(OVERSEAS_RECEIVERS[BROKER].fields)
    assert set(sent["waybill_id"].to_pylist()) == expected and sent.num_rows == len(expected)
    for row in sent.to_pylist():  # the ID number is the one sealed from the raw row, opened from the vault
        assert row["id_card_number"] == raw[row["waybill_id"]]["id_card_number"]
        assert row["receiver_name"] == raw[row["waybill_id"]]["receiver_name"]
    log, persons = _log(site)
    assert len(log) == 1 and log[0]["outcome"] == "sent" and log[0]["rows"] == len(expected)
    assert (log[0]["receiver"], log[0]["country"], log[0]["mechanism"], log[0]["operator"]) == (
        BROKER, "HK", "standard_contract", "test operator")
    assert json.loads(log[0]["fields"]) == list(OVERSEAS_RECEIVERS[BROKER].fields)
    per_account = Counter(raw[w]["account_id"] for w in expected)
    assert {p["person_id"]: p["rows"] for p in persons} == {_person(site, a): n for a, n in per_account.items()}
    assert all(p["person_id"] not in per_account for p in persons)  # pseudonyms, never raw ids
    report = json.loads((out / f"{BROKER}.report.json").read_text())
    assert report["transfer_id"] == log[0]["id"] and report["rows"] == len(expected)
    assert f"sent {len(expected)} cross-border waybills of {len(per_account)} persons" in printed


def test_without_separate_consent_nothing_leaves_and_the_refusal_is_logged(site, capsys):
    ingested = Workspace(site / "ws").read("waybills", columns=["account_id", "cross_border"]).to_pylist()
    cross_accounts = {w["account_id"] for w in ingested if w["cross_border"] and w["account_id"]}
    assert _revoke_everyone(site) > 0 and not _may_receive(site, sensitive=False)
    out = site / "out"
    capsys.readouterr()
    assert _export(site, out, CARRIER) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"portrait: error: cross-border transfer to {CARRIER} refused: none of the "
                            f"{len(cross_accounts)} persons with cross-border waybills holds the separate consent")
    assert error.count("\n") == 1 and "nothing written" in error
    assert not out.exists() or not any(out.iterdir())
    log, persons = _log(site)
    assert [(r["receiver"], r["outcome"], r["rows"], r["persons"]) for r in log] == [(CARRIER, "refused", 0, 0)]
    assert json.loads(log[0]["left_out"])["revoked"] >= 1 and not persons
    assert run_cli("ledger", "verify", "--workspace", site / "ws") == 0


def test_consent_revoked_between_two_exports_and_the_person_is_told(site, capsys):
    assert _export(site, site / "first", CARRIER) == 0
    first = set(pacsv.read_csv(site / "first" / f"{CARRIER}.csv")["waybill_id"].to_pylist())
    raw = _raw_waybills(site)
    account = sorted({w["account_id"] for w in raw if w["waybill_id"] in first})[0]
    theirs = {w["waybill_id"] for w in raw if w["account_id"] == account and w["cross_border"]}
    assert theirs <= first
    assert run_cli("consent", "revoke", "--account", account, "--purpose", PURPOSE,
                   "--workspace", site / "ws") == 0
    assert _export(site, site / "second", CARRIER) == 0
    second = set(pacsv.read_csv(site / "second" / f"{CARRIER}.csv")["waybill_id"].to_pylist())
    assert second == first - theirs
    log, persons = _log(site)
    assert [r["rows"] for r in log] == [len(first), len(second)]
    assert _person(site, account) not in {p["person_id"] for p in persons if p["transfer_id"] == log[1]["id"]}
    assert run_cli("dsr", "export", "--account", account, "--out", site / "dsr", "--workspace", site / "ws",
                   "--key-file", site / "keys" / "master.key") == 0
    transfers = json.loads((site / "dsr" / "bundle.json").read_text())["transfers"]
    assert [(t["transfer_id"], t["receiver"], t["country"], t["mechanism"], t["rows"]) for t in transfers] == [
        (log[0]["id"], CARRIER, "HK", "certification", len(theirs))]
    assert json.loads(transfers[0]["fields"]) == list(OVERSEAS_RECEIVERS[CARRIER].fields)
    assert (site / "dsr" / "transfers.csv").is_file()


def test_without_the_sensitive_grant_no_id_number_leaves(site):
    raw = _raw_waybills(site)
    plain, with_ids = _may_receive(site, sensitive=False), _may_receive(site, sensitive=True)
    lacking = plain - with_ids
    assert lacking  # the synthetic data has persons who consented to the transfer but not to their ID number
    their_rows = [w for w in raw if w["cross_border"] and w["account_id"] in lacking]
    assert _export(site, site / "ids") == 0
    text = (site / "ids" / f"{BROKER}.csv").read_text(encoding="utf-8")
    assert not any(w["waybill_id"] in text or w["id_card_number"] in text for w in their_rows)
    fields = "waybill_id,receiver_name,weight_kg"
    assert _export(site, site / "no-ids", BROKER, "--fields", fields, "--format", "parquet") == 0
    sent = pq.read_table(site / "no-ids" / f"{BROKER}.parquet")
    assert sent.column_names == fields.split(",")
    assert {w["waybill_id"] for w in their_rows} <= set(sent["waybill_id"].to_pylist())
    log, _ = _log(site)
    assert json.loads(log[0]["left_out"])["no_sensitive_consent"] == len(
        {w["account_id"] for w in their_rows})
    assert "no_sensitive_consent" not in json.loads(log[1]["left_out"])


def test_id_numbers_leave_only_from_the_vault(site, capsys):
    shutil.rmtree(site / "ws" / "vault")
    capsys.readouterr()
    assert _export(site, site / "out") == 2
    assert "has no ID-number vault: ID numbers leave only from the vault" in capsys.readouterr().err
    assert not (site / "out").exists() and _log(site) == ([], [])


@pytest.mark.parametrize("receiver, extra, message", [
    ("us_customs", (), "unknown recipient 'us_customs'; the declared recipients are payment_institution; overseas "
                       "receivers (cross-border): hk_customs_broker, hk_line_haul_carrier"),
    (BROKER, ("--fields", "waybill_id,receiver_phone"), "may receive only waybill_id, receiver_name, "
                                                        "receiver_address, weight_kg, service_type, id_card_number; "
                                                        "refused: receiver_phone; nothing written"),
    (CARRIER, ("--fields", "account_id"), "refused: account_id"),
    (CARRIER, ("--as-of", "2026-01-01T00:00:00Z"), "--as-of does not apply"),
    (CARRIER, ("--institution", "alipay"), "--institution scopes payment institutions only"),
])
def test_refused_requests_write_and_log_nothing(site, capsys, receiver, extra, message):
    capsys.readouterr()
    assert _export(site, site / "out", receiver, *extra) == 2
    error = capsys.readouterr().err
    assert error.startswith("portrait: error: ") and message in error and error.count("\n") == 1
    assert not (site / "out").exists() and _log(site) == ([], [])


def test_tampering_with_the_transfer_log_is_detected(site, capsys):
    assert _export(site, site / "out", CARRIER) == 0
    connection = sqlite3.connect(site / "ws" / "ledger.sqlite", isolation_level=None)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            connection.execute("UPDATE transfer_log SET rows = 0")
        triggers = [r[0] for r in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'transfer_persons'")]
        for name in triggers:
            connection.execute(f'DROP TRIGGER "{name}"')
        connection.execute("DELETE FROM transfer_persons WHERE id = (SELECT MIN(id) FROM transfer_persons)")
    finally:
        connection.close()
    capsys.readouterr()
    assert run_cli("ledger", "verify", "--workspace", site / "ws") == 2
    captured = capsys.readouterr()
    assert "transfer_persons" in captured.out and "broken" in captured.err
    # A log that no longer holds cannot record the next transfer, so nothing more leaves.
    assert _export(site, site / "after", CARRIER) == 2
    assert "append-only trigger(s)" in capsys.readouterr().err and not any((site / "after").glob("*.csv"))


def test_the_privacy_review_has_a_transfers_section(site):
    assert _export(site, site / "a", CARRIER) == 0
    assert _export(site, site / "b", CARRIER, "--fields", "waybill_id") == 0
    _revoke_everyone(site)
    assert _export(site, site / "c", CARRIER) == 2
    assert run_cli("budget", "report", "--workspace", site / "ws", "--out", site / "review") == 0
    review = json.loads((site / "review" / "review.json").read_text())
    log, persons = _log(site)
    sent = [r for r in log if r["outcome"] == "sent"]
    [entry] = review["transfers"]
    assert {k: entry[k] for k in ("receiver", "country", "mechanism", "transfers", "rows", "persons", "refusals")} == {
        "receiver": CARRIER, "country": "HK", "mechanism": "certification", "transfers": 2,
        "rows": sum(r["rows"] for r in sent), "persons": len({p["person_id"] for p in persons}), "refusals": 1}
    markdown = (site / "review" / "review.md").read_text()
    section = markdown.split("## Cross-border transfers", 1)[1].split("\n## ", 1)[0]
    assert f"| {CARRIER} | HK | certification | 2 | {entry['rows']} | {entry['persons']} | 1 |" in section


@given(st.lists(st.sampled_from(TABLES["waybills"].column_names), max_size=8))
def test_a_field_list_passes_only_when_every_field_is_declared(fields):
    declared = OVERSEAS_RECEIVERS[BROKER].fields
    if fields and set(fields) <= set(declared):
        assert checked_transfer(BROKER, fields=fields)[1] == tuple(dict.fromkeys(fields))
    else:
        with pytest.raises(PortraitError, match=f"overseas receiver '{BROKER}' may receive only .*nothing written"):
            checked_transfer(BROKER, fields=fields)
