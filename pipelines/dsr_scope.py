"""Which rows of a workspace are one data subject's, which name them among others, which are others'.

A row is the subject's own when it describes them alone: their account row, their orders, the
waybills of their account or orders and those naming their phone that no other account sent or
ordered, device events signed in to their account, unsigned events and device rows of devices
only they signed in on, and analytics-zone and derived rows holding their pseudonyms. Links follow
the field registry (``profiling.schema``: fields whose ``identifier`` is ``account_id``,
``device_id``, ``order_id``, ``waybill_id``, ``phone``), and raw ids and pseudonyms (every key
version, every domain the door and the stages use) are matched against every string column of
every Parquet file under the workspace, so zones added later are covered without changes here.

A row that also holds another person's account id, order id or pseudonym is not the subject's:

* a waybill another account sent or ordered that names the subject's phone as one party
  (shipper or receiver) *names* them: an access export shows only that party's columns and the
  non-personal ones, and erasure replaces that party's name, phone and address by ``REDACTED``;
* any other such row (a portrait or identity row over several persons) is *shared*: neither
  exported nor deleted, only counted, so the subject learns it exists and the next run rebuilds it.

Devices that the subject and someone else signed in on, and phones that another account also
registered, belong to nobody alone: they lead to no row and are never tombstoned.

Several subjects erased together (the job's retention stage) are one subject here: a device or
phone only they used, jointly, is theirs (no living account uses it once they are all erased), a
row naming only them is theirs, and a row also naming someone outside the set is not. The result
is what erasing them one after another gives (each erasure leaves the next one's ids as the only
users), reached with one read of every file. Files are read ``BATCH_CELLS`` cells at a time and the
ingested tables' id columns likewise, so what an erasure holds at once is one batch and the
distinct ids (theirs and everybody else's), never a whole file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.dsr_overlay import PHONE_FIELDS, phone_sides
from pipelines.workspace import Workspace
from profiling._string_hash import StringIndex
from profiling._threads import two_at_a_time
from profiling.consent.events import canonical_account_id
from profiling.errors import PortraitError
from profiling.keys import MasterKey
from profiling.pseudonyms import DEVICE, MARKETING, ORDER, PERSON, WAYBILL, normalize, pseudonymize
from profiling.schema import TABLES, PrivacyClass

__all__ = ["DsrError", "LINK_KINDS", "LinkedIdentifiers", "FileScope", "ParquetRewriter", "ScannedFile", "BATCH_CELLS",
           "batch_rows", "linked_identifiers", "subject_rows", "parquet_files", "open_parquet"]

# Kinds of identifier that link rows to a person, and the pseudonym domain of each in the analytics zone.
LINK_KINDS: dict[str, str] = {"account_id": PERSON, "device_id": DEVICE, "order_id": ORDER, "waybill_id": WAYBILL}
_ACCOUNT_FIELDS = {t.name: [f.name for f in t.fields if f.identifier == "account_id"] for t in TABLES.values()}


class DsrError(PortraitError):
    """A data-subject request that cannot be carried out as asked (unknown account, bad correction ...)."""


@dataclass(frozen=True)
class LinkedIdentifiers:
    """The subjects' raw ids by kind (``LINK_KINDS`` plus ``phone`` and ``email``).

    The subjects are one account (a data-subject request) or several erased together (the job's
    retention stage); ids of several are pooled. ``ids["device_id"]`` holds the devices only
    subjects signed in on (one of them, or several of them jointly: once they are all erased no
    living account uses the device); ``shared_devices`` those someone else signed in on too.
    ``phones`` are their phones normalized, less any an account outside the subjects registered.
    Everybody else's ids are not held: the scan looks up only those its rows hold (``_foreign``).
    """

    account_ids: tuple[str, ...]
    ids: dict[str, frozenset[str]]
    phones: frozenset[str]
    shared_devices: frozenset[str]

    @property
    def account_id(self) -> str:
        """The one subject's account id (a data-subject request concerns one account)."""
        if len(self.account_ids) != 1:
            raise ValueError(f"these identifiers are of {len(self.account_ids)} accounts, not one")
        return self.account_ids[0]

    def raw_values(self) -> set[str]:
        return {value for values in self.ids.values() for value in values}

    def pseudonyms(self, key: MasterKey) -> set[str]:
        """Every pseudonym of their ids: each key version, each kind's domain (and MARKETING for the accounts)."""
        found: set[str] = set()
        for version in key.versions:
            for kind, domain in LINK_KINDS.items():
                values = sorted(self.ids.get(kind, ()))
                if values:
                    found.update(pseudonymize(values, key, domain, identifier=kind, version=version).to_pylist())
            found.update(pseudonymize(list(self.account_ids), key, MARKETING, identifier="account_id",
                                      version=version).to_pylist())
        return found


