"""DP portrait statistics on the portraits a real job wrote: values against a plain reference, intervals, charges."""

from __future__ import annotations

import datetime as dt

import numpy as np
import opendp.prelude as opendp
import pandas as pd
import pytest

from dp import BudgetExceededError, BudgetLedger, PrivacyParameterError
from dp.portrait_statistics import EDGES, release_portrait_statistics
from pipelines.ingest import ingest
from pipelines.run import run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.errors import PortraitError
from profiling.keys import create_key_file
from profiling.schema import CATEGORIES

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("portrait-statistics")
    generate(root / "raw", accounts=400, seed=3, catalogue_items=300, progress=False)
    key = create_key_file(root / "keys" / "master.key")
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, key=key, progress=False)
    run_pipeline(workspace, root / "keys" / "master.key", AS_OF, progress=False)
    return workspace


@pytest.fixture(scope="module")
def portraits(workspace):
    return pd.read_parquet(workspace.output("portraits", purpose="personalization"))


@pytest.fixture
def ledger(tmp_path):
    return BudgetLedger(tmp_path / "ledger.sqlite")


def _reference_shares(portraits: pd.DataFrame, top: int) -> np.ndarray:
    """Plain loops: per identity its `top` largest positive shares; summed per category over identities with orders."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for _, row in portraits.iterrows():
        values = sorted(((row[f"category_share_{c}"] or 0.0, -i, c) for i, c in enumerate(CATEGORIES)), reverse=True)
        for value, _, category in values[:top]:
            if value > 0:
                totals[category] += value
    return np.array([totals[c] for c in CATEGORIES]) / int((portraits["orders"] > 0).sum())


def test_the_released_statistics_are_the_portraits_when_the_noise_cannot_move_them(portraits, ledger):
    ledger.set_budget("portraits", epsilon=1e7, set_by="test")
    released = release_portrait_statistics(portraits, ledger=ledger, purpose="personalization", epsilon=5e6)
    for feature, edges in EDGES.items():
        values = portraits[feature].dropna().clip(upper=edges[-1])
        expected = np.histogram(values, bins=edges)[0]
        histogram = released.histograms[feature]
        assert histogram["count"].tolist() == expected.astype(float).tolist(), feature
        assert histogram["bin"].tolist()[0] == f"[0, {edges[1]:g})"
    assert released.identities_with_orders[0] == (portraits["orders"] > 0).sum()
    assert released.category_shares["category"].tolist() == list(CATEGORIES)
    assert released.category_shares["share"].to_numpy() == pytest.approx(_reference_shares(portraits, 4), abs=1e-5)


def test_intervals_and_charges_are_those_of_five_releases_per_identity(portraits, ledger):
    ledger.set_budget("portraits", epsilon=1.0, set_by="test")
    released = release_portrait_statistics(portraits, ledger=ledger, purpose="personalization", epsilon=1.0,
                                           accounts_per_human=2)
    # each histogram: a count of one row per identity at epsilon 1/5, twice the sensitivity for two accounts
    expected = opendp.discrete_laplacian_scale_to_accuracy(2 / 0.2, alpha=0.05)
    for histogram in released.histograms.values():
        assert histogram["count_ci95"].tolist() == pytest.approx([expected] * len(histogram))
    shares = released.category_shares
    assert ((shares["share"] >= 0) & (shares["share"] <= 1)).all()
    assert (shares["share_ci95"] > 0).all()
    charges = ledger.charges("portraits")
    assert len({c["release_id"] for c in charges}) == 5
    assert sum(c["epsilon"] for c in charges) == pytest.approx(1.0)
    assert all("per identity_id (any 2 together" in c["query"] for c in charges)
    assert ledger.remaining("portraits")["epsilon"] == pytest.approx(0.0, abs=1e-12)


def test_refused_statistics_charge_nothing(portraits, ledger):
    ledger.set_budget("portraits", epsilon=1.0, set_by="test")
    with pytest.raises(BudgetExceededError, match="more than the 1 left of dataset 'portraits'"):
        release_portrait_statistics(portraits, ledger=ledger, purpose="p", epsilon=1.5)
    with pytest.raises(PortraitError, match="edges for age: the histograms are of recency_days"):
        release_portrait_statistics(portraits, ledger=ledger, purpose="p", epsilon=0.5, edges={"age": [0, 1]})
    with pytest.raises(PrivacyParameterError, match="histogram edges of 'frequency' must be"):
        release_portrait_statistics(portraits, ledger=ledger, purpose="p", epsilon=0.5, edges={"frequency": [3, 1]})
    with pytest.raises(PortraitError, match="portraits have no column orders"):
        release_portrait_statistics(portraits.drop(columns="orders"), ledger=ledger, purpose="p", epsilon=0.5)
    with pytest.raises(PrivacyParameterError, match="max_categories must be a positive integer"):
        release_portrait_statistics(portraits, ledger=ledger, purpose="p", epsilon=0.5, max_categories=0)
    assert ledger.charges("portraits") == []

