"""The recommendation stage: analytics zone -> per-person top-K lists and the marketing audience.

Reads only the analytics zone (``WS/pseudonymized/``), never the identifiable zone, and only
the rows of persons the consent gate lets through::

    WS/pseudonymized/orders/     (order_id, person_id, placed_at, amount, ..., items)
    WS/pseudonymized/catalogue/  (item_id, kind, category, title, price, served_provinces, active, listed_at)
    WS/pseudonymized/accounts/   (person_id, ..., province)

and writes, atomically::

    WS/outputs/recommendations/     (person_id, item_id, score, rank, personalized)
    WS/outputs/marketing_audience/  (marketing_id)

The recommendations' Parquet schema metadata (the non-personalized part file, which sorts first,
and ``_common_metadata``) says how the non-personalized lists were ranked, under
``portrait.non_personalized_ranking``: ``dp_popularity:<release_id>`` (the DP popularity release
charged to the budget under that id) or ``catalogue_listing_date`` (newest listed first: no
personal data at all). ``non_personalized_ranking(folder)`` reads it back.

The marketing audience carries MARKETING-domain pseudonyms, which cannot be joined with the
analytics zone's ``person_id``: whoever sends the messages learns who is in the audience, not
their portrait or lists.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import scipy.sparse as sp
from tqdm.auto import tqdm

from pipelines.engines import Engine, Kernel, LocalEngine
from pipelines.engine_jobs import score_top_k
from pipelines.workspace import Workspace
from profiling._string_hash import StringIndex
from profiling.checks import check_int
from profiling.errors import WorkspaceError
from profiling.factors import ImplicitALS, recency_weighted_counts
from profiling.scoring import eligibility_by_province

__all__ = ["CATALOGUE_RANKING", "MARKETING_AUDIENCE_SCHEMA", "RANKING_KEY", "RECOMMENDATIONS_SCHEMA",
           "non_personalized_ranking", "write_recommendations"]

RECOMMENDATIONS_SCHEMA = pa.schema([
    pa.field("person_id", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("rank", pa.int16(), nullable=False),
    pa.field("personalized", pa.bool_(), nullable=False),
])
MARKETING_AUDIENCE_SCHEMA = pa.schema([pa.field("marketing_id", pa.string(), nullable=False)])

RANKING_KEY = "portrait.non_personalized_ranking"  # Parquet schema metadata key of the recommendations
CATALOGUE_RANKING = "catalogue_listing_date"  # its value when no DP popularity release ranks the lists
NON_PERSONALIZED_FILE = "part-0-non-personalized.parquet"  # sorts before the engine's part files

PERSONS_PER_PARTITION = 131_072  # persons scored per partition kernel call (bounds the kernel's memory)

_SECONDS_PER_DAY = 86_400.0
_SCORING_SLICE = 1 << 20  # persons per record batch of the scoring table


def _analytics_table(workspace: Workspace, table: str) -> ds.Dataset:
    folder = workspace.pseudonymized(table)
    if not folder.is_dir():
        raise WorkspaceError(f"{folder} is missing: the recommendation stage reads the pseudonymized {table}; "
                             f"run the pseudonymization stage first")
    return ds.dataset(workspace.verified(folder), format="parquet")


def _columns(dataset: ds.Dataset, table: str, needed: list[str]) -> None:
    missing = [c for c in needed if c not in dataset.schema.names]
    if missing:
        raise WorkspaceError(f"pseudonymized {table} has no column {', '.join(missing)} "
                             f"(it has {', '.join(dataset.schema.names)}); rerun the pseudonymization stage")


def _check_eligible(eligible: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(eligible, pd.DataFrame):
        raise ValueError(f"eligible must be a pandas DataFrame (person_id, dnd, non_personalized), "
                         f"got {type(eligible).__name__}")
    missing = [c for c in ("person_id", "dnd", "non_personalized") if c not in eligible.columns]
    if missing:
        raise ValueError(f"eligible has no column {', '.join(missing)}; the consent gate's frame has "
                         f"person_id, dnd and non_personalized")
    frame = eligible[["person_id", "dnd", "non_personalized"]]
    if frame["person_id"].isna().any():
        raise ValueError("eligible.person_id holds nulls; every eligible row must name a person")
    duplicated = frame["person_id"][frame["person_id"].duplicated()]
    if len(duplicated):
        raise ValueError(f"eligible lists person {duplicated.iloc[0]!r} more than once")
    for flag in ("dnd", "non_personalized"):
        if frame[flag].isna().any() or not pd.api.types.is_bool_dtype(frame[flag]):
            raise ValueError(f"eligible.{flag} must be boolean without nulls, got {frame[flag].dtype}")
    return frame.reset_index(drop=True).astype({"person_id": str, "dnd": bool, "non_personalized": bool})


def _item_ranking(popularity: pd.Series | None, popularity_release: str | None, item_ids: pa.Array,
                  listed_at: pa.ChunkedArray) -> tuple[np.ndarray, str]:
    """Score per catalogue item for the non-personalized lists (NaN: not ranked) and the ranking's name.

    With a popularity release: its noisy buyers, named ``dp_popularity:<release id>``. Without:
    the listing time in days since the Unix epoch (newest first), named ``catalogue_listing_date``;
    it depends on the catalogue alone.
    """
    if popularity is None:
        if popularity_release is not None:
            raise ValueError("popularity_release names a release but no popularity was given; pass both or neither")
        micros = listed_at.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        days = micros.to_numpy(zero_copy_only=False).astype(np.float64) / 1e6 / _SECONDS_PER_DAY
        return days, CATALOGUE_RANKING
    if not isinstance(popularity_release, str) or not popularity_release:
        raise ValueError("popularity needs popularity_release, the id of the DP release it comes from (the "
                         "budget ledger's release_id), so the lists say how they were ranked")
    if not isinstance(popularity, pd.Series):
        raise ValueError(f"popularity must be a pandas Series indexed by item_id, got {type(popularity).__name__}")
    values = pd.to_numeric(popularity, errors="coerce")
    if values.isna().any() or not np.all(np.isfinite(values.to_numpy(dtype=np.float64))):
        raise ValueError("popularity holds non-numeric, NaN or infinite values; pass finite scores per item_id")
    scores = values.groupby(level=0).max().reindex(item_ids.to_numpy(zero_copy_only=False)).to_numpy(
        dtype=np.float64)
    return scores, f"dp_popularity:{popularity_release}"


def non_personalized_ranking(folder: str | Path) -> str | None:
    """How the non-personalized lists in a recommendations folder were ranked (see the module), or None."""
    path = Path(folder) / "_common_metadata"
    if not path.is_file():
        return None
    value = (pq.read_schema(path).metadata or {}).get(RANKING_KEY.encode())
    return value.decode() if value is not None else None


def write_recommendations(workspace: Workspace, eligible: pd.DataFrame, *, as_of: dt.datetime, k: int = 10,
                          marketing: pd.DataFrame | None = None, popularity: pd.Series | None = None,
                          popularity_release: str | None = None, factors: int = 64, iterations: int = 15,
                          half_life_days: float = 90.0, random_state: int = 0, engine: Engine | None = None,
                          progress: bool = False) -> list[dict]:
    """Write each eligible person's top-``k`` items and the marketing audience; return summary rows.

    ``eligible`` is the consent gate's answer for ``service_provision`` at ``as_of`` (who may be
    served): one row per person, ``(person_id, dnd, non_personalized)``. Nobody else's rows are read
    into a model or an output.

    - Persons who allow personalization and bought something before ``as_of`` get personalized lists:
      implicit-ALS factors (``factors`` per person and item, ``iterations`` sweeps, purchases weighted
      by recency with ``half_life_days``) fitted on those persons' orders only, scored exactly, items
      they bought and items not allowed to them excluded.
    - Persons who refused personalization (``non_personalized``), and those with no purchase yet, get
      the non-personalized list (``personalized`` false): the top allowed items by ``popularity`` (a
      Series of scores by item_id: the DP popularity release, whose budget-ledger id is
      ``popularity_release``) when given, else by listing date, newest first (score: days since the
      Unix epoch), which uses no personal data. The ranking used goes to the output's schema metadata
      and the summary. Nothing of a refuser's own is used: not their history (not even to drop what
      they bought), not their province (they see nationwide items only, one list for all of them).
    - Allowed items: active in the catalogue, listed by ``as_of``, and served in the person's province
      (``served_provinces`` null: nationwide; a person with unknown province, or who refused
      personalization, sees nationwide items only).
    - DND persons keep their lists (shown in the app) but never enter the marketing audience:
      ``marketing`` (a frame with person_id, marketing_id and, optionally, dnd) lists who consented
      to marketing; the audience is those persons' marketing_id, not DND (by ``marketing.dnd`` or
      else ``eligible.dnd``; a person whose DND state is known from neither is left out). Without
      ``marketing`` the audience is empty.

    Scores are inner products of the factors (unitless) for personalized rows and the ranking's score
    (noisy buyers, or listing days) for the others; ranks count from 1. The privacy unit is ``person_id``.

    The factors are fitted on the driver; the personalized lists are scored by partition kernels on
    ``engine`` (default: a local engine in the workspace), the item factors and the allowed-items
    matrix broadcast, so every engine gives the same lists.
    """
    if as_of.tzinfo is None:
        raise ValueError(f"as_of {as_of} has no time zone; pass an aware datetime in UTC")
    k = check_int(k, "k")
    eligible = _check_eligible(eligible)
    as_of_scalar = pa.scalar(as_of.astimezone(dt.timezone.utc), type=pa.timestamp("us", tz="UTC"))

    catalogue_set = _analytics_table(workspace, "catalogue")
    _columns(catalogue_set, "catalogue", ["item_id", "served_provinces", "active", "listed_at"])
    catalogue = catalogue_set.to_table(columns=["item_id", "served_provinces", "active", "listed_at"])
    # rows: (item_id, served_provinces, active, listed_at)
    item_ids = catalogue["item_id"].combine_chunks()
    if item_ids.null_count:
        raise WorkspaceError("pseudonymized catalogue has a row without item_id; rerun pseudonymization")
    if pc.count_distinct(item_ids).as_py() != len(item_ids):
        raise WorkspaceError("pseudonymized catalogue lists an item_id more than once; rerun pseudonymization")
    offered = pc.and_(catalogue["active"], pc.less_equal(catalogue["listed_at"], as_of_scalar))
    offered = pc.fill_null(offered, False).to_numpy(zero_copy_only=False)

    accounts_set = _analytics_table(workspace, "accounts")
    _columns(accounts_set, "accounts", ["person_id", "province"])
    person_ids = pa.array(eligible["person_id"].to_numpy(dtype=object), pa.string())
    personalizable = ~eligible["non_personalized"].to_numpy()
    accounts = accounts_set.to_table(columns=["person_id", "province"],
                                     filter=ds.field("person_id").isin(person_ids.filter(personalizable)))
    # rows: (person_id, province) of persons who allow personalization only
    provinces = accounts["province"].take(pc.index_in(person_ids, value_set=accounts["person_id"]))
    # rows: eligible persons -> their province (null: refused personalization, or unknown)
    eligibility = eligibility_by_province(catalogue["served_provinces"].to_pylist(), offered, provinces)

    orders_set = _analytics_table(workspace, "orders")
    _columns(orders_set, "orders", ["person_id", "placed_at", "items"])
    buyer, bought_items, age_days = _purchases(orders_set, person_ids, personalizable, item_ids, as_of_scalar)
    # rows: (buyer, bought_item, age_days) per purchased catalogue item of a person allowing personalization
    feedback = recency_weighted_counts(buyer, bought_items, age_days, persons=len(person_ids), items=len(item_ids),
                                       half_life_days=half_life_days)
    has_history = np.diff(feedback.indptr) > 0
    is_trained = has_history & personalizable
    trained = np.flatnonzero(is_trained)

    popular, ranking = _item_ranking(popularity, popularity_release, item_ids, catalogue["listed_at"])
    fallback_lists = _popular_lists(popular, eligibility.allowed, k)
    fallback_persons = np.flatnonzero(~is_trained)

    with contextlib.ExitStack() as owned, workspace.staging() as staging:
        engine = engine or owned.enter_context(LocalEngine(workspace=workspace, progress=progress))
        recommendations = staging / "recommendations"
        if len(trained) and len(item_ids):
            model = ImplicitALS(factors=factors, iterations=iterations, random_state=random_state, verbose=progress)
            trained_feedback = feedback[trained]
            model.fit(trained_feedback)
            scoring = _scoring_table(person_ids.take(trained), model.person_factors_, trained_feedback, item_ids,
                                     eligibility.person_group[trained])
            frame = engine.from_table(scoring, key="person_id",
                                      partitions=max(1, math.ceil(len(trained) / PERSONS_PER_PARTITION)))
            # rows: (person_id, factors, bought item ids, eligibility group), partitioned by person
            ranked = score_top_k(engine, frame, item_ids=item_ids,
                                 item_factors=model.item_factors_, k=k, exclude="bought", group="group",
                                 allowed=eligibility.allowed)
            # rows: (person_id, item_id, score, rank), k per person at most
            engine.save(engine.map(ranked, _personalized_kernel()), recommendations)
        else:
            recommendations.mkdir()
        personalized_rows = ds.dataset(recommendations, format="parquet").count_rows()
        # the non-personalized lists, written by the driver beside the engine's files
        fallback_rows = 0
        labelled = RECOMMENDATIONS_SCHEMA.with_metadata({RANKING_KEY: ranking})
        pq.write_metadata(labelled, recommendations / "_common_metadata")
        with pq.ParquetWriter(recommendations / NON_PERSONALIZED_FILE, labelled) as writer:
            for start in tqdm(range(0, len(fallback_persons), 65_536), desc="popular lists", unit=" batch",
                              disable=not progress):
                chunk = fallback_persons[start:start + 65_536]
                record = _fallback_batch(chunk, person_ids, item_ids, eligibility.person_group, fallback_lists,
                                         popular, labelled)
                writer.write_batch(record)
                fallback_rows += record.num_rows
        audience_folder = staging / "marketing_audience"
        audience_folder.mkdir()
        audience = _marketing_audience(marketing, eligible)
        pq.write_table(pa.table({"marketing_id": pa.array(audience, pa.string())}, schema=MARKETING_AUDIENCE_SCHEMA),
                       audience_folder / "part-0.parquet")
        workspace.publish({workspace.outputs("recommendations"): recommendations,
                           workspace.outputs("marketing_audience"): audience_folder})
    return [
        {"stage": "recommend", "output": "recommendations", "persons": len(trained), "rows": personalized_rows,
         "kind": "personalized"},
        {"stage": "recommend", "output": "recommendations", "persons": len(fallback_persons),
         "rows": fallback_rows, "kind": "non-personalized", "ranking": ranking},
        {"stage": "recommend", "output": "marketing_audience", "persons": len(audience), "rows": len(audience),
         "kind": "not DND"},
    ]


def _popular_lists(popular: np.ndarray, allowed: np.ndarray, k: int) -> list[np.ndarray]:
    """Per eligibility group, the top-``k`` allowed items by ranking score (ties: lower item index first)."""
    ranked = np.lexsort((np.arange(len(popular)), -np.nan_to_num(popular, nan=-np.inf)))
    ranked = ranked[~np.isnan(popular[ranked])]
    return [ranked[allowed[group, ranked]][:k] for group in range(allowed.shape[0])]


def _purchases(orders: ds.Dataset, person_ids: pa.Array, personalizable: np.ndarray, item_ids: pa.Array,
               as_of: pa.TimestampScalar) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(buyer, item, age_days)`` per item bought by a person allowing personalization, placed by ``as_of``.

    ``buyer`` and ``item`` are positions in ``person_ids`` and ``item_ids`` (int64), ``age_days``
    float64 days before ``as_of``; items no longer in the catalogue are left out (they can be neither
    recommended nor excluded). The orders are streamed batch by batch and only these three numbers per
    item are kept, in stored order (an order's items in their listed order): other persons' rows and
    the identifiers themselves never accumulate.
    """
    as_of_us = as_of.cast(pa.int64()).as_py()
    person_index, item_index = StringIndex(person_ids), StringIndex(item_ids)  # built once, probed per batch
    buyers, items, ages = [], [], []
    for batch in orders.to_batches(columns=["person_id", "placed_at", "items"],
                                   filter=ds.field("placed_at") <= as_of):
        position = person_index.positions(batch.column("person_id"))
        keep = position >= 0
        keep[keep] = personalizable[position[keep]]
        # rows: (person_id, placed_at, items) of persons who allow personalization, placed by as_of
        lists = batch.column("items").filter(pa.array(keep))
        lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
        item = item_index.positions(pc.list_flatten(lists))
        known = item >= 0
        placed = np.repeat(batch.column("placed_at").cast(pa.int64()).to_numpy(zero_copy_only=False)[keep],
                           lengths)[known]
        buyers.append(np.repeat(position[keep], lengths)[known])
        items.append(item[known])
        ages.append((as_of_us - placed) / 1e6 / _SECONDS_PER_DAY)
    empty = [np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)]
    return tuple(np.concatenate(parts) if parts else none for parts, none in zip((buyers, items, ages), empty,
                                                                                strict=True))


