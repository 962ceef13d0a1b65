"""The persistent privacy-budget ledger: an odometer per dataset and period that cannot be overspent.

Lives in the workspace's ``ledger.sqlite`` (tables prefixed ``budget_``; the consent ledger
shares the file under its own prefix), in WAL mode with ``synchronous=FULL``. A release
is charged in one ``BEGIN IMMEDIATE`` transaction (``immediate_transaction``, as every ledger
write) that reads what was spent, refuses the charge if it would pass the budget, and writes
the charge rows; SQLite lets only one such transaction run at a time, so processes racing
for the last of a budget cannot both win.
The charge is durable before any noisy value is computed: a crash after the charge loses
budget, never privacy.

Composition: a budget in (epsilon, delta) composes releases by basic composition (the
epsilons add up, the deltas add up); a budget in rho composes under zero-concentrated
DP (the rhos add up). Each charge row carries the exact running total of its dataset and
period (a fraction, so rounding never lets the total creep past the budget), so a charge
reads one row through an index whatever the ledger's history.

Budgets belong to registered datasets (``budget_datasets``): each analytics-zone table that
holds persons is a dataset of its own name, with the person (``person_id``) as privacy unit;
a release on a table is charged to that table's dataset. Every table here is hash-chained and
append-only (``profiling.ledger_chain``): budget settings, with the budget they replaced and
why; charges; release marks (``budget_releases``); continual schedules (``budget_schedules``,
charged once for their whole horizon), each day a schedule released (``budget_schedule_days``)
and the noisy tree nodes a schedule drew (``budget_schedule_nodes``, one row per node, never
redrawn: see ``dp.continual``).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import math
import os
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

from dp._errors import BudgetExceededError, BudgetNotSetError, PrivacyParameterError
from dp._mechanisms import APPROXIMATE, ZCDP
from dp._parameters import check_delta, check_epsilon, check_rho
from profiling.ledger_file import ensure_schema, immediate_transaction, ledger_connection
from profiling.file_modes import restrict_to_owner
from profiling.ledger_chain import (
    ChainBrokenError,
    ChainReport,
    append_rows,
    register_table,
    require_row_intact,
    verify,
)
from profiling.schema import TABLES

__all__ = ["DEFAULT_PERIOD", "Budget", "BudgetChange", "BudgetLedger", "ChargeLine", "Dataset", "ScheduleError",
           "UnregisteredDatasetError"]

DEFAULT_PERIOD = "all"
PRIVACY_UNIT = "person_id"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_datasets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL, tables TEXT NOT NULL, privacy_unit TEXT NOT NULL,  -- tables: JSON list
    registered_by TEXT NOT NULL, registered_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS budget_limits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL, period TEXT NOT NULL, measure TEXT NOT NULL,
    epsilon REAL, delta REAL, rho REAL,
    cap_epsilon REAL, cap_rho REAL,
    set_by TEXT NOT NULL, set_at TEXT NOT NULL, note TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS budget_charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    release_id TEXT NOT NULL, dataset TEXT NOT NULL, period TEXT NOT NULL,
    analyst TEXT NOT NULL, purpose TEXT NOT NULL, query TEXT NOT NULL, aggregate TEXT NOT NULL,
    mechanism TEXT NOT NULL, sensitivity TEXT NOT NULL, noise_scale REAL NOT NULL,
    epsilon REAL NOT NULL, delta REAL NOT NULL, rho REAL NOT NULL, half_width_95 REAL,
    features TEXT NOT NULL, charged_at TEXT NOT NULL, released_at TEXT
);
CREATE TABLE IF NOT EXISTS budget_releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    release_id TEXT NOT NULL, released_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_releases_by_release ON budget_releases (release_id);
CREATE TABLE IF NOT EXISTS budget_schedules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule_id TEXT NOT NULL, name TEXT NOT NULL, dataset TEXT NOT NULL, period TEXT NOT NULL,
    purpose TEXT NOT NULL, query TEXT NOT NULL, by_column TEXT NOT NULL,
    keys TEXT NOT NULL, keys_sha256 TEXT NOT NULL,  -- keys: JSON list of the by_column's public keys
    start TEXT NOT NULL, horizon_days INTEGER NOT NULL, arity INTEGER NOT NULL, levels INTEGER NOT NULL,
    max_keys_per_person INTEGER NOT NULL, max_count_per_key INTEGER NOT NULL, mechanism TEXT NOT NULL,
    noise_scale REAL NOT NULL, release_id TEXT NOT NULL, created_by TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS budget_schedules_by_id ON budget_schedules (schedule_id);
CREATE TABLE IF NOT EXISTS budget_schedule_nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule_id TEXT NOT NULL, level INTEGER NOT NULL, position INTEGER NOT NULL,
    noisy_sums TEXT NOT NULL, drawn_at TEXT NOT NULL      -- noisy_sums: dp.continual's encoding, one per key
);
CREATE UNIQUE INDEX IF NOT EXISTS budget_schedule_nodes_once ON budget_schedule_nodes (schedule_id, level, position);
CREATE TABLE IF NOT EXISTS budget_schedule_days (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule_id TEXT NOT NULL, day INTEGER NOT NULL, release_id TEXT NOT NULL, released_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS budget_schedule_days_once ON budget_schedule_days (schedule_id, day);
DROP INDEX IF EXISTS budget_charges_by_dataset;
CREATE INDEX IF NOT EXISTS budget_charges_by_budget ON budget_charges (dataset, period, id);
CREATE INDEX IF NOT EXISTS budget_limits_by_budget ON budget_limits (dataset, period, id);
"""
# Columns added to ledgers made before budgets kept their history and running totals.
_ADDED_COLUMNS = {
    "budget_limits": {"previous": "TEXT"},     # JSON of the budget replaced (null: the first one)
    "budget_charges": {"total_epsilon": "TEXT", "total_delta": "TEXT", "total_rho": "TEXT"},  # exact, after this row
}
_COLUMNS = {
    "budget_datasets": ["id", "dataset", "tables", "privacy_unit", "registered_by", "registered_at"],
    "budget_limits": ["id", "dataset", "period", "measure", "epsilon", "delta", "rho", "cap_epsilon", "cap_rho",
                      "set_by", "set_at", "note", "previous"],
    "budget_charges": ["id", "release_id", "dataset", "period", "analyst", "purpose", "query", "aggregate",
                       "mechanism", "sensitivity", "noise_scale", "epsilon", "delta", "rho", "half_width_95",
                       "features", "charged_at", "released_at", "total_epsilon", "total_delta", "total_rho"],
    "budget_releases": ["id", "release_id", "released_at"],
    "budget_schedules": ["id", "schedule_id", "name", "dataset", "period", "purpose", "query", "by_column", "keys",
                         "keys_sha256",
                         "start", "horizon_days", "arity", "levels", "max_keys_per_person", "max_count_per_key",
                         "mechanism", "noise_scale", "release_id", "created_by", "created_at"],
    "budget_schedule_nodes": ["id", "schedule_id", "level", "position", "noisy_sums", "drawn_at"],
    "budget_schedule_days": ["id", "schedule_id", "day", "release_id", "released_at"],
}
_MEASURES = ("epsilon", "delta", "rho")


