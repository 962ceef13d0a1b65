"""Privacy claims audited statistically through the real release paths.

Every release here goes through ``PrivateSession.release()`` or the engine job
(``pipelines.engine_jobs``: the popularity release's purchases kernel and bounded counts,
run on the local engine), charged to a real ledger with a huge budget in a tmp folder.

Method: one-run auditing (Steinke, Nasr & Jagielski 2023, "Privacy auditing with one (1)
training run", Theorem 3.1). A run builds base persons plus ``m`` canary persons, each
included independently with probability 1/2; a canary has many rows in three groups of its
own, more than the bounds keep, so the neighbouring datasets differ by one whole person in
several groups. One release is made, and from the release alone a guess is made per canary:
"in" when every group it is kept in reads at or above its value with the canary, "out" when
every one reads at or below its value without it, no guess otherwise. If a release is
epsilon-DP per person, the number W of right guesses among the r made is stochastically
dominated by Binomial(r, e^eps / (1 + e^eps)); independent runs pool (sums of dominated
variables). ``_epsilon_lower_bound`` is the smallest epsilon whose binomial tail at W is at
least ``ALPHA``: the audit fails when it exceeds the claimed epsilon.

For discrete Laplace counts and sums these tail events have likelihood ratio exactly
e^(eps / K) per kept group, so a correct release meets the bound with equality: false alarm
at most ``ALPHA`` = 1e-4 per check (the file makes 14 such checks: one false alarm in about
700 runs of it, since OpenDP's noise is not seeded), and the control released at
1.25 epsilon but audited at epsilon is flagged with probability above 99.9% (about 2,400
guesses: 91% right under the null at most, 92.4% expected for the control). Means and
quantiles are post-processed, so their guesses are weaker (valid, less power).

Gaussian noise has no pure epsilon: what is audited is that the release is no more
revealing than the planned discrete Gaussian (scale from ``explain()``) on the planned
sensitivity, whose (epsilon, delta) or rho OpenDP's privacy map certifies. Guesses are then
made only in windows one noise scale wide, and the exact discrete-Gaussian probabilities of
the guess outcomes give the epsilon of the guesses, which is the level audited.

Private partition selection: the canary's shared groups hold far more rows than the
threshold (their counts are audited as above), and its own group must appear no more
often than the certified delta allows.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.stats import binom, binomtest

from dp import BudgetLedger, KeySet, PrivateSession, join_devices
from pipelines.engines import LocalEngine
from pipelines.engine_jobs import purchases_kernel, release_group_counts
from pipelines.popularity import ITEMS_PER_PERSON

ALPHA = 1e-4           # false alarm of each audit
EPSILON = 2.0          # where a threshold audit has the most power per guess
K, R = 2, 3            # groups and rows per group a person may contribute; canaries have 3 groups x 6 rows
BASE = 2               # base persons with one row in every group


def _epsilon_lower_bound(correct: int, guessed: int) -> float:
    """The smallest epsilon under which ``correct`` right guesses of ``guessed`` is not rejected at ``ALPHA``."""
    def tail(epsilon: float) -> float:
        return binom.sf(correct - 1, guessed, 1.0 / (1.0 + math.exp(-epsilon)))

    if guessed == 0 or tail(0.0) >= ALPHA:
        return 0.0
    low, high = 0.0, 50.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (low, middle) if tail(middle) >= ALPHA else (middle, high)
    return high


def _audit(run, *, runs: int, canaries: int, seed: int) -> tuple[int, int]:
    """(right guesses, guesses) over ``runs`` releases, each on a fresh random inclusion of the canaries."""
    rng = np.random.default_rng(seed)
    correct = guessed = 0
    for _ in range(runs):
        included = rng.random(canaries) < 0.5
        guesses = run(included)
        made = guesses != 0
        guessed += int(made.sum())
        correct += int((guesses[made] == np.where(included, 1, -1)[made]).sum())
    return correct, guessed


def _groups(canaries: int) -> list[str]:
    return [f"g{i:05d}_{j}" for i in range(canaries) for j in range(3)]


def _frame(included: np.ndarray, *, base_value: float, canary_value: float) -> pd.DataFrame:
    """BASE one-row persons in every group, then each included canary's 18 rows (groups 0, 1, 2 in turn)."""
    m = len(included)
    groups = np.array(_groups(m))
    base = pd.DataFrame({"person_id": [f"b{k}_{g}" for k in range(BASE) for g in groups],
                         "group": np.tile(groups, BASE), "value": base_value})
    chosen = np.flatnonzero(included)
    rows = np.repeat(chosen, 18)
    which = np.tile(np.arange(18) % 3, len(chosen))
    canary = pd.DataFrame({"person_id": [f"z{i}" for i in rows], "group": groups[rows * 3 + which],
                           "value": canary_value})
    return pd.concat([base, canary], ignore_index=True)


