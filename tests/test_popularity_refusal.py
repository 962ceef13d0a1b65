"""The popularity stage of `portrait run` refuses a release the budget cannot cover before it reads a single order."""

from __future__ import annotations

import datetime as dt

import pytest

from dp import BudgetLedger
from pipelines.ingest import ingest
from pipelines.run import run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.errors import PortraitError
from profiling.keys import create_key_file

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def zone(tmp_path_factory):
    """A workspace whose analytics zone is written, with no privacy budget set, and its key file."""
    root = tmp_path_factory.mktemp("popularity-refusal")
    generate(root / "raw", accounts=200, seed=3, catalogue_items=100, progress=False)
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, progress=False)
    key_file = root / "keys" / "master.key"
    create_key_file(key_file)
    run_pipeline(workspace, key_file, AS_OF, progress=False, stages=["consent-ledger", "pseudonymize"])
    return workspace, key_file


def _popularity(workspace: Workspace, key_file) -> dict:
    rows = run_pipeline(workspace, key_file, AS_OF, progress=False, stages=["popularity"])
    return next(row for row in rows if row["stage"] == "popularity")


def test_without_a_budget_no_order_is_read(zone):
    """The refusal comes before the orders are opened: with them damaged it is still the refusal,
    and with a budget the damage is what stops the release."""
    workspace, key_file = zone
    orders = next(workspace.pseudonymized("orders").glob("*.parquet"))
    original = orders.read_bytes()
    orders.write_bytes(original[:-100] + bytes(100))  # damaged: its manifest no longer matches
    try:
        row = _popularity(workspace, key_file)
        assert row["rows"] == 0 and row["epsilon"] == 0.0
        assert row["note"].startswith("no privacy budget is set for dataset 'orders'")
        assert not workspace.outputs("popularity").exists()
        BudgetLedger(workspace.ledger).set_budget("orders", epsilon=0.05, set_by="test")  # below one release
        assert _popularity(workspace, key_file)["note"].startswith("release refused, nothing charged or released")
        BudgetLedger(workspace.ledger).set_budget("orders", epsilon=1.0, set_by="test", note="one release")
        with pytest.raises(PortraitError, match="orders"):
            _popularity(workspace, key_file)
    finally:
        orders.write_bytes(original)
    row = _popularity(workspace, key_file)
    assert row["rows"] == 100 and row["epsilon"] == 0.1
    assert BudgetLedger(workspace.ledger).remaining("orders")["epsilon"] == pytest.approx(0.9)
