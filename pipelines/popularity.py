"""The item popularity release: how many persons bought each catalogue item, differentially private.

Non-personalized recommendation lists rank items by this release, so nothing of any one person's
history shapes what others are shown beyond what epsilon allows. Reads only the analytics zone
and only the orders of persons the consent gate lets through for ``product_improvement``, placed
before the as-of moment; writes ``WS/outputs/popularity/`` (item_id, buyers, buyers_ci95).

Privacy: epsilon-DP per person (``dp.PrivateSession``: each person counts at most once per item and
for at most ``ITEMS_PER_PERSON`` items; the catalogue's item ids are public keys, so no key is
selected from the data). The release is charged to the ``orders`` budget of the workspace's
ledger before it is computed; without a budget, or with too little left, nothing is released
and the previous release (if any) stays in place.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from dp import BudgetExceededError, BudgetLedger, BudgetNotSetError, PrivateSession
from pipelines.workspace import Workspace

__all__ = ["DATASET", "EPSILON", "ITEMS_PER_PERSON", "read_popularity", "release_popularity"]

DATASET = "orders"
EPSILON = 0.1          # charged per run
ITEMS_PER_PERSON = 5   # distinct items a person's purchases count for

_SCHEMA = pa.schema([pa.field("item_id", pa.string(), nullable=False), pa.field("buyers", pa.float64()),
                     pa.field("buyers_ci95", pa.float64())])


def _purchases(workspace: Workspace, persons: pa.Array, as_of: dt.datetime) -> pd.DataFrame:
    """One row per (person, item) bought before ``as_of`` by one of ``persons``."""
    orders = ds.dataset(workspace.pseudonymized("orders"), format="parquet")
    as_of_scalar = pa.scalar(as_of.astimezone(dt.timezone.utc), type=pa.timestamp("us", tz="UTC"))
    table = orders.to_table(columns=["person_id", "items"],
                            filter=(ds.field("placed_at") < as_of_scalar) & ds.field("person_id").isin(persons))
    items = table.column("items").combine_chunks()
    owners = table.column("person_id").combine_chunks().take(pc.list_parent_indices(items))
    pairs = pd.DataFrame({"person_id": owners.to_pandas(), "item_id": pc.list_flatten(items).to_pandas()})
    return pairs.drop_duplicates(ignore_index=True)


def release_popularity(workspace: Workspace, persons: pa.Array, as_of: dt.datetime, *,
                       epsilon: float = EPSILON, analyst: str = "portrait run") -> dict:
    """Release buyers per catalogue item among ``persons`` (PERSON pseudonyms); return a summary row.

    The summary says ``released`` or why nothing was (no budget, budget exhausted).
    """
    catalogue = ds.dataset(workspace.pseudonymized("catalogue"), format="parquet").to_table(columns=["item_id"])
    keys = catalogue.column("item_id").to_pylist()
    ledger = BudgetLedger(workspace.ledger)
    session = PrivateSession(_purchases(workspace, persons, as_of), dataset=DATASET, ledger=ledger,
                             purpose="product_improvement", analyst=analyst)
    query = (session.query(epsilon=epsilon).group_by("item_id", keys=keys)
             .bound(max_partitions=ITEMS_PER_PERSON, max_rows_per_partition=1).count())
    try:
        frame = query.release()
    except (BudgetNotSetError, BudgetExceededError) as refusal:
        return {"stage": "popularity", "table": "popularity", "rows": 0, "epsilon": 0.0,
                "note": str(refusal).splitlines()[0]}
    released = pa.table({"item_id": pa.array(frame["item_id"].astype(str), pa.string()),
                         "buyers": pa.array(frame["count"], pa.float64()),
                         "buyers_ci95": pa.array(frame["count_ci95"], pa.float64())}, schema=_SCHEMA)
    with workspace.staging() as stage:
        folder = stage / "popularity"
        folder.mkdir()
        pq.write_table(released, folder / "part-0.parquet")
        workspace.publish({workspace.outputs("popularity"): folder})
    left = ledger.remaining(DATASET)
    return {"stage": "popularity", "table": "popularity", "rows": released.num_rows, "epsilon": epsilon,
            "note": "budget left: " + ", ".join(f"{k} {v:.3g}" for k, v in left.items() if v is not None)}


def read_popularity(workspace: Workspace) -> pd.Series | None:
    """The latest popularity release as noisy buyers by item_id, or None when there is none."""
    folder = workspace.outputs("popularity")
    if not folder.is_dir():
        return None
    table = ds.dataset(folder, format="parquet").to_table()
    return pd.Series(table.column("buyers").to_numpy(), index=table.column("item_id").to_pylist(), name="buyers")
