"""A release planned without data: validate -> compile to measurements -> charge -> release from bounded totals.

A ``QueryPlan`` knows the columns' kinds and the privacy unit, never a row. Each builder step
is checked when it is added (columns exist and have the right kind, keys have the column's
type, bounds are finite, expressions parse); ``compile`` then checks the whole query against
the dataset's budget and turns it into OpenDP measurements and the ledger's charge lines,
still without data (as Tumult compiles a query before its accountant spends). The bounded
totals are computed by whoever holds the data (``PrivateSession`` on a pandas frame, an
engine job per partition) and handed to ``CompiledRelease.release``, which charges the ledger
(durably) and only then draws the noise.

>>> import tempfile, pathlib
>>> from dp.budget import BudgetLedger
>>> ledger = BudgetLedger(pathlib.Path(tempfile.mkdtemp()) / "ledger.sqlite")
>>> _ = ledger.set_budget("orders", epsilon=1.0, set_by="reviewer")
>>> plan = (QueryPlan.start(columns={"person_id": "text", "category": "text"}, privacy_unit="person_id", epsilon=0.5)
...         .group_by("category", keys=["x", "y"]).count())
>>> compiled = plan.compile(ledger=ledger, dataset="orders", purpose="product improvement", analyst="ana")
>>> ledger.spent("orders")["epsilon"]            # compiling charges nothing
0.0
>>> list(compiled.release(BoundedTotals(counts=np.array([120, 7]))).columns)
['category', 'count', 'count_ci95']
>>> ledger.spent("orders")["epsilon"]
0.5

Privacy: every release is epsilon-DP (or (epsilon, delta)-DP, or rho-zCDP, as the budget is
kept) per privacy unit (the session's ``privacy_unit`` column: all of a unit's rows together),
provided the totals were bounded as the plan says: each unit in at most ``max_partitions``
groups and ``max_rows_per_partition`` rows per group, after the plan's filters, derived
columns and public joins, which are evaluated row by row. The query's whole privacy
parameter is charged, split equally between its aggregates.
"""

from __future__ import annotations

import collections
import getpass
import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import pyarrow as pa

from dp import _mechanisms as mech
from dp._errors import PrivacyParameterError
from dp._expressions import BOOL, NUMERIC, TEXT, Expression, parse_expression
from dp._keysets import KeySet, source_table
from dp._kinds import ColumnKinds, arrow_kind
from dp._parameters import (
    MIN_RELEASE_EPSILON,
    check_bounds,
    check_positive_int,
    check_probability,
    check_release_privacy,
    check_resolution,
)
from dp.budget import DEFAULT_PERIOD, BudgetLedger, ChargeLine, _check_fits
from dp.units import covers
from profiling.errors import InternalError, PortraitError

__all__ = ["CONFIDENCE", "BoundedTotals", "CompiledRelease", "PublicJoin", "QueryPlan", "Where", "WithColumn",
           "ci_column"]

CONFIDENCE = 0.95
_MECHANISMS = ("laplace", "gaussian")
_MAX_CANDIDATES = 10_000
_NONE = object()
# Sums are exact integers in float64 and int64 only while a person's bounded contribution stays under 2**52 units.
_MAX_CONTRIBUTION_UNITS = 2**52


def ci_column(name: str, confidence: float) -> str:
    """The column holding ``name``'s confidence half-width: ``count_ci95`` at 95%, ``count_ci99_5`` at 99.5%.

    >>> ci_column("count", 0.9)
    'count_ci90'
    """
    return f"{name}_ci{round(confidence * 100, 6):g}".replace(".", "_")


@dataclass(frozen=True)
class Aggregate:
    """One released statistic of the query."""

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

    @property
    def units(self) -> tuple[int, int]:
        """The clamp bounds in whole multiples of the resolution."""
        lower, upper = self.bounds
        return round(lower / self.resolution), round(upper / self.resolution)


# steps before bounding, each evaluated row by row ---------------------------------------------------------

@dataclass(frozen=True)
class Where:
    """Keep the rows where ``expression`` is true."""

    expression: Expression

    def describe(self) -> str:
        return f"where {self.expression.text}"


@dataclass(frozen=True)
class WithColumn:
    """Add column ``name`` computed from each row by ``expression``."""

    name: str
    expression: Expression

    def describe(self) -> str:
        return f"{self.name} = {self.expression.text}"


@dataclass(frozen=True)
class PublicJoin:
    """Attach the columns of a public table (one row per key) to each row whose ``on`` values match."""

    table: pd.DataFrame = field(compare=False, repr=False)
    on: tuple[str, ...]
    how: str                      # inner: rows without a match are dropped; left: kept with missing values
    source: str | None = None     # the analytics-zone table it was read from, if its schema names one

    def describe(self) -> str:
        return f"{self.how} join with a public table on {', '.join(self.on)}"


@dataclass(frozen=True)
class BoundedTotals:
    """Exact totals of the rows kept by person-level bounding, one entry per group. Not private.

    ``counts``: kept rows per group (int64). ``sums``: per sum or mean aggregate name, the kept
    values clamped and in whole multiples of its resolution (int64). ``values``: per quantile
    aggregate name, each group's kept values clamped to the bounds (float64, no NaN). ``groups``:
    only for groups selected privately, each group's key (a tuple, one value per grouping column);
    with public keys the groups are the plan's keys, in order.
    """

    counts: np.ndarray
    sums: Mapping[str, np.ndarray] = field(default_factory=dict)
    values: Mapping[str, Sequence[np.ndarray]] = field(default_factory=dict)
    groups: Sequence[tuple] | None = None


