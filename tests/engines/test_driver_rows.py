"""On Spark no stage brings a person-level table to the driver: only reduced totals are collected.

Every way PySpark hands rows to the driver (``toArrow``, ``collect``, ``toPandas``, ``take``,
``head``, ``first``, ``tail``, ``toLocalIterator``, an RDD's ``collect``) is counted while the
engine stages run: portraits, the DP popularity release and the recommendations (the factor fit,
the scoring and the lists of persons who bought nothing). The bound is what a reduce may hold (one
row per partition and catalogue item), far below the persons. The recommendations' driver does not
read the orders itself either: it opens them for their schema only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from dp import BudgetLedger
from engines._workspaces import AS_OF, prepared_workspace
from pipelines.engine_jobs import release_item_buyers
from pipelines.engines import get_engine
from pipelines.popularity import DATASET
from pipelines.portraits import write_portraits
from pipelines.recommend import write_recommendations
from profiling.consent import ConsentGate, SqliteConsentStore

PARTITIONS = 4
ITEMS = 12
BOUND = PARTITIONS * ITEMS      # rows one reduce of per-partition totals per catalogue item may hold


@contextlib.contextmanager
def driver_rows(spark) -> Iterator[list[tuple[str, int]]]:
    """``(action, rows)`` of every PySpark action that returns rows to this (driver) process meanwhile."""
    from pyspark.rdd import RDD

    DataFrame = type(spark.range(1))   # noqa: N806 - the session's DataFrame class (PySpark 4: the classic one)

    seen: list[tuple[str, int]] = []

    def counted(name: str, original, rows_of):
        def action(*args, **kwargs):
            result = original(*args, **kwargs)
            seen.append((name, rows_of(result)))
            return result

        return action

    def length(result) -> int:
        return 0 if result is None else len(result)

    def single(result) -> int:
        return length(result) if isinstance(result, list) else int(result is not None)

    with pytest.MonkeyPatch.context() as patch:
        for owner, name, rows_of in ((DataFrame, "toArrow", length), (DataFrame, "collect", length),
                                     (DataFrame, "toPandas", length), (DataFrame, "take", length),
                                     (DataFrame, "head", single), (DataFrame, "first", single),
                                     (DataFrame, "tail", length), (RDD, "collect", length)):
            patch.setattr(owner, name, counted(f"{owner.__name__}.{name}", getattr(owner, name), rows_of))
        original_iterator = DataFrame.toLocalIterator

        def iterator(self, *args, **kwargs):
            count = 0
            try:
                for count, row in enumerate(original_iterator(self, *args, **kwargs), start=1):  # noqa: B007
                    yield row
            finally:
                seen.append(("DataFrame.toLocalIterator", count))

        patch.setattr(DataFrame, "toLocalIterator", iterator)
        yield seen


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    workspace, decision, key = prepared_workspace(tmp_path_factory.mktemp("driver-rows"), accounts=300, seed=13,
                                                  catalogue_items=ITEMS,
                                                  stages=["consent-ledger", "pseudonymize", "identity"])
    BudgetLedger(workspace.ledger).set_budget(DATASET, epsilon=1.0, set_by="test")
    with SqliteConsentStore(workspace.ledger) as store:
        gate = ConsentGate(store)
        served = gate.decide("service_provision", AS_OF, job="test")
        improving = gate.decide("product_improvement", AS_OF, job="test")
    eligible = pa.table({"person_id": decision.person_ids(key), "dnd": decision.dnd,
                         "non_personalized": decision.non_personalized})
    return workspace, eligible, served.person_frame(key), improving.person_ids(key)


def test_no_engine_stage_collects_a_person_level_table_on_spark(spark, prepared):
    workspace, eligible, served, improving = prepared
    assert eligible.num_rows > 2 * BOUND and len(improving) > 2 * BOUND   # a person-level table would not fit
    with get_engine("spark", spark=spark, partitions=PARTITIONS) as engine, driver_rows(spark) as seen:
        stages = {"portraits": lambda: write_portraits(workspace, eligible, as_of=AS_OF, engine=engine),
                  "popularity": lambda: release_item_buyers(engine, workspace, improving, AS_OF,
                                                            partitions=PARTITIONS),
                  "recommendations": lambda: write_recommendations(workspace, served, as_of=AS_OF, k=3, factors=4,
                                                                   iterations=2, engine=engine)}
        collected, summaries = {}, {}
        for name, stage in stages.items():
            before = len(seen)
            summaries[name] = stage()
            collected[name] = seen[before:]
    assert summaries["popularity"]["epsilon"] > 0, summaries["popularity"]      # released, not refused
    personalized = next(row for row in summaries["recommendations"] if row["kind"] == "personalized")
    assert personalized["persons"] > 2 * BOUND, summaries["recommendations"]   # the fit ran, on Spark
    assert collected["popularity"], "the popularity release collects its reduced totals"
    for name, actions in collected.items():
        assert all(rows <= BOUND for _, rows in actions), f"{name} brought {actions} rows to the driver"


def test_the_check_sees_a_person_level_collect(spark, prepared):
    workspace, *_ = prepared
    with get_engine("spark", spark=spark, partitions=PARTITIONS) as engine, driver_rows(spark) as seen:
        orders = engine.read(workspace.pseudonymized("orders"), columns=["order_id"], key="person_id")
        engine.collect(orders)
    assert max(rows for _, rows in seen) > BOUND


class _SchemaOnly:
    """A dataset of the orders whose rows cannot be read (only its schema and files can be looked at)."""

    def __init__(self, dataset):
        self._dataset = dataset

    def __getattr__(self, name):
        if name in ("schema", "files", "format"):
            return getattr(self._dataset, name)
        raise AssertionError(f"the driver read the orders ({name})")


def test_the_recommendations_driver_reads_no_order_on_spark(spark, prepared, monkeypatch):
    workspace, _, served, _ = prepared
    opened = ds.dataset

    def dataset(source, *args, **kwargs):
        found = opened(source, *args, **kwargs)
        return _SchemaOnly(found) if "orders" in str(source) else found

    monkeypatch.setattr(ds, "dataset", dataset)
    with get_engine("spark", spark=spark, partitions=PARTITIONS) as engine:
        summary = write_recommendations(workspace, served, as_of=AS_OF, k=3, factors=4, iterations=2, engine=engine)
    assert next(row for row in summary if row["kind"] == "personalized")["persons"] > 2 * BOUND, summary
