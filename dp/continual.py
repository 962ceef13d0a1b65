"""Continual counts: a count per public key released every day of a horizon under one charge.

A daily job that releases a cumulative count afresh pays epsilon every day (a budget of 1 at
0.1 a run lasts ten days). A ``ContinualCounter`` instead releases the cumulative counts of
days 1..T (T = ``horizon_days``, e.g. 365) by tree aggregation (Dwork, Naor, Pitassi and
Rothblum 2010; Chan, Shi and Song 2011) with a branching factor ``arity`` chosen for T:

* the day's exact counts per key (one vector per day, a *leaf*) and, at each level j, the sums
  of ``arity**j`` consecutive days (a *node*) each get noise drawn by OpenDP once, at the
  moment the node's last day is released; the node is then stored in the ledger and reused,
  never redrawn;
* the cumulative count of day d is the sum of at most ``digit sum of d in base arity`` nodes,
  so its noise grows with log(T), not with T.

Privacy unit and bound: the person, over the whole horizon. The caller's daily counts must count
each person at most ``max_count_per_key`` times in each of at most ``max_keys_per_person`` keys
over all days together (the popularity job clips cumulatively: a person's first
``max_keys_per_person`` distinct items since the schedule's start, in purchase order; later
purchases count zero). A person then changes at most ``levels`` nodes per key they count in,
one per level: L1 sensitivity of all nodes together ``levels * max_keys_per_person *
max_count_per_key``, L2 sensitivity ``sqrt(levels * max_keys_per_person) * max_count_per_key``.
Each node is computed when it completes, from the data then: orders arriving late, or consent
that lapses and returns, cannot count a person twice in a level, since a node counts only keys
first bought within its days and every key counted before in that level was first bought earlier
and so uses up the person's bound (past orders only ever added, never rewritten).
The noise (discrete Laplace for an epsilon budget, pure epsilon-DP; discrete Gaussian for a rho
budget, rho-zCDP) is calibrated by OpenDP's privacy map for that sensitivity, so every node of
the horizon together, and every day's release computed from them, is epsilon-DP (or rho-zCDP)
per person: the whole horizon is charged once, when the schedule is created. Streams are taken
as fixed in advance; releases that feed back into later data (adaptive streams) are covered by
Denisov et al. 2022 for the Gaussian case and are not claimed here for Laplace.

State and threat: a day's release is a new process, so the drawn nodes live in the workspace's
ledger (``budget_schedule_nodes``, owner-only file, append-only and hash-chained). What is stored
is each node's *noisy* sum, never the noise alone nor an exact count: the noisy nodes are
exactly what the epsilon guarantee covers, so reading them reveals no more than the releases.
Storing the noise would be secret (noise plus a release gives the exact counts). What must not
happen is a node drawn twice (averaging two draws halves the noise): a node is stored once
(unique index); a second draw is refused, and only stored nodes are ever released. Not
protected: whoever can write the ledger can replace nodes and rebuild the chain (see
``profiling.ledger_chain``); past orders rewritten after their day (a correction) can count a
person again under a later day.
"""

from __future__ import annotations

import base64
import getpass
import math
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

import numpy as np
import pandas as pd

from dp import _mechanisms as mech
from dp._errors import PrivacyParameterError
from dp._parameters import check_positive_int, check_release_privacy
from dp.budget import DEFAULT_PERIOD, BudgetLedger, ChargeLine, ScheduleError
from profiling.errors import InternalError

__all__ = ["MAX_HORIZON_DAYS", "ContinualCounter", "DayRelease", "ScheduleError", "TreeShape"]

