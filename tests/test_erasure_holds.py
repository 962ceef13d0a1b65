"""Data-subject requests through the command line on synthetic data: erasure holds for ever, corrections
last, and an access export or an erasure touches the subject alone.

One workspace is built once (``portrait synth --accounts 300 --seed 7``, ingest, run); each test works
on its own copy. What belongs to whom is computed here by plain loops over the rows.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from portrait_cli import run_cli
from profiling.keys import load_key_file
from profiling.pseudonyms import DEVICE, MARKETING, PERSON, TOMBSTONE, WAYBILL, pseudonymize

AS_OF = "2026-11-01T00:00:00Z"
_ACCOUNT_ID = re.compile(r"A\d{10}")
_HEX32 = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")


def _cli(*argv) -> None:
    code = run_cli(*argv)
    assert code == 0, f"portrait {' '.join(map(str, argv))} exited {code}"


class Site:
    """A raw feed, its workspace and its key file."""

    def __init__(self, root: Path) -> None:
        self.root, self.raw, self.ws, self.key = root, root / "raw", root / "ws", root / "keys" / "master.key"

    def ingest(self, raw: Path | None = None) -> dict:
        _cli("ingest", "--raw", raw or self.raw, "--workspace", self.ws, "--key-file", self.key)
        return json.loads((self.ws / "ingest-report.json").read_text())["tables"]

    def run(self) -> None:
        # These tests are about `dsr erase`: cancelled accounts wait (tests/test_cancellation.py has the rest).
        config = self.root / "job.toml"
        config.write_text("[retention]\ncancellation_grace_days = 36500\n")
        _cli("run", "--config", config, "--workspace", self.ws, "--key-file", self.key, "--as-of", AS_OF)

    def dsr(self, action: str, account: str, *options) -> None:
        _cli("dsr", action, "--account", account, "--workspace", self.ws, "--key-file", self.key, *options)

    def rows(self, table: str, zone: str = "ingested") -> list[dict]:
        return pq.read_table(self.ws / zone / table).to_pylist()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    site = Site(tmp_path_factory.mktemp("erasure-holds"))
    _cli("synth", "--out", site.raw, "--accounts", 300, "--seed", 7)
    _cli("keys", "init", "--key-file", site.key)
    site.ingest()
    site.run()
    return site.root


@pytest.fixture
def site(base, tmp_path) -> Site:
    shutil.copytree(base, tmp_path / "site")
    return Site(tmp_path / "site")


def _digits(phone: str | None) -> str:
    return "".join(c for c in phone or "" if c.isdigit())[-11:]


def _device_users(events: list[dict]) -> dict[str, set[str]]:
    users: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event["account_id"] is not None:
            users[event["device_id"]].add(event["account_id"])
    return users


def _own_events(events: list[dict], account: str) -> list[dict]:
    """Events signed in to the account, and unsigned events on devices only it signed in on."""
    users = _device_users(events)
    return [e for e in events if e["account_id"] == account
            or (e["account_id"] is None and users.get(e["device_id"]) == {account})]


def _account_on_a_shared_device(site: Site) -> tuple[str, set[str]]:
    users = _device_users(site.rows("device_events"))
    shared = sorted((sorted(u), d) for d, u in users.items() if len(u) > 1)
    assert shared, "the synthetic data has no device shared by two accounts; change the seed"
    accounts, _ = shared[0]
    return accounts[0], set(accounts[1:])


def _text_of(folder: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(folder.iterdir()) if p.is_file())


def _workspace_text(site: Site) -> str:
    parts = [json.dumps(pq.read_table(p).to_pylist(), default=str, ensure_ascii=False)
             for p in sorted(site.ws.rglob("*.parquet")) if not any(s.startswith(".") for s in p.parts)]
    with sqlite3.connect(site.ws / "ledger.sqlite") as db:
        parts.append("\n".join(db.iterdump()))
    return "\n".join(parts)


# --- a key change does not undo an erasure ------------------------------------------------

def test_erasure_holds_through_key_rotation_destruction_and_reingest(site):
    orders = site.rows("orders")
    account = min(o["account_id"] for o in orders)
    phone = _digits(next(a["phone"] for a in site.rows("accounts") if a["account_id"] == account))
    site.dsr("erase", account)
    _cli("keys", "rotate", "--key-file", site.key)
    _cli("keys", "destroy", "--key-file", site.key, "--version", 1)
    assert load_key_file(site.key).versions == (2,)
    report = site.ingest()
    assert report["accounts"]["erased"] == 1 and report["orders"]["erased"] == sum(
        o["account_id"] == account for o in orders)
    site.run()
    text = _workspace_text(site)
    assert account not in text
    assert phone not in re.sub(r"[^0-9]", "", json.dumps([a["phone"] for a in site.rows("accounts")]))
    key = load_key_file(site.key)
    assert pseudonymize([account], key, PERSON, identifier="account_id")[0].as_py() not in text


# --- an access export and an erasure concern the subject alone -----------------------------

def test_export_of_an_account_on_a_shared_device_holds_nobody_else(site, tmp_path):
    account, sharing = _account_on_a_shared_device(site)
    events = site.rows("device_events")
    own = _own_events(events, account)
    site.dsr("export", account, "--out", tmp_path / "export")
    text = _text_of(tmp_path / "export")
    bundle = json.loads((tmp_path / "export" / "bundle.json").read_text())

    assert set(_ACCOUNT_ID.findall(text)) == {account}, "another account's id is in the export"
    key = load_key_file(site.key)
    others = sorted({a["account_id"] for a in site.rows("accounts")} - {account})
    other_pseudonyms = {p for v in key.versions for domain in (PERSON, MARKETING)
                        for p in pseudonymize(others, key, domain, identifier="account_id", version=v).to_pylist()}
    assert set(_HEX32.findall(text)) & other_pseudonyms == set(), "another person's pseudonym is in the export"
    own_ips = {e["ip"] for e in own}
    other_ips = {e["ip"] for e in events if e not in own} - own_ips
    leaked = [ip for ip in sorted(other_ips) if re.search(rf"(?<![0-9.]){re.escape(ip)}(?![0-9.])", text)]
    assert leaked == [], "another person's IP address is in the export"
    # ... and it is not empty: every event of theirs is there, those on the shared device included.
    exported = bundle["tables"]["ingested/device_events"]
    assert sorted(e["event_id"] for e in exported) == sorted(e["event_id"] for e in own)
    assert any(_device_users(events)[e["device_id"]] & sharing for e in exported)
    assert [a["account_id"] for a in bundle["tables"]["ingested/accounts"]] == [account]


def _counts_by_owner(site: Site, theirs: set[str]) -> dict[tuple, int]:
    """Rows per (file, owner) for every owner but the subject (``theirs``: their ids and pseudonyms).

    The owner is the row's account or person, else its device (an unsigned event, a device row),
    else its waybill (a waybill of nobody's account).
    """
    counts: dict[tuple, int] = defaultdict(int)
    for path in sorted(site.ws.rglob("*.parquet")):
        name = str(path.relative_to(site.ws))
        for row in pq.read_table(path).to_pylist():
            owner = row.get("account_id") or row.get("person_id") or row.get("marketing_id") \
                or row.get("device_id") or row.get("waybill_id")
            if owner not in theirs:
                counts[(name, str(owner))] += 1
    return dict(counts)


def _theirs(site: Site, account: str) -> set[str]:
    """Raw ids and pseudonyms of the account, its devices alone and the waybills of nobody's account naming it."""
    key = load_key_file(site.key)
    phone = _digits(next(a["phone"] for a in site.rows("accounts") if a["account_id"] == account))
    devices = sorted(d for d, u in _device_users(site.rows("device_events")).items() if u == {account})
    waybills = sorted(w["waybill_id"] for w in site.rows("waybills") if w["account_id"] is None
                      and phone in (_digits(w["shipper_phone"]), _digits(w["receiver_phone"])))
    ids = {"account_id": [account], "device_id": devices, "waybill_id": waybills}
    theirs = {value for values in ids.values() for value in values}
    for kind, values in ids.items():
        for domain in {"account_id": (PERSON, MARKETING), "device_id": (DEVICE,), "waybill_id": (WAYBILL,)}[kind]:
            if values:
                theirs |= set(pseudonymize(values, key, domain, identifier=kind).to_pylist())
    return theirs


def test_erasing_an_account_on_a_shared_device_changes_nobody_elses_rows(site):
    account, _ = _account_on_a_shared_device(site)
    key = load_key_file(site.key)
    person = pseudonymize([account], key, PERSON, identifier="account_id")[0].as_py()
    phone = _digits(next(a["phone"] for a in site.rows("accounts") if a["account_id"] == account))
    theirs = _theirs(site, account)
    assert person in theirs
    before = _counts_by_owner(site, theirs)
    site.dsr("erase", account)
    after = _counts_by_owner(site, theirs)
    changed = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {}
    assert not any(e["account_id"] == account for e in site.rows("device_events"))
    # Waybills of others that named them stay, with their party blanked; their phone is nowhere.
    assert phone not in {_digits(w[side]) for w in site.rows("waybills") for side in ("shipper_phone",
                                                                                      "receiver_phone")}


def test_waybills_of_others_naming_the_subject_show_and_lose_only_their_party(site, tmp_path):
    phones = {a["account_id"]: a["phone"] for a in site.rows("accounts")}
    by_digits = {_digits(p): a for a, p in phones.items()}
    waybill, account = next((w, by_digits[_digits(w["receiver_phone"])]) for w in site.rows("waybills")
                            if w["account_id"] is not None and by_digits.get(_digits(w["receiver_phone"]))
                            not in (None, w["account_id"]))
    site.dsr("export", account, "--out", tmp_path / "export")
    bundle = json.loads((tmp_path / "export" / "bundle.json").read_text())
    shown = next(r for r in bundle["tables"]["ingested/waybills"] if r["waybill_id"] == waybill["waybill_id"])
    party = ("receiver_name", "receiver_phone", "receiver_address")
    assert {k: shown[k] for k in party} == {k: waybill[k] for k in party}
    assert [shown[k] for k in ("account_id", "order_id", "shipper_name", "shipper_phone", "shipper_address")] == \
        [None] * 5
    assert set(_ACCOUNT_ID.findall(_text_of(tmp_path / "export"))) == {account}
    site.dsr("erase", account)
    for _ in range(2):  # after the erasure, and after a re-ingest of the old source
        kept = next(w for w in site.rows("waybills") if w["waybill_id"] == waybill["waybill_id"])
        assert [kept[k] for k in party] == ["[erased]"] * 3
        assert {k: v for k, v in kept.items() if k not in party} == {k: v for k, v in waybill.items() if k not in party}
        site.ingest()


def test_rows_about_the_subject_and_others_are_neither_exported_nor_erased(site, tmp_path, capsys):
    key = load_key_file(site.key)
    a, b = "A0000000011", "A0000000012"
    person_a, person_b = pseudonymize([a, b], key, PERSON, identifier="account_id").to_pylist()
    folder = site.ws / "outputs" / "households"
    folder.mkdir()
    rows = pa.table({"person_id": [person_a, person_a, person_b],
                     "members": [[person_a], [person_a, person_b], [person_b]], "size": [1, 2, 1]})
    pq.write_table(rows, folder / "part-00000.parquet")
    site.dsr("export", a, "--out", tmp_path / "export")
    bundle = json.loads((tmp_path / "export" / "bundle.json").read_text())
    assert bundle["tables"]["outputs/households"] == [{"person_id": person_a, "members": [person_a], "size": 1}]
    assert bundle["left_out"] == {"outputs/households": 1}
    assert person_b not in _text_of(tmp_path / "export")
    capsys.readouterr()
    site.dsr("erase", a)
    assert "kept 1 rows about this person and others together" in capsys.readouterr().out
    assert pq.read_table(folder).to_pylist() == rows.slice(1).to_pylist()


# --- a correction survives a re-ingest of the old source ---------------------------------

def test_correction_survives_reingest_and_goes_with_an_erasure(site):
    account = "A0000000005"
    old = next(a for a in site.rows("accounts") if a["account_id"] == account)
    others = [a for a in site.rows("accounts") if a["account_id"] != account]
    assert old["phone"] != "13900001234"
    site.dsr("correct", account, "--field", "phone", "--value", "13900001234")
    site.dsr("correct", account, "--field", "email", "--value", "fixed@example.com")
    site.dsr("correct", account, "--field", "birthday", "--value", "1990-02-03")  # a typed column of the source
    site.ingest()  # the old source again
    row = next(a for a in site.rows("accounts") if a["account_id"] == account)
    assert (row["phone"], row["email"], str(row["birthday"])) == ("13900001234", "fixed@example.com", "1990-02-03")
    corrected = ("phone", "email", "birthday")
    assert {k: v for k, v in row.items() if k not in corrected} == {k: v for k, v in old.items() if k not in corrected}
    assert [a for a in site.rows("accounts") if a["account_id"] != account] == others
    site.dsr("correct", account, "--field", "email", "--value", "again@example.com")  # the latest wins
    site.ingest()
    assert next(a["email"] for a in site.rows("accounts") if a["account_id"] == account) == "again@example.com"
    site.dsr("erase", account)
    with sqlite3.connect(site.ws / "ledger.sqlite") as db:
        text = "\n".join(db.iterdump())
    assert "13900001234" not in text and "again@example.com" not in text and account not in text


def test_request_tables_are_hash_chained_and_erasure_redacts_them(site, tmp_path, capsys):
    account = "A0000000009"
    site.dsr("correct", account, "--field", "email", "--value", "nine@example.com")
    site.dsr("export", account, "--out", tmp_path / "export")
    site.dsr("erase", account)
    with sqlite3.connect(site.ws / "ledger.sqlite") as db:
        chained = {row[0] for row in db.execute("SELECT chain_table FROM ledger_chains")}
        assert {"dsr_requests", "dsr_corrections", "dsr_erased_ids"} <= chained
        assert db.execute("SELECT COUNT(*), SUM(chain_redacted) FROM dsr_requests").fetchone() == (2, 2)
        assert db.execute("SELECT value, chain_redacted FROM dsr_corrections").fetchall() == [(None, 1)]
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM dsr_erased_ids")
    capsys.readouterr()
    assert run_cli("ledger", "verify", "--workspace", site.ws) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("dsr_")]
    assert len(lines) == 4 and all(line.endswith("ok") for line in lines), out


