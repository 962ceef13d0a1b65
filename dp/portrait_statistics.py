"""Portrait statistics for analysts: DP histograms of recency, frequency and monetary value, and category shares.

What an analyst would otherwise plot from person-level portraits (``WS/outputs/portraits``, one row
per identity), released instead through ``PrivateSession`` with the identity as privacy unit and
charged to the ``portraits`` dataset's budget (registered per identity). Every value comes with the
half-width of its confidence interval.

* ``recency_days``, ``frequency``, ``monetary_value_cny``: noisy identities per bin between public
  edges (``EDGES``, chosen from the features' units, never from the data); each identity counts once
  per histogram, in the bin of its value; a value above the last edge counts in the last bin,
  and an identity without a value (no order yet) in none.
* category shares: the mean over identities with orders of each identity's share of orders in a
  category (``category_share_<category>``). Released as a noisy sum of shares per category (each
  identity's ``max_categories`` largest shares, each in [0, 1]) divided by a noisy count of
  identities with orders; the interval holds both noises at once (each at half the miss rate).
  Leaving out an identity's smaller shares biases toward the categories people buy most, never
  the guarantee.

Privacy: the five releases (three histograms, the count, the sums) each cost ``epsilon / 5``, so
the whole is epsilon-DP per identity (per group of ``accounts_per_human`` identities: one human's
unlinked accounts), by basic composition.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from dp._errors import BudgetExceededError
from dp._parameters import check_epsilon, check_positive_int
from dp.budget import BudgetLedger
from dp.plan import _mean_interval, ci_column
from dp.session import PrivateSession
from dp.units import IDENTITY, attach_identity
from profiling.errors import PortraitError
from profiling.schema import CATEGORIES

__all__ = ["DATASET", "EDGES", "PortraitStatistics", "release_portrait_statistics"]

DATASET = "portraits"
# Public bin edges in the features' units (days, repeat purchase days, CNY per repeat purchase day).
EDGES: Mapping[str, tuple[float, ...]] = {
    "recency_days": (0, 30, 90, 180, 365, 730, 1095, 1825, 3650),
    "frequency": (0, 1, 2, 4, 8, 16, 32, 64, 128),
    "monetary_value_cny": (0, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
}
_RELEASES = len(EDGES) + 2   # the histograms, the count of identities with orders, the sums of shares


@dataclass(frozen=True)
class PortraitStatistics:
    """``histograms``: feature -> frame (``bin``, ``count``, its half-width); ``category_shares``: frame
    (``category``, ``share``, its half-width) in the order of ``profiling.schema.CATEGORIES``;
    ``identities_with_orders``: the noisy count and its half-width. Half-widths at ``confidence``."""

    histograms: Mapping[str, pd.DataFrame]
    category_shares: pd.DataFrame
    identities_with_orders: tuple[float, float]
    confidence: float


def release_portrait_statistics(portraits: pd.DataFrame | pa.Table, *, ledger: BudgetLedger | str | os.PathLike,
                                purpose: str, epsilon: float, identity_persons: pd.DataFrame | pa.Table | None = None,
                                edges: Mapping[str, Sequence[float]] = EDGES, max_categories: int = 4,
                                accounts_per_human: int = 1, confidence: float = 0.95,
                                analyst: str | None = None) -> PortraitStatistics:
    """Release the portrait statistics (module docstring), charging ``epsilon`` in five equal releases.

    ``portraits``: the portrait table (``person_id`` naming the identity, the features);
    ``identity_persons``: the identity graph's person_id -> identity_id (optional: an identity is its
    person when absent). ``edges`` may replace the public edges of any of the three features.
    Everything is checked before the first charge, so a refused call charges nothing.
    """
    frame = portraits.to_pandas() if isinstance(portraits, pa.Table) else portraits
    if not isinstance(frame, pd.DataFrame):
        raise PortraitError(f"portraits must be a pandas DataFrame or an Arrow table, got {type(portraits).__name__}")
    shares = [f"category_share_{c}" for c in CATEGORIES]
    needed = ["person_id", "orders", *EDGES, *shares]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise PortraitError(f"portraits have no column {', '.join(missing[:3])}; pass the portrait table "
                            f"(WS/outputs/portraits)")
    unknown = sorted(set(edges) - set(EDGES))
    if unknown:
        raise PortraitError(f"edges for {', '.join(unknown)}: the histograms are of {', '.join(EDGES)}")
    edges = {**EDGES, **{k: tuple(v) for k, v in edges.items()}}
    per_release = check_epsilon(epsilon, "epsilon", "portrait statistics") / _RELEASES
    top = check_positive_int(max_categories, "max_categories")
    columns = ["person_id", "orders", *EDGES, *shares]
    rows = attach_identity(frame[columns], persons=identity_persons)
    # rows: (person_id, orders, features, shares, identity_id), one per identity
    for feature, feature_edges in edges.items():   # above the last public edge: the last bin (row by row)
        if len(feature_edges) >= 2:
            rows[feature] = rows[feature].clip(upper=float(feature_edges[-1]))
    long = _largest_shares(rows, shares, top)
    # rows: (identity_id, category, share), each identity's `top` largest positive shares, largest first
    open_session = lambda data: PrivateSession(data, dataset=DATASET, ledger=ledger, purpose=purpose,
                                               privacy_unit=IDENTITY, accounts_per_human=accounts_per_human,
                                               analyst=analyst)
    whole, half = open_session(rows), open_session(long)
    inner = 1.0 - (1.0 - confidence) / 2   # the share's two noises each miss at half the rate
    queries = {feature: whole.query(epsilon=per_release, confidence=confidence).histogram(feature, feature_edges)
               .count() for feature, feature_edges in edges.items()}
    counted = whole.query(epsilon=per_release, confidence=inner).where("orders > 0").count()
    summed = (half.query(epsilon=per_release, confidence=inner).group_by("category", keys=list(CATEGORIES))
              .bound(max_partitions=top, max_rows_per_partition=1).sum("share", bounds=(0, 1), resolution=1e-6))
    compiled = [q.compile() for q in (*queries.values(), counted, summed)]   # all checked before the first charge
    left = whole.remaining()["epsilon"]
    if left is not None and sum(line.epsilon for c in compiled for line in c.lines) > left * (1 + 1e-12):
        raise BudgetExceededError(f"the portrait statistics cost epsilon {epsilon:g} in {_RELEASES} releases, more "
                                  f"than the {left:g} left of dataset {DATASET!r}; nothing was charged")
    released = [c.release(s._totals(q)) for c, s, q in zip(
        compiled, [whole] * (len(queries) + 1) + [half], [*queries.values(), counted, summed], strict=True)]
    ci = ci_column("count", confidence)
    histograms = {}
    for (feature, _), table in zip(queries.items(), released, strict=False):
        histograms[feature] = table.rename(columns={feature: "bin"})[["bin", "count", ci]]
    count_row, sums = released[len(queries)], released[len(queries) + 1]
    noisy_count, count_half = float(count_row["count"].iloc[0]), float(count_row[ci_column("count", inner)].iloc[0])
    share, share_half = _mean_interval(sums["share_sum"].to_numpy(), np.full(len(sums), noisy_count), (0.0, 1.0),
                                       sums[ci_column("share_sum", inner)].to_numpy(), count_half)
    category_shares = pd.DataFrame({"category": list(CATEGORIES), "share": share,
                                    ci_column("share", confidence): share_half})
    return PortraitStatistics(histograms, category_shares, (noisy_count, count_half), confidence)


def _largest_shares(rows: pd.DataFrame, shares: list[str], top: int) -> pd.DataFrame:
    """Each identity's ``top`` largest positive category shares, largest first (only its own row decides)."""
    values = rows[shares].fillna(0.0).to_numpy(dtype=np.float64)
    order = np.argsort(-values, axis=1, kind="stable")[:, :top]
    picked = np.take_along_axis(values, order, axis=1)
    keep = picked > 0
    identities = np.repeat(rows[IDENTITY].to_numpy(), order.shape[1]).reshape(order.shape)
    return pd.DataFrame({IDENTITY: identities[keep], "category": np.asarray(CATEGORIES, dtype=object)[order[keep]],
                         "share": picked[keep]})
