"""Erasing several accounts in one pass (the job's retention stage) leaves the workspace as erasing them one by one.

One workspace is built once through the command line (``portrait synth --accounts 300 --seed 7``,
``keys init``, ``ingest``, ``run``, a correction and an export); the erased set holds two accounts
that alone signed in on one device, an account named on a waybill another (living) account sent,
and one more. Each test works on its own copies.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipelines.dsr_scope as dsr_scope
from pipelines.dsr import DsrError, erase_held, linked_identifiers
from pipelines.dsr_overlay import load_tombstones
from pipelines.retention import enforce_retention
from pipelines.workspace import Workspace
from portrait_cli import run_cli
from profiling.consent import ConsentEvent, SqliteConsentStore
from profiling.keys import load_key_file
from profiling.pseudonyms import MARKETING, PERSON, pseudonymize
from profiling.schema import TABLES

AS_OF = "2026-11-01T00:00:00Z"


def _cli(*argv) -> None:
    code = run_cli(*argv)
    assert code == 0, f"portrait {' '.join(map(str, argv))} exited {code}"


def _digits(phone: str | None) -> str:
    return "".join(c for c in phone or "" if c.isdigit())[-11:]


class Site:
    """A raw feed, its workspace, its key file, and the accounts erased together."""

    def __init__(self, root: Path) -> None:
        self.root, self.raw, self.ws, self.key = root, root / "raw", root / "ws", root / "keys" / "master.key"

    def copy(self, folder: Path) -> Site:
        shutil.copytree(self.root, folder)
        site = Site(folder)
        site.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("root", "raw", "ws", "key")})
        return site

    def rows(self, table: str) -> list[dict]:
        return pq.read_table(self.ws / "ingested" / table).to_pylist()

    def ingest(self) -> dict:
        _cli("ingest", "--raw", self.raw, "--workspace", self.ws, "--key-file", self.key)
        return json.loads((self.ws / "ingest-report.json").read_text())["tables"]

    def erase(self, accounts: list[str]) -> None:
        workspace = Workspace(self.ws)
        with workspace.job_lock("portrait run"):
            erase_held(workspace, accounts, load_key_file(self.key), cause="cancellation")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Site:
    site = Site(tmp_path_factory.mktemp("erasure-batch"))
    _cli("synth", "--out", site.raw, "--accounts", 300, "--seed", 7)
    _cli("keys", "init", "--key-file", site.key)
    site.ingest()
    (site.root / "job.toml").write_text("[retention]\ncancellation_grace_days = 36500\n")
    _cli("run", "--config", site.root / "job.toml", "--workspace", site.ws, "--key-file", site.key, "--as-of", AS_OF)
    users: dict[str, set[str]] = defaultdict(set)
    for event in site.rows("device_events"):
        if event["account_id"] is not None:
            users[event["device_id"]].add(event["account_id"])
    pairs = sorted((sorted(who), device) for device, who in users.items() if len(who) == 2)
    assert pairs, "the synthetic data has no device two accounts alone signed in on; change the seed"
    (site.a, site.b), site.shared_device = pairs[0]
    by_digits = {_digits(a["phone"]): a["account_id"] for a in site.rows("accounts")}
    site.named, site.sender, site.waybill = next(
        (by_digits[_digits(w["receiver_phone"])], w["account_id"], w["waybill_id"]) for w in site.rows("waybills")
        if w["account_id"] not in (None, site.a, site.b)
        and by_digits.get(_digits(w["receiver_phone"])) not in (None, w["account_id"], site.a, site.b))
    site.plain = next(a["account_id"] for a in site.rows("accounts")
                      if a["account_id"] not in (site.a, site.b, site.named, site.sender))
    site.erased = [site.a, site.b, site.named, site.plain]
    _cli("dsr", "correct", "--account", site.named, "--field", "email", "--value", "named@example.com",
         "--workspace", site.ws, "--key-file", site.key)
    _cli("dsr", "export", "--account", site.a, "--out", site.root.parent / "export-a", "--workspace", site.ws,
         "--key-file", site.key)
    # A derived table over several persons: one row of two erased persons, one of an erased and a living one.
    key = load_key_file(site.key)
    a, b, living = pseudonymize([site.a, site.b, site.sender], key, PERSON, identifier="account_id").to_pylist()
    folder = site.ws / "outputs" / "households"
    folder.mkdir()
    pq.write_table(pa.table({"person_id": [a, a, living], "members": [[a], [a, b], [a, living]]}),
                   folder / "part-00000.parquet")
    return site


def _parquet_rows(site: Site) -> dict[str, list[dict]]:
    return {str(p.relative_to(site.ws)): pq.read_table(p).to_pylist() for p in sorted(site.ws.rglob("*.parquet"))
            if not any(part.startswith(".") for part in p.relative_to(site.ws).parts)}


# A redacted account id is a placeholder derived from the row's content, which holds the time of the request.
_REDACTED = "CASE WHEN chain_redacted = 1 THEN 'redacted' ELSE account_id END"


def _ledger(site: Site) -> dict[str, list]:
    """The ledger's tables as compared: every column that is not a time of recording, nor a hash over one."""
    queries = {
        "consent_events": "SELECT * FROM consent_events ORDER BY seq",
        "consent_loads": "SELECT fingerprint, source, events FROM consent_loads ORDER BY fingerprint",
        "dsr_requests": f"SELECT id, {_REDACTED}, kind, field, chain_redacted FROM dsr_requests ORDER BY id",
        "dsr_erased_ids": "SELECT tombstone_id, kind, key_fingerprint FROM dsr_erased_ids ORDER BY tombstone_id",
        "dsr_corrections": f"SELECT id, {_REDACTED}, field, value, chain_redacted FROM dsr_corrections ORDER BY id",
        "dsr_stale": "SELECT account_id, person_id, field FROM dsr_stale ORDER BY account_id, field",
        "ledger_redactions": "SELECT chain_table, row_key, reason FROM ledger_redactions "
                             "ORDER BY chain_table, row_key, reason",
    }
    with sqlite3.connect(site.ws / "ledger.sqlite") as db:
        return {name: db.execute(query).fetchall() for name, query in queries.items()}


