"""The transaction-safety stage: account-risk scores of recent person-weeks, walled off from the rest.

Purpose ``transaction_safety`` (a core purpose: "we may judge your account risk by accessing your
browse information, order information, Waybill Information ... and device information"). It
needs no consent beyond the accepted policy, so what it computes must never reach
personalization, marketing or a DP release: it is written to ``WS/outputs/risk/`` only, which
the purpose catalogue gives to ``transaction_safety`` alone (``Workspace.output``), and its Parquet
schema metadata names the table (``outputs/risk/scores``) so a ``dp.PrivateSession`` refuses it
under every registered dataset.

Reads only the analytics zone, and only the rows of persons the consent gate lets through for
``transaction_safety`` at the as-of moment (a cancelled account or a revocation is left out)::

    WS/pseudonymized/orders/         (person_id, placed_at, amount)
    WS/pseudonymized/waybills/       (person_id, created_at, destination_province)
    WS/pseudonymized/device_events/  (person_id, device_id, event_at, coarse_province, ip_prefix)

and writes, atomically::

    WS/outputs/risk/scores/    (person_id, week_start, week_end, score, rule_score)
    WS/outputs/risk/features/  (person_id, week_start, week_end, the features of profiling.risk)
    WS/outputs/risk/_model.json  what was fitted: weeks, person-weeks, parameters

The model (``profiling.risk.RiskModel``, an isolation forest: no labels exist in the job) is fitted
on the ``TRAINING_WEEKS`` weeks before the scored period and scores the ``SCORED_WEEKS`` weeks
before the as-of moment, so every score is out of sample in time. With fewer than
``MIN_TRAINING_ROWS`` person-weeks to train on, only the rules score (``score`` is null).
The features are per person (each person against their own history), so they are one job on every
engine: the three tables' rows of gated persons before ``as_of`` meet in one partition per person
(``Engine.co_partition``), ``risk_features`` runs there, and the person-weeks are staged inside the
workspace. The driver then holds only what the isolation forest needs whole, the training
person-weeks' feature matrix (float32, in ``risk_features``' order: by week, then person), and
scores the recent person-weeks one staged partition at a time, so the stage's memory is bounded by
a partition and that matrix, not by the rows of the population.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.engines import Engine, Kernel, LocalEngine, input_rows
from pipelines.workspace import Workspace
from profiling._string_hash import LazyStringIndex
from profiling._threads import LARGE_RESULTS_HELD, two_at_a_time
from profiling.checks import check_int
from profiling.errors import WorkspaceError
from profiling.risk import FEATURE_COLUMNS, RULES, RiskModel, feature_matrix, risk_feature_table, rule_scores
from profiling.schema import TABLES

__all__ = ["INPUTS", "MIN_TRAINING_ROWS", "OUTPUT", "PURPOSE", "ROWS_PER_PARTITION", "SCORED_WEEKS",
           "TRAINING_WEEKS", "read_risk", "risk_features_kernel", "write_risk"]

PURPOSE = "transaction_safety"
OUTPUT = "risk"
SCORED_WEEKS = 13      # the quarter before the as-of moment
TRAINING_WEEKS = 26    # the half-year before that
MIN_TRAINING_ROWS = 50  # person-weeks with an order below which no model is fitted
# At most this many stored rows (orders, waybills and device events) per partition of the features (the local
# engine's default is smaller): one partition held whole would be the tagged rows of every input at once.
ROWS_PER_PARTITION = 4_000_000
INPUTS: dict[str, list[str]] = {
    "orders": ["person_id", "placed_at", "amount"],
    "waybills": ["person_id", "created_at", "destination_province"],
    "device_events": ["person_id", "device_id", "event_at", "coarse_province", "ip_prefix"],
}
_WEEK_COLUMNS = [pa.field("person_id", pa.string(), nullable=False),
                 pa.field("week_start", pa.timestamp("us", tz="UTC"), nullable=False),
                 pa.field("week_end", pa.timestamp("us", tz="UTC"), nullable=False)]
SCORES_SCHEMA = pa.schema([*_WEEK_COLUMNS, pa.field("score", pa.float64()),
                           pa.field("rule_score", pa.float64(), nullable=False)])
FEATURES_SCHEMA = pa.schema([*_WEEK_COLUMNS, *(pa.field(name, pa.float64(), nullable=False)
                                               for name in FEATURE_COLUMNS)])
# the staged person-weeks of every week, scored and training: the features' columns and the week's number
PERSON_WEEKS_SCHEMA = pa.schema([pa.field("person_id", pa.string()), pa.field("week", pa.int64()),
                                 *(pa.field(f.name, f.type) for f in FEATURES_SCHEMA if f.name != "person_id")])


def _metadata(table: str) -> dict[bytes, bytes]:
    # ``table`` is what dp.PrivateSession checks against the registered datasets: none holds it.
    return {b"table": f"outputs/{OUTPUT}/{table}".encode(), b"purpose": PURPOSE.encode()}


def _input_folder(workspace: Workspace, table: str) -> Path:
    folder = workspace.pseudonymized(table)
    if not folder.is_dir():
        raise WorkspaceError(f"{folder} is missing: the risk stage reads the pseudonymized {table}; "
                             "run the pseudonymization stage first")
    return workspace.verified(folder)


def _gated_kernel(table: str, schema: pa.Schema, gated: LazyStringIndex, as_of: dt.datetime) -> Kernel:
    """Kernel (not per person): stored rows of ``table`` (its ``INPUTS`` columns, ``schema``) -> those whose person
    is among the ``gated`` ones and whose time is before ``as_of`` (what ``risk_features`` would ignore goes)."""
    times = TABLES[table].retention.column   # the time of the table's events

    def gated_rows(rows: pa.Table) -> pa.Table:
        before = pc.fill_null(pc.less(rows.column(times), pa.scalar(as_of, rows.schema.field(times).type)), True)
        return rows.filter(pc.and_(pa.array(gated.positions(rows.column("person_id")) >= 0), before))

    return Kernel(gated_rows, schema, name=f"gated_{table}", by_person=False)


def risk_features_kernel(activity: pa.Table, *, as_of: dt.datetime, weeks: int) -> pa.Table:
    """The person-weeks (``PERSON_WEEKS_SCHEMA``) of the persons in one partition of ``Engine.co_partition``'s
    rows (an engine kernel): ``source`` says which of ``INPUTS`` each row is. Each person's features depend
    only on that person's rows, so the union over partitions is ``risk_features`` of the whole population."""
    tables = [input_rows(activity, name, columns=columns) for name, columns in INPUTS.items()]
    # rows: (person_id, week, week_start, week_end, features), by week, then person
    return risk_feature_table(*tables, as_of=as_of, weeks=weeks).cast(PERSON_WEEKS_SCHEMA)


