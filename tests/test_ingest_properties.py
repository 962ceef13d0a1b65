"""Random corruptions thrown at ingest: every row ends up accepted or rejected, none lost, none invented."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines import Workspace, ingest
from profiling.errors import SchemaError
from profiling.schema import TABLES
from raw_rows import NOW, as_text, to_tables, valid_rows

BASE = {name: as_text(table).to_pylist() for name, table in to_tables(valid_rows()).items()}

corruption = st.one_of(
    st.tuples(st.just("blank"), st.sampled_from(sorted(TABLES)), st.integers(0, 3), st.integers(0, 16)),
    st.tuples(st.just("garbage"), st.sampled_from(sorted(TABLES)), st.integers(0, 3), st.integers(0, 16),
              st.text(max_size=12)),
    st.tuples(st.just("duplicate"), st.sampled_from(sorted(TABLES)), st.integers(0, 3)),
    st.tuples(st.just("truncate"), st.sampled_from(sorted(TABLES)), st.integers(0, 3)),
)


def _apply(corruptions) -> tuple[dict[str, list[dict]], dict[str, set[int]]]:
    """Corrupted text rows, and per table the positions of records to write with too few fields."""
    rows = {name: [dict(r) for r in table_rows] for name, table_rows in BASE.items()}
    truncated: dict[str, set[int]] = {name: set() for name in rows}
    for kind, name, row, *rest in corruptions:
        table_rows = rows[name]
        row %= len(table_rows)
        if kind == "duplicate":
            table_rows.append(dict(table_rows[row]))
        elif kind == "truncate":
            truncated[name].add(row)
        else:
            field = TABLES[name].fields[rest[0] % len(TABLES[name].fields)]
            table_rows[row][field.name] = "" if kind == "blank" else rest[1]
    return rows, truncated


def _must_reject(name: str, table_rows: list[dict], truncated: set[int]) -> set[int]:
    """Positions that no rule may accept: a blank required cell, or a key seen on an earlier record."""
    table, seen, positions = TABLES[name], set(), set()
    for position, record in enumerate(table_rows):
        if position in truncated:
            positions.add(position)
            continue
        if any(f.required and not (record[f.name] or "").strip() for f in table.fields):
            positions.add(position)
        key = (record[table.primary_key] or "").strip() and record[table.primary_key]
        if key and key in seen:
            positions.add(position)
        seen.add(key)
    return positions


def _write(folder: Path, rows: dict[str, list[dict]], truncated: dict[str, set[int]], fmt: str) -> None:
    folder.mkdir(parents=True)
    for name, table_rows in rows.items():
        columns = TABLES[name].column_names
        if fmt == "csv":
            with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle, quoting=csv.QUOTE_ALL)
                writer.writerow(columns)
                for position, record in enumerate(table_rows):
                    values = ["" if record[c] is None else record[c] for c in columns]
                    writer.writerow(values[:2] if position in truncated[name] else values)
        else:
            kept = [r for p, r in enumerate(table_rows) if p not in truncated[name]]
            pq.write_table(pa.Table.from_pylist(kept, schema=pa.schema([(c, pa.string()) for c in columns])),
                           folder / f"{name}.parquet")


def _key_counts(values) -> Counter:
    return Counter(None if v is None or not str(v).strip() else v for v in values)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(corruptions=st.lists(corruption, max_size=8), fmt=st.sampled_from(["csv", "parquet"]))
def test_nothing_is_lost(tmp_path_factory, corruptions, fmt):
    root = tmp_path_factory.mktemp("corrupt")
    rows, truncated = _apply(corruptions)
    if fmt == "parquet":  # a Parquet file has no malformed records: those rows are simply not written
        rows = {n: [r for p, r in enumerate(rs) if p not in truncated[n]] for n, rs in rows.items()}
        truncated = {n: set() for n in rows}
    _write(root / "raw", rows, truncated, fmt)
    workspace = Workspace(root / "ws")
    try:
        reports = ingest(root / "raw", workspace, now=NOW, progress=False)
    except SchemaError as error:
        # Only a column none of whose values parse may stop ingest, and then nothing is written.
        assert "none of its" in str(error) and "values parse" in str(error)
        assert not workspace.root.exists()
        return
    for name, table_rows in rows.items():
        report = reports[name]
        key = TABLES[name].primary_key
        assert report.rows_in == len(table_rows)
        assert report.accepted + report.rejected == report.rows_in
        accepted = workspace.read(name)
        rejects = pq.read_table(workspace.rejects(name))
        assert accepted.num_rows == report.accepted and rejects.num_rows == report.rejected
        # Every input row is in exactly one of the two outputs, under its own key.
        well_formed = [r[key] for p, r in enumerate(table_rows) if p not in truncated[name]]
        malformed = pa.compute.equal(rejects.column("reason"), "malformed_row").to_pylist()
        out_keys = accepted.column(key).to_pylist() + [
            k for k, m in zip(rejects.column(key).to_pylist(), malformed) if not m]
        assert _key_counts(out_keys) == _key_counts(well_formed)
        assert sum(malformed) == len(truncated[name])
        rejected_rows = set(rejects.column("source_row").to_pylist())
        assert {p + 1 for p in _must_reject(name, table_rows, truncated[name])} <= rejected_rows
    # What was accepted passes every rule again: ingest of the accepted rows rejects nothing.
    again = root / "again"
    again.mkdir()
    for name in rows:
        pq.write_table(workspace.read(name), again / f"{name}.parquet")
    for report in ingest(again, Workspace(root / "ws2"), now=NOW, progress=False).values():
        assert report.rejected == 0


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_unchanged_input_is_accepted_whole(tmp_path, fmt):
    rows, truncated = _apply([])
    _write(tmp_path / "raw", rows, truncated, fmt)
    reports = ingest(tmp_path / "raw", Workspace(tmp_path / "ws"), now=NOW, progress=False)
    assert all(r.rejected == 0 and r.accepted == len(rows[n]) for n, r in reports.items())
