"""Everything about running: the workspace, ingest, the synthetic data generator, the main job and the command line.

The job and the generator are imported on first use: a Spark worker that unpickles one stage's
kernel (``pipelines.door``, ``pipelines.engine_jobs``) imports that module, not every stage.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipelines.ingest import TableReport, ingest
from pipelines.workspace import Workspace

_LAZY = {"STAGES": "pipelines.run", "RunContext": "pipelines.run", "Stage": "pipelines.run",
         "run_pipeline": "pipelines.run", "generate": "pipelines.synthetic"}

__all__ = ["STAGES", "RunContext", "Stage", "TableReport", "Workspace", "generate", "ingest", "run_pipeline"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
