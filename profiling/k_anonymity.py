"""k-anonymity of person-level tables that leave the engine: class sizes, and suppression of small classes.

An equivalence class is the set of rows sharing one combination of quasi-identifier values (a
null is a value of its own). A table is k-anonymous when every class has at least ``k`` rows:
each row then hides among at least ``k - 1`` others with the same quasi-identifiers. This is a
syntactic guarantee about the released rows only, not differential privacy: it says nothing
about what the attributes outside the quasi-identifiers reveal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from profiling.errors import PortraitError
from profiling.schema import TABLES, PrivacyClass

__all__ = ["DEFAULT_K", "KAnonymityResult", "default_quasi_identifiers", "enforce_k_anonymity"]

DEFAULT_K = 10
# Generalized columns the pseudonymization door writes in place of raw quasi-identifiers.
_GENERALIZED = ("age_band", "province", "origin_province", "destination_province", "coarse_province")
_REGISTRY = tuple(dict.fromkeys(f.name for t in TABLES.values() for f in t.fields
                                if f.privacy is PrivacyClass.QUASI_IDENTIFIER))


def default_quasi_identifiers(columns: Iterable[str]) -> list[str]:
    """The columns among ``columns`` that are quasi-identifiers: raw ones the field registry marks
    QUASI_IDENTIFIER, and the generalized ones (age band, provinces), in the given order.

    >>> default_quasi_identifiers(["person_id", "province", "age_band", "gender", "amount"])
    ['province', 'age_band', 'gender']
    """
    known = set(_REGISTRY) | set(_GENERALIZED)
    return [c for c in columns if c in known]


@dataclass(frozen=True)
class KAnonymityResult:
    """What ``enforce_k_anonymity`` found and kept.

    ``class_sizes`` maps a class size to how many classes have that size (before suppression);
    ``smallest_class`` is the smallest class before suppression (0 for an empty table) and
    ``smallest_kept_class`` the smallest after it (0 when nothing is kept).
    """

    table: pa.Table | pd.DataFrame = field(repr=False)
    k: int
    quasi_identifiers: tuple[str, ...]
    classes: int
    smallest_class: int
    smallest_kept_class: int
    rows_kept: int
    rows_suppressed: int
    class_sizes: dict[int, int] = field(repr=False)

    def __repr__(self) -> str:
        return (f"KAnonymityResult(k={self.k}, quasi_identifiers={list(self.quasi_identifiers)}, "
                f"classes={self.classes}, smallest_class={self.smallest_class}, "
                f"smallest_kept_class={self.smallest_kept_class}, rows_kept={self.rows_kept}, "
                f"rows_suppressed={self.rows_suppressed})")


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer, float)):
        raise TypeError(f"k must be an integer >= 1, not {type(k).__name__}")
    if isinstance(k, float) and not (math.isfinite(k) and k.is_integer()):
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    return int(k)


def _class_keys(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """One class key per row: an int64 when the quasi-identifiers' value combinations fit in one
    (mixed radix of their dictionary codes, null a code of its own), else a row of codes."""
    codes, radix = [], []
    for name in columns:
        encoded = pc.dictionary_encode(table.column(name).combine_chunks())
        codes.append(pc.fill_null(encoded.indices.cast(pa.int64()), -1).to_numpy(zero_copy_only=False) + 1)
        radix.append(len(encoded.dictionary) + 1)
    if not codes:
        return np.zeros(table.num_rows, dtype=np.int64)
    if math.prod(radix) < 2**62:
        keys = np.zeros(table.num_rows, dtype=np.int64)
        for column, size in zip(codes, radix):
            keys = keys * size + column
        return keys
    return np.column_stack(codes)


def enforce_k_anonymity(rows: pa.Table | pd.DataFrame, quasi_identifiers: Sequence[str] | None = None,
                        *, k: int = DEFAULT_K) -> KAnonymityResult:
    """Measure the equivalence classes of ``rows`` and drop every row of a class smaller than ``k``.

    ``quasi_identifiers`` defaults to ``default_quasi_identifiers(columns)``; with none at all the
    whole table is one class. The returned table has the input's type and column order, rows in
    input order; every class in it has at least ``k`` rows.

    >>> t = pa.table({"province": ["44", "44", "11"], "age_band": ["25-34", "25-34", "25-34"]})
    >>> result = enforce_k_anonymity(t, k=2)
    >>> result
    KAnonymityResult(k=2, quasi_identifiers=['province', 'age_band'], classes=2, smallest_class=1, smallest_kept_class=2, rows_kept=2, rows_suppressed=1)
    >>> result.table.column("province").to_pylist()
    ['44', '44']
    """
    k = _check_k(k)
    is_pandas = isinstance(rows, pd.DataFrame)
    if is_pandas:
        table = pa.Table.from_pandas(rows, preserve_index=False)
    elif isinstance(rows, pa.Table):
        table = rows
    else:
        raise TypeError(f"rows must be a pyarrow Table or a pandas DataFrame, not {type(rows).__name__}")
    if quasi_identifiers is None:
        quasi_identifiers = default_quasi_identifiers(table.column_names)
    elif isinstance(quasi_identifiers, str):
        raise TypeError("quasi_identifiers is a list of column names, not one string")
    quasi_identifiers = tuple(dict.fromkeys(quasi_identifiers))
    missing = [c for c in quasi_identifiers if c not in table.column_names]
    if missing:
        raise PortraitError(f"quasi-identifier column(s) {', '.join(missing)} not in the table; "
                            f"it has {', '.join(table.column_names)}")
    # rows: one code vector per row -> class id per row, class sizes
    if table.num_rows == 0:
        sizes = np.zeros(0, dtype=np.int64)
        keep = np.zeros(0, dtype=bool)
    else:
        _, inverse, sizes = np.unique(_class_keys(table, quasi_identifiers), axis=0,
                                      return_inverse=True, return_counts=True)
        keep = sizes[inverse.reshape(-1)] >= k
    kept_sizes = sizes[sizes >= k]
    kept = table.filter(pa.array(keep, type=pa.bool_()))
    size_values, size_counts = np.unique(sizes, return_counts=True)
    return KAnonymityResult(
        table=kept.to_pandas() if is_pandas else kept,
        k=k,
        quasi_identifiers=quasi_identifiers,
        classes=int(sizes.size),
        smallest_class=int(sizes.min()) if sizes.size else 0,
        smallest_kept_class=int(kept_sizes.min()) if kept_sizes.size else 0,
        rows_kept=int(keep.sum()),
        rows_suppressed=int(table.num_rows - keep.sum()),
        class_sizes={int(s): int(c) for s, c in zip(size_values, size_counts)},
    )
