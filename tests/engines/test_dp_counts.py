"""DP counts per public key on both engines: exact bounded totals, one charge, noise drawn once on the driver."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp import BudgetExceededError, BudgetLedger, BudgetNotSetError, PrivacyParameterError, PrivateSession
from engines._frames import person_ids
from pipelines import engine_jobs
from pipelines.engine_jobs import _bounded_totals, release_group_counts
from pipelines.engines import LocalEngine

KEYS = [f"item-{i}" for i in range(12)]
ORDER = ["placed_at", "position"]


def purchases(persons: int, seed: int) -> pa.Table:
    """Rows (person_id, item_id, placed_at, position): a few heavy buyers, some items outside ``KEYS``."""
    rng = np.random.default_rng(seed)
    ids = person_ids(persons, seed)
    per_person = np.where(rng.random(persons) < 0.2, rng.integers(8, 30, persons), rng.integers(1, 5, persons))
    owner = np.repeat(np.arange(persons), per_person)
    n = len(owner)
    items = rng.integers(0, len(KEYS) + 3, n)          # 3 item ids nobody declared
    return pa.table({"person_id": pa.array([ids[i] for i in owner], pa.string()),
                     "item_id": pa.array([f"item-{i}" for i in items], pa.string()),
                     "placed_at": pa.array(rng.permutation(n), pa.int64()),   # a total order of each person's rows
                     "position": pa.array(rng.integers(0, 3, n), pa.int32())})


def plain_totals(rows: pd.DataFrame, keys: list, max_partitions: int, max_rows_per_partition: int) -> np.ndarray:
    """The bounding rule, spelled out: each person's rows in (placed_at, position) order, first ones kept."""
    counts = dict.fromkeys(keys, 0)
    kept: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows.sort_values(["person_id", *ORDER], kind="stable").itertuples():
        if row.item_id not in counts:
            continue
        mine = kept[row.person_id]
        if row.item_id not in mine and len(mine) >= max_partitions:
            continue
        if mine.get(row.item_id, 0) >= max_rows_per_partition:
            continue
        mine[row.item_id] = mine.get(row.item_id, 0) + 1
        counts[row.item_id] += 1
    return np.array([counts[k] for k in keys], dtype=np.int64)


@pytest.fixture
def ledger(tmp_path):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", epsilon=1e9, set_by="reviewer")
    return ledger


def _release(engine, frame, ledger, epsilon, **options):
    return release_group_counts(engine, frame, group="item_id", keys=KEYS, ledger=ledger, dataset="orders",
                                purpose="product_improvement", analyst="test", epsilon=epsilon, order_by=ORDER,
                                max_partitions=5, max_rows_per_partition=2, **options)


def test_bounded_totals_equal_the_plain_rule_and_the_private_session(engine, ledger):
    rows = purchases(150, seed=11)
    frame = engine.from_table(rows, key="person_id", partitions=4)
    totals = _bounded_totals(engine, frame, person="person_id", group="item_id", keys=KEYS, order_by=ORDER,
                             max_partitions=5, max_rows_per_partition=2)
    table = rows.to_pandas()
    assert totals.tolist() == plain_totals(table, KEYS, 5, 2).tolist()
    assert totals.sum() < sum(table["item_id"].isin(KEYS))         # the bounds did cut heavy buyers
    # PrivateSession on the same rows in the same order: at epsilon 1e8 its discrete noise is 0
    session = PrivateSession(table.sort_values(["person_id", *ORDER]), dataset="orders", ledger=ledger,
                             purpose="product_improvement", analyst="test")
    reference = (session.query(epsilon=1e8).group_by("item_id", keys=KEYS)
                 .bound(max_partitions=5, max_rows_per_partition=2).count().release())
    assert reference["count"].tolist() == totals.tolist()
    released = _release(engine, frame, ledger, epsilon=1e8)
    assert released["item_id"].tolist() == KEYS
    assert released["count"].tolist() == totals.tolist()
    charges = ledger.charges("orders")
    # rows: the session's charge line, then the engine's, the same
    assert len(charges) == 2 and charges[0]["epsilon"] == pytest.approx(1e8)
    for column in ("epsilon", "aggregate", "mechanism", "sensitivity", "noise_scale", "query"):
        assert charges[0][column] == charges[1][column], column


def test_each_release_is_charged_once_and_noised_once(engine, ledger):
    frame = engine.from_table(purchases(120, seed=12), key="person_id", partitions=3)
    exact = _bounded_totals(engine, frame, person="person_id", group="item_id", keys=KEYS, order_by=ORDER,
                            max_partitions=5, max_rows_per_partition=2)
    first = _release(engine, frame, ledger, epsilon=0.01)
    second = _release(engine, frame, ledger, epsilon=0.01)
    charges = ledger.charges("orders")
    assert [(c["aggregate"], c["epsilon"]) for c in charges] == [("count", pytest.approx(0.01))] * 2
    assert all(c["released_at"] is not None for c in charges)
    # sensitivity 5 groups x 2 rows: discrete Laplace of scale 10 / 0.01 = 1000
    assert charges[0]["sensitivity"] == "10" and charges[0]["noise_scale"] == pytest.approx(1000, rel=1e-6)
    assert not np.array_equal(first["count"].to_numpy(), exact)
    assert not np.array_equal(first["count"].to_numpy(), second["count"].to_numpy())
    assert first["count_ci95"].iloc[0] == pytest.approx(1000 * math.log(1 / 0.05), rel=0.01)


def test_a_refused_release_computes_and_charges_nothing(engine, ledger, tmp_path, monkeypatch):
    frame = engine.from_table(purchases(30, seed=13), key="person_id", partitions=2)

    def computed(*args, **kwargs):
        raise AssertionError("bounded totals were computed for a release that is refused")

    monkeypatch.setattr(engine_jobs, "_bounded_totals", computed)
    with pytest.raises(PrivacyParameterError, match="epsilon is NaN"):
        _release(engine, frame, ledger, epsilon=float("nan"))
    with pytest.raises(BudgetExceededError, match="nothing charged or released"):
        _release(engine, frame, ledger, epsilon=2e9)
    with pytest.raises(BudgetNotSetError, match="no privacy budget is set for dataset 'orders'"):
        _release(engine, frame, BudgetLedger(tmp_path / "empty.sqlite"), epsilon=1.0)
    assert ledger.charges("orders") == []


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 5)), max_size=80), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 4))
def test_partitioned_bounding_is_the_plain_rule(pairs, max_partitions, max_rows, partitions):
    keys = [f"item-{i}" for i in range(4)]        # item-4 and item-5 are not declared
    rows = pd.DataFrame({"person_id": [f"{p:032x}" for p, _ in pairs], "item_id": [f"item-{i}" for _, i in pairs],
                         "placed_at": np.arange(len(pairs)), "position": np.zeros(len(pairs), dtype=np.int32)})
    with LocalEngine() as engine:
        frame = engine.from_table(pa.Table.from_pandas(rows, preserve_index=False), key="person_id",
                                  partitions=partitions)
        totals = _bounded_totals(engine, frame, person="person_id", group="item_id", keys=keys, order_by=ORDER,
                                 max_partitions=max_partitions, max_rows_per_partition=max_rows)
    assert totals.tolist() == plain_totals(rows, keys, max_partitions, max_rows).tolist()
