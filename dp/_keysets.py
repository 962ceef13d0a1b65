"""Public group keys for one or several columns, declared before any private data is read.

A ``KeySet`` fixes which groups a release has, so every key gets a row (noisy, possibly zero)
whatever the data holds: the set of groups reveals nothing about persons. Keys come from
literal lists (``KeySet.from_dict``: the cross product of each column's values), from a public
table's distinct rows (``KeySet.from_frame``: a catalogue, a table of region codes), or from
the cross product of two key sets (``a * b``).

>>> regions = KeySet.from_dict({"region": ["north", "south"]})
>>> (regions * KeySet.from_dict({"channel": ["app", "web"]})).rows
(('north', 'app'), ('north', 'web'), ('south', 'app'), ('south', 'web'))
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from dp._errors import PrivacyParameterError

__all__ = ["MAX_KEYS", "KeySet", "source_table"]

MAX_KEYS = 1_000_000       # one noisy value is drawn per key


def _plain(value: object, column: str) -> object:
    """A key as a plain Python value (numpy scalars unwrapped); missing or unhashable values are refused."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        raise PrivacyParameterError(f"a key of column {column!r} is missing; rows with a missing value are never "
                                    f"counted in a group, so drop it from the keys")
    if not isinstance(value, Hashable):
        raise PrivacyParameterError(f"key {value!r} of column {column!r} is a {type(value).__name__}; keys must be "
                                    f"text, numbers or booleans")
    return value


def source_table(frame: object) -> str | None:
    """The analytics-zone table an Arrow table was read from (named in its schema's metadata), if any."""
    schema = getattr(frame, "schema", None)
    if not isinstance(schema, pa.Schema):
        return None
    return (schema.metadata or {}).get(b"table", b"").decode() or None


def _check_size(size: int) -> None:
    if size > MAX_KEYS:
        raise PrivacyParameterError(f"the key set has {size:,} keys, more than {MAX_KEYS:,}; group on fewer "
                                    f"columns or fewer values")


class KeySet:
    """Columns and their public key rows (distinct, in a fixed order); immutable."""

    __slots__ = ("_columns", "_rows", "sources")

    def __init__(self, columns: Sequence[str], rows: Sequence[tuple], *, sources: frozenset[str] = frozenset()) -> None:
        columns = tuple(columns)
        if not columns or len(set(columns)) != len(columns) or not all(isinstance(c, str) for c in columns):
            raise PrivacyParameterError(f"a key set needs one or more distinct column names, got {list(columns)!r}")
        _check_size(len(rows))
        checked = []
        for row in rows:
            row = tuple(row)
            if len(row) != len(columns):
                raise PrivacyParameterError(f"key {row!r} has {len(row)} value(s) for {len(columns)} column(s) "
                                            f"{', '.join(columns)}")
            checked.append(tuple(_plain(v, c) for v, c in zip(row, columns)))
        self._columns = columns
        self.sources = frozenset(sources)     # analytics-zone tables the keys were read from (checked at compile)
        self._rows = tuple(dict.fromkeys(checked))
        if not self._rows:
            raise PrivacyParameterError(f"the key set of {', '.join(columns)} is empty; pass the public list of "
                                        f"groups, or no keys to select groups privately")

    @classmethod
    def from_dict(cls, values: Mapping[str, Sequence]) -> KeySet:
        """The cross product of each column's public values (in the order given).

        >>> KeySet.from_dict({"category": ["a", "b"]}).rows
        (('a',), ('b',))
        """
        if not isinstance(values, Mapping) or not values:
            raise PrivacyParameterError(f"KeySet.from_dict needs a mapping of column -> values, got {values!r}")
        columns = list(values)
        lists = []
        for column in columns:
            column_values = values[column]
            if isinstance(column_values, (str, bytes)) or not isinstance(column_values, (Sequence, np.ndarray,
                                                                                        pd.Series, pd.Index)):
                raise PrivacyParameterError(f"the keys of {column!r} must be a list of values, got {column_values!r}")
            lists.append(list(dict.fromkeys(_plain(v, column) for v in column_values)))
        _check_size(math.prod(len(v) for v in lists))
        return cls(columns, list(itertools.product(*lists)))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame | pa.Table, columns: Sequence[str] | None = None) -> KeySet:
        """The distinct rows of a public table's ``columns`` (all of them by default), in order of appearance.

        Only for tables that hold nothing about persons (a catalogue, region codes): the keys are released.
        """
        table = frame.to_pandas() if isinstance(frame, pa.Table) else frame
        if not isinstance(table, pd.DataFrame):
            raise PrivacyParameterError(f"KeySet.from_frame needs a pandas DataFrame or an Arrow table, got "
                                        f"{type(frame).__name__}")
        columns = list(table.columns) if columns is None else [columns] if isinstance(columns, str) else list(columns)
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise PrivacyParameterError(f"the public table has no column {', '.join(map(repr, missing))}; it has "
                                        f"{', '.join(map(str, table.columns))}")
        rows = table[columns].drop_duplicates()
        _check_size(len(rows))
        return cls(columns, [tuple(row) for row in rows.itertuples(index=False, name=None)],
                   sources=frozenset(filter(None, [source_table(frame)])))

    @property
    def columns(self) -> tuple[str, ...]:
        return self._columns

    @property
    def rows(self) -> tuple[tuple, ...]:
        return self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def __mul__(self, other: KeySet) -> KeySet:
        """Every key of ``self`` with every key of ``other`` (their columns must differ)."""
        if not isinstance(other, KeySet):
            return NotImplemented
        shared = set(self.columns) & set(other.columns)
        if shared:
            raise PrivacyParameterError(f"both key sets have column(s) {', '.join(sorted(shared))}; a cross product "
                                        f"needs different columns")
        _check_size(len(self) * len(other))
        return KeySet((*self.columns, *other.columns), [a + b for a in self.rows for b in other.rows],
                      sources=self.sources | other.sources)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeySet) and (self.columns, self.rows) == (other.columns, other.rows)

    def __hash__(self) -> int:
        return hash((self._columns, self._rows))

    def __repr__(self) -> str:
        return f"KeySet(columns={list(self.columns)!r}, {len(self):,} keys)"

    def to_frame(self) -> pd.DataFrame:
        """One row per key, one column per key column."""
        return pd.DataFrame(list(self.rows), columns=list(self.columns))