@dataclass(frozen=True)
class _Measurement:
    name: str                     # aggregate name, or "<aggregate>:sum" / "<aggregate>:count" for a mean's parts
    noise: mech.NoisePlan
    share: float                  # this measurement's cost / the query's whole cost


@dataclass(frozen=True, kw_only=True)
class QueryPlan:
    """A release under construction, without data; every builder method returns a new, checked plan.

    ``columns`` maps each column to its kind (``numeric``, ``boolean``, ``text``, ``date/time``,
    ``other``) as the data has them after the plan's steps; ``privacy_unit`` names the column
    holding the privacy unit (the person's pseudonym today). Start one with ``QueryPlan.start``.
    """

    columns: Mapping[str, str] = field(repr=False)
    privacy_unit: str
    source: str = "the data"
    epsilon: float | None = None
    delta: float = 0.0
    rho: float | None = None
    mechanism: str = "laplace"
    confidence: float = CONFIDENCE
    steps: tuple[Where | WithColumn | PublicJoin, ...] = ()
    by: tuple[str, ...] = ()
    keys: KeySet | None = None
    bins: tuple[str, tuple[float, ...]] | None = None
    max_partitions: int = 1
    max_rows_per_partition: int = 1
    aggregates: tuple[Aggregate, ...] = ()
    # group privacy: any this many privacy units together (one human's unlinked accounts) get the claimed loss
    accounts_per_human: int = 1

    @staticmethod
    def _start_fields(*, columns: Mapping[str, str], privacy_unit: str, source: str = "the data",
                      epsilon: float | None = None, delta: float = 0.0, rho: float | None = None,
                      mechanism: str = "laplace", confidence: float = CONFIDENCE, accounts_per_human: int = 1) -> dict:
        """The checked fields of a new plan (``start``'s work; ``PrivateSession.query`` adds its session)."""
        where = f"a query on {source}"
        if isinstance(columns, pa.Schema):
            columns = {name: arrow_kind(columns.field(name).type) for name in columns.names}
        if (epsilon is None) == (rho is None):
            raise PrivacyParameterError(f"{where}: pass either epsilon (and delta) or rho")
        if mechanism not in _MECHANISMS:
            raise PrivacyParameterError(f"{where}: mechanism must be one of {', '.join(_MECHANISMS)}, got "
                                        f"{mechanism!r}")
        epsilon, delta, rho = check_release_privacy(epsilon, delta, rho, where)
        if privacy_unit not in columns:
            raise PortraitError(f"{source} has no privacy unit column {privacy_unit!r}; it has "
                                f"{', '.join(map(str, columns))}")
        return dict(columns=columns, privacy_unit=privacy_unit, source=source, epsilon=epsilon, delta=delta, rho=rho,
                    mechanism=mechanism, confidence=_check_confidence(confidence, where),
                    accounts_per_human=check_positive_int(accounts_per_human, "accounts_per_human", where))

    @classmethod
    def start(cls, *, columns: Mapping[str, str] | pa.Schema, privacy_unit: str, source: str = "the data",
              epsilon: float | None = None, delta: float = 0.0, rho: float | None = None,
              mechanism: str = "laplace", confidence: float = CONFIDENCE, accounts_per_human: int = 1) -> QueryPlan:
        """A plan costing ``epsilon`` (with ``delta`` for Gaussian noise or private group selection) or ``rho``;
        half-widths are given at ``confidence`` (0.95: columns ``<aggregate>_ci95``). ``columns`` maps each
        column to its kind, or is the data's Arrow schema; ``privacy_unit`` is one of them. With
        ``accounts_per_human=k`` every sensitivity is k times a unit's, so any k units together (one human's
        unlinked accounts: ``dp.units``) get the claimed loss (group privacy)."""
        return cls(**cls._start_fields(columns=columns, privacy_unit=privacy_unit, source=source, epsilon=epsilon,
                                       delta=delta, rho=rho, mechanism=mechanism, confidence=confidence,
                                       accounts_per_human=accounts_per_human))

    # checking ------------------------------------------------------------------------------------------

    def _require_column(self, column: object) -> str:
        if not isinstance(column, str) or column not in self.columns:
            raise PortraitError(f"{self.source} has no column {column!r}; it has {', '.join(map(str, self.columns))}")
        return self.columns[column]

    def _require_kind(self, column: str, kind: str, what: str) -> None:
        found = self._require_column(column)
        if found != kind and not (kind == NUMERIC and found == BOOL):
            raise PortraitError(f"{what} needs a {kind} column, but {column!r} of {self.source} holds {found} values; "
                                f"pick a {kind} column")

    def _check_keys(self, keys: KeySet) -> None:
        """Public keys must be values of each column's type (integer keys never match a text column)."""
        for index, column in enumerate(keys.columns):
            kind = self.columns[column]
            fits = {TEXT: lambda k: isinstance(k, str),
                    NUMERIC: lambda k: isinstance(k, numbers.Real) and not isinstance(k, (bool, np.bool_)),
                    BOOL: lambda k: isinstance(k, (bool, np.bool_))}.get(kind, lambda k: True)
            wrong = next((row[index] for row in keys.rows if not fits(row[index])), _NONE)
            if wrong is not _NONE:
                raise PortraitError(f"group_by keys of {column!r} must be {kind} values like the column's, but "
                                    f"{wrong!r} is {type(wrong).__name__}; pass keys of the column's type")

    # building: steps before bounding -------------------------------------------------------------------

    def where(self, expression: str) -> QueryPlan:
        """Keep only the rows where ``expression`` holds, e.g. ``"amount >= 10 and channel == 'app'"``.

        Evaluated row by row before bounding (see ``dp._expressions`` for the grammar), so the bounds
        still apply to each person's remaining rows."""
        parsed = parse_expression(expression, self.columns, "where")
        if parsed.kind != BOOL:
            raise PortraitError(f"where {expression!r} is {parsed.kind}, not true/false; compare it, e.g. "
                                f"\"{expression} > 0\"")
        return replace(self, steps=(*self.steps, Where(parsed)))

    def with_column(self, name: str, expression: str) -> QueryPlan:
        """Add column ``name`` computed from each row by ``expression``, e.g. ``"amount - discount"``."""
        if not isinstance(name, str) or not name:
            raise PortraitError(f"with_column needs a column name, got {name!r}")
        if name in self.columns:
            raise PortraitError(f"with_column {name!r}: {self.source} already has a column {name!r}; pick a new name")
        parsed = parse_expression(expression, self.columns, f"with_column {name!r}")
        return replace(self, steps=(*self.steps, WithColumn(name, parsed)),
                       columns=collections.ChainMap({name: parsed.kind}, self.columns))

    def join_public(self, table: pd.DataFrame | pa.Table, *, on: str | Sequence[str], how: str = "inner") -> QueryPlan:
        """Attach a public table's columns (a catalogue, region codes) to each row with the same ``on`` values.

        The public table holds nothing about persons and has one row per key, so each private row
        stays one row (of the same person): the join is row by row and bounding after it still
        bounds whole persons. ``how="inner"`` drops rows without a match, ``"left"`` keeps them with
        missing values."""
        frame = table.to_pandas() if isinstance(table, pa.Table) else table
        if not isinstance(frame, pd.DataFrame):
            raise PortraitError(f"join_public needs a pandas DataFrame or an Arrow table, got {type(table).__name__}")
        keys = (on,) if isinstance(on, str) else tuple(on)
        if not keys:
            raise PortraitError("join_public needs the key column(s) in on=...")
        if how not in ("inner", "left"):
            raise PortraitError(f"join_public how must be 'inner' or 'left', got {how!r}")
        public = ColumnKinds(frame, table.schema if isinstance(table, pa.Table) else None)
        for key in keys:
            if key not in frame.columns:
                raise PortraitError(f"join_public: the public table has no column {key!r}; it has "
                                    f"{', '.join(map(str, frame.columns))}")
            if self._require_column(key) != public[key]:
                raise PortraitError(f"join_public on {key!r}: {self.source} holds {self.columns[key]} values, the "
                                    f"public table {public[key]}; convert one side first")
            if key == self.privacy_unit:
                raise PortraitError(f"join_public on the privacy unit {key!r} would attach data about persons; join "
                                    f"on a public key (an item, a region code)")
        if frame[list(keys)].isna().any().any():
            raise PortraitError(f"join_public: the public table has missing values in {', '.join(keys)}; drop them")
        if frame.duplicated(list(keys)).any():
            raise PortraitError(f"join_public: the public table has several rows for a key of {', '.join(keys)}; it "
                                f"must have one row per key (a row may not become several)")
        clash = [c for c in frame.columns if c not in keys and c in self.columns]
        if clash:
            raise PortraitError(f"join_public: column(s) {', '.join(map(str, clash))} exist on both sides; rename or "
                                f"drop them in the public table")
        added = {str(c): public[c] for c in frame.columns if c not in keys}
        return replace(self, steps=(*self.steps, PublicJoin(frame, keys, how, source_table(table))),
                       columns=collections.ChainMap(added, self.columns))

    # building: groups, bounds, aggregates --------------------------------------------------------------

    def group_by(self, columns: str | Sequence[str], keys=None) -> QueryPlan:
        """Group by one or several columns.

        With ``keys`` (public, declared in advance: a list for one column, a ``KeySet``, a mapping
        column -> values for their cross product, or a public frame whose distinct rows are the
        keys) every key gets a row. Without, only the groups that pass OpenDP's noisy threshold
        appear (needs delta > 0; not available under a rho (zCDP) budget, which refuses it: the
        threshold's cost is (epsilon, delta) and is not converted)."""
        by = (columns,) if isinstance(columns, str) else tuple(columns)
        if not by or len(set(by)) != len(by):
            raise PortraitError(f"group_by needs one or more distinct columns, got {columns!r}")
        for column in by:
            self._require_column(column)
        if self.bins is not None and self.bins[0] in by:
            raise PortraitError(f"{self.bins[0]!r} is already grouped by its histogram bins")
        if keys is not None:
            keys = _key_set(by, keys)
            self._check_keys(keys)
        return replace(self, by=by, keys=keys)

    def histogram(self, column: str, edges) -> QueryPlan:
        """Group by the bin of ``column`` between consecutive public ``edges`` ([e0, e1), ..., [e_n-1, e_n]),
        within each group of ``group_by`` if any; values outside the edges are not counted."""
        self._require_kind(column, NUMERIC, "a histogram")
        if column in self.by:
            raise PortraitError(f"{column!r} is a group_by column; a histogram bins another column")
        if self.bins is not None:
            raise PortraitError(f"the query already has a histogram of {self.bins[0]!r}; one per query")
        try:
            values = [float(e) for e in edges]
        except (TypeError, ValueError):
            values = []
        if len(values) < 2 or any(not math.isfinite(v) for v in values) or any(
                b <= a for a, b in itertools.pairwise(values)):
            raise PrivacyParameterError(f"histogram edges of {column!r} must be at least two finite, strictly "
                                        f"increasing numbers, got {edges!r}")
        return replace(self, bins=(column, tuple(values)))

    def bound(self, *, max_partitions: int = 1, max_rows_per_partition: int = 1) -> QueryPlan:
        """Each privacy unit contributes to at most ``max_partitions`` groups and ``max_rows_per_partition`` rows
        in each."""
        return replace(self, max_partitions=check_positive_int(max_partitions, "max_partitions"),
                       max_rows_per_partition=check_positive_int(max_rows_per_partition, "max_rows_per_partition"))

    def count(self) -> QueryPlan:
        """Noisy row count per group (after bounding)."""
        return self._add(Aggregate("count"))

    def sum(self, column: str, *, bounds, resolution: float = 0.01) -> QueryPlan:
        """Noisy sum of ``column`` clamped to ``bounds``, exact in multiples of ``resolution``; nulls count as 0."""
        return self._add(self._numeric("sum", column, bounds, resolution))

    def mean(self, column: str, *, bounds, resolution: float = 0.01) -> QueryPlan:
        """Noisy sum / noisy count (half the aggregate's share each); the half-width bounds both noises together."""
        return self._add(self._numeric("mean", column, bounds, resolution))

    def quantile(self, column: str, q: float, *, bounds, candidates: int = 128) -> QueryPlan:
        """The ``q``-quantile (per group) among ``candidates`` evenly spaced points of ``bounds`` (OpenDP's private
        quantile, permute-and-flip). Its half-width is in ranks (rows), not units: at the query's confidence the
        released point's rank misses the best grid point's by fewer rows (see ``dp._mechanisms.plan_quantile``)."""
        aggregate = self._numeric("quantile", column, bounds, 0.01)
        where = f"quantile of {column!r}"
        candidates = check_positive_int(candidates, "candidates", where)
        if not 2 <= candidates <= _MAX_CANDIDATES:
            raise PrivacyParameterError(f"candidates must be between 2 and {_MAX_CANDIDATES:,} in {where}, got "
                                        f"{candidates:,}; 128 points of the bounds are usually enough")
        return self._add(replace(aggregate, quantile=check_probability(q, "q", where), candidates=candidates))

    def _numeric(self, kind: str, column: str, bounds, resolution: float) -> Aggregate:
        self._require_kind(column, NUMERIC, f"a {kind}")
        where = f"{kind} of {column!r}"
        return Aggregate(kind, column, check_bounds(bounds, "bounds", where), check_resolution(resolution, where=where))

    def _add(self, aggregate: Aggregate) -> QueryPlan:
        if any(a.name == aggregate.name for a in self.aggregates):
            raise PortraitError(f"the query already has an aggregate {aggregate.name!r}")
        return replace(self, aggregates=(*self.aggregates, aggregate))

    # the groups ----------------------------------------------------------------------------------------

    @property
    def group_columns(self) -> tuple[str, ...]:
        """The released rows' key columns: the group_by columns, then the histogram's column."""
        return self.by + ((self.bins[0],) if self.bins is not None else ())

    @property
    def selects_groups(self) -> bool:
        """True when the groups are selected privately (group_by without keys)."""
        return bool(self.by) and self.keys is None

    @property
    def bin_labels(self) -> tuple[str, ...]:
        edges = self.bins[1] if self.bins is not None else ()
        return tuple(f"[{a:g}, {b:g})" for a, b in itertools.pairwise(edges))

    def public_keys(self) -> KeySet | None:
        """The released groups when they are public: the keys, crossed with the histogram's bins; None otherwise."""
        if self.selects_groups or not self.group_columns:
            return None
        keys = self.keys
        if self.bins is not None:
            bins = KeySet([self.bins[0]], [(label,) for label in self.bin_labels])
            keys = bins if keys is None else keys * bins
        return keys

    def group_count(self) -> int | None:
        """How many groups the totals have: 1 without grouping, the public keys' count, None when selected privately."""
        if self.selects_groups:
            return None
        keys = self.public_keys()
        return 1 if keys is None else len(keys)

    # compiling -----------------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line saying what is released, as the ledger records it."""
        columns = ", ".join(self.group_columns)
        grouping = "" if not self.group_columns else (
            f" by {columns} (keys selected privately)" if self.selects_groups
            else f" by {columns} ({self.group_count()} public keys)")
        steps = "".join(f"; {step.describe()}" for step in self.steps)
        parts = ", ".join(a.name for a in self.aggregates) or "nothing"
        unit = self.privacy_unit if self.accounts_per_human == 1 else (
            f"{self.privacy_unit} (any {self.accounts_per_human} together: accounts_per_human={self.accounts_per_human})")
        return (f"{parts}{grouping}{steps}; {self.mechanism} noise; per {unit} at most "
                f"{self.max_partitions} group(s) x {self.max_rows_per_partition} row(s)")

    def validate(self, measure: str) -> None:
        """Everything checkable before the charge, for a budget kept in ``measure``."""
        if not self.aggregates:
            raise PortraitError("the query has no aggregate; add .count(), .sum(...), .mean(...) or .quantile(...)")
        where = f"a release on {self.source}"
        if measure == mech.ZCDP:
            if self.rho is None or self.epsilon is not None:
                raise PrivacyParameterError(f"{where}: the budget is kept in rho (zCDP); pass rho=... to query()")
            if self.selects_groups:
                raise PrivacyParameterError(f"{where}: selecting groups privately is (epsilon, delta)-DP and cannot be "
                                            f"charged to a rho budget; pass the public keys to group_by")
        else:
            if self.epsilon is None or self.rho is not None:
                raise PrivacyParameterError(f"{where}: the budget is kept in (epsilon, delta); pass epsilon=... to "
                                            f"query()")
            if (self.mechanism == "gaussian" or self.selects_groups) and self.delta == 0:
                raise PrivacyParameterError(f"{where}: Gaussian noise and private group selection need delta > 0; "
                                            f"pass e.g. delta=1e-7 to query()")
        rows = self._contributions()[0] * self.max_rows_per_partition
        for aggregate in self.aggregates:
            if aggregate.kind in ("sum", "mean"):
                _check_units(aggregate, rows)

    def _contributions(self) -> tuple[int, int]:
        """(groups, rows per group) one unit may touch: one group when nothing is grouped."""
        return (self.max_partitions if self.group_columns else 1), self.max_rows_per_partition

    def _measurements(self, measure: str) -> list[_Measurement]:
        """Every OpenDP measurement of the query, with the query's loss split equally between aggregates."""
        K, R = self._contributions()
        selecting = self.selects_groups
        parts = len(self.aggregates) + (1 if selecting and not any(a.kind == "count" for a in self.aggregates) else 0)
        delta_parts = (1 if selecting else 0) + (len(self.aggregates) if self.mechanism == "gaussian" else 0)
        share = {"epsilon": None if self.epsilon is None else self.epsilon / parts,
                 "rho": None if self.rho is None else self.rho / parts,
                 "delta": self.delta / delta_parts if delta_parts else 0.0}

        g = self.accounts_per_human   # k units together move every total by at most k times one unit's bound

        def vector(l1: float, l2: float, fraction: float = 1.0) -> mech.NoisePlan:
            return mech.plan_vector_noise(
                mechanism=self.mechanism, measure=measure, l1_sensitivity=math.ceil(l1) * g, l2_sensitivity=l2 * g,
                epsilon=None if share["epsilon"] is None else share["epsilon"] * fraction,
                delta=share["delta"] * fraction if self.mechanism == "gaussian" else None,
                rho=None if share["rho"] is None else share["rho"] * fraction)

        found = []
        if selecting:
            found.append(_Measurement("count", mech.plan_threshold(   # k units: k x the groups, k x the rows in each
                max_partitions=K * g, max_rows_per_partition=R * g, epsilon=share["epsilon"], delta=share["delta"]),
                1 / parts))
        for aggregate in self.aggregates:
            if aggregate.kind == "count":
                if not selecting:
                    found.append(_Measurement("count", vector(K * R, R * math.sqrt(K)), 1 / parts))
            elif aggregate.kind in ("sum", "mean"):
                largest = max(abs(u) for u in aggregate.units)
                fraction = 0.5 if aggregate.kind == "mean" else 1.0
                found.append(_Measurement(f"{aggregate.name}:sum", vector(
                    K * R * largest, R * math.sqrt(K) * largest, fraction), fraction / parts))
                if aggregate.kind == "mean":
                    found.append(_Measurement(f"{aggregate.name}:count", vector(K * R, R * math.sqrt(K), fraction),
                                              fraction / parts))
            else:
                # k units touch at most k x K groups with k x R rows in each: the loss of R rows, k x K times
                # (epsilon adds up over rows; rho grows with their square)
                per_group = {"epsilon": None if share["epsilon"] is None else share["epsilon"] / (K * g),
                             "rho": None if share["rho"] is None else share["rho"] / (K * g * g)}
                found.append(_Measurement(aggregate.name, mech.plan_quantile(
                    measure=measure, rows_per_person=R, candidates=_grid(aggregate), alpha=aggregate.quantile,
                    epsilon=per_group["epsilon"], rho=per_group["rho"]), 1 / (parts * K * g)))
        return found

    def _line(self, measurement: _Measurement) -> ChargeLine:
        plan, name = measurement.noise, measurement.name
        aggregate = next((a for a in self.aggregates if name.split(":")[0] == a.name), None)
        unit = 1.0
        if aggregate is not None and aggregate.kind in ("sum", "mean") and not name.endswith(":count"):
            unit = aggregate.resolution
        sensitivity = f"{plan.sensitivity}" if unit == 1.0 else f"{plan.sensitivity} x {unit:g}"
        if plan.threshold is not None:
            sensitivity += f" (l0, l1, linf); threshold {plan.threshold}"
        if aggregate is not None and aggregate.kind == "quantile":
            # one measurement per group, and a unit touches at most max_partitions groups
            factor, g = self._contributions()[0], self.accounts_per_human
            return ChargeLine(name, plan.mechanism + f" x {factor} group(s) per person; half-width in ranks",
                              sensitivity, plan.scale, (plan.epsilon or 0.0) * factor * g, 0.0,
                              (plan.rho or 0.0) * factor * g * g, plan.half_width)
        return ChargeLine(name, plan.mechanism, sensitivity, plan.scale * unit, plan.epsilon or 0.0, plan.delta or 0.0,
                          plan.rho or 0.0, plan.half_width * unit)

    def compile(self, *, ledger: BudgetLedger, dataset: str, purpose: str, analyst: str | None = None,
                period: str = DEFAULT_PERIOD, check_fits: bool = True) -> CompiledRelease:
        """Validate against ``dataset``'s budget and plan every measurement; charges nothing.

        Raises ``BudgetNotSetError`` when the dataset has no budget for ``period``, and (unless
        ``check_fits`` is False, for a plan only explained) ``BudgetExceededError`` when what is
        left already does not cover the release (so no totals are computed in vain; ``release``
        checks again atomically when it charges).
        """
        registered = ledger.dataset(dataset)
        if not covers(registered.privacy_unit, self.privacy_unit):
            raise PrivacyParameterError(f"dataset {dataset!r} is registered with privacy unit "
                                        f"{registered.privacy_unit!r}, not {self.privacy_unit!r}")
        self._check_public(ledger)
        budget = ledger.budget(dataset, period)
        self.validate(budget.measure)
        measurements = tuple(self._measurements(budget.measure))
        lines = tuple(self._line(m) for m in measurements)
        if check_fits:
            asked = {name: math.fsum(getattr(line, name) for line in lines) for name in ("epsilon", "delta", "rho")}
            _check_fits(budget, ledger.spent(dataset, period), asked)
        return CompiledRelease(self, measurements, lines, ledger=ledger, dataset=dataset, period=period,
                               purpose=purpose, analyst=analyst or getpass.getuser())

    def _check_public(self, ledger: BudgetLedger) -> None:
        """Keys and joined tables read from a table of persons' rows are not public: refused."""
        private = {table: d.name for d in ledger.datasets() for table in d.tables}
        sources = [s.source for s in self.steps if isinstance(s, PublicJoin)] + sorted(
            self.keys.sources if self.keys is not None else ())
        for source in sources:
            if source in private:
                raise PrivacyParameterError(
                    f"table {source!r} holds persons' rows (dataset {private[source]!r}), so its values are not "
                    f"public: keys and joins take public tables only (a catalogue, region codes)")

    def epsilon_for(self, half_width: float | Mapping[str, float], *, measure: str = mech.APPROXIMATE,
                    confidence: float | None = None) -> float:
        """The smallest epsilon for which this query's half-widths at ``confidence`` are at most ``half_width``.

        ``half_width`` is one number (the query has one aggregate) or a mapping aggregate name ->
        half-width (in the aggregate's units; rows for counts, ranks for quantiles). The query's
        own epsilon is ignored; its delta, mechanism, bounds and groups are used. Exact for the
        mechanism: OpenDP's accuracy formula is inverted to the largest noise scale that meets
        the half-width, and OpenDP's privacy map at that scale gives the cost (to a relative 1e-8,
        on the side that meets the half-width). Never below the
        smallest a release may cost (``MIN_RELEASE_EPSILON``). Charges nothing.
        """
        where = "epsilon_for"
        if measure == mech.ZCDP:
            raise PrivacyParameterError(f"{where}: the budget is kept in rho (zCDP), not epsilon")
        confidence = self.confidence if confidence is None else _check_confidence(confidence, where)
        names = [a.name for a in self.aggregates]
        if not names:
            raise PortraitError(f"{where}: the query has no aggregate; add .count(), .sum(...) or .quantile(...)")
        if not isinstance(half_width, Mapping):
            if len(names) != 1:
                raise PortraitError(f"{where}: the query has {len(names)} aggregates ({', '.join(names)}); pass "
                                    f"half_width={{name: value}} for the ones that matter")
            half_width = {names[0]: half_width}
        targets = {}
        for name, value in half_width.items():
            if name not in names:
                raise PortraitError(f"{where}: the query has no aggregate {name!r}; it has {', '.join(names)}")
            aggregate = next(a for a in self.aggregates if a.name == name)
            if aggregate.kind == "mean":
                raise PortraitError(f"{where}: a mean's half-width depends on its noisy count, so no epsilon "
                                    f"guarantees it; ask for the sum and the count instead")
            number = check_bounds((0.0, value), "half_width", where)[1]
            targets[name] = number / (aggregate.resolution if aggregate.kind == "sum" else 1.0)
        plan = self if self.epsilon is not None else replace(self, epsilon=1.0, rho=None)
        plan.validate(measure)
        alpha = 1.0 - confidence
        needed = []
        for measurement in plan._measurements(measure):
            target = targets.get(measurement.name.split(":")[0])
            if target is not None:
                scale = mech.scale_for_half_width(measurement.noise, target, alpha)
                needed.append(measurement.noise.loss(scale) / measurement.share)
        return max(MIN_RELEASE_EPSILON, *needed)


