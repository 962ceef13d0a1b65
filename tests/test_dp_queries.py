"""The queries analysts ask, checked on values: several group columns, key sets, private selection of
several columns, filters and derived columns before bounding, public joins, quantiles and histograms per
group, the confidence level, and the accuracy-to-epsilon helper. Each refused query charges nothing.

Values are checked exactly where the noise cannot move them: those releases cost an epsilon so large
(1e6) that OpenDP's discrete noise is zero except with probability below 1e-100, and the data keeps
every person within the bounds, so the bounded truth is the plain pandas answer.
"""

from __future__ import annotations

import math

import numpy as np
import opendp.prelude as opendp
import pandas as pd
import pyarrow as pa
import pytest

from dp import BudgetLedger, KeySet, PrivacyParameterError, PrivateSession, QueryPlan
from dp._mechanisms import half_width as half_width_at
from dp._totals import bounded_totals
from dp.plan import BoundedTotals, _mean_interval
from profiling.errors import PortraitError

REGIONS = ["north", "south", "east"]
CHANNELS = ["app", "web"]
EXACT = 1e6          # epsilon at which OpenDP's discrete noise is zero in practice (scale <= 1e-2)


@pytest.fixture(scope="module")
def orders() -> pd.DataFrame:
    """300 persons with 1 to 4 orders each; integer amounts so sums are exact at resolution 1."""
    rng = np.random.default_rng(7)
    rows_per_person = rng.integers(1, 5, 300)
    persons = np.repeat([f"p{i:03d}" for i in range(300)], rows_per_person)
    n = len(persons)
    return pd.DataFrame({"person_id": persons, "region": rng.choice(REGIONS, n), "channel": rng.choice(CHANNELS, n),
                         "item_id": rng.choice([f"i{i}" for i in range(5)], n),
                         "amount": rng.integers(1, 100, n).astype(float),
                         "discount": rng.integers(0, 10, n).astype(float)})


@pytest.fixture
def ledger(tmp_path) -> BudgetLedger:
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", epsilon=1e9, delta=1e-3, set_by="reviewer")
    return ledger


def _session(frame, ledger) -> PrivateSession:
    return PrivateSession(frame, dataset="orders", ledger=ledger, purpose="product improvement", analyst="ana")


def _loose(query):
    """Bounds no person of the fixture exceeds: 6 groups, 10 rows in each."""
    return query.bound(max_partitions=6, max_rows_per_partition=10)


def test_group_by_several_columns_with_the_cross_product_of_their_keys(orders, ledger):
    keys = KeySet.from_dict({"region": [*REGIONS, "west"]}) * KeySet.from_dict({"channel": CHANNELS})
    released = _loose(_session(orders, ledger).query(epsilon=EXACT).group_by(["region", "channel"], keys=keys)
                      ).count().sum("amount", bounds=(0, 100), resolution=1).release()
    truth = orders.groupby(["region", "channel"]).agg(count=("amount", "size"), amount_sum=("amount", "sum"))
    expected = truth.reindex(pd.MultiIndex.from_tuples(keys.rows), fill_value=0)
    assert list(released.columns) == ["region", "channel", "count", "count_ci95", "amount_sum", "amount_sum_ci95"]
    assert list(zip(released["region"], released["channel"])) == list(keys.rows)     # west has rows of zeros
    assert released["count"].tolist() == expected["count"].tolist()
    assert released["amount_sum"].tolist() == expected["amount_sum"].tolist()
    assert ledger.spent("orders")["epsilon"] == pytest.approx(EXACT)


def test_keys_from_a_public_table_and_from_a_frame_in_any_column_order(orders, ledger):
    region_codes = pa.table({"code": [1, 2, 3], "region": ["north", "south", "east"]})      # a public table
    keys = KeySet.from_frame(region_codes, ["region"]) * KeySet.from_dict({"channel": CHANNELS})
    session = _session(orders, ledger)
    by_key_set = _loose(session.query(epsilon=EXACT).group_by(["channel", "region"], keys=keys)).count().release()
    assert list(by_key_set.columns[:2]) == ["channel", "region"]
    frame_keys = keys.to_frame()[["channel", "region"]].iloc[::-1]     # a frame's distinct rows, in its order
    by_frame = _loose(session.query(epsilon=EXACT).group_by(["region", "channel"], keys=frame_keys)).count().release()
    truth = orders.groupby(["channel", "region"]).size()
    for released in (by_key_set, by_frame):
        got = released.set_index(["channel", "region"])["count"]
        assert got.sort_index().tolist() == truth.sort_index().tolist()
    assert list(zip(by_frame["region"], by_frame["channel"])) == [(r, c) for c, r in
                                                                  frame_keys.itertuples(index=False)]


