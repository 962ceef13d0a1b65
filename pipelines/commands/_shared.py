"""What several subcommands print or accept the same way."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines.workspace import Workspace
from profiling.errors import WorkspaceError

__all__ = ["DEFAULT_WORKSPACE", "add_workspace_argument", "existing_ledger", "existing_workspace", "format_stages",
           "format_table", "outside_workspace", "show_progress"]

DEFAULT_WORKSPACE = "portrait-workspace"


def add_workspace_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=DEFAULT_WORKSPACE,
                        help=f"workspace folder (default {DEFAULT_WORKSPACE})")


def existing_workspace(path: str | os.PathLike) -> Workspace:
    """The workspace at ``path``, for a command that must not create one (a mistyped path creates nothing)."""
    workspace = Workspace(path)
    if not workspace.root.is_dir():
        raise WorkspaceError(f"workspace {workspace.root} does not exist (check --workspace); a workspace is "
                             f"created by `portrait ingest --raw DIR --workspace {workspace.root}`")
    return workspace


def existing_ledger(workspace: Workspace) -> Path:
    """The workspace's ledger file, for a command that only reads it (it is not created)."""
    if not workspace.ledger.is_file():
        raise WorkspaceError(f"workspace {workspace.root} has no ledger yet ({workspace.ledger.name}): nothing has "
                             f"been recorded there; `portrait run --workspace {workspace.root} ...` creates it")
    return workspace.ledger


def outside_workspace(path: str | os.PathLike, workspace: Workspace, option: str = "--out") -> Path:
    """``path`` for files written for people, refused (before anything is written) when it lies in the workspace.

    Stages replace the workspace's folders whole, and its zones must hold only what the stages wrote:
    an export there would be lost or would break the next run. Symlinks are resolved first.
    """
    if workspace.holds(path):
        raise WorkspaceError(f"{option} {path} lies inside the workspace {workspace.root}; "
                             f"write to a folder outside the workspace")
    return Path(path)


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars on a terminal only, so logs of scheduled jobs stay readable."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def format_table(rows: list[dict]) -> str:
    """Rows of dicts as an aligned plain-text table (columns in first-seen order)."""
    if not rows:
        return "(nothing to show)"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(r[i].replace(".", "", 1).isdigit() or not r[i] for r in cells) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def format_stages(rows: list[dict]) -> str:
    """Summary rows of a run (each with a ``stage`` key) as one table per stage, in order."""
    stages = list(dict.fromkeys(row["stage"] for row in rows))
    return "\n\n".join(f"{stage}\n" + format_table([{k: v for k, v in row.items() if k != "stage"}
                                                     for row in rows if row["stage"] == stage])
                       for stage in stages)
