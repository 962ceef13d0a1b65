"""Job configuration: a TOML file, overridable on the command line.

Example (every key optional; relative paths are relative to the file)::

    workspace = "portrait-workspace"
    key_file = "../keys/master.key"      # default: the PORTRAIT_MASTER_KEY environment variable
    as_of = "2026-11-01T00:00:00Z"       # ISO 8601; without an offset it is UTC
    engine = "local"                     # or "spark"
    purposes = ["personalization", "cross_device_sync", "marketing_messages", "product_improvement"]

    [recommendations]
    k = 10

    [portraits]
    rows_per_partition = 20000000

    [retention]
    cancellation_grace_days = 14         # a cancelled account is erased by the first run this long after

    [budget.orders]                      # set before the run when it differs from the one in force
    epsilon = 1.0
    delta = 0.0

    [spark]                              # used with engine = "spark"
    master = "local[2]"                  # or a cluster's master URL (spark://..., yarn, k8s://...)
    partitions = 8                       # partitions per job (default: spark.sql.shuffle.partitions)

    [spark.config]                       # any Spark setting, handed to the session builder
    "spark.driver.memory" = "8g"

``purposes`` lists the optional purposes this job may process; a stage whose purpose is left out is
skipped (``product_improvement``: the popularity release; ``marketing_messages``: the marketing
audience; ``cross_device_sync``: linking, so every person is their own identity). The
personalization purpose is what the job is for and cannot be left out. Unknown keys are errors,
so a misspelt setting never goes unnoticed.

``[retention] cancellation_grace_days`` (a whole number of days, at least 0; default
``CANCELLATION_GRACE_DAYS`` = 14): an account cancelled at t is erased by the first run whose
as-of moment is at or after t + this many days (``pipelines.retention``). Fourteen days cover the
seven-day no-reason return (Consumer Rights Protection Law Art. 25) and a parcel still under way,
and keep erasure within the fifteen working days Chinese regulators allow for completing a
cancellation when the job runs daily.
"""

from __future__ import annotations

import datetime as dt
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from profiling.checks import check_int
from profiling.errors import PortraitError

__all__ = ["CANCELLATION_GRACE_DAYS", "ConfigError", "ENGINES", "JobConfig", "OPTIONAL_PURPOSES", "load_config"]

ENGINES = ("local", "spark")
OPTIONAL_PURPOSES = ("cross_device_sync", "marketing_messages", "product_improvement")
_REQUIRED_PURPOSE = "personalization"
CANCELLATION_GRACE_DAYS = 14  # days from a cancellation to the erasure of the account


class ConfigError(PortraitError, ValueError):
    """A configuration file or option that cannot be used; the message names the key and the file."""


