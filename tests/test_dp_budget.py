"""The budget ledger: charges add up, refusals charge nothing, racing processes never overspend."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
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
