"""The recommendation stage on a small hand-built analytics zone."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from pipelines.manifest import write_manifests
from pipelines.recommend import (
    CATALOGUE_RANKING,
    MARKETING_AUDIENCE_SCHEMA,
    RANKING_KEY,
    RECOMMENDATIONS_SCHEMA,
    non_personalized_ranking,
    write_recommendations,
)
from pipelines.workspace import Workspace
from profiling.errors import WorkspaceError
from profiling.factors import ImplicitALS
from profiling.scoring import eligibility_by_province

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
UTC = pa.timestamp("us", tz="UTC")


def listing_days(n):
    """Days before AS_OF item n was listed: neither the item order nor the buyers' order."""
    return 400 - (n * 7) % 24


def build_zone(root, orders_of=None, province_of=None):
    """40 persons in two communities (p00..p19 buy items i00..i09, p20..p39 items i10..i19), 24 items.

    i20 is inactive, i21 is listed after AS_OF, i22 is served only in province 11, i23 only in 44.
    Persons with an even number live in province 11, odd ones in 44, p39 has no province
    (``province_of(person)`` overrides when it returns a string). Items are listed ``listing_days``
    before AS_OF.
    """
    rng = np.random.default_rng(5)
    items = [f"i{n:02d}" for n in range(24)]
    served = [None] * 22 + [["11"], ["44"]]
    catalogue = pa.table({
        "item_id": items, "kind": ["commodity"] * 24, "category": ["food"] * 24, "title": items,
        "price": [1.0] * 24, "served_provinces": pa.array(served, pa.list_(pa.string())),
        "active": [n != 20 for n in range(24)],
        "listed_at": pa.array([AS_OF - dt.timedelta(days=listing_days(n)) for n in range(21)]
                              + [AS_OF + dt.timedelta(days=1)]
                              + [AS_OF - dt.timedelta(days=listing_days(n)) for n in (22, 23)], UTC),
    })
    persons = [f"p{n:02d}" for n in range(40)]
    accounts = pa.table({"person_id": persons, "age_band": ["30-39"] * 40,
                         "province": [(province_of and province_of(p)) or
                                      (None if n == 39 else ("11" if n % 2 == 0 else "44"))
                                      for n, p in enumerate(persons)]})
    rows = {"order_id": [], "person_id": [], "placed_at": [], "items": []}
    for n, person in enumerate(persons):
        base = 0 if n < 20 else 10
        chosen = [[items[base + i] for i in rng.choice(10, 2, replace=False)] for _ in range(3)]
        ages = rng.integers(1, 300, 5)  # drawn for everybody, so other persons' rows never depend on orders_of
        if orders_of and orders_of(person) is not None:
            chosen = orders_of(person)
        for order, age in zip(chosen, ages, strict=False):
            rows["order_id"].append(f"o{len(rows['order_id'])}")
            rows["person_id"].append(person)
            rows["placed_at"].append(AS_OF - dt.timedelta(days=int(age)))
            rows["items"].append(order)
    # A purchase after AS_OF must be ignored.
    rows["order_id"].append("late")
    rows["person_id"].append("p00")
    rows["placed_at"].append(AS_OF + dt.timedelta(days=3))
    rows["items"].append(["i19"])
    orders = pa.table({**rows, "amount": [1.0] * len(rows["order_id"]), "currency": ["CNY"] * len(rows["order_id"])})
    orders = orders.set_column(2, "placed_at", pa.array(rows["placed_at"], UTC))
    for name, table in (("catalogue", catalogue), ("accounts", accounts), ("orders", orders)):
        folder = root / "pseudonymized" / name
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / "part-0.parquet")
        write_manifests(folder)  # as Workspace.publish does
    return Workspace(root)


def eligible_frame():
    """p00..p34 eligible; p30 DND; p31, p32 refused personalization; p35..p39 not eligible."""
    persons = [f"p{n:02d}" for n in range(35)]
    return pd.DataFrame({"person_id": persons, "dnd": [p == "p30" for p in persons],
                         "non_personalized": [p in ("p31", "p32") for p in persons]})


def run(workspace, **options):
    summary = write_recommendations(workspace, eligible_frame(), as_of=AS_OF, k=4, factors=2, iterations=10,
                                    **options)
    table = pq.read_table(workspace.outputs("recommendations"))
    return summary, table.to_pandas()


