"""Everything about running: the workspace, ingest, the synthetic data generator, the main job and the command line."""

from pipelines.ingest import TableReport, ingest
from pipelines.run import STAGES, RunContext, Stage, run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace

__all__ = ["STAGES", "RunContext", "Stage", "TableReport", "Workspace", "generate", "ingest", "run_pipeline"]