def _kept(values: pd.Series, canaries: int) -> np.ndarray:
    """Released values of each canary's two kept groups (0 and 1, first in its stored order): m x K."""
    return values.to_numpy(dtype=np.float64).reshape(canaries, 3)[:, :K]


def _tail_guesses(kept: np.ndarray, without: float, with_canary: float) -> np.ndarray:
    return np.where((kept >= with_canary).all(axis=1), 1, np.where((kept <= without).all(axis=1), -1, 0))


@pytest.fixture
def ledger(tmp_path):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", epsilon=1e9, delta=0.5)
    ledger.set_budget("waybills", rho=1e9)
    return ledger


def _session(frame, ledger, dataset="orders"):
    return PrivateSession(frame, dataset=dataset, ledger=ledger, purpose="privacy audit")


def _release_audit(ledger, build, guess, *, canaries=1000, runs=6, seed=1, base_value=4.0, canary_value=1e3):
    def run(included):
        frame = _frame(included, base_value=base_value, canary_value=canary_value)
        query = build(_session(frame, ledger)).bound(max_partitions=K, max_rows_per_partition=R)
        released = query.release()
        assert list(released["group"]) == _groups(canaries)
        return guess(released)

    return _audit(run, runs=runs, canaries=canaries, seed=seed)


def _keyed(session_query, canaries):
    return session_query.group_by("group", keys=_groups(canaries))


@pytest.mark.parametrize("released_at", [1.0, 1.25], ids=["claimed", "control-at-1.25x"])
def test_count_one_whole_person_moves_the_release_by_at_most_epsilon(ledger, released_at):
    m = 1000
    correct, guessed = _release_audit(
        ledger, lambda s: _keyed(s.query(epsilon=EPSILON * released_at), m).count(),
        lambda r: _tail_guesses(_kept(r["count"], m), BASE, BASE + R), canaries=m)
    found = _epsilon_lower_bound(correct, guessed)
    assert guessed > 1500
    if released_at == 1.0:
        assert found <= EPSILON, (correct, guessed, found)
    else:   # power: a release 25% less private than claimed must be caught
        assert found > EPSILON, (correct, guessed, found)


def test_public_joins_derived_columns_and_filters_before_bounding_keep_epsilon(ledger):
    """Through a public join, a derived column, a filter and two group columns, a canary still moves K groups by
    R rows each: the count audit holds at the claimed epsilon."""
    m = 1000
    shards = pd.DataFrame({"group": _groups(m), "shard": [f"s{j}" for _ in range(m) for j in range(3)]})
    build = lambda s: (s.query(epsilon=EPSILON).join_public(shards, on="group").with_column("twice", "value * 2")
                       .where("twice >= 0 and shard != 'none'")
                       .group_by(["group", "shard"], keys=KeySet.from_frame(shards)).count())
    correct, guessed = _release_audit(ledger, build, lambda r: _tail_guesses(_kept(r["count"], m), BASE, BASE + R),
                                      canaries=m, seed=6)
    assert guessed > 1500
    assert _epsilon_lower_bound(correct, guessed) <= EPSILON, (correct, guessed)