@dataclass(frozen=True)
class CompiledRelease:
    """A validated query planned as OpenDP measurements with its charge lines; nothing charged yet."""

    plan: QueryPlan
    measurements: tuple[_Measurement, ...]
    lines: tuple[ChargeLine, ...]
    ledger: BudgetLedger
    dataset: str
    period: str
    purpose: str
    analyst: str

    def explain(self) -> pd.DataFrame:
        """Mechanism, sensitivity, noise scale, cost and 95% half-width of each measurement; charges nothing."""
        return pd.DataFrame([line.__dict__ for line in self.lines])

    def release(self, totals: BoundedTotals) -> pd.DataFrame:
        """Charge the ledger (durably), then noise ``totals`` once.

        Returns one row per group (per public key, or per privately selected group) with each
        aggregate's noisy value and its half-width at the plan's confidence (``<aggregate>_ci95``
        at 95%) around the bounded (clamped, truncated) true value.
        """
        plan = self.plan
        counts = self._checked(totals)
        release_id = self.ledger.charge(self.dataset, self.period, list(self.lines), analyst=self.analyst,
                                        purpose=self.purpose, query=plan.describe(), features=mech.enabled_features())
        # charged and durable: from here on a failure loses budget, never privacy
        frame = self._noisy(totals, counts)
        self.ledger.mark_released(release_id)
        return frame

    def _checked(self, totals: BoundedTotals) -> np.ndarray:
        plan = self.plan
        counts = np.asarray(totals.counts)
        expected = plan.group_count()
        if expected is None:
            if totals.groups is None or len(totals.groups) != len(counts):
                raise InternalError("privately selected totals need one group key per count; this is a bug")
        elif counts.shape != (expected,):
            raise InternalError(f"bounded totals must be {expected} counts, one per group; got shape {counts.shape}")
        if counts.ndim != 1 or (len(counts) and counts.dtype.kind not in "iu"):
            raise InternalError(f"bounded counts must be integers, got {counts.dtype}")
        if len(counts) and counts.min() < 0:
            raise InternalError("a bounded count is negative")
        for aggregate in plan.aggregates:
            if aggregate.kind in ("sum", "mean") and np.shape(totals.sums.get(aggregate.name)) != counts.shape:
                raise InternalError(f"bounded totals lack the sums of {aggregate.name!r}; this is a bug")
            if aggregate.kind == "quantile" and len(totals.values.get(aggregate.name, ())) != len(counts):
                raise InternalError(f"bounded totals lack the values of {aggregate.name!r}; this is a bug")
        return counts.astype(np.int64)

    def _noisy(self, totals: BoundedTotals, counts: np.ndarray) -> pd.DataFrame:
        plan, alpha = self.plan, 1.0 - self.plan.confidence
        noise = {m.name: m.noise for m in self.measurements}
        ci = lambda name: ci_column(name, plan.confidence)
        out: dict[str, np.ndarray] = {}
        selected = np.arange(len(counts))
        if plan.selects_groups:
            kept = mech.release_threshold(noise["count"], {str(i): int(c) for i, c in enumerate(counts) if c > 0})
            selected = np.array(sorted(int(k) for k in kept), dtype=np.int64)
            out["count"] = np.array([kept[str(i)] for i in selected], dtype=np.float64)
            out[ci("count")] = np.full(len(selected), mech.half_width(noise["count"], alpha))
        elif "count" in noise:
            out["count"] = mech.add_vector_noise(noise["count"], counts).astype(np.float64)
            out[ci("count")] = np.full(len(counts), mech.half_width(noise["count"], alpha))
        for aggregate in plan.aggregates:
            name = aggregate.name
            if aggregate.kind in ("sum", "mean"):
                sum_plan = noise[f"{name}:sum"]
                exact = np.asarray(totals.sums[name], dtype=np.int64)[selected]
                noisy_sum = mech.add_vector_noise(sum_plan, exact).astype(np.float64) * aggregate.resolution
                if aggregate.kind == "sum":
                    out[name] = noisy_sum
                    out[ci(name)] = np.full(len(selected), mech.half_width(sum_plan, alpha) * aggregate.resolution)
                else:
                    count_plan = noise[f"{name}:count"]
                    noisy_count = mech.add_vector_noise(count_plan, counts[selected]).astype(np.float64)
                    out[name], out[ci(name)] = _mean_interval(
                        noisy_sum, noisy_count, aggregate.bounds,
                        mech.half_width(sum_plan, alpha / 2) * aggregate.resolution,
                        mech.half_width(count_plan, alpha / 2))
            elif aggregate.kind == "quantile":
                quantile_plan, grid = noise[name], _grid(aggregate)
                values = totals.values[name]
                out[name] = np.array([mech.release_quantile(quantile_plan, values[i], grid, aggregate.quantile)
                                      for i in selected], dtype=np.float64)
                out[ci(name)] = np.full(len(selected), mech.half_width(quantile_plan, alpha))   # in ranks (rows)
        frame = pd.DataFrame(out)
        labels = _labels(plan, totals)
        for position, column in enumerate(plan.group_columns):
            frame.insert(position, column, [labels[i][position] for i in selected])
        ordered = [c for a in plan.aggregates for c in (a.name, ci(a.name))]
        if "count" in frame.columns and not any(a.kind == "count" for a in plan.aggregates):
            ordered = ["count", ci("count"), *ordered]   # private selection released the counts anyway
        return frame[[*plan.group_columns, *ordered]]