def test_private_key_selection_on_several_columns_drops_rare_groups(orders, ledger):
    rare = pd.DataFrame({"person_id": ["lonely"], "region": ["west"], "channel": ["app"], "item_id": ["i0"],
                         "amount": [5.0], "discount": [0.0]})
    released = _loose(_session(pd.concat([orders, rare], ignore_index=True), ledger)
                      .query(epsilon=EXACT, delta=1e-6).group_by(["region", "channel"])).count().release()
    truth = orders.groupby(["region", "channel"]).size()
    assert list(zip(released["region"], released["channel"])) == sorted(truth.index)   # no ("west", "app")
    assert released["count"].tolist() == truth.sort_index().tolist()
    assert "Laplace threshold" in {c["mechanism"] for c in ledger.charges()}


def test_where_and_derived_columns_run_row_by_row_before_bounding(orders, ledger):
    query = (_session(orders, ledger).query(epsilon=EXACT).with_column("net", "amount - discount")
             .where("channel == 'app' and net >= 20").group_by("region", keys=REGIONS))
    released = _loose(query).count().sum("net", bounds=(0, 100), resolution=1).release()
    kept = orders.assign(net=orders["amount"] - orders["discount"]).query("channel == 'app' and net >= 20")
    truth = kept.groupby("region")["net"].agg(["size", "sum"]).reindex(REGIONS)
    assert released["count"].tolist() == truth["size"].tolist()
    assert released["net_sum"].tolist() == truth["sum"].tolist()
    assert "where channel == 'app' and net >= 20" in ledger.charges()[0]["query"]


def test_bounding_after_a_filter_keeps_the_first_rows_that_pass(ledger):
    # one person, three rows in stored order; the filter drops the first, so one row per person keeps the second
    frame = pd.DataFrame({"person_id": ["a", "a", "a"], "region": ["north"] * 3, "amount": [90.0, 10.0, 30.0]})
    released = (_session(frame, ledger).query(epsilon=EXACT).where("amount < 50").group_by("region", keys=["north"])
                .bound(max_rows_per_partition=1).sum("amount", bounds=(0, 100), resolution=1).release())
    assert released["amount_sum"].tolist() == [10.0]


def test_join_with_a_public_catalogue_on_its_key(orders, ledger):
    catalogue = pd.DataFrame({"item_id": [f"i{i}" for i in range(5)], "category": ["books", "books", "music",
                                                                                    "games", "music"],
                              "list_price": [10.0, 20.0, 30.0, 40.0, 50.0]})
    categories = KeySet.from_frame(catalogue, ["category"])
    released = _loose(_session(orders, ledger).query(epsilon=EXACT).join_public(catalogue, on="item_id")
                      .group_by("category", keys=categories)).count().sum("list_price", bounds=(0, 100),
                                                                              resolution=1).release()
    truth = orders.merge(catalogue, on="item_id").groupby("category")["list_price"].agg(["size", "sum"])
    assert released["category"].tolist() == ["books", "music", "games"]
    assert released["count"].tolist() == truth["size"].reindex(released["category"]).tolist()
    assert released["list_price_sum"].tolist() == truth["sum"].reindex(released["category"]).tolist()


def test_left_join_keeps_rows_without_a_match(ledger):
    frame = pd.DataFrame({"person_id": ["a", "b", "c"], "region_code": [1, 2, 9]})
    codes = pd.DataFrame({"region_code": [1, 2], "region": ["north", "south"]})
    session = _session(frame, ledger)
    left = (session.query(epsilon=EXACT).join_public(codes, on="region_code", how="left")
            .where("is_null(region)").count().release())
    inner = session.query(epsilon=EXACT).join_public(codes, on="region_code").count().release()
    assert left["count"].tolist() == [1.0] and inner["count"].tolist() == [2.0]


