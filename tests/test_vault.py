from __future__ import annotations

import datetime as dt
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.ingest import ingest
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling import vault
from profiling.consent import ConsentEvent, SqliteConsentStore
from profiling.errors import PortraitError, WorkspaceError
from profiling.keys import MasterKey
from profiling.vault import (
    VAULT_SCHEMA,
    ConsentRefusedError,
    VaultIntegrityError,
    customs_id_numbers,
    id_numbers_vault,
    seal_id_numbers,
)

KEY = MasterKey({1: bytes(range(32))})
ROTATED = MasterKey({1: bytes(range(32)), 2: bytes(range(2, 34))})
UTC = dt.UTC
AS_OF = dt.datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("vault")
    generate(root / "raw", accounts=150, seed=5, catalogue_items=40, progress=False)
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, progress=False)
    return workspace


@pytest.fixture()
def sealed(ingested, tmp_path):
    workspace = Workspace(tmp_path / "ws")
    shutil.copytree(ingested.root / "ingested", workspace.root / "ingested")
    seal_id_numbers(workspace, KEY)
    numbers = workspace.read("waybills", ["waybill_id", "account_id", "id_card_number"])
    numbers = numbers.filter(pc.and_(pc.is_valid(numbers["id_card_number"]), pc.is_valid(numbers["account_id"])))
    one_per_account = {row["account_id"]: row for row in numbers.to_pylist()}
    return workspace, list(one_per_account.values())[:4]


def _ledger(path, accounts, *, sensitive=True):
    events = []
    for account in accounts:
        events.append(ConsentEvent(account, dt.datetime(2025, 1, 1, tzinfo=UTC), "policy_accept"))
        if sensitive:
            events.append(ConsentEvent(account, dt.datetime(2025, 1, 2, tzinfo=UTC), "sensitive_grant",
                                       "service_provision"))
    with SqliteConsentStore(path) as store:
        store.append(events, source="api")
    return path


def test_seal_writes_only_ciphertext(ingested, tmp_path):
    workspace = Workspace(tmp_path / "ws")
    shutil.copytree(ingested.root / "ingested", workspace.root / "ingested")
    expected = workspace.read("waybills", ["id_card_number"]).column("id_card_number").drop_null()
    assert seal_id_numbers(workspace, KEY, progress=True) == len(expected) > 0
    table = pq.read_table(id_numbers_vault(workspace))
    assert table.schema.equals(VAULT_SCHEMA)
    assert set(table["key_version"].to_pylist()) == {1}
    assert len(set(table["nonce"].to_pylist())) == table.num_rows  # a fresh nonce per value
    stored = b"".join(p.read_bytes() for p in id_numbers_vault(workspace).rglob("*") if p.is_file())
    assert not any(number.encode() in stored for number in expected.to_pylist())


def test_customs_reads_back_with_sensitive_consent(sealed, tmp_path):
    workspace, rows = sealed
    ledger = _ledger(tmp_path / "ledger.sqlite", {r["account_id"] for r in rows})
    got = customs_id_numbers(workspace, KEY, [r["waybill_id"] for r in rows], as_of=AS_OF, ledger=ledger)
    assert got == {r["waybill_id"]: r["id_card_number"] for r in rows}


def test_customs_refuses_without_sensitive_consent(sealed, tmp_path):
    workspace, rows = sealed
    lacking = rows[0]["account_id"]
    ledger = _ledger(tmp_path / "ledger.sqlite", {r["account_id"] for r in rows} - {lacking})
    _ledger(ledger, [lacking], sensitive=False)
    refused = sum(r["account_id"] == lacking for r in rows)
    with pytest.raises(ConsentRefusedError, match=f"{refused} of {len(rows)} waybills .* nothing returned"):
        customs_id_numbers(workspace, KEY, [r["waybill_id"] for r in rows], as_of=AS_OF, ledger=ledger)
    # consent granted after the as-of moment does not count either
    with pytest.raises(ConsentRefusedError):
        customs_id_numbers(workspace, KEY, [rows[0]["waybill_id"]], as_of=dt.datetime(2024, 1, 1, tzinfo=UTC),
                           ledger=_ledger(tmp_path / "other.sqlite", [lacking]))


