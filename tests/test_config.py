"""Job configuration files: what they set, what the command line overrides, and what they refuse."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest

from pipelines.cli import build_parser, job_config
from pipelines.config import ConfigError, JobConfig, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_every_setting_is_read_and_paths_are_relative_to_the_file(tmp_path):
    path = _write(tmp_path, """
        workspace = "ws"
        key_file = "../keys/master.key"
        as_of = "2026-11-01T08:00:00+08:00"
        engine = "spark"
        purposes = ["personalization", "product_improvement"]
        [recommendations]
        k = 7
        [portraits]
        rows_per_partition = 5000
        [budget.orders]
        epsilon = 0.5
        delta = 1e-6
        [spark]
        master = "local[1]"
        partitions = 6
        [spark.config]
        "spark.driver.memory" = "2g"
        "spark.sql.adaptive.enabled" = false
    """)
    config = load_config(path)
    assert config.workspace == (tmp_path / "ws").resolve()
    assert config.key_file == (tmp_path.parent / "keys" / "master.key").resolve()
    assert config.as_of == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert (config.engine, config.k, config.rows_per_partition) == ("spark", 7, 5000)
    assert config.allows("product_improvement") and not config.allows("marketing_messages")
    assert config.budgets == {"orders": {"epsilon": 0.5, "delta": 1e-6}}
    assert config.engine_options() == {"master": "local[1]", "partitions": 6, "config": {
        "spark.driver.memory": "2g", "spark.sql.adaptive.enabled": "false"}}
    assert JobConfig(engine="local", spark_partitions=6).engine_options() == {}


def test_the_command_line_overrides_the_file(tmp_path):
    path = _write(tmp_path, 'workspace = "ws"\nas_of = 2026-11-01T00:00:00Z\nengine = "spark"\n')
    args = build_parser().parse_args(["run", "--config", str(path), "--engine", "local",
                                      "--as-of", "2026-12-01", "--workspace", "other"])
    config = job_config(args)
    assert (config.engine, config.workspace, config.as_of) == (
        "local", Path("other"), dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    assert job_config(build_parser().parse_args(["run", "--config", str(path)])).engine == "spark"


def test_a_run_needs_an_as_of_moment_from_somewhere(tmp_path):
    with pytest.raises(ConfigError, match="no as-of moment: pass --as-of"):
        job_config(build_parser().parse_args(["run"]))


@pytest.mark.parametrize(("text", "message"), [
    ("colour = 'blue'", r"unknown setting\(s\) colour in .*job.toml"),
    ("engine = 'dask'", r"engine 'dask' in .*job.toml is not one of local, spark"),
    ("purposes = ['marketing_messages']", r"must include 'personalization'"),
    ("purposes = ['personalization', 'spying']", r"purposes in .* name 'spying'"),
    ("[recommendations]\nk = 0", r"k in .* must be a positive integer, got 0"),
    ("[recommendations]\nk = true", r"k in .* must be a positive integer, got True"),
    ("[recommendations]\ntop = 3", r"\[recommendations\] in .* takes only k"),
    ("[budget.orders]\nepsilon = nan", r"budget.orders in .* needs epsilon > 0"),
    ("[budget.orders]\nepsilon = 1.0\ndelta = 1.5", r"budget.orders in .* needs epsilon > 0"),
    ("as_of = 'yesterday'", r"as_of in .*: --as-of 'yesterday' is not an ISO 8601 time"),
    ("engine = ", r"is not valid TOML"),
    ("[spark]\nmaster = ''", r"spark master in .* must be a master URL"),
    ("[spark]\npartitions = 0", r"spark partitions in .* must be a positive integer, got 0"),
    ("[spark]\nconfig = 'fast'", r"\[spark.config\] in .* must map Spark setting names to values"),
    ("[spark]\ncores = 2", r"\[spark\] in .* takes only master, partitions, config"),
])
def test_bad_settings_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_defaults_allow_every_purpose():
    config = JobConfig()
    assert all(config.allows(p) for p in ("personalization", "cross_device_sync", "marketing_messages",
                                          "product_improvement"))
