"""Owner-only files and folders: everything Portrait writes holds personal data or is derived from it.

One mechanism: the process umask is tightened to ``077`` (``restrict_to_owner``) by the command line
and whenever a workspace, a budget ledger or a privacy review is opened through the API, so every
file created afterwards, by any thread or child process (pyarrow, SQLite, matplotlib, a Spark JVM),
is ``0600`` and every folder ``0700``. Tightening only ever adds bits: a stricter umask the caller
set stays. Files made before (an older workspace) are fixed with ``make_owner_only``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["OWNER_ONLY_UMASK", "make_owner_only", "restrict_to_owner"]

OWNER_ONLY_UMASK = 0o077  # no permission for group or others


def restrict_to_owner() -> int:
    """Add ``077`` to the process umask (files 0600, folders 0700 from now on); returns the umask before.

    >>> previous = restrict_to_owner()
    >>> oct(os.umask(previous) & OWNER_ONLY_UMASK)  # the umask in force; then the caller's is put back
    '0o77'
    """
    previous = os.umask(OWNER_ONLY_UMASK)
    os.umask(previous | OWNER_ONLY_UMASK)
    return previous


def make_owner_only(*paths: str | os.PathLike) -> None:
    """Take group and other permissions off each existing folder or file (not recursive; symlinks and
    missing paths are skipped), so a folder is at most 0700 and a file at most 0600."""
    for path in map(Path, paths):
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        if (stat.S_ISDIR(mode) or stat.S_ISREG(mode)) and stat.S_IMODE(mode) & OWNER_ONLY_UMASK:
            path.chmod(stat.S_IMODE(mode) & ~OWNER_ONLY_UMASK)
