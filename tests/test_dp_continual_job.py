"""The daily job under a continual schedule: `portrait budget schedule` charges once, each run releases its day."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow.dataset as ds
import pytest

from dp import BudgetLedger
from pipelines.ingest import ingest
from pipelines.popularity import SCHEDULE, popularity_release_id, popularity_schedule
from pipelines.recommend import non_personalized_ranking
from pipelines.run import run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from portrait_cli import run_cli
from profiling.keys import create_key_file

START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


def _popularity(workspace: Workspace) -> tuple[dict, list[bytes]]:
    folder = workspace.outputs("popularity")
    metadata = {k.decode(): v.decode() for k, v in (ds.dataset(folder, format="parquet").schema.metadata or {}).items()
                if k.startswith(b"portrait.")}
    return metadata, sorted(p.read_bytes() for p in folder.glob("*.parquet"))


def _note(summary: list[dict]) -> str:
    return [row.get("note", "") for row in summary if row["stage"] == "popularity"][0]


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory):
    root = tmp_path_factory.mktemp("continual-job")
    generate(root / "raw", accounts=300, seed=11, catalogue_items=120, progress=False)
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, progress=False)
    key_file = root / "keys" / "master.key"
    create_key_file(key_file)
    assert run_cli("budget", "schedule", "--workspace", workspace.root, "--start", "2026-10-01T00:00:00Z",
                   "--epsilon", "0.8") == 2                     # no budget set yet: nothing charged, nothing recorded
    assert run_cli("budget", "set", "--workspace", workspace.root, "--dataset", "orders", "--epsilon", "1") == 0
    assert run_cli("budget", "schedule", "--workspace", workspace.root, "--start", "2026-10-01T00:00:00Z",
                   "--days", "5", "--epsilon", "0.8") == 0     # before any run: the keys are the ingested catalogue's
    assert run_cli("run", "--workspace", workspace.root, "--key-file", key_file, "--as-of",
                   "2026-10-03T06:00:00Z") == 0                 # the first run, the whole job, on day 2's morning
    return workspace, key_file


def test_the_schedule_is_charged_once_and_the_job_releases_its_day(scheduled):
    workspace, _ = scheduled
    ledger = BudgetLedger(workspace.ledger)
    counter = popularity_schedule(workspace)
    assert counter is not None and counter.record["name"] == SCHEDULE and counter.record["horizon_days"] == 5
    assert ledger.spent("orders")["epsilon"] == pytest.approx(0.8) and len(ledger.charges("orders")) == 1
    metadata, _ = _popularity(workspace)
    assert metadata["portrait.popularity_schedule"] == counter.schedule_id
    assert metadata["portrait.popularity_day"] == "2"
    assert [d["day"] for d in counter.released_days()] == [2]
    assert metadata["portrait.popularity_release"] == counter.released_days()[0]["release_id"]
    assert popularity_release_id(workspace) == counter.schedule_id
    assert non_personalized_ranking(workspace.outputs("recommendations")) == f"dp_popularity:{counter.schedule_id}"


def test_a_second_run_the_same_day_keeps_the_release_and_later_days_charge_nothing(scheduled):
    workspace, key_file = scheduled
    ledger = BudgetLedger(workspace.ledger)
    _, before = _popularity(workspace)
    again = run_pipeline(workspace, key_file, START + dt.timedelta(days=2, hours=20), progress=False,
                         stages=["popularity"])
    assert "released day 2 already; the release in place is kept" in _note(again)
    assert _popularity(workspace)[1] == before
    later = run_pipeline(workspace, key_file, START + dt.timedelta(days=5), progress=False, stages=["popularity"])
    assert "day 5 of 5 (charged once at creation" in _note(later)
    assert _popularity(workspace)[0]["portrait.popularity_day"] == "5"
    past = run_pipeline(workspace, key_file, START + dt.timedelta(days=7), progress=False, stages=["popularity"])
    assert "covers days 1 to 5; day 7 is outside it and its budget" in _note(past)
    assert _popularity(workspace)[0]["portrait.popularity_day"] == "5"
    assert ledger.spent("orders")["epsilon"] == pytest.approx(0.8) and len(ledger.charges("orders")) == 1
    assert [d["day"] for d in popularity_schedule(workspace).released_days()] == [2, 5]


def test_the_review_and_budget_show_carry_the_schedule(scheduled, tmp_path, capsys):
    workspace, _ = scheduled
    assert run_cli("budget", "report", "--workspace", workspace.root, "--out", tmp_path / "review") == 0
    review = json.loads((tmp_path / "review" / "review.json").read_text())
    [schedule] = review["schedules"]
    assert schedule["horizon_days"] == 5 and schedule["charged_once"]["epsilon"] == pytest.approx(0.8)
    assert schedule["days_released"] >= 1 and schedule["half_width_95_last_day"] > 0
    assert not [f for f in review["flags"] if f["kind"] == "charged, not released"]
    assert "## Continual schedules" in (tmp_path / "review" / "review.md").read_text()
    capsys.readouterr()
    assert run_cli("budget", "show", "--workspace", workspace.root) == 0
    assert schedule["schedule_id"] in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["--start", "2026-12-01T00:00:00"], "start of continual schedule 'popularity' must be a moment with a UTC offset"),
    (["--start", "2026-12-01T00:00:00Z", "--days", "0"], "horizon_days in continual schedule 'popularity' must be a positive integer"),
    (["--start", "2026-12-01T00:00:00Z", "--epsilon", "nan"], "epsilon is NaN"),
    (["--start", "2026-12-01T00:00:00Z", "--epsilon", "5"], "release refused, nothing charged"),
    (["--start", "2026-10-04T00:00:00Z", "--epsilon", "0.1"], "runs until 2026-10-06"),
])
def test_a_bad_schedule_is_one_error_line_and_charges_nothing(scheduled, capsys, arguments, message):
    workspace, _ = scheduled
    spent = BudgetLedger(workspace.ledger).spent("orders")
    capsys.readouterr()
    assert run_cli("budget", "schedule", "--workspace", workspace.root, *arguments) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("portrait: error: ") and message in error and "\n" not in error
    assert BudgetLedger(workspace.ledger).spent("orders") == spent and len(BudgetLedger(workspace.ledger).schedules()) == 1


def test_scheduling_at_a_mistyped_workspace_creates_nothing(tmp_path, capsys):
    typo = tmp_path / "no-such-workspace"
    assert run_cli("budget", "schedule", "--workspace", typo, "--start", "2026-12-01T00:00:00Z", "--epsilon", "1") == 2
    assert "does not exist (check --workspace)" in capsys.readouterr().err and not typo.exists()