# Who consented to marketing, with their MARKETING pseudonyms (here: "m" + the person id).
MARKETING = pd.DataFrame({"person_id": ["p00", "p30", "p31", "p38"], "marketing_id": ["mp00", "mp30", "mp31", "mp38"]})


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    workspace = build_zone(tmp_path_factory.mktemp("rec"))
    summary, frame = run(workspace, marketing=MARKETING)
    return workspace, summary, frame


def test_outputs_have_the_published_schemas(result):
    workspace, summary, frame = result
    assert pq.read_schema(next(workspace.outputs("recommendations").glob("*.parquet"))) == RECOMMENDATIONS_SCHEMA
    assert pq.read_table(workspace.outputs("marketing_audience")).schema == MARKETING_AUDIENCE_SCHEMA
    assert {row["kind"]: row["persons"] for row in summary} == {"personalized": 33, "non-personalized": 2,
                                                               "not DND": 2}


def test_only_eligible_persons_get_lists_with_ranks_one_to_k(result):
    _, _, frame = result
    assert set(frame["person_id"]) == set(eligible_frame()["person_id"])
    for _, rows in frame.groupby("person_id"):
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1)) and len(rows) == 4
        assert rows["score"].is_monotonic_decreasing


def test_personalized_lists_follow_the_community_and_skip_bought_and_unavailable_items(result, tmp_path):
    workspace, _, frame = result
    orders = pq.read_table(workspace.root / "pseudonymized" / "orders").to_pandas()
    orders = orders[orders["placed_at"] <= AS_OF]
    bought = orders.explode("items").groupby("person_id")["items"].agg(set)
    personalized = frame[frame["personalized"]]
    for person, rows in personalized.groupby("person_id"):
        number = int(person[1:])
        assert not set(rows["item_id"]) & bought[person]
        assert not set(rows["item_id"]) & {"i20", "i21", "i23" if number % 2 == 0 else "i22"}
        own = {f"i{n:02d}" for n in (range(10) if number < 20 else range(10, 20))}
        # Two factors suffice for two communities: every pick comes from the person's own one.
        assert set(rows["item_id"]) <= own | {"i22", "i23"}
    assert set(personalized["person_id"]) == set(eligible_frame()["person_id"]) - {"p31", "p32"}


def test_refusers_get_one_nationwide_list_ranked_by_listing_date(result):
    workspace, summary, frame = result
    refusers = frame[frame["person_id"].isin(["p31", "p32"])]
    assert not refusers["personalized"].any()
    lists = refusers.groupby("person_id")["item_id"].apply(list)
    assert lists["p31"] == lists["p32"]  # provinces 44 and 11: neither province is used
    # reference: active nationwide items listed by AS_OF, newest first, ties by catalogue order
    expected = sorted(range(20), key=lambda n: (listing_days(n), n))[:4]  # i20 inactive, i21 unlisted
    assert lists["p31"] == [f"i{n:02d}" for n in expected]
    epoch_days = (AS_OF - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)).days
    assert refusers[refusers["person_id"] == "p31"]["score"].tolist() == [epoch_days - listing_days(n)
                                                                        for n in expected]
    folder = workspace.outputs("recommendations")
    assert non_personalized_ranking(folder) == CATALOGUE_RANKING
    assert pq.read_table(folder).schema.metadata[RANKING_KEY.encode()] == CATALOGUE_RANKING.encode()
    assert [row["ranking"] for row in summary if row["kind"] == "non-personalized"] == [CATALOGUE_RANKING]


def test_a_refusers_province_changes_nothing(tmp_path):
    popularity = pd.Series({"i23": 90.0, "i22": 80.0, "i05": 10.0})  # i22 only in 11, i23 only in 44
    lists = {}
    for name, moved in (("stays", None), ("moves", lambda p: "11" if p == "p31" else None)):
        workspace = build_zone(tmp_path / name, province_of=moved)
        _, frame = run(workspace, marketing=MARKETING, popularity=popularity, popularity_release="r1")
        lists[name] = frame
    pd.testing.assert_frame_equal(lists["stays"], lists["moves"])
    assert lists["stays"].query("person_id == 'p31'")["item_id"].tolist() == ["i05"]  # nationwide only


def test_marketing_audience_leaves_out_dnd_and_ineligible_persons(result):
    workspace, _, _ = result
    audience = pq.read_table(workspace.outputs("marketing_audience"))["marketing_id"].to_pylist()
    assert audience == ["mp00", "mp31"]  # p30 is DND; p38's DND state is unknown


