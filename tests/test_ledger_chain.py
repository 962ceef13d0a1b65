"""Hash-chained ledger tables: appends verify, every edit outside the application is found."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiling.ledger_chain import (
    REDACTED_ID,
    ChainBrokenError,
    append_rows,
    appending,
    head,
    redact,
    register_table,
    verify,
    verify_all,
)

_COLUMNS = ["id", "who", "amount", "body"]


def _ledger(path=":memory:", rows=(("ana", 1.5, "a"), ("bo", 2, None), ("ana", -3.25, "c"))):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT NOT NULL, "
               "amount REAL, body TEXT)")
    register_table(db, "notes", key="id", columns=_COLUMNS, placeholders={"who": REDACTED_ID, "body": None})
    db.execute("BEGIN IMMEDIATE")
    with appending(db, "notes"):
        db.executemany("INSERT INTO notes (who, amount, body) VALUES (?, ?, ?)", rows)
    db.execute("COMMIT")
    return db


def _tamper(db, *statements):
    db.execute("DROP TRIGGER notes_chain_no_update")
    db.execute("DROP TRIGGER notes_chain_no_delete")
    for statement in statements:
        db.execute(statement)
    register_table(db, "notes", key="id", columns=_COLUMNS, placeholders={"who": REDACTED_ID, "body": None})
    for statement in ("CREATE TRIGGER notes_chain_no_update BEFORE UPDATE ON notes BEGIN SELECT 1; END",
                      "CREATE TRIGGER notes_chain_no_delete BEFORE DELETE ON notes BEGIN SELECT 1; END"):
        db.execute(statement)   # an attacker who also puts back triggers of the same names


def test_update_and_delete_are_refused_and_the_chain_verifies():
    db = _ledger()
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE notes SET amount = 0 WHERE id = 2")
    with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
        db.execute("DELETE FROM notes WHERE id = 2")
    report = verify(db, "notes")
    assert (report.ok, report.rows, report.head) == (True, 3, head(db, "notes"))
    assert report.line().endswith("ok")


@pytest.mark.parametrize(("statements", "broken_at", "problem"), [
    (["UPDATE notes SET amount = 99 WHERE id = 2"], 2, "changed after it was recorded"),
    (["DELETE FROM notes WHERE id = 2"], 2, "does not link"),
    (["DELETE FROM notes WHERE id = 3"], 3, "missing at the end"),
    (["INSERT INTO notes (who, amount) VALUES ('eve', 1)"], 4, "not sealed"),
    (["UPDATE notes SET chain_redacted = 1, who = 'x' WHERE id = 1"], 1, "redacted without a matching"),
])
def test_edits_with_the_triggers_dropped_are_found(statements, broken_at, problem):
    db = _ledger()
    _tamper(db, *statements)
    report = verify(db, "notes")
    assert not report.ok and report.broken_at == broken_at and problem in report.problem
    assert f"BROKEN at row {broken_at}" in report.line()


def test_dropped_triggers_are_reported_and_appends_refused():
    db = _ledger()
    db.execute("DROP TRIGGER notes_chain_no_delete")
    assert "were dropped" in verify(db, "notes").problem
    with pytest.raises(ChainBrokenError, match="dropped"):
        with appending(db, "notes"):
            pass


def test_a_foreign_insert_is_refused_at_the_next_append():
    db = _ledger()
    db.execute("INSERT INTO notes (who, amount) VALUES ('eve', 1)")
    with pytest.raises(ChainBrokenError, match="inserted outside the application"):
        with appending(db, "notes"):
            db.execute("INSERT INTO notes (who, amount) VALUES ('ana', 2)")


def test_redaction_keeps_the_chain_whole_and_removes_the_content():
    db = _ledger()
    before = head(db, "notes")
    db.execute("BEGIN IMMEDIATE")
    assert redact(db, "notes", "who = ?", ("ana",), reason="erasure request") == 2
    db.execute("COMMIT")
    assert db.execute("SELECT COUNT(*) FROM notes WHERE who = 'ana' OR body IS NOT NULL").fetchone()[0] == 0
    assert verify(db, "notes").ok and head(db, "notes") == before
    reports = {r.table: r for r in verify_all(db)}
    assert reports["ledger_redactions"].rows == 2 and all(r.ok for r in reports.values())
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):   # a redacted row stays redacted
        db.execute("UPDATE notes SET chain_redacted = 0 WHERE id = 1")


def test_an_existing_table_is_migrated_once_and_recorded(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT NOT NULL, amount REAL, body TEXT)")
    db.executemany("INSERT INTO notes (who, amount, body) VALUES (?, ?, ?)", [("old", 1.0, None)] * 5)
    db.close()
    db = _ledger(path)
    report = verify(db, "notes")
    assert report.ok and report.rows == 8 and report.migrated_rows == 5
    with pytest.raises(ChainBrokenError, match="chained over columns"):
        register_table(db, "notes", key="id", columns=["id", "who"])


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.text(min_size=1, max_size=8),
                               st.one_of(st.none(), st.floats(allow_nan=False), st.integers(-10**12, 10**12)),
                               st.one_of(st.none(), st.text(max_size=8))), min_size=1, max_size=8),
       data=st.data())
def test_any_changed_cell_breaks_the_chain_at_its_row(rows, data):
    db = _ledger(rows=rows)
    assert verify(db, "notes").ok
    target = data.draw(st.integers(1, len(rows)))
    column = data.draw(st.sampled_from(["who", "amount", "body"]))
    old = db.execute(f"SELECT {column} FROM notes WHERE id = ?", (target,)).fetchone()[0]
    new = data.draw(st.one_of(st.text(max_size=8), st.integers(-2**63, 2**63 - 1),
                               st.floats(allow_nan=False)).filter(
        lambda v: not (v == old and type(v) is type(old))))
    if column == "who" and new == "":
        new = "x" if old != "x" else "y"
    db.execute("DROP TRIGGER notes_chain_no_update")
    db.execute(f"UPDATE notes SET {column} = ? WHERE id = ?", (new, target))
    stored = db.execute(f"SELECT {column} FROM notes WHERE id = ?", (target,)).fetchone()[0]
    report = verify(db, "notes")
    if stored == old and type(stored) is type(old):   # SQLite's column affinity stored the same value
        return
    assert not report.ok and report.broken_at == target


def test_append_rows_hashes_values_as_sqlite_stores_them():
    db = _ledger(rows=())
    db.execute("BEGIN IMMEDIATE")
    assert append_rows(db, "notes", [("ana", 2, None), ("bo", True, "x"), ("cy", 2.5, "y")]) == 3
    db.execute("COMMIT")
    assert db.execute("SELECT amount FROM notes ORDER BY id").fetchall() == [(2.0,), (1.0,), (2.5,)]
    assert verify(db, "notes").ok and verify(db, "notes").rows == 3
    with pytest.raises(TypeError, match="str value cannot be appended to a real column"):
        append_rows(db, "notes", [("dee", "2", None)])


@pytest.mark.parametrize("exact", [False, True])
def test_a_chain_cut_back_behind_a_waypoint_is_broken_though_consistent_in_itself(monkeypatch, exact):
    from profiling import ledger_chain
    if exact:
        monkeypatch.setattr(ledger_chain, "_fast_chunk", lambda *args: None)   # every row through the Python check
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE marks (id INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT NOT NULL)")
    register_table(db, "marks", key="id", columns=["id", "who"])
    db.execute("BEGIN IMMEDIATE")
    append_rows(db, "marks", [(f"p{i}",) for i in range(2500)])
    db.execute("COMMIT")
    at = {n: db.execute("SELECT chain_hash FROM marks WHERE id = ?", (n,)).fetchone()[0] for n in (1500, 2500)}
    assert verify(db, "marks", chunk_rows=1000, waypoints=at).ok
    wrong = verify(db, "marks", chunk_rows=1000, waypoints={1700: at[1500]})
    assert (wrong.ok, wrong.broken_at) == (False, 1700) and "does not pass through" in wrong.problem
    db.execute("DROP TRIGGER marks_chain_no_delete")
    db.execute("DELETE FROM marks WHERE id > 2000")   # cut back, the recorded head moved with it
    db.execute("UPDATE ledger_chains SET rows = 2000, last_key = 2000, head = (SELECT chain_hash FROM marks "
               "WHERE id = 2000) WHERE chain_table = 'marks'")
    assert verify(db, "marks", chunk_rows=1000).problem.startswith("append-only trigger")   # the chain itself holds
    cut = verify(db, "marks", chunk_rows=1000, waypoints=at)
    assert (cut.ok, cut.broken_at) == (False, 2001) and "rewound" in cut.problem


def _arrow_notes(rows: int):
    import pyarrow as pa
    return pa.table({"who": [f"p{i % 5}" if i % 4 else f"w\"{i}é" for i in range(rows)],
                     "amount": pa.array([i * 7 - 20 for i in range(rows)], pa.int64()),
                     "body": [None if i % 3 == 0 else f"b{i}" for i in range(rows)]})


@pytest.mark.parametrize("rows_per_insert", [1, 3, 500])
def test_append_arrow_inserts_the_rows_that_sql_inserts_sealed_afterwards_give(monkeypatch, rows_per_insert):
    """Many rows a statement, batches not a multiple of it: the very rows, keys and hashes of one SQL
    insert per row sealed by ``appending`` (hashes computed from the rows read back)."""
    from profiling import ledger_chain
    monkeypatch.setattr(ledger_chain, "_ROWS_PER_INSERT", rows_per_insert)
    ledgers = []
    for way in ("arrow", "sql"):
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.execute("CREATE TABLE counts (id INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT NOT NULL, amount INTEGER, "
                   "body TEXT)")
        register_table(db, "counts", key="id", columns=_COLUMNS, placeholders={"who": REDACTED_ID, "body": None})
        for first, rows in ((0, 11), (11, 6)):   # two appends: keys and the chain go on from the first
            table = _arrow_notes(17).slice(first, rows)
            db.execute("BEGIN IMMEDIATE")
            if way == "arrow":
                assert ledger_chain.append_arrow(db, "counts", table, batch_rows=4) == rows
            else:
                with appending(db, "counts"):
                    db.executemany("INSERT INTO counts (who, amount, body) VALUES (?, ?, ?)",
                                   zip(*(table.column(c).to_pylist() for c in ("who", "amount", "body"))))
            db.execute("COMMIT")
        assert verify(db, "counts").ok and verify(db, "counts").rows == 17
        ledgers.append(db.execute("SELECT * FROM counts ORDER BY id").fetchall())
    assert ledgers[0] == ledgers[1]


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.text(max_size=6)), min_size=1, max_size=70),
       repeats=st.sampled_from([1, 90]), integers=st.lists(st.integers(-2**63, 2**63 - 1), max_size=50))
def test_python_values_are_those_of_to_pylist(values, repeats, integers):
    import pyarrow as pa
    from profiling.ledger_chain import _python_values
    for column in (pa.array(values * repeats, pa.string()), pa.array(values * repeats, pa.large_string()),
                   pa.array(integers, pa.int64()), pa.array(integers * repeats + [None], pa.int64())):
        converted = _python_values(column)
        assert converted == column.to_pylist()
        assert [type(v) for v in converted] == [type(v) for v in column.to_pylist()]


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)),
                               st.one_of(st.none(), st.text(max_size=6)),
                               st.one_of(st.none(), st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                                            max_size=6))), max_size=12))
def test_the_compiled_canonical_json_is_that_of_python(rows):
    """The rows' JSON written by the compiled kernel (and by Python for text JSON escapes) is
    byte for byte ``_CANONICAL`` of the row's values, which the content hashes are made of."""
    import pyarrow as pa
    from profiling._chain_hash import canonical_rows
    from profiling.ledger_chain import _CANONICAL, _canonical_texts
    columns = [pa.array([row[0] for row in rows], pa.int64()), pa.array([row[1] for row in rows], pa.string()),
               pa.array([row[2] for row in rows], pa.large_string()), pa.nulls(len(rows))]
    offsets, data = _canonical_texts(columns)
    written = [bytes(data[offsets[i]:offsets[i + 1]]).decode() for i in range(len(rows))]
    assert written == [_CANONICAL([*row, None]) for row in rows]
    escaped = canonical_rows(columns)[2]
    assert list(escaped) == [_CANONICAL([row[1], row[2]]) != "[" + ",".join(
        "null" if v is None else f'"{v}"' for v in row[1:]) + "]" for row in rows]


