"""Everything about running: the workspace, ingest, the synthetic data generator and the command line."""

from pipelines.ingest import TableReport, ingest
from pipelines.workspace import Workspace

__all__ = ["TableReport", "Workspace", "ingest"]