def _fallback_batch(persons: np.ndarray, person_ids: pa.Array, item_ids: pa.Array, person_group: np.ndarray,
                    lists: list[np.ndarray], popular: np.ndarray, schema: pa.Schema) -> pa.RecordBatch:
    """``schema`` rows of the non-personalized lists of ``persons`` (positions in ``person_ids``): each
    person's group's list, ranked from 1."""
    starts = np.concatenate([[0], np.cumsum([len(items) for items in lists])]).astype(np.int64)
    flat = np.concatenate([*lists, np.zeros(0, np.int64)]).astype(np.int64)
    group = person_group[persons]
    lengths = (starts[1:] - starts[:-1])[group]
    first_row = np.repeat(np.cumsum(lengths) - lengths, lengths)
    rank = np.arange(len(first_row)) - first_row + 1
    items = flat[np.repeat(starts[:-1][group], lengths) + rank - 1]
    # rows: (person, item, ranking score, rank)
    return pa.RecordBatch.from_arrays([
        person_ids.take(pa.array(np.repeat(persons, lengths))),
        item_ids.take(pa.array(items)),
        pa.array(popular[items], pa.float32()),
        pa.array(rank, pa.int16()),
        pa.array(np.zeros(len(items), dtype=bool), pa.bool_()),
    ], schema=schema)


