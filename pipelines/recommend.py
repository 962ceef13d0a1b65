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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipelines.engines import Broadcast, Engine, FactorSettings, Kernel, LocalEngine, input_rows
from pipelines.engine_jobs import score_top_k
from pipelines.workspace import Workspace
from profiling._string_hash import LazyStringIndex, StringIndex
from profiling.checks import check_int, check_number
from profiling.errors import InternalError, WorkspaceError
from profiling.scoring import ItemEligibility, eligibility_by_province

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

PERSONS_PER_PARTITION = 65_536  # persons allowing personalization per partition of their purchases (bounds its memory)

_SECONDS_PER_DAY = 86_400.0
_PURCHASES = pa.schema([pa.field("person_id", pa.string()), pa.field("bought", pa.list_(pa.string())),
                        pa.field("weights", pa.list_(pa.float64()))])
_FEEDBACK = pa.schema([pa.field("person_id", pa.string()), pa.field("item_id", pa.string()),
                       pa.field("weight", pa.float64())])
_KNOWN = pa.schema([pa.field("source", pa.string()), pa.field("person_id", pa.string()),
                    pa.field("bought", pa.list_(pa.string())), pa.field("group", pa.int32())])
_SCORING = pa.schema([pa.field("person_id", pa.string()), pa.field("factors", pa.list_(pa.float32())),
                      pa.field("bought", pa.list_(pa.string())), pa.field("group", pa.int32())])


