"""The notebook API: a session bound to a dataset, its privacy unit and its budget.

Queries are built (each step validated at once), then released: validate fully ->
charge the ledger (durable) -> bound contributions and aggregate -> add OpenDP noise ->
a pandas frame with each noisy value and its 95% confidence half-width.

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
person: all of a person's rows together, after bounding to ``max_partitions`` groups and
``max_rows_per_partition`` rows per group. The query's whole privacy parameter is charged,
split equally between its aggregates.
"""

from __future__ import annotations

import getpass
import itertools
import math
import numbers
import os
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import pyarrow as pa

from dp import _mechanisms as mech
from dp._bounding import (
    GroupCodes,
    PersonCodes,
    SumColumn,
    bound_contributions,
    encode_persons,
)
from dp._errors import PrivacyParameterError
from dp._parameters import (
    check_bounds,
    check_positive_int,
    check_probability,
    check_release_privacy,
    check_resolution,
)
from dp.budget import DEFAULT_PERIOD, BudgetLedger, ChargeLine, UnregisteredDatasetError
from profiling.errors import InternalError, PortraitError

__all__ = ["PrivateSession", "Query"]

_MECHANISMS = ("laplace", "gaussian")
_MAX_CANDIDATES = 10_000
# Sums are exact integers in float64 and int64 only while a person's bounded contribution stays under 2**52 units.
_MAX_CONTRIBUTION_UNITS = 2**52


@dataclass(frozen=True)
class _Aggregate:
    kind: str                     # count | sum | mean | quantile
    column: str | None = None
    bounds: tuple[float, float] | None = None
    resolution: float = 0.01
    quantile: float | None = None
    candidates: int = 128

    @property
    def name(self) -> str:
        if self.kind == "count":
            return "count"
        if self.kind == "quantile":
            return f"{self.column}_q{round(self.quantile * 100):02d}"
        return f"{self.column}_{self.kind}"


