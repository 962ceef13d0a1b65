"""Synthetic data with its ground truth, ingested into a fresh workspace, and some stages of the job run.

Shared by the benchmarks that score a stage against the truth (identity, risk). The raw data and
the truth are generated once per folder and reused; the workspace and key file are made anew.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.ingest import ingest
from pipelines.run import run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.keys import MasterKey, create_key_file


@dataclass
class SyntheticJob:
    """The folders of one run and its timings in seconds (``synth`` only when the data was generated)."""

    raw: Path
    truth: Path
    workspace: Workspace
    key_file: Path
    key: MasterKey
    seconds: dict[str, float] = field(default_factory=dict)


def synthetic_job(scratch: Path, *, accounts: int, seed: int, as_of: dt.datetime,
                  stages: Sequence[str]) -> SyntheticJob:
    """Generate (unless ``scratch`` holds it already), ingest, and run ``stages`` at ``as_of``."""
    scratch.mkdir(parents=True, exist_ok=True)
    raw, truth = scratch / "raw", scratch / "raw-truth"
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if not (raw.is_dir() and truth.is_dir()):
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(truth, ignore_errors=True)
        generate(raw, accounts=accounts, seed=seed, truth_dir=truth, progress=False)
        seconds["synth"] = round(time.perf_counter() - started, 2)
    workspace_root, key_file = scratch / "ws", scratch / "keys" / "master.key"
    shutil.rmtree(workspace_root, ignore_errors=True)
    shutil.rmtree(key_file.parent, ignore_errors=True)
    key = create_key_file(key_file)
    workspace = Workspace(workspace_root)
    started = time.perf_counter()
    ingest(raw, workspace, key=key, progress=False)
    seconds["ingest"] = round(time.perf_counter() - started, 2)

    def timed(stage: str, elapsed: float) -> None:
        seconds[stage] = round(elapsed, 2)

    run_pipeline(workspace, key_file, as_of, progress=False, stages=stages, on_stage=timed)
    return SyntheticJob(raw, truth, workspace, key_file, key, seconds)
