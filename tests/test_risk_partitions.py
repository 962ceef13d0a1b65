"""The risk stage computed partition by partition on the engine equals the whole population at once.

One small workspace (``portrait synth``, ``portrait ingest``, the job up to the pseudonymization). The
reference is the obvious in-memory computation: every gated person's rows of the three tables at once,
``risk_features`` over all of them, the isolation forest fitted on the training person-weeks in
``risk_features``' order (by week, then person) and scoring the recent ones.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from pipelines.engines import LocalEngine
from pipelines.risk import INPUTS, SCORED_WEEKS, TRAINING_WEEKS, read_risk, write_risk
from pipelines.run import run_pipeline
from pipelines.workspace import Workspace
from portrait_cli import run_cli
from profiling.risk import FEATURE_COLUMNS, RiskModel, feature_matrix, risk_features, rule_scores

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("risk-partitions")
    assert run_cli("synth", "--out", root / "raw", "--accounts", 1200, "--seed", 3) == 0
    assert run_cli("ingest", "--raw", root / "raw", "--workspace", root / "ws") == 0
    assert run_cli("keys", "init", "--key-file", root / "master.key") == 0
    workspace = Workspace(root / "ws")
    run_pipeline(workspace, root / "master.key", AS_OF, progress=False,
                 stages=["consent-ledger", "retention", "pseudonymize"])
    return workspace


def _gated(workspace: Workspace) -> pa.Array:
    """Two persons in three of the analytics zone's accounts: the stage must leave the others out."""
    persons = ds.dataset(workspace.pseudonymized("accounts"), format="parquet").to_table(
        columns=["person_id"]).column("person_id").combine_chunks()
    return persons.filter(pa.array(np.arange(len(persons)) % 3 != 0))


def _whole_population(workspace: Workspace, persons: pa.Array) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scored, training) person-weeks of ``persons``, all their rows at once, each sorted by week then person."""
    tables = [ds.dataset(workspace.pseudonymized(name), format="parquet").to_table(
        columns=columns, filter=pc.field("person_id").isin(persons)) for name, columns in INPUTS.items()]
    features = risk_features(*tables, as_of=AS_OF, weeks=SCORED_WEEKS + TRAINING_WEEKS)
    return (features[features["week"] < SCORED_WEEKS].reset_index(drop=True),
            features[features["week"] >= SCORED_WEEKS].reset_index(drop=True))


def _sorted(rows: pa.Table | pd.DataFrame) -> pd.DataFrame:
    rows = rows.to_pandas() if isinstance(rows, pa.Table) else rows
    return rows.sort_values(["week_start", "person_id"]).reset_index(drop=True)


def test_partitioned_features_and_scores_equal_the_whole_population(workspace):
    persons = _gated(workspace)
    with LocalEngine(workspace=workspace) as engine:
        summary = write_risk(workspace, persons, as_of=AS_OF, engine=engine, rows_per_partition=5_000)
    assert summary["partitions"] >= 5 and summary["engine"] == "local"
    scored, training = _whole_population(workspace, persons)
    scored = _sorted(scored)
    assert len(scored) > 200 and summary["training_person_weeks"] == len(training)
    features = _sorted(read_risk(workspace, "features", purpose="transaction_safety"))
    pd.testing.assert_frame_equal(features[["person_id", *FEATURE_COLUMNS]],
                                  scored[["person_id", *FEATURE_COLUMNS]].astype({c: float for c in FEATURE_COLUMNS}))
    assert (features["week_end"] == scored["week_end"]).all() and (features["week_start"] == scored["week_start"]).all()
    # the forest fitted on the same training rows in the same order: the very same scores
    expected = RiskModel(random_state=0).fit(training).score(scored)
    scores = _sorted(read_risk(workspace, "scores", purpose="transaction_safety"))
    np.testing.assert_array_equal(scores["score"].to_numpy(), expected)
    np.testing.assert_array_equal(scores["rule_score"].to_numpy(), rule_scores(scored))
    assert not set(scores["person_id"]) - set(persons.to_pylist())


def test_one_partition_or_many_write_the_same_outputs(workspace):
    persons = _gated(workspace)
    written = []
    for rows_per_partition in (10**9, 7_000):
        with LocalEngine(workspace=workspace) as engine:
            summary = write_risk(workspace, persons, as_of=AS_OF, engine=engine, rows_per_partition=rows_per_partition)
        outputs = {table: _sorted(read_risk(workspace, table, purpose="transaction_safety"))
                   for table in ("scores", "features")}
        written.append((summary["partitions"], outputs))
    (one, whole), (many, partitioned) = written
    assert one == 1 and many > 1
    for table in ("scores", "features"):
        pd.testing.assert_frame_equal(partitioned[table], whole[table])


def test_the_model_fits_on_its_float32_matrix_as_on_the_frame(workspace):
    _, training = _whole_population(workspace, _gated(workspace))
    matrix = feature_matrix(training)
    assert matrix.dtype == np.float32 and matrix.flags.c_contiguous and matrix.shape == (len(training), 11)
    on_frame, on_matrix = RiskModel(random_state=1).fit(training), RiskModel(random_state=1).fit(matrix)
    np.testing.assert_array_equal(on_frame.score(training), on_matrix.score(matrix))
    with pytest.raises(ValueError, match="float32 with 11 columns"):
        RiskModel().fit(matrix.astype(np.float64))