# cells (rows x columns) read, matched and written at once by an erasure, an export or the retention stage: what
# bounds their memory whatever the file size (131,072 rows of 8 columns; a read of two columns takes 4 times more rows)
BATCH_CELLS = 1 << 20


def batch_rows(columns: int) -> int:
    """Rows per batch for a read of ``columns`` columns (``BATCH_CELLS`` cells at most, one row at least)."""
    return max(1, BATCH_CELLS // max(1, columns))


def _batches(workspace: Workspace, table: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The ingested rows of ``table`` (``columns`` only), ``batch_rows`` at a time, one file after another
    (no read-ahead: a dataset scan would hold many batches at once)."""
    folder = workspace.ingested(table)
    if folder.is_dir():
        for path in sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_"))):
            with open_parquet(path) as source:
                yield from source.iter_batches(batch_size=batch_rows(len(columns)), columns=columns)


class ParquetRewriter:
    """Writes a rewritten ``source`` file to ``target`` in row groups as long as the source's first.

    A streamed read hands over batches of ``BATCH_CELLS`` cells; written as they come, a file of
    one row group of a million rows would become hundreds of small ones, and every reader that
    splits a dataset by row group (the local engine's unkeyed reads, Spark's splits) would pay per
    piece. Batches are gathered here until a row group is full, so a rewritten file keeps its
    layout and what is held at once is one row group and one batch. Use as a context manager.
    """

    def __init__(self, target: Path, source: Path, schema: pa.Schema) -> None:
        metadata = pq.read_metadata(source)
        self._rows = max(1, metadata.row_group(0).num_rows) if metadata.num_row_groups else 1
        self._writer = pq.ParquetWriter(target, schema)
        self._pending: list[pa.Table] = []
        self._held = 0

    def __enter__(self) -> ParquetRewriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if exc_info[0] is None and self._held:
                self._writer.write_table(pa.concat_tables(self._pending), row_group_size=self._rows)
        finally:
            self._writer.close()

    def write(self, rows: pa.Table | pa.RecordBatch) -> None:
        """Take ``rows`` (the source's schema); full row groups are written as soon as they are."""
        if not rows.num_rows:
            return
        self._pending.append(rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows]))
        self._held += rows.num_rows
        if self._held >= self._rows:
            gathered = pa.concat_tables(self._pending)
            full = self._held - self._held % self._rows
            self._writer.write_table(gathered.slice(0, full), row_group_size=self._rows)
            self._pending, self._held = [gathered.slice(full)], self._held - full


def open_parquet(path: Path, *, read_dictionary: list[str] | None = None) -> pq.ParquetFile:
    """``path`` for reading batch by batch: column chunks read through a 1 MiB buffer, not whole in advance
    (``read_dictionary``: columns read dictionary-encoded, as Parquet stores them)."""
    return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20, read_dictionary=read_dictionary)


