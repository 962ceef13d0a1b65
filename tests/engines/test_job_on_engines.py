"""The whole job on both engines: one ingested workspace, copied, run locally and on Spark at the same as-of.

Every published folder must hold the same rows: the analytics zone, the identity tables, the
portraits, the risk scores, the marketing audience and the reports. The factors of the personalized
lists are fitted on the engine (the compiled solver on both, from other starting factors: the same
quality, not the same numbers; see ``test_recommendations_on_engines``), so for the lists the same persons
must get lists of each kind of the same lengths, and no list may show an item bought or not allowed.
The DP popularity release draws fresh noise on each run, and the non-personalized lists are ranked by
it: for those, what is deterministic is compared (the items released, each person's list length). On
Spark no action brings more than the reduced totals to the driver over the whole job.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from engines._workspaces import AS_OF
from engines.test_driver_rows import driver_rows
from engines.test_recommendations_on_engines import check_lists_keep_their_promises, check_same_persons_and_lengths
from pipelines.config import JobConfig
from pipelines.engines import get_engine
from pipelines.ingest import ingest
from pipelines.popularity import DATASET
from pipelines.run import run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.keys import create_key_file
from profiling.schema import TABLE_NAMES

PARTITIONS = 4
ITEMS = 20
BOUND = PARTITIONS * ITEMS      # rows one reduce of per-partition totals per catalogue item may hold
DP_OUTPUTS = {"popularity"}     # fresh noise on each run
REPORTS = ("identity-report.json", "k-anonymity-report.json")


@pytest.fixture(scope="module")
def jobs(spark, tmp_path_factory):
    """(local workspace, its summary, Spark workspace, its summary, PySpark's driver actions on Spark)."""
    root = tmp_path_factory.mktemp("job-on-engines")
    generate(root / "raw", accounts=300, seed=23, catalogue_items=ITEMS, progress=False)
    ingest(root / "raw", Workspace(root / "local"), progress=False)
    create_key_file(root / "keys" / "master.key")
    shutil.copytree(root / "local", root / "spark")
    config = JobConfig(budgets={DATASET: {"epsilon": 10.0}}, k=5)
    local = run_pipeline(Workspace(root / "local"), root / "keys" / "master.key", AS_OF, progress=False, config=config)
    with get_engine("spark", spark=spark, partitions=PARTITIONS) as engine, driver_rows(spark) as seen:
        on_spark = run_pipeline(Workspace(root / "spark"), root / "keys" / "master.key", AS_OF, progress=False,
                                config=dataclasses.replace(config, engine="spark"), engine=engine)
    assert spark.range(3).count() == 3, "the job stopped a session it does not own"
    return Workspace(root / "local"), local, Workspace(root / "spark"), on_spark, seen


def _datasets(folder) -> dict[str, pa.Table]:
    """Every Parquet dataset in a published folder (itself or its sub-folders), by path inside it."""
    found = {}
    for directory in sorted({p.parent for p in folder.rglob("*.parquet")}):
        table = ds.dataset(directory, format="parquet").to_table()
        sortable = [name for name, kind in zip(table.column_names, table.schema.types, strict=True)
                    if not pa.types.is_nested(kind)]
        found[str(directory.relative_to(folder))] = table.sort_by([(name, "ascending") for name in sortable])
    return found


def _same_rows(expected: pa.Table, got: pa.Table, where: str) -> None:
    assert got.schema.names == expected.schema.names, where
    assert got.num_rows == expected.num_rows, where
    assert got.cast(expected.schema).equals(expected), f"{where}: the engines wrote different rows"


def _published(workspace: Workspace) -> list[str]:
    return sorted(p.name for p in (workspace.root / "outputs").iterdir() if p.is_dir())


def test_every_stage_ran_on_both_engines(jobs):
    local_ws, local, spark_ws, on_spark, _ = jobs
    assert _published(local_ws) == _published(spark_ws)
    assert {"identity", "portraits", "popularity", "recommendations", "marketing_audience", "risk"} <= set(
        _published(local_ws))
    popularity = [row for row in on_spark if row["stage"] == "popularity"]
    assert popularity[0]["engine"] == "spark" and popularity[0]["epsilon"] > 0, popularity   # released, not refused
    # the same summary rows (persons, rows, charges, budget left) but for the engine's name and partitions
    # and the id of the DP release the non-personalized lists are ranked by (one per run)
    def engine_free(rows):
        return [{k: v.split(":")[0] if k == "ranking" else v for k, v in row.items()
                 if k not in ("engine", "partitions")} for row in rows]

    assert engine_free(on_spark) == engine_free(local)


def test_the_analytics_zone_and_reports_are_identical(jobs):
    local_ws, _, spark_ws, _, _ = jobs
    for table in TABLE_NAMES:
        expected = _datasets(local_ws.pseudonymized(table))
        got = _datasets(spark_ws.pseudonymized(table))
        assert got.keys() == expected.keys(), table
        for name in expected:
            _same_rows(expected[name], got[name], f"pseudonymized/{table}/{name}")
    for report in REPORTS:
        assert (json.loads((spark_ws.root / report).read_text())
                == json.loads((local_ws.root / report).read_text())), report


def test_every_deterministic_output_is_identical(jobs):
    local_ws, _, spark_ws, _, _ = jobs
    for output in _published(local_ws):
        folder, other = local_ws.outputs(output), spark_ws.outputs(output)
        assert spark_ws.verified(other) == other       # published with a manifest that verifies
        side_files = sorted(p.name for p in folder.iterdir() if p.suffix == ".json" and p.name != "_manifest.json")
        for name in side_files:
            assert json.loads((other / name).read_text()) == json.loads((folder / name).read_text()), name
        if output in DP_OUTPUTS:
            continue
        expected, got = _datasets(folder), _datasets(other)
        assert got.keys() == expected.keys(), output
        for name in expected:
            if output == "recommendations":
                _same_lists(expected[name], got[name])
                for workspace, lists in ((local_ws, expected[name]), (spark_ws, got[name])):
                    check_lists_keep_their_promises(workspace, lists)
            else:
                _same_rows(expected[name], got[name], f"outputs/{output}/{name}")


def _same_lists(expected: pa.Table, got: pa.Table) -> None:
    """Lists of each kind for the same persons, of the same lengths (the items follow the engine's fit, or the
    DP release's fresh noise)."""
    assert got.schema.names == expected.schema.names
    mine = pc.field("personalized")
    assert expected.filter(mine).num_rows > 100 and expected.filter(~mine).num_rows > 0
    check_same_persons_and_lengths(expected, got)


def test_the_dp_release_covers_the_same_items_with_the_same_schema(jobs):
    local_ws, _, spark_ws, _, _ = jobs
    expected, got = (_datasets(ws.outputs("popularity")) for ws in (local_ws, spark_ws))
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].schema.names == expected[name].schema.names
        assert got[name].column("item_id").equals(expected[name].column("item_id"))
        assert got[name].num_rows == ITEMS


def test_no_stage_collects_a_person_level_table_on_spark(jobs):
    *_, on_spark, seen = jobs
    persons = next(row["rows"] for row in on_spark if row["stage"] == "identity")
    assert persons > 2 * BOUND                  # a person-level table would not fit the bound
    assert seen, "the job collects its reduced totals"
    assert all(rows <= BOUND for _, rows in seen), [s for s in seen if s[1] > BOUND]
