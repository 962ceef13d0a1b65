"""Privacy claims tested statistically on neighbouring datasets that differ by one whole person.

For counts and sums, many releases on D (without person Z) and D' (with all of Z's rows
and devices) give the frequency of an event on each side; the Clopper-Pearson lower bound
on epsilon = ln(P_D'[E] / P_D[E]) must stay at or below the claimed epsilon. A control with
the bounding switched off shows the test can fail. Half-widths must cover at their stated rate.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta, binomtest

from dp import BudgetLedger, PrivateSession, join_devices
from dp import _mechanisms as mech
from dp._bounding import bound_contributions

DRAWS = 40_000
CONFIDENCE = 0.999


def _frequency_bounds(hits: int, n: int) -> tuple[float, float]:
    """Clopper-Pearson interval of a binomial proportion, each side at (1 - CONFIDENCE) / 4."""
    alpha = (1 - CONFIDENCE) / 4
    low = beta.ppf(alpha, hits, n - hits + 1) if hits else 0.0
    high = beta.ppf(1 - alpha, hits + 1, n - hits) if hits < n else 1.0
    return low, high


def _epsilon_lower_bound(draws_with, draws_without, threshold) -> float:
    """Lower confidence bound on epsilon from the events X >= t (likelier with Z) and X < t (likelier without)."""
    bounds = []
    for event_with, event_without in ((draws_with >= threshold, draws_without >= threshold),
                                      (draws_without < threshold, draws_with < threshold)):
        p_low, _ = _frequency_bounds(int(event_with.sum()), len(event_with))
        _, q_high = _frequency_bounds(int(event_without.sum()), len(event_without))
        bounds.append(math.log(p_low / q_high) if p_low > 0 else -math.inf)
    return max(bounds)


def _session(frame, tmp_path, name):
    ledger = BudgetLedger(tmp_path / f"{name}.sqlite")
    ledger.set_budget("d", epsilon=1e6)
    return PrivateSession(frame, dataset="d", ledger=ledger, purpose="test")


def _draws(session, query, exact_of):
    """DRAWS independent releases of one aggregate: the real bounding, then the query's OpenDP measurement."""
    measure = query._validate()
    _name, plan = query._plans(measure)[0]
    group_codes, _ = session._groups(query)
    bounded = bound_contributions(session._person_codes(), group_codes,
                                  max_partitions=query.max_partitions if query.by else 1,
                                  max_rows_per_partition=query.max_rows_per_partition)
    exact = exact_of(bounded)
    return mech.add_vector_noise(plan, np.full(DRAWS, exact, dtype=np.int64)), exact, plan


def _orders(with_person_z: bool) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"person_id": rng.integers(0, 50, 300), "category": rng.choice(["a", "b"], 300),
                          "amount": rng.uniform(0, 100, 300)})
    if with_person_z:
        z = pd.DataFrame({"person_id": [999] * 40, "category": ["a"] * 40, "amount": [10_000.0] * 40})
        frame = pd.concat([frame, z], ignore_index=True)
    return frame


@pytest.mark.parametrize("aggregate", ["count", "sum"])
def test_one_whole_person_moves_the_release_by_at_most_epsilon(tmp_path, aggregate):
    epsilon = 1.0
    results = []
    for with_z in (False, True):
        session = _session(_orders(with_z), tmp_path, f"{aggregate}{with_z}")
        query = session.query(epsilon=epsilon).group_by("category", keys=["a", "b"]).bound(
            max_partitions=1, max_rows_per_partition=2)
        if aggregate == "count":
            query = query.count()
            exact_of = lambda bounded: int(bounded.counts[0])
        else:
            query = query.sum("amount", bounds=(0, 100), resolution=1.0)
            values = np.clip(np.rint(session.data["amount"].to_numpy()), 0, 100)
            exact_of = lambda bounded, v=values: int(v[bounded.kept][bounded.kept_groups() == 0].sum())
        results.append(_draws(session, query, exact_of))
    (without, exact_without, _plan), (with_z, exact_with, _) = results
    assert exact_with > exact_without                     # Z is in the data and moves the truth
    threshold = exact_with
    assert _epsilon_lower_bound(with_z, without, threshold) <= epsilon
    # control: had Z's 40 rows been released unbounded, the same test sees far more than epsilon
    shift = 40 if aggregate == "count" else 40 * 100
    unbounded = without + shift
    assert _epsilon_lower_bound(unbounded, without, exact_without + shift) > epsilon


