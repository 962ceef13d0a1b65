"""Continual counts: a horizon charged once, each day released once from nodes drawn once, the clip over the horizon."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp import BudgetExceededError, BudgetLedger, ContinualCounter, PrivacyParameterError, ScheduleError, TreeShape
from dp.continual import _decode
from pipelines.engines import LocalEngine
from pipelines.popularity import daily_bounded_counts_kernel

START = "2026-01-01T00:00:00+00:00"


def _ledger(tmp_path, epsilon=1.0) -> BudgetLedger:
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", epsilon=epsilon, set_by="reviewer")
    return ledger


def _counter(ledger, *, keys=("a", "b", "c"), horizon_days=365, epsilon=1.0, name="popularity") -> ContinualCounter:
    return ContinualCounter.create(ledger, name=name, dataset="orders", purpose="product_improvement", by="item_id",
                                   keys=list(keys), start=START, horizon_days=horizon_days, epsilon=epsilon,
                                   max_keys_per_person=5, analyst="test")


# the tree ------------------------------------------------------------------------------------

@given(horizon=st.integers(1, 400), arity=st.integers(2, 40), data=st.data())
def test_a_days_release_sums_completed_nodes_covering_exactly_its_days(horizon, arity, data):
    shape = TreeShape(horizon, arity)
    day = data.draw(st.integers(1, horizon))
    covered = []
    for node in shape.prefix_nodes(day):
        first, last = shape.days(node)
        assert last <= day and node in shape.completed(last)   # drawn by the time day is released
        covered.extend(range(first, last + 1))
    assert covered == list(range(1, day + 1))
    assert len(shape.prefix_nodes(day)) == shape.digit_sums()[day - 1]
    # a day lies in at most one node per level: the sensitivity's factor `levels`
    every_node = {n for d in range(1, horizon + 1) for n in shape.completed(d)}
    t = data.draw(st.integers(1, horizon))
    holding = [n for n in every_node if shape.days(n)[0] <= t <= shape.days(n)[1]]
    assert len(holding) <= shape.levels and len({level for level, _ in holding}) == len(holding)


def test_a_year_under_epsilon_uses_two_levels_of_twenty_days_and_beats_the_binary_tree():
    best, binary = TreeShape.best(365, "l1"), TreeShape(365, 2)
    assert (best.arity, best.levels) == (20, 2)
    worst = lambda shape: shape.levels ** 2 * shape.digit_sums().max()   # noqa: E731 (variance up to a constant)
    assert worst(best) < worst(binary) / 4


def test_the_95_percent_half_width_covers_95_percent_of_the_summed_noise():
    """Checked by simulation (numpy's generator here is the test's, not the release's) on both paths:
    exact on integers (scale < 20) and on the conservative grid (scale >= 20)."""
    from dp.continual import _sum_half_width

    rng = np.random.default_rng(3)
    for scale, nodes in ((2.0, 1), (6.0, 23), (40.0, 36)):
        p = np.exp(-1.0 / scale)
        noise = (rng.geometric(1 - p, (200_000, nodes)) - rng.geometric(1 - p, (200_000, nodes))).sum(axis=1)
        half = _sum_half_width("discrete Laplace", scale, nodes)
        assert np.mean(np.abs(noise) <= half) >= 0.945, (scale, nodes)              # covers 95%
        assert np.mean(np.abs(noise) <= 0.97 * half - 1) <= 0.955, (scale, nodes)   # and is not much wider


# the schedule in the ledger -------------------------------------------------------------------

def test_the_horizon_is_charged_once_and_each_day_recorded_without_charge(tmp_path):
    ledger = _ledger(tmp_path)
    counter = _counter(ledger)
    assert ledger.spent("orders")["epsilon"] == pytest.approx(1.0)
    daily = np.full((365, 3), 7, dtype=np.int64)
    for day in (1, 2, 20, 40, 365):
        release = counter.release(day, daily[:day], keys=["c", "a", "b"])   # any order of the same keys
        assert list(release.counts["item_id"]) == ["a", "b", "c"]
        assert release.nodes_summed == len(counter.shape.prefix_nodes(day))
        assert (release.counts["count_ci95"] == counter.half_width(day)).all()
    assert [d["day"] for d in counter.released_days()] == [1, 2, 20, 40, 365]
    assert len(ledger.charges("orders")) == 1 and ledger.spent("orders")["epsilon"] == pytest.approx(1.0)
    assert all(report.ok for report in ledger.verify())


def test_a_later_run_reuses_the_nodes_drawn_before_and_never_redraws_them(tmp_path):
    """A daily job is a new process: the counter keeps no node in memory, so a counter found again
    in the ledger (as the next day's process finds it) is what that process sees."""
    ledger = _ledger(tmp_path)
    first = _counter(ledger).release(1, np.array([[1000, 0, 5]])).counts["count"].to_numpy()
    later = ContinualCounter.latest(BudgetLedger(ledger.path), "popularity", "orders")
    second = later.release(2, np.array([[1000, 0, 5], [0, 3, 0]])).counts["count"].to_numpy()
    nodes = ledger.schedule_nodes(later.schedule_id)
    assert sorted(nodes) == [(0, 1), (0, 2)]
    assert (_decode(nodes[(0, 1)], 3) == first).all()                       # day 1's node, as released on day 1
    assert (second == first + _decode(nodes[(0, 2)], 3)).all()               # day 2 = that node + day 2's leaf


def test_a_day_is_released_once_within_the_horizon_and_over_the_same_keys(tmp_path):
    ledger = _ledger(tmp_path)
    counter = _counter(ledger, horizon_days=30)
    daily = np.zeros((31, 3), dtype=np.int64)
    counter.release(5, daily[:5])
    with pytest.raises(ScheduleError, match="already released day 5; day 5 cannot be released again"):
        counter.release(5, daily[:5])
    with pytest.raises(ScheduleError, match="day 4 comes before it"):
        counter.release(4, daily[:4])
    with pytest.raises(ScheduleError, match="covers days 1 to 30; day 31 is outside it and its budget"):
        counter.release(31, daily)
    with pytest.raises(ScheduleError, match=r"created over 3 keys; these are 4 \(1 new, 0 gone\)"):
        counter.release(6, np.zeros((6, 4), dtype=np.int64), keys=["a", "b", "c", "d"])
    with pytest.raises(ScheduleError, match="drawn by another release meanwhile"):
        ledger.record_schedule_day(counter.schedule_id, 6, [(0, 5, "x")])   # node (0, 5) exists: never redrawn
    assert [d["day"] for d in counter.released_days()] == [5]
    assert len(ledger.schedule_nodes(counter.schedule_id)) == 5


def test_a_schedule_that_does_not_fit_or_overlaps_is_refused_and_charges_nothing(tmp_path):
    ledger = _ledger(tmp_path, epsilon=1.0)
    _counter(ledger, epsilon=0.6, horizon_days=30)
    with pytest.raises(BudgetExceededError, match="has epsilon 0.4, delta 0 remaining and the release asks epsilon 0.5"):
        _counter(ledger, epsilon=0.5, name="other")
    with pytest.raises(ScheduleError, match="runs until 2026-01-31"):
        _counter(ledger, epsilon=0.1, horizon_days=30)
    assert len(ledger.schedules()) == 1 and ledger.spent("orders")["epsilon"] == pytest.approx(0.6)


@pytest.mark.parametrize("change, message", [
    ({"epsilon": float("nan")}, "epsilon is NaN"),
    ({"epsilon": 1e-5}, "below the smallest a release may cost"),
    ({"horizon_days": 0}, "horizon_days.* must be a positive integer"),
    ({"horizon_days": 5000}, "horizon_days 5000 .* is above 3660"),
    ({"start": "2026-01-01T00:00:00"}, "must be a moment with a UTC offset"),
    ({"start": "tomorrow"}, "is not an ISO 8601 moment"),
    ({"keys": ["a", "a"]}, "non-empty list of distinct public keys"),
    ({"max_keys_per_person": 0}, "max_keys_per_person.* must be a positive integer"),
    ({"epsilon": None, "rho": 0.5}, "the budget of 'orders' is kept in epsilon; pass epsilon"),
])
def test_bad_schedule_parameters_are_refused_before_any_charge(tmp_path, change, message):
    ledger = _ledger(tmp_path)
    arguments = dict(name="popularity", dataset="orders", purpose="product_improvement", by="item_id",
                     keys=["a", "b"], start=START, horizon_days=365, epsilon=1.0, max_keys_per_person=5)
    with pytest.raises(PrivacyParameterError, match=message):
        ContinualCounter.create(ledger, **{**arguments, **change})
    assert ledger.spent("orders")["epsilon"] == 0.0 and ledger.schedules() == []


def test_a_rho_budget_gets_gaussian_nodes_charged_in_rho(tmp_path):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", rho=0.5, set_by="reviewer")
    counter = ContinualCounter.create(ledger, name="popularity", dataset="orders", purpose="product_improvement",
                                      by="item_id", keys=["a"], start=START, horizon_days=365, rho=0.5,
                                      max_keys_per_person=5)
    assert "Gaussian" in counter.record["mechanism"] and ledger.spent("orders")["rho"] == pytest.approx(0.5)
    assert counter.release(3, np.ones((3, 1), dtype=np.int64)).nodes_summed == 3


# the cumulative clip --------------------------------------------------------------------------

DAY_US = 86_400_000_000
START_US = int(dt.datetime.fromisoformat(START).timestamp() * 1e6)


def _reference(rows, keys, days, max_keys):
    """Each person's first ``max_keys`` distinct keys since the start, in purchase order, counted on their day."""
    counts = np.zeros((days, len(keys)), dtype=np.int64)
    for person in sorted({r[0] for r in rows}):
        mine = sorted((r for r in rows if r[0] == person and START_US <= r[2] < START_US + days * DAY_US),
                      key=lambda r: (r[2], r[3], r[4]))     # purchase order: placed_at, order, position
        kept = []
        for _, item, placed, order, position in mine:
            if item in keys and item not in kept and len(kept) < max_keys:
                kept.append(item)
                counts[(placed - START_US) // DAY_US, keys.index(item)] += 1
    return counts


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7), st.integers(-3, 12), st.integers(0, 40),
                          st.integers(0, 2)), max_size=60),
       st.integers(1, 10), st.integers(1, 4))
