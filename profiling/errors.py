"""Exceptions shared by every package.

Caller mistakes (bad input files, bad parameters) raise ``PortraitError`` or one of
its subclasses, which are also ``ValueError`` so generic callers can catch them.
A failed internal invariant raises ``InternalError``: its message says it is a bug.
"""

from __future__ import annotations

__all__ = ["PortraitError", "SchemaError", "KeyFileError", "WorkspaceError", "InternalError"]


class PortraitError(ValueError):
    """A mistake in the caller's input or parameters; the message says how to fix it."""


class SchemaError(PortraitError):
    """A whole file or column does not fit the data model (missing file, missing column, wrong type)."""


class KeyFileError(PortraitError):
    """The key file is missing, unreadable, malformed or readable by others."""


class WorkspaceError(PortraitError):
    """The workspace folder is missing a stage's inputs or is in an unexpected state."""


class InternalError(RuntimeError):
    """An invariant of Portrait itself failed. This is a bug: please report it with the traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(f"internal error (this is a bug in Portrait, please report it): {message}")
