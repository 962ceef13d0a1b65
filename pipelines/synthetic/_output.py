"""The output folders: refusing to overwrite data, writing into a hidden sibling renamed when complete,
one Parquet part file per table and batch, and the ground truth kept apart from the raw data set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from profiling.errors import InternalError
from profiling.schema import TABLE_NAMES, arrow_schema

_COMPRESSION = "snappy"

# Columns with few distinct values: dictionary-encode them, write everything else plain.
_DICTIONARY_COLUMNS = {
    "catalogue": ["kind", "category"],
    "accounts": ["gender", "region"],
    "devices": ["device_type", "os", "carrier", "app_version"],
    "orders": ["currency", "payment_institution", "category"],
    "waybills": ["origin_region", "destination_region", "service_type"],
    "device_events": ["event_type", "coarse_region"],
    "consent_events": ["event_type", "purpose", "policy_version", "channel"],
}


def _write(directory: Path, table_name: str, part: int, columns: dict[str, pa.Array] | pa.Table) -> int:
    schema = arrow_schema(table_name)
    if isinstance(columns, dict):
        if list(columns) != schema.names:
            raise InternalError(f"{table_name}: generated columns {list(columns)} differ from the schema's "
                                f"{schema.names}")
        columns = pa.table(columns, schema=schema)
    # Parquet's compliant list element name ("element") would not read back as the model's "item".
    pq.write_table(columns, directory / table_name / f"part-{part:05d}.parquet", compression=_COMPRESSION,
                   use_dictionary=_DICTIONARY_COLUMNS[table_name], use_compliant_nested_type=False)
    return columns.num_rows


def _checked_out_dir(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} is a file; give a new folder for the synthetic data set")
    if out.is_dir() and any(out.iterdir()):
        held = sorted(p.name for p in out.iterdir() if p.name in TABLE_NAMES)
        what = f"already holds the tables {', '.join(held)}" if held else "is not empty"
        raise ValueError(f"out_dir {out} {what}; refusing to overwrite data: choose a new folder or remove this one")
    return out


def _checked_truth_dir(truth_dir: str | os.PathLike, out: Path) -> Path:
    """The ground-truth folder: new or empty, and neither inside the raw data set nor holding it."""
    truth = _checked_out_dir(truth_dir)
    raw, kept = out.resolve(), truth.resolve()
    if kept == raw or raw in kept.parents or kept in raw.parents:
        sibling = out.parent / f"{out.name}-truth"
        raise ValueError(f"truth_dir {truth} and out_dir {out} overlap; the ground truth must lie apart from the raw "
                         f"data set (ingest reads all of out_dir): use a sibling such as {sibling}")
    return truth


@contextmanager
def _partial_folder(out: Path, tables: Iterable[str] = TABLE_NAMES) -> Iterator[Path]:
    """A new hidden sibling of ``out`` with one empty folder per table, renamed to ``out`` when the block ends.

    The data set appears at ``out`` only when complete: on any exception (an interruption
    included) the partial folder is removed and the exception goes on.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        partial.chmod(0o777 & ~umask)
        for name in tables:
            (partial / name).mkdir()
        yield partial
        _checked_out_dir(out)
        partial.rename(out)  # atomic; replaces an empty folder
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