def _analytics_table(workspace: Workspace, table: str) -> Path:
    """The pseudonymized ``table``'s folder, checked against its manifests."""
    folder = workspace.pseudonymized(table)
    if not folder.is_dir():
        raise WorkspaceError(f"{folder} is missing: the recommendation stage reads the pseudonymized {table}; "
                             f"run the pseudonymization stage first")
    return workspace.verified(folder)


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
      implicit-ALS factors (``factors`` per person and item, ``iterations`` sweeps, seed
      ``random_state``, each purchase weighted ``0.5 ** (age_days / half_life_days)``, repeats adding
      up) fitted on those persons' orders only, scored exactly, items they bought and items not
      allowed to them excluded.
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

    Everything built from the orders runs on ``engine`` (default: a local engine in the workspace):
    the purchases are read once and weighted by a kernel and brought to their person's eligibility
    group by ``co_partition``, the factors fitted there by ``Engine.implicit_factors`` (locally the
    compiled solver, persons and items in string order; on Spark the same half-steps in a barrier
    stage, whose factors, and so lists, differ from the local ones at the same quality), each person's
    factors joined to their purchases and group by a second ``co_partition`` and scored by
    ``score_top_k``, and the persons allowing personalization who bought nothing found and given
    their group's non-personalized list there too. The driver holds the catalogue, the consent
    gate's persons with their provinces, the item factors and per-partition counts: no person-level
    table built from the orders.
    """
    if as_of.tzinfo is None:
        raise ValueError(f"as_of {as_of} has no time zone; pass an aware datetime in UTC")
    k = check_int(k, "k")
    half_life_days = check_number(half_life_days, "half_life_days", positive=True)
    settings = FactorSettings(factors=factors, iterations=iterations, seed=random_state)
    eligible = _check_eligible(eligible)
    as_of_scalar = pa.scalar(as_of.astimezone(dt.timezone.utc), type=pa.timestamp("us", tz="UTC"))

    catalogue_set = ds.dataset(_analytics_table(workspace, "catalogue"), format="parquet")
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

    accounts_set = ds.dataset(_analytics_table(workspace, "accounts"), format="parquet")
    _columns(accounts_set, "accounts", ["person_id", "province"])
    person_ids = pa.array(eligible["person_id"].to_numpy(dtype=object), pa.string())
    personalizable = ~eligible["non_personalized"].to_numpy()
    personalizable_ids = person_ids.filter(personalizable)
    accounts = accounts_set.to_table(columns=["person_id", "province"],
                                     filter=ds.field("person_id").isin(personalizable_ids))
    # rows: (person_id, province) of persons who allow personalization only
    provinces = accounts["province"].take(pc.index_in(person_ids, value_set=accounts["person_id"]))
    # rows: eligible persons -> their province (null: refused personalization, or unknown)
    eligibility = eligibility_by_province(catalogue["served_provinces"].to_pylist(), offered, provinces)

    orders_folder = _analytics_table(workspace, "orders")
    # its schema only: the engine reads the rows
    _columns(ds.dataset(orders_folder, format="parquet"), "orders", ["person_id", "placed_at", "items"])

    popular, ranking = _item_ranking(popularity, popularity_release, item_ids, catalogue["listed_at"])
    fallback_lists = _FallbackLists.of(_popular_lists(popular, eligibility.allowed, k), item_ids, popular)
    # persons whose list the driver writes: the refusers, or everyone when nothing can be personalized
    scored_on_engine = len(personalizable_ids) > 0 and len(item_ids) > 0
    by_driver = np.flatnonzero(~personalizable if scored_on_engine else np.ones(len(person_ids), dtype=bool))

    with contextlib.ExitStack() as owned, workspace.staging() as staging:
        engine = engine or owned.enter_context(LocalEngine(workspace=workspace, progress=progress))
        recommendations = staging / "recommendations"
        trained, personalized_rows, no_purchase_rows = 0, 0, 0
        if scored_on_engine:
            trained, personalized_rows, no_purchase_rows = _lists_on_engine(
                engine, orders_folder, recommendations,
                staging / "no-purchase", personalizable_ids=personalizable_ids,
                groups=eligibility.person_group[personalizable], item_ids=item_ids, eligibility=eligibility,
                fallback_lists=fallback_lists, as_of=as_of_scalar, half_life_days=half_life_days, k=k,
                settings=settings)
        else:
            recommendations.mkdir()
        # the non-personalized lists the driver writes, beside the engine's files
        fallback_rows = no_purchase_rows
        labelled = RECOMMENDATIONS_SCHEMA.with_metadata({RANKING_KEY: ranking})
        pq.write_metadata(labelled, recommendations / "_common_metadata")
        with pq.ParquetWriter(recommendations / NON_PERSONALIZED_FILE, labelled) as writer:
            for start in tqdm(range(0, len(by_driver), 65_536), desc="popular lists", unit=" batch",
                              disable=not progress):
                chunk = by_driver[start:start + 65_536]
                record = fallback_lists.rows(person_ids.take(pa.array(chunk)), eligibility.person_group[chunk],
                                             labelled)
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
        {"stage": "recommend", "output": "recommendations", "persons": trained, "rows": personalized_rows,
         "kind": "personalized"},
        {"stage": "recommend", "output": "recommendations", "persons": len(person_ids) - trained,
         "rows": fallback_rows, "kind": "non-personalized", "ranking": ranking},
        {"stage": "recommend", "output": "marketing_audience", "persons": len(audience), "rows": len(audience),
         "kind": "not DND"},
    ]


def _lists_on_engine(engine: Engine, orders_folder: Path, recommendations: Path, no_purchase: Path, *,
                     personalizable_ids: pa.Array, groups: np.ndarray, item_ids: pa.Array,
                     eligibility: ItemEligibility, fallback_lists: _FallbackLists, as_of: pa.TimestampScalar,
                     half_life_days: float, k: int, settings: FactorSettings) -> tuple[int, int, int]:
    """Write the lists of the persons allowing personalization into ``recommendations`` (new): personalized
    lists for those with factors, their group's non-personalized list for the others; return (persons
    with factors, rows of their lists, rows of the others' lists). ``no_purchase``: a new staging folder."""
    partitions = max(1, math.ceil(len(personalizable_ids) / PERSONS_PER_PARTITION))
    orders = engine.read(orders_folder, columns=["person_id", "placed_at", "items"], key=None)
    # rows: (person_id, placed_at, items) as stored
    purchases = engine.map(orders, _purchases_kernel(
        persons=engine.broadcast(personalizable_ids), items=engine.broadcast(item_ids),
        as_of_us=as_of.cast(pa.int64()).as_py(), half_life_days=half_life_days))
    # rows: (person_id, bought item ids, their weights) per run of a person's orders, of persons allowing
    # personalization, placed by as_of, catalogue items only
    group_frame = engine.from_table(pa.table({"person_id": personalizable_ids,
                                              "group": pa.array(groups, pa.int32())}), key="person_id",
                                    partitions=partitions)
    # rows: (person_id, group): the consent gate's persons allowing personalization, by person
    known = engine.keep(engine.co_partition({"purchases": purchases, "groups": group_frame}, key="person_id",
                                            partitions=partitions))
    # rows: (source, person_id, bought, weights, group) by person: the orders are read once, here, and kept for
    # the fit and the scoring
    feedback = engine.map(known, _FEEDBACK_ROWS)
    # rows: (person_id, item_id, weight) per item bought, repeats apart (implicit_factors adds them up)
    person_factors, bought_factors = engine.implicit_factors(feedback, row="person_id", column="item_id",
                                                             weight="weight", settings=settings)
    # rows: (person_id, factors) per person with a purchase, by person; bought_factors: (item_id, factors)
    # per item bought
    trained = int(pc.sum(engine.collect(engine.map(engine.select(person_factors, ["person_id"]), _ROW_COUNT)
                         )["rows"]).as_py() or 0)
    together = engine.keep(engine.co_partition({"factors": person_factors, "known": engine.map(known, _KNOWN_ROWS)},
                                               key="person_id", partitions=partitions, source="input"))
    # rows: (input, person_id, factors, source, bought, group): each person's factors, purchases and group, kept
    # for the personalized lists and the others
    ranked = score_top_k(engine, engine.map(together, _SCORING_ROWS), item_ids=item_ids,
                         item_factors=_catalogue_factors(bought_factors, item_ids, settings.factors), k=k,
                         exclude="bought", group="group", allowed=eligibility.allowed)
    # rows: (person_id, item_id, score, rank), k per person with factors at most
    engine.save(engine.map(ranked, _personalized_kernel()), recommendations)
    personalized_rows = ds.dataset(recommendations, format="parquet").count_rows()
    if trained == len(personalizable_ids):
        return trained, personalized_rows, 0  # everyone allowing personalization bought something
    # only the columns the kernel reads: the factors and bought lists would cost most to move on Spark
    engine.save(engine.map(engine.select(together, ["input", "person_id", "source", "group"]),
                           _no_purchase_kernel(engine.broadcast(fallback_lists))), no_purchase)
    # rows: (person_id, item_id, score, rank, personalized false) of persons allowing personalization who bought
    # nothing; their files join the personalized ones (named to sort after the driver's part file)
    no_purchase_rows = 0
    for number, file in enumerate(sorted(f for f in no_purchase.glob("*.parquet") if f.name[0] not in "._")):
        no_purchase_rows += pq.read_metadata(file).num_rows
        file.rename(recommendations / f"part-1-no-purchase-{number:05d}.parquet")
    return trained, personalized_rows, no_purchase_rows


