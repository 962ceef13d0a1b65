"""Cross-border transfers: the register of overseas receivers, and the export that keeps to it.

PIPL Art. 38-39 and the policy's 2021 update ("the scenarios of cross-border transmission, data
receivers, and protective measures"): waybills of cross-border shipments leave the country, and
customs needs ID numbers. Each overseas receiver is declared once, in ``OVERSEAS_RECEIVERS``: its
country, the legal mechanism the transfer rests on (``LEGAL_MECHANISMS``), its purpose, and the
only waybill fields it may receive. ``transfer_to_overseas`` then sends, before anything is
written, checking at the moment of the transfer (there is no as-of: naming a time before a
revocation would step around it):

* only waybills marked ``cross_border`` (every other waybill stays home, whatever is asked);
* only waybills of persons whose separate consent to ``cross_border_transfer`` holds now (the
  consent gate decides, deny by default, audited); a waybill without an account has nobody to
  consent and never leaves;
* only the declared fields, or fewer; a field outside the declaration refuses the whole request;
* ID numbers (``id_card_number``, sensitive) only from the vault (``profiling.vault``), opened for
  persons who also hold the purpose's separate sensitive-data grant; when the ID number is asked
  for, a person without that grant is left out entirely (the receiver needs the number to declare
  the parcel) and the plaintext column of the ingested waybills is never read.

Every transfer, and every refusal (no person's consent holds, or no cross-border waybill), is
appended to the transfer log (``profiling.transfer_log``) before the file is renamed into place:
who, when, receiver, fields, rows, and the persons as pseudonyms. A refusal writes no file and
raises ``TransferRefusedError`` after it is logged. ``portrait export`` runs a transfer under the
workspace's job lock, so transfers take turns with each other, with jobs and with erasures.

No k-anonymity here: a receiver abroad must deliver or declare each parcel to a named person, so
its rows identify by purpose (like a payment institution's order numbers). What protects is the
scope above, the consent and the legal mechanism, and the log that says what left.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from profiling.consent import ConsentGate, SqliteConsentStore
from profiling.errors import PortraitError, WorkspaceError
from profiling.export_files import EXPORT_FORMATS, write_atomically, write_rows
from profiling.keys import MasterKey
from profiling.pseudonyms import PERSON, pseudonymize
from profiling.purposes import purpose
from profiling.schema import TABLES, PrivacyClass
from profiling.transfer_log import TransferEntry, record_transfer
from profiling.vault import customs_id_numbers, id_numbers_vault

__all__ = ["LEGAL_MECHANISMS", "OVERSEAS_RECEIVERS", "TRANSFER_PURPOSE", "OverseasReceiver", "TransferRefusedError",
           "TransferResult", "checked_transfer", "overseas_receiver", "transfer_to_overseas"]

TRANSFER_PURPOSE = "cross_border_transfer"
LEGAL_MECHANISMS: Mapping[str, str] = {
    "security_assessment": "PIPL Art. 38(1)(1): security assessment by the Cyberspace Administration of China",
    "certification": "PIPL Art. 38(1)(2): personal information protection certification",
    "standard_contract": "PIPL Art. 38(1)(3): standard contract with the receiver, filed with the CAC",
}
_TABLE = "waybills"
_MARKER = "cross_border"
_PERSON_COLUMN = "account_id"


class TransferRefusedError(PortraitError):
    """Nothing could be sent (no person's separate consent holds, or nothing crosses the border); logged."""


@dataclass(frozen=True)
class OverseasReceiver:
    """A receiver abroad: its ISO 3166-1 alpha-2 ``country``, the legal ``mechanism``, its purpose and fields.

    ``fields`` are columns of ``waybills``; sensitive ones (the ID number) are opened from the vault.
    """

    name: str
    country: str
    mechanism: str
    purpose: str
    fields: tuple[str, ...]

    def __post_init__(self) -> None:
        columns = TABLES[_TABLE].column_names
        unknown = [c for c in self.fields if c not in columns]
        if unknown or not self.fields:
            raise ValueError(f"overseas receiver {self.name!r}: fields must be columns of {_TABLE} "
                             f"(unknown: {', '.join(unknown) or 'none given'})")
        if self.mechanism not in LEGAL_MECHANISMS:
            raise ValueError(f"overseas receiver {self.name!r}: legal mechanism {self.mechanism!r} is not one of "
                             f"{', '.join(LEGAL_MECHANISMS)} (PIPL Art. 38)")
        if not (len(self.country) == 2 and self.country.isascii() and self.country.isupper()) or self.country == "CN":
            raise ValueError(f"overseas receiver {self.name!r}: country {self.country!r} must be an ISO 3166-1 "
                             "alpha-2 code outside the mainland (e.g. HK, SG)")

    @property
    def sensitive_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.fields if TABLES[_TABLE][f].privacy is PrivacyClass.SENSITIVE)


