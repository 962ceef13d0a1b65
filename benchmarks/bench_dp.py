"""Person-level DP group-by (count and sum of amount over 50 categories) against plain pandas and OpenDP's Context.

Workload: 10M order rows, 1M persons, 50 categories; each person contributes to at most 5
categories and 5 rows per category; amounts clamped to [0, 500]. Three timings, same data,
same run: plain pandas group-by (no privacy), Portrait's ``PrivateSession`` release
(bounding + OpenDP noise + ledger charge), and OpenDP's Polars ``Context`` from
``pl.scan_parquet``. Both private releases keep a person's first rows in stored order
(OpenDP ``keep="first"``). pandas and Portrait get the same in-memory frame (int64
``person_id``, categorical ``category``, float64 ``amount``), and Portrait's time includes
coding the persons, since each release builds a fresh session. Medians of repeats, pandas and
Portrait interleaved so load from other processes hits both alike (one OpenDP run at full
size: it takes ~30 s).

    python benchmarks/bench_dp.py [--small]

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dp import BudgetLedger, PrivateSession

CATEGORIES = [f"category-{i:02d}" for i in range(50)]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_orders(rows: int, persons: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "person_id": rng.integers(0, persons, rows, dtype=np.int64),
        "category": pd.Categorical.from_codes(rng.integers(0, len(CATEGORIES), rows), categories=CATEGORIES),
        "amount": np.round(rng.gamma(2.0, 40.0, rows), 2),
    })


def timed(function, repeats: int) -> tuple[float, list[float]]:
    return timed_together([function], repeats)[0]


def timed_together(functions, repeats: int) -> list[tuple[float, list[float]]]:
    """Median and all wall times of each function, run in turn ``repeats`` times after one warm-up each."""
    for function in functions:
        function()   # warm-up: compiling and first touch of fresh memory are not what we measure
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for function, runs in zip(functions, times):
            started = time.perf_counter()
            function()
            runs.append(time.perf_counter() - started)
    return [(statistics.median(runs), runs) for runs in times]


def plain_pandas(orders: pd.DataFrame) -> pd.DataFrame:
    return orders.groupby("category", observed=False).agg(count=("amount", "size"), amount_sum=("amount", "sum"))


def portrait_release(orders: pd.DataFrame, ledger: BudgetLedger) -> pd.DataFrame:
    session = PrivateSession(orders, dataset="orders", ledger=ledger, purpose="benchmark", analyst="bench")
    return (session.query(epsilon=1.0).group_by("category", keys=CATEGORIES)
            .bound(max_partitions=5, max_rows_per_partition=5)
            .count().sum("amount", bounds=(0, 500)).release())


def opendp_context(path: Path) -> pd.DataFrame:
    import opendp.prelude as dp
    import polars as pl

    dp.enable_features("contrib")
    context = dp.Context.compositor(
        data=pl.scan_parquet(path), privacy_unit=dp.unit_of(contributions=1, identifier="person_id"),
        privacy_loss=dp.loss_of(rho=0.5),
        margins=[dp.polars.Margin(by=["category"], max_length=100_000_000, max_groups=len(CATEGORIES))])
    query = (context.query(rho=0.5)
             .truncate_num_groups(5, by=["category"], keep="first")
             .truncate_per_group(5, by=["category"])
             .group_by("category")
             .agg(dp.len(), pl.col("amount").fill_null(0).dp.sum((0, 500)))
             .with_keys(pl.DataFrame({"category": CATEGORIES})))
    return query.release().collect().to_pandas()


def opendp_context_quiet(path: Path) -> pd.DataFrame:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # OpenDP's notice of a future default for signed sums
        return opendp_context(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="1M rows and 100k persons, for a quick check")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows, persons = (1_000_000, 100_000) if args.small else (10_000_000, 1_000_000)
    with tempfile.TemporaryDirectory(prefix="bench-dp-") as folder:
        log(f"generating {rows} orders of {persons} persons")
        orders = make_orders(rows, persons)
        path = Path(folder) / "orders.parquet"
        orders.assign(category=orders["category"].astype(str)).to_parquet(path, index=False)
        ledger = BudgetLedger(Path(folder) / "ledger.sqlite")
        ledger.set_budget("orders", epsilon=1e9, set_by="bench")

        log("plain pandas group-by and Portrait person-level DP release, interleaved")
        (pandas_s, pandas_all), (portrait_s, portrait_all) = timed_together(
            [lambda: plain_pandas(orders), lambda: portrait_release(orders, ledger)], args.repeats)
        log(f"  pandas median {pandas_s:.3f} s, Portrait median {portrait_s:.3f} s")
        log("OpenDP Polars Context from pl.scan_parquet")
        opendp_s, opendp_all = timed(lambda: opendp_context_quiet(path), 1 if not args.small else 2)
        log(f"  median {opendp_s:.3f} s")
    print(json.dumps({
        "rows": rows, "persons": persons, "categories": len(CATEGORIES), "max_partitions": 5,
        "max_rows_per_partition": 5, "repeats": args.repeats,
        "pandas_groupby_s": round(pandas_s, 4), "portrait_dp_release_s": round(portrait_s, 4),
        "opendp_context_s": round(opendp_s, 4),
        "pandas_runs_s": [round(t, 4) for t in pandas_all], "portrait_runs_s": [round(t, 4) for t in portrait_all],
        "opendp_runs_s": [round(t, 4) for t in opendp_all],
        "time_vs_pandas": round(portrait_s / pandas_s, 3),
        "speedup_vs_opendp_context": round(opendp_s / portrait_s, 2),
    }))


if __name__ == "__main__":
    main()