def _fragments(folder: Path) -> list[ds.Fragment]:
    """The staged files in one fixed order, read one at a time."""
    return sorted(ds.dataset(folder, format="parquet").get_fragments(), key=lambda fragment: fragment.path)


def _training_matrix(staged: Path, scored_weeks: int) -> np.ndarray:
    """``feature_matrix`` of the staged training person-weeks (week ``scored_weeks`` and older), by week then
    person_id as ``risk_features`` orders them: the forest draws its rows by position.

    Holds the (week, person_id) of the training rows while sorting them, then the matrix (44 bytes a
    person-week) and one staged file at a time."""
    training = ds.field("week") >= scored_weeks
    # rows: (week, person_id) of every training person-week, file after file
    key_schema = pa.schema([PERSON_WEEKS_SCHEMA.field("week"), PERSON_WEEKS_SCHEMA.field("person_id")])
    keys = pa.concat_tables([key_schema.empty_table(), *(
        fragment.to_table(columns=key_schema.names, filter=training).cast(key_schema)
        for fragment in _fragments(staged))])
    order = pc.sort_indices(keys, sort_keys=[("week", "ascending"), ("person_id", "ascending")]).to_numpy()
    del keys
    position = np.empty(len(order), dtype=np.int64)   # where each staged row goes in the sorted matrix
    position[order] = np.arange(len(order))
    del order
    matrix = np.empty((len(position), len(FEATURE_COLUMNS)), dtype=np.float32)
    written = 0
    for fragment in _fragments(staged):
        part = feature_matrix(fragment.to_table(columns=list(FEATURE_COLUMNS), filter=training))
        matrix[position[written:written + len(part)]] = part
        written += len(part)
    return matrix


def _write_scored(staged: Path, folder: Path, model: RiskModel | None, scored_weeks: int) -> int:
    """Score the staged person-weeks of the ``scored_weeks`` recent weeks, one staged file at a time, into
    ``folder/scores`` and ``folder/features`` (one Parquet file each, a row group per staged file, in the
    files' order); returns how many were scored. Files are read and scored two at a time (the forest's
    trees and Arrow's reads release the GIL); each row's score is the same whatever else runs."""

    def scored(fragment: ds.Fragment) -> tuple[pa.Table, np.ndarray | None, np.ndarray | None]:
        # rows: (person_id, week, week_start, week_end, features) of the recent person-weeks of one partition
        rows = fragment.to_table(filter=ds.field("week") < scored_weeks)
        if not rows.num_rows:
            return rows, None, None
        scores = np.full(rows.num_rows, np.nan) if model is None else model.score(rows)
        return rows, scores, rule_scores(rows.select(list(FEATURE_COLUMNS)).to_pandas())

    writers = {}
    for name, schema in (("scores", SCORES_SCHEMA), ("features", FEATURES_SCHEMA)):
        (folder / name).mkdir(parents=True)
        writers[name] = pq.ParquetWriter(folder / name / "part-00000.parquet", schema.with_metadata(_metadata(name)))
    scored_rows = 0
    try:
        with contextlib.closing(two_at_a_time(scored, _fragments(staged), name="risk-scores",
                                                 held=LARGE_RESULTS_HELD)) as results:
            for rows, scores, rules in results:
                if not rows.num_rows:
                    continue
                weeks = {name: rows.column(name).cast(SCORES_SCHEMA.field(name).type)
                         for name in ("person_id", "week_start", "week_end")}
                writers["scores"].write_table(pa.table(
                    {**weeks, "score": pa.array(scores, pa.float64(), from_pandas=True),
                     "rule_score": pa.array(rules, pa.float64())}, schema=writers["scores"].schema))
                writers["features"].write_table(pa.table(
                    {**weeks, **{name: rows.column(name).cast(pa.float64()) for name in FEATURE_COLUMNS}},
                    schema=writers["features"].schema))
                scored_rows += rows.num_rows
    finally:
        for writer in writers.values():
            writer.close()
    return scored_rows


