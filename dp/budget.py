"""The persistent privacy-budget ledger: an odometer per dataset and period that cannot be overspent.

Lives in the workspace's ``ledger.sqlite`` (tables prefixed ``budget_``; the consent ledger
shares the file under its own prefix), in WAL mode with ``synchronous=FULL``. A release
is charged in one ``BEGIN IMMEDIATE`` transaction that reads what was spent, refuses the
charge if it would pass the budget, and writes the charge rows; SQLite lets only one such
transaction run at a time, so processes racing for the last of a budget cannot both win.
The charge is durable before any noisy value is computed: a crash after the charge loses
budget, never privacy.

Composition: a budget in (epsilon, delta) composes releases by basic composition (the
epsilons add up, the deltas add up); a budget in rho composes under zero-concentrated
DP (the rhos add up). Sums are taken with ``math.fsum`` so rounding never lets the total
creep past the budget.
"""

from __future__ import annotations

import getpass
import math
import os
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dp._errors import BudgetExceededError, BudgetNotSetError, PrivacyParameterError
from dp._mechanisms import APPROXIMATE, ZCDP
from dp._parameters import check_delta, check_epsilon, check_rho

__all__ = ["DEFAULT_PERIOD", "Budget", "BudgetLedger", "ChargeLine"]

DEFAULT_PERIOD = "all"

_SCHEMA = """
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
CREATE INDEX IF NOT EXISTS budget_charges_by_dataset ON budget_charges (dataset, period);
"""


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
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            connection.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"BudgetLedger({str(self.path)!r})"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA busy_timeout=60000")
            connection.row_factory = sqlite3.Row
            yield connection
        finally:
            connection.close()

    # budgets ---------------------------------------------------------------------------------

    def set_budget(self, dataset: str, period: str = DEFAULT_PERIOD, *, epsilon: float | None = None,
                   delta: float = 0.0, rho: float | None = None, cap_epsilon: float | None = None,
                   cap_rho: float | None = None, set_by: str | None = None, note: str = "") -> Budget:
        """Set (or replace) the total budget of ``dataset`` in ``period``: pass epsilon (and delta) or rho.

        Earlier settings stay in the ledger's history; the latest one applies.
        """
        if not dataset or not period:
            raise PrivacyParameterError("a budget needs a non-empty dataset name and period label")
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
        with self._connect() as connection:
            connection.execute(
                "INSERT INTO budget_limits (dataset, period, measure, epsilon, delta, rho, cap_epsilon, cap_rho,"
                " set_by, set_at, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (dataset, period, measure, epsilon_value, delta_value, rho, cap_epsilon, cap_rho, who, _now(), note))
        return self.budget(dataset, period)

    def budget(self, dataset: str, period: str = DEFAULT_PERIOD) -> Budget:
        """The budget in force; ``BudgetNotSetError`` says how to set one if there is none."""
        with self._connect() as connection:
            return self._budget(connection, dataset, period)

    def _budget(self, connection: sqlite3.Connection, dataset: str, period: str) -> Budget:
        row = connection.execute(
            "SELECT * FROM budget_limits WHERE dataset = ? AND period = ? ORDER BY id DESC LIMIT 1",
            (dataset, period)).fetchone()
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

    # spending --------------------------------------------------------------------------------

    @staticmethod
    def _spent(connection: sqlite3.Connection, dataset: str, period: str) -> dict[str, float]:
        rows = connection.execute("SELECT epsilon, delta, rho FROM budget_charges WHERE dataset = ? AND period = ?",
                                  (dataset, period)).fetchall()
        return {name: math.fsum(r[name] for r in rows) for name in ("epsilon", "delta", "rho")}

    def spent(self, dataset: str, period: str = DEFAULT_PERIOD) -> dict[str, float]:
        with self._connect() as connection:
            return self._spent(connection, dataset, period)

    def remaining(self, dataset: str, period: str = DEFAULT_PERIOD) -> dict[str, float | None]:
        """What is left: epsilon and delta for an (epsilon, delta) budget, rho for a zCDP one (others None)."""
        with self._connect() as connection:
            budget = self._budget(connection, dataset, period)
            spent = self._spent(connection, dataset, period)
        return _remaining(budget, spent)

    def charge(self, dataset: str, period: str, lines: Sequence[ChargeLine], *, analyst: str, purpose: str,
               query: str, features: Sequence[str]) -> str:
        """Charge one release (all its measurements) atomically; returns its release id.

        Raises ``BudgetExceededError`` (showing what remains and what was asked) and charges
        nothing if the release does not fit.
        """
        asked = {name: math.fsum(getattr(line, name) for line in lines) for name in ("epsilon", "delta", "rho")}
        release_id = uuid.uuid4().hex
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                budget = self._budget(connection, dataset, period)
                spent = self._spent(connection, dataset, period)
                _check_fits(budget, spent, asked)
                stamp = _now()
                connection.executemany(
                    "INSERT INTO budget_charges (release_id, dataset, period, analyst, purpose, query, aggregate,"
                    " mechanism, sensitivity, noise_scale, epsilon, delta, rho, half_width_95, features, charged_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(release_id, dataset, period, analyst, purpose, query, line.aggregate, line.mechanism,
                      line.sensitivity, line.noise_scale, line.epsilon, line.delta, line.rho, line.half_width_95,
                      ",".join(features), stamp) for line in lines])
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        return release_id

    def mark_released(self, release_id: str) -> None:
        """Record that the noisy values of a charged release were handed out."""
        with self._connect() as connection:
            connection.execute("UPDATE budget_charges SET released_at = ? WHERE release_id = ?", (_now(), release_id))

    def charges(self, dataset: str | None = None) -> list[dict]:
        """Every charge row, oldest first (optionally of one dataset)."""
        with self._connect() as connection:
            sql, args = "SELECT * FROM budget_charges", ()
            if dataset is not None:
                sql, args = sql + " WHERE dataset = ?", (dataset,)
            return [dict(r) for r in connection.execute(sql + " ORDER BY id", args).fetchall()]


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
