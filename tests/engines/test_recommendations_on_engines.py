"""The recommendation stage gives the same lists on every engine: factors fitted once, scored by the same kernel."""

from __future__ import annotations

import pyarrow.dataset as ds
import pytest

from engines._workspaces import AS_OF, prepared_workspace
from pipelines.recommend import RECOMMENDATIONS_SCHEMA, write_recommendations
from pipelines.workspace import Workspace


def _lists(workspace: Workspace):
    return (ds.dataset(workspace.outputs("recommendations"), format="parquet", schema=RECOMMENDATIONS_SCHEMA)
            .to_table().sort_by([("person_id", "ascending"), ("rank", "ascending")]))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    workspace, decision, key = prepared_workspace(tmp_path_factory.mktemp("recommendations-engines"), accounts=400,
                                                  seed=12, catalogue_items=200,
                                                  stages=["consent-ledger", "pseudonymize"])
    eligible = decision.person_frame(key)
    summary = write_recommendations(workspace, eligible, as_of=AS_OF, k=5, factors=8, iterations=4)
    return workspace, eligible, summary, _lists(workspace)


def test_recommendations_are_identical_on_every_engine(engine, prepared):
    workspace, eligible, expected_summary, expected = prepared
    personalized = expected.filter(expected.column("personalized")).num_rows
    assert personalized > 200 and expected.num_rows > personalized      # both kinds of list are there
    summary = write_recommendations(workspace, eligible, as_of=AS_OF, k=5, factors=8, iterations=4, engine=engine)
    assert summary == expected_summary
    assert _lists(workspace).equals(expected)