def write_risk(workspace: Workspace, persons: pa.Array, *, as_of: dt.datetime, engine: Engine | None = None,
               scored_weeks: int = SCORED_WEEKS, training_weeks: int = TRAINING_WEEKS, random_state: int = 0,
               rows_per_partition: int = ROWS_PER_PARTITION) -> dict:
    """Score the person-weeks of ``persons`` (PERSON pseudonyms the gate let through for transaction
    safety) in the ``scored_weeks`` weeks before ``as_of`` and replace ``WS/outputs/risk/``.

    The features run on ``engine`` (default: a local engine spilling inside the workspace), at most
    ``rows_per_partition`` stored input rows a partition and at least as many partitions as the engine
    picks; the model is fitted and the scores written in this process (see the module docstring).
    Returns the stage's summary row (counts of person-weeks; no score leaves in it).
    """
    if scored_weeks < 1 or training_weeks < 1:
        raise ValueError(f"scored_weeks and training_weeks must be at least 1, got {scored_weeks} and "
                         f"{training_weeks}")
    if as_of.tzinfo is None:
        raise ValueError(f"as_of {as_of} has no time zone; pass an aware datetime in UTC")
    check_int(rows_per_partition, "rows_per_partition")
    sources = {name: _input_folder(workspace, name) for name in INPUTS}
    rows = sum(ds.dataset(folder, format="parquet").count_rows() for folder in sources.values())
    with contextlib.ExitStack() as owned, workspace.staging() as stage:
        engine = engine or owned.enter_context(LocalEngine(workspace=workspace))
        partitions = max(engine.default_partitions(rows), math.ceil(rows / rows_per_partition))
        broadcast = engine.broadcast(pc.unique(persons.cast(pa.string())).drop_null())
        gated = LazyStringIndex(lambda: broadcast.value)
        inputs = {}
        for name, folder in sources.items():
            stored = engine.read(folder, columns=INPUTS[name], key=None)
            inputs[name] = engine.map(stored, _gated_kernel(name, stored.schema, gated, as_of))
        # rows: (source, person_id, every input's columns) of gated persons before as_of, one person's in one
        # partition
        activity = engine.co_partition(inputs, key="person_id", partitions=partitions)
        del inputs, gated   # the gated persons' hash table is not kept through the features
        staged = stage / "person-weeks"
        engine.save(engine.map(activity, Kernel(functools.partial(risk_features_kernel, as_of=as_of,
                                                                  weeks=scored_weeks + training_weeks),
                                                PERSON_WEEKS_SCHEMA, name="risk_features")), staged)
        del activity
        training = _training_matrix(staged, scored_weeks)
        training_rows = len(training)
        model = None
        if training_rows >= MIN_TRAINING_ROWS:
            model = RiskModel(random_state=random_state).fit(training)
        del training
        folder = stage / OUTPUT
        scored_rows = _write_scored(staged, folder, model, scored_weeks)
        description = {
            "purpose": PURPOSE, "as_of": as_of.isoformat(), "scored_weeks": scored_weeks,
            "training_weeks": training_weeks, "training_person_weeks": training_rows,
            "scored_person_weeks": scored_rows,
            "model": None if model is None else {"kind": "isolation_forest", **model.get_params()},
            "features": list(FEATURE_COLUMNS), "rules": RULES,
        }
        (folder / "_model.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
        workspace.publish({workspace.outputs(OUTPUT): folder})
    return {"stage": "risk", "table": OUTPUT, "rows": scored_rows, "persons": len(persons),
            "training_person_weeks": training_rows,
            "model": "isolation_forest" if model is not None else "rules only (too few training person-weeks)",
            "partitions": partitions, "engine": engine.name}


def read_risk(workspace: Workspace, table: str, *, purpose: str) -> pa.Table:
    """``scores`` or ``features`` of the last risk stage, for a reader serving ``purpose``.

    Every purpose but ``transaction_safety`` is refused with ``OutputAccessError`` before a file is
    opened (``Workspace.output``).
    """
    if table not in ("scores", "features"):
        raise ValueError(f"the risk output holds the tables scores and features, not {table!r}")
    return ds.dataset(workspace.output(OUTPUT, purpose=purpose) / table, format="parquet").to_table()