def test_quantiles_per_group_track_each_group(ledger):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"person_id": [f"p{i}" for i in range(900)], "region": np.repeat(REGIONS, 300),
                          "amount": np.concatenate([rng.uniform(0, 20, 300), rng.uniform(40, 60, 300),
                                                    rng.uniform(80, 100, 300)])})
    released = (_session(frame, ledger).query(epsilon=EXACT).group_by("region", keys=REGIONS)
                .quantile("amount", 0.5, bounds=(0, 100), candidates=101).release())
    truth = frame.groupby("region")["amount"].median().reindex(REGIONS)
    assert np.abs(released["amount_q50"].to_numpy() - truth.to_numpy()).max() <= 1.0    # one grid step
    assert list(released.columns) == ["region", "amount_q50", "amount_q50_ci95"]


def test_histogram_per_group_counts_each_bin_of_each_group(orders, ledger):
    edges = [0, 25, 50, 100]
    released = _loose(_session(orders, ledger).query(epsilon=EXACT).group_by("channel", keys=CHANNELS)
                      .histogram("amount", edges)).count().release()
    bins = pd.cut(orders["amount"], edges, right=False, labels=["[0, 25)", "[25, 50)", "[50, 100)"])
    truth = orders.groupby(["channel", bins], observed=False).size()
    assert list(zip(released["channel"], released["amount"])) == list(truth.index)
    assert released["count"].tolist() == truth.tolist()


def test_confidence_level_sets_the_half_widths_and_their_columns(orders, ledger):
    session = _session(orders, ledger)
    by_level = {}
    for confidence in (0.9, 0.95, 0.99):
        query = session.query(epsilon=1.0, confidence=confidence).group_by("region", keys=REGIONS).count()
        scale = float(query.explain()["noise_scale"].iloc[0])
        released = query.release()
        column = {0.9: "count_ci90", 0.95: "count_ci95", 0.99: "count_ci99"}[confidence]
        assert released[column].tolist() == [opendp.discrete_laplacian_scale_to_accuracy(scale, 1 - confidence)] * 3
        by_level[confidence] = released[column].iloc[0]
    assert by_level[0.9] < by_level[0.95] < by_level[0.99]


def test_confidence_intervals_cover_at_their_level(ledger):
    """Coverage of the 80% interval over 400 noisy counts (binomial: within 4 standard deviations)."""
    frame = pd.DataFrame({"person_id": [f"p{i}" for i in range(400)], "k": np.arange(400) % 400})
    released = (_session(frame, ledger).query(epsilon=0.5, confidence=0.8)
                .group_by("k", keys=list(range(400))).count().release())
    covered = int((np.abs(released["count"] - 1) <= released["count_ci80"]).sum())
    assert abs(covered - 0.8 * 400) <= 4 * math.sqrt(400 * 0.8 * 0.2)


@pytest.mark.parametrize("build, half_width, aggregate", [
    (lambda q: q.group_by("region", keys=REGIONS).bound(max_partitions=2, max_rows_per_partition=3).count(),
     25.0, "count"),
    (lambda q: q.sum("amount", bounds=(0, 100)).bound(max_rows_per_partition=2), 500.0, "amount_sum"),
    (lambda q: q.group_by("region", keys=REGIONS).quantile("amount", 0.5, bounds=(0, 100)), 40.0, "amount_q50"),
    (lambda q: q.group_by("region").count(), 30.0, "count"),                       # private selection
])
def test_epsilon_for_is_the_smallest_epsilon_meeting_the_half_width(orders, ledger, build, half_width, aggregate):
    session = _session(orders, ledger)
    query = build(session.query(epsilon=1.0, delta=1e-6))
    epsilon = session.epsilon_for(half_width=half_width, confidence=0.9, query=query)
    assert ledger.charges() == []

    def released_half_width(eps: float) -> float:
        """The half-width at 90% the release at ``eps`` would report (from its compiled measurement)."""
        compiled = build(session.query(epsilon=eps, delta=1e-6, confidence=0.9)).compile()
        measurement = next(m for m in compiled.measurements if m.name.split(":")[0] == aggregate)
        unit = 0.01 if aggregate == "amount_sum" else 1.0
        return half_width_at(measurement.noise, 0.1) * unit

    assert half_width * (1 - 1e-6) <= released_half_width(epsilon) <= half_width
    assert released_half_width(epsilon * (1 - 1e-6)) > half_width
    assert ledger.charges() == []


