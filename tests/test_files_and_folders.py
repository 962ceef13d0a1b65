"""What the job leaves on disk: owner-only modes, no ID numbers in rejects, exports outside the workspace,
CSV cells a spreadsheet will not run, table names from the analytics zone, and no workspace made by a typo.

One workspace is built through the command line under a permissive umask (022), as a user's shell has it.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from portrait_cli import run_cli
from pipelines.ingest import ingest
from pipelines.workspace import Workspace
from profiling.csv_cells import FORMULA_STARTS, escape_formulas, write_csv_rows
from profiling.schema import TABLE_NAMES
from raw_rows import valid_rows, write_raw

AS_OF = "2026-11-01T00:00:00Z"
FORMULA_NICKNAME = '=HYPERLINK("http://x","y")'
FORMULA_ORDER = "=1+1"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("portrait: error: "), err
    return err[0]


@pytest.fixture
def permissive_umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _rewrite(raw: Path, table: str, change) -> None:
    """Apply ``change`` to the rows (dicts) of a synthetic raw table, in place."""
    path = raw / table / "part-00000.parquet"
    rows = pq.read_table(path)
    changed = change(rows.to_pylist())
    pq.write_table(pa.Table.from_pylist(changed, schema=rows.schema), path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """synth -> ingest -> run -> budget set -> dsr export -> export -> budget report, all under umask 022."""
    previous = os.umask(0o022)
    try:
        root = tmp_path_factory.mktemp("files")
        raw, ws, key = root / "raw", root / "ws", root / "keys" / "master.key"
        assert run_cli("keys", "init", "--key-file", key) == 0
        assert run_cli("synth", "--out", raw, "--accounts", "300", "--seed", "7") == 0
        facts: dict = {}

        def accounts(rows):
            rows[0]["nickname"] = FORMULA_NICKNAME
            facts["account"] = rows[0]["account_id"]
            return rows

        def waybills(rows):
            with_id = [r for r in rows if r["id_card_number"]]
            with_id[0]["weight_kg"] = -1.0                    # rejected for its weight; a valid ID number
            number = with_id[1]["id_card_number"]
            with_id[1]["id_card_number"] = number[:-1] + ("0" if number[-1] != "0" else "1")  # bad check digit
            facts["rejected_waybills"] = [with_id[0]["waybill_id"], with_id[1]["waybill_id"]]
            facts["id_numbers"] = [with_id[0]["id_card_number"], with_id[1]["id_card_number"]]
            return rows

        def orders(rows):
            alipay = next(r for r in rows if r["payment_institution"] == "alipay")
            alipay["order_id"] = FORMULA_ORDER
            return rows

        _rewrite(raw, "accounts", accounts)
        _rewrite(raw, "waybills", waybills)
        _rewrite(raw, "orders", orders)
        assert run_cli("ingest", "--raw", raw, "--workspace", ws) == 0
        assert run_cli("run", "--workspace", ws, "--key-file", key, "--as-of", AS_OF) == 0
        assert run_cli("budget", "set", "--workspace", ws, "--dataset", "orders", "--epsilon", "1") == 0
        outside = root / "outside"
        assert run_cli("dsr", "export", "--workspace", ws, "--account", facts["account"], "--key-file", key,
                       "--out", outside / "bundle") == 0
        assert run_cli("export", "--workspace", ws, "--recipient", "payment_institution", "--institution", "alipay",
                       "--as-of", AS_OF, "--out", outside / "exports") == 0
        assert run_cli("budget", "report", "--workspace", ws, "--out", outside / "review") == 0
        yield {"root": root, "raw": raw, "ws": ws, "key": key, "outside": outside, **facts}
    finally:
        os.umask(previous)


def _tree(folder: Path) -> list[Path]:
    return [folder, *folder.rglob("*")]


def _open_to_others(paths) -> list[str]:
    return [f"{p} {stat.filemode(p.lstat().st_mode)}" for p in paths
            if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o077]


# --- owner-only -------------------------------------------------------------------------------------

def test_everything_the_commands_write_is_owner_only(built):
    ws = built["ws"]
    assert stat.S_IMODE(ws.stat().st_mode) == 0o700
    assert stat.S_IMODE((ws / "ledger.sqlite").stat().st_mode) == 0o600
    for folder in (ws, built["outside"], built["raw"], built["key"].parent):
        assert _open_to_others(_tree(folder)) == []
    written = {p.relative_to(built["outside"]).parts[0] for p in built["outside"].rglob("*") if p.is_file()}
    assert written == {"bundle", "exports", "review"}


def test_ingest_through_the_api_makes_an_existing_workspace_owner_only(tmp_path, permissive_umask):
    raw, ws = write_raw(tmp_path / "raw"), tmp_path / "ws"
    ws.mkdir(mode=0o755)
    ws.chmod(0o755)
    (ws / "ledger.sqlite").touch()
    (ws / "ledger.sqlite").chmod(0o644)
    ingest(raw, Workspace(ws), progress=False)
    assert _open_to_others(_tree(ws)) == []


# --- rejects ----------------------------------------------------------------------------------------

def test_rejects_keep_the_row_but_no_id_card_number(built):
    rejects = built["ws"] / "rejects"
    files = [p for p in rejects.rglob("*") if p.is_file()]
    for number in built["id_numbers"]:
        assert all(number.encode() not in p.read_bytes() for p in files), number
    waybills = pq.read_table(rejects / "waybills").to_pylist()
    mine = {r["waybill_id"]: r for r in waybills if r["waybill_id"] in built["rejected_waybills"]}
    assert set(mine) == set(built["rejected_waybills"])
    assert all(r["id_card_number"] is None and r["receiver_name"] for r in mine.values())
    assert {r["reason"] for r in mine.values()} >= {"malformed_id_card"}
    report = json.loads((built["ws"] / "ingest-report.json").read_text())["tables"]["waybills"]
    assert report["rows_in"] == report["accepted"] + report["rejected"] == report["accepted"] + len(waybills)


def test_a_malformed_csv_line_of_a_table_with_id_numbers_is_not_kept(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw", fmt="csv")
    number = next(r["id_card_number"] for r in valid_rows()["waybills"] if r["id_card_number"])
    with open(raw / "waybills.csv", "a", encoding="utf-8") as handle:
        handle.write(f"W999,,,2025-01-13T00:00:00Z,x,13300002222,a,b,13300003333,c,{number},extra\n")
    assert run_cli("ingest", "--raw", raw, "--workspace", tmp_path / "ws") == 0
    assert "1 rows rejected" in capsys.readouterr().out
    rejects = pq.read_table(tmp_path / "ws" / "rejects" / "waybills").to_pylist()
    assert [r["reason"] for r in rejects] == ["malformed_row"]
    assert "line not kept" in rejects[0]["detail"]
    assert number.encode() not in (tmp_path / "ws" / "rejects" / "waybills" / "part-00000.parquet").read_bytes()


# --- --out outside the workspace ----------------------------------------------------------------------

def _listing(folder: Path) -> set[tuple[str, int]]:
    return {(str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith("ledger.sqlite")}


@pytest.mark.parametrize("command", ["export", "budget report", "dsr export"])
@pytest.mark.parametrize("where", ["ingested/orders", ".", "via a symlink"])
def test_out_inside_the_workspace_is_refused_and_nothing_written(built, capsys, command, where):
    ws = built["ws"]
    if where == "via a symlink":
        link = built["root"] / "looks-outside"
        if not link.exists():
            link.symlink_to(ws / "outputs")
        out = link / "new"
    else:
        out = ws / where
    before = _listing(ws)
    argv = {"export": ["export", "--recipient", "payment_institution", "--institution", "alipay",
                       "--as-of", AS_OF],
            "budget report": ["budget", "report"],
            "dsr export": ["dsr", "export", "--account", built["account"], "--key-file", built["key"]]}[command]
    assert run_cli(*argv, "--workspace", ws, "--out", out) == 2
    assert "lies inside the workspace" in _error_line(capsys)
    assert _listing(ws) == before
    assert not (ws / "outputs" / "new").exists()


# --- CSV cells ----------------------------------------------------------------------------------------

def _csv_cells(folder: Path) -> list[str]:
    cells = []
    for path in folder.glob("*.csv"):
        with open(path, newline="", encoding="utf-8") as handle:
            cells += [cell for row in csv.reader(handle) for cell in row]
    return cells


def test_csv_cells_a_spreadsheet_would_run_are_escaped(built):
    bundle = built["outside"] / "bundle"
    cells = _csv_cells(bundle)
    assert "'" + FORMULA_NICKNAME in cells
    assert json.dumps(FORMULA_NICKNAME) in (bundle / "bundle.json").read_text()  # the JSON keeps it exact
    exported = _csv_cells(built["outside"] / "exports")
    assert "'" + FORMULA_ORDER in exported
    assert [c for c in cells + exported if c.startswith(FORMULA_STARTS)] == []


# --- table names ----------------------------------------------------------------------------------------

def test_dp_table_outside_the_analytics_zone_is_refused(built, capsys):
    escape = built["root"] / "x"
    escape.mkdir(exist_ok=True)
    pq.write_table(pa.table({"person_id": ["p"], "amount": [1.0]}), escape / "part-0.parquet")
    table = os.path.relpath(escape, built["ws"] / "pseudonymized")
    before = _listing(built["ws"])
    assert run_cli("dp", "--workspace", built["ws"], "--key-file", built["key"], "--as-of", AS_OF,
                   "--table", table, "--count", "--epsilon", "0.1") == 2
    line = _error_line(capsys)
    assert f"--table {table!r} is not a table of the analytics zone" in line
    assert all(name in line for name in TABLE_NAMES)
    assert _listing(built["ws"]) == before


# --- no workspace from a typo -----------------------------------------------------------------------

READ_ONLY = {
    "budget show": ["budget", "show"],
    "budget report": ["budget", "report", "--out", "{out}"],
    "consent show": ["consent", "show", "--account", "A0000000001"],
    "dsr export": ["dsr", "export", "--account", "A0000000001", "--key-file", "{key}", "--out", "{out}"],
    "recommend --show": ["recommend", "--show", "A0000000001", "--key-file", "{key}"],
    "dp": ["dp", "--table", "orders", "--count", "--epsilon", "1", "--as-of", AS_OF, "--key-file", "{key}"],
    "export": ["export", "--recipient", "payment_institution", "--institution", "alipay", "--out", "{out}"],
}


@pytest.mark.parametrize("command", sorted(READ_ONLY))
def test_a_mistyped_workspace_is_an_error_and_nothing_is_created(built, tmp_path, capsys, command):
    typo = tmp_path / "portrait-workspce"
    argv = [a.format(out=tmp_path / "out", key=built["key"]) for a in READ_ONLY[command]]
    assert run_cli(*argv, "--workspace", typo) == 2
    line = _error_line(capsys)
    assert str(typo) in line and "portrait ingest" in line
    assert not typo.exists() and not (tmp_path / "out").exists()


def test_setting_a_budget_at_a_mistyped_workspace_creates_nothing(tmp_path, capsys):
    typo = tmp_path / "portrait-workspce"
    assert run_cli("budget", "set", "--workspace", typo, "--dataset", "orders", "--epsilon", "1") == 2
    assert str(typo) in _error_line(capsys) and not typo.exists()


@pytest.mark.parametrize("command", ["budget show", "budget report", "consent show"])
def test_reading_a_ledger_that_is_not_there_creates_none(tmp_path, capsys, command):
    ws = tmp_path / "ws"
    ws.mkdir()
    argv = [a.format(out=tmp_path / "out") for a in READ_ONLY[command]]
    assert run_cli(*argv, "--workspace", ws) == 2
    assert "has no ledger yet" in _error_line(capsys)
    assert list(ws.iterdir()) == []


@pytest.mark.parametrize("command", ["budget show", "consent show"])
def test_a_damaged_ledger_is_one_line_naming_the_file(tmp_path, capsys, command):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "ledger.sqlite").write_bytes(b"this is not a SQLite database, only text " * 100)
    assert run_cli(*READ_ONLY[command], "--workspace", ws) == 2
    line = _error_line(capsys)
    assert f"ledger {ws / 'ledger.sqlite'} is not a readable SQLite database" in line
    with pytest.raises(sqlite3.DatabaseError):  # left as it was, for the user to restore
        sqlite3.connect(ws / "ledger.sqlite").execute("SELECT 1 FROM sqlite_master").fetchall()


@given(st.lists(st.text(), min_size=1, max_size=6), st.integers())
def test_escaped_csv_cells_never_start_a_formula_and_keep_their_text(tmp_path_factory, texts, number):
    path = tmp_path_factory.mktemp("cells") / "cells.csv"
    write_csv_rows(path, [{**{f"c{i}": text for i, text in enumerate(texts)}, "number": number}])
    with open(path, newline="", encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))[0]
    assert written.pop("number") == str(number)  # numbers are written as they are
    arrow = escape_formulas(pa.table({"text": pa.array(texts, pa.string())}))["text"].to_pylist()
    for cells in (list(written.values()), arrow):
        assert [c for c in cells if c.startswith(FORMULA_STARTS)] == []
        assert [c[1:] if t.startswith(FORMULA_STARTS) else c for c, t in zip(cells, texts)] == texts
