"""The item popularity release on both engines has the pre-noise totals of a plain ``PrivateSession`` query."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dp import BudgetLedger, PrivateSession
from engines._frames import person_ids
from pipelines.engine_jobs import release_item_buyers
from pipelines.manifest import write_manifests
from pipelines.popularity import DATASET, ITEMS_PER_PERSON, read_popularity
from pipelines.workspace import Workspace

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _workspace(root, seed: int) -> tuple[Workspace, pa.Array]:
    """Analytics-zone orders stored in the order they were placed, a catalogue, and the gated persons."""
    rng = np.random.default_rng(seed)
    workspace = Workspace(root)
    persons = person_ids(80, seed)
    catalogue = [f"item-{i:03d}" for i in range(30)]
    n = 600
    placed = np.sort(rng.integers(0, 400, n)) * 86_400_000_000 + int(dt.datetime(2025, 10, 1).timestamp() * 1e6)
    buyer = np.where(rng.random(n) < 0.5, rng.integers(0, 8, n), rng.integers(0, 80, n))   # 8 heavy buyers
    items = [[f"item-{i:03d}" for i in rng.integers(0, 33, rng.integers(1, 4))] for _ in range(n)]   # 3 unknown ids
    orders = pa.table({"order_id": pa.array([f"order-{i:05d}" for i in range(n)]),
                       "person_id": pa.array([persons[b] for b in buyer]),
                       "placed_at": pa.array(placed, pa.timestamp("us", tz="UTC")),
                       "amount": pa.array(rng.random(n) * 100),
                       "items": pa.array(items, pa.list_(pa.string()))})
    for name, table in (("orders", orders), ("catalogue", pa.table({"item_id": catalogue}))):
        folder = workspace.pseudonymized(name)
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "part-0.parquet", row_group_size=128)
        write_manifests(folder)  # as Workspace.publish does
    BudgetLedger(workspace.ledger).set_budget("orders", epsilon=1e9, set_by="test")
    return workspace, pa.array(persons[:70], pa.string())      # 10 persons did not consent


def _reference(workspace: Workspace, gated: pa.Array) -> pd.Series:
    """The release as one in-memory ``PrivateSession`` query over (person, item) in purchase order."""
    orders = pq.read_table(workspace.pseudonymized("orders") / "part-0.parquet")
    orders = orders.filter(pc.and_(pc.is_in(orders["person_id"], value_set=gated),
                                   pc.less(orders["placed_at"], pa.scalar(AS_OF, pa.timestamp("us", tz="UTC")))))
    rows = [(person, placed, order, position, item)
            for person, placed, order, items in zip(*(orders[c].to_pylist() for c in
                                                      ("person_id", "placed_at", "order_id", "items")))
            for position, item in enumerate(items)]
    pairs = (pd.DataFrame(rows, columns=["person_id", "placed_at", "order_id", "position", "item_id"])
             .sort_values(["person_id", "placed_at", "order_id", "position"])
             .drop_duplicates(["person_id", "item_id"])[["person_id", "item_id"]])
    catalogue = pq.read_table(workspace.pseudonymized("catalogue") / "part-0.parquet")["item_id"].to_pylist()
    session = PrivateSession(pairs, dataset=DATASET, ledger=BudgetLedger(workspace.ledger), analyst="test",
                             purpose="product_improvement")
    frame = (session.query(epsilon=1e8).group_by("item_id", keys=catalogue)
             .bound(max_partitions=ITEMS_PER_PERSON, max_rows_per_partition=1).count().release())
    return pd.Series(frame["count"].to_numpy(dtype=float), index=frame["item_id"].astype(str).tolist())


def test_the_engine_release_matches_a_plain_private_session(engine, tmp_path):
    workspace, gated = _workspace(tmp_path / "ws", seed=41)
    # at epsilon 1e8 the discrete Laplace noise (scale 5e-8) is 0: the releases are the exact totals
    stage = _reference(workspace, gated)
    summary = release_item_buyers(engine, workspace, gated, AS_OF, epsilon=1e8, analyst="test", partitions=3)
    assert summary["rows"] == 30 and summary["engine"] == engine.name
    released = read_popularity(workspace)
    assert released.index.tolist() == stage.index.tolist()
    assert released.tolist() == stage.tolist()
    assert 0 < stage.sum() < 600 * 3
    first, second = BudgetLedger(workspace.ledger).charges("orders")
    for column in ("epsilon", "sensitivity", "noise_scale", "query", "purpose"):
        assert first[column] == second[column], column


def test_without_a_budget_nothing_runs_and_nothing_is_written(engine, tmp_path):
    workspace, gated = _workspace(tmp_path / "ws", seed=42)
    workspace.ledger.unlink()
    for leftover in workspace.root.glob("ledger.sqlite-*"):
        leftover.unlink()
    summary = release_item_buyers(engine, workspace, gated, AS_OF, epsilon=0.1)
    assert summary["rows"] == 0 and summary["note"].startswith("no privacy budget is set for dataset 'orders'")
    assert read_popularity(workspace) is None