def test_epsilon_for_a_count_inverts_opendps_accuracy_formula(orders, ledger):
    session = _session(orders, ledger)
    query = session.query(epsilon=1.0).group_by("region", keys=REGIONS).bound(max_partitions=3).count()
    scale = opendp.accuracy_to_discrete_laplacian_scale(12.0, 0.05)
    expected = opendp.m.make_laplace(opendp.vector_domain(opendp.atom_domain(T=int)), opendp.l1_distance(T=int),
                                     scale=scale).map(3)
    assert session.epsilon_for(half_width=12.0, query=query) == pytest.approx(expected, rel=2e-8)
    released = session.query(epsilon=session.epsilon_for(half_width=12.0, query=query)).group_by(
        "region", keys=REGIONS).bound(max_partitions=3).count().release()
    assert 12.0 * (1 - 1e-7) <= released["count_ci95"].iloc[0] <= 12.0


def test_epsilon_for_several_aggregates_takes_the_most_demanding(orders, ledger):
    session = _session(orders, ledger)
    query = session.query(epsilon=1.0).count().sum("amount", bounds=(0, 100))
    both = session.epsilon_for(half_width={"count": 5.0, "amount_sum": 300.0}, query=query)
    assert both == max(session.epsilon_for(half_width={"count": 5.0}, query=query),
                       session.epsilon_for(half_width={"amount_sum": 300.0}, query=query))
    assert ledger.charges() == []


@pytest.mark.parametrize("budget", ["approximate", "zCDP"])
def test_epsilon_for_gaussian_noise_meets_the_half_width_at_the_least_cost(orders, tmp_path, budget):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", epsilon=1e3, delta=1e-3)
    session = _session(orders, ledger)
    build = lambda eps: (session.query(epsilon=eps, delta=1e-6, mechanism="gaussian", confidence=0.9)
                         .group_by("region", keys=REGIONS).bound(max_partitions=3, max_rows_per_partition=2).count())
    if budget == "zCDP":
        ledger.set_budget("waybills", rho=1.0)
        rho_session = PrivateSession(orders, dataset="waybills", ledger=ledger, purpose="test")
        with pytest.raises(PrivacyParameterError, match="kept in rho"):
            rho_session.epsilon_for(half_width=9.0, query=rho_session.query(rho=0.1).count())
        return
    epsilon = session.epsilon_for(half_width=9.0, query=build(1.0))
    noise = lambda eps: build(eps).compile().measurements[0].noise
    assert half_width_at(noise(epsilon), 0.1) <= 9.0
    assert half_width_at(noise(epsilon * (1 - 1e-6)), 0.1) > 9.0
    assert ledger.charges() == []


def test_explain_answers_when_the_budget_is_spent_and_release_refuses(orders, ledger):
    session = _session(orders, ledger)
    session.query(epsilon=1e9 - 1).count().release()
    query = session.query(epsilon=2.0).group_by("region", keys=REGIONS).count()
    assert query.explain()["epsilon"].tolist() == [pytest.approx(2.0)]
    with pytest.raises(ValueError, match="remaining"):
        query.release()
    assert len(ledger.charges()) == 1


def test_the_privacy_unit_is_the_sessions_choice(orders, ledger):
    """Bounding counts the plan's unit: two accounts of one identity are one unit."""
    frame = pd.DataFrame({"person_id": ["acc1", "acc2", "acc3"], "identity_id": ["id1", "id1", "id2"],
                          "region": ["north"] * 3})
    for unit, expected in (("person_id", 3), ("identity_id", 2)):
        plan = QueryPlan.start(columns={"person_id": "text", "identity_id": "text", "region": "text"},
                               privacy_unit=unit, epsilon=1.0).group_by("region", keys=["north"]).count()
        assert bounded_totals(frame, plan).counts.tolist() == [expected]
        assert f"per {unit} at most" in plan.describe()
    device_plan = QueryPlan.start(columns={"device_id": "text", "region": "text"}, privacy_unit="device_id",
                                  epsilon=1.0).count()       # a device is less than a person: refused
    with pytest.raises(PrivacyParameterError, match="registered with privacy unit 'person_id', not 'device_id'"):
        device_plan.compile(ledger=ledger, dataset="orders", purpose="test")
    assert ledger.charges() == []