def _rewrite(workspace, change):
    folder = id_numbers_vault(workspace)
    table = pq.read_table(folder, schema=VAULT_SCHEMA)
    shutil.rmtree(folder)
    folder.mkdir()
    pq.write_table(change(table), folder / "part-0.parquet")


def test_a_flipped_byte_or_a_moved_ciphertext_fails_to_open(sealed, tmp_path):
    workspace, rows = sealed
    ledger = _ledger(tmp_path / "ledger.sqlite", {r["account_id"] for r in rows})
    target = rows[0]["waybill_id"]

    def flip(table):
        ciphertexts = table["ciphertext"].to_pylist()
        index = table["waybill_id"].to_pylist().index(target)
        ciphertexts[index] = bytes([ciphertexts[index][0] ^ 1]) + ciphertexts[index][1:]
        return table.set_column(4, VAULT_SCHEMA.field("ciphertext"), pa.array(ciphertexts, pa.binary()))

    _rewrite(workspace, flip)
    with pytest.raises(VaultIntegrityError, match=f"waybill '{target}' failed authentication"):
        customs_id_numbers(workspace, KEY, [target], as_of=AS_OF, ledger=ledger)

    seal_id_numbers(workspace, KEY)
    other = rows[1]["waybill_id"]

    def swap(table):
        ids = table["waybill_id"].to_pylist()
        a, b = ids.index(target), ids.index(other)
        order = list(range(table.num_rows))
        order[a], order[b] = b, a
        moved = [table.column(name).take(order) if name in ("nonce", "ciphertext") else table.column(name)
                 for name in VAULT_SCHEMA.names]
        return pa.table(moved, schema=VAULT_SCHEMA)

    _rewrite(workspace, swap)
    with pytest.raises(VaultIntegrityError):
        customs_id_numbers(workspace, KEY, [target, other], as_of=AS_OF, ledger=ledger)


def test_rotated_key_and_wrong_key(sealed, tmp_path):
    workspace, rows = sealed
    ledger = _ledger(tmp_path / "ledger.sqlite", {r["account_id"] for r in rows})
    seal_id_numbers(workspace, ROTATED)
    assert set(pq.read_table(id_numbers_vault(workspace))["key_version"].to_pylist()) == {2}
    wanted = [rows[0]["waybill_id"]]
    assert customs_id_numbers(workspace, ROTATED, wanted, as_of=AS_OF, ledger=ledger) == {
        wanted[0]: rows[0]["id_card_number"]}
    with pytest.raises(PortraitError, match="key version 2 is not held"):
        customs_id_numbers(workspace, KEY, wanted, as_of=AS_OF, ledger=ledger)
    with pytest.raises(VaultIntegrityError):
        customs_id_numbers(workspace, MasterKey({2: bytes(32)}), wanted, as_of=AS_OF, ledger=ledger)


def test_unknown_waybills_and_a_missing_vault(sealed, tmp_path):
    workspace, rows = sealed
    ledger = _ledger(tmp_path / "ledger.sqlite", {r["account_id"] for r in rows})
    with pytest.raises(PortraitError, match="1 of 2 waybills have no sealed ID number .*'NOPE'"):
        customs_id_numbers(workspace, KEY, [rows[0]["waybill_id"], "NOPE"], as_of=AS_OF, ledger=ledger)
    assert customs_id_numbers(workspace, KEY, [], as_of=AS_OF, ledger=ledger) == {}
    with pytest.raises(WorkspaceError, match="no ID-number vault"):
        customs_id_numbers(Workspace(tmp_path / "empty"), KEY, ["x"], as_of=AS_OF, ledger=ledger)
    with pytest.raises(TypeError, match="needs a MasterKey"):
        seal_id_numbers(workspace, bytes(32))


def test_a_failed_seal_leaves_the_previous_vault(sealed, monkeypatch):
    workspace, _ = sealed
    before = pq.read_table(id_numbers_vault(workspace))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(vault.AESGCM, "encrypt", broken)
    with pytest.raises(OSError, match="disk full"):
        seal_id_numbers(workspace, ROTATED)
    assert pq.read_table(id_numbers_vault(workspace)).equals(before)
    assert not list(workspace.root.glob(".staging-*"))