@dataclass(frozen=True)
class JobConfig:
    workspace: Path = Path("portrait-workspace")
    key_file: Path | None = None
    as_of: dt.datetime | None = None
    engine: str = "local"
    purposes: tuple[str, ...] = (_REQUIRED_PURPOSE, *OPTIONAL_PURPOSES)
    k: int = 10
    rows_per_partition: int = 20_000_000
    budgets: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # dataset -> {epsilon, delta}
    spark_master: str = "local[2]"
    spark_partitions: int | None = None  # None: spark.sql.shuffle.partitions
    spark_config: Mapping[str, str] = field(default_factory=dict)  # Spark settings for the session builder
    cancellation_grace_days: int = CANCELLATION_GRACE_DAYS
    source: str = "defaults"

    def __post_init__(self) -> None:
        where = f"in {self.source}"
        if self.engine not in ENGINES:
            raise ConfigError(f"engine {self.engine!r} {where} is not one of {', '.join(ENGINES)}")
        unknown = [p for p in self.purposes if p not in (_REQUIRED_PURPOSE, *OPTIONAL_PURPOSES)]
        if unknown:
            raise ConfigError(f"purposes {where} name {', '.join(map(repr, unknown))}; a job processes "
                              f"{_REQUIRED_PURPOSE} and optionally {', '.join(OPTIONAL_PURPOSES)}")
        if _REQUIRED_PURPOSE not in self.purposes:
            raise ConfigError(f"purposes {where} must include {_REQUIRED_PURPOSE!r}: portraits and "
                              "recommendations are what the job is for")
        for name, lowest in (("k", 1), ("rows_per_partition", 1000), ("cancellation_grace_days", 0)):
            check_int(getattr(self, name), name, minimum=lowest, where=where, error=ConfigError)
        if not isinstance(self.spark_master, str) or not self.spark_master:
            raise ConfigError(f"spark master {where} must be a master URL such as 'local[2]', got {self.spark_master!r}")
        if self.spark_partitions is not None:
            check_int(self.spark_partitions, "spark partitions", where=where, error=ConfigError)
        if not isinstance(self.spark_config, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in self.spark_config.items()):
            raise ConfigError(f"[spark.config] {where} must map Spark setting names to values, "
                              f"such as \"spark.driver.memory\" = \"8g\"")
        if self.as_of is not None and self.as_of.tzinfo is None:
            raise ConfigError(f"as_of {where} must carry a UTC offset")
        for dataset, budget in self.budgets.items():
            epsilon, delta = budget.get("epsilon"), budget.get("delta", 0.0)
            extra = set(budget) - {"epsilon", "delta"}
            if extra or not _positive(epsilon) or not (_finite(delta) and 0 <= delta < 1):
                raise ConfigError(f"budget.{dataset} {where} needs epsilon > 0 (and optionally 0 <= delta < 1), "
                                  f"got {dict(budget)!r}")

    def allows(self, purpose: str) -> bool:
        return purpose in self.purposes

    def engine_options(self) -> dict:
        """Keyword arguments for ``get_engine(self.engine, ...)`` (the local engine's workspace excepted)."""
        if self.engine != "spark":
            return {}
        return {"master": self.spark_master, "partitions": self.spark_partitions,
                "config": {name: str(value).lower() if isinstance(value, bool) else str(value)
                           for name, value in self.spark_config.items()}}

    def with_overrides(self, **overrides) -> JobConfig:
        """A copy with the given settings replaced; ``None`` values leave a setting as it is."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value) -> bool:
    return _finite(value) and value > 0


_SECTIONS = {"recommendations": {"k": "k"},
             "portraits": {"rows_per_partition": "rows_per_partition"},
             "retention": {"cancellation_grace_days": "cancellation_grace_days"},
             "spark": {"master": "spark_master", "partitions": "spark_partitions", "config": "spark_config"}}
_TOP_LEVEL = {"workspace", "key_file", "as_of", "engine", "purposes", "budget", *_SECTIONS}


def load_config(path: str | Path) -> JobConfig:
    """Read a job configuration file (TOML); errors name the file and the key."""
    from pipelines.run import parse_as_of  # the one parser of as-of moments

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"configuration file {path} is not valid TOML: {error}") from None
    if "identity" in raw:
        raise ConfigError(f"[identity] in {path} is no longer read: max_accounts_per_device is gone, a device now "
                          f"joins an identity only when one account ever signed in on it and accounts are never "
                          f"linked; remove the [identity] section")
    unknown = sorted(set(raw) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)} in {path}; known: {', '.join(sorted(_TOP_LEVEL))}")
    settings: dict = {"source": str(path)}
    base = path.parent
    for name in ("workspace", "key_file"):
        if name in raw:
            if not isinstance(raw[name], str) or not raw[name]:
                raise ConfigError(f"{name} in {path} must be a path (a string)")
            settings[name] = (base / raw[name]).resolve() if not Path(raw[name]).is_absolute() else Path(raw[name])
    if "as_of" in raw:
        moment = raw["as_of"]
        if isinstance(moment, dt.datetime):
            settings["as_of"] = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        elif isinstance(moment, str):
            try:
                settings["as_of"] = parse_as_of(moment)
            except ValueError as error:
                raise ConfigError(f"as_of in {path}: {error}") from None
        else:
            raise ConfigError(f"as_of in {path} must be an ISO 8601 time such as 2026-11-01T00:00:00Z")
    if "engine" in raw:
        settings["engine"] = raw["engine"]
    if "purposes" in raw:
        if not isinstance(raw["purposes"], list) or not all(isinstance(p, str) for p in raw["purposes"]):
            raise ConfigError(f"purposes in {path} must be a list of purpose names")
        settings["purposes"] = tuple(raw["purposes"])
    for section, keys in _SECTIONS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict) or set(values) - set(keys):
            raise ConfigError(f"[{section}] in {path} takes only {', '.join(keys)}")
        settings.update({keys[k]: v for k, v in values.items()})
    budgets = raw.get("budget", {})
    if not isinstance(budgets, dict) or not all(isinstance(b, dict) for b in budgets.values()):
        raise ConfigError(f"budget in {path} must be tables such as [budget.orders] with epsilon = 1.0")
    settings["budgets"] = budgets
    known = {f.name for f in fields(JobConfig)}
    return JobConfig(**{k: v for k, v in settings.items() if k in known})
