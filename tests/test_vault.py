from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipelines.workspace as workspace_module
from pipelines.ingest import ingest
from pipelines.run import RunContext, _verify_ingested, run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling import vault
from profiling.consent import ConsentEvent, SqliteConsentStore
from profiling.errors import PortraitError, WorkspaceError
from profiling.keys import MasterKey, create_key_file, derive_key
from profiling.schema import arrow_schema
from profiling.vault import (
    VAULT_DOMAIN,
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


def _copy(ingested: Workspace, root) -> Workspace:
    """A fresh workspace holding the module's ingested tables and ingest report, not yet sealed."""
    workspace = Workspace(root / "ws")
    shutil.copytree(ingested.root / "ingested", workspace.root / "ingested")
    shutil.copy(ingested.ingest_report, workspace.ingest_report)
    return workspace


def _numbers(workspace: Workspace) -> dict[str, str]:
    """``{waybill_id: id_card_number}`` of the ingested waybills that hold a number in plaintext."""
    rows = workspace.read("waybills", ["waybill_id", "id_card_number"])
    rows = rows.filter(pc.is_valid(rows["id_card_number"]))
    return dict(zip(rows["waybill_id"].to_pylist(), rows["id_card_number"].to_pylist()))


@pytest.fixture()
def sealed(ingested, tmp_path):
    workspace = _copy(ingested, tmp_path)
    numbers = workspace.read("waybills", ["waybill_id", "account_id", "id_card_number"])
    numbers = numbers.filter(pc.and_(pc.is_valid(numbers["id_card_number"]), pc.is_valid(numbers["account_id"])))
    seal_id_numbers(workspace, KEY)
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


def _opened(workspace: Workspace, key: MasterKey) -> dict[str, str]:
    """Every vault entry decrypted, without the consent check (a test's view of what is sealed)."""
    table = pq.read_table(id_numbers_vault(workspace), schema=VAULT_SCHEMA)
    ids = table["waybill_id"].to_pylist()
    assert len(set(ids)) == len(ids), "a waybill has more than one vault entry"
    opened = {}
    for row in table.to_pylist():
        cipher = AESGCM(derive_key(key, VAULT_DOMAIN, row["key_version"]))
        opened[row["waybill_id"]] = cipher.decrypt(row["nonce"], row["ciphertext"], vault._associated_data(
            row["waybill_id"], row["account_id"], row["key_version"])).decode()
    return opened


def _plaintext_left(workspace: Workspace, numbers) -> list[str]:
    """Numbers found in any Parquet value or byte under ``WS/ingested`` or ``WS/vault``."""
    values, stored = set(), b""
    for zone in ("ingested", "vault"):
        for path in (workspace.root / zone).rglob("*"):
            if path.is_file():
                stored += path.read_bytes()
                if path.suffix == ".parquet":
                    for column in pq.read_table(path).columns:
                        if pa.types.is_string(column.type) or pa.types.is_binary(column.type):
                            values.update(v for v in column.to_pylist() if v is not None)
    return sorted(n for n in numbers if n in values or n.encode() in stored)


def test_seal_moves_the_numbers_out_of_the_ingested_zone(ingested, tmp_path):
    workspace = _copy(ingested, tmp_path)
    before = workspace.read("waybills")
    numbers = _numbers(workspace)
    assert seal_id_numbers(workspace, KEY, progress=True) == len(numbers) > 0
    table = pq.read_table(id_numbers_vault(workspace))
    assert table.schema.equals(VAULT_SCHEMA)
    assert set(table["key_version"].to_pylist()) == {1}
    assert len(set(table["nonce"].to_pylist())) == table.num_rows  # a fresh nonce per value
    assert _opened(workspace, KEY) == numbers
    assert _plaintext_left(workspace, numbers.values()) == []
    # the ingested waybills: same files, schema, rows and order, only the number nulled
    after = workspace.read("waybills")
    column = before.schema.get_field_index("id_card_number")
    assert after.equals(before.set_column(column, before.schema.field(column), pa.nulls(before.num_rows, pa.string())))
    assert sorted(p.name for p in workspace.ingested("waybills").iterdir()) == ["_manifest.json", "part-00000.parquet"]
    assert pq.read_schema(workspace.ingested("waybills") / "part-00000.parquet").equals(
        arrow_schema("waybills"), check_metadata=True)
    rows = _verify_ingested(RunContext(workspace=workspace, key=KEY, as_of=AS_OF, progress=False))
    assert {r["table"]: r["rows"] for r in rows}["waybills"] == before.num_rows
    assert not list(workspace.root.glob(".staging-*")) and not list(workspace.root.rglob(".retired-*"))


def test_sealing_again_seals_nothing_and_keeps_the_vault(sealed, tmp_path):
    workspace, rows = sealed
    vault_before, waybills_before = pq.read_table(id_numbers_vault(workspace)), workspace.read("waybills")
    assert seal_id_numbers(workspace, KEY) == 0
    assert pq.read_table(id_numbers_vault(workspace)).equals(vault_before)
    assert workspace.read("waybills").equals(waybills_before)
    ledger = _ledger(tmp_path / "ledger.sqlite", {r["account_id"] for r in rows})
    got = customs_id_numbers(workspace, KEY, [r["waybill_id"] for r in rows], ledger=ledger)
    assert got == {r["waybill_id"]: r["id_card_number"] for r in rows}


def test_a_reingest_is_sealed_again_without_duplicates(ingested, tmp_path):
    workspace = _copy(ingested, tmp_path)
    numbers = _numbers(workspace)
    seal_id_numbers(workspace, KEY)
    ingest(ingested.root.parent / "raw", workspace, progress=False)
    assert _numbers(workspace) == numbers  # the raw source brought the plaintext back
    assert seal_id_numbers(workspace, ROTATED) == len(numbers)
    assert _opened(workspace, ROTATED) == numbers  # one entry per waybill, the new one replacing the old
    assert set(pq.read_table(id_numbers_vault(workspace))["key_version"].to_pylist()) == {2}
    assert _plaintext_left(workspace, numbers.values()) == []
    assert seal_id_numbers(workspace, ROTATED) == 0


def test_entries_of_removed_waybills_are_dropped(sealed):
    workspace, _ = sealed
    numbers = _opened(workspace, KEY)
    removed = sorted(numbers)[::3]
    folder = workspace.ingested("waybills")
    kept = workspace.read("waybills").filter(pc.invert(pc.is_in(pc.field("waybill_id"), pa.array(removed))))
    shutil.rmtree(folder)
    folder.mkdir()
    pq.write_table(kept, folder / "part-00000.parquet")
    assert seal_id_numbers(workspace, KEY) == 0
    assert _opened(workspace, KEY) == {w: n for w, n in numbers.items() if w not in removed}


def test_customs_reads_back_with_sensitive_consent(sealed, tmp_path):
    workspace, rows = sealed
    ledger = _ledger(tmp_path / "ledger.sqlite", {r["account_id"] for r in rows})
    got = customs_id_numbers(workspace, KEY, [r["waybill_id"] for r in rows], ledger=ledger)
    assert got == {r["waybill_id"]: r["id_card_number"] for r in rows}


def test_customs_refuses_without_sensitive_consent(sealed, tmp_path):
    workspace, rows = sealed
    lacking = rows[0]["account_id"]
    ledger = _ledger(tmp_path / "ledger.sqlite", {r["account_id"] for r in rows} - {lacking})
    _ledger(ledger, [lacking], sensitive=False)
    refused = sum(r["account_id"] == lacking for r in rows)
    with pytest.raises(ConsentRefusedError, match=f"{refused} of {len(rows)} waybills .* nothing returned"):
        customs_id_numbers(workspace, KEY, [r["waybill_id"] for r in rows], ledger=ledger)
    # a grant dated later than now does not hold now
    future = tmp_path / "future.sqlite"
    with SqliteConsentStore(future) as store:
        store.append([ConsentEvent(lacking, dt.datetime(2025, 1, 1, tzinfo=UTC), "policy_accept"),
                      ConsentEvent(lacking, dt.datetime.now(UTC) + dt.timedelta(days=30), "sensitive_grant",
                                   "service_provision")], source="api")
    with pytest.raises(ConsentRefusedError, match="consent for service_provision now"):
        customs_id_numbers(workspace, KEY, [rows[0]["waybill_id"]], ledger=future)


def test_the_vault_opens_on_the_consent_that_holds_now(sealed, tmp_path):
    """After a sensitive-data revocation nothing opens, whatever earlier moment the caller names."""
    workspace, rows = sealed
    ledger = _ledger(tmp_path / "ledger.sqlite", {r["account_id"] for r in rows})
    wanted = [rows[0]["waybill_id"]]
    assert customs_id_numbers(workspace, KEY, wanted, ledger=ledger) == {wanted[0]: rows[0]["id_card_number"]}
    revoked_at = dt.datetime.now(UTC)
    with SqliteConsentStore(ledger) as store:
        store.append([ConsentEvent(rows[0]["account_id"], revoked_at, "sensitive_revoke", "service_provision")],
                     source="api")
    with pytest.raises(ConsentRefusedError, match="1 of 1 waybills .* nothing returned"):
        customs_id_numbers(workspace, KEY, wanted, ledger=ledger)
    # naming a moment before the revocation is not a way in: the vault takes no such moment
    with pytest.raises(TypeError, match="as_of"):
        customs_id_numbers(workspace, KEY, wanted, as_of=revoked_at - dt.timedelta(days=1), ledger=ledger)
    # the ids are taken as ingest keys them: padding reaches the same entry, and the same refusal
    with pytest.raises(ConsentRefusedError):
        customs_id_numbers(workspace, KEY, [f"  {wanted[0]}\t"], ledger=ledger)
    other = rows[1]["waybill_id"]
    assert customs_id_numbers(workspace, KEY, [f" {other} "], ledger=ledger) == {other: rows[1]["id_card_number"]}


def _rewrite(workspace, change):
    folder = id_numbers_vault(workspace)
    table = pq.read_table(folder, schema=VAULT_SCHEMA)
    shutil.rmtree(folder)
    folder.mkdir()
    pq.write_table(change(table), folder / "part-0.parquet")


def test_a_flipped_byte_or_a_moved_ciphertext_fails_to_open(sealed, tmp_path):
    workspace, rows = sealed
    ledger = _ledger(tmp_path / "ledger.sqlite", {r["account_id"] for r in rows})
    target, other = rows[0]["waybill_id"], rows[1]["waybill_id"]
    intact = pq.read_table(id_numbers_vault(workspace), schema=VAULT_SCHEMA)

    def flip(table):
        ciphertexts = table["ciphertext"].to_pylist()
        index = table["waybill_id"].to_pylist().index(target)
        ciphertexts[index] = bytes([ciphertexts[index][0] ^ 1]) + ciphertexts[index][1:]
        return table.set_column(4, VAULT_SCHEMA.field("ciphertext"), pa.array(ciphertexts, pa.binary()))

    _rewrite(workspace, flip)
    with pytest.raises(VaultIntegrityError, match=f"waybill '{target}' failed authentication"):
        customs_id_numbers(workspace, KEY, [target], ledger=ledger)
    assert seal_id_numbers(workspace, KEY) == 0  # sealing again keeps entries as they are, tampered or not
    with pytest.raises(VaultIntegrityError):
        customs_id_numbers(workspace, KEY, [target], ledger=ledger)

    def swap(table):
        ids = table["waybill_id"].to_pylist()
        a, b = ids.index(target), ids.index(other)
        order = list(range(table.num_rows))
        order[a], order[b] = b, a
        moved = [table.column(name).take(order) if name in ("nonce", "ciphertext") else table.column(name)
                 for name in VAULT_SCHEMA.names]
        return pa.table(moved, schema=VAULT_SCHEMA)

    _rewrite(workspace, lambda _: swap(intact))
    assert customs_id_numbers(workspace, KEY, [rows[2]["waybill_id"]], ledger=ledger)
    with pytest.raises(VaultIntegrityError):
        customs_id_numbers(workspace, KEY, [target, other], ledger=ledger)


def test_rotated_key_and_wrong_key(ingested, sealed, tmp_path):
    workspace, rows = sealed
    ledger = _ledger(tmp_path / "ledger.sqlite", {r["account_id"] for r in rows})
    wanted = [rows[0]["waybill_id"]]
    expected = {wanted[0]: rows[0]["id_card_number"]}
    # a new key version seals only what is new: entries sealed under v1 stay v1 and open with the rotated key
    assert seal_id_numbers(workspace, ROTATED) == 0
    assert set(pq.read_table(id_numbers_vault(workspace))["key_version"].to_pylist()) == {1}
    assert customs_id_numbers(workspace, ROTATED, wanted, ledger=ledger) == expected
    ingest(ingested.root.parent / "raw", workspace, progress=False)
    assert seal_id_numbers(workspace, ROTATED) > 0
    assert set(pq.read_table(id_numbers_vault(workspace))["key_version"].to_pylist()) == {2}
    assert customs_id_numbers(workspace, ROTATED, wanted, ledger=ledger) == expected
    with pytest.raises(PortraitError, match="key version 2 is not held"):
        customs_id_numbers(workspace, KEY, wanted, ledger=ledger)
    with pytest.raises(VaultIntegrityError):
        customs_id_numbers(workspace, MasterKey({2: bytes(32)}), wanted, ledger=ledger)


def test_unknown_waybills_and_a_missing_vault(sealed, tmp_path):
    workspace, rows = sealed
    ledger = _ledger(tmp_path / "ledger.sqlite", {r["account_id"] for r in rows})
    with pytest.raises(PortraitError, match="1 of 2 waybills have no sealed ID number .*'NOPE'"):
        customs_id_numbers(workspace, KEY, [rows[0]["waybill_id"], "NOPE"], ledger=ledger)
    assert customs_id_numbers(workspace, KEY, [], ledger=ledger) == {}
    with pytest.raises(WorkspaceError, match="no ID-number vault"):
        customs_id_numbers(Workspace(tmp_path / "empty"), KEY, ["x"], ledger=ledger)
    with pytest.raises(TypeError, match="needs a MasterKey"):
        seal_id_numbers(workspace, bytes(32))
    with pytest.raises(WorkspaceError, match="no ingested"):
        seal_id_numbers(Workspace(tmp_path / "empty"), KEY)


def _state(workspace: Workspace) -> tuple[pa.Table, pa.Table]:
    return pq.read_table(id_numbers_vault(workspace)), workspace.read("waybills")


def test_a_vault_of_another_shape_is_refused_and_nothing_changes(ingested, tmp_path):
    workspace = _copy(ingested, tmp_path)
    folder = id_numbers_vault(workspace)
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"waybill_id": ["W1"], "sealed": [b"x"]}), folder / "part-0.parquet")
    before = _state(workspace)
    with pytest.raises(WorkspaceError, match="part-0.parquet is not a vault file of this version .*nothing was"):
        seal_id_numbers(workspace, KEY)
    after = _state(workspace)
    assert after[0].equals(before[0]) and after[1].equals(before[1])


