"""Ledgers through the command line: tampering is refused or found, budgets are bound to the data's tables."""

from __future__ import annotations

import shutil
import sqlite3

import pandas as pd
import pyarrow.dataset as ds
import pytest

from dp import BudgetLedger, PrivateSession, UnregisteredDatasetError
from portrait_cli import run_cli


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo workspace (300 accounts, every stage run once); tests that tamper work on a copy."""
    root = tmp_path_factory.mktemp("ledgers") / "demo"
    assert run_cli("demo", "--dir", str(root), "--accounts", "300") == 0
    return root


@pytest.fixture()
def copy(demo, tmp_path):
    shutil.copytree(demo, tmp_path / "demo")
    return tmp_path / "demo"


def _verify(root, capsys) -> tuple[int, dict[str, str], str]:
    code = run_cli("ledger", "verify", "--workspace", str(root / "workspace"))
    captured = capsys.readouterr()
    lines = {line.split()[0]: line for line in captured.out.splitlines() if line.strip()}
    return code, lines, captured.err


def _sql(root, *statements: str) -> None:
    with sqlite3.connect(root / "workspace" / "ledger.sqlite") as db:
        for statement in statements:
            db.execute(statement)


def _dp(root, *argv: str) -> int:
    return run_cli("dp", "--workspace", str(root / "workspace"), "--key-file", str(root / "keys" / "master.key"),
                   "--as-of", "2026-11-02", "--epsilon", "0.1", "--count", *argv)


def test_every_chain_verifies_and_the_review_prints_the_same_heads(demo, capsys):
    code, lines, _ = _verify(demo, capsys)
    assert code == 0
    assert {"consent_events", "audit_gate_decisions", "budget_charges", "budget_limits", "budget_releases",
            "budget_datasets"} <= set(lines)
    assert all(line.endswith("ok") for line in lines.values())
    assert run_cli("budget", "report", "--workspace", str(demo / "workspace"), "--out", str(demo / "review2")) == 0
    markdown = (demo / "review2" / "review.md").read_text()
    for table in ("consent_events", "budget_charges"):
        head = lines[table].split("head ")[1].split()[0]
        assert f"| {table} | " in markdown and f"`{head}` | ok |" in markdown
    assert "Ranked by: " in markdown   # the non-personalized lists' ranking, read from the workspace


def test_application_updates_and_deletes_are_refused(demo):
    with sqlite3.connect(demo / "workspace" / "ledger.sqlite") as db:
        for statement in ("DELETE FROM budget_charges", "UPDATE budget_charges SET epsilon = 0",
                          "DELETE FROM budget_limits", "UPDATE budget_limits SET epsilon = 1000",
                          "DELETE FROM consent_events WHERE event_type = 'revoke'",
                          "UPDATE consent_events SET event_type = 'grant'"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(statement)


def test_a_deleted_charge_is_found_and_flagged_in_the_review(copy, capsys):
    _sql(copy, "DROP TRIGGER IF EXISTS budget_charges_chain_no_delete",
         "DELETE FROM budget_charges WHERE id = (SELECT MIN(id) FROM budget_charges)")
    code, lines, err = _verify(copy, capsys)
    assert code == 2 and "BROKEN at row 1" in lines["budget_charges"] and lines["consent_events"].endswith("ok")
    assert err.startswith("portrait: error: ledger") and len(err.strip().splitlines()) == 1
    assert run_cli("budget", "show", "--workspace", str(copy / "workspace")) == 0
    assert "flag: ledger chain broken: budget_charges" in capsys.readouterr().out


def test_run_refuses_a_consent_ledger_whose_revocations_were_deleted(copy, capsys):
    _sql(copy, "DROP TRIGGER IF EXISTS consent_events_chain_no_delete",
         "DROP TRIGGER IF EXISTS consent_events_append_only",
         "DELETE FROM consent_events WHERE event_type = 'revoke'")
    assert run_cli("run", "--workspace", str(copy / "workspace"), "--key-file", str(copy / "keys" / "master.key"),
                   "--as-of", "2026-11-02T00:00:00Z") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "consent ledger" in err[0] and "consent_events" in err[0] and "broken" in err[0]


def test_an_erased_account_s_consent_history_put_back_behind_its_redaction_marks_is_found(copy, capsys):
    # An insider who kept the rows writes an erased account's id back into its redacted consent events,
    # leaving the marks: the chain's links still hold, so only the redaction check can find it.
    workspace, key_file = copy / "workspace", copy / "keys" / "master.key"
    with sqlite3.connect(workspace / "ledger.sqlite") as db:
        account = db.execute("SELECT account_id FROM consent_events WHERE chain_redacted = 0 ORDER BY seq "
                             "LIMIT 1 OFFSET 50").fetchone()[0]
    assert run_cli("dsr", "erase", "--account", account, "--key-file", str(key_file),
                   "--workspace", str(workspace)) == 0
    assert _verify(copy, capsys)[0] == 0
    _sql(copy, "DROP TRIGGER IF EXISTS consent_events_chain_no_update",
         f"UPDATE consent_events SET account_id = '{account}' WHERE chain_redacted = 1 AND seq = "
         f"(SELECT min(seq) FROM consent_events WHERE chain_redacted = 1 AND account_id LIKE 'redacted:%' AND "
         f"chain_content IN (SELECT content FROM ledger_redactions WHERE reason = 'erasure request'))")
    code, lines, _ = _verify(copy, capsys)
    assert code != 0 and "redacted without a matching" in lines["consent_events"]
    assert run_cli("run", "--workspace", str(workspace), "--key-file", str(key_file),
                   "--as-of", "2026-11-02T00:00:00Z") == 2
    assert "consent_events" in capsys.readouterr().err


def test_a_release_on_a_table_charges_that_tables_dataset(copy, capsys):
    ledger = BudgetLedger(copy / "workspace" / "ledger.sqlite")
    assert _dp(copy, "--table", "device_events", "--dataset", "orders") == 2
    err = capsys.readouterr().err
    assert "releases on table 'device_events' are charged to dataset 'device_events'" in err
    assert _dp(copy, "--table", "device_events") == 2   # its own dataset has no budget yet
    assert "no privacy budget is set for dataset 'device_events'" in capsys.readouterr().err
    spent = ledger.spent("orders")["epsilon"]
    assert _dp(copy, "--table", "orders") == 0
    assert ledger.spent("orders")["epsilon"] == pytest.approx(spent + 0.1)
    assert "to 'orders'" in capsys.readouterr().out


def test_only_registered_datasets_have_budgets(copy, capsys):
    assert run_cli("budget", "set", "--workspace", str(copy / "workspace"), "--dataset", "race",
                   "--epsilon", "1") == 2
    assert "dataset 'race' is not registered" in capsys.readouterr().err
    frame = pd.DataFrame({"person_id": ["a", "b"], "amount": [1.0, 2.0]})
    with pytest.raises(UnregisteredDatasetError, match="not registered"):
        PrivateSession(frame, dataset="race", ledger=copy / "workspace" / "ledger.sqlite",
                       purpose="product_improvement")


def test_a_budget_raise_needs_a_reason_and_is_flagged(copy, capsys):
    workspace = str(copy / "workspace")
    assert run_cli("budget", "set", "--workspace", workspace, "--dataset", "orders", "--epsilon", "1000") == 2
    assert "say why it changes" in capsys.readouterr().err
    assert run_cli("budget", "set", "--workspace", workspace, "--dataset", "orders", "--epsilon", "1000",
                   "--set-by", "mallory", "--note", "more dashboards") == 0
    capsys.readouterr()
    assert run_cli("budget", "show", "--workspace", workspace) == 0
    shown = capsys.readouterr().out
    assert "flag: budget raised: orders/all: epsilon 1, delta 0 -> epsilon 1000, delta 0 by mallory" in shown
    change = BudgetLedger(copy / "workspace" / "ledger.sqlite").changes()[-1]
    assert (change.old["epsilon"], change.new["epsilon"], change.reason, change.raised) == (
        1.0, 1000.0, "more dashboards", True)


def test_a_session_on_an_analytics_zone_table_charges_only_that_tables_dataset(demo):
    orders = ds.dataset(demo / "workspace" / "pseudonymized" / "orders", format="parquet").to_table()
    ledger = BudgetLedger(demo / "workspace" / "ledger.sqlite")
    with pytest.raises(UnregisteredDatasetError, match="from table 'orders', whose releases are charged to dataset "
                                                       "'orders', not 'device_events'"):
        PrivateSession(orders, dataset="device_events", ledger=ledger, purpose="product_improvement")
    assert PrivateSession(orders, dataset="orders", ledger=ledger, purpose="product_improvement").dataset == "orders"


@pytest.mark.parametrize(("statement", "message"), [
    ("UPDATE budget_charges SET total_epsilon = '0' WHERE id = (SELECT MAX(id) FROM budget_charges)",
     "no longer matches its hash"),
    ("DELETE FROM budget_charges WHERE id = (SELECT MAX(id) FROM budget_charges)", "is not the recorded head"),
])
def test_budget_given_back_behind_the_triggers_is_refused_at_the_next_charge(copy, capsys, statement, message):
    _sql(copy, "DROP TRIGGER budget_charges_chain_no_update", "DROP TRIGGER budget_charges_chain_no_delete",
         statement,   # then triggers of the same names put back, so only the rows tell
         "CREATE TRIGGER budget_charges_chain_no_update BEFORE UPDATE ON budget_charges BEGIN SELECT 1; END",
         "CREATE TRIGGER budget_charges_chain_no_delete BEFORE DELETE ON budget_charges BEGIN SELECT 1; END")
    assert _dp(copy, "--table", "orders") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "budget_charges" in err[0] and message in err[0]
