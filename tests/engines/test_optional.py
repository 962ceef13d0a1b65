"""Choosing an engine: names, and the install hint when PySpark is missing."""

from __future__ import annotations

import os
import sys

import pytest

from pipelines.engines import LocalEngine, get_engine


def test_spark_without_pyspark_says_how_to_install_it(monkeypatch):
    for name in [m for m in sys.modules if m == "pyspark" or m.startswith("pyspark.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyspark", None)      # import pyspark now raises ImportError
    with pytest.raises(ImportError, match=r"the Spark engine needs the optional package 'pyspark'.*"
                                          r"pip install 'portrait\[spark\]'") as caught:
        get_engine("spark")
    assert isinstance(caught.value.__cause__, ImportError)


def test_engines_by_name(tmp_path):
    with get_engine("local", workspace=tmp_path) as engine:
        assert isinstance(engine, LocalEngine)
    with pytest.raises(ValueError, match="unknown engine 'dask'; choose one of local, spark"):
        get_engine("dask")


@pytest.mark.parametrize(("master", "partitions"), [("local", "4"), ("local[2]", "8"), ("local[3,2]", "12"),
                                                    ("local[*]", str(4 * (os.cpu_count() or 1))),
                                                    ("yarn", None), ("spark://host:7077", None)])
def test_a_local_session_gets_four_shuffle_partitions_per_core(master, partitions):
    from pipelines.engines.spark import _local_defaults

    assert _local_defaults(master).get("spark.sql.shuffle.partitions") == partitions
