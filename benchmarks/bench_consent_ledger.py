"""The consent ledger's bulk paths against their row-by-row references, side by side on the same events.

    python benchmarks/bench_consent_ledger.py --accounts 200000 [--repeats 2]

Generates the synthetic consent events of ``--accounts`` accounts, then, interleaved: the first
load row by row (``ledger_chain.append_rows`` over Python rows), from Arrow with the indexes of
``consent_events`` kept up row by row (the earlier bulk path) and from Arrow with the indexes built
after the rows (``SqliteConsentStore.append_table``, as the job's first load does: rows hashed a
batch ahead by a worker thread, so ``load_arrow_cpu``, the process's CPU seconds over both threads,
is printed beside its time); the ledger's bytes per event; the per-run check ``require_intact`` (every chain verified, then the snapshot
checked against its record) and its snapshot part alone; verifying the chain row by row and chunk by chunk; the
whole history for the gate read through SQL (``events_sql``) and from the Arrow snapshot
(``events``), each prepared by ``ConsentSnapshot.from_arrow``. The two ledgers' heads and the two
histories must agree. Last line: one JSON object with the medians, ratios and the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
from _machine import cpu_model

from pipelines.synthetic import generate
from profiling import ledger_chain
from profiling.consent import ConsentSnapshot, SqliteConsentStore, sqlite_store
from profiling.pseudonyms import normalize


def _row_by_row(store: SqliteConsentStore, events: pa.Table) -> None:
    columns = ["event_id", "account_id", "event_at", "event_type", "purpose", "policy_version", "channel"]
    table = events.select(columns)
    table = table.set_column(2, "event_at", table.column("event_at").cast(pa.timestamp("us", tz="UTC"))
                             .cast(pa.int64()))
    table = table.set_column(1, "account_id", normalize(table.column("account_id").cast(pa.string()), "account_id"))
    now = 1_750_000_000_000_000

    def rows():
        seen: set[str] = set()
        for batch in table.to_batches(max_chunksize=100_000):
            for row in zip(*(batch.column(c).to_pylist() for c in columns)):
                if row[0] not in seen:
                    seen.add(row[0])
                    yield (*row, "ingest", now)

    with store._transaction() as db:
        ledger_chain.append_rows(db, "consent_events", rows())


def _timed(work) -> tuple[float, object]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[float]] = {}
    sqlite_store._now_micros = lambda: 1_750_000_000_000_000   # the recording time of _row_by_row: same heads
    with tempfile.TemporaryDirectory(prefix="bench-consent-ledger-") as scratch:
        raw = Path(scratch) / "raw"
        generate(raw, accounts=args.accounts, seed=0, progress=False)
        found = sorted(raw.glob("consent_events*"))
        events = ds.dataset(found[0], format="parquet").to_table()
        for repeat in range(args.repeats):
            with SqliteConsentStore(Path(scratch) / f"plain-{repeat}.sqlite") as plain:
                times.setdefault("load_row_by_row", []).append(_timed(lambda: _row_by_row(plain, events))[0])
                plain_head = plain.verify()[0].head
            drop = sqlite_store._drop_indexes
            sqlite_store._drop_indexes = lambda *unused: []   # every index kept up row by row
            try:
                with SqliteConsentStore(Path(scratch) / f"indexed-{repeat}.sqlite") as indexed:
                    times.setdefault("load_arrow_indexes_kept", []).append(
                        _timed(lambda: indexed.append_table(events, source="ingest"))[0])
                    indexed_head = indexed.verify()[0].head
            finally:
                sqlite_store._drop_indexes = drop
            path = Path(scratch) / f"bulk-{repeat}.sqlite"
            with SqliteConsentStore(path) as store:
                cpu = time.process_time()
                times.setdefault("load_arrow", []).append(_timed(lambda: store.append_table(events,
                                                                                           source="ingest"))[0])
                times.setdefault("load_arrow_cpu", []).append(time.process_time() - cpu)
                db = store._connection
                times.setdefault("require_intact", []).append(_timed(store.require_intact)[0])
                db.execute("BEGIN")
                try:
                    times.setdefault("snapshot_check", []).append(_timed(lambda: sqlite_store._snapshot_problem(db))[0])
                finally:
                    db.execute("COMMIT")
                store.checkpoint()
                bytes_per_event = path.stat().st_size / events.num_rows
                fast = ledger_chain._fast_chunk
                ledger_chain._fast_chunk = lambda *unused: None   # every row through the row-by-row check
                try:
                    seconds, exact = _timed(lambda: ledger_chain.verify(db, "consent_events"))
                finally:
                    ledger_chain._fast_chunk = fast
                times.setdefault("verify_row_by_row", []).append(seconds)
                seconds, chunked = _timed(lambda: ledger_chain.verify(db, "consent_events"))
                times.setdefault("verify_chunked", []).append(seconds)
                if not (exact.ok and chunked.ok and exact.head == chunked.head == indexed_head == plain_head):
                    raise SystemExit("the two verifications disagree")
                seconds, by_sql = _timed(lambda: ConsentSnapshot.from_arrow(store.events_sql()))
                times.setdefault("history_sql", []).append(seconds)
                seconds, by_snapshot = _timed(lambda: ConsentSnapshot.from_arrow(store.events()))
                times.setdefault("history_snapshot", []).append(seconds)
                if not (by_sql.account_ids.equals(by_snapshot.account_ids)
                        and (by_sql.next_at == by_snapshot.next_at).all()):
                    raise SystemExit("the snapshot and the SQL history disagree")
            print(json.dumps({name: [round(t, 2) for t in values] for name, values in times.items()}), flush=True)
    medians = {name: round(statistics.median(values), 2) for name, values in times.items()}
    summary = {"accounts": args.accounts, "events": events.num_rows, "cpu": cpu_model(), **medians,
               "load_speedup": round(medians["load_row_by_row"] / medians["load_arrow"], 2),
               "index_after_speedup": round(medians["load_arrow_indexes_kept"] / medians["load_arrow"], 2),
               "ledger_bytes_per_event": round(bytes_per_event),
               "verify_speedup": round(medians["verify_row_by_row"] / medians["verify_chunked"], 2),
               "history_speedup": round(medians["history_sql"] / medians["history_snapshot"], 2)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
