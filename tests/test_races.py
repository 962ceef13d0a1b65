"""Promises where the parts meet: real ``portrait`` processes racing each other, and jobs killed at the worst moment.

Each race starts its commands in processes that have imported everything and wait for a line on
stdin (``_on_cue``); the test then cues them together, so they reach the workspace within
milliseconds of each other. One workspace is built once (``synth``, ``ingest``, ``keys init``,
``run``) and each test works on a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from portrait_cli import run_cli

from profiling.consent import SqliteConsentStore
from profiling.errors import WorkspaceError
from profiling.keys import load_key_file
from profiling.ledger_file import ensure_schema, ledger_connection
from profiling.pseudonyms import MARKETING, PERSON, pseudonymize
from profiling.schema import TABLE_NAMES

AS_OF = "2026-11-01T00:00:00Z"
BROKER = "hk_customs_broker"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("races")
    assert run_cli("synth", "--out", root / "raw", "--accounts", 300, "--seed", 11) == 0
    assert run_cli("synth", "--out", root / "raw-other", "--accounts", 200, "--seed", 12) == 0
    assert run_cli("ingest", "--raw", root / "raw", "--workspace", root / "ws") == 0
    assert run_cli("keys", "init", "--key-file", root / "keys" / "master.key") == 0
    assert run_cli("run", "--workspace", root / "ws", "--key-file", root / "keys" / "master.key",
                   "--as-of", AS_OF) == 0
    return root


@pytest.fixture()
def site(base, tmp_path) -> Path:
    """A copy of the built workspace, its raw feeds and key, that a test may change."""
    shutil.copytree(base, tmp_path / "site")
    return tmp_path / "site"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "error"}


def _on_cue(*argv) -> subprocess.Popen:
    """``portrait -q ARGV`` in a process that has imported everything and starts on a line on stdin."""
    code = "import sys; from pipelines import cli; sys.stdin.readline(); sys.exit(cli.main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "-q", *map(str, argv)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _race(*commands: list) -> list[tuple[int, str, str]]:
    """Start every command, cue them all at once, and return each one's (exit status, stdout, stderr)."""
    processes = [_on_cue(*argv) for argv in commands]
    for process in processes:
        process.stdin.write("go\n")
    for process in processes:
        process.stdin.flush()
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append((process.returncode, out, err))
    return results


def _ledger_verifies(ws: Path) -> bool:
    return run_cli("ledger", "verify", "--workspace", ws) == 0


def _rows(ws: Path, sql: str, *args) -> list[tuple]:
    connection = sqlite3.connect(ws / "ledger.sqlite")
    try:
        return connection.execute(sql, args).fetchall()
    finally:
        connection.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- three cross-border transfers at once-------------------------------------------------------------------------

def test_three_transfers_at_once_are_each_logged_once_and_leave_whole_files(site):
    ws, key = site / "ws", site / "keys" / "master.key"
    shared, own = site / "out-shared", site / "out-own"
    # the two into one folder send different fields, so their files differ
    asked = [(shared, "waybill_id,weight_kg"), (shared, "waybill_id"), (own, "waybill_id,weight_kg")]
    results = _race(*(["export", "--recipient", BROKER, "--fields", fields, "--out", out, "--workspace", ws,
                       "--key-file", key, "--by", f"operator {n}"] for n, (out, fields) in enumerate(asked)))
    for code, _, err in results:
        assert code == 0, err
    # the transfers took turns: the later ones waited for the one holding the workspace
    assert sum("waiting for the job holding workspace" in err for _, _, err in results) >= 1
    ids = [int(out.split("transfer log entry ")[1].split(";")[0]) for _, out, _ in results]
    log = {row[0]: row for row in _rows(ws, "SELECT id, outcome, file_sha256, operator FROM transfer_log")}
    # each transfer logged exactly once, by its own process, on a chain that verifies
    assert sorted(log) == sorted(ids) == [1, 2, 3]
    assert [(log[i][1], log[i][3]) for i in ids] == [("sent", f"operator {n}") for n in range(3)]
    assert _ledger_verifies(ws)
    # whole files: each folder holds one file and its report, the report naming the log entry of that very file
    for out in (shared, own):
        assert sorted(p.name for p in out.iterdir()) == [f"{BROKER}.csv", f"{BROKER}.report.json"]
        report = json.loads((out / f"{BROKER}.report.json").read_text())
        assert report["transfer_id"] in ids
        assert (out / f"{BROKER}.csv").read_text().splitlines()[0].replace('"', "").split(",") == report["fields"]
        assert log[report["transfer_id"]][2] == _sha256(out / f"{BROKER}.csv"), \
            f"{out.name} holds a file its report's transfer did not send"