def test_sum_clamps_a_person_and_keeps_epsilon(ledger):
    m = 1000
    correct, guessed = _release_audit(
        ledger, lambda s: _keyed(s.query(epsilon=EPSILON), m).sum("value", bounds=(0, 10), resolution=1.0),
        lambda r: _tail_guesses(_kept(r["value_sum"], m), BASE * 4.0, BASE * 4.0 + R * 10.0), canaries=m, seed=2)
    assert guessed > 1500
    assert _epsilon_lower_bound(correct, guessed) <= EPSILON, (correct, guessed)


def test_mean_and_quantile_keep_epsilon(ledger):
    m = 300
    build = lambda s: (_keyed(s.query(epsilon=EPSILON), m).mean("value", bounds=(0, 10), resolution=1.0)
                       .quantile("value", 0.5, bounds=(0, 10), candidates=11))

    def guess(released):
        means, medians = _kept(released["value_mean"], m), _kept(released["value_q50"], m)
        high = (means >= 5.0).all(axis=1) & (medians > 0).all(axis=1)
        low = (means <= 1.0).all(axis=1) & (medians == 0).all(axis=1)
        return np.where(high, 1, np.where(low, -1, 0))

    correct, guessed = _release_audit(ledger, build, guess, canaries=m, runs=4, seed=3, base_value=0.0)
    assert guessed > 100
    assert _epsilon_lower_bound(correct, guessed) <= EPSILON, (correct, guessed)


def _gaussian_window_epsilon(scale: float, shift: int) -> float:
    """Epsilon of the window guesses below on discrete Gaussian noise of ``scale`` per group, shift ``shift``."""
    support = np.arange(-int(60 * scale) - 60, int(60 * scale) + 61)
    pmf = np.exp(-(support.astype(np.float64) ** 2) / (2 * scale * scale))
    pmf /= pmf.sum()
    width = max(1, round(scale))

    def mass(low: int, high: int) -> float:
        return float(pmf[(support >= low) & (support <= high)].sum())

    # noise N: the canary's group reads truth_without + shift + N when in, truth_without + N when out
    in_if_in, in_if_out = mass(0, width) ** K, mass(shift, shift + width) ** K
    out_if_in, out_if_out = mass(-shift - width, -shift) ** K, mass(-width, 0) ** K
    none_if_in, none_if_out = 1 - in_if_in - out_if_in, 1 - in_if_out - out_if_out
    return max(abs(math.log(a / b)) for a, b in ((in_if_in, in_if_out), (out_if_in, out_if_out),
                                                 (none_if_in, none_if_out)))


@pytest.mark.parametrize("budget", ["approximate", "zCDP"])
def test_gaussian_noise_is_as_private_as_planned(ledger, budget):
    m = 1000
    if budget == "approximate":
        dataset, start = "orders", lambda s: s.query(epsilon=EPSILON, delta=1e-6, mechanism="gaussian")
    else:
        dataset, start = "waybills", lambda s: s.query(rho=0.5, mechanism="gaussian")
    scales = []

    def run(included):
        frame = _frame(included, base_value=0.0, canary_value=0.0)
        query = _keyed(start(_session(frame, ledger, dataset)), m).bound(max_partitions=K,
                                                                       max_rows_per_partition=R).count()
        scale = float(query.explain()["noise_scale"].iloc[0])
        scales.append(scale)
        kept = _kept(query.release()["count"], m)
        width = max(1, round(scale))
        high = ((kept >= BASE + R) & (kept <= BASE + R + width)).all(axis=1)
        low = ((kept <= BASE) & (kept >= BASE - width)).all(axis=1)
        return np.where(high, 1, np.where(low, -1, 0))

    correct, guessed = _audit(run, runs=4, canaries=m, seed=4)
    audited = _gaussian_window_epsilon(scales[0], R)
    assert guessed > 200 and 0 < audited < 10
    assert _epsilon_lower_bound(correct, guessed) <= audited, (correct, guessed, audited)


