"""The budget ledger: charges add up, refusals charge nothing, racing processes never overspend."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dp import (
    BudgetExceededError,
    BudgetLedger,
    BudgetNotSetError,
    ChargeLine,
    PrivacyParameterError,
)

ROOT = Path(__file__).resolve().parent.parent


def _line(epsilon=0.0, delta=0.0, rho=0.0):
    return ChargeLine("count", "discrete Laplace", "1", 1.0, epsilon, delta, rho, 3.0)


def _charge(ledger, epsilon=0.0, delta=0.0, rho=0.0, dataset="orders", period="all"):
    return ledger.charge(dataset, period, [_line(epsilon, delta, rho)], analyst="ana", purpose="product improvement",
                         query="count", features=["contrib"])


def test_charges_add_up_and_the_last_one_that_does_not_fit_is_refused(tmp_path):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", epsilon=1.0, delta=1e-6, set_by="rev")
    for _ in range(10):
        _charge(ledger, epsilon=0.1)
    assert ledger.spent("orders")["epsilon"] == 1.0
    with pytest.raises(BudgetExceededError, match=r"has epsilon 0, delta 1e-06 remaining and the release asks epsilon 0.1"):
        _charge(ledger, epsilon=0.1)
    assert len(ledger.charges()) == 10


def test_delta_and_rho_budgets_are_enforced(tmp_path):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", epsilon=5.0, delta=1e-6)
    with pytest.raises(BudgetExceededError, match="delta"):
        _charge(ledger, epsilon=0.1, delta=2e-6)
    ledger.set_budget("device_events", rho=0.5)
    _charge(ledger, rho=0.3, dataset="device_events")
    with pytest.raises(BudgetExceededError, match=r"rho 0.2 remaining"):
        _charge(ledger, rho=0.3, dataset="device_events")
    with pytest.raises(BudgetExceededError):
        _charge(ledger, epsilon=0.1, dataset="device_events")   # wrong measure for this budget
    assert ledger.remaining("device_events") == {"epsilon": None, "delta": None, "rho": pytest.approx(0.2)}


def test_periods_are_separate_and_an_unset_budget_says_how_to_set_it(tmp_path):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", "2026-11", epsilon=1.0)
    _charge(ledger, epsilon=1.0, period="2026-11")
    with pytest.raises(BudgetNotSetError, match="portrait budget set --dataset orders --period 2026-12"):
        _charge(ledger, epsilon=0.1, period="2026-12")
    ledger.set_budget("orders", "2026-12", epsilon=1.0)
    _charge(ledger, epsilon=1.0, period="2026-12")


@pytest.mark.parametrize("kwargs, message", [
    ({"epsilon": float("nan")}, "epsilon is NaN"),
    ({"epsilon": float("inf")}, "epsilon is infinite"),
    ({"epsilon": 0.0}, "epsilon must be > 0"),
    ({"epsilon": 1.0, "delta": 1.0}, r"delta must be in \[0, 1\)"),
    ({"epsilon": 1.0, "rho": 1.0}, "either epsilon"),
    ({"rho": -1.0}, "rho must be > 0"),
])
def test_invalid_budgets_are_refused(tmp_path, kwargs, message):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    with pytest.raises(PrivacyParameterError, match=message):
        ledger.set_budget("orders", **kwargs)
    assert ledger.budgets() == []


_WORKER = textwrap.dedent("""
    import sys
    from dp import BudgetLedger, BudgetExceededError, ChargeLine
    ledger = BudgetLedger(sys.argv[1])
    line = ChargeLine("count", "discrete Laplace", "1", 1.0, 0.07, 0.0, 0.0, 3.0)
    won = 0
    for _ in range(int(sys.argv[2])):
        try:
            ledger.charge("orders", "all", [line], analyst="racer", purpose="race", query="count", features=[])
            won += 1
        except BudgetExceededError:
            pass
    print(won)