@dataclass(frozen=True)
class Query:
    """A release under construction; every method returns a new query. Nothing runs until ``release``."""

    session: PrivateSession
    epsilon: float | None
    delta: float
    rho: float | None
    mechanism: str = "laplace"
    by: str | None = None
    keys: tuple | None = None
    edges: tuple[float, ...] | None = None
    max_partitions: int = 1
    max_rows_per_partition: int = 1
    aggregates: tuple[_Aggregate, ...] = field(default_factory=tuple)

    # building ------------------------------------------------------------------------------------------

    def group_by(self, column: str, keys=None) -> Query:
        """Group by ``column``: with ``keys`` (public, declared in advance) every key gets a row; without,
        only the groups that pass OpenDP's noisy threshold appear (needs delta > 0; not available under a
        rho (zCDP) budget, which refuses it: the threshold's cost is (epsilon, delta) and is not converted)."""
        self.session._require_column(column)
        if keys is not None:
            keys = tuple(dict.fromkeys(keys))
            if not keys:
                raise PortraitError("group_by keys is empty; pass the public list of groups, or keys=None to select "
                                    "groups privately")
            self.session._check_keys(column, keys)
        return replace(self, by=column, keys=keys, edges=None)

    def histogram(self, column: str, edges) -> Query:
        """Group by the bin of ``column`` between consecutive public ``edges`` ([e0, e1), ..., [e_n-1, e_n]);
        values outside the edges are not counted."""
        self.session._require_kind(column, _NUMERIC, "a histogram")
        values = [float(e) for e in edges]
        if len(values) < 2 or any(not math.isfinite(v) for v in values) or any(
                b <= a for a, b in itertools.pairwise(values)):
            raise PrivacyParameterError(f"histogram edges of {column!r} must be at least two finite, strictly "
                                        f"increasing numbers, got {list(edges)!r}")
        labels = tuple(f"[{a:g}, {b:g})" for a, b in itertools.pairwise(values))
        return replace(self, by=column, keys=labels, edges=tuple(values))

    def bound(self, *, max_partitions: int = 1, max_rows_per_partition: int = 1) -> Query:
        """Each person contributes to at most ``max_partitions`` groups and ``max_rows_per_partition`` rows in each."""
        return replace(self, max_partitions=check_positive_int(max_partitions, "max_partitions"),
                       max_rows_per_partition=check_positive_int(max_rows_per_partition, "max_rows_per_partition"))

    def count(self) -> Query:
        """Noisy row count per group (after bounding)."""
        return self._add(_Aggregate("count"))

    def sum(self, column: str, *, bounds, resolution: float = 0.01) -> Query:
        """Noisy sum of ``column`` clamped to ``bounds``, exact in multiples of ``resolution``; nulls count as 0."""
        return self._add(self._numeric("sum", column, bounds, resolution))

    def mean(self, column: str, *, bounds, resolution: float = 0.01) -> Query:
        """Noisy sum / noisy count (half the aggregate's share each); the half-width bounds both noises at 97.5%."""
        return self._add(self._numeric("mean", column, bounds, resolution))

    def quantile(self, column: str, q: float, *, bounds, candidates: int = 128) -> Query:
        """The ``q``-quantile among ``candidates`` evenly spaced points of ``bounds`` (OpenDP's private
        quantile, permute-and-flip). Its ``_ci95`` half-width is in ranks (rows), not units: with 95% probability the
        released point's rank misses the best grid point's by fewer rows (see ``plan_quantile``)."""
        aggregate = self._numeric("quantile", column, bounds, 0.01)
        where = f"quantile of {column!r}"
        candidates = check_positive_int(candidates, "candidates", where)
        if not 2 <= candidates <= _MAX_CANDIDATES:
            raise PrivacyParameterError(f"candidates must be between 2 and {_MAX_CANDIDATES:,} in {where}, got "
                                        f"{candidates:,}; 128 points of the bounds are usually enough")
        return self._add(replace(aggregate, quantile=check_probability(q, "q", where), candidates=candidates))

    def _numeric(self, kind: str, column: str, bounds, resolution: float) -> _Aggregate:
        self.session._require_kind(column, _NUMERIC, f"a {kind}")
        where = f"{kind} of {column!r}"
        return _Aggregate(kind, column, check_bounds(bounds, "bounds", where), check_resolution(resolution, where=where))

    def _add(self, aggregate: _Aggregate) -> Query:
        if any(a.name == aggregate.name for a in self.aggregates):
            raise PortraitError(f"the query already has an aggregate {aggregate.name!r}")
        return replace(self, aggregates=(*self.aggregates, aggregate))

    # planning ------------------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line saying what is released, as the ledger records it."""
        grouping = "" if self.by is None else (
            f" by {self.by} ({len(self.keys)} public keys)" if self.keys is not None else f" by {self.by} (keys selected privately)")
        parts = ", ".join(a.name for a in self.aggregates) or "nothing"
        return (f"{parts}{grouping}; {self.mechanism} noise; per person at most {self.max_partitions} group(s) x "
                f"{self.max_rows_per_partition} row(s)")

    def _validate(self) -> str:
        """Everything checkable before the charge; returns the budget's measure."""
        if not self.aggregates:
            raise PortraitError("the query has no aggregate; add .count(), .sum(...), .mean(...) or .quantile(...)")
        budget = self.session.ledger.budget(self.session.dataset, self.session.period)
        where = f"a release on {self.session.dataset!r}"
        if budget.measure == mech.ZCDP:
            if self.rho is None or self.epsilon is not None:
                raise PrivacyParameterError(f"{where}: the budget is kept in rho (zCDP); pass rho=... to query()")
            if self.by is not None and self.keys is None:
                raise PrivacyParameterError(f"{where}: selecting groups privately is (epsilon, delta)-DP and cannot be "
                                            f"charged to a rho budget; pass the public keys to group_by")
        else:
            if self.epsilon is None or self.rho is not None:
                raise PrivacyParameterError(f"{where}: the budget is kept in (epsilon, delta); pass epsilon=... to query()")
            needs_delta = self.mechanism == "gaussian" or (self.by is not None and self.keys is None)
            if needs_delta and self.delta == 0:
                raise PrivacyParameterError(f"{where}: Gaussian noise and private group selection need delta > 0; "
                                            f"pass e.g. delta=1e-7 to query()")
        if self.by is not None and self.keys is None and self.max_partitions * self.max_rows_per_partition == 0:
            raise InternalError("bounds must be positive")
        for aggregate in self.aggregates:
            if aggregate.kind in ("sum", "mean"):
                _check_units(aggregate, self.max_partitions * self.max_rows_per_partition)
        return budget.measure

    def _plans(self, measure: str) -> list[tuple[str, mech.NoisePlan]]:
        """(aggregate name, plan) for every measurement, with the query's loss split equally."""
        K, R = self.max_partitions, self.max_rows_per_partition
        if self.by is None:
            K = 1
        selecting = self.by is not None and self.keys is None
        parts = len(self.aggregates) + (1 if selecting and not any(a.kind == "count" for a in self.aggregates) else 0)
        delta_parts = (1 if selecting else 0) + (len(self.aggregates) if self.mechanism == "gaussian" else 0)
        share = {"epsilon": None if self.epsilon is None else self.epsilon / parts,
                 "rho": None if self.rho is None else self.rho / parts,
                 "delta": self.delta / delta_parts if delta_parts else 0.0}

        def vector(l1: float, l2: float, fraction: float = 1.0) -> mech.NoisePlan:
            return mech.plan_vector_noise(
                mechanism=self.mechanism, measure=measure, l1_sensitivity=math.ceil(l1), l2_sensitivity=l2,
                epsilon=None if share["epsilon"] is None else share["epsilon"] * fraction,
                delta=share["delta"] * fraction if self.mechanism == "gaussian" else None,
                rho=None if share["rho"] is None else share["rho"] * fraction)

        plans = []
        if selecting:
            plans.append(("count", mech.plan_threshold(max_partitions=K, max_rows_per_partition=R,
                                                       epsilon=share["epsilon"], delta=share["delta"])))
        for aggregate in self.aggregates:
            if aggregate.kind == "count":
                if not selecting:
                    plans.append(("count", vector(K * R, R * math.sqrt(K))))
            elif aggregate.kind in ("sum", "mean"):
                units = _units(aggregate)
                largest = max(abs(units[0]), abs(units[1]))
                fraction = 0.5 if aggregate.kind == "mean" else 1.0
                plans.append((f"{aggregate.name}:sum", vector(K * R * largest, R * math.sqrt(K) * largest, fraction)))
                if aggregate.kind == "mean":
                    plans.append((f"{aggregate.name}:count", vector(K * R, R * math.sqrt(K), fraction)))
            else:
                lower, upper = aggregate.bounds
                grid = list(np.linspace(lower, upper, aggregate.candidates))
                per_group = {k: (None if v is None else v / K) for k, v in share.items()}
                plans.append((aggregate.name, mech.plan_quantile(
                    measure=measure, rows_per_person=R, candidates=grid, alpha=aggregate.quantile,
                    epsilon=per_group["epsilon"], rho=per_group["rho"])))
        return plans

    def explain(self) -> pd.DataFrame:
        """Mechanism, sensitivity, noise scale, cost and 95% half-width of each measurement; charges nothing."""
        measure = self._validate()
        return pd.DataFrame([_line(name, plan, self, measure).__dict__ for name, plan in self._plans(measure)])

    # releasing -----------------------------------------------------------------------------------------

    def release(self) -> pd.DataFrame:
        """Validate, charge the ledger, then compute and return the noisy values.

        Returns one row per group (per public key, or per privately selected group) with each
        aggregate's noisy value and ``<aggregate>_ci95``, the half-width of its 95% confidence
        interval around the bounded (clamped, truncated) true value.
        """
        measure = self._validate()
        plans = self._plans(measure)
        lines = [_line(name, plan, self, measure) for name, plan in plans]
        release_id = self.session.ledger.charge(
            self.session.dataset, self.session.period, lines, analyst=self.session.analyst,
            purpose=self.session.purpose, query=self.describe(), features=mech.enabled_features())
        # charged and durable: from here on a failure loses budget, never privacy
        frame = self.session._compute(self, dict(plans))
        self.session.ledger.mark_released(release_id)
        return frame


