"""The command line: what a user types, what they see, and the exit status."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from portrait_cli import run_cli
from raw_rows import valid_rows, write_raw


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys" / "master.key"
    assert run_cli("keys", "init", "--key-file", str(path)) == 0
    return path


def test_ingest_then_run(tmp_path, key_file, capsys):
    rows = valid_rows()
    rows["orders"][0]["amount"] = -3.0
    raw = write_raw(tmp_path / "raw", rows)
    ws = tmp_path / "ws"
    assert run_cli("ingest", "--raw", str(raw), "--workspace", str(ws)) == 0
    out = capsys.readouterr().out
    assert "negative_value=1" in out and "2 rows rejected" in out  # the order, and the waybill shipping it
    assert json.loads((ws / "ingest-report.json").read_text())["tables"]["orders"]["rejected"] == 1
    assert run_cli("run", "--workspace", str(ws), "--key-file", str(key_file), "--as-of", "2026-11-01T00:00:00Z") == 0
    out = capsys.readouterr().out
    assert "verify-ingested" in out and "orders" in out


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_run_on_empty_workspace_says_to_ingest(tmp_path, key_file, capsys):
    assert run_cli("run", "--workspace", str(tmp_path / "ws"), "--key-file", str(key_file), "--as-of", "2026-01-01") == 2
    assert "run `portrait ingest --raw DIR --workspace" in _error_line(capsys)


def test_run_refuses_a_key_inside_the_workspace(tmp_path, capsys):
    ws = tmp_path / "ws"
    assert run_cli("ingest", "--raw", str(write_raw(tmp_path / "raw")), "--workspace", str(ws)) == 0
    assert run_cli("keys", "init", "--key-file", str(ws / "master.key")) == 0
    capsys.readouterr()
    assert run_cli("run", "--workspace", str(ws), "--key-file", str(ws / "master.key"), "--as-of", "2026-01-01") == 2
    assert "lies inside the workspace" in _error_line(capsys)


def test_bad_as_of(tmp_path, key_file, capsys):
    ws = tmp_path / "ws"
    run_cli("ingest", "--raw", str(write_raw(tmp_path / "raw")), "--workspace", str(ws))
    capsys.readouterr()
    assert run_cli("run", "--workspace", str(ws), "--key-file", str(key_file), "--as-of", "last tuesday") == 2
    assert "--as-of 'last tuesday' is not an ISO 8601 time" in _error_line(capsys)


def test_missing_raw_table_is_one_line(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw")
    (raw / "devices.parquet").unlink()
    assert run_cli("ingest", "--raw", str(raw), "--workspace", str(tmp_path / "ws")) == 2
    line = _error_line(capsys)
    assert line.startswith("portrait: error: ") and "no devices table" in line


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "synth", "ingest", "run", "keys"):
        assert command in result.stdout


def test_demo_runs_everything_in_a_new_folder(tmp_path, capsys):
    folder = tmp_path / "demo"
    assert run_cli("demo", "--dir", str(folder), "--accounts", "300") == 0
    out = capsys.readouterr().out
    assert "verify-ingested" in out and "demo finished" in out
    report = json.loads((folder / "workspace" / "ingest-report.json").read_text())
    accounts = report["tables"]["accounts"]  # the run erases accounts cancelled longer ago than the grace period
    assert accounts["accepted"] + accounts["erased_after_ingest"] == 300
    assert all(t["rejected"] == 0 for t in report["tables"].values())  # synthetic data meets every rule
    key = folder / "keys" / "master.key"
    assert key.stat().st_mode & 0o077 == 0 and folder / "workspace" not in key.parents


def test_demo_refuses_a_folder_in_use(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "notes.txt").write_text("mine")
    assert run_cli("demo", "--dir", str(tmp_path / "demo")) == 2
    assert "is not empty" in _error_line(capsys)
    assert (tmp_path / "demo" / "notes.txt").read_text() == "mine"


def test_synth_then_ingest(tmp_path, capsys):
    raw = tmp_path / "raw"
    assert run_cli("synth", "--out", str(raw), "--accounts", "200", "--seed", "3") == 0
    assert "wrote" in capsys.readouterr().out
    assert run_cli("ingest", "--raw", str(raw), "--workspace", str(tmp_path / "ws")) == 0
    assert "rows rejected" not in capsys.readouterr().out
    assert run_cli("synth", "--out", str(raw), "--accounts", "200") == 2
    assert "portrait: error:" in _error_line(capsys)