def test_a_csv_feed_gets_the_same_corrections_and_erasures(site):
    """The overlay on text cells (CSV) as on typed ones (Parquet)."""
    phones = {a["account_id"]: a["phone"] for a in site.rows("accounts")}
    by_digits = {_digits(p): a for a, p in phones.items()}
    waybill, erased = next((w, by_digits[_digits(w["receiver_phone"])]) for w in site.rows("waybills")
                           if w["account_id"] is not None and by_digits.get(_digits(w["receiver_phone"]))
                           not in (None, w["account_id"]))
    corrected = next(a for a in sorted(phones) if a not in (erased, waybill["account_id"]))
    site.dsr("correct", corrected, "--field", "birthday", "--value", "1988-08-08")
    site.dsr("erase", erased)
    feed = site.root / "raw-csv"
    shutil.copytree(site.raw, feed)
    for table in ("accounts", "waybills"):
        shutil.rmtree(feed / table)
        pacsv.write_csv(pq.read_table(site.raw / table), feed / f"{table}.csv")
    report = site.ingest(feed)
    assert report["accounts"]["erased"] == 1 and report["accounts"]["rejected"] == 0
    row = next(a for a in site.rows("accounts") if a["account_id"] == corrected)
    assert str(row["birthday"]) == "1988-08-08"
    kept = next(w for w in site.rows("waybills") if w["waybill_id"] == waybill["waybill_id"])
    assert [kept[k] for k in ("receiver_name", "receiver_phone", "receiver_address")] == ["[erased]"] * 3
    assert kept["account_id"] == waybill["account_id"]


