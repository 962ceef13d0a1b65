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
Runs in this process on every engine (Arrow and scikit-learn; nothing here is a Spark job).
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.workspace import Workspace
from profiling._string_hash import StringIndex
from profiling.errors import WorkspaceError
from profiling.risk import FEATURE_COLUMNS, RULES, RiskModel, risk_features, rule_scores

__all__ = ["INPUTS", "MIN_TRAINING_ROWS", "OUTPUT", "PURPOSE", "SCORED_WEEKS", "TRAINING_WEEKS", "read_risk",
           "write_risk"]

PURPOSE = "transaction_safety"
OUTPUT = "risk"
SCORED_WEEKS = 13      # the quarter before the as-of moment
TRAINING_WEEKS = 26    # the half-year before that
MIN_TRAINING_ROWS = 50  # person-weeks with an order below which no model is fitted
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


def _metadata(table: str) -> dict[bytes, bytes]:
    # ``table`` is what dp.PrivateSession checks against the registered datasets: none holds it.
    return {b"table": f"outputs/{OUTPUT}/{table}".encode(), b"purpose": PURPOSE.encode()}


def _analytics_rows(workspace: Workspace, table: str, gated: StringIndex) -> pa.Table:
    """The ``INPUTS`` columns of ``table``'s rows whose person is among the ``gated`` ones, in stored order."""
    folder = workspace.pseudonymized(table)
    if not folder.is_dir():
        raise WorkspaceError(f"{folder} is missing: the risk stage reads the pseudonymized {table}; "
                             "run the pseudonymization stage first")
    scanner = ds.dataset(workspace.verified(folder), format="parquet").scanner(columns=INPUTS[table])
    # rows: the table's INPUTS columns, batch by batch -> only the rows of gated persons, in stored order
    return pa.Table.from_batches([batch.filter(pa.array(gated.positions(batch.column("person_id")) >= 0))
                                  for batch in scanner.to_batches()], schema=scanner.projected_schema)


def write_risk(workspace: Workspace, persons: pa.Array, *, as_of: dt.datetime, scored_weeks: int = SCORED_WEEKS,
               training_weeks: int = TRAINING_WEEKS, random_state: int = 0) -> dict:
    """Score the person-weeks of ``persons`` (PERSON pseudonyms the gate let through for transaction
    safety) in the ``scored_weeks`` weeks before ``as_of`` and replace ``WS/outputs/risk/``.

    Returns the stage's summary row (counts of person-weeks; no score leaves in it).
    """
    if scored_weeks < 1 or training_weeks < 1:
        raise ValueError(f"scored_weeks and training_weeks must be at least 1, got {scored_weeks} and "
                         f"{training_weeks}")
    # One hash table of the persons for every table: a scan filter ``isin(persons)`` rebuilds it
    # for every record batch, which took most of the read.
    gated = StringIndex(pc.unique(persons).drop_null())
    rows = {name: _analytics_rows(workspace, name, gated) for name in INPUTS}
    del gated  # its hash table (32 bytes a slot, at most half full) is not kept through the features
    # rows: (person_id, week, week_start, week_end, features), week 0 ends at as_of
    features = risk_features(rows["orders"], rows["waybills"], rows["device_events"], as_of=as_of,
                             weeks=scored_weeks + training_weeks)
    del rows
    training = features[features["week"] >= scored_weeks]
    scored = features[features["week"] < scored_weeks].reset_index(drop=True)
    model = None
    if len(training) >= MIN_TRAINING_ROWS:
        model = RiskModel(random_state=random_state).fit(training)
    scores = np.full(len(scored), np.nan) if model is None else model.score(scored)
    weeks = {name: pa.array(scored[name], type) for name, type in
             (("person_id", pa.string()), ("week_start", pa.timestamp("us", tz="UTC")),
              ("week_end", pa.timestamp("us", tz="UTC")))}
    score_table = pa.table({**weeks, "score": pa.array(scores, pa.float64(), from_pandas=True),
                            "rule_score": pa.array(rule_scores(scored), pa.float64())}, schema=SCORES_SCHEMA)
    feature_table = pa.table({**weeks, **{name: pa.array(scored[name].to_numpy(np.float64))
                                          for name in FEATURE_COLUMNS}}, schema=FEATURES_SCHEMA)
    description = {
        "purpose": PURPOSE, "as_of": as_of.isoformat(), "scored_weeks": scored_weeks,
        "training_weeks": training_weeks, "training_person_weeks": len(training),
        "scored_person_weeks": len(scored),
        "model": None if model is None else {"kind": "isolation_forest", **model.get_params()},
        "features": list(FEATURE_COLUMNS), "rules": RULES,
    }
    with workspace.staging() as stage:
        folder = stage / OUTPUT
        for name, table in (("scores", score_table), ("features", feature_table)):
            (folder / name).mkdir(parents=True)
            pq.write_table(table.replace_schema_metadata(_metadata(name)), folder / name / "part-00000.parquet")
        (folder / "_model.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
        workspace.publish({workspace.outputs(OUTPUT): folder})
    return {"stage": "risk", "table": OUTPUT, "rows": score_table.num_rows, "persons": len(persons),
            "training_person_weeks": len(training),
            "model": "isolation_forest" if model is not None else "rules only (too few training person-weeks)"}


def read_risk(workspace: Workspace, table: str, *, purpose: str) -> pa.Table:
    """``scores`` or ``features`` of the last risk stage, for a reader serving ``purpose``.

    Every purpose but ``transaction_safety`` is refused with ``OutputAccessError`` before a file is
    opened (``Workspace.output``).
    """
    if table not in ("scores", "features"):
        raise ValueError(f"the risk output holds the tables scores and features, not {table!r}")
    return ds.dataset(workspace.output(OUTPUT, purpose=purpose) / table, format="parquet").to_table()