# --- continual schedules and releases racing for a budget ----------------------------------------------------

def _schedule(ws: Path, start: str, epsilon: float, days: int = 10) -> list:
    return ["budget", "schedule", "--workspace", ws, "--start", start, "--days", days, "--epsilon", epsilon]


def test_two_schedules_at_once_charge_the_horizon_once(site):
    ws = site / "ws"
    assert run_cli("budget", "set", "--workspace", ws, "--dataset", "orders", "--epsilon", 2) == 0
    # the same horizon twice: one is charged, the other refused as overlapping, nothing charged for it
    results = _race(_schedule(ws, "2026-12-01T00:00:00Z", 0.5), _schedule(ws, "2026-12-01T00:00:00Z", 0.5))
    assert sorted(code for code, _, _ in results) == [0, 2], results
    [(_, _, refused)] = [r for r in results if r[0] == 2]
    assert refused.startswith("portrait: error: ") and "runs until 2026-12-11" in refused
    assert refused.count("\n") == 1
    schedules = _rows(ws, "SELECT schedule_id, release_id FROM budget_schedules")
    charges = _rows(ws, "SELECT release_id, epsilon FROM budget_charges WHERE dataset = 'orders'")
    assert len(schedules) == 1 and charges == [(schedules[0][1], 0.5)]
    # the next horizon and a release racing for the last of the budget (1.5 left): only one fits
    release = ["dp", "--workspace", ws, "--table", "orders", "--count", "--key-file", site / "keys" / "master.key",
               "--as-of", AS_OF, "--purpose", "product_improvement", "--epsilon", 0.9]
    results = _race(_schedule(ws, "2026-12-11T00:00:00Z", 0.9), release)
    assert sorted(code for code, _, _ in results) == [0, 2], results
    assert "release refused, nothing charged" in [r for r in results if r[0] == 2][0][2]
    spent = _rows(ws, "SELECT COUNT(*), SUM(epsilon) FROM budget_charges WHERE dataset = 'orders'")
    assert spent == [(2, pytest.approx(1.4))]
    assert len(_rows(ws, "SELECT 1 FROM budget_schedules")) == 1 + (results[0][0] == 0)
    assert _ledger_verifies(ws)


def test_releases_racing_for_the_last_of_a_budget_never_overspend(site):
    ws, key = site / "ws", site / "keys" / "master.key"
    assert run_cli("budget", "set", "--workspace", ws, "--dataset", "orders", "--epsilon", 1) == 0
    query = ["dp", "--workspace", ws, "--table", "orders", "--count", "--key-file", key, "--as-of", AS_OF,
             "--purpose", "product_improvement"]
    results = _race(*([*query, "--epsilon", 0.6] for _ in range(2)))  # 1.2 asked of 1: one fits
    assert sorted(code for code, _, _ in results) == [0, 2], results
    assert "release refused, nothing charged or released" in [r for r in results if r[0] == 2][0][2]
    charged = _rows(ws, "SELECT COUNT(*), SUM(epsilon) FROM budget_charges WHERE dataset = 'orders'")
    assert charged == [(1, pytest.approx(0.6))]
    assert _ledger_verifies(ws)


# --- the retention stage and an erasure at once ------------------------------------------------------------------

RETENTION_AS_OF = "2026-11-16T00:00:00Z"  # 15 days after the feed's last cancellation: past the 14-day grace


def _last_cancelled(site: Path) -> str:
    events = ds.dataset(site / "raw" / "consent_events").to_table(filter=pc.field("event_type") == "cancel")
    return events.sort_by([("event_at", "descending")]).column("account_id")[0].as_py()


def _names(site: Path, account: str) -> set[str]:
    key = load_key_file(site / "keys" / "master.key")
    return {account, *(pseudonymize([account], key, domain, identifier="account_id", version=version)[0].as_py()
                       for domain in (PERSON, MARKETING) for version in key.versions)}