def _purchases_kernel(*, persons: Broadcast[pa.Array], items: Broadcast[pa.Array], as_of_us: int,
                      half_life_days: float) -> Kernel:
    """Kernel: orders (person_id, placed_at, items) -> ``(person_id, bought, weights)``, one row per run of
    consecutive orders of one of ``persons`` (broadcast) placed at or before ``as_of_us`` (microseconds
    since the epoch): the catalogue items bought, each weighed ``0.5 ** (age_days / half_life_days)``
    with the purchase's age in days before the as-of moment (as ``recency_weighted_counts`` weighs it).

    Items no longer in the catalogue are left out: they can be neither recommended nor excluded. Not
    per person: it runs on the orders as stored, and a person whose orders are not stored together
    gets several rows (whoever reads them gathers a person's rows).
    """
    person_index, item_index = LazyStringIndex(lambda: persons.value), LazyStringIndex(lambda: items.value)

    def purchases(table: pa.Table) -> pa.Table:
        placed_us = (table.column("placed_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
                     .fill_null(as_of_us + 1).to_numpy())
        person = person_index.positions(table.column("person_id"))
        kept = (person >= 0) & (placed_us <= as_of_us)
        # rows: orders of persons allowing personalization placed by as_of -> their items, in stored order
        lists = table.column("items").combine_chunks().filter(pa.array(kept))
        lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(lists)
        known = item_index.positions(flat) >= 0
        owner = np.repeat(np.flatnonzero(kept), lengths)[known]
        buyer = person[owner]
        first = np.flatnonzero(np.r_[True, buyer[1:] != buyer[:-1]]) if len(buyer) else np.zeros(0, np.int64)
        offsets = pa.array(np.r_[first, len(buyer)].astype(np.int32))
        age_days = (as_of_us - placed_us[owner]) / 1e6 / _SECONDS_PER_DAY
        # rows: (person, items bought, weights) per run of one person's items
        return pa.table({"person_id": persons.value.take(pa.array(buyer[first])),
                         "bought": pa.ListArray.from_arrays(offsets, flat.filter(pa.array(known))),
                         "weights": pa.ListArray.from_arrays(offsets, pa.array(np.power(0.5, age_days /
                                                                                        half_life_days)))},
                        schema=_PURCHASES)

    return Kernel(purchases, _PURCHASES, name="purchases", by_person=False)


def _feedback_rows(table: pa.Table) -> pa.Table:
    """Purchases and groups by person -> ``(person_id, item_id, weight)``, one row per item bought."""
    purchases = input_rows(table, "purchases")
    bought = purchases.column("bought").combine_chunks()
    return pa.table({"person_id": purchases.column("person_id").take(pc.list_parent_indices(bought)),
                     "item_id": pc.list_flatten(bought),
                     "weight": pc.list_flatten(purchases.column("weights").combine_chunks())}, schema=_FEEDBACK)


def _catalogue_factors(bought_factors: pa.Table, item_ids: pa.Array, dims: int) -> np.ndarray:
    """The item factors in catalogue order (items x ``dims`` float32): the fitted ones of the items bought,
    zero for the others (what the fit gives an item without feedback)."""
    aligned = np.zeros((len(item_ids), dims), dtype=np.float32)
    position = StringIndex(item_ids).positions(bought_factors.column("item_id"))
    if (position < 0).any():
        raise InternalError("the fit returned factors of an item not in the catalogue")
    vectors = pc.list_flatten(bought_factors.column("factors").combine_chunks())
    aligned[position] = vectors.to_numpy(zero_copy_only=False).reshape(len(position), dims)
    return aligned


def _scoring_rows(table: pa.Table) -> pa.Table:
    """Factors, purchases and groups by person -> ``_SCORING`` rows: one per person with factors, with the
    items they bought (repeats kept: an exclusion) and their eligibility group."""
    trained = input_rows(table, "factors", "input")
    persons = trained.column("person_id").combine_chunks()
    known = input_rows(table, "known", "input")
    groups = input_rows(known, "groups")
    at = pc.index_in(persons, value_set=groups.column("person_id").combine_chunks())
    if at.null_count:
        raise InternalError("a person has factors but is not among the persons allowing personalization")
    bought = input_rows(known, "purchases")
    owner = pc.index_in(bought.column("person_id"), value_set=persons).fill_null(-1).to_numpy(zero_copy_only=False)
    # a person's lists, one per run of their orders, in a row; a purchase of a person without factors
    # (every weight zero) excludes nothing
    order = np.flatnonzero(owner >= 0)
    order = order[np.argsort(owner[order], kind="stable")]
    lists = bought.column("bought").combine_chunks().take(pa.array(order))
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
    per_person = np.bincount(owner[order], weights=lengths, minlength=len(persons)).astype(np.int64)
    offsets = np.r_[0, np.cumsum(per_person)].astype(np.int32)
    # rows: persons with factors -> (factors, the items they bought, their group)
    return pa.table({"person_id": persons, "factors": trained.column("factors").combine_chunks(),
                     "bought": pa.ListArray.from_arrays(pa.array(offsets), pc.list_flatten(lists)),
                     "group": groups.column("group").combine_chunks().take(at)}, schema=_SCORING)


def _no_purchase_kernel(lists: Broadcast[_FallbackLists]) -> Kernel:
    """Kernel: factors, purchases and groups by person -> the non-personalized lists
    (``RECOMMENDATIONS_SCHEMA``) of the persons allowing personalization who have no factors (no
    purchase by the as-of moment), by group."""
    def no_purchase(table: pa.Table) -> pa.Table:
        groups = input_rows(input_rows(table, "known", "input"), "groups")
        trained = input_rows(table, "factors", "input").column("person_id").combine_chunks()
        without = groups.filter(pc.invert(pc.is_in(groups.column("person_id"), value_set=trained)))
        # rows: (person_id, group) of persons allowing personalization without factors
        record = lists.value.rows(without.column("person_id").combine_chunks(),
                                  without.column("group").to_numpy(), RECOMMENDATIONS_SCHEMA)
        return pa.Table.from_batches([record], schema=RECOMMENDATIONS_SCHEMA)

    return Kernel(no_purchase, RECOMMENDATIONS_SCHEMA, name="no_purchase")


def _popular_lists(popular: np.ndarray, allowed: np.ndarray, k: int) -> list[np.ndarray]:
    """Per eligibility group, the top-``k`` allowed items by ranking score (ties: lower item index first)."""
    ranked = np.lexsort((np.arange(len(popular)), -np.nan_to_num(popular, nan=-np.inf)))
    ranked = ranked[~np.isnan(popular[ranked])]
    return [ranked[allowed[group, ranked]][:k] for group in range(allowed.shape[0])]


@dataclass(frozen=True)
class _FallbackLists:
    """The non-personalized list of each eligibility group, flat: group g's items (catalogue positions) are
    ``items[starts[g]:starts[g + 1]]``, best first; with the item ids and ranking scores to write them."""

    starts: np.ndarray
    items: np.ndarray
    item_ids: pa.Array
    popular: np.ndarray

    @classmethod
    def of(cls, lists: list[np.ndarray], item_ids: pa.Array, popular: np.ndarray) -> _FallbackLists:
        starts = np.concatenate([[0], np.cumsum([len(items) for items in lists])]).astype(np.int64)
        return cls(starts, np.concatenate([*lists, np.zeros(0, np.int64)]).astype(np.int64), item_ids, popular)

    def rows(self, persons: pa.Array, group: np.ndarray, schema: pa.Schema) -> pa.RecordBatch:
        """``schema`` rows of ``persons``' lists (``group``: each one's eligibility group), ranked from 1."""
        lengths = (self.starts[1:] - self.starts[:-1])[group]
        first_row = np.repeat(np.cumsum(lengths) - lengths, lengths)
        rank = np.arange(len(first_row)) - first_row + 1
        items = self.items[np.repeat(self.starts[:-1][group], lengths) + rank - 1]
        # rows: (person, item, ranking score, rank)
        return pa.RecordBatch.from_arrays([
            persons.take(pa.array(np.repeat(np.arange(len(persons)), lengths))),
            self.item_ids.take(pa.array(items)),
            pa.array(self.popular[items], pa.float32()),
            pa.array(rank, pa.int16()),
            pa.array(np.zeros(len(items), dtype=bool), pa.bool_()),
        ], schema=schema)


def _personalized_kernel() -> Kernel:
    """Kernel: top-K rows -> ``RECOMMENDATIONS_SCHEMA`` rows flagged personalized."""
    def flagged(table: pa.Table) -> pa.Table:
        return table.append_column(RECOMMENDATIONS_SCHEMA.field("personalized"),
                                   pa.array(np.ones(table.num_rows, dtype=bool), pa.bool_())).cast(RECOMMENDATIONS_SCHEMA)

    return Kernel(flagged, RECOMMENDATIONS_SCHEMA, name="personalized", by_person=False)


def _count_rows(table: pa.Table) -> pa.Table:
    return pa.table({"rows": pa.array([table.num_rows], pa.int64())})


def _known_rows(table: pa.Table) -> pa.Table:
    return table.select(_KNOWN.names).cast(_KNOWN)


_ROW_COUNT = Kernel(_count_rows, pa.schema([pa.field("rows", pa.int64())]), name="count_rows", by_person=False)
_FEEDBACK_ROWS = Kernel(_feedback_rows, _FEEDBACK, name="feedback_rows", by_person=False)
_KNOWN_ROWS = Kernel(_known_rows, _KNOWN, name="known_rows", by_person=False)  # the weights dropped
_SCORING_ROWS = Kernel(_scoring_rows, _SCORING, name="scoring_rows")


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
