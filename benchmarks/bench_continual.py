"""A year of daily popularity releases under one epsilon: the continual counter against 365 separate releases.

On synthetic orders (``portrait synth``: ``--accounts`` accounts, a catalogue of ``--items``
items), each person's first 5 distinct items bought since 2025-11-01 are counted on the day they
were bought (the job's cumulative clip, ``pipelines.popularity.daily_bounded_counts_kernel``),
giving the exact cumulative buyers per item for days 1..365. Two ways to release all 365 days at
the same total epsilon, both pure epsilon-DP per person with OpenDP's discrete Laplace:

* ``continual``: one ``dp.continual.ContinualCounter`` (a real ledger; the horizon charged once;
  tree aggregation, arity chosen for the horizon), released day after day;
* ``split``: every day a fresh release of the cumulative counts (L1 sensitivity 5) at epsilon/365,
  as the job did before at a fixed epsilon per run (basic composition: 365 x epsilon/365).

Figures: the root-mean-square error over items of the day-365 counts, and over all days and
items; ``ratio`` = split / continual at day 365 (the target is at least 10). For context, the
expected day-365 RMSE of two other ways at the same epsilon: the binary tree (arity 2, nine
levels) and noisy daily increments summed up (each day's new buyers at epsilon, L1 sensitivity
5 over the whole year).

    python benchmarks/bench_continual.py [--accounts 20000] [--items 2000] [--epsilon 1.0] [--seed 3]

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from _machine import cpu_model
from dp import BudgetLedger
from dp import _mechanisms as mech
from dp.continual import ContinualCounter, TreeShape
from pipelines.engines import LocalEngine
from pipelines.popularity import ITEMS_PER_PERSON, PURCHASE_ORDER, daily_bounded_counts_kernel
from pipelines.synthetic import generate

START = dt.datetime(2025, 11, 1, tzinfo=dt.UTC)
DAYS = 365


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def daily_counts(raw: Path, catalogue: list[str]) -> np.ndarray:
    """Exact bounded buyers per (day, item): one row per item bought, clipped per person over the year."""
    orders = ds.dataset(raw / "orders", format="parquet").to_table(columns=["order_id", "account_id", "placed_at",
                                                                          "items"])
    items = orders.column("items").combine_chunks()
    parents = pc.list_parent_indices(items)
    owner = parents.to_numpy()
    bought = pa.table({"person_id": orders.column("account_id").take(parents), "item_id": pc.list_flatten(items),
                       "placed_at": orders.column("placed_at").take(parents).cast(pa.timestamp("us", tz="UTC")),
                       "order_id": orders.column("order_id").take(parents),
                       "position": pa.array((np.arange(len(owner)) - np.searchsorted(owner, owner)).astype(np.int32))})
    # rows: (person_id, item_id, placed_at, order_id, position), one per item bought
    with LocalEngine() as engine:
        kernel = daily_bounded_counts_kernel(person="person_id", group="item_id",
                                             keys=engine.broadcast(pa.array(catalogue)), start=START, days=DAYS,
                                             order_by=PURCHASE_ORDER, max_partitions=ITEMS_PER_PERSON)
    cells = kernel.function(bought)
    counts = np.zeros((DAYS, len(catalogue)), dtype=np.int64)
    np.add.at(counts, (cells.column("day").to_numpy() - 1, cells.column("key_index").to_numpy()),
              cells.column("count").to_numpy())
    return counts


def continual(daily: np.ndarray, catalogue: list[str], epsilon: float, folder: Path) -> tuple[np.ndarray, dict]:
    ledger = BudgetLedger(folder / "ledger.sqlite")
    ledger.set_budget("orders", epsilon=epsilon, set_by="benchmark")
    counter = ContinualCounter.create(ledger, name="popularity", dataset="orders", purpose="product_improvement",
                                      by="item_id", keys=catalogue, start=START, horizon_days=DAYS, epsilon=epsilon,
                                      max_keys_per_person=ITEMS_PER_PERSON, analyst="benchmark")
    released = np.zeros(daily.shape, dtype=np.float64)
    for day in range(1, DAYS + 1):
        released[day - 1] = counter.release(day, daily[:day]).counts["count"].to_numpy()
    assert ledger.spent("orders")["epsilon"] <= epsilon and len(ledger.charges()) == 1
    return released, {"arity": counter.shape.arity, "levels": counter.shape.levels,
                      "noise_scale": counter.record["noise_scale"],
                      "half_width_95_day_365": counter.half_width(DAYS)}


def split(daily: np.ndarray, epsilon: float) -> tuple[np.ndarray, float]:
    plan = mech.plan_vector_noise(mechanism="laplace", measure=mech.PURE, l1_sensitivity=ITEMS_PER_PERSON,
                                  l2_sensitivity=math.sqrt(ITEMS_PER_PERSON), epsilon=epsilon / DAYS)
    cumulative = np.cumsum(daily, axis=0)
    released = np.stack([mech.add_vector_noise(plan, cumulative[d]) for d in range(DAYS)]).astype(np.float64)
    return released, plan.scale


def laplace_variance(scale: float) -> float:
    p = math.exp(-1.0 / scale)
    return 2.0 * p / (1.0 - p) ** 2


def rmse(released: np.ndarray, exact: np.ndarray) -> float:
    return float(np.sqrt(np.mean((released - exact) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=2_000, help="catalogue items (noise draws grow with it)")
    parser.add_argument("--epsilon", type=float, default=1.0, help="total epsilon of the year")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        started = time.perf_counter()
        generate(folder / "raw", accounts=args.accounts, seed=args.seed, catalogue_items=args.items, progress=False)
        catalogue = ds.dataset(folder / "raw" / "catalogue", format="parquet").to_table(
            columns=["item_id"]).column("item_id").to_pylist()
        daily = daily_counts(folder / "raw", catalogue)
        exact = np.cumsum(daily, axis=0)
        log(f"{args.accounts} accounts, {len(catalogue)} items: {int(daily.sum())} bounded purchases in the year "
            f"({time.perf_counter() - started:.1f} s)")
        started = time.perf_counter()
        tree, shape = continual(daily, catalogue, args.epsilon, folder)
        tree_seconds = time.perf_counter() - started
        started = time.perf_counter()
        separate, split_scale = split(daily, args.epsilon)
        split_seconds = time.perf_counter() - started
    figures = {"continual_rmse_day_365": rmse(tree[-1], exact[-1]), "split_rmse_day_365": rmse(separate[-1], exact[-1]),
               "continual_rmse_all_days": rmse(tree, exact), "split_rmse_all_days": rmse(separate, exact)}
    binary = TreeShape(DAYS, 2)
    expected = {
        "continual": math.sqrt(len(TreeShape(DAYS, shape["arity"]).prefix_nodes(DAYS))
                               * laplace_variance(shape["noise_scale"])),
        "split": math.sqrt(laplace_variance(split_scale)),
        "binary_tree": math.sqrt(len(binary.prefix_nodes(DAYS))
                                 * laplace_variance(binary.levels * ITEMS_PER_PERSON / args.epsilon)),
        "daily_increments": math.sqrt(DAYS * laplace_variance(ITEMS_PER_PERSON / args.epsilon))}
    ratio = figures["split_rmse_day_365"] / figures["continual_rmse_day_365"]
    log(f"day 365 RMSE: continual {figures['continual_rmse_day_365']:.1f} (arity {shape['arity']}, {shape['levels']} "
        f"levels, {tree_seconds:.1f} s), split {figures['split_rmse_day_365']:.1f} ({split_seconds:.1f} s): "
        f"{ratio:.1f}x; all days {figures['split_rmse_all_days'] / figures['continual_rmse_all_days']:.1f}x")
    print(json.dumps({"benchmark": "continual", "accounts": args.accounts, "items": len(catalogue), "days": DAYS,
                      "epsilon": args.epsilon, "max_items_per_person": ITEMS_PER_PERSON,
                      **{k: round(v, 2) for k, v in figures.items()},
                      "ratio_day_365": round(ratio, 2),
                      "ratio_all_days": round(figures["split_rmse_all_days"] / figures["continual_rmse_all_days"], 2),
                      "target_ratio": 10, **{f"tree_{k}": (round(v, 3) if isinstance(v, float) else v)
                                             for k, v in shape.items()},
                      "expected_rmse_day_365": {k: round(v, 2) for k, v in expected.items()},
                      "continual_seconds": round(tree_seconds, 2), "split_seconds": round(split_seconds, 2),
                      "cpu": cpu_model()}))


if __name__ == "__main__":
    main()
