"""Portraits are the same on every engine: the same kernel, whatever partitions and row order it gets."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from engines._workspaces import AS_OF, prepared_workspace
from pipelines.manifest import MANIFEST
from pipelines.portraits import write_portraits
from profiling.portrait import DATA_DICTIONARY, data_dictionary


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    workspace, decision, key = prepared_workspace(tmp_path_factory.mktemp("portraits-engines"), accounts=300, seed=11,
                                                  catalogue_items=300,
                                                  stages=["consent-ledger", "pseudonymize", "identity", "portraits"])
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
    # the dictionary is published with the portraits: the manifest lists it, so the folder verifies
    assert workspace.verified(workspace.outputs("portraits")) == workspace.outputs("portraits")
    assert json.loads((workspace.outputs("portraits") / DATA_DICTIONARY).read_text()) == data_dictionary()
    assert DATA_DICTIONARY in json.loads((workspace.outputs("portraits") / MANIFEST).read_text())["files"]