def test_private_partition_selection_keeps_epsilon_and_delta(ledger):
    m, shared_rows, delta = 300, 150, 1e-8
    groups = np.array(_groups(m))
    own = set(groups[2::3])
    appeared = included_total = 0

    def run(included):
        nonlocal appeared, included_total
        shared = [g for g in groups if g not in own]
        base = pd.DataFrame({"person_id": [f"b{k}_{g}" for k in range(shared_rows) for g in shared],
                             "group": np.tile(shared, shared_rows)})
        chosen = np.flatnonzero(included)
        rows = np.repeat(chosen, 18)
        canary = pd.DataFrame({"person_id": [f"z{i}" for i in rows],
                               "group": groups[rows * 3 + np.tile(np.arange(18) % 3, len(chosen))]})
        session = _session(pd.concat([base, canary], ignore_index=True), ledger)
        released = (session.query(epsilon=EPSILON, delta=delta).group_by("group")
                    .bound(max_partitions=3, max_rows_per_partition=R).count().release())
        counts = dict(zip(released["group"], released["count"]))
        appeared += len(own & set(counts))
        included_total += int(included.sum())
        kept = np.array([[counts.get(f"g{i:05d}_{j}", -np.inf) for j in range(K)] for i in range(m)])
        return _tail_guesses(kept, shared_rows, shared_rows + R)

    correct, guessed = _audit(run, runs=4, canaries=m, seed=5)
    assert guessed > 100 and _epsilon_lower_bound(correct, guessed) <= EPSILON, (correct, guessed)
    # a canary's own group may show only with the certified probability delta
    assert binom.sf(appeared - 1, included_total, delta) >= ALPHA, (appeared, included_total)


def test_the_popularity_job_on_the_engine_keeps_epsilon(ledger, tmp_path):
    """Canaries buy 7 items of their own three times; the job counts each person once per item, 5 items."""
    m, items_each = 600, ITEMS_PER_PERSON + 2
    keys = [f"i{i:05d}_{j}" for i in range(m) for j in range(items_each)]
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    engine = LocalEngine(workspace=tmp_path / "engine")

    def run(included):
        persons, orders, placed, items = [], [], [], []
        for b in range(BASE):
            for key in keys:
                persons.append(f"b{b}_{key}"), orders.append(f"o{b}_{key}"), placed.append(when), items.append([key])
        for i in np.flatnonzero(included):
            own = keys[i * items_each:(i + 1) * items_each]
            for n in range(3):
                persons.append(f"z{i}"), orders.append(f"z{i}_{n}"), placed.append(when + dt.timedelta(days=n))
                items.append(own)
        table = pa.table({"person_id": persons, "order_id": orders,
                          "placed_at": pa.array(placed, pa.timestamp("us", tz="UTC")), "items": items})
        frame = engine.from_table(table, key="person_id", partitions=3)
        bought = engine.map(frame, purchases_kernel(persons=engine.broadcast(pa.array(sorted(set(persons)))),
                                                    before=when + dt.timedelta(days=30)))
        released = release_group_counts(engine, bought, group="item_id", keys=keys, ledger=ledger, dataset="orders",
                                        purpose="privacy audit", epsilon=EPSILON, max_partitions=ITEMS_PER_PERSON,
                                        max_rows_per_partition=1, order_by=("placed_at", "order_id", "position"))
        counts = released["count"].to_numpy(dtype=np.float64).reshape(m, items_each)[:, :ITEMS_PER_PERSON]
        return np.where((counts >= BASE + 1).all(axis=1), 1, np.where((counts <= BASE).all(axis=1), -1, 0))

    try:
        correct, guessed = _audit(run, runs=5, canaries=m, seed=6)
    finally:
        engine.close()
    assert guessed > 100 and _epsilon_lower_bound(correct, guessed) <= EPSILON, (correct, guessed)


