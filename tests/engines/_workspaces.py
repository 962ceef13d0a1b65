"""A small synthetic workspace taken through the first stages of the job, for the engine suites."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pipelines.ingest import ingest
from pipelines.run import run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.consent import ConsentGate, SqliteConsentStore
from profiling.keys import create_key_file

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def prepared_workspace(root: Path, *, accounts: int, seed: int, catalogue_items: int, stages: list[str]):
    """(workspace, the personalization decision at ``AS_OF``, master key) after ``stages`` ran on fresh data."""
    generate(root / "raw", accounts=accounts, seed=seed, catalogue_items=catalogue_items, progress=False)
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, progress=False)
    key = create_key_file(root / "keys" / "master.key")
    run_pipeline(workspace, root / "keys" / "master.key", AS_OF, progress=False, stages=stages)
    with SqliteConsentStore(workspace.ledger) as store:
        decision = ConsentGate(store).decide("personalization", AS_OF, job="test")
    return workspace, decision, key