def _holding(ws: Path, names: set[str]) -> list[str]:
    """Parquet files of the workspace (published folders) and the ledger that still hold one of ``names``."""
    targets, found = pa.array(sorted(names), pa.string()), []
    for path in sorted(ws.rglob("*.parquet")):
        if any(part.startswith(".") for part in path.relative_to(ws).parts):
            continue
        for column in pq.read_table(path).columns:
            values = column.combine_chunks()
            values = pc.list_flatten(values) if pa.types.is_list(values.type) else values
            if pa.types.is_string(values.type) and pc.any(pc.is_in(values, value_set=targets)).as_py():
                found.append(str(path.relative_to(ws)))
                break
    connection = sqlite3.connect(ws / "ledger.sqlite")
    dump = "\n".join(connection.iterdump())
    connection.close()
    return found + [f"ledger.sqlite: {name}" for name in names if name in dump]


def test_an_erasure_whose_new_consent_snapshot_fails_keeps_the_consent_history_whole(site):
    """The disk fills in the worker that makes the consent snapshot without the account while SQLite redacts its
    events: ``portrait dsr erase`` fails, and the consent events, the snapshot, the requests and the redaction
    log are as before (one ledger transaction), the chains verify. Made again, the request erases the account
    everywhere, and the snapshot the gate reads no longer holds it."""
    ws, key = site / "ws", site / "keys" / "master.key"
    account = "A0000000002"
    assert _rows(ws, "SELECT COUNT(*) FROM consent_events WHERE account_id = ?", account)[0][0] > 0
    tables = ("consent_events", "consent_snapshot_data", "consent_snapshots", "dsr_requests", "ledger_redactions")
    ledger = {table: _rows(ws, f"SELECT * FROM {table}") for table in tables}
    code = """
import sys, threading
from pipelines import cli
from profiling.consent import sqlite_store
def without(*args):
    if not threading.current_thread().name.startswith("consent-snapshot"):
        raise RuntimeError("the snapshot was made outside its worker")
    raise OSError(28, "No space left on device")
sqlite_store._snapshot_without = without
sys.exit(cli.main(sys.argv[1:]))
"""
    erase = subprocess.run([sys.executable, "-c", code, "-q", "dsr", "erase", "--account", account, "--workspace",
                            str(ws), "--key-file", str(key)], capture_output=True, text=True, env=_env(), timeout=300)
    assert erase.returncode == 2 and "No space left on device" in erase.stderr, erase.stderr
    assert {table: _rows(ws, f"SELECT * FROM {table}") for table in tables} == ledger
    assert _ledger_verifies(ws)
    assert run_cli("dsr", "erase", "--account", account, "--workspace", ws, "--key-file", key) == 0
    assert _holding(ws, _names(site, account)) == []
    assert _rows(ws, "SELECT COUNT(*) FROM consent_events WHERE account_id = ?", account) == [(0,)]
    with SqliteConsentStore(ws / "ledger.sqlite") as store:
        assert account not in store.read_snapshot().column("account_id").to_pylist()
    assert _ledger_verifies(ws)


# A writer that grows the ledger by large consent loads, each checkpointed at once, as a first load or an
# erasure does: through the consent store, its rows new accounts' grants.
_GROWING_LEDGER = """
import sys
import numpy as np, pyarrow as pa
from profiling.consent import SqliteConsentStore
from profiling.ledger_file import ensure_schema, ledger_connection
from profiling.schema import TIMESTAMP
path, loads, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for load in range(loads):
    with SqliteConsentStore(path) as store:
        store.append_table(pa.table({
            "event_id": [f"GROW{load}-{i}" for i in range(rows)],
            "account_id": [f"G{i % 997:010d}" for i in range(rows)],
            "event_at": pa.array(np.full(rows, 1_735_689_600_000_000), TIMESTAMP),
            "event_type": ["grant"] * rows, "purpose": ["personalization"] * rows,
            "policy_version": ["2019-06"] * rows, "channel": ["app"] * rows}), source="ingest")
    connection = ledger_connection(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
"""


