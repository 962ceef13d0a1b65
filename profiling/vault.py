"""The sealed vault: ID-card numbers for customs, moved out of the identifiable zone and encrypted.

ID-card numbers (``waybills.id_card_number``, sensitive personal information) never enter the
analytics zone, and once sealed they no longer lie in plaintext anywhere in the workspace.
``seal_id_numbers`` *moves* them: each number of ``WS/ingested/waybills/`` is encrypted with
AES-256-GCM into ``WS/vault/waybill_id_numbers/`` (Parquet), and the ingested waybills are
rewritten with ``id_card_number`` null (same schema, rows and order). Both folders are published
together, vault first. The vault holds one row per waybill that had a number:

    waybill_id   raw waybill number (the vault is identifiable-zone data, like ``WS/ingested/``)
    account_id   raw account of the waybill (null when none), needed for the consent check
    key_version  master-key version whose ``derive_key(master, "vault", version)`` sealed it
    nonce        12 random bytes, fresh for every value
    ciphertext   the number, encrypted, with its 16-byte GCM tag

The associated data binds each ciphertext to its waybill id, account id and key version: a
ciphertext copied to another row, or a row whose account or version was edited, fails to open.
The only way back to plaintext is ``customs_id_numbers``, which first requires the separate
sensitive-data consent of every requested waybill's account, as it holds at the moment of opening.

Because sealing nulls the column, a cross-border waybill in ``WS/ingested/`` has no number after
the ``seal`` stage (ingest's rule ``required_if cross_border`` holds for the raw rows, not for the
sealed zone); its number is in the vault.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tqdm.auto import tqdm

from profiling._threads import made_ahead
from profiling.consent import ConsentStore, sensitive_consent_holds
from profiling.errors import PortraitError, WorkspaceError
from profiling.keys import MasterKey, derive_key
from profiling.pseudonyms import normalize
from profiling.schema import arrow_schema

__all__ = ["VAULT_DOMAIN", "VAULT_SCHEMA", "ConsentRefusedError", "VaultIntegrityError",
           "customs_id_numbers", "id_numbers_vault", "seal_id_numbers"]

VAULT_DOMAIN = "vault"
VAULT_SCHEMA = pa.schema([
    pa.field("waybill_id", pa.string(), nullable=False),
    pa.field("account_id", pa.string()),
    pa.field("key_version", pa.int32(), nullable=False),
    pa.field("nonce", pa.binary(12), nullable=False),
    pa.field("ciphertext", pa.binary(), nullable=False),
], metadata={"table": "waybill_id_numbers", "zone": "identifiable",
             "cipher": "AES-256-GCM, key HKDF-SHA256(master, 'vault', version)"})
_NAME = "waybill_id_numbers"


class VaultIntegrityError(PortraitError):
    """A vault entry failed authentication: tampered, moved to another row, or sealed with another key."""


class ConsentRefusedError(PortraitError):
    """Sensitive data was asked for persons without the separate sensitive-data consent."""


def id_numbers_vault(workspace) -> Path:
    """Folder of the sealed ID-number vault, ``WS/vault/waybill_id_numbers/``."""
    return Path(workspace.root) / "vault" / _NAME


def _associated_data(waybill_id: str, account_id: str | None, version: int) -> bytes:
    account = b"-" if account_id is None else b"=" + account_id.encode("utf-8")
    return (b"portrait vault waybill_id_numbers\x00" + waybill_id.encode("utf-8") + b"\x00"
            + account + b"\x00v" + str(version).encode("ascii"))


def seal_id_numbers(workspace, key: MasterKey, *, progress: bool = False) -> int:
    """Move every ID-card number of ``WS/ingested/waybills/`` into the vault; return how many were sealed now.

    In one call, with the newest key version for new entries:

    * the new vault holds the previous entries whose waybill is still ingested (entries of removed
      or erased waybills are dropped), plus a new entry for every ingested waybill that has a number
      (a re-ingested number replaces an older entry of the same waybill);
    * ``WS/ingested/waybills/`` is rewritten with ``id_card_number`` null: same files, schema, rows
      and order, streamed in record batches of ``_BATCH_ROWS``.

    Both are staged, then published by one ``Workspace.publish``, so a failure before the publish
    leaves both as they were. Sealing again without a new ingest seals 0 and keeps every entry;
    previous entries keep the key version that sealed them. Memory: two record batches (or
    Parquet row groups as ingest wrote them: one read ahead by a thread while the other is sealed and
    written) plus the waybill ids of the previous vault.
    """
    if not isinstance(key, MasterKey):
        raise TypeError(f"seal_id_numbers needs a MasterKey (from load_master_key), not {type(key).__name__}")
    workspace.require_ingested()
    schema = arrow_schema("waybills")
    sources = sorted(workspace.ingested("waybills").glob("*.parquet"))
    for path in sources:
        if not pq.read_schema(path).equals(schema):
            raise WorkspaceError(f"{path} does not have the waybills schema of this version; rerun `portrait ingest`")
    previous = _previous_entries(workspace)
    version = key.newest_version
    cipher = AESGCM(derive_key(key, VAULT_DOMAIN, version))
    number_column = schema.get_field_index("id_card_number")
    total_rows = sum(pq.read_metadata(path).num_rows for path in sources)
    sealed = 0
    # Waybill ids of the previous vault, and those of them still ingested without a number: their
    # entry stays. Both as small as the vault (one id per number), not as the waybills table.
    previous_ids = _waybill_ids(previous)
    still_unsealed: list[pa.Array] = []
    with workspace.staging() as stage:
        vault_folder, waybills_folder = stage / _NAME, stage / "waybills"
        vault_folder.mkdir()
        waybills_folder.mkdir()
        with pq.ParquetWriter(vault_folder / "part-0.parquet", VAULT_SCHEMA) as vault_out, \
                tqdm(total=total_rows, desc="sealing ID numbers", unit=" rows", disable=not progress) as bar:
            for path in sources:
                with pq.ParquetFile(path) as source, \
                        pq.ParquetWriter(waybills_folder / path.name, schema) as waybills_out:
                    # the next batch read by a thread while this one is sealed and written
                    for batch in made_ahead(source.iter_batches(batch_size=_BATCH_ROWS), name="seal-read"):
                        # rows: one ingested waybill, every column
                        has_number = pc.is_valid(batch.column(number_column))
                        numbered = batch.select(["waybill_id", "account_id", "id_card_number"]).filter(has_number)
                        if numbered.num_rows:
                            vault_out.write_table(_seal(cipher, version, numbered))
                            sealed += numbered.num_rows
                        if len(previous_ids):
                            unsealed = pc.filter(batch.column("waybill_id"), pc.invert(has_number))
                            still_unsealed.append(unsealed.filter(pc.is_in(unsealed, value_set=previous_ids)))
                        # rows: the same waybill, id_card_number null
                        waybills_out.write_batch(batch.set_column(number_column, schema.field(number_column),
                                                                  pa.nulls(batch.num_rows, pa.string())))
                        bar.update(batch.num_rows)
            if still_unsealed:
                for entries in _kept_entries(previous, still_unsealed):
                    vault_out.write_batch(entries)
        # Vault first: publish renames in this order, so a job killed between the two renames leaves
        # the new vault beside the old waybills (numbers still in plaintext, sealed again next time),
        # never the nulled waybills beside the old vault (numbers lost).
        workspace.publish({id_numbers_vault(workspace): vault_folder, workspace.ingested("waybills"): waybills_folder})
    return sealed


_BATCH_ROWS = 131_072


def _seal(cipher: AESGCM, version: int, numbered: pa.RecordBatch) -> pa.Table:
    """Vault rows for waybills that have a number: a fresh nonce and a ciphertext each."""
    waybills = numbered.column("waybill_id").to_pylist()
    accounts = numbered.column("account_id").to_pylist()
    nonces, ciphertexts = [], []
    for waybill, account, number in zip(waybills, accounts, numbered.column("id_card_number").to_pylist()):
        nonce = os.urandom(12)
        nonces.append(nonce)
        ciphertexts.append(cipher.encrypt(nonce, number.encode("utf-8"), _associated_data(waybill, account, version)))
    # rows: (waybill_id, account_id, key_version, nonce, ciphertext)
    return pa.table([waybills, accounts, [version] * len(waybills), nonces, ciphertexts], schema=VAULT_SCHEMA)


def _previous_entries(workspace) -> list[Path]:
    """Parquet files of the current vault (none before the first seal), each checked against ``VAULT_SCHEMA``."""
    folder = id_numbers_vault(workspace)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    expected = VAULT_SCHEMA.remove_metadata()
    for path in files:
        if not pq.read_schema(path).remove_metadata().equals(expected):
            raise WorkspaceError(f"{path} is not a vault file of this version (expected columns "
                                 f"{', '.join(VAULT_SCHEMA.names)}); restore the vault from a backup, "
                                 "nothing was changed")
    return files


def _waybill_ids(files: list[Path]) -> pa.Array:
    """The waybill ids of the vault ``files`` (empty when there are none)."""
    if not files:
        return pa.array([], pa.string())
    return ds.dataset(files, format="parquet", schema=VAULT_SCHEMA).to_table(columns=["waybill_id"]) \
        .column("waybill_id").combine_chunks()


def _kept_entries(previous: list[Path], still_unsealed: list[pa.Array]) -> Iterable[pa.RecordBatch]:
    """Previous vault rows of waybills still ingested and without a number to seal now."""
    keep = pc.field("waybill_id").isin(pa.chunked_array(still_unsealed, pa.string()).combine_chunks())
    # rows: (waybill_id, account_id, key_version, nonce, ciphertext) of the kept entries
    return ds.dataset(previous, format="parquet", schema=VAULT_SCHEMA).to_batches(filter=keep,
                                                                                   batch_size=_BATCH_ROWS)


def customs_id_numbers(workspace, key: MasterKey, waybill_ids: Iterable[str], *,
                       ledger: ConsentStore | str | os.PathLike,
                       purpose_name: str = "service_provision") -> dict[str, str]:
    """The ID-card numbers of ``waybill_ids`` for a customs declaration, ``{waybill_id: number}``.

    Opening is an act at the moment it happens: the consent checked is the one that holds at that
    moment (the current UTC time), so there is no ``as_of`` to name; a moment before a revocation
    would step around it. All or nothing: refused (``ConsentRefusedError``) unless every
    waybill's account holds, now, the separate sensitive-data consent for ``purpose_name`` (customs
    clearance under service provision by default; ``cross_border_transfer`` for a receiver abroad;
    a waybill without an account has none); refused (``PortraitError``) when a waybill has no sealed
    number; and a ``VaultIntegrityError`` when any entry fails authentication. Each consent check
    is audited in the ledger (counts only, as of the opening). Waybill and account ids are taken
    in the form ingest keys them (``profiling.pseudonyms.normalize``: spaces around them removed).
    """
    requested_ids = [str(w) for w in ([waybill_ids] if isinstance(waybill_ids, str) else waybill_ids)]
    wanted = list(dict.fromkeys(normalize(pa.array(requested_ids, pa.string()), "waybill_id").to_pylist()))
    folder = id_numbers_vault(workspace)
    if not folder.is_dir():
        raise WorkspaceError(f"workspace {workspace.root} has no ID-number vault; run the sealing step first")
    requested = pc.field("waybill_id").isin(pa.array(wanted, pa.string()))
    vault = pq.read_table(folder, schema=VAULT_SCHEMA, filters=requested)
    entries = {row["waybill_id"]: row for row in vault.to_pylist()}
    absent = [w for w in wanted if w not in entries]
    if absent:
        raise PortraitError(f"{len(absent)} of {len(wanted)} waybills have no sealed ID number "
                            f"(e.g. {absent[0]!r}); nothing returned")
    accounts = normalize(pa.array([entries[w]["account_id"] for w in wanted], pa.string()), "account_id").to_pylist()
    with_account = [a for a in accounts if a is not None]
    opened_at = dt.datetime.now(dt.UTC)
    holds = dict(zip(with_account, sensitive_consent_holds(ledger, with_account, opened_at,
                                                           purpose_name=purpose_name)))
    lacking = sum(1 for a in accounts if a is None or not holds[a])
    if lacking:
        raise ConsentRefusedError(f"customs access refused: {lacking} of {len(wanted)} waybills belong to "
                                  f"accounts without the separate sensitive-data consent for {purpose_name} "
                                  f"now ({opened_at.isoformat(timespec='seconds')}); nothing returned")
    ciphers: dict[int, AESGCM] = {}
    numbers = {}
    for waybill in wanted:
        entry = entries[waybill]
        version = entry["key_version"]
        if version not in ciphers:
            ciphers[version] = AESGCM(derive_key(key, VAULT_DOMAIN, version))
        try:
            plain = ciphers[version].decrypt(entry["nonce"], entry["ciphertext"],
                                             _associated_data(waybill, entry["account_id"], version))
        except InvalidTag:
            raise VaultIntegrityError(f"vault entry of waybill {waybill!r} failed authentication (tampered, "
                                      f"moved from another row, or sealed with another key than v{version}); "
                                      "nothing returned") from None
        numbers[waybill] = plain.decode("utf-8")
    return numbers