def test_a_crash_between_the_two_writes_leaves_both_as_before(ingested, sealed, monkeypatch):
    workspace, _ = sealed
    ingest(ingested.root.parent / "raw", workspace, progress=False)  # plaintext back: both folders will change
    before = _state(workspace)
    calls = []
    encrypt = vault.AESGCM.encrypt

    def crashing(self, *args):
        calls.append(1)
        if len(calls) > 40:  # some batches of both folders are already written by then
            raise OSError("disk full")
        return encrypt(self, *args)

    monkeypatch.setattr(vault, "_BATCH_ROWS", 16)
    monkeypatch.setattr(vault.AESGCM, "encrypt", crashing)
    with pytest.raises(OSError, match="disk full"):
        seal_id_numbers(workspace, ROTATED)
    after = _state(workspace)
    assert after[0].equals(before[0]) and after[1].equals(before[1])
    assert not list(workspace.root.glob(".staging-*"))

    monkeypatch.undo()
    monkeypatch.setattr(Workspace, "publish", lambda self, replacements: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        seal_id_numbers(workspace, KEY)
    after = _state(workspace)
    assert after[0].equals(before[0]) and after[1].equals(before[1])


def test_a_publish_torn_between_the_renames_loses_no_number(ingested, sealed, monkeypatch):
    """Publish renames the vault in first: a job killed before the waybills follow keeps the plaintext."""
    workspace, _ = sealed
    numbers = _opened(workspace, KEY)
    ingest(ingested.root.parent / "raw", workspace, progress=False)
    renames = []
    rename = workspace_module.os.rename

    def torn(source, destination):
        renames.append(destination)
        if len(renames) == 4:  # two moved aside, the new vault moved in, then the job dies
            raise OSError("killed")
        rename(source, destination)

    monkeypatch.setattr(workspace_module.os, "rename", torn)
    with pytest.raises(OSError, match="killed"):
        seal_id_numbers(workspace, KEY)
    monkeypatch.undo()
    workspace.sweep()
    assert _numbers(workspace) == numbers  # the old waybills came back, plaintext included
    assert _opened(workspace, KEY) == numbers  # beside the new vault
    assert seal_id_numbers(workspace, KEY) == len(numbers)
    assert _opened(workspace, KEY) == numbers and _numbers(workspace) == {}


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.booleans(), st.integers(0, 2**32 - 1), st.floats(0.0, 1.0)),
                      min_size=1, max_size=3))