def _units(aggregate: _Aggregate) -> tuple[int, int]:
    lower, upper = aggregate.bounds
    return round(lower / aggregate.resolution), round(upper / aggregate.resolution)


def _check_units(aggregate: _Aggregate, rows_per_person: int) -> None:
    """The bounds must be whole multiples of the resolution, apart, and small enough to sum exactly."""
    where = f"the {aggregate.kind} of {aggregate.column!r}"
    lower, upper = aggregate.bounds
    for bound in (lower, upper):
        units = bound / aggregate.resolution
        if abs(units - round(units)) > 1e-6 * max(1.0, abs(units)):
            raise PrivacyParameterError(f"bound {bound:g} of {where} is not a whole multiple of its resolution "
                                        f"{aggregate.resolution:g}; round the bounds to the resolution")
    low_units, high_units = _units(aggregate)
    if low_units >= high_units:
        raise PrivacyParameterError(f"the bounds ({lower:g}, {upper:g}) of {where} are closer than its resolution "
                                    f"{aggregate.resolution:g}; widen them or pass a finer resolution")
    largest = max(abs(low_units), abs(high_units)) * rows_per_person
    if largest > _MAX_CONTRIBUTION_UNITS:
        raise PrivacyParameterError(f"one person may add up to {largest:.3g} units of {aggregate.resolution:g} to "
                                    f"{where} (bounds x rows per person), more than the 2**52 that sum exactly; "
                                    f"narrow the bounds, coarsen the resolution or lower the row bounds")