# --- receiver-only waybills and unsigned events stay out when the account row is gone ---------

def _feed_without(site: Site, account: str, folder: Path) -> None:
    """A later raw feed: the same tables with every row naming the account id removed."""
    for table_folder in sorted(site.raw.iterdir()):
        rows = pq.read_table(table_folder)
        kept = np.ones(rows.num_rows, dtype=bool)
        for name in ("account_id",):
            if name in rows.column_names:
                kept &= ~np.asarray(pc.fill_null(pc.equal(rows.column(name), account), False))
        (folder / table_folder.name).mkdir(parents=True)
        pq.write_table(rows.filter(pa.array(kept)), folder / table_folder.name / "part-00000.parquet")


def test_receiver_only_waybills_and_unsigned_events_stay_out_once_the_account_left_the_feed(site):
    accounts = {a["account_id"]: _digits(a["phone"]) for a in site.rows("accounts")}
    waybills, events = site.rows("waybills"), site.rows("device_events")
    users = _device_users(events)

    def receiver_only(account: str) -> list[dict]:
        return [w for w in waybills if w["account_id"] is None and w["order_id"] is None
                and accounts[account] in (_digits(w["shipper_phone"]), _digits(w["receiver_phone"]))]

    def unsigned(account: str) -> list[dict]:
        return [e for e in events if e["account_id"] is None and users.get(e["device_id"]) == {account}]

    account = next((a for a in sorted(accounts) if receiver_only(a) and unsigned(a)), None)
    assert account, "no account with receiver-only waybills and unsigned events; change the seed"
    named, quiet = receiver_only(account), unsigned(account)
    devices = {e["device_id"] for e in quiet}
    site.dsr("erase", account)
    later = site.root / "raw-later"
    _feed_without(site, account, later)
    assert not any(account in json.dumps(pq.read_table(later / t).to_pylist(), default=str)
                   for t in ("accounts", "orders", "device_events"))
    report = site.ingest(later)
    assert report["waybills"]["erased"] >= len(named) and report["device_events"]["erased"] >= len(quiet)
    phone = accounts[account]
    assert phone not in {_digits(w[side]) for w in site.rows("waybills") for side in ("shipper_phone",
                                                                                      "receiver_phone")}
    assert devices.isdisjoint(e["device_id"] for e in site.rows("device_events"))
    assert devices.isdisjoint(d["device_id"] for d in site.rows("devices"))


