"""Recipient minimization: what each outside recipient may receive, declared once, and the export that keeps to it.

The privacy policy promises that payment institutions receive the order number and the
transaction amount, to confirm a payment instruction, and nothing else. ``RECIPIENTS`` states
that promise as data; ``export_for_recipient`` writes exactly the declared fields and refuses
anything more before writing a byte. These exports come from the identifiable zone
(``WS/ingested/``): the recipient needs the real order number, not a pseudonym.

Every export is person-level, so before a row is written:

* a recipient scoped by a column (payment institutions: ``payment_institution``) gets only its own
  rows, and the export refuses to run without naming which party;
* the consent gate decides the recipient's purpose (``payment_settlement``) as of the export
  moment: rows of cancelled accounts, of persons who revoked the purpose, and of persons without
  an accepted policy are left out (deny by default, audited like every gate decision);
* k-anonymity is enforced over the recipient's declared quasi-identifiers: rows of classes smaller
  than k are suppressed. What was left out and suppressed goes to ``<file>.report.json`` beside
  the export (counts only).

Receivers abroad are declared apart, in ``profiling.overseas`` (country, legal mechanism, separate
consent, transfer log); ``portrait export`` sends to them through ``transfer_to_overseas``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from profiling.consent import ConsentGate, SqliteConsentStore
from profiling.errors import PortraitError, WorkspaceError
from profiling.export_files import EXPORT_FORMATS, write_atomically, write_rows
from profiling.k_anonymity import DEFAULT_K, KAnonymityResult, amount_band, enforce_k_anonymity
from profiling.overseas import OVERSEAS_RECEIVERS
from profiling.purposes import purpose
from profiling.schema import PAYMENT_INSTITUTIONS, TABLES

__all__ = ["EXPORT_FORMATS", "RECIPIENTS", "ExportResult", "Recipient", "checked_request", "export_for_recipient",
           "recipient"]


@dataclass(frozen=True)
class Recipient:
    """One outside recipient: the table its rows come from and the only fields it may receive.

    ``consent_purpose`` is the catalogue purpose the transfer serves; a row goes out only when the
    consent gate allows it for the row's ``person_column`` at the export moment.
    ``quasi_identifiers`` are the exported fields someone holding the file could use to pick out a
    person's row; k-anonymity is enforced over them, each through ``generalized[name]`` when given
    (the class is formed over the band; the exported value stays exact). ``filter_column`` (with
    its ``filter_values``) scopes the recipient to one party, e.g. one payment institution: an
    export must name it; the column selects rows and is never exported.
    """

    name: str
    table: str
    fields: tuple[str, ...]
    purpose: str
    consent_purpose: str
    quasi_identifiers: tuple[str, ...]
    person_column: str = "account_id"
    generalized: Mapping[str, Callable[[pa.ChunkedArray], pa.Array]] = field(default_factory=dict)
    filter_column: str | None = None
    filter_values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        columns = TABLES[self.table].column_names
        named = (*self.fields, self.person_column, *filter(None, [self.filter_column]))
        unknown = [c for c in named if c not in columns]
        if unknown or not self.fields:
            raise ValueError(f"recipient {self.name!r}: fields must be columns of {self.table} "
                             f"(unknown: {', '.join(unknown) or 'none given'})")
        purpose(self.consent_purpose)  # unknown purpose: the error lists the known ones
        stray = [c for c in (*self.quasi_identifiers, *self.generalized) if c not in self.fields]
        if stray:
            raise ValueError(f"recipient {self.name!r}: quasi-identifiers must be among its fields "
                             f"{', '.join(self.fields)} (not: {', '.join(stray)})")


RECIPIENTS: Mapping[str, Recipient] = {
    "payment_institution": Recipient(
        name="payment_institution",
        table="orders",
        fields=("order_id", "amount"),
        purpose="confirm the payment instruction and complete payment (order number and transaction amount)",
        consent_purpose="payment_settlement",
        # The order number is the recipient's own reference for a payment it settled (see README,
        # "Exports to outside recipients"); the amount can single an order out to whoever knows
        # roughly what a person paid, so classes are formed over its 1-2-5 band.
        quasi_identifiers=("amount",),
        generalized={"amount": amount_band},
        filter_column="payment_institution",
        filter_values=PAYMENT_INSTITUTIONS,
    ),
}


@dataclass(frozen=True)
class ExportResult:
    """Where an export went, what it holds, and what was left out (by consent) or suppressed (k-anonymity).

    ``left_out`` maps a gate exclusion reason to the persons it removed; ``rows_left_out`` counts
    their rows. ``report_path`` is the JSON report written beside the export.
    """

    path: Path
    recipient: str
    fields: tuple[str, ...]
    rows: int
    report_path: Path
    as_of: dt.datetime
    left_out: dict[str, int]
    rows_left_out: int
    k_anonymity: KAnonymityResult

    def summary(self) -> str:
        """Three lines: what was written, what consent left out, what k-anonymity suppressed."""
        anonymity = self.k_anonymity
        over = ", ".join(f"{c} (banded)" if c in anonymity.generalized else c
                         for c in anonymity.quasi_identifiers) or "no quasi-identifier (one class)"
        reasons = ", ".join(f"{reason}={persons}" for reason, persons in sorted(self.left_out.items())) or "none"
        return (f"wrote {self.rows} rows ({', '.join(self.fields)}) for {self.recipient} to {self.path}\n"
                f"consent as of {self.as_of.isoformat()}: left out {self.rows_left_out} rows "
                f"(persons by reason: {reasons})\n"
                f"k-anonymity k={anonymity.k} over {over}: suppressed {anonymity.rows_suppressed} rows in "
                f"{anonymity.classes_suppressed} classes; report {self.report_path}")


def recipient(name: str) -> Recipient:
    """The declared recipient ``name``; a clear error names the known ones otherwise.

    >>> recipient("payment_institution").fields
    ('order_id', 'amount')
    """
    try:
        return RECIPIENTS[name]
    except (KeyError, TypeError):
        if isinstance(name, str) and name in OVERSEAS_RECEIVERS:
            raise PortraitError(f"{name!r} is an overseas receiver: a cross-border transfer goes through "
                                "profiling.overseas.transfer_to_overseas (it needs the master key)") from None
        raise PortraitError(f"unknown recipient {name!r}; the declared recipients are "
                            f"{', '.join(sorted(RECIPIENTS))}; overseas receivers (cross-border): "
                            f"{', '.join(sorted(OVERSEAS_RECEIVERS))}") from None


def _checked_fields(declared: Recipient, fields: Sequence[str] | None) -> tuple[str, ...]:
    if fields is None:
        return declared.fields
    if isinstance(fields, str):
        raise TypeError("fields is a list of column names, not one string")
    wanted = tuple(dict.fromkeys(fields))
    extra = [f for f in wanted if f not in declared.fields]
    if extra or not wanted:
        raise PortraitError(f"recipient {declared.name!r} may receive only {', '.join(declared.fields)}; "
                            f"refused: {', '.join(extra) or 'an empty field list'}; nothing written")
    return wanted


def checked_request(name: str, *, fields: Sequence[str] | None = None, institution: str | None = None,
                    file_format: str = "csv") -> tuple[Recipient, tuple[str, ...]]:
    """The declared recipient and the fields an export would write; ``PortraitError`` says what is refused.

    >>> checked_request("payment_institution", institution="alipay")[1]
    ('order_id', 'amount')
    """
    declared = recipient(name)
    chosen = _checked_fields(declared, fields)
    if file_format not in EXPORT_FORMATS:
        raise PortraitError(f"unknown export format {file_format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if institution is None and declared.filter_column is not None:
        raise PortraitError(f"recipient {name!r} receives only its own rows: name the {declared.filter_column} "
                            f"with --institution, one of {', '.join(declared.filter_values)}")
    if institution is not None:
        if declared.filter_column is None:
            raise PortraitError(f"recipient {name!r} cannot be restricted to an institution")
        if institution not in declared.filter_values:
            raise PortraitError(f"unknown {declared.filter_column} {institution!r}; "
                                f"known: {', '.join(declared.filter_values)}")
    return declared, chosen


def export_for_recipient(workspace, name: str, out_dir: str | os.PathLike, *, fields: Sequence[str] | None = None,
                         institution: str | None = None, file_format: str = "csv",
                         as_of: dt.datetime | None = None, k: int = DEFAULT_K) -> ExportResult:
    """Write ``<name>[-<institution>].<format>`` into ``out_dir`` with only the recipient's declared fields.

    ``fields`` may narrow the declared list, never widen it. ``institution`` keeps only rows whose
    ``filter_column`` holds it, and is required for a recipient scoped by one. Rows of persons the
    consent gate does not allow for the recipient's purpose at ``as_of`` (timezone-aware, default
    now) are left out, using the consent ledger ``workspace.ledger`` (load the ingested events
    first: ``portrait export`` and ``portrait run`` do). Then rows of classes smaller than ``k``
    over the quasi-identifiers among the chosen fields are suppressed. ``<stem>.report.json``
    beside the export says what was left out and suppressed (counts only). Every check runs before
    anything is written; the files appear whole (written beside, then renamed) or not at all.
    """
    declared, chosen = checked_request(name, fields=fields, institution=institution, file_format=file_format)
    as_of = dt.datetime.now(dt.timezone.utc) if as_of is None else as_of
    if not isinstance(as_of, dt.datetime) or as_of.tzinfo is None:
        raise PortraitError(f"as_of {as_of!r} must be a timezone-aware moment, e.g. 2026-11-01T00:00:00Z")
    if not workspace.ledger.is_file():
        raise WorkspaceError(f"workspace {workspace.root} has no consent ledger ({workspace.ledger}); run "
                             f"`portrait consent load --workspace {workspace.root}` first; nothing written")
    quasi_identifiers = [c for c in declared.quasi_identifiers if c in chosen]
    generalized = {c: f for c, f in declared.generalized.items() if c in quasi_identifiers}
    columns = list(dict.fromkeys([*chosen, declared.person_column,
                                  *([declared.filter_column] if institution is not None else [])]))
    rows = workspace.read(declared.table, columns=columns)
    # rows: (chosen fields..., person column, [filter column])
    if institution is not None:
        rows = rows.filter(pc.equal(rows[declared.filter_column], institution))
    persons = pc.unique(rows.column(declared.person_column).combine_chunks())
    with SqliteConsentStore(workspace.ledger) as store:
        gate = ConsentGate(store)  # the history of these persons only, so the exclusions count them alone
        decision = gate.decide(declared.consent_purpose, as_of, job=f"export:{name}", population=persons,
                               snapshot=gate.snapshot(persons.to_pylist()))
    allowed = decision.keep(rows, declared.person_column)
    rows_left_out = rows.num_rows - allowed.num_rows
    left_out = dict(decision.excluded)
    # rows: (chosen fields...) of allowed persons
    anonymity = enforce_k_anonymity(allowed.select(list(chosen)), quasi_identifiers, k=k, generalized=generalized)
    kept = anonymity.table.replace_schema_metadata({"recipient": name, "purpose": declared.purpose})
    stem = name if institution is None else f"{name}-{institution}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path, report_path = out / f"{stem}.{file_format}", out / f"{stem}.report.json"
    report = {"recipient": name, "institution": institution, "file": path.name, "fields": list(chosen),
              "rows": kept.num_rows, "as_of": as_of.isoformat(),
              "consent": {"purpose": declared.consent_purpose, "audit_id": decision.audit_id,
                          "rows_left_out": rows_left_out, "persons_left_out_by_reason": left_out},
              "k_anonymity": anonymity.report()}
    write_atomically({path: lambda target: write_rows(kept, target, file_format),
                      report_path: lambda target: Path(target).write_text(
                          json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")})
    return ExportResult(path=path, recipient=name, fields=chosen, rows=kept.num_rows, report_path=report_path,
                        as_of=as_of, left_out=left_out, rows_left_out=rows_left_out, k_anonymity=anonymity)

