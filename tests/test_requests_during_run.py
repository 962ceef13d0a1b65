"""Requests made while a job runs: a real ``portrait run`` and a real ``portrait dsr erase``, concurrently.

The erase is started once the run is inside its stages (its first staging folder exists); the
job lock makes it wait for the run, then it erases what the run published. Twenty rounds, each
erasing another person; after each, no Parquet file of the workspace names the person. Each round
also ingests the same raw data again (an erasure leaves the ingest report behind the ingested rows,
which the run's first stage checks), which the tombstones keep the erased out of.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import pipelines.cli as cli
from dp import BudgetLedger
from pipelines.ingest import ingest
from pipelines.popularity import DATASET as POPULARITY_DATASET
from pipelines.run import parse_as_of, run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.keys import create_key_file
from profiling.pseudonyms import MARKETING, PERSON, pseudonymize

AS_OF = "2026-11-01T00:00:00Z"
ROUNDS = 20


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A run workspace (150 accounts, a popularity budget), its raw data, key, key file, and ROUNDS persons the
    run served.

    Each chosen person is in the portraits, the recommendation lists and the marketing audience.
    """
    root = tmp_path_factory.mktemp("requests-during-run")
    generate(root / "raw", accounts=150, seed=3, progress=False)
    workspace = Workspace(root / "ws")
    key_file = root / "keys" / "master.key"
    key = create_key_file(key_file)
    ingest(root / "raw", workspace, key=key, progress=False)
    BudgetLedger(workspace.ledger).set_budget(POPULARITY_DATASET, epsilon=1_000.0, set_by="test")
    run_pipeline(workspace, key_file, parse_as_of(AS_OF), progress=False)
    accounts = workspace.read("accounts", ["account_id"]).column("account_id").combine_chunks()
    persons = pseudonymize(accounts, key, PERSON, identifier="account_id").to_pylist()
    marketing = pseudonymize(accounts, key, MARKETING, identifier="account_id").to_pylist()
    portraits = set(_column(workspace, "portraits", "person_id"))
    listed = set(_column(workspace, "recommendations", "person_id"))
    audience = set(_column(workspace, "marketing_audience", "marketing_id"))
    chosen = [(a, p, m) for a, p, m in zip(accounts.to_pylist(), persons, marketing)
              if p in portraits and p in listed and m in audience]
    assert len(chosen) >= ROUNDS, f"only {len(chosen)} persons are served by every output"
    return workspace, root / "raw", key, key_file, random.Random(11).sample(chosen, ROUNDS)


def _column(workspace: Workspace, output: str, column: str) -> list:
    return ds.dataset(workspace.outputs(output), format="parquet").to_table(columns=[column]) \
        .column(column).to_pylist()


def _files_naming(workspace: Workspace, values: set[str]) -> list[str]:
    """Parquet files under the workspace with a string (or list-of-strings) value among ``values``."""
    found = []
    for path in sorted(workspace.root.rglob("*.parquet")):
        if any(part.startswith(".") for part in path.relative_to(workspace.root).parts):
            continue  # staging and retired folders are the machinery of publishing
        table = pq.read_table(path)
        for column in table.columns:
            if pa.types.is_list(column.type):
                column = column.combine_chunks().flatten()
            if (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) \
                    and values & set(column.to_pylist()):
                found.append(str(path.relative_to(workspace.root)))
                break
    return found


def _portrait(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "-q", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "error"})


def _portrait_on_cue(*argv: str) -> subprocess.Popen:
    """``portrait *argv`` in a process that has imported everything and waits for a line on stdin to start, so the
    command reaches the workspace at the moment the test chooses (not after seconds of imports)."""
    code = "import sys; from pipelines import cli; sys.stdin.readline(); sys.exit(cli.main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "-q", *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "error"})


def _wait_for_stages(workspace: Workspace, run: subprocess.Popen) -> None:
    """Return once the run is inside its stages: its first staging folder exists."""
    deadline = time.monotonic() + 120
    while not list(workspace.root.glob(f".staging-{run.pid}-*")):
        assert run.poll() is None, f"the run ended before its stages could be observed: {run.communicate()}"
        assert time.monotonic() < deadline, "the run never reached its stages"
        time.sleep(0.005)


def test_an_erase_during_a_run_is_never_undone_by_the_run(served):
    workspace, raw, key, key_file, chosen = served
    delays = random.Random(5).choices([0.0, 0.1, 0.3, 0.6], k=ROUNDS)
    waited = 0
    for round_, ((account, person_id, marketing_id), delay) in enumerate(zip(chosen, delays), 1):
        erase = _portrait_on_cue("dsr", "erase", "--account", account, "--workspace", str(workspace.root),
                                 "--key-file", str(key_file))
        run = _portrait("run", "--workspace", str(workspace.root), "--key-file", str(key_file), "--as-of", AS_OF)
        ingest(raw, workspace, key=key, progress=False)  # done long before the run has imported its modules
        _wait_for_stages(workspace, run)
        time.sleep(delay)
        erase_out, erase_err = erase.communicate("go\n", timeout=300)
        run_out, run_err = run.communicate(timeout=300)
        assert run.returncode == 0, run_err
        assert erase.returncode == 0, erase_err
        assert f"erased account {account}" in erase_out
        waited += "waiting for the job holding workspace" in erase_err
        assert _files_naming(workspace, {account, person_id, marketing_id}) == [], \
            f"round {round_}: the run republished erased account {account}"
    assert waited > 0  # in some rounds at least, the erase had to wait for the run


def _holder(workspace: Workspace, seconds: float) -> subprocess.Popen:
    """A process holding the workspace's job lock for ``seconds`` (as a running job does); it says when it holds it."""
    code = ("import sys, time; from pipelines.workspace import Workspace\n"
            f"with Workspace({str(workspace.root)!r}).job_lock('portrait run'):\n"
            "    print('held', flush=True); time.sleep(float(sys.argv[1]))")
    holder = subprocess.Popen([sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def _bystander(workspace: Workspace, chosen) -> str:
    """An ingested account no round erases."""
    erased = {account for account, _, _ in chosen}
    return next(a for a in workspace.read("accounts", ["account_id"])["account_id"].to_pylist() if a not in erased)


def test_a_revocation_waits_for_the_job_holding_the_workspace_and_says_so(served, capsys):
    workspace, _, _, _, chosen = served
    account = _bystander(workspace, chosen)
    holder = _holder(workspace, 1.5)
    started = time.monotonic()
    code = cli.main(["consent", "revoke", "--account", account, "--purpose", "marketing_messages",
                     "--workspace", str(workspace.root)])
    waited = time.monotonic() - started
    captured = capsys.readouterr()
    holder.communicate(timeout=60)
    assert holder.returncode == 0
    assert code == 0 and f"recorded revoke marketing_messages for account {account}" in captured.out
    assert waited > 1.0  # it was recorded only once the job let go
    (line,) = captured.err.splitlines()
    assert line.startswith(f"portrait: waiting for the job holding workspace {workspace.root} (portrait run, "
                           f"pid {holder.pid}, started 20")


def test_a_killed_job_leaves_no_lock_behind(served, capsys):
    workspace, _, _, _, chosen = served
    holder = _holder(workspace, 600)
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=60)
    started = time.monotonic()
    code = cli.main(["consent", "dnd", "off", "--account", _bystander(workspace, chosen),
                     "--workspace", str(workspace.root)])
    assert code == 0 and time.monotonic() - started < 30
    assert "waiting" not in capsys.readouterr().err