def test_rows_of_persons_outside_the_gate_or_refusing_change_nothing(result, tmp_path):
    _, _, before = result
    strange = [["i00", "i01", "i02", "i03", "i10", "i11"]] * 5
    workspace = build_zone(tmp_path, orders_of=lambda p: strange if p in ("p37", "p31") else None)
    _, after = run(workspace, marketing=MARKETING)
    pd.testing.assert_frame_equal(before, after)


def test_popularity_release_orders_the_non_personalized_list(tmp_path):
    workspace = build_zone(tmp_path)
    popularity = pd.Series({"i19": 50.0, "i22": 40.0, "i05": 30.0, "i20": 99.0, "i03": -1.0})
    summary, frame = run(workspace, popularity=popularity, popularity_release="r1")
    p32 = frame[frame["person_id"] == "p32"]  # a refuser: nationwide items only (not i22); i20 inactive
    assert p32["item_id"].tolist() == ["i19", "i05", "i03"]
    assert p32["score"].tolist() == [50.0, 30.0, -1.0]
    assert pq.read_table(workspace.outputs("marketing_audience")).num_rows == 0
    assert non_personalized_ranking(workspace.outputs("recommendations")) == "dp_popularity:r1"
    assert [row["ranking"] for row in summary if row["kind"] == "non-personalized"] == ["dp_popularity:r1"]
    with pytest.raises(ValueError, match="popularity needs popularity_release"):
        run(workspace, popularity=popularity)


def test_bad_inputs_are_rejected(tmp_path):
    workspace = build_zone(tmp_path)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        write_recommendations(workspace, eligible_frame(), as_of=AS_OF, k=0)
    with pytest.raises(ValueError, match="no column non_personalized"):
        write_recommendations(workspace, eligible_frame().drop(columns="non_personalized"), as_of=AS_OF)
    with pytest.raises(ValueError, match="lists person 'p01' more than once"):
        write_recommendations(workspace, pd.concat([eligible_frame(), eligible_frame()[1:2]]), as_of=AS_OF)
    with pytest.raises(ValueError, match="has no time zone"):
        write_recommendations(workspace, eligible_frame(), as_of=AS_OF.replace(tzinfo=None))
    with pytest.raises(ValueError, match="popularity holds non-numeric"):
        write_recommendations(workspace, eligible_frame(), as_of=AS_OF, popularity=pd.Series({"i01": np.nan}),
                              popularity_release="r1")
    with pytest.raises(ValueError, match="popularity_release names a release but no popularity"):
        write_recommendations(workspace, eligible_frame(), as_of=AS_OF, popularity_release="r1")
    with pytest.raises(WorkspaceError, match="run the pseudonymization stage first"):
        write_recommendations(Workspace(tmp_path / "empty"), eligible_frame(), as_of=AS_OF)


def test_persons_allowing_personalization_who_bought_nothing_get_their_provinces_list(tmp_path):
    """Found on the engine (no factors), they get the non-personalized list of their own province."""
    workspace = build_zone(tmp_path, orders_of=lambda p: [] if p in ("p04", "p05") else None)
    popularity = pd.Series({"i22": 90.0, "i23": 80.0, "i05": 10.0})  # i22 only in 11, i23 only in 44
    summary, frame = run(workspace, popularity=popularity, popularity_release="r1")
    lists = frame.groupby("person_id").agg(items=("item_id", list), personalized=("personalized", "max"))
    assert lists.loc["p04", "items"] == ["i22", "i05"] and lists.loc["p05", "items"] == ["i23", "i05"]
    assert lists.loc["p31", "items"] == lists.loc["p32", "items"] == ["i05"]  # refusers: nationwide
    assert not lists.loc[["p04", "p05", "p31", "p32"], "personalized"].any()
    assert lists.drop(index=["p04", "p05", "p31", "p32"])["personalized"].all()
    assert {row["kind"]: (row["persons"], row["rows"]) for row in summary if row["output"] == "recommendations"} == {
        "personalized": (31, 31 * 4), "non-personalized": (4, 2 + 2 + 1 + 1)}


