"""The notebook API: a session bound to a dataset, its privacy unit and its budget.

Queries are built (each step validated at once) as a data-free ``dp.QueryPlan``, then
released: compile (validate fully against the budget, plan the OpenDP measurements) -> bound
contributions and total them on the session's frame -> charge the ledger (durable) -> add
OpenDP noise -> a pandas frame with each noisy value and its confidence half-width.

>>> import tempfile, pathlib, pandas as pd
>>> from dp.budget import BudgetLedger
>>> ledger = BudgetLedger(pathlib.Path(tempfile.mkdtemp()) / "ledger.sqlite")
>>> _ = ledger.set_budget("orders", epsilon=2.0, set_by="reviewer")
>>> orders = pd.DataFrame({"person_id": ["a", "a", "b", "c"], "category": ["x", "y", "x", "x"],
...                        "amount": [10.0, 20.0, 5.0, 7.5]})
>>> session = PrivateSession(orders, dataset="orders", ledger=ledger, analyst="ana", purpose="product improvement")
>>> query = (session.query(epsilon=1.0).group_by("category", keys=["x", "y"])
...          .bound(max_partitions=1, max_rows_per_partition=2).count().sum("amount", bounds=(0, 50)))
>>> list(query.release().columns)
['category', 'count', 'count_ci95', 'amount_sum', 'amount_sum_ci95']
>>> ledger.remaining("orders")["epsilon"]
1.0

Every release is epsilon-DP (or (epsilon, delta)-DP, or rho-zCDP, as the budget is kept) per
privacy unit (the session's ``privacy_unit`` column: all of a person's rows together), after
bounding to ``max_partitions`` groups and ``max_rows_per_partition`` rows per group. The
query's whole privacy parameter is charged, split equally between its aggregates.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from dp._bounding import PersonCodes, encode_persons
from dp._errors import PrivacyParameterError
from dp._kinds import ColumnKinds
from dp._parameters import check_positive_int
from dp._totals import bounded_totals
from dp.budget import DEFAULT_PERIOD, BudgetLedger, UnregisteredDatasetError
from dp.plan import CONFIDENCE, CompiledRelease, QueryPlan
from dp.units import covers
from profiling.errors import PortraitError

__all__ = ["PrivateSession", "Query"]


@dataclass(frozen=True, kw_only=True)
class Query(QueryPlan):
    """A ``QueryPlan`` bound to a session's data and budget; nothing runs until ``release``."""

    session: PrivateSession = field(repr=False, compare=False)

    def compile(self, **target) -> CompiledRelease:
        """The release checked against the session's budget and planned as OpenDP measurements; charges nothing."""
        return super().compile(**(target or self.session._target()))

    def explain(self) -> pd.DataFrame:
        """Mechanism, sensitivity, noise scale, cost and 95% half-width of each measurement; charges nothing
        (and answers whether or not the budget left covers the release)."""
        return self.compile(**self.session._target(), check_fits=False).explain()

    def release(self) -> pd.DataFrame:
        """Compile, total the bounded rows, charge the ledger, then noise and return the values.

        Returns one row per group (per public key, or per privately selected group) with each
        aggregate's noisy value and ``<aggregate>_ci95`` (at the query's confidence), the
        half-width of its confidence interval around the bounded (clamped, truncated) true value.
        """
        compiled = self.compile()
        return compiled.release(self.session._totals(self))