def _phones_normalized(values: pa.Array) -> pa.Array:
    """``normalize(values, "phone")``, its regular expressions run only on values they can change.

    A phone of ASCII digits alone, neither 13 nor 15 of them, is its own normal form: nothing to
    strip, and no country code before 11 digits (``profiling.identifiers.canonical_phone``); most
    phones are written so, and an erasure matches every phone of every waybill.

    >>> _phones_normalized(pa.array(["13812345678", " +86 138-1234-5678", "8613812345678", None])).to_pylist()
    ['13812345678', '13812345678', '13812345678', None]
    """
    trimmed = pc.utf8_trim_whitespace(values.cast(pa.string()))
    length = pc.binary_length(trimmed)
    plain = pc.and_(pc.ascii_is_decimal(trimmed),
                    pc.invert(pc.is_in(length, value_set=pa.array([13, 15], length.type))))
    rest = pc.invert(pc.fill_null(plain, True))  # nulls are their own normal form too
    if not pc.any(rest).as_py():
        return trimmed
    return pc.replace_with_mask(trimmed, rest, normalize(trimmed.filter(rest), "phone"))


def _column(rows: pa.RecordBatch | pa.Table, column: str) -> pa.Array:
    values = rows.column(column)
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _trimmed(rows: pa.RecordBatch | pa.Table, column: str) -> pa.Array:
    return pc.utf8_trim_whitespace(_column(rows, column).cast(pa.string()))


def _text_set(values: Iterable[str]) -> pa.Array:
    """``values`` as the Arrow array ``pc.is_in`` looks rows up in, built once per erasure."""
    return pa.array(sorted(set(values)), pa.string())


def _index(values: pa.Array) -> StringIndex:
    """A lookup of ``values`` (distinct, non-null strings) built once and probed batch after batch."""
    return StringIndex(values.cast(pa.string()))


def _in(values: pa.Array, members: pa.Array) -> np.ndarray:
    if not len(members) or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    hit = pc.is_in(values, value_set=members)
    return np.asarray(pc.fill_null(hit, False).to_numpy(zero_copy_only=False), dtype=bool)


def _valid(values: pa.Array) -> np.ndarray:
    return np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), dtype=bool)


def _picked(values: pa.Array, mask: np.ndarray) -> set[str]:
    return {v for v in values.filter(pa.array(mask)).to_pylist() if v is not None}


def _distinct(values: pa.Array, mask: np.ndarray | None = None) -> pa.Array:
    """The distinct non-null ``values`` (where ``mask``), as an Arrow array: everybody's ids stay columnar."""
    if mask is not None:
        values = values.filter(pa.array(mask))
    return pc.unique(values.drop_null())


def _union(parts: list[pa.Array]) -> pa.Array:
    """The distinct values of several arrays of distinct values (one per batch)."""
    return pc.unique(pa.concat_arrays(parts)) if parts else pa.array([], pa.string())


def _subjects(account_ids: str | Iterable[str]) -> tuple[str, ...]:
    """The account ids as ingest keys them, sorted and distinct; one bad id is a ``DsrError`` naming it."""
    given = [account_ids] if isinstance(account_ids, str) else list(account_ids)
    forms = set()
    for account_id in given:
        form = canonical_account_id(account_id) if isinstance(account_id, str) else None
        if not form:
            raise DsrError(f"account id {account_id!r} is empty; give the raw account id (e.g. A0000000001)")
        forms.add(form)
    if not forms:
        raise DsrError("no account id given; give at least one raw account id (e.g. A0000000001)")
    return tuple(sorted(forms))