def _labels(plan: QueryPlan, totals: BoundedTotals) -> Sequence[tuple]:
    if plan.selects_groups:
        return totals.groups
    keys = plan.public_keys()
    return [()] if keys is None else keys.rows


def _key_set(by: tuple[str, ...], keys) -> KeySet:
    """The public keys of ``by`` as a key set whose columns are in ``by``'s order."""
    if isinstance(keys, KeySet):
        key_set = keys
    elif isinstance(keys, (pd.DataFrame, pa.Table)):
        key_set = KeySet.from_frame(keys, columns=[c for c in by if c in keys.column_names]
                                    if isinstance(keys, pa.Table) else [c for c in by if c in keys.columns])
    elif isinstance(keys, Mapping):
        key_set = KeySet.from_dict(keys)
    elif len(by) == 1 and not isinstance(keys, (str, bytes)):
        try:
            key_set = KeySet.from_dict({by[0]: list(keys)})
        except TypeError:
            raise PrivacyParameterError(f"group_by keys must be a list of values, got {keys!r}") from None
    else:
        raise PrivacyParameterError(f"group_by keys of several columns must be a KeySet, a mapping column -> values "
                                    f"or a public frame, got {type(keys).__name__}")
    if set(key_set.columns) != set(by):
        raise PrivacyParameterError(f"the keys are for column(s) {', '.join(key_set.columns)}, the groups for "
                                    f"{', '.join(by)}; give keys for exactly the group_by columns")
    order = [key_set.columns.index(c) for c in by]
    return KeySet(by, [tuple(row[i] for i in order) for row in key_set.rows], sources=key_set.sources)


