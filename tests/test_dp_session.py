"""The notebook API: build, validate, charge, release; validation failures charge nothing."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

import dp
from dp import BudgetExceededError, BudgetLedger, PrivacyParameterError, PrivateSession
from dp._bounding import SumColumn, bound_contributions, encode_persons
from dp._totals import _public_groups, bounded_totals
from pipelines.commands import budget as budget_commands

CATEGORIES = list("abcdefgh")


@pytest.fixture
def orders():
    rng = np.random.default_rng(0)
    n = 4000
    return pd.DataFrame({"person_id": [f"{i:032x}" for i in rng.integers(0, 400, n)],
                         "category": rng.choice(CATEGORIES, n), "amount": rng.gamma(2.0, 30.0, n)})


@pytest.fixture
def ledger(tmp_path):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", epsilon=10.0, delta=1e-5, cap_epsilon=2.0, set_by="reviewer")
    return ledger


def _session(orders, ledger, **kwargs):
    return PrivateSession(orders, dataset="orders", ledger=ledger, purpose="product improvement", analyst="ana",
                          **kwargs)


def test_public_key_group_by_returns_every_key_with_half_widths_and_charges_once(orders, ledger):
    query = (_session(orders, ledger).query(epsilon=1.0).group_by("category", keys=CATEGORIES)
             .bound(max_partitions=3, max_rows_per_partition=2).count().sum("amount", bounds=(0, 200)))
    frame = query.release()
    assert list(frame["category"]) == CATEGORIES
    assert (frame["count_ci95"] > 0).all() and (frame["amount_sum_ci95"] > 0).all()
    assert ledger.spent("orders")["epsilon"] == pytest.approx(1.0)
    charges = ledger.charges()
    assert [c["aggregate"] for c in charges] == ["count", "amount_sum:sum"]
    assert all(c["released_at"] for c in charges)
    assert charges[0]["sensitivity"] == "6" and charges[0]["noise_scale"] == pytest.approx(12.0)


def test_counts_are_close_to_the_bounded_truth(orders, ledger):
    frame = (_session(orders, ledger).query(epsilon=5.0).group_by("category", keys=CATEGORIES)
             .bound(max_partitions=8, max_rows_per_partition=100).count().release())
    truth = orders.groupby("category").size().reindex(CATEGORIES).to_numpy()
    assert (np.abs(frame["count"].to_numpy() - truth) <= 4 * frame["count_ci95"].to_numpy()).all()


def test_categorical_and_string_groups_bound_the_same_rows(orders, ledger):
    with_gaps = orders.assign(category=orders["category"].where(orders.index % 7 != 0))   # missing groups
    as_categorical = with_gaps.assign(category=pd.Categorical(with_gaps["category"], categories=[*"zhgfedcba"]))
    results = []
    for frame in (with_gaps, as_categorical):
        session = _session(frame, ledger)
        query = session.query(epsilon=1.0).group_by("category", keys=CATEGORIES[:6]).bound(
            max_partitions=2, max_rows_per_partition=3).count().sum("amount", bounds=(0, 100))
        groups = _public_groups(frame, query)
        results.append(bound_contributions(encode_persons(frame["person_id"]), groups, max_partitions=2,
                                           max_rows_per_partition=3,
                                           sums={"s": SumColumn(frame["amount"].to_numpy(), 0.01, 0, 10_000)}))
        totals = bounded_totals(frame, query)
        assert totals.counts.tolist() == results[-1].counts.tolist()
        assert totals.sums["amount_sum"].tolist() == results[-1].sums["s"].tolist()
    strings, categorical = results
    assert strings.kept.tolist() == categorical.kept.tolist() and strings.kept.sum() > 0
    assert strings.counts.tolist() == categorical.counts.tolist()
    assert strings.sums["s"].tolist() == categorical.sums["s"].tolist()
    kept = with_gaps[strings.kept]
    assert kept["category"].isin(CATEGORIES[:6]).all()
    assert (kept.groupby("person_id")["category"].nunique() <= 2).all()


def test_unknown_keys_are_selected_privately_and_rare_groups_dropped(orders, ledger):
    rare = pd.DataFrame({"person_id": ["lonely"], "category": ["zz-rare"], "amount": [1.0]})
    frame = (_session(pd.concat([orders, rare]), ledger).query(epsilon=2.0, delta=1e-6).group_by("category")
             .bound(max_partitions=2, max_rows_per_partition=2).sum("amount", bounds=(0, 100)).release())
    assert set(frame["category"]) <= set(CATEGORIES)
    assert list(frame.columns) == ["category", "count", "count_ci95", "amount_sum", "amount_sum_ci95"]
    assert "Laplace threshold" in {c["mechanism"] for c in ledger.charges()}


def test_mean_quantile_histogram_and_gaussian(orders, ledger):
    session = _session(orders, ledger)
    mean = session.query(epsilon=1.0, delta=1e-6, mechanism="gaussian").mean("amount", bounds=(0, 200)).release()
    assert 0 <= mean["amount_mean"].iloc[0] <= 200 and mean["amount_mean_ci95"].iloc[0] > 0
    median = session.query(epsilon=1.0).quantile("amount", 0.5, bounds=(0, 200)).bound(max_rows_per_partition=3)
    released = median.release()
    assert 20 < released["amount_q50"].iloc[0] < 100
    assert 0 < released["amount_q50_ci95"].iloc[0] < 4000      # in ranks (rows)
    histogram = session.query(epsilon=1.0).histogram("amount", [0, 50, 100, 1000]).count().release()
    assert list(histogram["amount"]) == ["[0, 50)", "[50, 100)", "[100, 1000)"]


def test_zcdp_budget_charges_rho(orders, tmp_path):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", rho=0.5)
    session = _session(orders, ledger)
    session.query(rho=0.2, mechanism="gaussian").group_by("category", keys=CATEGORIES).count().release()
    session.query(rho=0.2).count().release()
    assert ledger.spent("orders")["rho"] == pytest.approx(0.4)
    with pytest.raises(PrivacyParameterError, match="kept in rho"):
        session.query(epsilon=0.1).count().release()


@pytest.mark.parametrize("build, message", [
    (lambda s: s.query(epsilon=float("nan")), "epsilon is NaN"),
    (lambda s: s.query(epsilon=float("inf")), "epsilon is infinite"),
    (lambda s: s.query(epsilon=-1.0), "epsilon must be > 0"),
    (lambda s: s.query(epsilon=0.0), "epsilon must be > 0"),
    (lambda s: s.query(epsilon=1.0, delta=1.0), r"delta must be in \[0, 1\)"),
    (lambda s: s.query(epsilon=1.0, delta=-0.1), r"delta must be in \[0, 1\)"),
    (lambda s: s.query(epsilon=1.0, delta=float("nan")), "delta is NaN"),
    (lambda s: s.query(epsilon=1.0).sum("amount", bounds=(100, 0)), "inverted"),
    (lambda s: s.query(epsilon=1.0).sum("amount", bounds=(0, float("inf"))), "upper bounds is infinite"),
    (lambda s: s.query(epsilon=1.0).sum("amount", bounds=(float("nan"), 1)), "lower bounds is NaN"),
    (lambda s: s.query(epsilon=1.0).bound(max_partitions=0), "max_partitions must be a positive integer"),
    (lambda s: s.query(epsilon=1.0).sum("nope", bounds=(0, 1)), "no column 'nope'"),
    (lambda s: s.query(epsilon=1.0).group_by("category").count().release(), "need delta > 0"),
    (lambda s: s.query(epsilon=1.0).release(), "no aggregate"),
    (lambda s: s.query(epsilon=1.0, mechanism="gaussian").count().release(), "need delta > 0"),
    (lambda s: s.query(epsilon=10.5).count().release(), "remaining"),
])
def test_invalid_parameters_are_refused_and_nothing_is_charged(orders, ledger, build, message):
    session = _session(orders, ledger)
    with pytest.raises(ValueError, match=message):
        build(session)
    assert ledger.charges() == []
    assert ledger.spent("orders") == {"epsilon": 0.0, "delta": 0.0, "rho": 0.0}


def test_over_budget_release_shows_remaining_and_asked(orders, ledger):
    session = _session(orders, ledger)
    session.query(epsilon=9.0).count().release()
    with pytest.raises(BudgetExceededError, match=r"has epsilon 1, .*remaining and the release asks epsilon 2"):
        session.query(epsilon=2.0).count().release()
    assert ledger.spent("orders")["epsilon"] == pytest.approx(9.0)


def test_cross_device_statistics_cost_the_same_for_forty_devices(tmp_path):
    devices = pd.DataFrame({"device_id": [f"d{i}" for i in range(41)], "os": ["android"] * 41})
    mapping = pd.DataFrame({"device_id": [f"d{i}" for i in range(41)], "person_id": ["many"] * 40 + ["one"]})
    joined = dp.join_devices(devices, mapping, max_devices_per_person=2, seed=1)
    assert joined.groupby("person_id").size().to_dict() == {"many": 2, "one": 1}
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("devices", epsilon=1.0)
    session = PrivateSession(joined, dataset="devices", ledger=ledger, purpose="product improvement")
    frame = session.query(epsilon=1.0).group_by("os", keys=["android", "ios"]).bound(
        max_partitions=1, max_rows_per_partition=2).count().release()
    assert list(frame["os"]) == ["android", "ios"]


def _cli(*argv):
    parser = argparse.ArgumentParser(prog="portrait")
    budget_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    args.handler(args)


def test_budget_commands_set_show_and_report(orders, tmp_path, capsys):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    _cli("budget", "set", "--workspace", str(workspace), "--dataset", "orders", "--epsilon", "3", "--delta", "1e-6",
         "--cap-epsilon", "0.5", "--set-by", "rev")
    ledger = BudgetLedger(workspace / "ledger.sqlite")
    session = _session(orders, ledger)
    session.query(epsilon=1.0).group_by("category", keys=CATEGORIES).count().release()
    session.query(epsilon=0.25).count().release()
    _cli("budget", "show", "--workspace", str(workspace))
    shown = capsys.readouterr().out
    assert "orders" in shown and "1.25" in shown and "1.75" in shown
    assert "flag: over per-release cap: epsilon 1 > cap 0.5" in shown and "flag: OpenDP feature enabled: contrib" in shown
    _cli("budget", "report", "--workspace", str(workspace), "--out", str(tmp_path / "review"))
    names = {p.name for p in (tmp_path / "review").iterdir()}
    assert names == {"review.md", "review.html", "review.json", "cumulative_spend.png"}
    markdown = (tmp_path / "review" / "review.md").read_text()
    assert "basic composition" in markdown and "discrete Laplace" in markdown
    assert (tmp_path / "review" / "cumulative_spend.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="epsilon is NaN"):
        _cli("budget", "set", "--workspace", str(workspace), "--dataset", "orders", "--epsilon", "nan")
