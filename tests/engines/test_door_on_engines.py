"""The door on every engine: the same analytics zone; on Spark the executors get only the derived keys of a
table's domains, and neither the master key nor a derived key shows in Spark's plans, logs or files."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from pyspark import cloudpickle

import pipelines.door as door
from engines.test_driver_rows import driver_rows
from pipelines.door import door_plan, pseudonymize_workspace
from pipelines.engines import get_engine
from pipelines.ingest import ingest
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.keys import MasterKey, derive_key
from profiling.pseudonyms import DEVICE, ORDER, PERSON, WAYBILL
from profiling.schema import TABLE_NAMES

AS_OF = dt.date(2026, 11, 1)
KEY = MasterKey({1: os.urandom(32), 2: os.urandom(32)})     # fresh secrets: any copy found is a leak
DOMAINS = (PERSON, DEVICE, ORDER, WAYBILL)


def secrets() -> dict[str, bytes]:
    """Every secret of KEY and every key derived from it that the door could use, by name."""
    found = {f"master v{v}": KEY.secret_bytes(v) for v in KEY.versions}
    found.update({f"{domain} v{v}": derive_key(KEY, domain, v) for domain in DOMAINS for v in KEY.versions})
    return found


def leaks(data: bytes) -> list[str]:
    """Names of the secrets whose bytes or hex digits (either case) occur in ``data``."""
    return [name for name, secret in secrets().items()
            if secret in data or secret.hex().encode() in data or secret.hex().upper().encode() in data]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("door-engines")
    generate(root / "raw", accounts=150, seed=5, catalogue_items=40, progress=False)
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, progress=False)
    pseudonymize_workspace(workspace, KEY, as_of=AS_OF)      # the in-process door, the reference
    expected = {name: rows(workspace.pseudonymized(name)) for name in TABLE_NAMES}
    return workspace, expected


def rows(folder: Path) -> list[tuple]:
    """The rows of a Parquet folder, as sorted tuples (the engines split and order rows differently)."""
    table = ds.dataset(folder, format="parquet").to_table()
    return sorted((tuple(row.items()) for row in table.to_pylist()), key=repr)


def test_the_zone_is_the_same_on_every_engine(engine, ingested):
    workspace, expected = ingested
    summary = pseudonymize_workspace(workspace, KEY, as_of=AS_OF, engine=engine)
    assert summary["key_version"] == 2
    for name in TABLE_NAMES:
        assert summary["tables"][name]["rows"] == len(expected[name])
        assert rows(workspace.pseudonymized(name)) == expected[name], name
        names = ds.dataset(workspace.pseudonymized(name), format="parquet").schema.names
        assert names == summary["tables"][name]["columns"]
    assert sum(map(len, expected.values())) > 1000


@pytest.mark.parametrize("name", ["accounts", "orders", "device_events"])
def test_a_door_kernel_holds_its_tables_derived_keys_only(name):
    rules = door_plan(name)
    wanted = {rule.domain for rule in rules if rule.action == "pseudonym"}
    kernel = door._door_kernel(name, rules, door.analytics_schema(name, 2), door._domain_keys(rules, KEY, 2),
                               AS_OF)
    shipped = cloudpickle.dumps(kernel)         # what Spark sends to the executors
    assert sorted(leaks(shipped)) == sorted(f"{domain} v2" for domain in wanted)
    assert PERSON in wanted and len(wanted) < len(DOMAINS)


def contents(*folders: Path) -> dict[str, bytes]:
    """Every file under ``folders`` (those vanishing meanwhile skipped), by path."""
    found = {}
    for folder in folders:
        for path in folder.rglob("*"):
            try:
                if path.is_file():
                    found[str(path)] = path.read_bytes()
            except (FileNotFoundError, PermissionError):
                continue
    return found


def test_no_key_in_sparks_plans_logs_or_files(spark, ingested, capfd):
    workspace, expected = ingested
    conf = spark.sparkContext.getConf()
    local_dirs = [Path(p) for p in conf.get("spark.local.dir", tempfile.gettempdir()).split(",")]
    started = spark.sparkContext.startTime / 1000 - 60     # this session's scratch folders, not older ones
    spark_dirs = [d for root in local_dirs if root.is_dir() for d in root.iterdir()
                  if d.name.startswith(("spark-", "blockmgr-")) and d.is_dir() and d.stat().st_mtime >= started]
    assert spark_dirs, f"no scratch folder of this Spark session under {local_dirs}"
    if conf.get("spark.eventLog.enabled", "false") == "true":
        spark_dirs.append(Path(conf.get("spark.eventLog.dir").removeprefix("file:")))
    with get_engine("spark", spark=spark, partitions=4) as engine, driver_rows(spark) as collected:
        pseudonymize_workspace(workspace, KEY, as_of=AS_OF, engine=engine)
        rules = door_plan("accounts")
        frame = engine.map(engine.read(workspace.ingested("accounts"), columns=[r.source for r in rules], key=None),
                           door._door_kernel("accounts", rules, door.analytics_schema("accounts", 2),
                                             door._domain_keys(rules, KEY, 2), AS_OF))
        spark_rows = engine._rows(frame)   # the Spark DataFrame the mapped kernel runs in
        spark_rows.explain(extended=True)
        plan = spark_rows._jdf.queryExecution().toString()
    assert rows(workspace.pseudonymized("accounts")) == expected["accounts"]
    assert collected == [], "the door brings no rows to the driver"
    out, err = capfd.readouterr()
    assert "MapInArrow" in out + plan
    assert leaks((out + err + plan).encode()) == []
    searched = contents(workspace.root, *spark_dirs)
    assert any(path.endswith(".parquet") for path in searched)
    assert {path: leaks(data) for path, data in searched.items() if leaks(data)} == {}
