"""The budget ledger's cost per release does not grow with its history; verifying its chains is linear.

One release's ledger work (``BudgetLedger.charge`` of one measurement, then ``mark_released``:
two durable transactions, WAL with ``synchronous=FULL``) timed on a ledger holding 100,000 past
charge rows (spread over four datasets and twelve periods, with their release marks) against
the same work on an empty ledger. The two are interleaved, repeat by repeat, so load from other
processes hits both alike; the figures are medians. Also timed once: ``BudgetLedger.verify()``
(every budget chain recomputed) on the full ledger.

    python benchmarks/bench_ledger.py [--past 100000] [--repeats 41]

Progress goes to stderr; the last line of stdout is one JSON object (``ratio``: full over
empty, the target is at most 1.5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model
from dp import BudgetLedger, ChargeLine

DATASETS = ("orders", "device_events", "waybills", "accounts")
PERIODS = tuple(f"2026-{month:02d}" for month in range(1, 13))
LINE = ChargeLine("count", "discrete Laplace", "1", 10.0, 1e-3, 0.0, 0.0, 30.0)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def new_ledger(path: Path) -> BudgetLedger:
    ledger = BudgetLedger(path)
    for dataset in DATASETS:
        for period in (*PERIODS, "all"):
            ledger.set_budget(dataset, period, epsilon=1e9, set_by="benchmark")
    return ledger


def fill(ledger: BudgetLedger, past: int, lines_per_release: int = 1000) -> None:
    """``past`` charge rows: releases of ``lines_per_release`` measurements, round-robin over datasets and periods."""
    releases = 0
    while releases * lines_per_release < past:
        count = min(lines_per_release, past - releases * lines_per_release)
        dataset, period = DATASETS[releases % len(DATASETS)], PERIODS[releases % len(PERIODS)]
        release_id = ledger.charge(dataset, period, [LINE] * count, analyst="benchmark", purpose="product_improvement",
                                   query="count", features=["contrib"])
        ledger.mark_released(release_id)
        releases += 1


def one_release(ledger: BudgetLedger) -> float:
    started = time.perf_counter()
    release_id = ledger.charge("orders", "all", [LINE], analyst="ana", purpose="product_improvement", query="count",
                               features=["contrib"])
    ledger.mark_released(release_id)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--past", type=int, default=100_000, help="charge rows already in the full ledger")
    parser.add_argument("--repeats", type=int, default=41, help="timed releases on each ledger")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        empty, full = new_ledger(Path(folder) / "empty.sqlite"), new_ledger(Path(folder) / "full.sqlite")
        started = time.perf_counter()
        fill(full, args.past)
        log(f"filled {args.past} past charges in {time.perf_counter() - started:.1f} s")
        one_release(empty), one_release(full)   # warm-up: first touch of each file
        times: dict[str, list[float]] = {"empty": [], "full": []}
        for _ in range(args.repeats):
            times["empty"].append(one_release(empty))
            times["full"].append(one_release(full))
        started = time.perf_counter()
        reports = full.verify()
        verify_seconds = time.perf_counter() - started
        assert all(report.ok for report in reports), [report.line() for report in reports]
        rows = sum(report.rows for report in reports)
    empty_ms, full_ms = (statistics.median(times[name]) * 1000 for name in ("empty", "full"))
    log(f"one release: {empty_ms:.2f} ms on an empty ledger, {full_ms:.2f} ms with {args.past} past charges; "
        f"verifying {rows} chained rows took {verify_seconds:.2f} s")
    print(json.dumps({"benchmark": "ledger", "past_charges": args.past, "repeats": args.repeats,
                      "empty_ms": round(empty_ms, 3), "full_ms": round(full_ms, 3),
                      "ratio": round(full_ms / empty_ms, 3), "target_ratio": 1.5,
                      "verify_rows": rows, "verify_seconds": round(verify_seconds, 3), "cpu": cpu_model()}))


if __name__ == "__main__":
    main()