def test_keys_and_joins_from_a_table_of_persons_are_refused(orders, ledger):
    """An Arrow table read from the analytics zone names its table; a table of persons' rows is not public."""
    def read(name: bytes, columns: list[str]) -> pa.Table:
        rows = orders[["item_id", "region"]].drop_duplicates("item_id").set_axis(columns, axis=1)
        return pa.Table.from_pandas(rows, preserve_index=False).replace_schema_metadata({b"table": name})

    session = _session(orders, ledger)
    keyed = session.query(epsilon=1).group_by(["region", "channel"], keys=KeySet.from_frame(
        read(b"orders", ["item_id", "region"]), ["region"]) * KeySet.from_dict({"channel": CHANNELS})).count()
    joined = session.query(epsilon=1).join_public(read(b"orders", ["item_id", "zone"]), on="item_id").count()
    catalogue = read(b"catalogue", ["item_id", "shelf"])
    for query in (keyed, joined):     # the product keeps where its keys came from
        with pytest.raises(PrivacyParameterError, match="table 'orders' holds persons' rows"):
            query.release()
    assert ledger.charges() == []
    released = (session.query(epsilon=EXACT).join_public(catalogue, on="item_id").bound(max_rows_per_partition=10)
                .count().release())                                                              # public: fine
    assert released["count"].tolist() == [float(len(orders))]


def test_a_compiled_plan_releases_totals_computed_elsewhere(ledger):
    plan = (QueryPlan.start(columns=pa.schema([("person_id", pa.string()), ("item_id", pa.string())]),
                            privacy_unit="person_id", epsilon=EXACT).group_by("item_id", keys=["a", "b", "c"])
            .count())
    compiled = plan.compile(ledger=ledger, dataset="orders", purpose="test")
    assert ledger.charges() == [] and list(compiled.explain()["aggregate"]) == ["count"]
    released = compiled.release(BoundedTotals(counts=np.array([5, 0, 12])))
    assert released["count"].tolist() == [5.0, 0.0, 12.0]
    assert len(ledger.charges()) == 1 and ledger.charges()[0]["released_at"]


# refusals: each is caught before the ledger is touched ---------------------------------------------------------