MAX_HORIZON_DAYS = 3660   # ten years of days
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class TreeShape:
    """The nodes of tree aggregation over ``horizon`` days with branching factor ``arity``.

    Level j holds nodes of ``arity**j`` days; node (j, p) covers days ``(p-1)*arity**j + 1`` to
    ``p*arity**j`` (1-based). Only levels whose nodes fit in the horizon exist.

    >>> shape = TreeShape(365, 20)
    >>> shape.levels, shape.prefix_nodes(45), shape.completed(40)
    (2, [(1, 1), (1, 2), (0, 41), (0, 42), (0, 43), (0, 44), (0, 45)], [(0, 40), (1, 2)])
    """

    horizon: int
    arity: int

    @cached_property
    def levels(self) -> int:
        levels, size = 1, self.arity
        while size <= self.horizon:   # a level whose first node ends within the horizon
            levels, size = levels + 1, size * self.arity
        return levels

    def completed(self, day: int) -> list[tuple[int, int]]:
        """The nodes whose last day is ``day``."""
        return [(j, day // self.arity ** j) for j in range(self.levels) if day % self.arity ** j == 0]

    def prefix_nodes(self, day: int) -> list[tuple[int, int]]:
        """The nodes whose sum is days 1..``day``: the base-``arity`` digits of ``day``, highest level first."""
        nodes, done = [], 0
        for j in reversed(range(self.levels)):
            size = self.arity ** j
            while done + size <= day:
                done += size
                nodes.append((j, done // size))
        return nodes

    def days(self, node: tuple[int, int]) -> tuple[int, int]:
        level, position = node
        size = self.arity ** level
        return (position - 1) * size + 1, position * size

    def digit_sums(self) -> np.ndarray:
        """How many nodes each day's release sums, for days 1..horizon."""
        day = np.arange(1, self.horizon + 1)
        total = np.zeros(self.horizon, dtype=np.int64)
        rest = day.copy()
        for j in reversed(range(self.levels)):
            total += rest // self.arity ** j
            rest %= self.arity ** j
        return total

    @classmethod
    def best(cls, horizon: int, norm: str) -> TreeShape:
        """The arity with the smallest worst-day noise variance (then the smallest mean) for ``horizon`` days.

        A day's variance is (nodes summed) x (per-node variance); per-node variance grows with
        levels**2 under L1 sensitivity (Laplace) and with levels under L2 (Gaussian). For 365 days
        that is arity 20 (two levels, at most 36 nodes a day) under L1, about half the binary
        tree's error (nine levels, up to 8 nodes), and arity 5 (four levels) under L2.
        """
        best, score = None, None
        for arity in range(2, horizon + 2):
            shape = cls(horizon, arity)
            sums = shape.digit_sums()
            per_node = shape.levels ** 2 if norm == "l1" else shape.levels
            candidate = (int(sums.max()) * per_node, float(sums.mean()) * per_node)
            if score is None or candidate < score:
                best, score = shape, candidate
        return best


def _encode(values: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.asarray(values, dtype="<i8").tobytes(), 6)).decode("ascii")


def _decode(text: str, keys: int) -> np.ndarray:
    values = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<i8")
    if values.shape != (keys,):
        raise InternalError(f"a stored schedule node holds {values.shape[0]} values for {keys} keys")
    return values.astype(np.int64)


def _noise_pmf(mechanism: str, scale: float, step: float) -> np.ndarray:
    """One node's noise distribution on a grid of ``step`` (1: exact for the discrete mechanisms)."""
    reach = 40.0 * scale if mechanism == "discrete Laplace" else 12.0 * scale
    grid = np.arange(-math.ceil(reach / step), math.ceil(reach / step) + 1) * step
    density = np.exp(-np.abs(grid) / scale) if mechanism == "discrete Laplace" else np.exp(-grid ** 2 / (2 * scale ** 2))
    return density / density.sum()


def _sum_half_width(mechanism: str, scale: float, nodes: int, confidence: float = mech.CONFIDENCE) -> float:
    """The ``confidence`` half-width of the sum of ``nodes`` independent node noises (count units).

    Computed from the noise distribution by FFT convolution: exact on the integers for scales
    below 20; above, on a grid of scale/256 with every variable's rounding (step/2 each) added,
    so the figure is never smaller than the true one.
    """
    if nodes == 0:
        return 0.0
    step = 1.0 if scale < 20 else scale / 256.0
    pmf = _noise_pmf(mechanism, scale, step)
    size = nodes * (len(pmf) - 1) + 1
    length = 1 << (size - 1).bit_length()
    total = np.fft.irfft(np.fft.rfft(pmf, length) ** nodes, length)[:size].clip(min=0.0)
    total /= total.sum()
    middle = size // 2
    inside = total[middle] + np.concatenate([[0.0], np.cumsum(total[middle + 1:] + total[middle - 1::-1][:size - middle - 1])])
    index = int(np.searchsorted(inside, confidence))
    return index * step + (0.0 if step == 1.0 else nodes * step / 2.0)


@dataclass(frozen=True)
class DayRelease:
    """One day's release of a schedule: the noisy cumulative count per key since the schedule's start."""

    schedule_id: str
    day: int
    release_id: str
    counts: pd.DataFrame      # key column, count (noisy, cumulative), count_ci95 (95% half-width, same for all keys)
    nodes_summed: int


class ContinualCounter:
    """A continual count per public key over ``horizon_days`` days, charged once (see the module docstring).

    Create one with ``ContinualCounter.create`` (charges the horizon), find it again in a later
    process with ``ContinualCounter.latest``, and call ``release(day, daily_counts)`` once per day.

    >>> import tempfile, pathlib, numpy as np
    >>> ledger = BudgetLedger(pathlib.Path(tempfile.mkdtemp()) / "ledger.sqlite")
    >>> _ = ledger.set_budget("orders", epsilon=1.0, set_by="reviewer")
    >>> counter = ContinualCounter.create(ledger, name="popularity", dataset="orders", purpose="product_improvement",
    ...     by="item_id", keys=["a", "b"], start="2026-11-01T00:00:00+00:00", horizon_days=365, epsilon=1.0,
    ...     max_keys_per_person=5, analyst="doc")
    >>> ledger.remaining("orders")["epsilon"], counter.shape.arity, counter.shape.levels
    (0.0, 20, 2)
    >>> release = counter.release(1, np.array([[3, 0]]))
    >>> list(release.counts.columns), release.day
    (['item_id', 'count', 'count_ci95'], 1)
    """

    def __init__(self, ledger: BudgetLedger, record: dict) -> None:
        self.ledger = ledger
        self.record = record
        self.shape = TreeShape(record["horizon_days"], record["arity"])
        if self.shape.levels != record["levels"]:
            raise InternalError(f"schedule {record['schedule_id']} records {record['levels']} levels; its shape has "
                                f"{self.shape.levels}")

    def __repr__(self) -> str:
        return f"ContinualCounter({self.record['name']!r}, {self.record['schedule_id']})"

    # creation and lookup ---------------------------------------------------------------------

    @classmethod
    def create(cls, ledger: BudgetLedger, *, name: str, dataset: str, purpose: str, by: str, keys, start,
               horizon_days: int = 365, epsilon: float | None = None, rho: float | None = None,
               max_keys_per_person: int, max_count_per_key: int = 1, analyst: str | None = None,
               period: str = DEFAULT_PERIOD) -> ContinualCounter:
        """Plan the schedule, charge its whole horizon to ``dataset``'s budget once, and record it.

        ``keys`` are the public keys of column ``by`` (fixed for the horizon); ``start`` the
        moment day 1 begins (ISO 8601 with offset, or an aware datetime); day d covers
        ``[start + (d-1) days, start + d days)``. Pass ``epsilon`` (discrete Laplace, pure DP) or
        ``rho`` (discrete Gaussian, zCDP), as the budget is kept. Raises before any charge on a
        bad parameter; ``BudgetExceededError`` when the budget does not cover the horizon.
        """
        where = f"continual schedule {name!r}"
        if not isinstance(name, str) or not name.strip():
            raise PrivacyParameterError(f"a continual schedule needs a name, got {name!r}")
        horizon_days = check_positive_int(horizon_days, "horizon_days", where)
        if horizon_days > MAX_HORIZON_DAYS:
            raise PrivacyParameterError(f"horizon_days {horizon_days} in {where} is above {MAX_HORIZON_DAYS}; "
                                        f"schedule at most ten years at once")
        max_keys_per_person = check_positive_int(max_keys_per_person, "max_keys_per_person", where)
        max_count_per_key = check_positive_int(max_count_per_key, "max_count_per_key", where)
        keys = list(keys) if keys is not None else []
        if not keys or len(set(keys)) != len(keys):
            raise PrivacyParameterError(f"{where} needs a non-empty list of distinct public keys")
        moment = _moment(start, "start", where)
        if (epsilon is None) == (rho is None):
            raise PrivacyParameterError(f"{where}: pass either epsilon (discrete Laplace) or rho (discrete Gaussian)")
        epsilon, _, rho = check_release_privacy(epsilon, 0.0, rho, where)
        budget = ledger.budget(dataset, period)
        measure = budget.measure
        if (rho is None) == (measure == mech.ZCDP):
            raise PrivacyParameterError(f"the budget of {dataset!r} is kept in {'rho' if rho is None else 'epsilon'}; "
                                        f"pass {'rho' if rho is None else 'epsilon'} for {where}")
        mechanism = "gaussian" if rho is not None else "laplace"
        shape = TreeShape.best(horizon_days, "l2" if rho is not None else "l1")
        l1 = shape.levels * max_keys_per_person * max_count_per_key
        l2 = math.sqrt(shape.levels * max_keys_per_person) * max_count_per_key
        plan = mech.plan_vector_noise(mechanism=mechanism, measure=measure, l1_sensitivity=l1, l2_sensitivity=l2,
                                      epsilon=epsilon, delta=0.0, rho=rho)
        worst = _sum_half_width(plan.mechanism, plan.scale, int(shape.digit_sums().max()))   # the worst day's
        sensitivity = (f"L1 {l1} = {shape.levels} levels x {max_keys_per_person} keys x {max_count_per_key}"
                       if mechanism == "laplace" else
                       f"L2 {l2:.6g} = sqrt({shape.levels} levels x {max_keys_per_person} keys) x {max_count_per_key}")
        cost = plan.cost()
        line = ChargeLine(f"continual count over {horizon_days} days", f"{plan.mechanism} tree (arity {shape.arity})",
                          sensitivity, plan.scale, cost["epsilon"], cost["delta"], cost["rho"], worst)
        query = f"continual count by {by} over {len(keys)} public keys, {horizon_days} days from {moment.isoformat()}"
        schedule_id = ledger.create_schedule(
            name=name, dataset=dataset, period=period, purpose=purpose, query=query, by=by, keys=keys,
            start=moment.isoformat(), horizon_days=horizon_days, arity=shape.arity, levels=shape.levels,
            max_keys_per_person=max_keys_per_person, max_count_per_key=max_count_per_key, line=line,
            analyst=analyst or getpass.getuser(), features=mech.enabled_features())
        return cls.latest(ledger, name, dataset, schedule_id=schedule_id)

    @classmethod
    def latest(cls, ledger: BudgetLedger, name: str, dataset: str, *,
               schedule_id: str | None = None) -> ContinualCounter | None:
        """The most recent schedule ``name`` of ``dataset`` (or the one with ``schedule_id``); None if none."""
        found = [r for r in ledger.schedules(name, dataset) if schedule_id in (None, r["schedule_id"])]
        return cls(ledger, found[-1]) if found else None

    # the schedule ----------------------------------------------------------------------------

    @property
    def schedule_id(self) -> str:
        return self.record["schedule_id"]

    @property
    def keys(self) -> tuple:
        return self.record["keys"]

    @property
    def start(self) -> datetime:
        return datetime.fromisoformat(self.record["start"])

    def day_of(self, as_of: datetime) -> int:
        """The last whole day before ``as_of`` (0: day 1 has not ended; may pass the horizon)."""
        return max(0, (_moment(as_of, "as_of", repr(self)) - self.start) // _DAY)

    def day_end(self, day: int) -> datetime:
        """The moment day ``day`` ends: its release counts what happened before it."""
        return self.start + day * _DAY

    def released_days(self) -> list[dict]:
        return self.ledger.schedule_days(self.schedule_id)

    def worst_day(self) -> int:
        """The first day whose release sums the most nodes (its error is the schedule's largest)."""
        return int(self.shape.digit_sums().argmax()) + 1

    def half_width(self, day: int) -> float:
        """The 95% half-width of every key's count on ``day`` (the same for all keys; count units)."""
        nodes = len(self.shape.prefix_nodes(day))
        mechanism = "discrete Gaussian" if "Gaussian" in self.record["mechanism"] else "discrete Laplace"
        return _sum_half_width(mechanism, self.record["noise_scale"], nodes)

    def check_day(self, day: int) -> None:
        """``ScheduleError`` for a day past the horizon (its budget covers days 1..horizon only)."""
        if day > self.shape.horizon:
            raise ScheduleError(f"schedule {self.record['name']!r} ({self.schedule_id}) covers days 1 to "
                                f"{self.shape.horizon}; day {day} is outside it and its budget. Create a new "
                                f"schedule (`portrait budget schedule`) for the next horizon")

    def check_keys(self, keys) -> None:
        """``ScheduleError`` unless ``keys`` are the schedule's keys (in any order)."""
        keys = list(keys)
        if len(keys) != len(self.keys) or set(keys) != set(self.keys):
            added, gone = len(set(keys) - set(self.keys)), len(set(self.keys) - set(keys))
            raise ScheduleError(f"schedule {self.record['name']!r} ({self.schedule_id}) was created over "
                                f"{len(self.keys)} keys; these are {len(keys)} ({added} new, {gone} gone): its "
                                f"nodes cannot sum other keys. Create a new schedule for the new keys")

    # releasing -------------------------------------------------------------------------------

    def release(self, day: int, daily_counts, keys=None) -> DayRelease:
        """Release the noisy cumulative count per key of days 1..``day``; nothing is charged.

        ``daily_counts`` is a (days, keys) integer matrix, row i the bounded count of day i + 1
        for days 1..``day`` at least (see the module docstring for the bound it must respect);
        ``keys``, if given, name the matrix's columns and must be the schedule's keys (any order;
        the release is in the schedule's order). Only the nodes that complete by ``day`` and
        were not drawn before are noised (by OpenDP), stored with the day's record, and then the
        day's counts are summed from the stored nodes. Refused (``ScheduleError``) past the
        horizon or for a day not after the last one released.
        """
        day = check_positive_int(day, "day", repr(self))
        self.check_day(day)
        exact = np.asarray(daily_counts)
        if keys is not None:
            self.check_keys(keys)
            column = {key: i for i, key in enumerate(keys)}
            exact = exact[:, [column[key] for key in self.keys]] if exact.ndim == 2 else exact
        if exact.ndim != 2 or exact.shape[1] != len(self.keys) or exact.shape[0] < day:
            raise InternalError(f"daily counts must be a (days >= {day}, {len(self.keys)}) matrix, got {exact.shape}")
        if exact.dtype.kind not in "iu" or (exact.size and exact.min() < 0):
            raise InternalError("daily counts must be non-negative integers")
        stored = self.ledger.schedule_node_keys(self.schedule_id)
        due = [node for d in range(1, day + 1) for node in self.shape.completed(d) if node not in stored]
        plan = self._plan()
        drawn = []
        for node in due:
            first, last = self.shape.days(node)
            sums = exact[first - 1:last].sum(axis=0, dtype=np.int64)
            drawn.append((*node, _encode(mech.add_vector_noise(plan, sums))))
        release_id = self.ledger.record_schedule_day(self.schedule_id, day, drawn)
        nodes = self.shape.prefix_nodes(day)
        stored = self.ledger.schedule_nodes(self.schedule_id, nodes)
        total = np.zeros(len(self.keys), dtype=np.int64)
        for node in nodes:
            total += _decode(stored[node], len(self.keys))
        frame = pd.DataFrame({self.record["by_column"]: list(self.keys), "count": total.astype(np.float64),
                              "count_ci95": np.full(len(self.keys), self.half_width(day))})
        return DayRelease(self.schedule_id, day, release_id, frame, len(nodes))

    def _plan(self) -> mech.NoisePlan:
        """The noise of one node, as planned at creation (scale from the ledger; no cost: charged once)."""
        gaussian = "Gaussian" in self.record["mechanism"]
        return mech.NoisePlan("discrete Gaussian" if gaussian else "discrete Laplace",
                              mech.ZCDP if gaussian else mech.PURE, None, self.record["noise_scale"],
                              None, None, None, 0.0)


def _moment(value, name: str, where: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PrivacyParameterError(f"{name} {value!r} of {where} is not an ISO 8601 moment such as "
                                        f"2026-11-01T00:00:00Z") from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise PrivacyParameterError(f"{name} of {where} must be a moment with a UTC offset, got {value!r}")
    return value.astimezone(UTC)