def test_the_daily_kernel_clips_each_person_over_the_whole_horizon(rows, days, max_keys):
    keys = [f"item-{i}" for i in range(6)]            # item-6 and item-7 are not in the catalogue
    table_rows = [(f"p{p}", f"item-{i}", START_US + d * DAY_US + 3_600_000_000 * (o % 24), f"o{o:03d}", pos)
                  for p, i, d, o, pos in rows]
    table_rows = list({(r[0], r[3], r[4]): r for r in table_rows}.values())   # one item per order position
    table = pa.table({"person_id": [r[0] for r in table_rows], "item_id": [r[1] for r in table_rows],
                      "placed_at": pa.array([r[2] for r in table_rows], pa.timestamp("us", tz="UTC")),
                      "order_id": [r[3] for r in table_rows], "position": pa.array([r[4] for r in table_rows],
                                                                                   pa.int32())})
    expected = _reference(table_rows, keys, days, max_keys)
    with LocalEngine() as engine:
        kernel = daily_bounded_counts_kernel(person="person_id", group="item_id", keys=engine.broadcast(pa.array(keys)),
                                             start=dt.datetime.fromisoformat(START), days=days,
                                             order_by=("placed_at", "order_id", "position"), max_partitions=max_keys)
    got = np.zeros_like(expected)
    if len(table):
        out = kernel.function(table)
        np.add.at(got, (out.column("day").to_numpy() - 1, out.column("key_index").to_numpy()),
                  out.column("count").to_numpy())
    assert (got == expected).all()
    per_person_limit = max_keys * len({r[0] for r in table_rows})
    assert got.sum() <= per_person_limit