def linked_identifiers(workspace: Workspace, account_ids: str | Iterable[str]) -> LinkedIdentifiers:
    """The subjects' own ids and everybody else's, from the ingested zone (see the module docstring).

    ``account_ids``: one raw account id, or several whose ids are resolved together in one read of
    each ingested table (what is theirs jointly: a device only they signed in on, a phone only they
    registered). Each table is read in batches, only the columns needed: what is held is their ids
    and everybody's distinct phones and their devices' users, never a whole column; everybody
    else's account and order ids are looked up later, only against what the subjects' rows hold.
    """
    subjects = _subjects(account_ids)
    subject_set = _text_set(subjects)
    # rows: (account_id, phone, email)
    phones: set[str] = set()
    emails: set[str] = set()
    their_phones: list[pa.Array] = []
    others_phones: list[pa.Array] = []
    for rows in _batches(workspace, "accounts", ["account_id", "phone", "email"]):
        mine = _in(_trimmed(rows, "account_id"), subject_set)
        phones |= _picked(_trimmed(rows, "phone"), mine)
        emails |= _picked(_trimmed(rows, "email"), mine)
        normalized = _phones_normalized(rows.column("phone"))
        their_phones.append(_distinct(normalized, mine))
        others_phones.append(_distinct(normalized, ~mine))
    their_phones_all = _union(their_phones)
    own_phones = set(their_phones_all.filter(pa.array(~_in(their_phones_all, _union(others_phones)))).to_pylist())
    own_phone_set = _text_set(own_phones)
    # rows: (order_id, account_id)
    own_orders: set[str] = set()
    for rows in _batches(workspace, "orders", ["order_id", "account_id"]):
        own_orders |= _picked(_trimmed(rows, "order_id"), _in(_trimmed(rows, "account_id"), subject_set))
    own_order_set = _text_set(own_orders)
    # rows: (waybill_id, order_id, account_id, shipper_phone, receiver_phone)
    own_waybills: set[str] = set()
    for rows in _batches(workspace, "waybills", ["waybill_id", "order_id", "account_id", *PHONE_FIELDS["waybills"]]):
        waybill_account, waybill_order = _trimmed(rows, "account_id"), _trimmed(rows, "order_id")
        unowned = ~_valid(waybill_account) & ~_valid(waybill_order)
        names_phone = np.zeros(len(waybill_account), dtype=bool)  # on waybills of no account nor order only
        if unowned.any():
            for name in PHONE_FIELDS["waybills"]:
                names_phone[unowned] |= _in(_phones_normalized(_column(rows, name).filter(pa.array(unowned))),
                                            own_phone_set)
        own_waybills |= _picked(_trimmed(rows, "waybill_id"),
                                _in(waybill_account, subject_set) | _in(waybill_order, own_order_set)
                                | (names_phone & unowned))
    # rows: (device_id, account_id) of signed-in events
    their_devices: list[pa.Array] = []
    others_devices: list[pa.Array] = []
    for rows in _batches(workspace, "device_events", ["device_id", "account_id"]):
        device, signed = _trimmed(rows, "device_id"), _trimmed(rows, "account_id")
        by_them = _in(signed, subject_set)
        their_devices.append(_distinct(device, by_them))
        others_devices.append(_distinct(device, _valid(signed) & ~by_them))
    their_devices_all = _union(their_devices)
    used_by_others = _in(their_devices_all, _union(others_devices))
    return LinkedIdentifiers(
        subjects,
        {"account_id": frozenset(subjects),
         "device_id": frozenset(their_devices_all.filter(pa.array(~used_by_others)).to_pylist()),
         "order_id": frozenset(own_orders), "waybill_id": frozenset(own_waybills),
         "phone": frozenset(phones), "email": frozenset(emails)},
        phones=frozenset(own_phones), shared_devices=frozenset(their_devices_all.filter(pa.array(used_by_others))
                                                               .to_pylist()))


def parquet_files(workspace: Workspace) -> list[Path]:
    """Every Parquet file under the workspace except the machinery of staging and publishing."""
    if not workspace.root.is_dir():
        return []
    return sorted(p for p in workspace.root.rglob("*.parquet")
                  if not any(part.startswith(".") for part in p.relative_to(workspace.root).parts))


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def _text_columns(schema: pa.Schema) -> list[str]:
    """Columns of strings or of lists of strings (a portrait's linked persons and devices)."""
    return [f.name for f in schema
            if _is_text(f.type) or (pa.types.is_list(f.type) and _is_text(f.type.value_type))]


