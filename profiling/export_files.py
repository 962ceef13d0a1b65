"""Files handed to outside recipients: their formats, and writing them all or nothing.

Both export paths use these (``profiling.recipients`` for recipients in the mainland,
``profiling.overseas`` for receivers abroad): a file appears whole, beside its report, or not at all.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from profiling.csv_cells import escape_formulas

__all__ = ["EXPORT_FORMATS", "write_atomically", "write_rows"]

EXPORT_FORMATS = ("csv", "parquet")


def write_rows(rows: pa.Table, target: str | os.PathLike, file_format: str) -> None:
    """``rows`` as CSV (cells a spreadsheet would run escaped) or Parquet (exact values)."""
    if file_format == "csv":
        pacsv.write_csv(escape_formulas(rows), target)
    else:
        pq.write_table(rows, target)


def write_atomically(writers: Mapping[Path, Callable[[str], object]], *,
                     before_publish: Callable[[Mapping[Path, str]], object] | None = None) -> None:
    """Write every file beside its destination, then rename them all into place.

    ``before_publish`` gets ``{destination: staged file}`` once every file is written and before
    any is renamed (a transfer is logged there); if it raises, nothing is renamed and the staged
    files are removed.
    """
    staged: dict[Path, str] = {}
    try:
        for path, write in writers.items():
            fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            os.close(fd)
            staged[path] = temporary
            write(temporary)
        if before_publish is not None:
            before_publish(staged)
        for path, temporary in staged.items():
            os.replace(temporary, path)
    except BaseException:
        for temporary in staged.values():
            Path(temporary).unlink(missing_ok=True)
        raise
