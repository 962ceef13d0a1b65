"""The vectorized risk features against a plain per-person, per-week reference, on random activity."""

from __future__ import annotations

import datetime as dt
import statistics

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiling.risk import FEATURE_COLUMNS, RiskModel, risk_features, rule_scores

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
WEEKS = 3
_TIME = pa.timestamp("us", tz="UTC")
_PERSONS = ["p1", "p2", None]
_PLACES = ["11", "31", "44", None]

# A moment up to five weeks before AS_OF (some after it, which every feature ignores), in whole minutes.
moments = st.integers(-60, 5 * 7 * 24 * 60).map(lambda minutes: AS_OF - dt.timedelta(minutes=minutes))
orders_rows = st.lists(st.tuples(st.sampled_from(_PERSONS), moments, st.floats(0, 5000)), max_size=25)
waybill_rows = st.lists(st.tuples(st.sampled_from(_PERSONS), moments, st.sampled_from(_PLACES)), max_size=15)
event_rows = st.lists(st.tuples(st.sampled_from(_PERSONS), st.sampled_from(["d1", "d2", "d3"]), moments,
                                st.sampled_from(_PLACES), st.sampled_from(["10.0.0", "10.0.1", None])), max_size=20)


def _tables(orders, waybills, events):
    return (pa.table({"person_id": pa.array([r[0] for r in orders], pa.string()),
                      "placed_at": pa.array([r[1] for r in orders], _TIME),
                      "amount": pa.array([r[2] for r in orders], pa.float64())}),
            pa.table({"person_id": pa.array([r[0] for r in waybills], pa.string()),
                      "created_at": pa.array([r[1] for r in waybills], _TIME),
                      "destination_province": pa.array([r[2] for r in waybills], pa.string())}),
            pa.table({"person_id": pa.array([r[0] for r in events], pa.string()),
                      "device_id": pa.array([r[1] for r in events], pa.string()),
                      "event_at": pa.array([r[2] for r in events], _TIME),
                      "coarse_province": pa.array([r[3] for r in events], pa.string()),
                      "ip_prefix": pa.array([r[4] for r in events], pa.string())}))


def _reference(orders, waybills, events) -> dict[tuple[str, int], dict[str, float]]:
    """The features as the data dictionary states them, one person-week at a time."""
    orders = [r for r in orders if r[0] and r[1] < AS_OF]
    waybills = [r for r in waybills if r[0] and r[1] < AS_OF]
    events = [r for r in events if r[0] and r[2] < AS_OF]
    expected = {}
    for person in {r[0] for r in orders}:
        def first_seen(rows, key, time):
            seen: dict = {}
            for row in rows:
                if row[0] == person and key(row) is not None:
                    seen[key(row)] = min(seen.get(key(row), time(row)), time(row))
            return seen
        devices = first_seen(events, lambda r: r[1], lambda r: r[2])
        news = {"new_destinations": first_seen(waybills, lambda r: r[2], lambda r: r[1]),
                "new_devices": devices, "new_provinces": first_seen(events, lambda r: r[3], lambda r: r[2]),
                "new_networks": first_seen(events, lambda r: r[4], lambda r: r[2])}
        everything = [r[1] for r in orders + waybills if r[0] == person] + [r[2] for r in events if r[0] == person]
        for week in range(WEEKS):
            end = AS_OF - week * dt.timedelta(days=7)
            start = end - dt.timedelta(days=7)
            mine = [r for r in orders if r[0] == person and start <= r[1] < end]
            if not mine:
                continue
            earlier = [r[2] for r in orders if r[0] == person and r[1] < start]
            largest = max(r[2] for r in mine)
            days = [r[1].date() for r in mine]
            gaps = [(o[1] - seen).total_seconds() / 3600 for o in mine for seen in devices.values() if seen <= o[1]]
            expected[(person, week)] = {
                "orders": len(mine), "max_amount": largest,
                "amount_ratio": largest / max(statistics.median(earlier), 1.0) if earlier else 100.0,
                "most_orders_in_a_day": max(days.count(d) for d in days),
                "destinations": len({r[2] for r in waybills if r[0] == person and start <= r[1] < end and r[2]}),
                **{name: sum(start <= t < end for t in seen.values()) for name, seen in news.items()},
                "hours_new_device_to_order": min([168.0, *gaps]),
                "history_days": (end - min(everything)).total_seconds() / 86400,
            }
    return expected


@given(orders_rows, waybill_rows, event_rows)
def test_the_features_match_the_reference(orders, waybills, events):
    features = risk_features(*_tables(orders, waybills, events), as_of=AS_OF, weeks=WEEKS)
    got = {(row["person_id"], row["week"]): {name: row[name] for name in FEATURE_COLUMNS}
           for row in features.to_dict("records")}
    expected = _reference(orders, waybills, events)
    assert got.keys() == expected.keys()
    for unit, values in expected.items():
        assert got[unit] == pytest.approx(values), unit
    assert (features["week_end"] - features["week_start"] == dt.timedelta(days=7)).all()


def test_bad_parameters_are_refused():
    tables = _tables([], [], [])
    with pytest.raises(ValueError, match="weeks must be at least 1"):
        risk_features(*tables, as_of=AS_OF, weeks=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        risk_features(*tables, as_of=AS_OF.replace(tzinfo=None), weeks=1)
    features = risk_features(*_tables([("p1", AS_OF - dt.timedelta(hours=1), 5.0)], [], []), as_of=AS_OF, weeks=1)
    with pytest.raises(ValueError, match="at least 2 are needed"):
        RiskModel().fit(features)
    with pytest.raises(ValueError, match="lack the columns new_devices"):
        RiskModel().fit(features.drop(columns=["new_devices"]))
    assert rule_scores(features).tolist() == [0.0]