class UnregisteredDatasetError(PrivacyParameterError):
    """A budget or release names a dataset that is not registered (not an analytics-zone table)."""


@dataclass(frozen=True)
class Dataset:
    """A registered dataset: the analytics-zone table(s) its budget covers and its privacy unit."""

    name: str
    tables: tuple[str, ...]
    privacy_unit: str
    registered_by: str
    registered_at: str


def _built_in_datasets() -> list[tuple[str, tuple[str, ...], str]]:
    """One dataset per analytics-zone table that holds persons' rows (the catalogue holds none), per person;
    and the portraits (``WS/outputs/portraits``, one row per identity), per identity."""
    return [*((name, (name,), PRIVACY_UNIT) for name, table in TABLES.items()
              if any(f.name in ("account_id", "device_id") for f in table.fields)),
            ("portraits", ("portraits",), "identity_id")]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Budget:
    """The total allowed for one dataset and period: (epsilon, delta) or rho, plus an optional per-release cap.

    The cap does not refuse releases; the privacy review flags every release above it.
    """

    dataset: str
    period: str
    measure: str
    epsilon: float | None
    delta: float | None
    rho: float | None
    cap_epsilon: float | None
    cap_rho: float | None
    set_by: str
    set_at: str

    @property
    def composition(self) -> str:
        if self.measure == ZCDP:
            return "zero-concentrated DP: rho adds up over releases"
        return "basic composition: epsilons add up, deltas add up"


