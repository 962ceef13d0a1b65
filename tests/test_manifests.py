"""Published folders carry manifests; damage to a published file or to the ledger stops a command, named."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import cli
from pipelines.manifest import MANIFEST, DamagedFolderError, verify_folder, write_manifests
from pipelines.run import run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.keys import create_key_file

AS_OF = "2026-11-01T00:00:00Z"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The folder of a workspace after `portrait ingest` (300 accounts), and the key file."""
    root = tmp_path_factory.mktemp("manifests")
    generate(root / "raw", accounts=300, seed=5, catalogue_items=40, progress=False)
    key_file = root / "keys" / "master.key"
    create_key_file(key_file)
    ws = root / "ws"
    assert cli.main(["-q", "ingest", "--raw", str(root / "raw"), "--workspace", str(ws),
                     "--key-file", str(key_file)]) == 0
    return root, key_file


@pytest.fixture()
def copy(prepared, tmp_path):
    root, key_file = prepared
    shutil.copytree(root / "ws", tmp_path / "ws")
    return Workspace(tmp_path / "ws"), key_file


def _run(capsys, workspace, key_file) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["-q", "run", "--workspace", str(workspace.root), "--key-file", str(key_file), "--as-of", AS_OF])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _zero_placed_at_bytes(path, count=200) -> int:
    """Zero ``count`` bytes inside the placed_at dictionary page; return how many times became 1970."""
    column = pq.ParquetFile(path).metadata.row_group(0).column(2)
    assert column.path_in_schema == "placed_at"
    start = column.dictionary_page_offset or column.data_page_offset
    with open(path, "r+b") as handle:
        handle.seek(start + column.total_compressed_size // 2)
        handle.write(b"\0" * count)
    times = pq.read_table(path, columns=["placed_at"]).column("placed_at")
    return int(pc.sum(pc.equal(pc.year(times), 1970)).as_py() or 0)


def test_zeroed_bytes_in_an_ingested_file_stop_the_run(copy, capsys):
    workspace, key_file = copy
    damaged = workspace.ingested("orders") / "part-00000.parquet"
    # The damage reads back without an error: only the manifest can tell.
    assert _zero_placed_at_bytes(damaged) > 0
    code, out, err = _run(capsys, workspace, key_file)
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith(f"portrait: error: {damaged} is damaged: its SHA-256 differs from the one published in "
                          f"{MANIFEST}; rerun `portrait ingest --raw DIR --workspace {workspace.root}`")
    assert not workspace.pseudonymized("orders").exists()  # stopped before the door


@pytest.mark.parametrize("damage, message", [
    ("truncate", "part-00000.parquet is damaged: {size} bytes where {published} were published"),
    ("remove_manifest", "accounts has no _manifest.json (written by an older version, or the manifest was removed)"),
    ("garble_manifest", "accounts/_manifest.json is damaged (not a manifest of this version)"),
    ("add_file", "accounts/part-99999.parquet is not listed in"),
    ("remove_file", "accounts/part-00000.parquet is listed in"),
])
def test_every_kind_of_damage_is_named(copy, capsys, damage, message):
    workspace, key_file = copy
    folder = workspace.ingested("accounts")
    data = folder / "part-00000.parquet"
    published = data.stat().st_size
    if damage == "truncate":
        os.truncate(data, published - 10)
    elif damage == "remove_manifest":
        (folder / MANIFEST).unlink()
    elif damage == "garble_manifest":
        (folder / MANIFEST).write_text("{not json")
    elif damage == "add_file":
        shutil.copy(data, folder / "part-99999.parquet")
    else:
        data.unlink()
    code, _, err = _run(capsys, workspace, key_file)
    assert code == 2 and err.count("\n") == 1
    assert message.format(size=published - 10, published=published) in err
    assert "rerun `portrait ingest --raw DIR" in err


def test_publish_writes_a_manifest_into_every_folder_and_the_run_checks_the_analytics_zone(copy, capsys):
    workspace, key_file = copy
    code, out, _ = _run(capsys, workspace, key_file)
    assert code == 0
    # the run's k-anonymity summary names the quasi-identifiers it measured
    anonymity = out.split("k-anonymity\n", 1)[1].split("\n\n", 1)[0]
    assert "quasi_identifiers" in anonymity and "age_band+gender+province" in anonymity
    report = json.loads((workspace.root / "k-anonymity-report.json").read_text())
    assert report["quasi_identifiers"] == ["age_band", "gender", "province"]
    folders = [workspace.ingested("orders").parent, workspace.pseudonymized("orders").parent,
               workspace.outputs("identity"), workspace.outputs("portraits"), workspace.outputs("recommendations")]
    checked = 0
    for top in folders:
        for directory, _, names in os.walk(top):
            listed = json.loads((workspace.root / directory / MANIFEST).read_text())["files"]
            files = sorted(n for n in names if n != MANIFEST)
            assert sorted(listed) == files
            for name in files:
                content = (workspace.root / directory / name).read_bytes()
                assert listed[name] == {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
                checked += 1
    assert checked >= 20
    # a damaged analytics-zone file stops the stage that reads it, before it reads a row
    damaged = workspace.pseudonymized("accounts") / "part-00000.parquet"
    with open(damaged, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff")
    with pytest.raises(DamagedFolderError, match=f"{damaged} is damaged.*rerun `portrait run --workspace"):
        run_pipeline(workspace, key_file, cli.parse_as_of(AS_OF), progress=False, stages=["k-anonymity"])
    # an output is named with the folder to remove (a kept release is not redone by every run)
    (workspace.outputs("identity") / "devices" / MANIFEST).unlink()
    with pytest.raises(DamagedFolderError, match=f"devices has no {MANIFEST} .*; remove "
                                                 f"{workspace.outputs('identity')} and rerun `portrait run"):
        run_pipeline(workspace, key_file, cli.parse_as_of(AS_OF), progress=False, stages=["portraits"])


@pytest.mark.parametrize("damage", ["garble", "truncate"])
def test_a_damaged_ledger_is_one_line_naming_the_file(copy, capsys, damage):
    workspace, key_file = copy
    assert cli.main(["consent", "load", "--workspace", str(workspace.root)]) == 0
    ledger = workspace.ledger
    for suffix in ("-wal", "-shm"):
        ledger.with_name(ledger.name + suffix).unlink(missing_ok=True)
    size = ledger.stat().st_size
    if damage == "garble":
        with open(ledger, "r+b") as handle:
            handle.write(b"\x13" * 64)
    else:
        os.truncate(ledger, size // 2)
    capsys.readouterr()
    assert cli.main(["consent", "show", "--account", "A0000000001", "--workspace", str(workspace.root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"portrait: error: ledger {ledger} is ")
    assert ("truncated" if damage == "truncate" else "not a readable SQLite database") in err
    code, _, err = _run(capsys, workspace, key_file)  # the run opens the budget ledger first
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"portrait: error: ledger {ledger} ")


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=10)


@settings(max_examples=80, deadline=None)
@given(content=st.one_of(st.binary(max_size=64), _JSON.map(lambda value: json.dumps(value).encode()),
                         st.fixed_dictionaries({"format": st.just("portrait-manifest-1"), "files": _JSON}).map(
                             lambda value: json.dumps(value).encode())))
def test_any_damaged_manifest_is_a_named_error(tmp_path_factory, content):
    folder = tmp_path_factory.mktemp("folder")
    (folder / "part-0.parquet").write_bytes(b"PAR1")
    write_manifests(folder)
    (folder / MANIFEST).write_bytes(content)
    try:
        verify_folder(folder, rebuild="rerun it")
    except DamagedFolderError as error:
        assert str(folder) in str(error) and str(error).endswith("rerun it") and "\n" not in str(error)
    else:  # only a manifest that still lists the one file exactly passes
        listed = json.loads(content)["files"]
        assert list(listed) == ["part-0.parquet"]