def test_the_vault_follows_the_ingested_waybills(ingested, tmp_path_factory, steps):
    """Model: after each seal, the vault opens to exactly the numbers of the waybills still ingested.

    A step either re-ingests a random subset of the raw waybills (plaintext back) or drops random
    rows of the current, sealed waybills (as an erasure does); then it seals.
    """
    workspace = _copy(ingested, tmp_path_factory.mktemp("model"))
    original = workspace.read("waybills")
    numbers = _numbers(workspace)
    folder = workspace.ingested("waybills")
    for reingest, seed, share in steps:
        current = original if reingest else workspace.read("waybills")
        keep = np.random.default_rng(seed).random(current.num_rows) < share
        current = current.filter(pa.array(keep))
        shutil.rmtree(folder)
        folder.mkdir()
        pq.write_table(current, folder / "part-00000.parquet")
        plaintext = current["id_card_number"].drop_null()
        assert seal_id_numbers(workspace, KEY) == len(plaintext)
        present = set(current["waybill_id"].to_pylist())
        assert _opened(workspace, KEY) == {w: n for w, n in numbers.items() if w in present}
        assert _numbers(workspace) == {}


def test_the_job_leaves_no_plaintext_number_and_runs_again(ingested, tmp_path):
    """``run_pipeline`` seals after the door; a second run seals nothing and still verifies the ingested zone."""
    workspace = _copy(ingested, tmp_path)
    numbers = _numbers(workspace)
    key_file = tmp_path / "keys" / "master.key"
    key = create_key_file(key_file)
    for sealed_now in (len(numbers), 0):
        summary = run_pipeline(workspace, key_file, AS_OF, progress=False)
        assert [row["rows"] for row in summary if row["stage"] == "seal"] == [sealed_now]
        assert _opened(workspace, key) == numbers
        stored = b"".join(p.read_bytes() for p in workspace.root.rglob("*") if p.is_file())
        assert [n for n in numbers.values() if n.encode() in stored] == []
    rows = workspace.read("waybills", ["waybill_id", "account_id"]).filter(pc.is_valid(pc.field("account_id")))
    wanted = {w: a for w, a in zip(rows["waybill_id"].to_pylist(), rows["account_id"].to_pylist()) if w in numbers}
    ledger = _ledger(tmp_path / "customs.sqlite", set(wanted.values()))
    assert customs_id_numbers(workspace, key, sorted(wanted), ledger=ledger) == {
        w: numbers[w] for w in wanted}