OVERSEAS_RECEIVERS: Mapping[str, OverseasReceiver] = {r.name: r for r in (
    OverseasReceiver(
        name="hk_customs_broker", country="HK", mechanism="standard_contract",
        purpose="declare cross-border parcels to customs: consignee, weight, service and the ID number",
        fields=("waybill_id", "receiver_name", "receiver_address", "weight_kg", "service_type", "id_card_number")),
    OverseasReceiver(
        name="hk_line_haul_carrier", country="HK", mechanism="certification",
        purpose="carry cross-border parcels across the border and hand them to the delivering station",
        fields=("waybill_id", "receiver_name", "receiver_phone", "receiver_address", "weight_kg")),
)}
purpose(TRANSFER_PURPOSE)  # the catalogue must hold it


@dataclass(frozen=True)
class TransferResult:
    """A sent transfer: the file, its report, what it holds and who was left out (counts by reason)."""

    transfer_id: int
    path: Path
    report_path: Path
    receiver: OverseasReceiver
    fields: tuple[str, ...]
    rows: int
    persons: int
    left_out: dict[str, int]
    transferred_at: dt.datetime

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}={persons}" for reason, persons in sorted(self.left_out.items())) or "none"
        return (f"sent {self.rows} cross-border waybills of {self.persons} persons ({', '.join(self.fields)}) to "
                f"{self.receiver.name} ({self.receiver.country}, {self.receiver.mechanism}): {self.path}\n"
                f"separate consent to {TRANSFER_PURPOSE} at {self.transferred_at.isoformat(timespec='seconds')}: "
                f"persons left out by reason: {reasons}; transfer log entry {self.transfer_id}; "
                f"report {self.report_path}")


def overseas_receiver(name: str) -> OverseasReceiver:
    """The declared overseas receiver ``name``; a clear error names the declared ones otherwise.

    >>> overseas_receiver("hk_customs_broker").country
    'HK'
    """
    try:
        return OVERSEAS_RECEIVERS[name]
    except (KeyError, TypeError):
        raise PortraitError(f"unknown overseas receiver {name!r}; the declared ones are "
                            f"{', '.join(sorted(OVERSEAS_RECEIVERS))}") from None