CATALOGUE = pd.DataFrame({"item_id": ["i0", "i1"], "category": ["books", "music"]})
REFUSED = {
    "unknown column in where": (lambda s: s.query(epsilon=1).where("price > 3").count(), "no column 'price'"),
    "where that is not true/false": (lambda s: s.query(epsilon=1).where("amount + 1").count(), "not true/false"),
    "an aggregate inside where": (lambda s: s.query(epsilon=1).where("amount > amount.mean()").count(),
                                  "call of amount.mean is not allowed"),
    "an attribute inside where": (lambda s: s.query(epsilon=1).where("amount.real > 0").count(),
                                  "attribute is not allowed"),
    "a call inside a derived column": (lambda s: s.query(epsilon=1).with_column("m", "max(amount, 3)").count(),
                                       "call of max is not allowed"),
    "text compared with a number": (lambda s: s.query(epsilon=1).where("region == 3").count(), "is compared with"),
    "derived column over an existing one": (lambda s: s.query(epsilon=1).with_column("amount", "discount").count(),
                                            "already has a column 'amount'"),
    "derived column used before it exists": (lambda s: s.query(epsilon=1).where("net > 0").with_column(
        "net", "amount - discount").count(), "no column 'net'"),
    "public table with a key twice": (lambda s: s.query(epsilon=1).join_public(
        pd.concat([CATALOGUE, CATALOGUE]), on="item_id").count(), "several rows for a key"),
    "join on the privacy unit": (lambda s: s.query(epsilon=1).join_public(
        pd.DataFrame({"person_id": ["p000"], "age": [40]}), on="person_id").count(), "privacy unit"),
    "join that would overwrite a column": (lambda s: s.query(epsilon=1).join_public(
        CATALOGUE.assign(region="x"), on="item_id").count(), "exist on both sides"),
    "join key of another kind": (lambda s: s.query(epsilon=1).join_public(
        pd.DataFrame({"item_id": [1, 2], "category": ["a", "b"]}), on="item_id").count(), "holds text values"),
    "keys for other columns": (lambda s: s.query(epsilon=1).group_by(["region", "channel"], keys=KeySet.from_dict(
        {"region": REGIONS})).count(), "give keys for exactly the group_by columns"),
    "keys of the wrong type in one column": (lambda s: s.query(epsilon=1).group_by(
        ["region", "channel"], keys={"region": REGIONS, "channel": [1, 2]}).count(), "must be text values"),
    "a missing key": (lambda s: s.query(epsilon=1).group_by("region", keys=["north", None]).count(), "is missing"),
    "cross product over a shared column": (lambda s: KeySet.from_dict({"region": REGIONS}) * KeySet.from_dict(
        {"region": ["west"]}), "both key sets have column"),
    "private selection without delta": (lambda s: s.query(epsilon=1).group_by(["region", "channel"]).count(),
                                        "need delta > 0"),
    "two histograms": (lambda s: s.query(epsilon=1).histogram("amount", [0, 1]).histogram("discount", [0, 1]),
                       "one per query"),
    "histogram of a group_by column": (lambda s: s.query(epsilon=1).group_by("amount", keys=[1.0]).histogram(
        "amount", [0, 1]), "group_by column"),
    "confidence of one": (lambda s: s.query(epsilon=1, confidence=1.0).count(), "strictly between 0 and 1"),
    "confidence below one half": (lambda s: s.query(epsilon=1, confidence=0.3).count(), "below 0.5"),
    "NaN confidence": (lambda s: s.query(epsilon=1, confidence=float("nan")).count(), "confidence is NaN"),
    "epsilon_for a mean": (lambda s: s.epsilon_for(half_width=1.0, query=s.query(epsilon=1).mean(
        "amount", bounds=(0, 100))), "depends on its noisy count"),
    "epsilon_for an unknown aggregate": (lambda s: s.epsilon_for(half_width={"amount_sum": 1.0}, query=s.query(
        epsilon=1).count()), "no aggregate 'amount_sum'"),
    "epsilon_for a NaN half-width": (lambda s: s.epsilon_for(half_width=float("nan"), query=s.query(
        epsilon=1).count()), "upper half_width is NaN"),
    "epsilon_for a zero half-width": (lambda s: s.epsilon_for(half_width=0.0, query=s.query(epsilon=1).count()),
                                      "inverted or empty"),
    "epsilon_for two aggregates, one number": (lambda s: s.epsilon_for(half_width=3.0, query=s.query(
        epsilon=1).count().sum("amount", bounds=(0, 1))), "pass half_width="),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_query_charges_nothing(orders, ledger, case):
    build, message = REFUSED[case]
    session = _session(orders, ledger)
    with pytest.raises((PortraitError, PrivacyParameterError), match=message) as refused:
        result = build(session)
        if hasattr(result, "release"):
            result.release()
    assert "\n" not in str(refused.value)
    assert ledger.charges() == []
    assert ledger.spent("orders") == {"epsilon": 0.0, "delta": 0.0, "rho": 0.0}


def test_epsilon_for_under_a_rho_budget_is_refused(orders, tmp_path):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", rho=1.0)
    session = _session(orders, ledger)
    with pytest.raises(PrivacyParameterError, match="kept in rho"):
        session.epsilon_for(half_width=3.0, query=session.query(rho=0.1).count())
    assert ledger.charges() == []


def test_a_mean_whose_noise_overshot_its_bounds_gets_the_whole_range_not_a_zero_width_interval():
    # a noisy sum so far below 0 that every corner of the interval clips to the lower bound
    estimate, half = _mean_interval(np.array([-50.0, 40.0]), np.array([100.0, 100.0]), (0.0, 1.0),
                                    np.array([10.0, 10.0]), np.array([5.0, 5.0]))
    assert estimate.tolist() == [0.0, 0.4]
    assert half[0] == 1.0 and 0 < half[1] < 1


def test_half_widths_at_a_very_large_epsilon_are_zero_not_minus_infinity(orders, ledger):
    released = _loose(_session(orders, ledger).query(epsilon=EXACT).group_by("region", keys=REGIONS)).count().release()
    assert released["count_ci95"].tolist() == [0.0] * len(REGIONS)
