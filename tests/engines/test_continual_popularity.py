"""The scheduled popularity release on both engines: the cumulative clip gives a plain query's totals.

At an epsilon of 1e8 the tree's discrete Laplace noise (scale about 1e-7) is 0, so each day's
release is the exact cumulative count; with the schedule starting before every order and its
day ending at the as-of moment, that is what a plain ``PrivateSession`` query over all purchases
before the as-of moment counts (each person's first five distinct items in purchase order).
"""

from __future__ import annotations

import datetime as dt

from dp import BudgetLedger, ContinualCounter
from engines.test_popularity import AS_OF, _reference, _workspace
from pipelines.engine_jobs import release_item_buyers
from pipelines.popularity import DATASET, ITEMS_PER_PERSON, PURPOSE, SCHEDULE, read_popularity

DAYS = 400


def test_a_scheduled_day_counts_each_person_once_per_item_for_five_items_over_the_horizon(engine, tmp_path):
    workspace, gated = _workspace(tmp_path / "ws", seed=43)
    stage = _reference(workspace, gated)               # charges the workspace's huge budget, as a plain query
    ledger = BudgetLedger(workspace.ledger)
    start = AS_OF - dt.timedelta(days=DAYS - 3)        # before the first order; day DAYS - 3 ends at AS_OF
    counter = ContinualCounter.create(ledger, name=SCHEDULE, dataset=DATASET, purpose=PURPOSE, by="item_id",
                                      keys=stage.index.tolist(), start=start, horizon_days=DAYS, epsilon=1e8,
                                      max_keys_per_person=ITEMS_PER_PERSON, analyst="test")
    charges = len(ledger.charges(DATASET))
    summary = release_item_buyers(engine, workspace, gated, AS_OF, analyst="test", partitions=3)
    assert summary["engine"] == engine.name and f"day {DAYS - 3} of {DAYS}" in summary["note"]
    released = read_popularity(workspace)
    assert released.index.tolist() == stage.index.tolist()
    assert released.tolist() == stage.tolist() and 0 < stage.sum()
    assert len(ledger.charges(DATASET)) == charges                 # the day charged nothing
    assert [d["day"] for d in counter.released_days()] == [DAYS - 3]