def _line(name: str, plan: mech.NoisePlan, query: Query, measure: str) -> ChargeLine:
    unit = 1.0
    aggregate = next((a for a in query.aggregates if name.split(":")[0] == a.name), None)
    if aggregate is not None and aggregate.kind in ("sum", "mean") and not name.endswith(":count"):
        unit = aggregate.resolution
    sensitivity = f"{plan.sensitivity}" if unit == 1.0 else f"{plan.sensitivity} x {unit:g}"
    if plan.threshold is not None:
        sensitivity += f" (l0, l1, linf); threshold {plan.threshold}"
    scale = plan.scale * unit
    if aggregate is not None and aggregate.kind == "quantile":
        # one measurement per group, and a person touches at most max_partitions groups
        factor = 1 if query.by is None else query.max_partitions
        return ChargeLine(name, plan.mechanism + f" x {factor} group(s) per person; half-width in ranks",
                          sensitivity, scale,
                          (plan.epsilon or 0.0) * factor, 0.0, (plan.rho or 0.0) * factor, plan.half_width)
    half = None if math.isnan(plan.half_width) else plan.half_width * unit
    return ChargeLine(name, plan.mechanism, sensitivity, scale, plan.epsilon or 0.0, plan.delta or 0.0,
                      plan.rho or 0.0, half)


