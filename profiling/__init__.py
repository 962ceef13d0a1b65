"""Everything about people: the data model, identifier formats and the rules raw rows must meet."""

from profiling.errors import InternalError, KeyFileError, PortraitError, SchemaError, WorkspaceError
from profiling.keys import MasterKey, create_key_file, load_key_file
from profiling.schema import (
    INGEST_ORDER,
    TABLE_NAMES,
    TABLES,
    Field,
    Format,
    PrivacyClass,
    Table,
    arrow_schema,
    fields_of_class,
    table,
)
from profiling.validation import Reason

__all__ = [
    "INGEST_ORDER",
    "TABLE_NAMES",
    "TABLES",
    "Field",
    "Format",
    "InternalError",
    "KeyFileError",
    "MasterKey",
    "PortraitError",
    "PrivacyClass",
    "Reason",
    "SchemaError",
    "Table",
    "WorkspaceError",
    "arrow_schema",
    "create_key_file",
    "fields_of_class",
    "load_key_file",
    "table",
]
