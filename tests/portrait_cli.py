"""The ``portrait`` command line run in this process, as the tests call it."""

from __future__ import annotations

import os

from pipelines.cli import main


def run_cli(*argv: str | os.PathLike) -> int:
    """``portrait --quiet ARGV...`` (paths and numbers as text); returns the exit status."""
    return main(["--quiet", *map(str, argv)])
