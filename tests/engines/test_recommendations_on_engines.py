"""The recommendation stage gives the same lists on every engine: factors fitted once, scored by the same kernel."""

from __future__ import annotations

import datetime as dt

import pyarrow.dataset as ds
import pytest

from pipelines.ingest import ingest
from pipelines.recommend import RECOMMENDATIONS_SCHEMA, write_recommendations
from pipelines.run import run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.consent import ConsentGate, SqliteConsentStore
from profiling.keys import create_key_file

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def _lists(workspace: Workspace):
    return (ds.dataset(workspace.outputs("recommendations"), format="parquet", schema=RECOMMENDATIONS_SCHEMA)
            .to_table().sort_by([("person_id", "ascending"), ("rank", "ascending")]))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("recommendations-engines")
    generate(root / "raw", accounts=400, seed=12, catalogue_items=200, progress=False)
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, progress=False)
    key = create_key_file(root / "keys" / "master.key")
    run_pipeline(workspace, root / "keys" / "master.key", AS_OF, progress=False,
                 stages=["consent-ledger", "pseudonymize"])
    with SqliteConsentStore(workspace.ledger) as store:
        eligible = ConsentGate(store).decide("personalization", AS_OF, job="test").person_frame(key)
    summary = write_recommendations(workspace, eligible, as_of=AS_OF, k=5, factors=8, iterations=4)
    return workspace, eligible, summary, _lists(workspace)


def test_recommendations_are_identical_on_every_engine(engine, prepared):
    workspace, eligible, expected_summary, expected = prepared
    personalized = expected.filter(expected.column("personalized")).num_rows
    assert personalized > 200 and expected.num_rows > personalized      # both kinds of list are there
    summary = write_recommendations(workspace, eligible, as_of=AS_OF, k=5, factors=8, iterations=4, engine=engine)
    assert summary == expected_summary
    assert _lists(workspace).equals(expected)