def _cells(rows: pa.Table, name: str) -> tuple[pa.Array, np.ndarray | None]:
    """A text column's values trimmed, a list column's elements flattened, and the row of each element (None: one
    value per row)."""
    column = _column(rows, name)
    if pa.types.is_list(column.type):
        return (pc.utf8_trim_whitespace(pc.list_flatten(column)),
                pc.list_parent_indices(column).to_numpy(zero_copy_only=False))
    if pa.types.is_dictionary(column.type) and len(column.dictionary):
        # a null's index is made 0, so every index points into the dictionary
        nulls = pc.is_null(column.indices).to_numpy(zero_copy_only=False) if column.null_count else None
        return pa.DictionaryArray.from_arrays(pc.fill_null(column.indices, 0).to_numpy(zero_copy_only=False),
                                              pc.utf8_trim_whitespace(column.dictionary), mask=nulls), None
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return pc.utf8_trim_whitespace(column), None


def _matching_rows(rows: pa.Table, cells: Iterable[tuple[pa.Array, np.ndarray | None]],
                   holds: Callable[[pa.Array], np.ndarray]) -> np.ndarray:
    """True on ``rows`` where any of ``cells`` (``_cells`` of their columns) is a value ``holds`` is true of."""
    mask = np.zeros(rows.num_rows, dtype=bool)
    for values, parents in cells:
        hit = holds(values)
        if values.null_count and pa.types.is_dictionary(values.type):  # a null's index may point at anything
            hit &= _valid(values)
        if parents is None:
            mask |= hit
        else:
            mask[parents[hit]] = True
    return mask


@dataclass
class FileScope:
    """One batch of a Parquet file's rows as they concern the subject (masks over ``rows``).

    ``named`` maps a phone column to the rows naming the subject as that party on a row that is
    someone else's; ``party`` maps it to that party's columns.
    """

    path: Path
    rows: pa.Table
    own: np.ndarray
    named: dict[str, np.ndarray]
    party: dict[str, list[str]]
    shared: np.ndarray
    # The subjects' ids and pseudonyms the file holds (what says an account is in the workspace).
    found: frozenset[str] = frozenset()

    def named_rows(self) -> np.ndarray:
        mask = np.zeros(self.rows.num_rows, dtype=bool)
        for rows in self.named.values():
            mask |= rows
        return mask

    def named_view(self) -> list[dict]:
        """The rows naming the subject, with only their party's columns, the row's own id (a waybill number) and
        the non-personal ones filled."""
        table = TABLES.get(self.path.parent.name)
        public = {f.name for f in table.fields if f.privacy is PrivacyClass.NON_PERSONAL} | {table.primary_key} \
            if table else set()
        view = []
        for index in np.flatnonzero(self.named_rows()):
            shown = set(public)
            for phone, rows in self.named.items():
                if rows[index]:
                    shown |= set(self.party[phone])
            row = self.rows.slice(int(index), 1).to_pylist()[0]
            view.append({name: (value if name in shown else None) for name, value in row.items()})
        return view

    def redacted(self, marker: str) -> pa.Table:
        """The file's rows without the subject's own rows, their party's columns replaced by ``marker`` where named."""
        rows = self.rows
        for phone, mask in self.named.items():
            for name in self.party[phone]:
                if name in rows.column_names and mask.any():
                    index = rows.schema.get_field_index(name)
                    column = pc.if_else(pa.array(mask), pa.scalar(marker, rows.schema.field(name).type),
                                        rows.column(name).combine_chunks())
                    rows = rows.set_column(index, rows.schema.field(name), column)
        return rows.filter(pa.array(~self.own))


@dataclass
class ScannedFile:
    """One Parquet file being scanned: its schema and the ``FileScope`` of each batch of its rows.

    ``scopes`` yields every batch in file order (those holding nothing of the subjects too) and can
    be consumed once, in any thread: it opens the file at its first batch and closes it after the last.
    """

    path: Path
    schema: pa.Schema
    scopes: Iterator[FileScope]