def _check_confidence(value: object, where: str) -> float:
    confidence = check_probability(value, "confidence", where)
    if confidence < 0.5:
        raise PrivacyParameterError(f"confidence {confidence:g} in {where} is below 0.5; an interval that misses "
                                    f"more often than not says little; pass e.g. 0.95")
    return confidence


def _grid(aggregate: Aggregate) -> list[float]:
    lower, upper = aggregate.bounds
    return [float(v) for v in np.linspace(lower, upper, aggregate.candidates)]


def _check_units(aggregate: Aggregate, rows_per_person: int) -> None:
    """The bounds must be whole multiples of the resolution, apart, and small enough to sum exactly."""
    where = f"the {aggregate.kind} of {aggregate.column!r}"
    lower, upper = aggregate.bounds
    for bound in (lower, upper):
        units = bound / aggregate.resolution
        if abs(units - round(units)) > 1e-6 * max(1.0, abs(units)):
            raise PrivacyParameterError(f"bound {bound:g} of {where} is not a whole multiple of its resolution "
                                        f"{aggregate.resolution:g}; round the bounds to the resolution")
    low_units, high_units = aggregate.units
    if low_units >= high_units:
        raise PrivacyParameterError(f"the bounds ({lower:g}, {upper:g}) of {where} are closer than its resolution "
                                    f"{aggregate.resolution:g}; widen them or pass a finer resolution")
    largest = max(abs(low_units), abs(high_units)) * rows_per_person
    if largest > _MAX_CONTRIBUTION_UNITS:
        raise PrivacyParameterError(f"one person may add up to {largest:.3g} units of {aggregate.resolution:g} to "
                                    f"{where} (bounds x rows per person), more than the 2**52 that sum exactly; "
                                    f"narrow the bounds, coarsen the resolution or lower the row bounds")


def _mean_interval(noisy_sum, noisy_count, bounds, sum_half, count_half):
    """Mean estimate clamped to ``bounds`` and a half-width (each noise within its half-width, union bound)."""
    lower, upper = bounds
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = np.clip(np.where(noisy_count > 0, noisy_sum / noisy_count, (lower + upper) / 2), lower, upper)
        low_count = noisy_count - count_half
        corners = [(noisy_sum + ds) / (noisy_count + dc) for ds in (-sum_half, sum_half)
                   for dc in (-count_half, count_half)]
        spread = np.max([np.abs(np.clip(c, lower, upper) - estimate) for c in corners], axis=0)
        # every corner outside the bounds on one side: the noise exceeded its half-width, nothing is narrowed
        outside = (np.max(corners, axis=0) < lower) | (np.min(corners, axis=0) > upper)
    whole = np.maximum(estimate - lower, upper - estimate)
    return estimate, np.where((low_count > 0) & ~outside, spread, whole)
