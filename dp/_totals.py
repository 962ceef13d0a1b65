"""Exact bounded totals of a pandas frame under a ``QueryPlan`` (what ``PrivateSession`` hands to the release).

The plan's steps run first, row by row (public joins, filters, derived columns, in the order
they were added), then each row gets its group code, then ``dp._bounding`` keeps each privacy
unit's first rows under the bounds, and the kept rows are totalled per group. Nothing here is
private: only ``CompiledRelease.release`` lets the totals out, noised.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dp._bounding import GroupCodes, PersonCodes, SumColumn, bound_contributions, encode_persons
from dp.plan import BoundedTotals, PublicJoin, QueryPlan, Where, WithColumn
from profiling.errors import InternalError

__all__ = ["apply_steps", "bounded_totals"]


def apply_steps(frame: pd.DataFrame, plan: QueryPlan) -> pd.DataFrame:
    """The rows after the plan's joins, filters and derived columns, in their stored order."""
    for step in plan.steps:
        if isinstance(step, Where):
            frame = frame[step.expression.evaluate(frame)]
        elif isinstance(step, WithColumn):
            frame = frame.assign(**{step.name: step.expression.evaluate(frame)})
        elif isinstance(step, PublicJoin):
            # the public table has one row per key, so each row stays one row; merge keeps the left order
            frame = frame.merge(step.table, on=list(step.on), how=step.how, validate="many_to_one")
        else:
            raise InternalError(f"unknown step {step!r}; this is a bug")
        # rows: the same persons' rows, filtered or widened row by row
    return frame


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A column as float64 (NaN for missing or non-numeric values), without a copy when it already is one."""
    series = frame[column]
    if series.dtype == np.float64:
        return series.to_numpy()
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _bin_codes(frame: pd.DataFrame, plan: QueryPlan) -> np.ndarray:
    column, edges = plan.bins
    values = _numbers(frame, column)
    codes = np.searchsorted(np.asarray(edges), values, side="right") - 1
    codes[values == edges[-1]] = len(edges) - 2
    codes[(codes < 0) | (codes >= len(edges) - 1) | np.isnan(values)] = -1
    return codes.astype(np.int64)


def _public_groups(frame: pd.DataFrame, plan: QueryPlan) -> GroupCodes:
    """Each row's index in the plan's public keys (negative: not counted)."""
    n_groups = plan.group_count()
    if not plan.group_columns:
        return GroupCodes(np.zeros(len(frame), dtype=np.int8), np.zeros(1, dtype=np.int64), 1)
    codes = np.zeros(len(frame), dtype=np.int64)
    if len(plan.by) == 1:
        column, labels = frame[plan.by[0]], pd.Index([row[0] for row in plan.keys.rows])
        if isinstance(column.dtype, pd.CategoricalDtype):
            # the categorical's own codes, mapped to keys through a table of its categories
            table = labels.get_indexer(column.cat.categories).astype(np.int64)
            if plan.bins is None:
                return GroupCodes(column.cat.codes.to_numpy(), table, n_groups)
            raw = column.cat.codes.to_numpy().astype(np.int64)
            codes = np.where(raw >= 0, table[raw], -1)
        else:
            codes = labels.get_indexer(column).astype(np.int64)
    elif plan.by:
        index = pd.MultiIndex.from_tuples(plan.keys.rows, names=list(plan.by))
        codes = index.get_indexer(pd.MultiIndex.from_arrays([frame[c] for c in plan.by])).astype(np.int64)
    if plan.bins is not None:
        bins = _bin_codes(frame, plan)
        codes = np.where((codes >= 0) & (bins >= 0), codes * len(plan.bin_labels) + bins, -1)
    return GroupCodes.of(codes, n_groups)


def _selected_codes(frame: pd.DataFrame, plan: QueryPlan) -> tuple[np.ndarray, list[tuple]]:
    """Each row's group among the groups present, numbered in the order of their values (never of the rows)."""
    parts, uniques = [], []
    for column in plan.by:
        codes, values = pd.factorize(frame[column], sort=True, use_na_sentinel=True)
        parts.append(codes.astype(np.int64))
        uniques.append(list(values))
    if plan.bins is not None:
        parts.append(_bin_codes(frame, plan))
        uniques.append(list(plan.bin_labels))
    if len(parts) == 1:
        return parts[0], [(value,) for value in uniques[0]]
    missing = np.zeros(len(frame), dtype=bool)
    combined = np.zeros(len(frame), dtype=np.int64)
    for codes, values in zip(parts, uniques):
        missing |= codes < 0
        combined = combined * max(len(values), 1) + np.maximum(codes, 0)
    # rows: one int64 per row naming its combination of values, in the order of the values
    codes, present = pd.factorize(combined[~missing], sort=True)
    group = np.full(len(frame), -1, dtype=np.int64)
    group[~missing] = codes
    labels = []
    for value in present:
        label = []
        for values in reversed(uniques):
            value, digit = divmod(int(value), max(len(values), 1))
            label.append(values[digit])
        labels.append(tuple(reversed(label)))
    return group, labels


def bounded_totals(frame: pd.DataFrame, plan: QueryPlan, persons: PersonCodes | None = None) -> BoundedTotals:
    """The plan's exact totals on ``frame`` (``persons``: the frame's privacy-unit codes, reused when no step
    changed the rows)."""
    if plan.steps:
        frame, persons = apply_steps(frame, plan), None
    if persons is None:
        persons = encode_persons(frame[plan.privacy_unit])
    # rows: (privacy unit, group columns, aggregated columns) in stored order
    labels = None
    if plan.selects_groups:
        codes, labels = _selected_codes(frame, plan)
        n_groups = len(labels)
        groups = GroupCodes.of(codes, n_groups)
    else:
        groups = _public_groups(frame, plan)
        n_groups = groups.count
    K, R = plan._contributions()
    sums = {a.name: SumColumn(_numbers(frame, a.column), a.resolution, *a.units)
            for a in plan.aggregates if a.kind in ("sum", "mean")}
    bounded = bound_contributions(persons, groups, max_partitions=K, max_rows_per_partition=R, sums=sums)
    # rows: kept or not, at most K groups x R rows per person kept
    values = {}
    quantiles = [a for a in plan.aggregates if a.kind == "quantile"]
    if quantiles:
        kept_groups = bounded.kept_groups()
        order = np.argsort(kept_groups, kind="stable")
        starts = np.searchsorted(kept_groups[order], np.arange(n_groups))
        ends = np.searchsorted(kept_groups[order], np.arange(n_groups), side="right")
        for aggregate in quantiles:
            kept = _numbers(frame, aggregate.column)[bounded.kept][order]
            lower, upper = aggregate.bounds
            values[aggregate.name] = [np.clip(chunk[~np.isnan(chunk)], lower, upper)
                                      for chunk in (kept[s:e] for s, e in zip(starts, ends))]
    return BoundedTotals(counts=bounded.counts, sums=bounded.sums, values=values, groups=labels)