def subject_rows(workspace: Workspace, linked: LinkedIdentifiers, key: MasterKey) -> Iterator[ScannedFile]:
    """The Parquet files of the workspace holding the subjects' ids, pseudonyms or phones, one file at a time.

    Two reads of each file, ``batch_rows`` rows at a time, never whole, whatever the number of
    subjects. The first (two files at a time) reads the text columns alone and finds the rows that
    concern the subjects (their ids, pseudonyms or phones), keeping their positions and the values
    they hold; then the values that are someone else's are looked up among those alone
    (``_foreign``); the second read (of every column, of the files holding such rows only) yields
    each batch's ``FileScope``: a row is theirs when it holds no one else's id (see the module
    docstring). What is held between the reads is the concerned rows' positions and their distinct
    values, never everybody's ids.
    """
    own_ids = (linked.raw_values() - linked.ids["phone"]) | linked.pseudonyms(key)
    own_targets = _index(_text_set(own_ids))
    # A file of no registry table (a zone added later) has no known phone columns: their phones are
    # looked for in every text column, as written and normalized.
    anywhere = _index(_text_set(own_ids | linked.ids["phone"] | linked.phones))
    phone_set = _text_set(linked.phones)

    def concerned_in(path: Path) -> tuple[_Concerned, pa.Array, pa.Schema, _Columns]:
        metadata = pq.read_metadata(path)
        schema = metadata.schema.to_arrow_schema()
        columns = _columns(path, schema)
        values = _DistinctStrings()
        with open_parquet(path, read_dictionary=_few_valued(metadata, columns.text)) as source:
            found = _concerned_rows(source, columns, own_targets if columns.registered else anywhere, phone_set,
                                    values)
        return found, values.values(), schema, columns

    scanned: dict[Path, tuple[_Concerned, pa.Schema, _Columns]] = {}
    candidates = _DistinctStrings()
    files = parquet_files(workspace)
    largest_first = sorted(files, key=lambda path: path.stat().st_size, reverse=True)
    with closing(two_at_a_time(concerned_in, largest_first, name="subject-scan")) as scans:  # two files at a time
        for path, (found, values, schema, columns) in zip(largest_first, scans):
            candidates.add(values)
            if len(found.rows):
                scanned[path] = found, schema, columns
    foreign = _foreign(workspace, linked, key, candidates.values())
    del candidates
    concerned = {path: scanned[path] for path in files if path in scanned}   # in the files' order
    for path, (found, schema, columns) in concerned.items():
        targets = own_targets if columns.registered else anywhere
        yield ScannedFile(path, schema, _scopes(path, columns, found, targets, foreign))


@dataclass(frozen=True)
class _Columns:
    """A file's columns as the scan reads them: text (ids, pseudonyms), phone columns, each phone's party."""

    text: list[str]
    phones: list[str]
    party: dict[str, list[str]]
    registered: bool  # the file is of a registry table (else the subjects' phones are looked for in any column)


def _columns(path: Path, schema: pa.Schema) -> _Columns:
    table = TABLES.get(path.parent.name)
    phones = [name for name in PHONE_FIELDS.get(table.name, []) if name in schema.names] if table else []
    party = {name: columns for name, columns in phone_sides(table).items() if name in phones} if table else {}
    return _Columns(text=[name for name in _text_columns(schema) if name not in phones], phones=phones,
                    party=party, registered=table is not None)


@dataclass
class _Concerned:
    """The rows of one file that concern the subjects: their positions in the file (ascending), which of them
    hold one of the subjects' ids or pseudonyms, and which name one of their phones, per phone column."""

    rows: np.ndarray
    own_hit: np.ndarray
    phone_hit: dict[str, np.ndarray]

    def within(self, start: int, stop: int) -> _Concerned:
        """Those among rows ``start`` to ``stop`` (excluded), positioned from ``start``."""
        first, last = np.searchsorted(self.rows, [start, stop])
        return _Concerned(self.rows[first:last] - start, self.own_hit[first:last],
                          {name: hit[first:last] for name, hit in self.phone_hit.items()})


