"""A year of daily releases is epsilon-DP per person: a statistical audit on neighbouring streams.

Through the public path: purchases -> ``pipelines.popularity.daily_bounded_counts_kernel`` (the
cumulative clip) -> ``dp.continual.ContinualCounter`` (a real ledger, a schedule charged once,
releases by day). The neighbouring stream adds one person and all their purchases over the year.

Many independent trials in one run: trial k is key k. Added person k buys key k on day 1 and,
later in the year, another trial's key and key k again; with ``max_keys_per_person`` 1 only the
first purchase may count, so person k moves key k alone and the keys' noises are independent:
each key's released counts are one draw of a single-neighbour experiment. (Were the clip broken,
person k would also move key k + 1 and the audit would see it.)

The event audited is the best one for the tree: a unit on day 1 lies in nodes (j, 1), j = 0 ..
levels - 1, and node (j, 1) is exactly day ``arity**j``'s release; E = every one of those
releases exceeds its count without the person. Adding the person multiplies P(E) by exactly
exp(epsilon) with the noise calibrated to the horizon's sensitivity; every other node is
independent of the person, so no event over the year's releases does better. The audit's
epsilon is ln of the Clopper-Pearson lower bound of P(E | with) over the upper bound of P(E |
without), each at 1e-4: it must stay under the claimed epsilon, and a counter calibrated for one
node instead of ``levels`` (twice the claimed epsilon here) must be caught.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import beta

import dp.continual
from dp import BudgetLedger, ContinualCounter
from pipelines.engines import LocalEngine
from pipelines.popularity import daily_bounded_counts_kernel

EPSILON = 1.0
TRIALS = 4000
START = dt.datetime(2025, 11, 1, tzinfo=dt.UTC)
ALPHA = 1e-4
DAY_US = 86_400_000_000


def _purchases(with_added: bool, rng_seed: int = 5) -> pa.Table:
    """Background buyers (the same in both streams) and, in the neighbour, one added person per trial."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for person in range(2 * TRIALS):   # background: two purchases each, anywhere in the year
        for _ in range(2):
            rows.append((f"bg{person}", f"k{rng.integers(TRIALS)}", int(rng.integers(365))))
    if with_added:
        for k in range(TRIALS):
            rows += [(f"added{k}", f"k{k}", 0), (f"added{k}", f"k{(k + 1) % TRIALS}", 99), (f"added{k}", f"k{k}", 199)]
    start_us = int(START.timestamp() * 1e6)
    return pa.table({"person_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                     "placed_at": pa.array([start_us + r[2] * DAY_US + 3_600_000_000 for r in rows],
                                           pa.timestamp("us", tz="UTC")),
                     "order_id": [f"o{i:07d}" for i in range(len(rows))],
                     "position": pa.array(np.zeros(len(rows), dtype=np.int32))})


def _daily_counts(purchases: pa.Table, keys: list[str], days: int) -> np.ndarray:
    with LocalEngine() as engine:
        kernel = daily_bounded_counts_kernel(person="person_id", group="item_id", keys=engine.broadcast(pa.array(keys)),
                                             start=START, days=days, order_by=("placed_at", "order_id", "position"),
                                             max_partitions=1)
    out = kernel.function(purchases)
    counts = np.zeros((days, len(keys)), dtype=np.int64)
    np.add.at(counts, (out.column("day").to_numpy() - 1, out.column("key_index").to_numpy()),
              out.column("count").to_numpy())
    return counts


def _event(tmp_path, name: str, daily: np.ndarray, baseline: np.ndarray, keys: list[str]) -> np.ndarray:
    """Per trial: did every release holding day 1's nodes exceed the count without the added person?"""
    ledger = BudgetLedger(tmp_path / f"{name}.sqlite")
    ledger.set_budget("orders", epsilon=EPSILON, set_by="audit")
    counter = ContinualCounter.create(ledger, name="audit", dataset="orders", purpose="product_improvement",
                                      by="item_id", keys=keys, start=START, horizon_days=365, epsilon=EPSILON,
                                      max_keys_per_person=1, analyst="audit")
    assert ledger.spent("orders")["epsilon"] == pytest.approx(EPSILON)      # the whole year, charged once
    shape = counter.shape
    exceeded = np.ones(len(keys), dtype=bool)
    for level in range(shape.levels):
        day = shape.arity ** level
        released = counter.release(day, daily[:day]).counts["count"].to_numpy()
        exceeded &= released >= baseline[:day].sum(axis=0) + 1
    return exceeded


def _audited_epsilon(tmp_path, label: str) -> float:
    keys = [f"k{k}" for k in range(TRIALS)]
    days = 365
    without = _daily_counts(_purchases(False), keys, days)
    with_added = _daily_counts(_purchases(True), keys, days)
    assert ((with_added - without).sum(axis=0) == 1).all()            # each added person counts once, in their key
    assert (with_added[0] - without[0] == 1).all()                    # on day 1
    hits_without = int(_event(tmp_path, f"{label}-without", without, without, keys).sum())
    hits_with = int(_event(tmp_path, f"{label}-with", with_added, without, keys).sum())
    low_with = beta.ppf(ALPHA, hits_with, TRIALS - hits_with + 1) if hits_with else 0.0
    high_without = beta.ppf(1 - ALPHA, hits_without + 1, TRIALS - hits_without) if hits_without < TRIALS else 1.0
    return math.log(low_with / high_without) if low_with > 0 else 0.0


def test_a_year_of_daily_releases_stays_within_its_epsilon(tmp_path):
    audited = _audited_epsilon(tmp_path, "honest")
    assert audited <= EPSILON, f"observed epsilon lower bound {audited:.3f} exceeds the claimed {EPSILON}"
    assert audited > 0.5            # the audit sees most of the loss it bounds (power)


def test_a_counter_that_forgets_a_person_is_in_every_level_is_caught(tmp_path, monkeypatch):
    calibrate = dp.continual.mech.plan_vector_noise

    def one_node_only(**arguments):   # the classic bug: calibrated to one node's sensitivity, not the tree's
        levels = dp.continual.TreeShape.best(365, "l1").levels
        return calibrate(**{**arguments, "l1_sensitivity": arguments["l1_sensitivity"] // levels})

    monkeypatch.setattr(dp.continual.mech, "plan_vector_noise", one_node_only)
    audited = _audited_epsilon(tmp_path, "under-noised")
    assert audited > EPSILON, f"an under-noised counter went unnoticed (observed {audited:.3f})"