def test_the_local_lists_are_the_compiled_solvers_on_recency_weighted_purchases_in_string_order(result):
    """Reference: the CSR of 0.5 ** (age / 90 days) per purchase by AS_OF, persons and items bought in string
    order, fitted by ImplicitALS and scored densely, bought and disallowed items left out."""
    workspace, _, frame = result
    orders = pq.read_table(workspace.root / "pseudonymized" / "orders").to_pylist()
    allowed = {f"p{n:02d}" for n in range(35)} - {"p31", "p32"}
    weights = {}
    for order in orders:
        if order["person_id"] in allowed and order["placed_at"] <= AS_OF:
            age_days = (AS_OF - order["placed_at"]).total_seconds() / 86_400
            for item in order["items"]:
                pair = (order["person_id"], item)
                weights[pair] = weights.get(pair, 0.0) + 0.5 ** (age_days / 90.0)
    persons = sorted({person for person, _ in weights})
    items = sorted({item for _, item in weights})
    matrix = sp.csr_array((list(weights.values()), ([persons.index(p) for p, _ in weights],
                                                    [items.index(i) for _, i in weights])),
                          shape=(len(persons), len(items)))
    model = ImplicitALS(factors=2, iterations=10, random_state=0).fit(matrix)
    catalogue = [f"i{n:02d}" for n in range(24)]
    scores = np.zeros((len(persons), len(catalogue)), dtype=np.float32)
    scores[:, [catalogue.index(i) for i in items]] = model.person_factors_ @ model.item_factors_.T
    personalized = frame[frame["personalized"]]
    for row, person in enumerate(persons):
        number = int(person[1:])
        shown = [i for i, item in enumerate(catalogue) if (person, item) not in weights
                 and item not in ("i20", "i21", "i23" if number % 2 == 0 else "i22")]
        best = sorted(shown, key=lambda i: (-scores[row, i], i))[:4]
        got = personalized[personalized["person_id"] == person]
        assert got["item_id"].tolist() == [catalogue[i] for i in best], person
        np.testing.assert_allclose(got["score"], scores[row, best], rtol=1e-5, atol=1e-6)


class _OrdersStreamedOnly:
    """A pseudonymized dataset whose ``to_table`` refuses: the orders must be streamed, never read whole."""

    def __init__(self, dataset):
        self._dataset = dataset

    def to_table(self, *args, **kwargs):
        raise AssertionError("the recommendation stage read the whole orders table at once")

    def __getattr__(self, name):
        return getattr(self._dataset, name)


def test_orders_are_streamed_and_give_the_same_lists(result, monkeypatch):
    """Peak memory: the local engine reads the orders a row group at a time, never whole."""
    from pipelines import recommend

    workspace, _, before = result
    opened = recommend.ds.dataset

    def dataset(path, **kwargs):
        found = opened(path, **kwargs)
        return _OrdersStreamedOnly(found) if "orders" in str(path) else found

    monkeypatch.setattr(recommend.ds, "dataset", dataset)
    _, after = run(workspace, marketing=MARKETING)
    pd.testing.assert_frame_equal(before, after)


@given(st.lists(st.sampled_from([None, "11", "31", "44", "65"]), max_size=30),
       st.lists(st.tuples(st.one_of(st.none(), st.lists(st.sampled_from(["11", "31", "44", "99"]), max_size=3)),
                          st.booleans()), min_size=1, max_size=12))
def test_eligibility_from_arrow_provinces_is_the_plain_rule(provinces, items):
    """Arrow province arrays (how the stage passes them) give each person the items the rule allows."""
    served = [where for where, _ in items]
    active = [flag for _, flag in items]
    eligibility = eligibility_by_province(served, active, pa.array(provinces, pa.string()))
    shown = eligibility.allowed[eligibility.person_group]
    for person, province in enumerate(provinces):
        for item, (where, flag) in enumerate(items):
            assert shown[person, item] == (flag and (where is None or (province is not None and province in where)))
    listed = eligibility_by_province(served, active, provinces)
    assert np.array_equal(listed.allowed, eligibility.allowed)
    assert np.array_equal(listed.person_group, eligibility.person_group)


def test_marketing_audience_takes_the_last_dnd_state_of_a_person_listed_twice(result):
    workspace, _, _ = result
    marketing = pd.DataFrame({"person_id": ["p00", "p01", "p01", "p02", "p03", None],
                              "marketing_id": ["m0", "m1", "m1b", None, "m3", "mx"],
                              "dnd": [False, True, False, False, True, False]})
    write_recommendations(workspace, eligible_frame(), as_of=AS_OF, k=2, factors=2, iterations=2, marketing=marketing)
    audience = pq.read_table(workspace.outputs("marketing_audience"))["marketing_id"].to_pylist()
    assert audience == ["m0", "m1"]  # p01's first marketing id, its last DND state; p02 has no id; p03 is DND
