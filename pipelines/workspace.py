"""The workspace folder every stage reads and writes, and the atomic way to change it.

Layout (kept by every stage)::

    WS/ingested/<table>/      accepted raw rows, Parquet (the identifiable zone)
    WS/rejects/<table>/       rejected rows: source_file, source_row, column, reason, detail + raw values
    WS/outputs/<name>/        derived data
    WS/ingest-report.json     rows in / accepted / rejected per table of the last ingest
    WS/ledger.sqlite          consent and privacy-budget ledgers, audit log

Folders are replaced whole: a stage writes into a staging folder inside the workspace and
``publish`` renames the results into place, so a failed or interrupted stage leaves the
previous contents as they were.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from profiling.errors import WorkspaceError
from profiling.schema import TABLE_NAMES, arrow_schema

__all__ = ["Workspace", "write_json_atomic"]


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class Workspace:
    """Paths of one workspace folder (default ``./portrait-workspace``)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def ingested(self, table: str) -> Path:
        return self.root / "ingested" / table

    def rejects(self, table: str) -> Path:
        return self.root / "rejects" / table

    def outputs(self, name: str) -> Path:
        return self.root / "outputs" / name

    @property
    def ingest_report(self) -> Path:
        return self.root / "ingest-report.json"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    def require_ingested(self) -> None:
        """Raise ``WorkspaceError`` unless every raw table has been ingested."""
        missing = [t for t in TABLE_NAMES if not self.ingested(t).is_dir()]
        if missing:
            raise WorkspaceError(
                f"workspace {self.root} has no ingested {', '.join(missing)}; "
                f"run `portrait ingest --raw DIR --workspace {self.root}` first"
            )

    def dataset(self, table: str) -> ds.Dataset:
        """The ingested rows of ``table`` as a pyarrow dataset (read lazily, in batches)."""
        self.require_ingested()
        return ds.dataset(self.ingested(table), format="parquet", schema=arrow_schema(table))

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        return self.dataset(table).to_table(columns=columns)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder inside the workspace (same file system, so renames are atomic), removed on exit."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.root / f".staging-{uuid.uuid4().hex}"
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def publish(self, replacements: Mapping[Path, Path]) -> None:
        """Move each staged folder onto its destination, replacing what was there.

        Each destination is swapped by two renames (old out of the way, new in), so readers see
        either the old or the new folder, never a half-written one.
        """
        for destination, staged in replacements.items():
            if not staged.is_dir():
                raise WorkspaceError(f"nothing staged for {destination}")
            destination.parent.mkdir(parents=True, exist_ok=True)
            retired = destination.parent / f".retired-{destination.name}-{uuid.uuid4().hex}"
            if destination.exists():
                os.rename(destination, retired)
            os.rename(staged, destination)
            shutil.rmtree(retired, ignore_errors=True)
