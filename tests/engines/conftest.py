"""One Spark session for the whole run, and an ``engine`` fixture that runs each test on both engines.

The Spark tests never skip: without Java or PySpark they fail, saying what to install.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from pipelines.engines import get_engine

TESTS = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def spark():
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.fail("the Spark engine tests need Java 17, and java is not on PATH (JAVA_HOME is unset either): "
                    "install it, e.g. apt-get install -y openjdk-17-jre-headless")
    try:
        from pyspark.sql import SparkSession
    except ImportError as error:
        pytest.fail(f"the Spark engine tests need PySpark ({error}): pip install 'portrait[spark]'")
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    # kernels defined in these test modules are unpickled by the Python workers, which import them by name
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), str(TESTS.parent),
                                                           os.environ.get("PYTHONPATH")) if p)
    session = (SparkSession.builder.master("local[2]").appName("portrait-tests")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "4").config("spark.default.parallelism", "2")
               .config("spark.python.daemon.module", "engines._spark_daemon")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(params=["local", "spark"])
def engine(request, tmp_path):
    if request.param == "spark":
        engine = get_engine("spark", spark=request.getfixturevalue("spark"), partitions=4)
    else:
        engine = get_engine("local", workspace=tmp_path / "scratch", batch_rows=700)
    yield engine
    engine.close()

