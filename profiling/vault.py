"""The sealed vault: ID-card numbers for customs, encrypted, outside every analysis.

ID-card numbers (``waybills.id_card_number``, sensitive personal information) never enter the
analytics zone. ``seal_id_numbers`` encrypts each one with AES-256-GCM into
``WS/vault/waybill_id_numbers/`` (Parquet), one row per waybill that has a number:

    waybill_id   raw waybill number (the vault is identifiable-zone data, like ``WS/ingested/``)
    account_id   raw account of the waybill (null when none), needed for the consent check
    key_version  master-key version whose ``derive_key(master, "vault", version)`` sealed it
    nonce        12 random bytes, fresh for every value
    ciphertext   the number, encrypted, with its 16-byte GCM tag

The associated data binds each ciphertext to its waybill id, account id and key version: a
ciphertext copied to another row, or a row whose account or version was edited, fails to open.
The only way back to plaintext is ``customs_id_numbers``, which first requires the separate
sensitive-data consent of every requested waybill's account.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tqdm.auto import tqdm

from profiling.consent import ConsentStore, sensitive_consent_holds
from profiling.errors import PortraitError, WorkspaceError
from profiling.keys import MasterKey, derive_key

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
    """Encrypt every ID-card number of ``WS/ingested/waybills/`` into the vault; return how many.

    Uses the newest key version. The vault is replaced whole (staged, then published), so a
    failure leaves the previous vault as it was.
    """
    if not isinstance(key, MasterKey):
        raise TypeError(f"seal_id_numbers needs a MasterKey (from load_master_key), not {type(key).__name__}")
    version = key.newest_version
    cipher = AESGCM(derive_key(key, VAULT_DOMAIN, version))
    dataset = workspace.dataset("waybills")
    sealed = 0
    with workspace.staging() as stage:
        folder = stage / _NAME
        folder.mkdir()
        with pq.ParquetWriter(folder / "part-0.parquet", VAULT_SCHEMA) as writer:
            batches = dataset.to_batches(columns=["waybill_id", "account_id", "id_card_number"],
                                         filter=pc.field("id_card_number").is_valid())
            # rows: (waybill_id, account_id, id_card_number) with a number
            for batch in tqdm(batches, desc="sealing ID numbers", unit="batch", disable=not progress):
                waybills = batch.column("waybill_id").to_pylist()
                accounts = batch.column("account_id").to_pylist()
                nonces, ciphertexts = [], []
                for waybill, account, number in zip(waybills, accounts, batch.column("id_card_number").to_pylist()):
                    nonce = os.urandom(12)
                    nonces.append(nonce)
                    ciphertexts.append(cipher.encrypt(nonce, number.encode("utf-8"),
                                                      _associated_data(waybill, account, version)))
                # rows: (waybill_id, account_id, key_version, nonce, ciphertext)
                writer.write_table(pa.table([waybills, accounts, [version] * len(waybills), nonces, ciphertexts],
                                            schema=VAULT_SCHEMA))
                sealed += len(waybills)
        workspace.publish({id_numbers_vault(workspace): folder})
    return sealed


def customs_id_numbers(workspace, key: MasterKey, waybill_ids: Iterable[str], *, as_of: dt.datetime,
                       ledger: ConsentStore | str | os.PathLike) -> dict[str, str]:
    """The ID-card numbers of ``waybill_ids`` for a customs declaration, ``{waybill_id: number}``.

    All or nothing: refused (``ConsentRefusedError``) unless every waybill's account holds the
    separate sensitive-data consent for service provision at ``as_of`` (a waybill without an
    account has none); refused (``PortraitError``) when a waybill has no sealed number; and a
    ``VaultIntegrityError`` when any entry fails authentication. Each consent check is audited in
    the ledger (counts only).
    """
    wanted = list(dict.fromkeys(str(w) for w in ([waybill_ids] if isinstance(waybill_ids, str) else waybill_ids)))
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
    accounts = [entries[w]["account_id"] for w in wanted]
    with_account = [a for a in accounts if a is not None]
    holds = dict(zip(with_account, sensitive_consent_holds(ledger, with_account, as_of)))
    lacking = sum(1 for a in accounts if a is None or not holds[a])
    if lacking:
        raise ConsentRefusedError(f"customs access refused: {lacking} of {len(wanted)} waybills belong to "
                                  "accounts without the separate sensitive-data consent for service_provision "
                                  f"as of {as_of.isoformat()}; nothing returned")
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