def test_ingest_refuses_a_key_that_cannot_recognise_the_tombstones(site, capsys):
    account = "A0000000003"
    site.dsr("erase", account)
    before = (site.ws / "ingested" / "accounts" / "part-00000.parquet").read_bytes()
    other = site.root / "keys" / "other.key"
    _cli("keys", "init", "--key-file", other)
    assert run_cli("ingest", "--raw", site.raw, "--workspace", site.ws, "--key-file", other) == 2
    assert "tombstones were made with tombstone secret" in capsys.readouterr().err
    assert (site.ws / "ingested" / "accounts" / "part-00000.parquet").read_bytes() == before


# --- key files made before the tombstone secret ------------------------------------------------------

def test_an_older_key_file_and_older_tombstones(site, capsys):
    # The key file as it was made before tombstone secrets, and a tombstone as erasure then wrote it.
    lines = site.key.read_text().splitlines()
    site.key.write_text("".join(f"{line}\n" for line in lines if line.startswith("portrait-master-key ")))
    old_key = load_key_file(site.key)
    assert not old_key.has_tombstone_secret
    account = "A0000000007"
    with sqlite3.connect(site.ws / "ledger.sqlite") as db:
        db.execute("CREATE TABLE dsr_tombstones (tombstone_id TEXT PRIMARY KEY, erased_at TEXT NOT NULL)")
        db.execute("INSERT INTO dsr_tombstones VALUES (?, '2026-01-01T00:00:00+00:00')",
                   (pseudonymize([account], old_key, TOMBSTONE, identifier="account_id", version=1)[0].as_py(),))
    _cli("keys", "rotate", "--key-file", site.key)
    assert "added a tombstone secret" in capsys.readouterr().out
    assert run_cli("keys", "destroy", "--key-file", site.key, "--version", "1", "--workspace", site.ws) == 2
    assert "made with key versions" in capsys.readouterr().err
    report = site.ingest()  # honours the old tombstone and re-makes it with the tombstone secret
    assert report["accounts"]["erased"] == 1
    _cli("keys", "destroy", "--key-file", site.key, "--version", "1", "--workspace", site.ws)
    report = site.ingest()
    assert report["accounts"]["erased"] == 1
    assert account not in {a["account_id"] for a in site.rows("accounts")}


def test_the_next_run_after_an_erasure_needs_no_new_ingest(site):
    """An erasure takes the removed rows off the ingest report's accounting: the next run verifies and runs."""
    account = site.rows("accounts")[5]["account_id"]
    before = json.loads((site.ws / "ingest-report.json").read_text())["tables"]
    site.dsr("erase", account)
    after = json.loads((site.ws / "ingest-report.json").read_text())["tables"]
    assert after["accounts"]["accepted"] == before["accounts"]["accepted"] - 1
    for name, counts in after.items():
        assert counts["rows_in"] == counts["accepted"] + counts["rejected"] + counts.get("erased_after_ingest", 0) \
            + counts.get("expired_after_ingest", 0)
        assert counts["accepted"] == pq.read_metadata(next((site.ws / "ingested" / name).glob("*.parquet"))).num_rows
    site.run()
    key = load_key_file(site.key)
    person = pseudonymize([account], key, PERSON, identifier="account_id")[0].as_py()
    for folder in ("portraits", "identity/persons", "recommendations"):
        held = pq.read_table(site.ws / "outputs" / folder).column("person_id").to_pylist()
        assert person not in held