class _DistinctStrings:
    """Distinct strings gathered batch after batch, merged whenever what was added since the last merge
    outgrows what it kept (each value is hashed a few times, whatever the number of batches)."""

    def __init__(self) -> None:
        self._parts: list[pa.Array] = []
        self._added = 0
        self._kept = 0

    def add(self, values: pa.Array) -> None:
        self._parts.append(pc.unique(values.cast(pa.string()).drop_null()))
        self._added += len(self._parts[-1])
        if self._added > max(self._kept, 1 << 16):
            self._merge()

    def _merge(self) -> None:
        self._parts = [_union(self._parts)]
        self._kept, self._added = len(self._parts[0]), 0

    def values(self) -> pa.Array:
        self._merge()
        return self._parts[0]


def _few_valued(metadata: pq.FileMetaData, names: list[str]) -> list[str]:
    """The columns of ``names`` whose every column chunk is dictionary-encoded with a small dictionary page (at
    most 64 KiB): read as a dictionary, their values are trimmed and looked up once per distinct value."""
    chunks: dict[str, list] = {}
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunks.setdefault(row_group.column(index).path_in_schema, []).append(row_group.column(index))
    return [name for name in names if chunks.get(name) and all(
        chunk.has_dictionary_page and chunk.data_page_offset - chunk.dictionary_page_offset <= 1 << 16
        for chunk in chunks[name])]


def _concerned_rows(source: pq.ParquetFile, columns: _Columns, targets: StringIndex, phone_set: pa.Array,
                    candidates: _DistinctStrings) -> _Concerned:
    """The rows of ``source`` concerning the subjects, read a batch of its text and phone columns at a time; the
    distinct values of their text columns are added to ``candidates`` (what ``_foreign`` looks up)."""
    read = columns.text + columns.phones
    positions: list[np.ndarray] = [np.zeros(0, np.int64)]
    own_hits: list[np.ndarray] = [np.zeros(0, bool)]
    phone_hits: dict[str, list[np.ndarray]] = {name: [np.zeros(0, bool)] for name in columns.phones}
    start = 0
    for rows in (source.iter_batches(batch_size=batch_rows(len(read)), columns=read) if read else ()):
        own_hit = (_matching_rows(rows, (_cells(rows, name) for name in columns.text),
                                  lambda values: targets.positions(values) >= 0)
                   if len(targets) else np.zeros(rows.num_rows, dtype=bool))
        phone_hit = {name: _in(_phones_normalized(_column(rows, name)), phone_set) for name in columns.phones}
        concerned = own_hit.copy()
        for hit in phone_hit.values():
            concerned |= hit
        if concerned.any():
            rows_at = np.flatnonzero(concerned)
            theirs = rows.take(pa.array(rows_at))
            for values, _ in (_cells(theirs, name) for name in columns.text):
                candidates.add(values)
            positions.append(rows_at + start)
            own_hits.append(own_hit[rows_at])
            for name, hit in phone_hit.items():
                phone_hits[name].append(hit[rows_at])
        start += rows.num_rows
    return _Concerned(np.concatenate(positions), np.concatenate(own_hits),
                      {name: np.concatenate(hits) for name, hits in phone_hits.items()})


