"""`portrait run --config`, `portrait recommend` and `portrait dp` on a small demo workspace."""

from __future__ import annotations

import sqlite3
import textwrap

import pytest

from dp import BudgetLedger
from portrait_cli import run_cli


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs") / "demo"
    assert run_cli("demo", "--dir", str(root), "--accounts", "300") == 0
    config = root / "job.toml"
    config.write_text(textwrap.dedent("""
        workspace = "workspace"
        key_file = "keys/master.key"
        as_of = "2026-11-02T00:00:00Z"
        [recommendations]
        k = 4
        [budget.orders]
        epsilon = 3.0
    """), encoding="utf-8")
    return root, config


def test_run_from_a_config_file_sets_its_budget_once(demo, capsys):
    root, config = demo
    assert run_cli("run", "--config", str(config)) == 0
    assert "portraits" in capsys.readouterr().out
    ledger = BudgetLedger(root / "workspace" / "ledger.sqlite")
    assert ledger.budget("orders").epsilon == 3.0
    assert run_cli("run", "--config", str(config)) == 0  # the same budget is not set again
    capsys.readouterr()
    with sqlite3.connect(root / "workspace" / "ledger.sqlite") as db:
        settings = db.execute("SELECT count(*) FROM budget_limits WHERE set_by LIKE 'config %'").fetchone()[0]
    assert settings == 1


def test_recommend_refreshes_the_lists_and_shows_one(demo, capsys):
    root, config = demo
    assert run_cli("recommend", "--config", str(config), "--k", "2") == 0
    assert "recommendations" in capsys.readouterr().out
    assert run_cli("recommend", "--config", str(config), "--show", "A0000000001") == 0
    out = capsys.readouterr().out
    assert "item_id" in out or "has no list" in out


def test_dp_explains_without_charging_then_releases_with_a_charge(demo, capsys):
    root, _ = demo
    ws, key = str(root / "workspace"), str(root / "keys" / "master.key")
    ledger = BudgetLedger(root / "workspace" / "ledger.sqlite")
    before = ledger.remaining("orders")["epsilon"]
    common = ["dp", "--workspace", ws, "--key-file", key, "--as-of", "2026-11-01", "--table", "orders",
              "--by", "payment_institution", "--count", "--mean", "amount:0:1000", "--epsilon", "0.25"]
    assert run_cli(*common, "--explain") == 0
    assert "nothing was charged" in capsys.readouterr().out
    assert ledger.remaining("orders")["epsilon"] == pytest.approx(before)
    assert run_cli(*common) == 0
    out = capsys.readouterr().out
    assert "alipay" in out and "count_ci95" in out
    assert ledger.remaining("orders")["epsilon"] == pytest.approx(before - 0.25)


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--workspace", "nowhere"], "no as-of moment"),
    (["dp", "--table", "nosuch", "--as-of", "2026-11-01", "--epsilon", "1", "--count"],
     "is not a table of the analytics zone; use one of catalogue, accounts"),
    (["dp", "--table", "orders", "--as-of", "2026-11-01", "--epsilon", "1", "--sum", "amount:0"], "expected 3 parts"),
])
def test_mistakes_are_one_line_and_exit_2(demo, capsys, argv, message):
    root, _ = demo
    if argv[0] == "dp":
        argv = [*argv, "--workspace", str(root / "workspace"), "--key-file", str(root / "keys" / "master.key")]
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("portrait: error:") and message in err[0]