@dataclass(frozen=True)
class BudgetChange:
    """One setting of a budget, as the ledger records it: who, when, the budget replaced, the new one, why."""

    dataset: str
    period: str
    set_by: str
    set_at: str
    reason: str
    old: dict | None        # {"measure", "epsilon", "delta", "rho", "cap_epsilon", "cap_rho"}; None: the first
    new: dict

    @property
    def raised(self) -> bool:
        """More budget than before: a larger total in any unit, a changed measure, or a larger or removed cap."""
        if self.old is None:
            return False
        if self.old["measure"] != self.new["measure"]:
            return True
        larger = any((self.new[n] or 0.0) > (self.old[n] or 0.0) for n in _MEASURES)
        caps = any(self.old[c] is not None and (self.new[c] is None or self.new[c] > self.old[c])
                   for c in ("cap_epsilon", "cap_rho"))
        return larger or caps

    def describe(self) -> str:
        def show(budget: dict) -> str:
            names = ("rho",) if budget["measure"] == ZCDP else ("epsilon", "delta")
            return ", ".join(f"{n} {budget[n]:g}" for n in names)

        old = "none" if self.old is None else show(self.old)
        return (f"{self.dataset}/{self.period}: {old} -> {show(self.new)} by {self.set_by} at {self.set_at} "
                f"({self.reason or 'no reason given'})")


@dataclass(frozen=True)
class ChargeLine:
    """One measurement of a release, as the ledger records it (units of the released value)."""

    aggregate: str
    mechanism: str
    sensitivity: str
    noise_scale: float
    epsilon: float
    delta: float
    rho: float
    half_width_95: float | None