class PrivateSession:
    """A dataset whose releases are differentially private per privacy unit and charged to a budget.

    ``data`` is a pandas frame or Arrow table with one row per record and the privacy unit in
    ``privacy_unit`` (the column the dataset is registered with: the account pseudonym
    ``person_id``; or ``identity_id``, which covers it: an account with the devices only it used,
    attached by ``dp.units.attach_identity``). ``accounts_per_human=k`` calibrates every release so
    that any k units together (one human's unlinked accounts) get the claimed loss; the charge's
    query line records the unit and k.
    ``ledger`` is a ``BudgetLedger`` or its path; ``dataset`` must be registered there
    (``BudgetLedger.datasets()``: the analytics-zone table the data comes from) and its budget
    for ``period`` set by a reviewer. A unit over the bounds contributes their first rows in
    stored order (see ``dp._bounding``).
    """

    def __init__(self, data: pd.DataFrame | pa.Table, *, dataset: str, ledger: BudgetLedger | str | os.PathLike,
                 purpose: str, period: str = DEFAULT_PERIOD, privacy_unit: str = "person_id",
                 accounts_per_human: int = 1, analyst: str | None = None) -> None:
        self._schema = data.schema if isinstance(data, pa.Table) else None
        self.data = data.to_pandas() if isinstance(data, pa.Table) else data
        if not isinstance(self.data, pd.DataFrame):
            raise PortraitError(f"data must be a pandas DataFrame or an Arrow table, got {type(data).__name__}")
        self.dataset, self.period, self.purpose = dataset, period, purpose
        self.ledger = ledger if isinstance(ledger, BudgetLedger) else BudgetLedger(ledger)
        registered = self.ledger.dataset(dataset)   # only a registered dataset has a budget to charge
        if not covers(registered.privacy_unit, privacy_unit):
            raise PrivacyParameterError(f"dataset {dataset!r} is registered with privacy unit "
                                        f"{registered.privacy_unit!r}, not {privacy_unit!r}")
        source = (self._schema.metadata or {}).get(b"table", b"").decode() if self._schema is not None else ""
        if source and source not in registered.tables:   # an analytics-zone table names itself
            raise UnregisteredDatasetError(f"the data comes from table {source!r}, whose releases are charged to "
                                           f"dataset {self.ledger.dataset_of_table(source).name!r}, not {dataset!r}")
        self.privacy_unit = privacy_unit
        self.accounts_per_human = check_positive_int(accounts_per_human, "accounts_per_human")
        self.analyst = analyst or getpass.getuser()
        self.columns: Mapping[str, str] = ColumnKinds(self.data, self._schema)
        if privacy_unit not in self.columns:
            raise PortraitError(f"dataset {dataset!r} has no column {privacy_unit!r}; it has "
                                f"{', '.join(map(str, self.data.columns))}")
        self._persons: PersonCodes | None = None

    def __repr__(self) -> str:
        # no row count: the size of a consent-filtered table is itself a statistic about persons
        return (f"PrivateSession(dataset={self.dataset!r}, period={self.period!r}, "
                f"privacy_unit={self.privacy_unit!r}, accounts_per_human={self.accounts_per_human}, "
                f"ledger={self.ledger!r})")

    def query(self, *, epsilon: float | None = None, delta: float = 0.0, rho: float | None = None,
              mechanism: str = "laplace", confidence: float = CONFIDENCE) -> Query:
        """Start a query costing ``epsilon`` (with ``delta`` for Gaussian noise or private group selection) or
        ``rho``; its half-widths are at ``confidence`` (columns ``<aggregate>_ci95`` at 0.95, ``_ci90`` at 0.9)."""
        return Query(session=self, **QueryPlan._start_fields(
            columns=self.columns, privacy_unit=self.privacy_unit, source=f"dataset {self.dataset!r}",
            epsilon=epsilon, delta=delta, rho=rho, mechanism=mechanism, confidence=confidence,
            accounts_per_human=self.accounts_per_human))

    def epsilon_for(self, *, half_width: float | Mapping[str, float], query: QueryPlan,
                    confidence: float | None = None) -> float:
        """The smallest epsilon to pass to ``query(...)`` so that ``query``'s half-widths at ``confidence``
        (default: the query's) are at most ``half_width`` (one number, or aggregate name -> number).

        Exact for the mechanism the query uses (OpenDP's accuracy formula inverted, OpenDP's privacy
        map at the resulting scale); the query's own epsilon is ignored. Charges nothing.
        """
        if not isinstance(query, QueryPlan):
            raise PortraitError(f"epsilon_for needs a query built by session.query(...), got {type(query).__name__}")
        return query.epsilon_for(half_width, measure=self.ledger.budget(self.dataset, self.period).measure,
                                 confidence=confidence)

    def remaining(self) -> dict[str, float | None]:
        return self.ledger.remaining(self.dataset, self.period)

    def _target(self) -> dict:
        return dict(ledger=self.ledger, dataset=self.dataset, purpose=self.purpose, analyst=self.analyst,
                    period=self.period)

    def _totals(self, plan: QueryPlan):
        """The plan's exact bounded totals on this session's data (computed only for a compiled release)."""
        if self._persons is None:
            self._persons = encode_persons(self.data[self.privacy_unit])
        return bounded_totals(self.data, plan, self._persons)