def _scoring_table(person_ids: pa.Array, person_factors: np.ndarray, bought: sp.csr_array, item_ids: pa.Array,
                   group: np.ndarray) -> pa.Table:
    """Rows (person_id, factors, bought item ids, eligibility group) of the persons to score, one each.

    Built in slices of ``_SCORING_SLICE`` persons, so list offsets stay within Arrow's 32-bit lists.
    """
    dims = person_factors.shape[1]
    bought = sp.csr_array(bought)
    slices = []
    for start in range(0, len(person_ids), _SCORING_SLICE):
        stop = min(start + _SCORING_SLICE, len(person_ids))
        first, last = bought.indptr[start], bought.indptr[stop]
        slices.append(pa.record_batch({
            "person_id": person_ids.slice(start, stop - start),
            "factors": pa.ListArray.from_arrays(
                pa.array(np.arange(stop - start + 1, dtype=np.int32) * dims),
                pa.array(np.ascontiguousarray(person_factors[start:stop], np.float32).ravel())),
            "bought": pa.ListArray.from_arrays(
                pa.array((bought.indptr[start:stop + 1] - first).astype(np.int32)),
                item_ids.take(pa.array(bought.indices[first:last]))),
            "group": pa.array(np.asarray(group[start:stop], dtype=np.int32)),
        }))
    return pa.Table.from_batches(slices)