def test_a_person_with_forty_devices_moves_a_device_count_by_at_most_epsilon(tmp_path):
    mapping = pd.DataFrame({"device_id": [f"d{i}" for i in range(100)], "person_id": [f"p{i // 2}" for i in range(100)]})
    z_mapping = pd.DataFrame({"device_id": [f"z{i}" for i in range(40)], "person_id": ["z"] * 40})
    devices = pd.DataFrame({"device_id": mapping["device_id"], "os": "android"})
    z_devices = pd.DataFrame({"device_id": z_mapping["device_id"], "os": "android"})
    draws = []
    for with_z in (False, True):
        rows = pd.concat([devices, z_devices]) if with_z else devices
        links = pd.concat([mapping, z_mapping]) if with_z else mapping
        joined = join_devices(rows, links, max_devices_per_person=2, seed=3)
        session = _session(joined, tmp_path, f"devices{with_z}")
        query = session.query(epsilon=1.0).group_by("os", keys=["android"]).bound(max_partitions=1,
                                                                                 max_rows_per_partition=2).count()
        draws.append(_draws(session, query, lambda bounded: int(bounded.kept.sum())))
    (without, exact_without, _), (with_z, exact_with, _) = draws
    assert exact_with - exact_without == 2
    assert _epsilon_lower_bound(with_z, without, exact_with) <= 1.0


@pytest.mark.parametrize("mechanism, kwargs", [("laplace", {"epsilon": 0.5}),
                                                ("gaussian", {"epsilon": 0.5, "delta": 1e-6})])
def test_half_widths_cover_at_their_stated_rate(mechanism, kwargs):
    plan = mech.plan_vector_noise(mechanism=mechanism, measure=mech.APPROXIMATE, l1_sensitivity=3,
                                  l2_sensitivity=math.sqrt(3), **kwargs)
    noisy = mech.add_vector_noise(plan, np.full(DRAWS, 1000, dtype=np.int64))
    covered = int((np.abs(noisy - 1000) <= plan.half_width).sum())
    test = binomtest(covered, DRAWS, 0.95)
    assert covered / DRAWS >= 0.95 or test.pvalue > 0.001
    assert covered / DRAWS <= 0.965                        # stated, not loosely conservative


@pytest.mark.parametrize("alpha, measure, kwargs", [(0.5, mech.PURE, {"epsilon": 0.5}),
                                                    (0.9, mech.ZCDP, {"rho": 0.1})])
def test_quantile_rank_half_width_covers_at_least_its_stated_rate(alpha, measure, kwargs):
    rng = np.random.default_rng(2)
    values = rng.gamma(2.0, 20.0, 300)
    grid = list(np.linspace(0, 200, 64))
    plan = mech.plan_quantile(measure=measure, rows_per_person=2, candidates=grid, alpha=alpha, **kwargs)
    assert math.isfinite(plan.half_width) and plan.half_width > 0
    below = np.array([(values < c).sum() for c in grid])
    above = np.array([(values > c).sum() for c in grid])
    rank_error = dict(zip(grid, np.abs((1 - alpha) * below - alpha * above)))
    best = min(rank_error.values())
    draws = 1000
    covered = sum(rank_error[mech.release_quantile(plan, values, grid, alpha)] - best < plan.half_width
                  for _ in range(draws))
    assert binomtest(covered, draws, 0.95, alternative="less").pvalue > 0.001