def _foreign(workspace: Workspace, linked: LinkedIdentifiers, key: MasterKey, candidates: pa.Array) -> StringIndex:
    """The ``candidates`` (distinct strings) that are someone else's: another account's id (in any account column of
    the ingested zone), the id of an order of another account, or a PERSON or MARKETING pseudonym of another account
    (every key version). A row holding one is not the subjects' alone.

    Everybody else's ids are read batch by batch and looked up among the candidates, never gathered; their
    pseudonyms are made only when a candidate has a pseudonym's shape (32 lowercase hex digits).
    """
    if not len(candidates):
        return StringIndex(pa.array([], pa.string()))
    lookup = StringIndex(candidates)
    foreign = np.zeros(len(candidates), dtype=bool)

    def mark(values: pa.Array) -> None:
        found = lookup.positions(values)
        foreign[found[found >= 0]] = True

    subject_set = _text_set(linked.account_ids)
    pseudonyms_needed = pc.any(pc.match_substring_regex(candidates, r"^[0-9a-f]{32}$")).as_py()
    # distinct ids of other accounts, gathered only to pseudonymize them
    other_accounts = _DistinctStrings()
    for table, names in _ACCOUNT_FIELDS.items():
        # rows: (account columns) of every ingested table, and the order ids of orders
        for rows in _batches(workspace, table, ["order_id", *names] if table == "orders" else names) if names else ():
            for name in names:
                accounts = _trimmed(rows, name)
                accounts = accounts.filter(pa.array(_valid(accounts) & ~_in(accounts, subject_set)))
                mark(accounts)
                if pseudonyms_needed:
                    other_accounts.add(accounts)
            if table == "orders":  # of another account, or of none
                mark(_trimmed(rows, "order_id").filter(pa.array(~_in(_trimmed(rows, "account_id"), subject_set))))
    if pseudonyms_needed:
        accounts = other_accounts.values()
        for version in key.versions:
            for domain in (PERSON, MARKETING):
                for start in range(0, len(accounts), 1 << 20):
                    mark(pseudonymize(accounts.slice(start, 1 << 20), key, domain, identifier="account_id",
                                      version=version))
    return StringIndex(candidates.filter(pa.array(foreign)))


def _scopes(path: Path, columns: _Columns, concerned: _Concerned, targets: StringIndex,
            foreign: StringIndex) -> Iterator[FileScope]:
    """``FileScope`` of each batch of every column of ``path``, in file order (the file is opened at the first)."""
    with open_parquet(path) as source:
        start = 0
        for batch in source.iter_batches(batch_size=batch_rows(len(source.schema_arrow))):
            yield _scope(path, pa.Table.from_batches([batch]), columns,
                         concerned.within(start, start + batch.num_rows), targets, foreign)
            start += batch.num_rows


def _scope(path: Path, rows: pa.Table, columns: _Columns, concerned: _Concerned, targets: StringIndex,
           foreign_ids: StringIndex) -> FileScope:
    """One batch of ``path`` as its rows concern the subjects (``concerned``: those of the batch, found by the first
    read; ``targets``: their ids and pseudonyms; ``foreign_ids``: others' ids those rows hold)."""
    own_hit = np.zeros(rows.num_rows, dtype=bool)
    own_hit[concerned.rows] = concerned.own_hit
    phone_hit = {}
    for name, hits in concerned.phone_hit.items():
        phone_hit[name] = np.zeros(rows.num_rows, dtype=bool)
        phone_hit[name][concerned.rows] = hits
    about_them = np.zeros(rows.num_rows, dtype=bool)
    about_them[concerned.rows] = True
    foreign = np.zeros(rows.num_rows, dtype=bool)  # others' ids, looked for on the rows that concern them only
    found: frozenset[str] = frozenset()
    if len(concerned.rows):
        theirs = rows.take(pa.array(concerned.rows))
        cells = [_cells(theirs, name) for name in columns.text]
        if len(foreign_ids):
            foreign[concerned.rows] = _matching_rows(theirs, cells, lambda values: foreign_ids.positions(values) >= 0)
        positions = np.concatenate([targets.positions(values) for values, _ in cells] + [np.zeros(0, np.int64)])
        found = frozenset(targets.keys.take(pa.array(np.unique(positions[positions >= 0]))).to_pylist())
    named = {name: phone_hit[name] & foreign & ~own_hit for name in columns.party}
    scope = FileScope(path, rows, about_them & ~foreign, named, columns.party, np.zeros(0, dtype=bool), found)
    scope.shared = about_them & foreign & ~scope.named_rows()
    return scope
