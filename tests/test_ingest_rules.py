"""Every rule of the data model, one bad input at a time, on Parquet and on CSV input."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import Workspace, ingest
from profiling.errors import SchemaError
from raw_rows import NOW, UTC, valid_rows, write_raw

FUTURE = dt.datetime(2027, 1, 1, tzinfo=UTC)
ANCIENT = dt.datetime(1999, 12, 31, tzinfo=UTC)

# (table, row, column, bad value, expected reason); valid for both Parquet and CSV input.
RULE_CASES = [
    ("accounts", 0, "phone", None, "missing_value"),
    ("accounts", 0, "phone", "12345", "malformed_phone"),
    ("accounts", 1, "phone", "+86 129-0000-1111", "malformed_phone"),
    ("accounts", 0, "nickname", None, "missing_value"),
    ("accounts", 0, "nickname", "", "missing_value"),
    ("accounts", 0, "email", "li-at-example.com", "malformed_email"),
    ("accounts", 0, "birthday", dt.date(1850, 1, 1), "absurd_value"),
    ("accounts", 0, "birthday", dt.date(2027, 3, 1), "future_timestamp"),
    ("accounts", 0, "gender", "unknown", "unknown_value"),
    ("accounts", 0, "region", "990101", "malformed_region"),
    ("accounts", 0, "region", "4403", "malformed_region"),
    ("accounts", 2, "created_at", FUTURE, "future_timestamp"),
    ("accounts", 2, "created_at", ANCIENT, "absurd_value"),
    ("catalogue", 2, "kind", "gift", "unknown_value"),
    ("catalogue", 1, "served_provinces", ["44", "99"], "malformed_province"),
    ("catalogue", 0, "price", -1.0, "negative_value"),
    ("catalogue", 0, "price", 2e6, "absurd_value"),
    ("devices", 1, "app_version", "5.x", "malformed_version"),
    ("devices", 1, "os", "symbian", "unknown_value"),
    ("orders", 0, "amount", -5.0, "negative_value"),
    ("orders", 0, "amount", 5e6, "absurd_value"),
    ("orders", 0, "currency", "XXX", "unknown_value"),
    ("orders", 0, "payment_institution", "cash", "unknown_value"),
    ("orders", 2, "account_id", "A999", "unknown_reference"),
    ("orders", 0, "items", ["I001", "I999"], "unknown_reference"),
    ("orders", 2, "order_id", "O001", "duplicate_key"),
    ("orders", 0, "placed_at", FUTURE, "future_timestamp"),
    ("waybills", 1, "id_card_number", None, "missing_value"),
    ("waybills", 1, "id_card_number", "110105194912310021", "malformed_id_card"),
    ("waybills", 1, "id_card_number", "110105194902300021", "malformed_id_card"),
    ("waybills", 0, "weight_kg", -1.0, "negative_value"),
    ("waybills", 0, "weight_kg", 1e6, "absurd_value"),
    ("waybills", 0, "order_id", "O404", "unknown_reference"),
    ("waybills", 2, "receiver_phone", "phone", "malformed_phone"),
    ("waybills", 2, "destination_region", "000000", "malformed_region"),
    ("waybills", 2, "service_type", "teleport", "unknown_value"),
    ("device_events", 0, "ip", "300.1.2.3", "malformed_ip"),
    ("device_events", 0, "precise_lat", 95.0, "absurd_value"),
    ("device_events", 0, "precise_lon", -181.0, "absurd_value"),
    ("device_events", 1, "item_id", "I404", "unknown_reference"),
    ("device_events", 2, "device_id", "D404", "unknown_reference"),
    ("device_events", 0, "event_type", "teleport", "unknown_value"),
    ("consent_events", 1, "purpose", None, "missing_value"),
    ("consent_events", 1, "purpose", "spam", "unknown_value"),
    ("consent_events", 0, "policy_version", "1999-01", "unknown_value"),
    ("consent_events", 0, "event_type", "maybe", "unknown_value"),
    ("consent_events", 2, "account_id", "A404", "unknown_reference"),
]

# Cells that only text input can hold: a value of the wrong type.
TEXT_CASES = [
    ("orders", 0, "amount", "twelve", "bad_type"),
    ("orders", 0, "amount", "nan", "bad_type"),  # text input takes finite decimal numbers only
    ("orders", 1, "amount", "inf", "bad_type"),
    ("accounts", 0, "created_at", "yesterday", "bad_type"),
    ("accounts", 0, "birthday", "1990-02-30", "bad_type"),
    ("waybills", 0, "cross_border", "maybe", "bad_type"),
    ("catalogue", 0, "active", "2", "bad_type"),
]


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def _set_csv_cell(path: Path, row: int, column: str, text: str) -> None:
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        records = list(csv.reader(handle))
    records[row + 1][records[0].index(column)] = text
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(records)


def _ingest_one_bad(tmp_path: Path, fmt: str, table: str, row: int, column: str, value, text: bool = False):
    rows = valid_rows()
    if not text:
        rows[table][row][column] = value
    raw = write_raw(tmp_path / "raw", rows, fmt=fmt)
    if text:
        _set_csv_cell(raw / f"{table}.csv", row, column, value)
    reports = ingest(raw, Workspace(tmp_path / "ws"), now=NOW, progress=False)
    rejects = pq.read_table(tmp_path / "ws" / "rejects" / table).to_pylist()
    return reports, rejects


def _assert_rejected(reports, rejects, table, row, column, reason, fmt):
    report = reports[table]
    assert report.rows_in == len(valid_rows()[table])
    assert report.accepted + report.rejected == report.rows_in
    assert report.rejected == 1, rejects
    (reject,) = rejects
    assert (reject["column"], reject["reason"]) == (column, reason)
    assert reject["source_row"] == row + 1
    assert reject["source_file"].endswith(f"{table}.{fmt}")
    assert f"{column}:{reason}" in reject["detail"]
    key = valid_rows()[table][row][next(iter(valid_rows()[table][row]))]
    assert reject[next(iter(valid_rows()[table][row]))] in (key, "O001")  # the row's own values are kept


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize(("table", "row", "column", "value", "reason"), RULE_CASES,
                         ids=[f"{c[0]}.{c[2]}-{c[4]}-{i}" for i, c in enumerate(RULE_CASES)])
def test_rule_rejects_row_with_reason(tmp_path, fmt, table, row, column, value, reason):
    reports, rejects = _ingest_one_bad(tmp_path, fmt, table, row, column, value)
    _assert_rejected(reports, rejects, table, row, column, reason, fmt)


@pytest.mark.parametrize(("table", "row", "column", "text", "reason"), TEXT_CASES)
def test_unparseable_cell_is_bad_type(tmp_path, table, row, column, text, reason):
    reports, rejects = _ingest_one_bad(tmp_path, "csv", table, row, column, text, text=True)
    _assert_rejected(reports, rejects, table, row, column, reason, "csv")
    assert rejects[0][column] == text  # the raw text is kept, not the failed parse


@pytest.mark.parametrize(("value", "reason"), [(math.nan, "absurd_value"), (math.inf, "absurd_value"),
                                               (-math.inf, "negative_value")])
def test_non_finite_amount_in_parquet_is_rejected(tmp_path, value, reason):
    reports, rejects = _ingest_one_bad(tmp_path, "parquet", "orders", 0, "amount", value)
    _assert_rejected(reports, rejects, "orders", 0, "amount", reason, "parquet")


def test_rejected_parent_takes_its_children(tmp_path):
    rows = valid_rows()
    rows["accounts"][0]["phone"] = "not a phone"  # A001 owns O001, O003, W001, W002, E001, E002, C001, C002
    raw = write_raw(tmp_path / "raw", rows)
    reports = ingest(raw, Workspace(tmp_path / "ws"), now=NOW, progress=False)
    assert {name: r.rejected for name, r in reports.items()} == {
        "catalogue": 0, "accounts": 1, "devices": 0, "orders": 2, "consent_events": 2,
        "device_events": 2, "waybills": 2,  # W003 has neither account nor order, so it stays
    }
    orders = pq.read_table(tmp_path / "ws" / "rejects" / "orders").to_pylist()
    assert {o["reason"] for o in orders} == {"unknown_reference"}
    for report in reports.values():
        assert report.accepted + report.rejected == report.rows_in


def test_several_problems_are_all_listed(tmp_path):
    rows = valid_rows()
    rows["orders"][0].update(amount=-1.0, currency="XXX", account_id="A404")
    raw = write_raw(tmp_path / "raw", rows)
    ingest(raw, Workspace(tmp_path / "ws"), now=NOW, progress=False)
    (reject,) = pq.read_table(tmp_path / "ws" / "rejects" / "orders").to_pylist()
    assert reject["column"] == "account_id" and reject["reason"] == "unknown_reference"  # first in column order
    assert reject["detail"] == "account_id:unknown_reference; amount:negative_value; currency:unknown_value"


def test_malformed_csv_record_is_rejected_with_its_number(tmp_path):
    raw = write_raw(tmp_path / "raw", fmt="csv")
    path = raw / "devices.csv"
    lines = path.read_text().splitlines()
    lines.insert(2, '"D009","phone"')
    lines.append('"D003","phone","android",,"5.x","2025-01-01T00:00:00Z"')
    path.write_text("\n".join(lines) + "\n")
    reports = ingest(raw, Workspace(tmp_path / "ws"), now=NOW, progress=False)
    assert (reports["devices"].rows_in, reports["devices"].accepted, reports["devices"].rejected) == (4, 2, 2)
    rejects = {r["source_row"]: r for r in pq.read_table(tmp_path / "ws" / "rejects" / "devices").to_pylist()}
    assert rejects[2]["reason"] == "malformed_row" and '"D009"' in rejects[2]["detail"]
    assert rejects[4]["reason"] == "malformed_version" and rejects[4]["device_id"] == "D003"


def test_accepted_rows_round_trip_exactly(tmp_path):
    from raw_rows import to_tables

    for fmt in ("parquet", "csv"):
        ws = Workspace(tmp_path / fmt / "ws")
        ingest(write_raw(tmp_path / fmt / "raw", fmt=fmt), ws, now=NOW, progress=False)
        for name, expected in to_tables(valid_rows()).items():
            assert ws.read(name).equals(expected), (fmt, name)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def ingested_workspace(tmp_path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ingest(write_raw(tmp_path / "good"), ws, now=NOW, progress=False)
    return ws


def _assert_fails_cleanly(ws: Workspace, raw: Path, match: str) -> None:
    before = _tree_digest(ws.root)
    with pytest.raises(SchemaError, match=match):
        ingest(raw, ws, now=NOW, progress=False)
    assert _tree_digest(ws.root) == before


def test_missing_table_file_changes_nothing(tmp_path, ingested_workspace):
    raw = write_raw(tmp_path / "raw")
    (raw / "waybills.parquet").unlink()
    _assert_fails_cleanly(ingested_workspace, raw, r"no waybills table; expected waybills\.parquet")


def test_missing_column_changes_nothing(tmp_path, ingested_workspace):
    raw = write_raw(tmp_path / "raw")
    path = raw / "orders.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["currency"]), path)
    _assert_fails_cleanly(ingested_workspace, raw, r"orders\.parquet: missing column 'currency' of table orders")


def test_missing_csv_column_changes_nothing(tmp_path, ingested_workspace):
    raw = write_raw(tmp_path / "raw", fmt="csv")
    path = raw / "accounts.csv"
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace('"phone"', '"telephone"')
    path.write_text("\n".join(lines) + "\n")
    _assert_fails_cleanly(ingested_workspace, raw, r"accounts\.csv: missing column 'phone' of table accounts")


def test_parquet_column_of_wrong_type_changes_nothing(tmp_path, ingested_workspace):
    raw = write_raw(tmp_path / "raw")
    path = raw / "waybills.parquet"
    table = pq.read_table(path)
    index = table.schema.get_field_index("cross_border")
    table = table.set_column(index, "cross_border", pa.array([dt.date(2020, 1, 1)] * table.num_rows))
    pq.write_table(table, path)
    _assert_fails_cleanly(ingested_workspace, raw, r"waybills\.parquet: column 'cross_border' has type date32")


def test_csv_column_of_wrong_type_changes_nothing(tmp_path, ingested_workspace):
    raw = write_raw(tmp_path / "raw", fmt="csv")
    for row in range(3):
        _set_csv_cell(raw / "orders.csv", row, "placed_at", f"order day {row}")
    _assert_fails_cleanly(ingested_workspace, raw, r"orders\.csv: column 'placed_at' of table orders is not timestamp")


def test_failed_first_ingest_leaves_no_workspace(tmp_path):
    raw = write_raw(tmp_path / "raw")
    (raw / "catalogue.parquet").unlink()
    with pytest.raises(SchemaError):
        ingest(raw, Workspace(tmp_path / "ws"), now=NOW, progress=False)
    assert not (tmp_path / "ws").exists()


def test_missing_raw_folder(tmp_path):
    with pytest.raises(SchemaError, match=r"raw data folder .*nowhere does not exist"):
        ingest(tmp_path / "nowhere", Workspace(tmp_path / "ws"), now=NOW, progress=False)


def test_extra_columns_are_reported(tmp_path):
    raw = write_raw(tmp_path / "raw")
    path = raw / "devices.parquet"
    table = pq.read_table(path)
    pq.write_table(table.append_column("imei", pa.array(["x"] * table.num_rows)), path)
    reports = ingest(raw, Workspace(tmp_path / "ws"), now=NOW, progress=False)
    assert reports["devices"].ignored_columns == ["imei"]
    report = json.loads((tmp_path / "ws" / "ingest-report.json").read_text())
    assert report["tables"]["devices"]["ignored_columns"] == ["imei"]


def test_reingest_replaces_tables(tmp_path, ingested_workspace):
    rows = valid_rows()
    rows["orders"] = rows["orders"][:1]
    ingest(write_raw(tmp_path / "smaller", rows), ingested_workspace, now=NOW, progress=False)
    assert ingested_workspace.read("orders").num_rows == 1
    assert not list(ingested_workspace.root.glob(".staging-*")) and not list(ingested_workspace.root.rglob(".retired-*"))


def test_naive_now_is_refused(tmp_path):
    with pytest.raises(ValueError, match="timezone-aware"):
        ingest(write_raw(tmp_path / "raw"), Workspace(tmp_path / "ws"), now=dt.datetime(2026, 1, 1), progress=False)


def test_directory_of_part_files(tmp_path):
    raw = write_raw(tmp_path / "raw")
    (raw / "orders").mkdir()
    table = pq.read_table(raw / "orders.parquet")
    (raw / "orders.parquet").unlink()
    pq.write_table(table.slice(0, 2), raw / "orders" / "part-0.parquet")
    pq.write_table(table.slice(2), raw / "orders" / "part-1.parquet")
    reports = ingest(raw, Workspace(tmp_path / "ws"), now=NOW, progress=False)
    assert (reports["orders"].rows_in, reports["orders"].accepted) == (3, 3)
    assert len(reports["orders"].sources) == 2


def test_csv_text_that_looks_like_null_markers_is_kept(tmp_path):
    rows = valid_rows()
    rows["accounts"][0]["nickname"] = "NA"
    rows["accounts"][1]["nickname"] = "null"
    ws = Workspace(tmp_path / "ws")
    ingest(write_raw(tmp_path / "raw", rows, fmt="csv"), ws, now=NOW, progress=False)
    assert ws.read("accounts").column("nickname").to_pylist()[:2] == ["NA", "null"]


def test_crash_midway_leaves_previous_ingest_intact(tmp_path, ingested_workspace, monkeypatch):
    ingest_module = importlib.import_module("pipelines.ingest")  # the module, not the function it exports
    before = _tree_digest(ingested_workspace.root)
    real_check, calls = ingest_module.check_batch, []

    def failing_check(*args, **kwargs):
        calls.append(args[0].name)
        if len(calls) == 4:  # three tables already staged
            raise KeyboardInterrupt
        return real_check(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "check_batch", failing_check)
    with pytest.raises(KeyboardInterrupt):
        ingest(write_raw(tmp_path / "new"), ingested_workspace, now=NOW, progress=False)
    assert _tree_digest(ingested_workspace.root) == before
    assert not list(ingested_workspace.root.glob(".staging-*"))


def test_csv_quoting_unicode_and_byte_order_mark(tmp_path):
    rows = valid_rows()
    rows["accounts"][0]["nickname"] = "李雷, \"Lei\""
    rows["waybills"][0]["receiver_address"] = "深圳市南山区\n科技园 1 号"
    raw = write_raw(tmp_path / "raw", rows, fmt="csv")
    path = raw / "accounts.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    ws = Workspace(tmp_path / "ws")
    reports = ingest(raw, ws, now=NOW, progress=False)
    assert all(r.rejected == 0 for r in reports.values())
    assert ws.read("accounts").column("nickname")[0].as_py() == "李雷, \"Lei\""
    assert ws.read("waybills").column("receiver_address")[0].as_py() == "深圳市南山区\n科技园 1 号"


def test_leftovers_of_a_killed_job_are_cleared(tmp_path, ingested_workspace):
    root = ingested_workspace.root
    before = _tree_digest(root / "ingested")
    # A job killed between moving the old tables aside and moving the new ones in, and its staging folder.
    os.rename(root / "ingested", root / ".retired-ingested-0123")
    (root / ".staging-999999999-abc" / "ingested").mkdir(parents=True)
    (root / ".staging-999999999-abc" / "ingested" / "half.parquet").write_bytes(b"personal data")
    (root / "rejects" / ".retired-orders-0456").mkdir()
    ingested_workspace.sweep()
    assert _tree_digest(root / "ingested") == before
    assert not list(root.glob(".staging-*")) and not list(root.rglob(".retired-*"))


def test_a_running_jobs_staging_folder_is_left_alone(tmp_path, ingested_workspace):
    with ingested_workspace.staging() as mine:
        (mine / "work").write_text("in progress")
        Workspace(ingested_workspace.root).sweep()
        assert (mine / "work").read_text() == "in progress"


def test_missing_column_suggests_a_near_name(tmp_path, ingested_workspace):
    raw = write_raw(tmp_path / "raw")
    path = raw / "accounts.parquet"
    pq.write_table(pq.read_table(path).rename_columns(
        ["account_id", "Phone", "nickname", "email", "birthday", "gender", "region", "created_at"]), path)
    _assert_fails_cleanly(ingested_workspace, raw, r"missing column 'phone' of table accounts \(the file has 'Phone'")


def test_unreadable_parquet_changes_nothing(tmp_path, ingested_workspace):
    raw = write_raw(tmp_path / "raw")
    (raw / "devices.parquet").write_bytes(b"PAR1 this is not parquet")
    _assert_fails_cleanly(ingested_workspace, raw, r"devices\.parquet: not a readable Parquet file")


def test_empty_csv_changes_nothing(tmp_path, ingested_workspace):
    raw = write_raw(tmp_path / "raw", fmt="csv")
    (raw / "devices.csv").write_text("")
    _assert_fails_cleanly(ingested_workspace, raw, r"devices\.csv: empty CSV file; the first line must name the columns")


def test_header_only_csv_is_an_empty_table(tmp_path):
    rows = valid_rows()
    rows["device_events"] = []
    raw = write_raw(tmp_path / "raw", rows, fmt="csv")
    reports = ingest(raw, Workspace(tmp_path / "ws"), now=NOW, progress=False)
    assert (reports["device_events"].rows_in, reports["device_events"].accepted) == (0, 0)
    assert Workspace(tmp_path / "ws").read("device_events").num_rows == 0


def test_numbers_are_not_guessed_as_times(tmp_path, ingested_workspace):
    raw = write_raw(tmp_path / "raw")
    path = raw / "accounts.parquet"
    table = pq.read_table(path)
    index = table.schema.get_field_index("created_at")
    table = table.set_column(index, "created_at", pa.array([1_700_000_000] * table.num_rows, pa.int64()))
    pq.write_table(table, path)
    _assert_fails_cleanly(ingested_workspace, raw, r"column 'created_at' has type int64, which cannot be read as timestamp")


def test_loosely_typed_parquet_columns_are_read(tmp_path):
    raw = write_raw(tmp_path / "raw")
    path = raw / "accounts.parquet"
    table = pq.read_table(path)
    phone = table.schema.get_field_index("phone")
    table = table.set_column(phone, "phone", pa.array([13812345678, 13900001111, 15011112222], pa.int64()))
    gender = table.schema.get_field_index("gender")
    table = table.set_column(gender, "gender", table.column("gender").dictionary_encode())
    created = table.schema.get_field_index("created_at")
    table = table.set_column(created, "created_at", table.column("created_at").cast(pa.timestamp("ms")))
    pq.write_table(table, path)
    orders = pq.read_table(raw / "orders.parquet")
    amount = orders.schema.get_field_index("amount")
    pq.write_table(orders.set_column(amount, "amount", pa.array([134, 0, 99], pa.int32())), raw / "orders.parquet")
    ws = Workspace(tmp_path / "ws")
    reports = ingest(raw, ws, now=NOW, progress=False)
    assert all(r.rejected == 0 for r in reports.values())
    assert ws.read("accounts").column("phone").to_pylist() == ["13812345678", "13900001111", "15011112222"]
    assert ws.read("orders").column("amount").to_pylist() == [134.0, 0.0, 99.0]
