"""Releasing counts per public key from totals that were bounded elsewhere (e.g. per partition on an engine).

``plan_counts`` builds and validates the release exactly as ``PrivateSession.query(...).group_by(by,
keys).bound(...).count()`` does (same checks, same OpenDP calibration, same charge lines),
before anything is computed; ``CountRelease.release`` then charges the ledger (durable) and
draws the noise once, from the summed totals.

Privacy: epsilon-DP (or as the budget is kept) per person, on the condition the caller is
responsible for: ``totals[g]`` counts rows kept by person-level bounding (``dp._bounding``
rule) with the planned ``max_partitions`` and ``max_rows_per_partition``, so adding or
removing one person moves the vector by at most ``max_partitions * max_rows_per_partition``
in L1. Totals computed per partition of data partitioned by person and then summed satisfy it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dp import _mechanisms as mech
from dp.budget import DEFAULT_PERIOD, BudgetLedger, ChargeLine, _check_fits
from dp.session import PrivateSession, Query, _line
from profiling.errors import InternalError

__all__ = ["CountRelease", "plan_counts"]


@dataclass(frozen=True)
class CountRelease:
    """A validated, calibrated release of bounded counts per public key; nothing charged yet."""

    query: Query
    plan: mech.NoisePlan
    lines: tuple[ChargeLine, ...]

    @property
    def keys(self) -> tuple:
        return self.query.keys

    def release(self, totals) -> pd.DataFrame:
        """Charge the ledger, then noise ``totals`` (exact int64 counts, one per key) once.

        Returns ``(by, count, count_ci95)`` per key, as ``PrivateSession`` does.
        """
        exact = np.asarray(totals)
        if exact.shape != (len(self.keys),) or exact.dtype.kind not in "iu":
            raise InternalError(f"bounded totals must be {len(self.keys)} integers, one per key; got shape "
                                f"{exact.shape} of {exact.dtype}")
        if len(exact) and exact.min() < 0:
            raise InternalError("a bounded count is negative")
        session = self.query.session
        release_id = session.ledger.charge(
            session.dataset, session.period, list(self.lines), analyst=session.analyst, purpose=session.purpose,
            query=self.query.describe(), features=mech.enabled_features())
        # charged and durable: from here on a failure loses budget, never privacy
        noisy = mech.add_vector_noise(self.plan, exact.astype(np.int64)).astype(np.float64)
        session.ledger.mark_released(release_id)
        return pd.DataFrame({self.query.by: list(self.keys), "count": noisy,
                             "count_ci95": np.full(len(noisy), self.plan.half_width)})


def plan_counts(*, by: str, keys, dataset: str, ledger: BudgetLedger, purpose: str, analyst: str | None = None,
                period: str = DEFAULT_PERIOD, epsilon: float | None = None, delta: float = 0.0,
                rho: float | None = None, mechanism: str = "laplace", max_partitions: int = 1,
                max_rows_per_partition: int = 1) -> CountRelease:
    """Validate and calibrate a count per public key of ``by``; raises before any charge on a bad parameter.

    ``BudgetNotSetError`` is raised here too when ``dataset`` has no budget, and
    ``BudgetExceededError`` when what is left already does not cover the release (so no totals
    are computed in vain; ``release`` checks again atomically when it charges).
    """
    if keys is None:
        raise InternalError("bounded totals are released only for public keys")
    empty = pd.DataFrame({"person_id": pd.Series([], dtype=object), by: pd.Series([], dtype=object)})
    session = PrivateSession(empty, dataset=dataset, ledger=ledger, purpose=purpose, period=period, analyst=analyst)
    query = (session.query(epsilon=epsilon, delta=delta, rho=rho, mechanism=mechanism).group_by(by, keys=keys)
             .bound(max_partitions=max_partitions, max_rows_per_partition=max_rows_per_partition).count())
    measure = query._validate()
    plans = query._plans(measure)
    if [name for name, _ in plans] != ["count"]:
        raise InternalError(f"a count release planned {[name for name, _ in plans]}")
    lines = tuple(_line(name, plan, query, measure) for name, plan in plans)
    asked = {name: math.fsum(getattr(line, name) for line in lines) for name in ("epsilon", "delta", "rho")}
    _check_fits(session.ledger.budget(dataset, period), session.ledger.spent(dataset, period), asked)
    return CountRelease(query, plans[0][1], lines)