def test_a_person_with_forty_devices_moves_a_device_count_by_at_most_epsilon(ledger):
    """Canaries own 40 devices each; ``join_devices`` keeps 2 per person, the count 2 rows per person."""
    m, kept_devices = 600, 2
    groups = [f"g{i:05d}" for i in range(m)]

    def run(included):
        base = pd.DataFrame({"device_id": [f"d{b}_{g}" for b in range(BASE) for g in groups],
                             "person_id": [f"p{b}_{g}" for b in range(BASE) for g in groups],
                             "group": np.tile(groups, BASE)})
        chosen = np.repeat(np.flatnonzero(included), 40)
        canary = pd.DataFrame({"device_id": [f"z{i}_{n}" for i, n in zip(chosen, np.tile(np.arange(40), len(chosen)))],
                               "person_id": [f"z{i}" for i in chosen], "group": [groups[i] for i in chosen]})
        devices = pd.concat([base, canary], ignore_index=True)
        joined = join_devices(devices[["device_id", "group"]], devices[["device_id", "person_id"]],
                              max_devices_per_person=kept_devices, seed=3)
        released = (_session(joined, ledger).query(epsilon=EPSILON).group_by("group", keys=groups)
                    .bound(max_partitions=1, max_rows_per_partition=kept_devices).count().release())
        counts = released["count"].to_numpy(dtype=np.float64)
        return np.where(counts >= BASE + kept_devices, 1, np.where(counts <= BASE, -1, 0))

    correct, guessed = _audit(run, runs=3, canaries=m, seed=7)
    assert guessed > 1000
    assert _epsilon_lower_bound(correct, guessed) <= EPSILON, (correct, guessed)


# half-widths: the stated 95% must hold, and not by a wide margin ------------------------------------------

@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_count_half_widths_cover_at_their_stated_rate(ledger, mechanism):
    groups, covered, total = [f"g{i}" for i in range(2000)], 0, 0
    frame = pd.DataFrame({"person_id": [f"p{i}" for i in range(6000)], "group": np.repeat(groups, 3)})
    for _ in range(3):
        query = (_session(frame, ledger).query(epsilon=0.1, delta=1e-6 if mechanism == "gaussian" else 0.0,
                                               mechanism=mechanism)
                 .group_by("group", keys=groups).count())
        released = query.release()
        covered += int((np.abs(released["count"] - 3) <= released["count_ci95"]).sum())
        total += len(released)
    assert binomtest(covered, total, 0.95, alternative="less").pvalue > ALPHA, covered / total
    assert covered / total <= 0.965, covered / total       # stated, not loosely conservative


def test_quantile_rank_half_width_is_tight_on_the_worst_data(ledger):
    """Every candidate but one is exactly ``ceil(half-width)`` ranks behind the best: coverage ~95%, not more."""
    candidates, bounds, groups = 32, (0.0, 31.0), [f"g{i}" for i in range(200)]
    grid = np.linspace(*bounds, candidates)
    probe = (_session(pd.DataFrame({"person_id": ["p"], "group": ["g0"], "value": [0.0]}), ledger)
             .query(epsilon=0.05).group_by("group", keys=groups).quantile("value", 0.5, bounds=bounds,
                                                                           candidates=candidates))
    half = float(probe.explain()["half_width_95"].iloc[0])
    rows = 2 * math.ceil(half)      # all at the best point: every other candidate is rows / 2 ranks behind
    best = grid[candidates // 2]
    frame = pd.DataFrame({"person_id": [f"p{i}" for i in range(rows * len(groups))],
                          "group": np.repeat(groups, rows), "value": best})
    covered = total = 0
    for _ in range(25):
        released = probe.session.__class__(frame, dataset="orders", ledger=ledger, purpose="privacy audit").query(
            epsilon=0.05).group_by("group", keys=groups).quantile("value", 0.5, bounds=bounds,
                                                                   candidates=candidates).release()
        assert (released["value_q50_ci95"] == half).all()
        covered += int((released["value_q50"] == best).sum())
        total += len(released)
    assert binomtest(covered, total, 0.95, alternative="less").pvalue > ALPHA, covered / total
    assert covered / total <= 0.965, covered / total