class BudgetLedger:
    """Budgets and charges in a SQLite file (default: the workspace's ``ledger.sqlite``).

    >>> import tempfile, pathlib
    >>> ledger = BudgetLedger(pathlib.Path(tempfile.mkdtemp()) / "ledger.sqlite")
    >>> _ = ledger.set_budget("orders", epsilon=1.0, delta=1e-6, set_by="reviewer")
    >>> ledger.remaining("orders")
    {'epsilon': 1.0, 'delta': 1e-06, 'rho': None}
    >>> ledger.dataset_of_table("orders").privacy_unit
    'person_id'

    A ledger made before the tables were chained is migrated in place when first opened: the
    missing columns are added (running totals computed over the existing charges, each limit
    row given the budget it replaced), then the chains are built over the rows as they are
    (``ledger_chains.migrated_rows`` says how many rows predate the chain).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        restrict_to_owner()  # the ledger names analysts and datasets: owner-only files
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._datasets: dict[str, Dataset] | None = None
        with self._connect() as connection:
            ensure_schema(connection, _SCHEMA, self._set_up)

    def __repr__(self) -> str:
        return f"BudgetLedger({str(self.path)!r})"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = ledger_connection(self.path)
        try:
            connection.row_factory = sqlite3.Row
            yield connection
        finally:
            connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one ``BEGIN IMMEDIATE`` transaction (``immediate_transaction``): committed when the
        block ends, rolled back when it raises."""
        with self._connect() as connection, immediate_transaction(connection):
            yield connection

    def _set_up(self, connection: sqlite3.Connection) -> None:
        """Older ledgers' columns, the chains and the built-in datasets (``ensure_schema``: only what is missing)."""
        self._migrate(connection)
        for table, columns in _COLUMNS.items():
            register_table(connection, table, key="id", columns=columns)
        self._register_built_in(connection)

    @staticmethod
    def _migrate(connection: sqlite3.Connection) -> None:
        """Add the columns older ledgers lack, and fill them, before the chains are built over the rows."""
        chained = {row[0] for row in connection.execute("SELECT chain_table FROM ledger_chains")} if connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger_chains'").fetchone() else set()
        for table, added in _ADDED_COLUMNS.items():
            present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            missing = [column for column in added if column not in present]
            if table in chained and missing:
                raise ChainBrokenError(f"the ledger's {table} is chained but lacks column(s) {', '.join(missing)}; "
                                       f"it was edited outside Portrait")
            for column in missing:
                connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {added[column]}")
        if "budget_charges" not in chained:
            totals: dict[tuple[str, str], dict[str, Fraction]] = {}
            for row in connection.execute("SELECT id, dataset, period, epsilon, delta, rho FROM budget_charges "
                                          "ORDER BY id").fetchall():
                running = totals.setdefault((row["dataset"], row["period"]), dict.fromkeys(_MEASURES, Fraction(0)))
                for name in _MEASURES:
                    running[name] += Fraction(row[name])
                connection.execute("UPDATE budget_charges SET total_epsilon = ?, total_delta = ?, total_rho = ? "
                                   "WHERE id = ?", (*(str(running[n]) for n in _MEASURES), row["id"]))
        if "budget_limits" not in chained:
            previous: dict[tuple[str, str], str] = {}
            for row in connection.execute("SELECT * FROM budget_limits ORDER BY id").fetchall():
                pair = (row["dataset"], row["period"])
                if pair in previous:
                    connection.execute("UPDATE budget_limits SET previous = ? WHERE id = ?",
                                       (previous[pair], row["id"]))
                previous[pair] = json.dumps(_limit_values(row), sort_keys=True)

    def _register_built_in(self, connection: sqlite3.Connection) -> None:
        known = {row["dataset"] for row in connection.execute("SELECT dataset FROM budget_datasets")}
        missing = [(name, tables, unit) for name, tables, unit in _built_in_datasets() if name not in known]
        if missing:
            append_rows(connection, "budget_datasets", [
                (name, json.dumps(list(tables)), unit, "portrait (built-in)", _now())
                for name, tables, unit in missing])

    # datasets --------------------------------------------------------------------------------

    def datasets(self) -> list[Dataset]:
        """Every registered dataset, by name."""
        if self._datasets is None:
            with self._connect() as connection:
                rows = connection.execute("SELECT * FROM budget_datasets ORDER BY id").fetchall()
            self._datasets = {r["dataset"]: Dataset(r["dataset"], tuple(json.loads(r["tables"])), r["privacy_unit"],
                                                    r["registered_by"], r["registered_at"]) for r in rows}
        return sorted(self._datasets.values(), key=lambda d: d.name)

    def dataset(self, name: str) -> Dataset:
        """The registered dataset ``name``; ``UnregisteredDatasetError`` lists the registered ones otherwise."""
        found = {d.name: d for d in self.datasets()}.get(name)
        if found is None:
            raise UnregisteredDatasetError(
                f"dataset {name!r} is not registered in {self.path}; budgets belong to the analytics-zone "
                f"tables' datasets: {', '.join(d.name for d in self.datasets())}")
        return found

    def dataset_of_table(self, table: str) -> Dataset:
        """The dataset whose budget pays for releases on analytics-zone ``table``."""
        for dataset in self.datasets():
            if table in dataset.tables:
                return dataset
        raise UnregisteredDatasetError(
            f"analytics-zone table {table!r} belongs to no registered dataset; the tables are "
            f"{', '.join(t for d in self.datasets() for t in d.tables)}")

    # budgets ---------------------------------------------------------------------------------

    def set_budget(self, dataset: str, period: str = DEFAULT_PERIOD, *, epsilon: float | None = None,
                   delta: float = 0.0, rho: float | None = None, cap_epsilon: float | None = None,
                   cap_rho: float | None = None, set_by: str | None = None, note: str = "") -> Budget:
        """Set (or replace) the total budget of registered ``dataset`` in ``period``: pass epsilon (and delta) or rho.

        Every setting is a ledger row: who, when, the budget it replaces, the new one and ``note``
        (the reason; required when a budget is replaced). The latest one applies; the privacy
        review flags every raise.
        """
        if not dataset or not period:
            raise PrivacyParameterError("a budget needs a non-empty dataset name and period label")
        self.dataset(dataset)
        where = f"the budget of {dataset!r} for period {period!r}"
        if (epsilon is None) == (rho is None):
            raise PrivacyParameterError(f"{where}: pass either epsilon (with delta) or rho, not both or neither")
        if rho is not None:
            measure, rho, delta_value, epsilon_value = ZCDP, check_rho(rho, where=where), None, None
            if cap_epsilon is not None:
                raise PrivacyParameterError(f"{where} is in rho; give the per-release cap as cap_rho")
            cap_rho = None if cap_rho is None else check_rho(cap_rho, "cap_rho", where)
        else:
            measure, epsilon_value = APPROXIMATE, check_epsilon(epsilon, where=where)
            delta_value = check_delta(delta, where=where)
            if cap_rho is not None:
                raise PrivacyParameterError(f"{where} is in epsilon; give the per-release cap as cap_epsilon")
            cap_epsilon = None if cap_epsilon is None else check_epsilon(cap_epsilon, "cap_epsilon", where)
        who = set_by or getpass.getuser()
        with self._transaction() as connection:
            current = self._limit_row(connection, dataset, period)
            if current is not None and not note.strip():
                raise PrivacyParameterError(f"{where} is already set (by {current['set_by']}); say why it changes "
                                            f"with a note (`portrait budget set ... --note REASON`)")
            previous = None if current is None else json.dumps(_limit_values(current), sort_keys=True)
            append_rows(connection, "budget_limits", [
                (dataset, period, measure, epsilon_value, delta_value, rho, cap_epsilon, cap_rho, who, _now(), note,
                 previous)])
        return self.budget(dataset, period)

    def budget(self, dataset: str, period: str = DEFAULT_PERIOD) -> Budget:
        """The budget in force; ``BudgetNotSetError`` says how to set one if there is none."""
        with self._connect() as connection:
            return self._budget(connection, dataset, period)

    @staticmethod
    def _limit_row(connection: sqlite3.Connection, dataset: str, period: str) -> sqlite3.Row | None:
        return connection.execute("SELECT * FROM budget_limits WHERE dataset = ? AND period = ? ORDER BY id DESC "
                                  "LIMIT 1", (dataset, period)).fetchone()

    def _budget(self, connection: sqlite3.Connection, dataset: str, period: str) -> Budget:
        row = self._limit_row(connection, dataset, period)
        if row is None:
            raise BudgetNotSetError(
                f"no privacy budget is set for dataset {dataset!r}, period {period!r} in {self.path}; a reviewer "
                f"sets one with `portrait budget set --dataset {dataset} --period {period} --epsilon E --delta D`")
        return Budget(row["dataset"], row["period"], row["measure"], row["epsilon"], row["delta"], row["rho"],
                      row["cap_epsilon"], row["cap_rho"], row["set_by"], row["set_at"])

    def budgets(self) -> list[Budget]:
        """Every budget in force, one per (dataset, period)."""
        with self._connect() as connection:
            pairs = connection.execute(
                "SELECT DISTINCT dataset, period FROM budget_limits ORDER BY dataset, period").fetchall()
            return [self._budget(connection, r["dataset"], r["period"]) for r in pairs]

    def changes(self) -> list[BudgetChange]:
        """Every budget setting, oldest first, with the budget it replaced (``BudgetChange.raised`` flags raises)."""
        with self._connect() as connection:
            rows = connection.execute("SELECT * FROM budget_limits ORDER BY id").fetchall()
        return [BudgetChange(r["dataset"], r["period"], r["set_by"], r["set_at"], r["note"],
                             None if r["previous"] is None else json.loads(r["previous"]), _limit_values(r))
                for r in rows]

    # spending --------------------------------------------------------------------------------

    @staticmethod
    def _totals(connection: sqlite3.Connection, dataset: str, period: str) -> dict[str, Fraction]:
        """Exact running totals after the last charge of (dataset, period): one indexed row, checked by its hash."""
        row = connection.execute("SELECT id, total_epsilon, total_delta, total_rho FROM budget_charges WHERE "
                                 "dataset = ? AND period = ? ORDER BY id DESC LIMIT 1", (dataset, period)).fetchone()
        if row is not None:
            require_row_intact(connection, "budget_charges", row["id"])
        return {name: Fraction(row[f"total_{name}"]) if row else Fraction(0) for name in _MEASURES}

    def spent(self, dataset: str, period: str = DEFAULT_PERIOD) -> dict[str, float]:
        with self._connect() as connection:
            return {n: float(v) for n, v in self._totals(connection, dataset, period).items()}

    def remaining(self, dataset: str, period: str = DEFAULT_PERIOD) -> dict[str, float | None]:
        """What is left: epsilon and delta for an (epsilon, delta) budget, rho for a zCDP one (others None)."""
        with self._connect() as connection:
            budget = self._budget(connection, dataset, period)
            spent = {n: float(v) for n, v in self._totals(connection, dataset, period).items()}
        return _remaining(budget, spent)

    def charge(self, dataset: str, period: str, lines: Sequence[ChargeLine], *, analyst: str, purpose: str,
               query: str, features: Sequence[str]) -> str:
        """Charge one release (all its measurements) atomically to registered ``dataset``; returns its release id.

        Raises ``BudgetExceededError`` (showing what remains and what was asked) and charges
        nothing if the release does not fit. Reads one row for what was spent (the running
        totals of the last charge) and appends one row per measurement, in one transaction.
        """
        self.dataset(dataset)
        with self._transaction() as connection:
            return self._charge(connection, dataset, period, lines, analyst=analyst, purpose=purpose, query=query,
                                features=features)

    def _charge(self, connection: sqlite3.Connection, dataset: str, period: str, lines: Sequence[ChargeLine], *,
                analyst: str, purpose: str, query: str, features: Sequence[str]) -> str:
        """Check the budget and append the charge rows, inside the caller's transaction; returns the release id."""
        asked = {name: math.fsum(getattr(line, name) for line in lines) for name in _MEASURES}
        release_id = uuid.uuid4().hex
        budget = self._budget(connection, dataset, period)
        totals = self._totals(connection, dataset, period)
        _check_fits(budget, {n: float(v) for n, v in totals.items()}, asked)
        stamp, rows = _now(), []
        for line in lines:
            for name in _MEASURES:
                totals[name] += Fraction(getattr(line, name))
            rows.append((release_id, dataset, period, analyst, purpose, query, line.aggregate, line.mechanism,
                         line.sensitivity, float(line.noise_scale), float(line.epsilon), float(line.delta),
                         float(line.rho), None if line.half_width_95 is None else float(line.half_width_95),
                         ",".join(features), stamp, None, *(str(totals[n]) for n in _MEASURES)))
        append_rows(connection, "budget_charges", rows)
        return release_id

    def mark_released(self, release_id: str) -> None:
        """Record that the noisy values of a charged release were handed out (an appended row)."""
        with self._transaction() as connection:
            append_rows(connection, "budget_releases", [(release_id, _now())])

    def charges(self, dataset: str | None = None) -> list[dict]:
        """Every charge row, oldest first (optionally of one dataset), with when it was released (None: never)."""
        columns = ", ".join(f"c.{name}" for name in _COLUMNS["budget_charges"] if name != "released_at")
        with self._connect() as connection:
            sql = (f"SELECT {columns}, COALESCE(c.released_at, (SELECT MIN(r.released_at) FROM budget_releases r "
                   f"WHERE r.release_id = c.release_id)) AS released_at FROM budget_charges c")
            args: tuple = ()
            if dataset is not None:
                sql, args = sql + " WHERE c.dataset = ?", (dataset,)
            return [dict(r) for r in connection.execute(sql + " ORDER BY c.id", args).fetchall()]

    # continual schedules ----------------------------------------------------------------------

    def create_schedule(self, *, name: str, dataset: str, period: str, purpose: str, query: str, by: str, keys: Sequence,
                        start: str, horizon_days: int, arity: int, levels: int, max_keys_per_person: int,
                        max_count_per_key: int, line: ChargeLine, analyst: str, features: Sequence[str]) -> str:
        """Charge a continual schedule's whole horizon once and record it, in one transaction; returns its id.

        Refused (``ScheduleError``, nothing charged) while a schedule of the same ``name`` and
        dataset still has days to run at ``start``. The schedule id is the charge's release id.
        """
        self.dataset(dataset)
        key_text = json.dumps(list(keys), separators=(",", ":"))
        with self._transaction() as connection:
            for row in connection.execute("SELECT schedule_id, start, horizon_days FROM budget_schedules "
                                          "WHERE name = ? AND dataset = ?", (name, dataset)).fetchall():
                ends = datetime.fromisoformat(row["start"]) + timedelta(days=row["horizon_days"])
                if ends > datetime.fromisoformat(start):
                    raise ScheduleError(f"schedule {name!r} of dataset {dataset!r} ({row['schedule_id']}) runs until "
                                        f"{ends.isoformat()}; start the new one at or after that moment")
            release_id = self._charge(connection, dataset, period, [line], analyst=analyst, purpose=purpose,
                                      query=query, features=features)
            append_rows(connection, "budget_schedules", [(
                release_id, name, dataset, period, purpose, query, by, key_text, _keys_digest(keys), start,
                int(horizon_days), int(arity), int(levels), int(max_keys_per_person), int(max_count_per_key),
                line.mechanism, float(line.noise_scale), release_id, analyst, _now())])
        return release_id

    def schedules(self, name: str | None = None, dataset: str | None = None) -> list[dict]:
        """Every continual schedule (optionally of one name and dataset), oldest first; ``keys`` as a tuple."""
        sql, args = "SELECT * FROM budget_schedules WHERE 1 = 1", []
        for column, value in (("name", name), ("dataset", dataset)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        with self._connect() as connection:
            rows = connection.execute(sql + " ORDER BY id", args).fetchall()
        return [{**{c: r[c] for c in _COLUMNS["budget_schedules"] if c != "keys"},
                 "keys": tuple(json.loads(r["keys"]))} for r in rows]

    def schedule_days(self, schedule_id: str) -> list[dict]:
        """The days a schedule released, in order: ``day``, ``release_id``, ``released_at``."""
        with self._connect() as connection:
            rows = connection.execute("SELECT day, release_id, released_at FROM budget_schedule_days "
                                      "WHERE schedule_id = ? ORDER BY day", (schedule_id,)).fetchall()
        return [dict(r) for r in rows]

    def schedule_nodes(self, schedule_id: str, which: Sequence[tuple[int, int]] | None = None
                       ) -> dict[tuple[int, int], str]:
        """The noisy nodes a schedule has drawn (or those of ``which`` it has), by (level, position):
        their stored encoding, each row checked against its chain hash."""
        with self._connect() as connection:
            if which is None:
                rows = connection.execute("SELECT id, level, position, noisy_sums FROM budget_schedule_nodes "
                                          "WHERE schedule_id = ?", (schedule_id,)).fetchall()
            else:
                rows = [row for level, position in which for row in connection.execute(
                    "SELECT id, level, position, noisy_sums FROM budget_schedule_nodes WHERE schedule_id = ? AND "
                    "level = ? AND position = ?", (schedule_id, level, position)).fetchall()]
            for row in rows:
                require_row_intact(connection, "budget_schedule_nodes", row["id"])
        return {(r["level"], r["position"]): r["noisy_sums"] for r in rows}

    def schedule_node_keys(self, schedule_id: str) -> set[tuple[int, int]]:
        """The (level, position) of every node a schedule has drawn."""
        with self._connect() as connection:
            return {(r[0], r[1]) for r in connection.execute(
                "SELECT level, position FROM budget_schedule_nodes WHERE schedule_id = ?", (schedule_id,))}

    def record_schedule_day(self, schedule_id: str, day: int, nodes: Sequence[tuple[int, int, str]]) -> str:
        """Store a day's newly drawn nodes and record the day as released, in one transaction; returns its id.

        Refused (``ScheduleError``, nothing stored) for a day past the horizon, a day not after
        the last one released, or a node already drawn (another process released first). The
        first day also marks the schedule's charge released.
        """
        with self._transaction() as connection:
            schedule = connection.execute("SELECT * FROM budget_schedules WHERE schedule_id = ?",
                                          (schedule_id,)).fetchone()
            if schedule is None:
                raise ScheduleError(f"no continual schedule {schedule_id!r} in {self.path}")
            if not 1 <= day <= schedule["horizon_days"]:
                raise ScheduleError(f"schedule {schedule['name']!r} ({schedule_id}) covers days 1 to "
                                    f"{schedule['horizon_days']}; day {day} is outside it and its budget. Create "
                                    f"a new schedule (`portrait budget schedule`) for the next horizon")
            last = connection.execute("SELECT MAX(day) FROM budget_schedule_days WHERE schedule_id = ?",
                                      (schedule_id,)).fetchone()[0]
            if last is not None and day <= last:
                why = ("cannot be released again (its budget was charged once, with the horizon)" if day == last
                       else "comes before it (days are released in order, each once)")
                raise ScheduleError(f"schedule {schedule['name']!r} ({schedule_id}) already released day {last}; "
                                    f"day {day} {why}")
            taken = [(level, position) for level, position, _ in nodes if connection.execute(
                "SELECT 1 FROM budget_schedule_nodes WHERE schedule_id = ? AND level = ? AND position = ?",
                (schedule_id, level, position)).fetchone()]
            if taken:
                raise ScheduleError(f"schedule {schedule_id}: node(s) {taken} were drawn by another release "
                                    f"meanwhile; nothing was stored, release the day again")
            stamp, release_id = _now(), uuid.uuid4().hex
            append_rows(connection, "budget_schedule_nodes",
                        [(schedule_id, int(level), int(position), text, stamp) for level, position, text in nodes])
            append_rows(connection, "budget_schedule_days", [(schedule_id, int(day), release_id, stamp)])
            if last is None:
                append_rows(connection, "budget_releases", [(schedule["release_id"], stamp)])
        return release_id

    def verify(self) -> list[ChainReport]:
        """The chain reports of the budget tables (``profiling.ledger_chain.verify``)."""
        with self._connect() as connection:
            return [verify(connection, table) for table in _COLUMNS]


class ScheduleError(PrivacyParameterError):
    """A continual schedule refused a release or a creation (past its horizon, a day again, overlapping)."""


def _keys_digest(keys: Sequence) -> str:
    """SHA-256 (hex) of a schedule's public keys in their order, recorded beside them (a fingerprint for auditors)."""
    return hashlib.sha256(json.dumps(list(keys), separators=(",", ":")).encode()).hexdigest()


def _limit_values(row: sqlite3.Row) -> dict:
    return {name: row[name] for name in ("measure", "epsilon", "delta", "rho", "cap_epsilon", "cap_rho")}


def _remaining(budget: Budget, spent: dict[str, float]) -> dict[str, float | None]:
    if budget.measure == ZCDP:
        return {"epsilon": None, "delta": None, "rho": max(0.0, budget.rho - spent["rho"])}
    return {"epsilon": max(0.0, budget.epsilon - spent["epsilon"]), "delta": max(0.0, budget.delta - spent["delta"]),
            "rho": None}


def _check_fits(budget: Budget, spent: dict[str, float], asked: dict[str, float]) -> None:
    names = ("rho",) if budget.measure == ZCDP else ("epsilon", "delta")
    over = [n for n in names if math.fsum([spent[n], asked[n]]) > getattr(budget, n)]
    if budget.measure != ZCDP and asked["rho"] or budget.measure == ZCDP and (asked["epsilon"] or asked["delta"]):
        over.append("measure")
    if over:
        left = _remaining(budget, spent)
        shown = ", ".join(f"{n} {left[n]:.6g}" for n in names)
        wanted = ", ".join(f"{n} {asked[n]:.6g}" for n in names)
        raise BudgetExceededError(
            f"release refused, nothing charged or released: dataset {budget.dataset!r} period {budget.period!r} "
            f"has {shown} remaining and the release asks {wanted}; ask for less, or a reviewer raises the budget "
            f"with `portrait budget set`")
