"""Portraits of 1M persons from 10M orders: ``PortraitBuilder`` against one DuckDB SQL query.

    python benchmarks/bench_portraits.py                                   # 1M persons, 10M orders
    python benchmarks/bench_portraits.py --persons 20000 --orders 200000   # a quick check
    python benchmarks/bench_portraits.py --scaling --reader files          # 10M vs 100M orders, memory

The workload (``_portrait_workload``: orders, waybills, device events as Parquet files, eligible
persons and linked devices) is made once and cached under ``--dir``. Each side runs in its own
process, so its peak resident memory (``ru_maxrss``) is its own; timed end to end, from reading
the Parquet files to the portraits written as Parquet:

* ours: ``PortraitBuilder`` (the kernel ``pipelines.portraits.write_portraits`` runs on each
  co-partitioned partition) fed with ``dataset.to_batches()`` of the three tables
  (``--reader files``: ``ParquetFile.iter_batches``
  file by file, which reads no further ahead), the partitions written with a ``ParquetWriter``;
* DuckDB: one ``COPY (SELECT ...) TO`` statement computing the same 71 columns with the data
  dictionary's semantics, default threads.

The two outputs are then compared row by row (sorted by person_id; floats to a relative 1e-9,
lists exactly): ``agreement`` is the fraction of rows equal in every column. ``--scaling`` runs
ours at 1x and 10x the orders and waybills (each file read ten times), persons fixed, with 10x the
partitions, to show the peak memory follows the rows of one partition, not the whole history.
Last line: one JSON object; ``time_vs_duckdb`` is ours / DuckDB in median seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _portrait_workload import AS_OF, workload

from profiling.portrait import (
    DEFAULT_CNY_PER_UNIT,
    DEVICE_TYPES,
    FEATURES,
    PortraitBuilder,
    portrait_schema,
    spill_folder,
)
from profiling.portrait._dictionary import LOCAL_UTC_OFFSET_HOURS
from profiling.schema import CATEGORIES, CURRENCIES, PAYMENT_INSTITUTIONS, SERVICE_TYPES

_BATCH_ROWS = 1 << 18  # as pipelines.portraits
_SOURCES = {
    "orders": ("person_id", "placed_at", "amount", "currency", "payment_institution", "category"),
    "waybills": ("person_id", "created_at", "service_type", "origin_province", "destination_province",
                 "weight_kg", "cross_border"),
    "device_events": ("person_id", "event_at"),
}
_US_PER_HOUR = 3_600_000_000
_OFFSET_US = LOCAL_UTC_OFFSET_HOURS * _US_PER_HOUR
_RTOL = 1e-9


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


# ---------------------------------------------------------------- ours (child process)

def _files(data: Path, name: str, copies: int = 1) -> list[str]:
    """The files of one source table; orders and waybills listed ``copies`` times."""
    files = sorted(str(path) for path in (data / name).glob("*.parquet"))
    return files * (copies if name in ("orders", "waybills") else 1)


def _source(data: Path, name: str, copies: int = 1) -> ds.Dataset:
    return ds.dataset(_files(data, name, copies), format="parquet")


def _timed(items: Iterator, phases: dict[str, float], phase: str) -> Iterator:
    """The items of ``items``, adding the seconds spent producing each to ``phases[phase]``."""
    while True:
        mark = time.perf_counter()
        item = next(items, None)
        phases[phase] += time.perf_counter() - mark
        if item is None:
            return
        yield item


def _batches(data: Path, name: str, copies: int, reader: str) -> Iterator[pa.RecordBatch]:
    """Batches of one source: a dataset scan (as ``write_portraits``), or file by file, one row
    group at a time (``ParquetFile.iter_batches``, no read-ahead)."""
    columns = list(_SOURCES[name])
    if reader == "dataset":
        yield from _source(data, name, copies).to_batches(columns=columns, batch_size=_BATCH_ROWS)
        return
    for path in _files(data, name, copies):
        yield from pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS, columns=columns)


def run_ours(data: Path, out: Path, partitions: int, spill_parent: Path | None, copies: int = 1,
             reader: str = "dataset") -> dict:
    """Portraits with ``PortraitBuilder``; seconds per phase (setup, read, encode, features, write)."""
    phases = dict.fromkeys(("setup", "read", "encode", "features", "write"), 0.0)
    started = time.perf_counter()
    persons = pq.read_table(data / "persons.parquet")
    devices = pq.read_table(data / "devices.parquet")
    spill = spill_folder(spill_parent) if partitions > 1 or spill_parent is not None else None
    try:
        builder = PortraitBuilder(persons, devices, as_of=AS_OF, partitions=partitions,
                                  spill_dir=spill.name if spill is not None else None)
        adders = {"orders": builder.add_orders, "waybills": builder.add_waybills,
                  "device_events": builder.add_device_events}
        phases["setup"] = time.perf_counter() - started
        rows = 0
        for name in _SOURCES:
            for batch in _timed(_batches(data, name, copies, reader), phases, "read"):
                mark = time.perf_counter()
                adders[name](batch)
                phases["encode"] += time.perf_counter() - mark
                rows += batch.num_rows
        written = 0
        with pq.ParquetWriter(out, portrait_schema()) as writer:
            for table in _timed(builder.tables(), phases, "features"):
                mark = time.perf_counter()
                writer.write_table(table)
                phases["write"] += time.perf_counter() - mark
                written += table.num_rows
    finally:
        if spill is not None:
            spill.cleanup()
    return {"seconds": time.perf_counter() - started, "peak_rss_gb": _peak_rss_gb(), "rows_read": rows,
            "portraits": written, "partitions": partitions, "phases": phases}


# ---------------------------------------------------------------- DuckDB (child process)

def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _shares(column: str, values: tuple[str, ...], prefix: str) -> str:
    return ",\n      ".join(f"count(*) FILTER (WHERE {column} = {_literal(v)}) / count(*) AS {prefix}{v}"
                            for v in values)


def portrait_sql(data: Path, out: Path) -> str:
    """One ``COPY (SELECT ...) TO`` statement computing every column of ``FEATURES``."""
    as_of = _literal(AS_OF.isoformat()) + "::TIMESTAMPTZ"
    as_of_day = (int(AS_OF.timestamp()) * 1_000_000 + _OFFSET_US) // (24 * _US_PER_HOUR)
    rates = ", ".join(f"({_literal(c)}, {_literal(repr(float(DEFAULT_CNY_PER_UNIT[c])))}::DOUBLE)"
                      for c in CURRENCIES)
    hours = ", ".join(f"count(*) FILTER (WHERE hour = {h})" for h in range(24))
    device_types = ",\n      ".join(f"count(*) FILTER (WHERE device_type = {_literal(t)})::INTEGER "
                                   f"AS device_count_{t}" for t in DEVICE_TYPES)
    columns = {
        "person_id": "i.identity_id",
        "linked_person_ids": "i.linked_person_ids",
        "as_of": as_of,
        "dnd": "i.dnd", "non_personalized": "i.non_personalized", "cross_device_sync": "i.cross_device_sync",
        "orders": "coalesce(o.orders, 0)",
        "first_order_at": "o.first_order_at", "last_order_at": "o.last_order_at",
        "frequency": "r.frequency", "recency_days": "r.recency_days", "T_days": "r.T_days",
        "monetary_value_cny": "r.monetary_value_cny",
        "total_spend_cny": "coalesce(o.total_spend_cny, 0.0)",
        "average_order_value_cny": "o.total_spend_cny / o.orders",
        **{f"category_share_{c}": f"o.category_share_{c}" for c in CATEGORIES},
        **{f"payment_share_{p}": f"o.payment_share_{p}" for p in PAYMENT_INSTITUTIONS},
        "waybills": "coalesce(w.waybills, 0)",
        **{f"service_share_{s}": f"w.service_share_{s}" for s in SERVICE_TYPES},
        "cross_border_share": "w.cross_border_share",
        "weight_kg_mean": "w.weight_kg_mean", "weight_kg_max": "w.weight_kg_max",
        "weight_kg_total": "coalesce(w.weight_kg_total, 0.0)",
        "top_origin_province": "top_o.province",
        "top_destination_province": "top_d.province",
        "destination_provinces": "coalesce(top_d.provinces, 0)",
        "device_count": "coalesce(d.device_count, 0)",
        **{f"device_count_{t}": f"coalesce(d.device_count_{t}, 0)" for t in DEVICE_TYPES},
        "device_ids": "coalesce(d.device_ids, []::VARCHAR[])",
        "events": "coalesce(e.events, 0)",
        "active_hour_counts": f"coalesce(e.active_hour_counts, [{', '.join(['0'] * 24)}]::INTEGER[])",
    }
    names = [f.name for f in FEATURES]
    if sorted(columns) != sorted(names):
        raise RuntimeError(f"the SQL lacks {set(names) - set(columns)} or has extra {set(columns) - set(names)}")
    select = ",\n  ".join(f"{columns[name]} AS {name}" for name in names)
    return f"""COPY (
WITH
persons AS (
  SELECT person_id, identity_id, dnd, non_personalized, cross_device_sync
  FROM read_parquet('{data}/persons.parquet')),
identities AS (
  SELECT identity_id, list_sort(list(person_id)) AS linked_person_ids, bool_or(dnd) AS dnd,
      bool_or(non_personalized) AS non_personalized, bool_and(cross_device_sync) AS cross_device_sync
  FROM persons GROUP BY identity_id),
rates(currency, cny_per_unit) AS (VALUES {rates}),
orders AS (
  SELECT p.identity_id, o.placed_at, o.amount * r.cny_per_unit AS amount_cny, o.category, o.payment_institution,
      (epoch_us(o.placed_at) + {_OFFSET_US}) // {24 * _US_PER_HOUR} AS day
  FROM read_parquet('{data}/orders/*.parquet') o
  JOIN persons p ON p.person_id = o.person_id
  JOIN rates r ON r.currency = o.currency
  WHERE o.placed_at <= {as_of}),
order_totals AS (
  SELECT identity_id, count(*)::INTEGER AS orders, min(placed_at) AS first_order_at,
      max(placed_at) AS last_order_at, sum(amount_cny) AS total_spend_cny,
      {_shares("category", CATEGORIES, "category_share_")},
      {_shares("payment_institution", PAYMENT_INSTITUTIONS, "payment_share_")}
  FROM orders GROUP BY identity_id),
purchase_days AS (
  SELECT identity_id, day, sum(amount_cny) AS day_cny, min(day) OVER (PARTITION BY identity_id) AS first_day
  FROM orders GROUP BY identity_id, day),
rfm AS (
  SELECT identity_id, (count(*) - 1)::INTEGER AS frequency, (max(day) - min(day))::INTEGER AS recency_days,
      ({as_of_day} - min(day))::INTEGER AS T_days,
      coalesce(avg(day_cny) FILTER (WHERE day > first_day), 0.0) AS monetary_value_cny
  FROM purchase_days GROUP BY identity_id),
waybills AS (
  SELECT p.identity_id, w.service_type, w.origin_province, w.destination_province, w.weight_kg,
      coalesce(w.cross_border, false) AS cross_border
  FROM read_parquet('{data}/waybills/*.parquet') w
  JOIN persons p ON p.person_id = w.person_id
  WHERE w.created_at <= {as_of}),
waybill_totals AS (
  SELECT identity_id, count(*)::INTEGER AS waybills,
      {_shares("service_type", SERVICE_TYPES, "service_share_")},
      count(*) FILTER (WHERE cross_border) / count(*) AS cross_border_share,
      sum(weight_kg) / count(*) AS weight_kg_mean, max(weight_kg) AS weight_kg_max,
      sum(weight_kg) AS weight_kg_total
  FROM waybills GROUP BY identity_id),
origins AS (
  SELECT identity_id, origin_province AS province, count(*) AS n
  FROM waybills WHERE origin_province IS NOT NULL GROUP BY identity_id, origin_province),
destinations AS (
  SELECT identity_id, destination_province AS province, count(*) AS n
  FROM waybills WHERE destination_province IS NOT NULL GROUP BY identity_id, destination_province),
-- the mode; ties go to the smallest code (codes are 00..99)
top_origins AS (
  SELECT identity_id, arg_max(province, n * 100 + 99 - province::INTEGER) AS province
  FROM origins GROUP BY identity_id),
top_destinations AS (
  SELECT identity_id, arg_max(province, n * 100 + 99 - province::INTEGER) AS province,
      count(*)::INTEGER AS provinces
  FROM destinations GROUP BY identity_id),
events AS (
  SELECT p.identity_id, ((epoch_us(e.event_at) + {_OFFSET_US}) // {_US_PER_HOUR}) % 24 AS hour
  FROM read_parquet('{data}/device_events/*.parquet') e
  JOIN persons p ON p.person_id = e.person_id
  WHERE e.event_at <= {as_of}),
event_totals AS (
  SELECT identity_id, count(*)::INTEGER AS events, [{hours}]::INTEGER[] AS active_hour_counts
  FROM events GROUP BY identity_id),
device_totals AS (
  SELECT identity_id, count(*)::INTEGER AS device_count,
      {device_types},
      list_sort(list(device_id)) AS device_ids
  FROM read_parquet('{data}/devices.parquet') GROUP BY identity_id)
SELECT
  {select}
FROM identities i
LEFT JOIN order_totals o ON o.identity_id = i.identity_id
LEFT JOIN rfm r ON r.identity_id = i.identity_id
LEFT JOIN waybill_totals w ON w.identity_id = i.identity_id
LEFT JOIN top_origins top_o ON top_o.identity_id = i.identity_id
LEFT JOIN top_destinations top_d ON top_d.identity_id = i.identity_id
LEFT JOIN event_totals e ON e.identity_id = i.identity_id
LEFT JOIN device_totals d ON d.identity_id = i.identity_id
ORDER BY person_id
) TO '{out}' (FORMAT parquet)"""


def run_duckdb(data: Path, out: Path) -> dict:
    import duckdb

    started = time.perf_counter()
    connection = duckdb.connect()
    connection.execute(portrait_sql(data, out))
    threads = connection.execute("SELECT current_setting('threads')").fetchone()[0]
    connection.close()
    return {"seconds": time.perf_counter() - started, "peak_rss_gb": _peak_rss_gb(), "threads": threads,
            "duckdb_version": duckdb.__version__}


# ---------------------------------------------------------------- agreement

def _row_equal(ours: pa.ChunkedArray, theirs: pa.ChunkedArray) -> np.ndarray:
    """Per row: both null, or equal (floats to a relative ``_RTOL``, lists element by element)."""
    kind = ours.type
    if pa.types.is_list(kind):
        ours, theirs = (pc.binary_join(pc.cast(c, pa.list_(pa.string())), ",") for c in (ours, theirs))
    elif pa.types.is_timestamp(kind):
        ours, theirs = pc.cast(ours, pa.int64()), pc.cast(pc.cast(theirs, kind), pa.int64())
    null_a = ours.is_null().to_numpy(zero_copy_only=False)
    null_b = theirs.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_floating(kind):
        a = pc.fill_null(ours, 0.0).to_numpy(zero_copy_only=False)
        b = pc.fill_null(pc.cast(theirs, kind), 0.0).to_numpy(zero_copy_only=False)
        same = np.abs(a - b) <= _RTOL * np.maximum(np.abs(a), np.abs(b))
    else:
        same = pc.fill_null(pc.equal(ours, pc.cast(theirs, ours.type)), False).to_numpy(zero_copy_only=False)
    return (null_a & null_b) | (~null_a & ~null_b & same)


def compare(ours_path: Path, theirs_path: Path) -> dict:
    """``agreement`` (rows equal in every column / rows of either side) and mismatches per column."""
    ours = pq.read_table(ours_path).sort_by("person_id")
    theirs = pq.read_table(theirs_path).sort_by("person_id")
    if ours.column("person_id").equals(theirs.column("person_id")):
        common = ours.num_rows
    else:  # keep the persons both sides have
        in_both = pc.is_in(ours.column("person_id"), theirs.column("person_id"))
        ours = ours.filter(in_both)
        theirs = theirs.filter(pc.is_in(theirs.column("person_id"), ours.column("person_id")))
        common = ours.num_rows
    rows = max(pq.ParquetFile(ours_path).metadata.num_rows, pq.ParquetFile(theirs_path).metadata.num_rows)
    equal = np.ones(common, dtype=bool)
    mismatches, example = {}, None
    for name in (f.name for f in FEATURES):
        if name not in theirs.column_names:
            mismatches[name] = common
            equal[:] = False
            continue
        same = _row_equal(ours.column(name), theirs.column(name))
        if not same.all():
            mismatches[name] = int((~same).sum())
            if example is None:
                row = int(np.flatnonzero(~same)[0])
                example = {"person_id": ours.column("person_id")[row].as_py(), "column": name,
                           "ours": str(ours.column(name)[row].as_py()),
                           "duckdb": str(theirs.column(name)[row].as_py())}
        equal &= same
    return {"agreement": float(equal.sum() / rows) if rows else 1.0, "mismatched_columns": mismatches,
            "example": example}


# ---------------------------------------------------------------- driver

def _child(role: str, **arguments) -> dict:
    """Run ``run_ours`` or ``run_duckdb`` in a fresh process and return what it returns."""
    request = json.dumps({"role": role, **{k: str(v) if isinstance(v, Path) else v for k, v in arguments.items()}})
    done = subprocess.run([sys.executable, __file__, "--child", request], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        raise RuntimeError(f"child {request} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _compile_kernels(data: Path) -> None:
    """Build the portraits of a few persons, so the kernels are compiled (and cached) before timing."""
    persons = pq.read_table(data / "persons.parquet").slice(0, 1000)
    devices = pq.read_table(data / "devices.parquet")
    devices = devices.filter(pc.is_in(devices.column("identity_id"), persons.column("identity_id")))
    builder = PortraitBuilder(persons, devices, as_of=AS_OF)
    for name, add in (("orders", builder.add_orders), ("waybills", builder.add_waybills),
                      ("device_events", builder.add_device_events)):
        add(next(_source(data, name).to_batches(columns=list(_SOURCES[name]))))
    next(builder.tables())


def _rows(data: Path) -> dict[str, int]:
    return {name: _source(data, name).count_rows() for name in _SOURCES}


def _scaling(args, data: Path, work: Path) -> dict:
    """Ours at 1x and 10x the orders and waybills (persons and device events fixed), 10x the partitions.

    10x reads every order and waybill file ten times: the same rows per partition as fresh data
    would give, without making 100M orders first.
    """
    result = {}
    for copies in (1, 10):
        partitions = copies * args.scaling_partitions
        run = _child("ours", data=data, out=work / f"scaling-{copies}.parquet", partitions=partitions,
                     spill_parent=work, copies=copies, reader=args.reader)
        result[f"{copies}x"] = {"rows_read": run["rows_read"], "partitions": partitions,
                                "orders_per_partition": copies * args.orders // partitions,
                                "seconds": round(run["seconds"], 2), "peak_rss_gb": round(run["peak_rss_gb"], 3),
                                "phases_seconds": {k: round(v, 2) for k, v in run["phases"].items()}}
        print(f"scaling {copies:>2}x: {copies * args.orders:>12,} orders, {run['rows_read']:>12,} rows read, "
              f"{partitions:>3} partitions: {run['seconds']:7.1f} s, peak RSS {run['peak_rss_gb']:.2f} GB",
              file=sys.stderr)
    result["peak_rss_10x_vs_1x"] = round(result["10x"]["peak_rss_gb"] / result["1x"]["peak_rss_gb"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "portrait-bench",
                        help="where the workload is cached (reused when made with the same parameters)")
    parser.add_argument("--partitions", type=int, default=1, help="ours: partitions (>1 spills to --dir)")
    parser.add_argument("--scaling", action="store_true",
                        help="only ours, at 1x and 10x --orders (files read 10 times) with 10x the partitions")
    parser.add_argument("--scaling-partitions", type=int, default=1, help="partitions at 1x for --scaling")
    parser.add_argument("--reader", choices=("dataset", "files"), default="dataset",
                        help="ours: dataset.to_batches() as write_portraits (default), or ParquetFile.iter_batches "
                             "file by file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        request = json.loads(args.child)
        role, data, out = request.pop("role"), Path(request.pop("data")), Path(request.pop("out"))
        if role == "ours":
            spill = request.pop("spill_parent", None)
            print(json.dumps(run_ours(data, out, spill_parent=Path(spill) if spill else None, **request)))
        else:
            print(json.dumps(run_duckdb(data, out)))
        return
    for name in ("persons", "orders", "repeats", "partitions", "scaling_partitions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="outputs-", dir=args.dir) as scratch:
        work = Path(scratch)
        started = time.perf_counter()
        data, made = workload(args.dir, persons=args.persons, orders=args.orders, seed=args.seed)
        print(f"workload {data} {'made' if made else 'reused'} in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)
        rows = _rows(data)
        _compile_kernels(data)
        if args.scaling:
            scaling = _scaling(args, data, work)
            print(json.dumps({"persons": args.persons, "orders": args.orders, "scaling": scaling}))
            return
        ours_runs, duckdb_runs = [], []
        for attempt in range(args.repeats):  # alternate, so both sides see the same page cache
            ours_runs.append(_child("ours", data=data, out=work / "ours.parquet", partitions=args.partitions,
                                    spill_parent=work if args.partitions > 1 else None, reader=args.reader))
            duckdb_runs.append(_child("duckdb", data=data, out=work / "duckdb.parquet"))
            print(f"repeat {attempt + 1}/{args.repeats}: ours {ours_runs[-1]['seconds']:.2f} s "
                  f"({ours_runs[-1]['peak_rss_gb']:.2f} GB), duckdb {duckdb_runs[-1]['seconds']:.2f} s "
                  f"({duckdb_runs[-1]['peak_rss_gb']:.2f} GB)", file=sys.stderr)
        agreement = compare(work / "ours.parquet", work / "duckdb.parquet")
    seconds = statistics.median(r["seconds"] for r in ours_runs)
    duckdb_seconds = statistics.median(r["seconds"] for r in duckdb_runs)
    phases = {k: round(statistics.median(r["phases"][k] for r in ours_runs), 2) for k in ours_runs[0]["phases"]}
    peak, duckdb_peak = max(r["peak_rss_gb"] for r in ours_runs), max(r["peak_rss_gb"] for r in duckdb_runs)
    print(f"\n{args.persons:,} persons; {rows['orders']:,} orders, {rows['waybills']:,} waybills, "
          f"{rows['device_events']:,} device events -> {ours_runs[-1]['portraits']:,} portraits "
          f"(median of {args.repeats})", file=sys.stderr)
    print(f"{'':10}{'seconds':>10}{'peak RSS GB':>14}", file=sys.stderr)
    print(f"{'ours':10}{seconds:10.2f}{peak:14.2f}", file=sys.stderr)
    print(f"{'duckdb':10}{duckdb_seconds:10.2f}{duckdb_peak:14.2f}", file=sys.stderr)
    print("ours by phase (s): " + ", ".join(f"{k} {v}" for k, v in phases.items()), file=sys.stderr)
    print(f"ours / duckdb: {seconds / duckdb_seconds:.2f}x; agreement {agreement['agreement']:.6f}"
          + (f"; mismatches {agreement['mismatched_columns']}, e.g. {agreement['example']}"
             if agreement["mismatched_columns"] else ""), file=sys.stderr)
    print(json.dumps({
        "time_vs_duckdb": round(seconds / duckdb_seconds, 3), "peak_rss_gb": round(peak, 3),
        "duckdb_peak_rss_gb": round(duckdb_peak, 3), "seconds": round(seconds, 3),
        "duckdb_seconds": round(duckdb_seconds, 3), "persons": args.persons, "orders": rows["orders"],
        "waybills": rows["waybills"], "device_events": rows["device_events"],
        "portraits": ours_runs[-1]["portraits"], "agreement": agreement["agreement"],
        "mismatched_columns": agreement["mismatched_columns"], "mismatch_example": agreement["example"],
        "ours_phases_seconds": phases, "partitions": args.partitions, "reader": args.reader,
        "repeats": args.repeats,
        "ours_runs_seconds": [round(r["seconds"], 3) for r in ours_runs],
        "duckdb_runs_seconds": [round(r["seconds"], 3) for r in duckdb_runs],
        "duckdb_threads": duckdb_runs[0]["threads"], "duckdb_version": duckdb_runs[0]["duckdb_version"],
        "cpus": os.cpu_count(), "time_target": 1.5, "memory_target_gb": 6.0,
    }))


if __name__ == "__main__":
    main()
