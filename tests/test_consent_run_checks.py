"""What ``portrait run`` checks of the consent ledger before any stage: an insider's edit of an old row,
of the Arrow snapshot the gate reads, or a chain cut back behind that snapshot is refused with one line,
and nothing is written."""

from __future__ import annotations

import shutil
import sqlite3

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.run import load_consent_events
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from portrait_cli import run_cli
from profiling.consent import SqliteConsentStore
from profiling.ledger_chain import ChainBrokenError


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A workspace of 300 accounts whose consent events are in the ledger (the consent-ledger stage only)."""
    root = tmp_path_factory.mktemp("consent-run-checks")
    generate(root / "raw", accounts=300, seed=3, catalogue_items=50, progress=False)
    assert run_cli("keys", "init", "--key-file", root / "master.key") == 0
    assert run_cli("ingest", "--raw", root / "raw", "--workspace", root / "ws", "--key-file", root / "master.key") == 0
    assert load_consent_events(Workspace(root / "ws")).recorded > 0
    return root


@pytest.fixture()
def copy(loaded, tmp_path):
    """A copy of the workspace in ``tmp_path / "ws"``, its key beside it."""
    shutil.copytree(loaded / "ws", tmp_path / "ws")
    shutil.copy(loaded / "master.key", tmp_path / "master.key")
    return tmp_path


def _run(root, capsys) -> tuple[int, list[str]]:
    code = run_cli("run", "--workspace", root / "ws", "--key-file", root / "master.key", "--as-of",
                   "2026-11-02T00:00:00Z")
    return code, capsys.readouterr().err.strip().splitlines()


def _refused_before_any_stage(copy, capsys, message: str) -> None:
    code, err = _run(copy, capsys)
    assert code == 2 and len(err) == 1 and "consent ledger" in err[0] and message in err[0], err
    assert not (copy / "ws" / "pseudonymized").exists()   # no stage ran
    with sqlite3.connect(copy / "ws" / "ledger.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM audit_gate_decisions").fetchone()[0] == 0


def test_a_snapshot_edited_to_drop_revocations_is_refused_before_any_stage(copy, capsys):
    with SqliteConsentStore(copy / "ws" / "ledger.sqlite") as store:
        snapshot = store.read_snapshot()
    kept = snapshot.filter(pc.not_equal(snapshot.column("event_type"), "revoke"))
    assert kept.num_rows < snapshot.num_rows
    sink = pa.BufferOutputStream()
    pq.write_table(kept, sink, compression="zstd")   # a well-formed snapshot, only without the revocations
    with sqlite3.connect(copy / "ws" / "ledger.sqlite") as db:
        db.execute("UPDATE consent_snapshot_data SET parquet = ?", (sink.getvalue().to_pybytes(),))
    _refused_before_any_stage(copy, capsys, "does not match its recorded SHA-256")
    _verify_names(copy, capsys, "consent_snapshots", "does not match its recorded SHA-256")


def test_a_chain_cut_back_behind_its_snapshot_is_refused_before_any_stage(copy, capsys):
    with sqlite3.connect(copy / "ws" / "ledger.sqlite") as db:
        triggers = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                              "AND tbl_name = 'consent_events'").fetchall()
        for name, _ in triggers:
            db.execute(f'DROP TRIGGER "{name}"')
        # The last three events go, and the recorded head is moved back to the row before them: the
        # chain is consistent in itself (only the snapshot's record remembers where it reached).
        db.execute("DELETE FROM consent_events WHERE seq > (SELECT MAX(seq) - 3 FROM consent_events)")
        db.execute("UPDATE ledger_chains SET rows = rows - 3, last_key = (SELECT MAX(seq) FROM consent_events), "
                   "head = (SELECT chain_hash FROM consent_events ORDER BY seq DESC LIMIT 1) "
                   "WHERE chain_table = 'consent_events'")
        for _, sql in triggers:
            db.execute(sql)
    _refused_before_any_stage(copy, capsys, "rewound")
    _verify_names(copy, capsys, "consent_events", "rewound")


def _verify_names(copy, capsys, table, problem):
    """``portrait ledger verify`` finds what the job refused: exit 2, the table's line BROKEN with the problem."""
    assert run_cli("ledger", "verify", "--workspace", copy / "ws") == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{table} ")]
    assert len(lines) == 1 and "BROKEN" in lines[0] and problem in lines[0], lines


def test_an_old_revocation_turned_into_a_cancellation_in_place_is_refused(copy, capsys):
    with sqlite3.connect(copy / "ws" / "ledger.sqlite") as db:
        seq = db.execute("SELECT MIN(seq) FROM consent_events WHERE event_type = 'revoke'").fetchone()[0]
        with db.blobopen("consent_events", "event_type", seq) as blob:   # no trigger sees a blob write
            blob.write(b"cancel")
    _refused_before_any_stage(copy, capsys, "changed after it was recorded")
    assert run_cli("ledger", "verify", "--workspace", copy / "ws") == 2
    assert "consent_events" in capsys.readouterr().out


def test_an_erasure_never_carries_an_edited_snapshot_into_the_next_one(copy):
    path = copy / "ws" / "ledger.sqlite"
    with SqliteConsentStore(path) as store:
        account = store.read_snapshot().column("account_id")[0].as_py()
        store._connection.execute("UPDATE consent_snapshot_data SET parquet = parquet || x'00'")
        with pytest.raises(ChainBrokenError, match="does not match its recorded SHA-256"):
            store.erase_account(account)
        assert store.history(account)   # rolled back: nothing erased, the edited bytes still refused
        with pytest.raises(ChainBrokenError, match="does not match its recorded SHA-256"):
            store.read_snapshot()