def _personalized_kernel() -> Kernel:
    """Kernel: top-K rows -> ``RECOMMENDATIONS_SCHEMA`` rows flagged personalized."""
    def flagged(table: pa.Table) -> pa.Table:
        return table.append_column(RECOMMENDATIONS_SCHEMA.field("personalized"),
                                   pa.array(np.ones(table.num_rows, dtype=bool), pa.bool_())).cast(RECOMMENDATIONS_SCHEMA)

    return Kernel(flagged, RECOMMENDATIONS_SCHEMA, name="personalized", by_person=False)


def _marketing_audience(marketing: pd.DataFrame | None, eligible: pd.DataFrame) -> list[str]:
    if marketing is None:
        return []
    if not isinstance(marketing, pd.DataFrame) or not {"person_id", "marketing_id"} <= set(marketing.columns):
        raise ValueError("marketing must be a pandas DataFrame with person_id and marketing_id columns "
                         "(and optionally dnd)")
    if "dnd" in marketing.columns:
        if marketing["dnd"].isna().any() or not pd.api.types.is_bool_dtype(marketing["dnd"]):
            raise ValueError(f"marketing.dnd must be boolean without nulls, got {marketing['dnd'].dtype}")
        # a person listed twice: the last row's DND state holds
        dnd = pd.Series(marketing["dnd"].to_numpy(dtype=bool), index=marketing["person_id"].astype(str))
        dnd = dnd[~dnd.index.duplicated(keep="last")]
    else:
        dnd = pd.Series(eligible["dnd"].to_numpy(dtype=bool), index=eligible["person_id"])
    candidates = marketing.dropna(subset=["person_id", "marketing_id"]).drop_duplicates("person_id")
    # rows: candidates -> their place in dnd (-1: DND state known from neither frame, left out)
    known = dnd.index.get_indexer(candidates["person_id"].astype(str))
    reachable = (known >= 0) & ~dnd.to_numpy()[np.maximum(known, 0)]
    return sorted(str(m) for m in candidates["marketing_id"].to_numpy(dtype=object)[reachable])
