"""The main job: every stage that exists, in order, on an ingested workspace.

A stage is a named function of a ``RunContext`` returning summary rows (dicts) for the printed
table. Stages run in the order of ``STAGES``; each writes its outputs atomically, so a failed
stage leaves the previous run's outputs in place.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipelines.workspace import Workspace
from profiling.errors import KeyFileError, WorkspaceError
from profiling.keys import MasterKey, load_key_file
from profiling.schema import TABLE_NAMES, arrow_schema

__all__ = ["RunContext", "Stage", "STAGES", "run_pipeline", "parse_as_of"]


@dataclass(frozen=True)
class RunContext:
    workspace: Workspace
    key: MasterKey
    as_of: dt.datetime  # UTC; the moment consent and features are evaluated at
    progress: bool = True


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable[[RunContext], list[dict]]


def parse_as_of(text: str) -> dt.datetime:
    """Parse an ISO 8601 moment; one without a UTC offset is taken as UTC."""
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--as-of {text!r} is not an ISO 8601 time such as 2026-11-01T00:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def _verify_ingested(context: RunContext) -> list[dict]:
    """Every ingested table has the model's schema and as many rows as ingest accepted."""
    workspace = context.workspace
    workspace.require_ingested()
    if not workspace.ingest_report.is_file():
        raise WorkspaceError(f"{workspace.ingest_report} is missing; rerun `portrait ingest`")
    report = json.loads(workspace.ingest_report.read_text(encoding="utf-8"))["tables"]
    rows = []
    for name in TABLE_NAMES:
        files = sorted(workspace.ingested(name).glob("*.parquet"))
        count = 0
        for path in files:
            metadata = pq.read_metadata(path)
            if not metadata.schema.to_arrow_schema().equals(arrow_schema(name)):
                raise WorkspaceError(f"{path} does not have the {name} schema of this version; rerun `portrait ingest`")
            count += metadata.num_rows
        if count != report[name]["accepted"]:
            raise WorkspaceError(f"{workspace.ingested(name)} holds {count} rows but ingest accepted "
                                 f"{report[name]['accepted']}; rerun `portrait ingest`")
        rows.append({"stage": "verify-ingested", "table": name, "rows": count,
                     "rejected": report[name]["rejected"]})
    return rows


STAGES: list[Stage] = [
    Stage("verify-ingested", "check the ingested tables against the data model and the ingest report",
          _verify_ingested),
]


def run_pipeline(workspace: Workspace, key_file: str | Path, as_of: dt.datetime, *,
                 progress: bool = True) -> list[dict]:
    """Run every stage in ``STAGES`` and return their summary rows.

    The key file must lie outside the workspace: outputs are shared more widely than keys.
    """
    key_path = Path(key_file).resolve()
    if workspace.root.resolve() in key_path.parents:
        raise KeyFileError(f"key file {key_file} lies inside the workspace {workspace.root}; keep keys apart from data")
    context = RunContext(workspace=workspace, key=load_key_file(key_path), as_of=as_of, progress=progress)
    summary: list[dict] = []
    for stage in tqdm(STAGES, desc="run", unit=" stage", disable=not progress):
        summary.extend(stage.run(context))
    return summary
