"""The item popularity release: how many persons bought each catalogue item, differentially private.

Non-personalized recommendation lists rank items by this release when there is one, so nothing of
any one person's history shapes what others are shown beyond what epsilon allows; without one
they are ranked by the catalogue's listing date, which uses no personal data. Reads only the analytics zone
and only the orders of persons the consent gate lets through for ``product_improvement``, placed
before the as-of moment; writes ``WS/outputs/popularity/`` (item_id, buyers, buyers_ci95). The
release runs on an engine (``pipelines.engine_jobs.release_item_buyers``), locally or on Spark.

Privacy: epsilon-DP per person (the bounding of ``dp.PrivateSession``: each person counts at most once
per item and for at most ``ITEMS_PER_PERSON`` items, taken in purchase order; the catalogue's item ids are public keys, so no key is
selected from the data). The release is charged to the ``orders`` budget of the workspace's
ledger before it is computed; without a budget, or with too little left, nothing is released
and the previous release (if any) stays in place.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from dp import BudgetLedger
from pipelines.workspace import Workspace
from profiling.errors import WorkspaceError

__all__ = ["DATASET", "EPSILON", "ITEMS_PER_PERSON", "POPULARITY_SCHEMA", "PURPOSE", "popularity_release_id",
           "read_popularity"]

DATASET = "orders"
PURPOSE = "product_improvement"
EPSILON = 0.1          # charged per run
ITEMS_PER_PERSON = 5   # distinct items a person's purchases count for

POPULARITY_SCHEMA = pa.schema([pa.field("item_id", pa.string(), nullable=False), pa.field("buyers", pa.float64()),
                     pa.field("buyers_ci95", pa.float64())])


def read_popularity(workspace: Workspace) -> pd.Series | None:
    """The latest popularity release as noisy buyers by item_id, or None when there is none."""
    folder = workspace.outputs("popularity")
    if not folder.is_dir():
        return None
    table = ds.dataset(workspace.verified(folder), format="parquet").to_table()
    return pd.Series(table.column("buyers").to_numpy(), index=table.column("item_id").to_pylist(), name="buyers")


def popularity_release_id(workspace: Workspace) -> str | None:
    """The budget ledger's release id of the popularity release in place, or None when there is none.

    It is the latest released charge of the ``orders`` dataset for ``product_improvement`` grouped by
    item: a release is published right after its charge is marked released, and a refused one
    charges nothing and leaves the previous release in place. Raises ``WorkspaceError`` when a
    release is in place but the ledger holds no such charge.
    """
    if not workspace.outputs("popularity").is_dir():
        return None
    charges = [c for c in BudgetLedger(workspace.ledger).charges(DATASET)
               if c["purpose"] == PURPOSE and c["released_at"] and "item_id" in (c["query"] or "")]
    if not charges:
        raise WorkspaceError(f"{workspace.outputs('popularity')} holds a popularity release but the budget ledger "
                             f"has no released {PURPOSE} charge of dataset {DATASET!r} for it; remove the folder "
                             f"and run the popularity stage again with a budget")
    return charges[-1]["release_id"]