def _state(site: Site) -> dict:
    return {"parquet": _parquet_rows(site), "ledger": _ledger(site),
            "ingest_report": json.loads((site.ws / "ingest-report.json").read_text())}


def test_erasing_a_set_in_one_pass_leaves_what_erasing_them_one_by_one_leaves(base, tmp_path):
    one_by_one, together = base.copy(tmp_path / "one-by-one"), base.copy(tmp_path / "together")
    for account in base.erased:
        one_by_one.erase([account])
    together.erase(base.erased)
    state = _state(together)
    assert state == _state(one_by_one)
    # What the set shares is theirs together: the device only a and b used, the row over a and b.
    key = load_key_file(together.key)
    assert load_tombstones(Workspace(together.ws)).erased([base.shared_device], key, "device_id").all()
    assert not {e["device_id"] for e in together.rows("device_events")} & {base.shared_device}
    a, living = pseudonymize([base.a, base.sender], key, PERSON, identifier="account_id").to_pylist()
    assert state["parquet"]["outputs/households/part-00000.parquet"] == [{"person_id": living,
                                                                          "members": [a, living]}]
    kept = next(w for w in together.rows("waybills") if w["waybill_id"] == base.waybill)
    assert [kept[k] for k in ("receiver_name", "receiver_phone", "receiver_address")] == ["[erased]"] * 3
    assert kept["account_id"] == base.sender
    requests = state["ledger"]["dsr_requests"]
    assert [r[2:] for r in requests if r[2] == "erase"] == [("erase", "cancellation", 1)] * len(base.erased)
    assert all(r[4] == 1 for r in requests)  # every request of an erased account redacted
    for site in (one_by_one, together):
        assert run_cli("ledger", "verify", "--workspace", site.ws) == 0
    # The tombstones keep the same rows out of a re-ingest of the old feed.
    counts = [{name: {k: v for k, v in table.items() if k != "sources"} for name, table in site.ingest().items()}
              for site in (together, one_by_one)]
    assert counts[0] == counts[1] and counts[0]["accounts"]["erased"] == len(base.erased)
    assert _parquet_rows(together) == _parquet_rows(one_by_one)
    assert {a["account_id"] for a in together.rows("accounts")}.isdisjoint(base.erased)


def test_the_retention_stage_reads_each_file_once_for_all_due_accounts(base, tmp_path, monkeypatch):
    site = base.copy(tmp_path / "site")
    workspace = Workspace(site.ws)
    cancelled_at = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
    with SqliteConsentStore(workspace.ledger) as store:
        store.append([ConsentEvent(account, cancelled_at, "cancel", None) for account in base.erased
                      if not any(e["event_type"] == "cancel" for e in store.history(account))], source="api")
    reads: dict[str, int] = defaultdict(int)  # reads of every column of a file (the linked ids read a few)

    class Counted(pq.ParquetFile):
        def __init__(self, path, *args, **kwargs):
            super().__init__(path, *args, **kwargs)
            self.path = str(path)

        def iter_batches(self, *args, columns=None, **kwargs):
            if columns is None:
                reads[self.path] += 1
            return super().iter_batches(*args, columns=columns, **kwargs)

    monkeypatch.setattr(dsr_scope, "pq", SimpleNamespace(ParquetFile=Counted, ParquetWriter=pq.ParquetWriter,
                                                         read_metadata=pq.read_metadata))
    with workspace.job_lock("portrait run"):
        rows = enforce_retention(workspace, load_key_file(site.key), dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
                                 grace_days=14)
    assert rows[0]["rows"] >= len(base.erased)  # and the synthetic feed's own cancellations
    assert reads and max(reads.values()) == 1, {p: n for p, n in reads.items() if n > 1}
    assert {a["account_id"] for a in site.rows("accounts")}.isdisjoint(base.erased)