def _marks_with_redactions(rows: int, every: int) -> sqlite3.Connection:
    """A chain of ``rows`` rows without reals (SQLite's JSON checks it), every ``every``-th row redacted."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE marks (id INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT NOT NULL, body TEXT)")
    register_table(db, "marks", key="id", columns=["id", "who", "body"],
                   placeholders={"who": REDACTED_ID, "body": None})
    db.execute("BEGIN IMMEDIATE")
    append_rows(db, "marks", [(f"p{i}", f"b{i}") for i in range(rows)])
    redact(db, "marks", f"id % {every} = 0", reason="erasure request")
    db.execute("COMMIT")
    return db


def test_chunks_holding_redacted_rows_are_checked_by_the_compiled_hashes_not_row_by_row(monkeypatch):
    # An erasure leaves redacted rows all through the consent history: a chunk holding one was checked
    # in Python row by row (258 s before a job's first stage at 5M accounts).
    from profiling import ledger_chain
    db = _marks_with_redactions(2500, 97)

    def row_by_row(*args):
        raise AssertionError("a row was checked by the exact (Python) check")

    monkeypatch.setattr(ledger_chain, "_hash_or_none", row_by_row)
    report = verify(db, "marks", chunk_rows=1000)
    assert report.ok and report.rows == 2500


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize(("statement", "broken_at"), [
    ("UPDATE marks SET body = 'kept' WHERE id = 1455", 1455),                    # content kept under the mark
    ("UPDATE ledger_redactions SET content = 'x' WHERE row_key = 1552", 1552),   # the entry no longer matches
    ("UPDATE marks SET chain_redacted = 1 WHERE id = 1500", 1500),               # a mark without a redaction
])
def test_a_redacted_row_that_does_not_match_its_redaction_is_found_at_its_row(monkeypatch, exact, statement,
                                                                               broken_at):
    from profiling import ledger_chain
    if exact:
        monkeypatch.setattr(ledger_chain, "_fast_chunk", lambda *args: None)
    db = _marks_with_redactions(2500, 97)
    db.execute("DROP TRIGGER marks_chain_no_update")
    db.execute("DROP TRIGGER IF EXISTS ledger_redactions_chain_no_update")
    db.execute(statement)
    db.execute("CREATE TRIGGER marks_chain_no_update BEFORE UPDATE ON marks BEGIN SELECT 1; END")
    report = verify(db, "marks", chunk_rows=1000)
    assert (report.ok, report.broken_at) == (False, broken_at)
    assert "redacted without a matching" in report.problem