def checked_transfer(name: str, *, fields: Sequence[str] | None = None,
                     file_format: str = "csv") -> tuple[OverseasReceiver, tuple[str, ...]]:
    """The receiver and the fields a transfer would send; ``PortraitError`` says what is refused.

    >>> checked_transfer("hk_line_haul_carrier", fields=["waybill_id"])[1]
    ('waybill_id',)
    """
    receiver = overseas_receiver(name)
    if fields is None:
        chosen = receiver.fields
    elif isinstance(fields, str):
        raise TypeError("fields is a list of column names, not one string")
    else:
        chosen = tuple(dict.fromkeys(fields))
        extra = [f for f in chosen if f not in receiver.fields]
        if extra or not chosen:
            raise PortraitError(f"overseas receiver {name!r} may receive only {', '.join(receiver.fields)}; "
                                f"refused: {', '.join(extra) or 'an empty field list'}; nothing written")
    if file_format not in EXPORT_FORMATS:
        raise PortraitError(f"unknown export format {file_format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    return receiver, chosen


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def transfer_to_overseas(workspace, name: str, out_dir: str | os.PathLike, key: MasterKey, *,
                         fields: Sequence[str] | None = None, file_format: str = "csv",
                         operator: str | None = None) -> TransferResult:
    """Write ``<name>.<format>`` and ``<name>.report.json`` into ``out_dir`` for the overseas receiver ``name``.

    Sends only cross-border waybills of persons whose separate consent to ``cross_border_transfer``
    holds now (with its sensitive grant when the ID number is among the fields, opened from the
    vault), only the declared ``fields`` (or fewer). ``workspace.ledger`` must hold the consent
    events (``portrait export`` loads the ingested ones first). The transfer is logged, persons as
    PERSON pseudonyms of ``key``'s newest version, before the files are renamed into place;
    ``operator`` (default: the login name) is recorded as who ran it. When nobody may be sent, the
    refusal is logged and ``TransferRefusedError`` raised, with no file written.
    """
    receiver, chosen = checked_transfer(name, fields=fields, file_format=file_format)
    if not isinstance(key, MasterKey):
        raise TypeError(f"a transfer needs a MasterKey (from load_master_key), not {type(key).__name__}")
    if not workspace.ledger.is_file():
        raise WorkspaceError(f"workspace {workspace.root} has no consent ledger ({workspace.ledger}); run "
                             f"`portrait consent load --workspace {workspace.root}` first; nothing written")
    with_ids = [f for f in chosen if f in receiver.sensitive_fields]
    if with_ids and not id_numbers_vault(workspace).is_dir():
        raise WorkspaceError(f"workspace {workspace.root} has no ID-number vault: ID numbers leave only from the "
                             f"vault; run `portrait run --workspace {workspace.root} ...` first (it seals them), "
                             f"or leave {', '.join(with_ids)} out with --fields; nothing written")
    operator = operator or getpass.getuser()
    plain = [f for f in chosen if f not in with_ids]
    rows = workspace.read(_TABLE, columns=list(dict.fromkeys([*plain, "waybill_id", _PERSON_COLUMN, _MARKER])))
    rows = rows.filter(pc.fill_null(rows[_MARKER], False))
    # rows: (declared plain fields..., waybill_id, account_id, cross_border) of cross-border waybills only
    persons = pc.unique(rows[_PERSON_COLUMN].combine_chunks().drop_null())
    now = dt.datetime.now(dt.timezone.utc)
    with SqliteConsentStore(workspace.ledger) as store:
        gate = ConsentGate(store)
        decision = gate.decide(TRANSFER_PURPOSE, now, job=f"transfer:{name}", sensitive=bool(with_ids),
                               population=persons, snapshot=gate.snapshot(persons.to_pylist()))
    allowed = decision.keep(rows, _PERSON_COLUMN)
    left_out = dict(decision.excluded)
    without_account = rows[_PERSON_COLUMN].null_count
    if without_account:
        left_out["waybills_without_account"] = without_account  # nobody could consent to them
    entry = dict(transferred_at=now, operator=operator, receiver=name, country=receiver.country,
                 mechanism=receiver.mechanism, purpose=TRANSFER_PURPOSE, fields=chosen,
                 consent_audit_id=decision.audit_id)
    if allowed.num_rows == 0:
        reason = (f"none of the {len(persons)} persons with cross-border waybills holds the separate consent to "
                  f"{TRANSFER_PURPOSE}" + (" with its sensitive-data grant" if with_ids else "") + " now"
                  if rows.num_rows else "no cross-border waybill to send")
        transfer_id = record_transfer(workspace.ledger, TransferEntry(
            **entry, outcome="refused", reason=reason, rows=0, persons=0, left_out=left_out))
        details = ", ".join(f"{r}={n}" for r, n in sorted(left_out.items())) or "none"
        raise TransferRefusedError(f"cross-border transfer to {name} refused: {reason} (left out: {details}); "
                                   f"logged as transfer {transfer_id}; nothing written")
    if with_ids:
        numbers = customs_id_numbers(workspace, key, allowed["waybill_id"].to_pylist(), ledger=workspace.ledger,
                                     purpose_name=TRANSFER_PURPOSE)
        opened = pa.array([numbers[w] for w in allowed["waybill_id"].to_pylist()], pa.string())
        allowed = allowed.append_column(with_ids[0], opened)
    # rows: (chosen fields...) of consenting persons' cross-border waybills
    sent = allowed.select(list(chosen)).replace_schema_metadata(
        {"receiver": name, "country": receiver.country, "mechanism": receiver.mechanism, "purpose": receiver.purpose})
    counts = pc.value_counts(allowed[_PERSON_COLUMN].combine_chunks())
    accounts, per_person = counts.field("values"), counts.field("counts").to_pylist()
    version = key.newest_version
    pseudonyms = pseudonymize(accounts, key, PERSON, identifier="account_id", version=version).to_pylist()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path, report_path = out / f"{name}.{file_format}", out / f"{name}.report.json"
    report = {"receiver": name, "country": receiver.country, "mechanism": receiver.mechanism,
              "mechanism_basis": LEGAL_MECHANISMS[receiver.mechanism], "purpose": receiver.purpose,
              "file": path.name, "fields": list(chosen), "rows": sent.num_rows, "persons": len(pseudonyms),
              "transferred_at": now.isoformat(), "operator": operator,
              "consent": {"purpose": TRANSFER_PURPOSE, "sensitive": bool(with_ids), "audit_id": decision.audit_id,
                          "persons_left_out_by_reason": left_out}}
    logged: dict[str, int] = {}

    def log(staged: Mapping[Path, str]) -> None:
        logged["id"] = record_transfer(workspace.ledger, TransferEntry(
            **entry, outcome="sent", reason=None, rows=sent.num_rows, persons=len(pseudonyms), left_out=left_out,
            file=path.name, file_sha256=_sha256(staged[path])),
            [(p, version, n) for p, n in zip(pseudonyms, per_person)])
        report["transfer_id"] = logged["id"]
        Path(staged[report_path]).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    write_atomically({path: lambda target: write_rows(sent, target, file_format),
                      report_path: lambda target: None}, before_publish=log)
    return TransferResult(transfer_id=logged["id"], path=path, report_path=report_path, receiver=receiver,
                          fields=chosen, rows=sent.num_rows, persons=len(pseudonyms), left_out=left_out,
                          transferred_at=now)