def test_a_set_with_an_account_the_workspace_does_not_hold_changes_nothing(base, tmp_path):
    site = base.copy(tmp_path / "site")
    before = _state(site)
    with pytest.raises(DsrError, match=r"account 'A9999999999' is not in workspace .* nothing was erased"):
        site.erase([base.a, "A9999999999"])
    assert _state(site) == before
    assert not load_tombstones(Workspace(site.ws))


def test_one_account_id_given_as_text_is_refused(base):
    with pytest.raises(TypeError, match=r"list of account ids.*pass \['A0000000001'\] for one"):
        erase_held(Workspace(base.ws), "A0000000001", load_key_file(base.key))


def test_erasure_and_expiry_stream_each_file_in_batches_and_leave_what_whole_files_leave(base, tmp_path, monkeypatch):
    whole, batched = base.copy(tmp_path / "whole"), base.copy(tmp_path / "batched")
    as_of = dt.datetime(2027, 2, 1, tzinfo=dt.timezone.utc)  # three months of device events more expire

    def erase_and_expire(site: Site) -> None:
        workspace = Workspace(site.ws)
        with workspace.job_lock("portrait run"):
            erase_held(workspace, base.erased, load_key_file(site.key), cause="cancellation")
            enforce_retention(workspace, load_key_file(site.key), as_of, grace_days=36500)

    erase_and_expire(whole)
    monkeypatch.setattr(dsr_scope, "BATCH_CELLS", 1024)
    scanned: list[int] = []  # cells of each batch the erasure matched at once
    scope = dsr_scope._scope
    monkeypatch.setattr(dsr_scope, "_scope", lambda path, rows, *rest: scanned.append(rows.num_rows * rows.num_columns)
                        or scope(path, rows, *rest))
    erase_and_expire(batched)
    assert scanned and max(scanned) <= 1024 and sum(scanned) > 100 * 1024
    assert _state(batched) == _state(whole)
    counts = [json.loads((site.ws / "ingest-report.json").read_text())["tables"]["device_events"]
              ["expired_after_ingest"] for site in (base, batched)]
    assert counts[1] > counts[0]  # the expiry deleted rows too
    # What the erasure and the expiry rewrote, read in batches of a few rows, keeps its row groups: as
    # long as the whole-file run's (a file cut into one row group per batch costs every later reader)
    for folder in ("ingested/accounts", "ingested/device_events", "ingested/devices", "pseudonymized/device_events"):
        paths = [next((site.ws / folder).glob("*.parquet")) for site in (whole, batched)]
        sizes = [_row_groups(path) for path in paths]
        batch = 1024 // pq.read_metadata(paths[1]).num_columns  # rows the batched run read at a time
        assert sizes[0] == sizes[1] and max(sizes[1]) > batch, (folder, sizes, batch)


def _row_groups(path: Path) -> list[int]:
    metadata = pq.read_metadata(path)
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


def test_the_ids_the_scan_takes_for_someone_elses_are_those_a_plain_reading_of_every_row_finds(base):
    workspace, key = Workspace(base.ws), load_key_file(base.key)
    linked = linked_identifiers(workspace, base.erased)
    subjects = set(linked.account_ids)
    accounts, orders = set(), set()
    for table in TABLES.values():
        for row in (base.rows(table.name) if (base.ws / "ingested" / table.name).is_dir() else []):
            accounts |= {row[f.name].strip() for f in table.fields if f.identifier == "account_id"
                         and row[f.name] is not None and row[f.name].strip() not in subjects}
            if table.name == "orders" and (row["account_id"] or "").strip() not in subjects:
                orders.add(row["order_id"].strip())
    pseudonyms = {p for version in key.versions for domain in (PERSON, MARKETING)
                  for p in pseudonymize(sorted(accounts), key, domain, identifier="account_id",
                                        version=version).to_pylist()}
    # every text of every file (the scan offers only the values of the rows about the subjects)
    texts = {value for rows in _parquet_rows(base).values() for row in rows for value in row.values()
             if isinstance(value, str)}
    taken = set(dsr_scope._foreign(workspace, linked, key, pa.array(sorted(texts), pa.string())).keys.to_pylist())
    assert taken == texts & (accounts | orders | pseudonyms)
    assert taken & accounts and taken & orders and taken & pseudonyms