def test_opening_the_ledger_while_a_large_load_is_checkpointed_never_finds_it_truncated(site):
    """A checkpoint writes the ledger's header, with its new page count, before the pages after it. Every
    command opens the ledger through ``ledger_connection``; opened meanwhile, as by a privacy reviewer while the
    job loads the consent history, it must be read, not refused as truncated with the advice to restore it
    from a backup."""
    ws = site / "ws"
    writer = subprocess.Popen([sys.executable, "-c", _GROWING_LEDGER, str(ws / "ledger.sqlite"), "4", "100000"],
                              stderr=subprocess.PIPE, text=True, env=_env())
    opened, refused = 0, []
    while writer.poll() is None:
        try:
            ledger_connection(ws / "ledger.sqlite").close()
        except WorkspaceError as error:
            refused.append(str(error))
        opened += 1
    assert writer.communicate()[1] == "" and writer.returncode == 0
    assert refused == [] and opened > 100
    assert _rows(ws, "SELECT COUNT(*) FROM consent_events WHERE event_id LIKE 'GROW%'") == [(400_000,)]
    assert _ledger_verifies(ws)


# A write in progress on the ledger, as a job's consent load or an erasure holds one: its transaction stays open
# until a line arrives on stdin.
_HOLDING_A_WRITE = """
import sys
from profiling.consent import SqliteConsentStore
from profiling.ledger_file import immediate_transaction, ledger_connection
SqliteConsentStore(sys.argv[1]).close()   # the consent tables, as a job's first stage makes them
db = ledger_connection(sys.argv[1])
with immediate_transaction(db):
    db.execute("DELETE FROM consent_loads")
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_reading_the_ledger_never_waits_for_a_write_in_progress_and_a_write_waits_it_out(site):
    """A job's first consent load holds the ledger's write transaction for minutes at millions of events. A
    privacy reviewer's or an operator's read commands meanwhile answer at once, from what was committed before
    it, rather than queue behind it and fail with "database is locked" when the busy timeout ends. A write
    (a budget set) says it waits, waits, and is recorded after it; the first write commits, whole."""
    ws = site / "ws"
    assert _rows(ws, "SELECT COUNT(*) FROM consent_loads") != [(0,)]   # the run's load, which the write removes
    ((account,),) = _rows(ws, "SELECT account_id FROM consent_events WHERE chain_redacted = 0 LIMIT 1")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDING_A_WRITE, str(ws / "ledger.sqlite")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline() == "holding\n"
        for argv in (["budget", "show"], ["budget", "report", "--out", site / "review"], ["ledger", "verify"],
                     ["consent", "show", "--account", account, "--as-of", AS_OF]):
            reader = _on_cue(*argv, "--workspace", ws)
            started = time.monotonic()
            out, err = reader.communicate("go\n", timeout=40)
            assert (reader.returncode, err) == (0, ""), argv
            assert time.monotonic() - started < 30, argv   # the busy timeout is 60 s: it did not wait for the write
        writer = _on_cue("budget", "set", "--dataset", "orders", "--epsilon", 0.5, "--set-by", "reviewer",
                         "--workspace", ws)
        writer.stdin.write("go\n")
        writer.stdin.flush()
        said = writer.stderr.readline()   # once it has waited a moment
        assert writer.poll() is None
    finally:
        holder.communicate("commit\n", timeout=60)
    assert holder.returncode == 0
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and err == ""
    assert said == f"portrait: waiting for another process's write to ledger {ws / 'ledger.sqlite'} to end (a " \
                   f"job's consent load holds it for minutes on millions of events)\n"
    assert _rows(ws, "SELECT COUNT(*) FROM consent_loads") == [(0,)]
    assert _rows(ws, "SELECT dataset, epsilon, set_by FROM budget_limits") == [("orders", 0.5, "reviewer")]
    assert _ledger_verifies(ws)


def test_a_first_budget_command_during_a_write_makes_its_tables_once_the_write_ends(site):
    """On a new workspace, a job's consent load holds the ledger's write transaction before any budget table
    exists. A reviewer's first `budget set` must make them: it says it waits, waits, then makes them and records
    the budget, whole; the load's write commits too."""
    ws = site / "fresh"
    assert run_cli("ingest", "--raw", site / "raw", "--workspace", ws) == 0
    holder = subprocess.Popen([sys.executable, "-c", _HOLDING_A_WRITE, str(ws / "ledger.sqlite")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline() == "holding\n"
        assert _rows(ws, "SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'budget%'") == [(0,)]
        writer = _on_cue("budget", "set", "--dataset", "orders", "--epsilon", 0.5, "--set-by", "reviewer",
                         "--workspace", ws)
        writer.stdin.write("go\n")
        writer.stdin.flush()
        said = writer.stderr.readline()
        assert writer.poll() is None
    finally:
        holder.communicate("commit\n", timeout=60)
    assert holder.returncode == 0
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and err == ""
    assert said.startswith(f"portrait: waiting for another process's write to ledger {ws / 'ledger.sqlite'} to end")
    assert _rows(ws, "SELECT dataset, epsilon, set_by FROM budget_limits") == [("orders", 0.5, "reviewer")]
    assert _ledger_verifies(ws)


def test_tables_made_sure_of_are_made_again_when_another_process_wrote_between_the_read_and_the_write(tmp_path):
    """``ensure_schema`` reads first; when another connection commits between that read and its own first write,
    SQLite refuses the write on the stale read (``SQLITE_BUSY_SNAPSHOT``), and the set-up is done again, whole, in
    a write transaction: the other's row is kept, the table is made."""
    path = tmp_path / "ledger.sqlite"
    other = ledger_connection(path)
    other.execute("CREATE TABLE notes (body TEXT)")
    mine = ledger_connection(path)   # opened on the schema as it is (a stale one would make it write at once)
    attempts = []

    def complete(db):
        attempts.append(db.execute("SELECT COUNT(*) FROM notes").fetchone()[0])
        if len(attempts) == 1:
            other.execute("INSERT INTO notes VALUES ('written meanwhile')")
        db.execute("CREATE TABLE IF NOT EXISTS made (x)")

    ensure_schema(mine, "CREATE TABLE IF NOT EXISTS notes (body TEXT);", complete)
    assert attempts == [0, 1]
    assert mine.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall() == [("made",), ("notes",)]
    assert mine.execute("SELECT body FROM notes").fetchall() == [("written meanwhile",)]
    other.close()
    mine.close()


def test_a_first_consent_load_killed_midway_leaves_nothing_of_it(site):
    """The consent history's first load, killed once its pages fill the WAL: the next command finds a ledger
    that verifies and holds nothing of the load, and takes the history whole."""
    ws = site / "fresh"
    assert run_cli("ingest", "--raw", site / "raw", "--workspace", ws) == 0
    ledger, wal = ws / "ledger.sqlite", ws / "ledger.sqlite-wal"
    loading = subprocess.Popen([sys.executable, "-c", _GROWING_LEDGER, str(ledger), "1", "400000"],
                               stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 120
    while not (wal.exists() and wal.stat().st_size > 2**23):   # 8 MiB of the load's pages
        assert loading.poll() is None, f"the load ended before it could be killed: {loading.communicate()}"
        assert time.monotonic() < deadline, "the load never wrote its pages"
        time.sleep(0.002)
    loading.send_signal(signal.SIGKILL)
    loading.communicate()
    assert _ledger_verifies(ws)
    assert _rows(ws, "SELECT COUNT(*) FROM consent_events") == [(0,)]
    assert run_cli("consent", "load", "--workspace", ws) == 0
    events = sum(pq.read_metadata(path).num_rows for path in (ws / "ingested" / "consent_events").glob("*.parquet"))
    assert _rows(ws, "SELECT COUNT(*) FROM consent_events") == [(events,)]
    assert _ledger_verifies(ws)


def _report_matches_ingested(ws: Path) -> dict[str, tuple[int, int]]:
    """Tables whose ingested rows differ from the ingest report's ``accepted`` (what ``portrait run`` checks)."""
    report = json.loads((ws / "ingest-report.json").read_text())["tables"]
    held = {name: sum(pq.read_metadata(p).num_rows for p in (ws / "ingested" / name).glob("*.parquet"))
            for name in TABLE_NAMES}
    return {name: (held[name], report[name]["accepted"]) for name in TABLE_NAMES
            if held[name] != report[name]["accepted"]}


def _wait_for_stages(ws: Path, run: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not list(ws.glob(f".staging-{run.pid}-*")):
        assert run.poll() is None, f"the run ended before its stages could be observed: {run.communicate()}"
        assert time.monotonic() < deadline, "the run never reached its stages"
        time.sleep(0.005)


def test_retention_and_an_erasure_at_once_are_serialized(site):
    ws, key = site / "ws", site / "keys" / "master.key"
    cancelled = _last_cancelled(site)
    bystander = next(a for a in ds.dataset(ws / "ingested" / "accounts").to_table(columns=["account_id"])
                     .column(0).to_pylist() if a != cancelled)
    names = {account: _names(site, account) for account in (cancelled, bystander)}
    assert _holding(ws, names[cancelled]) and _holding(ws, names[bystander])
    erases = [_on_cue("dsr", "erase", "--account", account, "--workspace", ws, "--key-file", key)
              for account in (cancelled, bystander)]
    run = _on_cue("run", "--workspace", ws, "--key-file", key, "--as-of", RETENTION_AS_OF)
    run.stdin.write("go\n")
    run.stdin.flush()
    _wait_for_stages(ws, run)  # the run holds the workspace: the erasures wait for it, then erase what it left
    for erase in erases:
        erase.stdin.write("go\n")
        erase.stdin.flush()
    run_out, run_err = run.communicate(timeout=300)
    assert run.returncode == 0, run_err
    outcomes = {}
    for account, erase in zip((cancelled, bystander), erases):
        out, err = erase.communicate(timeout=300)
        outcomes[account] = (erase.returncode, out, err)
    assert all("waiting for the job holding workspace" in err for _, _, err in outcomes.values())
    # the bystander is erased by the request; the cancelled account by the run's retention stage, so the request
    # for it finds nobody: one error line, nothing recorded
    assert outcomes[bystander][0] == 0 and f"erased account {bystander}" in outcomes[bystander][1]
    code, _, err = outcomes[cancelled]
    error = [line for line in err.splitlines() if not line.startswith("portrait: waiting for the job holding")]
    assert code == 2 and len(error) == 1 and error[0].startswith("portrait: error: account "), outcomes[cancelled]
    # nobody republished: neither account is anywhere, and the ledger and the ingest report agree
    assert _holding(ws, names[cancelled] | names[bystander]) == []
    assert _ledger_verifies(ws)
    assert _report_matches_ingested(ws) == {}
    stones = _rows(ws, "SELECT COUNT(*) FROM dsr_erased_ids WHERE kind = 'account_id'")
    assert stones == [(2,)]  # one tombstone per account: retention's or the request's, never both


# --- a job killed between its data and its report ----------------------------------------------------------------

def _killed_after_publish(target: str, where: str, *argv) -> subprocess.Popen:
    """``portrait ARGV`` killed (SIGKILL) at ``where``: once the publish of folder ``target`` has returned
    ("after-publish"), or once its first staged folder was renamed into place ("mid-publish")."""
    code = f"""
import os, signal, sys
from pipelines import cli
from pipelines.workspace import Workspace
target, where = {target!r}, {where!r}
publishing = []
real_publish, real_rename = Workspace.publish, os.rename
def publish(self, replacements, *args, **kwargs):
    publishing.append(any(Path(p).name == target for p in replacements))
    result = real_publish(self, replacements, *args, **kwargs)
    if publishing.pop() and where == "after-publish":
        os.kill(os.getpid(), signal.SIGKILL)
    return result
def rename(source, destination, *args, **kwargs):
    real_rename(source, destination, *args, **kwargs)
    if publishing and publishing[-1] and where == "mid-publish" and "/.staging-" in str(source):
        os.kill(os.getpid(), signal.SIGKILL)
from pathlib import Path
Workspace.publish, os.rename = publish, rename
sys.exit(cli.main(sys.argv[1:]))
"""
    return subprocess.Popen([sys.executable, "-c", code, "-q", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


def _identity_report_matches(ws: Path) -> bool:
    report = json.loads((ws / "identity-report.json").read_text())
    persons = ds.dataset(ws / "outputs" / "identity" / "persons", format="parquet").count_rows()
    devices = ds.dataset(ws / "outputs" / "identity" / "devices", format="parquet").count_rows()
    return (report["persons"], report["linked_devices"]) == (persons, devices)


@pytest.mark.parametrize("where", ["after-publish", "mid-publish"])
def test_a_killed_job_leaves_each_report_with_its_own_data(site, where):
    ws, key = site / "ws", site / "keys" / "master.key"
    assert _report_matches_ingested(ws) == {} and _identity_report_matches(ws)
    ingest = _killed_after_publish("ingested", where, "ingest", "--raw", site / "raw-other", "--workspace", ws,
                                   "--key-file", key)
    out, err = ingest.communicate(timeout=300)
    assert ingest.returncode == -signal.SIGKILL, err
    # the next job finds the ingested tables and their report from one ingest (it checks them before anything)
    run = _killed_after_publish("identity", where, "run", "--workspace", ws, "--key-file", key, "--as-of", AS_OF)
    out, err = run.communicate(timeout=300)
    assert run.returncode == -signal.SIGKILL, err
    assert _report_matches_ingested(ws) == {}
    accounts = ds.dataset(ws / "ingested" / "accounts").to_table(columns=["account_id"]).num_rows
    assert accounts <= 200  # the other feed's
    # the identity report describes the identity folder in place, once the next job settles the workspace
    assert run_cli("consent", "dnd", "off", "--account", "A0000000001", "--workspace", ws) == 0
    assert _identity_report_matches(ws)


@pytest.mark.parametrize("where", ["after-publish", "mid-publish"])
def test_an_erasure_killed_around_its_publish_leaves_the_ingest_report_with_its_data(site, where):
    ws, key = site / "ws", site / "keys" / "master.key"
    account = "A0000000002"
    assert _holding(ws, _names(site, account))
    erase = _killed_after_publish("accounts", where, "dsr", "erase", "--account", account, "--workspace", ws,
                                  "--key-file", key)
    out, err = erase.communicate(timeout=300)
    assert erase.returncode == -signal.SIGKILL, err
    # the next job settles the workspace: the erased rows and the report's counts go together
    assert run_cli("consent", "dnd", "off", "--account", "A0000000001", "--workspace", ws) == 0
    assert _report_matches_ingested(ws) == {}
    assert run_cli("run", "--workspace", ws, "--key-file", key, "--as-of", AS_OF) == 0


# --- an erasure failing while it rewrites two files at once ---------------------------------------------------------

def test_an_erasure_whose_rewrite_fails_while_another_file_is_rewritten_changes_nothing(site):
    """The disk fills while the erasure rewrites one file and another is being written beside it: the erasure
    fails whole. Every file of the workspace and every ledger row is as before, nothing is left staged, and
    the request, made again once there is room, erases the account everywhere."""
    ws, key = site / "ws", site / "keys" / "master.key"
    account = "A0000000002"
    names = _names(site, account)
    assert _holding(ws, names)
    files = sorted(p for p in ws.rglob("*") if p.is_file() and not p.name.startswith("ledger.sqlite"))
    before = {p: _sha256(p) for p in files}
    ledger = {table: _rows(ws, f"SELECT * FROM {table}") for table in ("consent_events", "dsr_erased_ids",
                                                                      "dsr_requests", "ledger_redactions")}
    code = """
import itertools, sys, threading, time
from pipelines import cli
from pipelines.dsr_scope import ParquetRewriter
real_init, real_write = ParquetRewriter.__init__, ParquetRewriter.write
numbers, both = itertools.count(), threading.Barrier(2, timeout=30)
def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    self.number, self.waited = next(numbers), False
def write(self, rows):
    if self.number < 2 and not self.waited:   # the first two files meet here: both are being rewritten
        self.waited = True
        if both.wait() == 0:
            raise OSError(28, "No space left on device")
    time.sleep(0.2)                            # the other file is still being written when the error comes
    return real_write(self, rows)
ParquetRewriter.__init__, ParquetRewriter.write = init, write
sys.exit(cli.main(sys.argv[1:]))
"""
    erase = subprocess.run([sys.executable, "-c", code, "-q", "dsr", "erase", "--account", account, "--workspace",
                            str(ws), "--key-file", str(key)], capture_output=True, text=True, env=_env(), timeout=300)
    assert erase.returncode == 2 and "No space left on device" in erase.stderr, erase.stderr
    assert sorted(p for p in ws.rglob("*") if p.is_file() and not p.name.startswith("ledger.sqlite")) == files
    assert {p: _sha256(p) for p in files} == before
    assert {table: _rows(ws, f"SELECT * FROM {table}") for table in ledger} == ledger
    assert not list(ws.glob(".staging-*"))
    assert run_cli("dsr", "erase", "--account", account, "--workspace", ws, "--key-file", key) == 0
    assert _holding(ws, names) == []
    assert _ledger_verifies(ws) and _report_matches_ingested(ws) == {}
