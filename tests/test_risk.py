"""Transaction safety through the real job: planted incidents are scored, and the risk outputs are walled.

One workspace: ``portrait synth`` (with its ground truth kept apart), ``portrait ingest`` and
``portrait run`` on the command line. The truth says which accounts were taken over or burst and
when; the job never reads it, the tests map it to PERSON pseudonyms with the key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from dp import PrivateSession, UnregisteredDatasetError
from pipelines import run as job_module
from pipelines.risk import SCORED_WEEKS, read_risk
from pipelines.run import STAGES, Stage, run_pipeline
from pipelines.workspace import Workspace
from portrait_cli import run_cli
from profiling.keys import load_master_key
from profiling.pseudonyms import PERSON, pseudonymize
from profiling.purposes import CATALOGUE, OutputAccessError

AS_OF = "2026-11-01T00:00:00Z"
_WALLED_OFF = ("personalization", "marketing_messages", "product_improvement", "cross_device_sync",
               "service_provision")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("risk")
    assert run_cli("synth", "--out", root / "raw", "--accounts", 1500, "--seed", 5, "--truth", root / "truth") == 0
    assert run_cli("ingest", "--raw", root / "raw", "--workspace", root / "ws") == 0
    assert run_cli("keys", "init", "--key-file", root / "master.key") == 0
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_cli("run", "--workspace", root / "ws", "--key-file", root / "master.key", "--as-of", AS_OF) == 0
    return root, Workspace(root / "ws")


def _incidents(root) -> pd.DataFrame:
    """The truth's incidents with the PERSON pseudonym of their account."""
    truth = pq.read_table(root / "truth" / "risk_incidents").to_pandas()
    key = load_master_key(root / "master.key")
    truth["person_id"] = pseudonymize(pa.array(truth["account_id"]), key, PERSON,
                                      identifier="account_id").to_pylist()
    return truth


def _manifests(workspace: Workspace) -> dict[str, bytes]:
    return {str(p.relative_to(workspace.root)): p.read_bytes()
            for p in (workspace.root / "outputs").rglob("_manifest.json")}


# --- The synthetic incidents ------------------------------------------------------------------------

def test_planted_incidents_are_ordinary_rows_and_their_truth_lies_apart(job):
    root, workspace = job
    truth = _incidents(root)
    accounts = pq.read_table(root / "raw" / "accounts").num_rows
    assert set(truth["pattern"]) == {"account_takeover", "order_burst"}
    assert 0.004 <= truth["account_id"].nunique() / accounts <= 0.02       # about 1% of accounts
    report = json.loads(workspace.ingest_report.read_text(encoding="utf-8"))["tables"]
    assert all(report[t]["rejected"] == 0 for t in ("orders", "waybills", "devices", "device_events"))
    assert not (root / "raw" / "risk_incidents").exists()
    orders = pq.read_table(root / "raw" / "orders", columns=["account_id", "placed_at"]).to_pandas()
    for incident in truth.itertuples():   # every incident shows as the account's orders in its span
        mine = orders[(orders["account_id"] == incident.account_id)
                      & orders["placed_at"].between(incident.started_at, incident.ended_at)]
        assert len(mine) >= 1


# --- Scoring ----------------------------------------------------------------------------------------

def test_a_planted_takeover_is_scored_high(job):
    root, workspace = job
    scores = read_risk(workspace, "scores", purpose="transaction_safety").to_pandas()
    truth = _incidents(root)
    takeovers = truth[(truth["pattern"] == "account_takeover")
                      & (truth["started_at"] >= scores["week_start"].min())]
    hit = scores.merge(takeovers, on="person_id")
    hit = hit[(hit["started_at"] < hit["week_end"]) & (hit["ended_at"] >= hit["week_start"])]
    assert len(takeovers) >= 2 and set(hit["person_id"]) == set(takeovers["person_id"])
    top = scores["score"].quantile(0.95)
    assert (hit.groupby("person_id")["score"].max() > top).all(), hit[["score", "rule_score"]]
    assert scores["week_end"].max() == pd.Timestamp(AS_OF)
    assert scores["week_start"].min() == pd.Timestamp(AS_OF) - pd.Timedelta(weeks=SCORED_WEEKS)


def test_the_scores_name_persons_by_pseudonym_only(job):
    root, workspace = job
    scores = read_risk(workspace, "scores", purpose="transaction_safety")
    accounts = set(pq.read_table(root / "raw" / "accounts", columns=["account_id"]).column(0).to_pylist())
    assert accounts.isdisjoint(scores.column("person_id").to_pylist())
    persons = set(ds.dataset(workspace.pseudonymized("accounts"), format="parquet").to_table(
        columns=["person_id"]).column(0).to_pylist())
    assert set(scores.column("person_id").to_pylist()) <= persons


