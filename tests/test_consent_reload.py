"""Reloading the ingested consent events: files loaded whole are not read again, and skipping never
changes what the ledger holds."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.ingest import ingest
from pipelines.manifest import DamagedFolderError, write_manifests
from pipelines.run import load_consent_events
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.consent import SqliteConsentStore


@pytest.fixture
def workspace(tmp_path):
    generate(tmp_path / "raw", accounts=60, seed=5, catalogue_items=50, progress=False)
    workspace = Workspace(tmp_path / "ws")
    ingest(tmp_path / "raw", workspace, progress=False)
    return workspace


def _events(workspace: Workspace) -> int:
    with SqliteConsentStore(workspace.ledger) as store:
        return store.events().num_rows


def _refuse_reading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the events were read again")

    monkeypatch.setattr(SqliteConsentStore, "append_table", refuse)


def test_a_rerun_on_the_same_files_skips_reading_them(workspace, monkeypatch):
    first = load_consent_events(workspace)
    assert first.recorded == first.offered > 0
    with monkeypatch.context() as patched:
        _refuse_reading(patched)
        again = load_consent_events(workspace)
    assert (again.offered, again.recorded, again.already_present) == (first.offered, 0, first.offered)
    assert _events(workspace) == first.offered


def test_new_files_are_loaded_and_only_their_new_events_recorded(workspace):
    first = load_consent_events(workspace)
    folder = workspace.ingested("consent_events")
    (existing,) = sorted(folder.glob("*.parquet"))[:1]
    row = pq.read_table(existing).slice(0, 1)
    column = row.schema.get_field_index("event_id")
    added = row.set_column(column, row.schema.field(column), pa.array(["evt-added-later"], pa.string()))
    pq.write_table(added, folder / "zz-added.parquet")
    with pytest.raises(DamagedFolderError, match="zz-added.parquet is not listed in"):
        load_consent_events(workspace)  # a file dropped into a published folder is refused
    write_manifests(folder)  # as publishing a new ingest does
    report = load_consent_events(workspace)
    assert (report.offered, report.recorded) == (first.offered + 1, 1)
    assert _events(workspace) == first.offered + 1


def test_after_an_erasure_every_event_is_offered_again(workspace, monkeypatch):
    first = load_consent_events(workspace)
    with SqliteConsentStore(workspace.ledger) as store:
        account = store.events().column("account_id")[0].as_py()
        removed = store.erase_account(account)
    assert removed > 0
    report = load_consent_events(workspace)  # the files still hold the account's events: the old behaviour
    assert (report.offered, report.recorded) == (first.offered, removed)
    with monkeypatch.context() as patched:
        _refuse_reading(patched)
        assert load_consent_events(workspace).recorded == 0