""")


def test_racing_processes_never_spend_more_than_the_budget(tmp_path):
    path = tmp_path / "ledger.sqlite"
    BudgetLedger(path).set_budget("orders", epsilon=1.0)
    processes = [subprocess.Popen([sys.executable, "-c", _WORKER, str(path), "8"], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in processes]
    assert all(p.returncode == 0 for p in processes), [err for _, err in results]
    won = sum(int(out) for out, _ in results)
    spent = BudgetLedger(path).spent("orders")["epsilon"]
    assert won == 14                                  # floor(1.0 / 0.07) of the 32 attempts fit
    assert spent == pytest.approx(14 * 0.07) and spent <= 1.0
    assert math.fsum(c["epsilon"] for c in BudgetLedger(path).charges()) <= 1.0


def test_release_marks_are_appended_and_charge_rows_never_change(tmp_path):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", epsilon=1.0)
    release_id = _charge(ledger, epsilon=0.25)
    before = sqlite3.connect(tmp_path / "ledger.sqlite").execute("SELECT * FROM budget_charges").fetchall()
    ledger.mark_released(release_id)
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        assert db.execute("SELECT * FROM budget_charges").fetchall() == before
        assert db.execute("SELECT release_id FROM budget_releases").fetchall() == [(release_id,)]
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE budget_charges SET epsilon = 0")
    assert ledger.charges()[0]["released_at"] is not None
    assert all(report.ok for report in ledger.verify())


def test_running_totals_match_the_sum_of_the_charges(tmp_path):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", epsilon=10.0, delta=1e-5)
    ledger.set_budget("orders", "2026-11", epsilon=10.0)
    costs = [0.1, 0.2, 0.3, 1 / 3, 0.7, 1e-3]
    for index, epsilon in enumerate(costs):
        _charge(ledger, epsilon=epsilon, delta=1e-7 * index)
    _charge(ledger, epsilon=5.0, period="2026-11")
    assert ledger.spent("orders") == {"epsilon": math.fsum(costs), "delta": math.fsum(1e-7 * i for i in range(6)),
                                      "rho": 0.0}
    assert ledger.spent("orders", "2026-11")["epsilon"] == 5.0 and ledger.spent("device_events")["epsilon"] == 0


def test_a_ledger_made_before_chaining_is_migrated_in_place(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as db:   # the budget tables as earlier versions made them
        db.executescript("""
            CREATE TABLE budget_limits (id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL,
                period TEXT NOT NULL, measure TEXT NOT NULL, epsilon REAL, delta REAL, rho REAL, cap_epsilon REAL,
                cap_rho REAL, set_by TEXT NOT NULL, set_at TEXT NOT NULL, note TEXT NOT NULL DEFAULT '');
            CREATE TABLE budget_charges (id INTEGER PRIMARY KEY AUTOINCREMENT, release_id TEXT NOT NULL,
                dataset TEXT NOT NULL, period TEXT NOT NULL, analyst TEXT NOT NULL, purpose TEXT NOT NULL,
                query TEXT NOT NULL, aggregate TEXT NOT NULL, mechanism TEXT NOT NULL, sensitivity TEXT NOT NULL,
                noise_scale REAL NOT NULL, epsilon REAL NOT NULL, delta REAL NOT NULL, rho REAL NOT NULL,
                half_width_95 REAL, features TEXT NOT NULL, charged_at TEXT NOT NULL, released_at TEXT);
            CREATE INDEX budget_charges_by_dataset ON budget_charges (dataset, period);
            INSERT INTO budget_limits (dataset, period, measure, epsilon, delta, set_by, set_at) VALUES
                ('orders', 'all', 'approximate', 1.0, 0.0, 'rev', '2026-01-01T00:00:00+00:00'),
                ('orders', 'all', 'approximate', 5.0, 0.0, 'rev', '2026-02-01T00:00:00+00:00');
            INSERT INTO budget_charges (release_id, dataset, period, analyst, purpose, query, aggregate, mechanism,
                sensitivity, noise_scale, epsilon, delta, rho, features, charged_at, released_at) VALUES
                ('r1', 'orders', 'all', 'ana', 'p', 'count', 'count', 'laplace', '1', 1.0, 0.5, 0, 0, '',
                 '2026-02-02T00:00:00+00:00', '2026-02-02T00:00:01+00:00'),
                ('r2', 'orders', 'all', 'ana', 'p', 'count', 'count', 'laplace', '1', 1.0, 0.25, 0, 0, '',
                 '2026-02-03T00:00:00+00:00', NULL);
        """)
    ledger = BudgetLedger(path)
    assert ledger.spent("orders")["epsilon"] == 0.75
    _charge(ledger, epsilon=0.25)
    assert ledger.spent("orders")["epsilon"] == 1.0
    reports = {report.table: report for report in ledger.verify()}
    assert all(report.ok for report in reports.values())
    assert (reports["budget_charges"].migrated_rows, reports["budget_charges"].rows) == (2, 3)
    assert reports["budget_limits"].migrated_rows == 2
    raise_ = ledger.changes()[1]
    assert raise_.raised and raise_.old["epsilon"] == 1.0 and raise_.new["epsilon"] == 5.0
    assert [c["released_at"] is not None for c in ledger.charges()] == [True, False, False]


def test_the_review_plot_spans_the_releases_not_years(tmp_path, monkeypatch):
    from dp.review import _plot, build_review

    moments = iter(datetime(2022, 1, 1, tzinfo=UTC) + timedelta(seconds=s) for s in range(0, 10_000_000, 1))
    monkeypatch.setattr("dp.budget._now", lambda: next(moments).isoformat(timespec="microseconds"))
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", epsilon=5.0, set_by="rev")   # years before the releases
    monkeypatch.setattr("dp.budget._now", lambda: datetime(2026, 11, 2, 9, tzinfo=UTC).isoformat())
    for _ in range(3):   # three releases at one moment
        _charge(ledger, epsilon=0.1)
    start, end = _plot(build_review(ledger), tmp_path / "plot.png")
    assert timedelta(minutes=1) < end - start <= timedelta(minutes=3)
    assert start < datetime(2026, 11, 2, 9) < end
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
