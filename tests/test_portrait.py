"""Portrait features against a plain per-person reference, on small random data."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiling.portrait import (
    DEFAULT_CNY_PER_UNIT,
    DEVICE_TYPES,
    FEATURES,
    PortraitBuilder,
    data_dictionary,
    portrait_schema,
    portraits,
)
from profiling.schema import CATEGORIES, CURRENCIES, PAYMENT_INSTITUTIONS, SERVICE_TYPES

UTC = dt.timezone.utc
AS_OF = dt.datetime(2026, 11, 1, 3, 30, tzinfo=UTC)  # 11:30 local: the local day is 2026-11-01
LOCAL = dt.timedelta(hours=8)
PEOPLE = ["p0", "p1", "p2", "p3", "p4", "stranger"]  # "stranger" is never eligible
TIMESTAMP = pa.timestamp("us", tz="UTC")

moments = st.integers(min_value=-40 * 24 * 3600, max_value=2 * 24 * 3600).map(
    lambda seconds: AS_OF + dt.timedelta(seconds=seconds))
provinces = st.none() | st.sampled_from(["11", "31", "44", "44", "65"])


@st.composite
def histories(draw):
    eligible = draw(st.lists(st.sampled_from(PEOPLE[:5]), min_size=1, max_size=5, unique=True))
    identity = {p: draw(st.sampled_from(sorted(eligible))) for p in eligible}
    # an identity is named by its smallest member, as the identity graph names it
    groups = defaultdict(list)
    for person, root in identity.items():
        groups[root].append(person)
    identity = {p: min(members) for members in groups.values() for p in members}
    persons = [{"person_id": p, "identity_id": identity[p], "dnd": draw(st.booleans()),
                "non_personalized": draw(st.booleans()), "cross_device_sync": draw(st.booleans())}
               for p in eligible]
    devices = [{"device_id": f"d{k}", "identity_id": draw(st.sampled_from(sorted(set(identity.values())))),
                "device_type": draw(st.sampled_from(DEVICE_TYPES))} for k in range(draw(st.integers(0, 6)))]
    orders = draw(st.lists(st.fixed_dictionaries({
        "person_id": st.sampled_from(PEOPLE), "placed_at": moments,
        "amount": st.floats(0, 5000, allow_nan=False).map(lambda a: round(a, 2)),
        "currency": st.sampled_from(CURRENCIES), "payment_institution": st.sampled_from(PAYMENT_INSTITUTIONS),
        "category": st.sampled_from(CATEGORIES)}), max_size=40))
    waybills = draw(st.lists(st.fixed_dictionaries({
        "person_id": st.none() | st.sampled_from(PEOPLE), "created_at": moments,
        "service_type": st.sampled_from(SERVICE_TYPES), "origin_province": provinces,
        "destination_province": provinces, "weight_kg": st.floats(0, 80, allow_nan=False),
        "cross_border": st.booleans()}), max_size=30))
    events = draw(st.lists(st.fixed_dictionaries({"person_id": st.none() | st.sampled_from(PEOPLE),
                                                  "event_at": moments}), max_size=30))
    return persons, devices, orders, waybills, events


def _tables(persons, devices, orders, waybills, events):
    def table(rows, schema):
        return pa.Table.from_pylist(rows, schema=pa.schema(schema))
    return (
        table(persons, [("person_id", pa.string()), ("identity_id", pa.string()), ("dnd", pa.bool_()),
                        ("non_personalized", pa.bool_()), ("cross_device_sync", pa.bool_())]),
        table(devices, [("device_id", pa.string()), ("identity_id", pa.string()), ("device_type", pa.string())]),
        table(orders, [("person_id", pa.string()), ("placed_at", TIMESTAMP), ("amount", pa.float64()),
                       ("currency", pa.string()), ("payment_institution", pa.string()), ("category", pa.string())]),
        table(waybills, [("person_id", pa.string()), ("created_at", TIMESTAMP), ("service_type", pa.string()),
                         ("origin_province", pa.string()), ("destination_province", pa.string()),
                         ("weight_kg", pa.float64()), ("cross_border", pa.bool_())]),
        table(events, [("person_id", pa.string()), ("event_at", TIMESTAMP)]),
    )


def _mode(values):
    counts = Counter(v for v in values if v is not None)
    if not counts:
        return None
    return min(counts, key=lambda v: (-counts[v], v))


def reference(persons, devices, orders, waybills, events, as_of=AS_OF):
    """One dict per identity, computed person by person with plain Python."""
    identity_of = {p["person_id"]: p["identity_id"] for p in persons}
    result = {}
    for identity in sorted(set(identity_of.values())):
        members = sorted(p for p, i in identity_of.items() if i == identity)
        flags = [p for p in persons if p["person_id"] in members]
        mine = [o for o in orders if o["person_id"] in members and o["placed_at"] <= as_of]
        row = {"person_id": identity, "linked_person_ids": members,
               "dnd": any(p["dnd"] for p in flags), "non_personalized": any(p["non_personalized"] for p in flags),
               "cross_device_sync": all(p["cross_device_sync"] for p in flags), "orders": len(mine)}
        amounts = [o["amount"] * DEFAULT_CNY_PER_UNIT[o["currency"]] for o in mine]
        row["total_spend_cny"] = sum(amounts)
        if mine:
            day_sums = defaultdict(float)
            for order, amount in zip(mine, amounts):
                day_sums[(order["placed_at"] + LOCAL).date()] += amount
            days = sorted(day_sums)
            row.update(first_order_at=min(o["placed_at"] for o in mine), last_order_at=max(o["placed_at"] for o in mine),
                       frequency=len(days) - 1, recency_days=(days[-1] - days[0]).days,
                       T_days=((as_of + LOCAL).date() - days[0]).days,
                       monetary_value_cny=(sum(day_sums[d] for d in days[1:]) / (len(days) - 1)) if len(days) > 1 else 0.0,
                       average_order_value_cny=sum(amounts) / len(mine))
            for c in CATEGORIES:
                row[f"category_share_{c}"] = sum(o["category"] == c for o in mine) / len(mine)
            for p in PAYMENT_INSTITUTIONS:
                row[f"payment_share_{p}"] = sum(o["payment_institution"] == p for o in mine) / len(mine)
        else:
            for name in ("first_order_at", "last_order_at", "frequency", "recency_days", "T_days",
                         "monetary_value_cny", "average_order_value_cny",
                         *(f"category_share_{c}" for c in CATEGORIES),
                         *(f"payment_share_{p}" for p in PAYMENT_INSTITUTIONS)):
                row[name] = None
        shipped = [w for w in waybills if w["person_id"] in members and w["created_at"] <= as_of]
        row["waybills"] = len(shipped)
        row["weight_kg_total"] = sum(w["weight_kg"] for w in shipped)
        row["top_origin_province"] = _mode([w["origin_province"] for w in shipped])
        row["top_destination_province"] = _mode([w["destination_province"] for w in shipped])
        row["destination_provinces"] = len({w["destination_province"] for w in shipped} - {None})
        if shipped:
            for s in SERVICE_TYPES:
                row[f"service_share_{s}"] = sum(w["service_type"] == s for w in shipped) / len(shipped)
            row["cross_border_share"] = sum(w["cross_border"] for w in shipped) / len(shipped)
            row["weight_kg_mean"] = row["weight_kg_total"] / len(shipped)
            row["weight_kg_max"] = max(w["weight_kg"] for w in shipped)
        else:
            for name in (*(f"service_share_{s}" for s in SERVICE_TYPES), "cross_border_share",
                         "weight_kg_mean", "weight_kg_max"):
                row[name] = None
        linked = sorted(d["device_id"] for d in devices if d["identity_id"] == identity)
        row["device_ids"] = linked
        row["device_count"] = len(linked)
        for t in DEVICE_TYPES:
            row[f"device_count_{t}"] = sum(d["device_type"] == t for d in devices if d["identity_id"] == identity)
        seen = [e for e in events if e["person_id"] in members and e["event_at"] <= as_of]
        row["events"] = len(seen)
        hours = [0] * 24
        for e in seen:
            hours[(e["event_at"] + LOCAL).hour] += 1
        row["active_hour_counts"] = hours
        result[identity] = row
    return result


def assert_matches(table: pa.Table, expected: dict) -> None:
    assert table.schema.equals(portrait_schema(), check_metadata=True)
    rows = table.to_pylist()
    assert [r["person_id"] for r in rows] == sorted(expected)
    for row in rows:
        want = expected[row["person_id"]]
        assert row["as_of"] == AS_OF
        for name, value in want.items():
            got = row[name]
            if isinstance(value, float) and got is not None:
                assert got == pytest.approx(value, rel=1e-9, abs=1e-9), name
            else:
                assert got == value, name


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_features_match_the_plain_reference(history):
    assert_matches(portraits(*_tables(*history), as_of=AS_OF), reference(*history))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.integers(2, 4), st.integers(1, 7))
def test_partitions_and_batches_do_not_change_a_feature(tmp_path_factory, history, partitions, batch_rows):
    persons, devices, orders, waybills, events = _tables(*history)
    builder = PortraitBuilder(persons, devices, as_of=AS_OF, partitions=partitions,
                              spill_dir=tmp_path_factory.mktemp("spill"))
    for table, add in ((orders, builder.add_orders), (waybills, builder.add_waybills),
                       (events, builder.add_device_events)):
        for batch in table.to_batches(max_chunksize=batch_rows):
            add(batch)
    parts = list(builder.tables())
    assert len(parts) == partitions
    whole = pa.concat_tables(parts).sort_by("person_id")
    assert_matches(whole, reference(*history))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_rows_attributed_to_identities_give_the_same_features(history):
    """The portrait stage's engine rows carry the identity instead of the person (a smaller shuffle); rows of
    strangers get no identity and never count."""
    persons, devices, orders, waybills, events = _tables(*history)
    identity_of = dict(zip(persons.column("person_id").to_pylist(), persons.column("identity_id").to_pylist(),
                           strict=True))

    def by_identity(table: pa.Table) -> pa.Table:
        identity = pa.array([identity_of.get(p, "nobody") for p in table.column("person_id").to_pylist()],
                            pa.string())
        return table.drop_columns(["person_id"]).append_column("identity_id", identity)

    builder = PortraitBuilder(persons, devices, as_of=AS_OF)
    builder.add_orders(by_identity(orders))
    builder.add_waybills(by_identity(waybills))
    builder.add_device_events(by_identity(events))
    assert_matches(next(builder.tables()), reference(*history))


def test_empty_history_single_order_and_many_devices():
    persons = [{"person_id": p, "identity_id": p, "dnd": False, "non_personalized": False,
                "cross_device_sync": True} for p in ("a", "b", "c")]
    devices = [{"device_id": f"dev{k:02d}", "identity_id": "c", "device_type": DEVICE_TYPES[k % 4]} for k in range(40)]
    orders = [{"person_id": "b", "placed_at": AS_OF - dt.timedelta(days=3), "amount": 10.0, "currency": "USD",
               "payment_institution": "alipay", "category": "books"}]
    table = portraits(*_tables(persons, devices, orders, [], []), as_of=AS_OF)
    a, b, c = table.to_pylist()
    assert (a["orders"], a["frequency"], a["monetary_value_cny"], a["total_spend_cny"]) == (0, None, None, 0.0)
    assert a["category_share_books"] is None and a["active_hour_counts"] == [0] * 24
    assert (b["frequency"], b["recency_days"], b["T_days"], b["monetary_value_cny"]) == (0, 0, 3, 0.0)
    assert b["total_spend_cny"] == pytest.approx(71.0) and b["category_share_books"] == 1.0
    assert c["device_count"] == 40 and c["device_count_watch"] == 10 and len(c["device_ids"]) == 40


def test_rows_of_persons_not_eligible_never_count():
    persons = [{"person_id": "a", "identity_id": "a", "dnd": False, "non_personalized": False,
                "cross_device_sync": False}]
    orders = [{"person_id": who, "placed_at": AS_OF - dt.timedelta(days=1), "amount": 5.0, "currency": "CNY",
               "payment_institution": "alipay", "category": "books"} for who in ("a", "stranger", "stranger")]
    table = portraits(*_tables(persons, [], orders, [], []), as_of=AS_OF)
    assert table.column("person_id").to_pylist() == ["a"]
    assert table.column("orders").to_pylist() == [1]


def test_the_dictionary_documents_every_column():
    names = [row["name"] for row in data_dictionary()]
    assert names == portrait_schema().names == [f.name for f in FEATURES]
    assert len(set(names)) == len(names)
    for field in portrait_schema():
        assert field.metadata[b"unit"] and field.metadata[b"sources"] and field.metadata[b"description"]


def _one_order(**changes):
    row = {"person_id": "a", "placed_at": AS_OF, "amount": 1.0, "currency": "CNY",
           "payment_institution": "alipay", "category": "books"}
    row.update(changes)
    return row


PERSON_A = [{"person_id": "a", "identity_id": "a", "dnd": False, "non_personalized": False,
             "cross_device_sync": True}]


@pytest.mark.parametrize(("change", "message"), [
    ({"category": "weapons"}, r"orders.category row 0 holds 'weapons', not one of"),
    ({"currency": "XXX"}, r"orders.currency row 0 holds 'XXX'"),
    ({"amount": float("nan")}, r"orders.amount holds a null, NaN or infinite amount"),
])
def test_bad_order_rows_are_named(change, message):
    persons, devices, orders, waybills, events = _tables(PERSON_A, [], [_one_order(**change)], [], [])
    builder = PortraitBuilder(persons, devices, as_of=AS_OF)
    with pytest.raises(ValueError, match=message):
        builder.add_orders(orders)


def test_bad_parameters_are_refused():
    persons, devices, orders, *_ = _tables(PERSON_A, [], [_one_order()], [], [])
    with pytest.raises(ValueError, match="as_of must carry a time zone"):
        PortraitBuilder(persons, devices, as_of=dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="missing USD"):
        PortraitBuilder(persons, devices, as_of=AS_OF, cny_per_unit={c: 1.0 for c in CURRENCIES if c != "USD"})
    with pytest.raises(ValueError, match="invalid EUR"):
        PortraitBuilder(persons, devices, as_of=AS_OF, cny_per_unit={**DEFAULT_CNY_PER_UNIT, "EUR": float("nan")})
    with pytest.raises(ValueError, match="pass spill_dir"):
        PortraitBuilder(persons, devices, as_of=AS_OF, partitions=2)
    with pytest.raises(ValueError, match="persons lacks column.s. cross_device_sync"):
        PortraitBuilder(persons.drop_columns(["cross_device_sync"]), devices, as_of=AS_OF)
    with pytest.raises(ValueError, match="orders lacks column.s. amount"):
        PortraitBuilder(persons, devices, as_of=AS_OF).add_orders(orders.drop_columns(["amount"]))
    stray = pa.table({"device_id": ["d"], "identity_id": ["nobody"], "device_type": ["phone"]})
    with pytest.raises(ValueError, match="identity that no person in persons has"):
        PortraitBuilder(persons, stray, as_of=AS_OF)


def test_days_are_local_calendar_days():
    # 15:59 and 16:01 UTC are 23:59 and 00:01 in UTC+8: two purchase days
    night = dt.datetime(2026, 10, 20, 15, 59, tzinfo=UTC)
    orders = [_one_order(placed_at=night, amount=1.0), _one_order(placed_at=night + dt.timedelta(minutes=2), amount=3.0)]
    row = portraits(*_tables(PERSON_A, [], orders, [], []), as_of=AS_OF).to_pylist()[0]
    assert (row["frequency"], row["recency_days"], row["monetary_value_cny"]) == (1, 1, 3.0)
    assert np.argmax(row["active_hour_counts"]) == 0 or row["events"] == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.randoms(use_true_random=False))
def test_row_order_does_not_change_a_single_bit(history, random):
    persons, devices, orders, waybills, events = history
    shuffled = [random.sample(rows, len(rows)) for rows in (orders, waybills, events)]
    first = portraits(*_tables(persons, devices, orders, waybills, events), as_of=AS_OF)
    second = portraits(*_tables(persons, devices, *shuffled), as_of=AS_OF)
    assert first.equals(second)  # so every engine, whatever order it delivers rows in, writes the same portraits


def test_the_portrait_stage_refuses_a_naive_as_of_before_reading(tmp_path):
    from pipelines.portraits import write_portraits
    from pipelines.workspace import Workspace

    eligible = pa.table({"person_id": ["p"], "dnd": [False], "non_personalized": [False]})
    with pytest.raises(ValueError, match=r"as_of 2026-11-01 00:00:00 has no time zone; pass an aware datetime in UTC"):
        write_portraits(Workspace(tmp_path / "ws"), eligible, as_of=dt.datetime(2026, 11, 1))
    assert not (tmp_path / "ws" / "outputs").exists()