class PrivateSession:
    """A dataset whose releases are differentially private per person and charged to a budget.

    ``data`` is a pandas frame or Arrow table with one row per record and the privacy unit in
    ``privacy_unit`` (pseudonymous ``person_id``; use ``dp.join_devices`` first for rows that
    are keyed by device). ``ledger`` is a ``BudgetLedger`` or its path; ``dataset`` must be
    registered there (``BudgetLedger.datasets()``: the analytics-zone table the data comes
    from) and its budget for ``period`` set by a reviewer. A person over the bounds
    contributes their first rows in stored order (see ``dp._bounding``).
    """

    def __init__(self, data: pd.DataFrame | pa.Table, *, dataset: str, ledger: BudgetLedger | str | os.PathLike,
                 purpose: str, period: str = DEFAULT_PERIOD, privacy_unit: str = "person_id",
                 analyst: str | None = None) -> None:
        self._schema = data.schema if isinstance(data, pa.Table) else None
        self.data = data.to_pandas() if isinstance(data, pa.Table) else data
        if not isinstance(self.data, pd.DataFrame):
            raise PortraitError(f"data must be a pandas DataFrame or an Arrow table, got {type(data).__name__}")
        self.dataset, self.period, self.purpose = dataset, period, purpose
        self.ledger = ledger if isinstance(ledger, BudgetLedger) else BudgetLedger(ledger)
        registered = self.ledger.dataset(dataset)   # only a registered dataset has a budget to charge
        if privacy_unit != registered.privacy_unit:
            raise PrivacyParameterError(f"dataset {dataset!r} is registered with privacy unit "
                                        f"{registered.privacy_unit!r}, not {privacy_unit!r}")
        source = (self._schema.metadata or {}).get(b"table", b"").decode() if self._schema is not None else ""
        if source and source not in registered.tables:   # an analytics-zone table names itself
            raise UnregisteredDatasetError(f"the data comes from table {source!r}, whose releases are charged to "
                                           f"dataset {self.ledger.dataset_of_table(source).name!r}, not {dataset!r}")
        self.privacy_unit = privacy_unit
        self.analyst = analyst or getpass.getuser()
        self._require_column(privacy_unit)
        self._persons: PersonCodes | None = None

    def __repr__(self) -> str:
        # no row count: the size of a consent-filtered table is itself a statistic about persons
        return (f"PrivateSession(dataset={self.dataset!r}, period={self.period!r}, "
                f"privacy_unit={self.privacy_unit!r}, ledger={self.ledger!r})")

    def _require_column(self, column: str) -> None:
        if column not in self.data.columns:
            raise PortraitError(f"dataset {self.dataset!r} has no column {column!r}; it has "
                                f"{', '.join(map(str, self.data.columns))}")

    def _kind(self, column: str) -> str:
        """The column's kind (numeric, bool, text, temporal or other), from its declared type where there is one."""
        if self._schema is not None and column in self._schema.names:
            return _arrow_kind(self._schema.field(column).type)
        dtype = self.data[column].dtype
        if isinstance(dtype, pd.CategoricalDtype):
            dtype = dtype.categories.dtype
        if pd.api.types.is_bool_dtype(dtype):
            return _BOOL
        if pd.api.types.is_numeric_dtype(dtype):
            return _NUMERIC
        if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
            return _TEMPORAL
        if pd.api.types.is_string_dtype(dtype):
            # an object column: what its values are (the analyst holding the frame sees them anyway)
            inferred = pd.api.types.infer_dtype(self.data[column], skipna=True)
            return {"string": _TEXT, "integer": _NUMERIC, "floating": _NUMERIC, "mixed-integer-float": _NUMERIC,
                    "decimal": _NUMERIC, "boolean": _BOOL, "datetime": _TEMPORAL, "date": _TEMPORAL}.get(inferred, _OTHER)
        return _OTHER

    def _require_kind(self, column: str, kind: str, what: str) -> None:
        self._require_column(column)
        found = self._kind(column)
        if found != kind and not (kind == _NUMERIC and found == _BOOL):
            raise PortraitError(f"{what} needs a {kind} column, but {column!r} of dataset {self.dataset!r} holds "
                                f"{found} values; pick a {kind} column")

    def _check_keys(self, column: str, keys: tuple) -> None:
        """Public keys must be values of the column's type (integer keys never match a text column)."""
        kind = self._kind(column)
        fits = {_TEXT: lambda k: isinstance(k, str),
                _NUMERIC: lambda k: isinstance(k, numbers.Real) and not isinstance(k, (bool, np.bool_)),
                _BOOL: lambda k: isinstance(k, (bool, np.bool_))}.get(kind)
        wrong = [k for k in keys if fits is not None and not fits(k)]
        if wrong:
            raise PortraitError(f"group_by keys of {column!r} must be {kind} values like the column's, but "
                                f"{wrong[0]!r} is {type(wrong[0]).__name__}; pass keys of the column's type")

    def query(self, *, epsilon: float | None = None, delta: float = 0.0, rho: float | None = None,
              mechanism: str = "laplace") -> Query:
        """Start a query costing ``epsilon`` (with ``delta`` for Gaussian noise or private group selection) or ``rho``."""
        where = f"a query on {self.dataset!r}"
        if (epsilon is None) == (rho is None):
            raise PrivacyParameterError(f"{where}: pass either epsilon (and delta) or rho")
        if mechanism not in _MECHANISMS:
            raise PrivacyParameterError(f"{where}: mechanism must be one of {', '.join(_MECHANISMS)}, got {mechanism!r}")
        epsilon, delta, rho = check_release_privacy(epsilon, delta, rho, where)
        return Query(self, epsilon, delta, rho, mechanism)

    def remaining(self) -> dict[str, float | None]:
        return self.ledger.remaining(self.dataset, self.period)

    # computing (only after the charge) ------------------------------------------------------------------

    def _person_codes(self) -> PersonCodes:
        if self._persons is None:
            self._persons = encode_persons(self.data[self.privacy_unit])
        return self._persons

    def _numbers(self, column: str) -> np.ndarray:
        """A column as float64 (NaN for missing or non-numeric values), without a copy when it already is one."""
        series = self.data[column]
        if series.dtype == np.float64:
            return series.to_numpy()
        return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)

    def _groups(self, query: Query) -> tuple[GroupCodes, list]:
        """Each row's group and the groups' labels (codes by value or by public key, never by data order)."""
        n = len(self.data)
        if query.by is None:
            return GroupCodes(np.zeros(n, dtype=np.int8), np.zeros(1, dtype=np.int64), 1), [None]
        column = self.data[query.by]
        if query.edges is not None:
            values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            codes = np.searchsorted(np.asarray(query.edges), values, side="right") - 1
            codes[values == query.edges[-1]] = len(query.edges) - 2
            codes[(codes < 0) | (codes >= len(query.edges) - 1) | np.isnan(values)] = -1
            labels = list(query.keys)
            return GroupCodes.of(codes, len(labels)), labels
        if query.keys is not None:
            labels = list(query.keys)
            if isinstance(column.dtype, pd.CategoricalDtype):
                # the categorical's own codes, mapped to keys through a table of its categories
                table = pd.Index(labels).get_indexer(column.cat.categories).astype(np.int64)
                return GroupCodes(column.cat.codes.to_numpy(), table, len(labels)), labels
            return GroupCodes.of(pd.Index(labels).get_indexer(column), len(labels)), labels
        codes, uniques = pd.factorize(column, sort=True)
        labels = list(uniques)
        return GroupCodes.of(codes, len(labels)), labels

    def _compute(self, query: Query, plans: dict[str, mech.NoisePlan]) -> pd.DataFrame:
        group_codes, labels = self._groups(query)
        K = query.max_partitions if query.by is not None else 1
        sums = {a.name: SumColumn(self._numbers(a.column), a.resolution, *_units(a))
                for a in query.aggregates if a.kind in ("sum", "mean")}
        bounded = bound_contributions(self._person_codes(), group_codes, max_partitions=K,
                                      max_rows_per_partition=query.max_rows_per_partition, sums=sums)
        # rows: kept or not, at most K groups x R rows per person kept
        n_groups = len(labels)
        counts = bounded.counts
        out: dict[str, np.ndarray] = {}
        selected = np.arange(n_groups)
        if query.by is not None and query.keys is None:
            noisy = mech.release_threshold(plans["count"], {str(i): c for i, c in enumerate(counts) if c > 0})
            selected = np.array(sorted(int(k) for k in noisy), dtype=np.int64)
            out["count"] = np.array([noisy[str(i)] for i in selected], dtype=np.float64)
            out["count_ci95"] = np.full(len(selected), plans["count"].half_width)
        elif "count" in plans:
            out["count"] = mech.add_vector_noise(plans["count"], counts).astype(np.float64)
            out["count_ci95"] = np.full(n_groups, plans["count"].half_width)
        for aggregate in query.aggregates:
            if aggregate.kind in ("sum", "mean"):
                sums = bounded.sums[aggregate.name][selected]
                sum_plan = plans[f"{aggregate.name}:sum"]
                noisy_sum = mech.add_vector_noise(sum_plan, sums).astype(np.float64) * aggregate.resolution
                if aggregate.kind == "sum":
                    out[aggregate.name] = noisy_sum
                    out[f"{aggregate.name}_ci95"] = np.full(len(selected), sum_plan.half_width * aggregate.resolution)
                else:
                    count_plan = plans[f"{aggregate.name}:count"]
                    noisy_count = mech.add_vector_noise(count_plan, counts[selected]).astype(np.float64)
                    out[aggregate.name], out[f"{aggregate.name}_ci95"] = _mean_interval(
                        noisy_sum, noisy_count, aggregate.bounds,
                        mech.half_width(sum_plan, 0.025) * aggregate.resolution, mech.half_width(count_plan, 0.025))
            elif aggregate.kind == "quantile":
                plan = plans[aggregate.name]
                lower, upper = aggregate.bounds
                grid = list(np.linspace(lower, upper, aggregate.candidates))
                values, groups = self._numbers(aggregate.column)[bounded.kept], bounded.kept_groups()
                order = np.argsort(groups, kind="stable")
                split = np.searchsorted(groups[order], selected)
                ends = np.searchsorted(groups[order], selected, side="right")
                result = []
                for start, end in zip(split, ends):
                    chunk = values[order[start:end]]
                    chunk = np.clip(chunk[~np.isnan(chunk)], lower, upper)
                    result.append(mech.release_quantile(plan, chunk, grid, aggregate.quantile))
                out[aggregate.name] = np.array(result, dtype=np.float64)
                out[f"{aggregate.name}_ci95"] = np.full(len(selected), plan.half_width)   # in ranks (rows)
        frame = pd.DataFrame(out)
        if query.by is not None:
            frame.insert(0, query.by, [labels[i] for i in selected])
        ordered = [c for a in query.aggregates for c in (a.name, f"{a.name}_ci95")]
        if "count" in frame.columns and not any(a.kind == "count" for a in query.aggregates):
            ordered = ["count", "count_ci95", *ordered]   # private selection released the counts anyway
        return frame[([query.by] if query.by is not None else []) + ordered]


_NUMERIC, _BOOL, _TEXT, _TEMPORAL, _OTHER = "numeric", "boolean", "text", "date/time", "other"


def _arrow_kind(arrow_type: pa.DataType) -> str:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_boolean(arrow_type):
        return _BOOL
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return _NUMERIC
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return _TEXT
    if pa.types.is_temporal(arrow_type):
        return _TEMPORAL
    return _OTHER


def _mean_interval(noisy_sum, noisy_count, bounds, sum_half, count_half):
    """Mean estimate clamped to ``bounds`` and a 95% half-width (97.5% on each noise, union bound)."""
    lower, upper = bounds
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = np.clip(np.where(noisy_count > 0, noisy_sum / noisy_count, (lower + upper) / 2), lower, upper)
        low_count = noisy_count - count_half
        corners = [(noisy_sum + ds) / (noisy_count + dc) for ds in (-sum_half, sum_half)
                   for dc in (-count_half, count_half)]
        spread = np.max([np.abs(np.clip(c, lower, upper) - estimate) for c in corners], axis=0)
    whole = np.maximum(estimate - lower, upper - estimate)
    return estimate, np.where(low_count > 0, spread, whole)