# --- The wall ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("purpose", _WALLED_OFF)
def test_no_other_purpose_reads_the_risk_output(job, purpose):
    _, workspace = job
    for table in ("scores", "features"):
        with pytest.raises(OutputAccessError, match=f"purpose '{purpose}' may not read the workspace output "
                                                    "'risk'.*only transaction_safety may read it"):
            read_risk(workspace, table, purpose=purpose)
    assert read_risk(workspace, "features", purpose="transaction_safety").num_rows > 0


def test_only_transaction_safety_is_given_the_risk_output():
    assert [name for name, entry in CATALOGUE.items() if "risk" in entry.outputs] == ["transaction_safety"]
    assert CATALOGUE["transaction_safety"].outputs == frozenset({"risk"})


@pytest.mark.parametrize("purpose", ["personalization", "marketing_messages"])
def test_a_stage_that_declares_reading_risk_fails_the_job_before_any_stage(job, monkeypatch, capsys, purpose):
    root, workspace = job
    before = _manifests(workspace)
    peek = Stage("peek", "a stage reading what it must not", lambda context: [], purpose=purpose,
                 reads=("outputs/risk",))
    monkeypatch.setattr(job_module, "STAGES", [*STAGES, peek])
    capsys.readouterr()
    assert run_cli("run", "--workspace", workspace.root, "--key-file", root / "master.key", "--as-of", AS_OF) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"portrait: error: stage 'peek': purpose '{purpose}' may not read the workspace "
                            "output 'risk'") and error.count("\n") == 1
    assert _manifests(workspace) == before   # refused before anything ran: every output as it was


def test_a_personalization_stage_opening_risk_fails_with_a_clear_error(job, monkeypatch):
    root, workspace = job

    def sneak(context):
        return [{"stage": "sneak", "rows": len(list(context.output("risk").rglob("*.parquet")))}]

    undeclared = Stage("sneak", "reads risk without declaring it", sneak, purpose="personalization")
    declared = Stage("sneak", "declares risk under transaction safety, then reads it", sneak,
                     purpose="transaction_safety", reads=("outputs/risk",))
    monkeypatch.setattr(job_module, "STAGES", [undeclared])
    with pytest.raises(OutputAccessError, match="stage 'sneak' reads outputs/risk without declaring it"):
        run_pipeline(workspace, root / "master.key", dt.datetime(2026, 11, 1, tzinfo=dt.UTC), progress=False)
    monkeypatch.setattr(job_module, "STAGES", [declared])
    assert run_pipeline(workspace, root / "master.key", dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
                        progress=False)[-1]["rows"] == 2


def test_every_stage_of_the_job_declares_inputs_its_purpose_may_read():
    job_module.check_stage_inputs(STAGES)
    readers_of_outputs = {stage.name: stage.purpose for stage in STAGES
                          if any(folder.startswith("outputs/") for folder in stage.reads)}
    assert readers_of_outputs == {"portraits": "personalization", "recommendations": "personalization"}
    risk = next(stage for stage in STAGES if stage.name == "risk")
    assert risk.purpose == "transaction_safety"
    assert all(folder.startswith("pseudonymized/") for folder in risk.reads)


@pytest.mark.parametrize("table", ["risk", "outputs/risk/scores", "risk/features"])
def test_portrait_dp_refuses_the_risk_output(job, capsys, table):
    root, workspace = job
    capsys.readouterr()
    assert run_cli("dp", "--workspace", workspace.root, "--table", table, "--count", "--epsilon", "0.1",
                   "--as-of", AS_OF, "--key-file", root / "master.key") == 2
    assert capsys.readouterr().err == ("portrait: error: purpose 'product_improvement' may not read the workspace "
                                       "output 'risk' (WS/outputs/risk): only transaction_safety may read it "
                                       "(profiling.purposes)\n")


def test_a_dp_session_refuses_risk_scores_under_every_dataset(job):
    _, workspace = job
    scores = read_risk(workspace, "scores", purpose="transaction_safety")
    for dataset in ("orders", "accounts", "device_events"):
        with pytest.raises(UnregisteredDatasetError, match="'outputs/risk/scores'"):
            PrivateSession(scores, dataset=dataset, ledger=workspace.ledger, purpose="product_improvement")


def test_an_erased_person_leaves_the_risk_output(job, tmp_path):
    root, workspace = job
    scores = read_risk(workspace, "scores", purpose="transaction_safety").to_pandas()
    truth = _incidents(root)
    account, person = next((a, p) for a, p in zip(truth["account_id"], truth["person_id"], strict=True)
                           if p in set(scores["person_id"]))
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_cli("dsr", "erase", "--workspace", workspace.root, "--account", account,
                       "--key-file", root / "master.key") == 0
    for table in ("scores", "features"):
        assert person not in set(read_risk(workspace, table, purpose="transaction_safety")
                                 .column("person_id").to_pylist())
