"""Portraits are the same on every engine: the same kernel, whatever partitions and row order it gets."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from pipelines.ingest import ingest
from pipelines.portraits import write_portraits
from pipelines.run import run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.consent import ConsentGate, SqliteConsentStore
from profiling.keys import create_key_file

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("portraits-engines")
    generate(root / "raw", accounts=300, seed=11, catalogue_items=300, progress=False)
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, progress=False)
    key = create_key_file(root / "keys" / "master.key")
    run_pipeline(workspace, root / "keys" / "master.key", AS_OF, progress=False,
                 stages=["consent-ledger", "pseudonymize", "identity", "portraits"])
    with SqliteConsentStore(workspace.ledger) as store:
        decision = ConsentGate(store).decide("personalization", AS_OF, job="test")
    eligible = pa.table({"person_id": decision.person_ids(key), "dnd": decision.dnd,
                         "non_personalized": decision.non_personalized})
    expected = ds.dataset(workspace.outputs("portraits")).to_table().sort_by("person_id")
    return workspace, eligible, expected


def test_portraits_are_identical_on_every_engine(engine, prepared):
    workspace, eligible, expected = prepared
    assert expected.num_rows > 50
    summary = write_portraits(workspace, eligible, as_of=AS_OF, engine=engine)
    assert summary["rows"] == expected.num_rows
    written = ds.dataset(workspace.outputs("portraits")).to_table().sort_by("person_id")
    assert written.cast(expected.schema).equals(expected)
    assert (workspace.outputs("portraits") / "_data_dictionary.json").is_file()
