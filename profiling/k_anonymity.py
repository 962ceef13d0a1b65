"""k-anonymity of person-level tables that leave the engine: class sizes, and suppression of small classes.

An equivalence class is the set of rows sharing one combination of quasi-identifier values (a
null is a value of its own). A table is k-anonymous when every class has at least ``k`` rows:
each row then hides among at least ``k - 1`` others with the same quasi-identifiers. This is a
syntactic guarantee about the released rows only, not differential privacy: it says nothing
about what the attributes outside the quasi-identifiers reveal.

A class may be formed over a *generalized* quasi-identifier (``generalized={"amount": amount_band}``):
rows are then grouped by the band, while the exported value stays as it was. This protects
against someone who knows the value only roughly (about what a person paid) and picks a row by
it; it does not protect against someone who knows the exact value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from profiling.errors import PortraitError
from profiling.schema import TABLES, PrivacyClass

__all__ = ["DEFAULT_K", "KAnonymityResult", "amount_band", "default_quasi_identifiers", "enforce_k_anonymity"]

DEFAULT_K = 10
# Generalized columns the pseudonymization door writes in place of raw quasi-identifiers.
_GENERALIZED = ("age_band", "province", "origin_province", "destination_province", "coarse_province")
_REGISTRY = tuple(dict.fromkeys(f.name for t in TABLES.values() for f in t.fields
                                if f.privacy is PrivacyClass.QUASI_IDENTIFIER))


def amount_band(amounts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The 1-2-5 band of each amount (currency major units), as text: ``"[100, 200)"``; null stays null.

    Bands per decade start at 1, 2 and 5 times a power of ten; amounts below 1 share ``"[0, 1)"``
    and negative amounts ``"<0"``.

    >>> amount_band(pa.array([0.5, 1.0, 199.99, 200.0, 4999.0, None, -3.0])).to_pylist()
    ['[0, 1)', '[1, 2)', '[100, 200)', '[200, 500)', '[2000, 5000)', None, '<0']
    """
    if isinstance(amounts, pa.ChunkedArray):
        amounts = amounts.combine_chunks()
    values = np.asarray(pc.fill_null(pc.cast(amounts, pa.float64()), 0.0).to_numpy(zero_copy_only=False))
    with np.errstate(divide="ignore", invalid="ignore"):
        decade = np.floor(np.log10(np.where(values >= 1, values, 1.0)))
        # log10 rounds near a power of ten: put the decade right from the values themselves
        decade += (values >= 10.0 ** (decade + 1)).astype(np.float64) - (values < 10.0 ** decade)
        lead = values / 10.0 ** decade
    # code per row: -2 negative, -1 below 1, else 3 * decade + (0, 1, 2) for the 1, 2, 5 band
    codes = np.where(values < 0, -2, np.where(values < 1, -1,
                     3 * decade.astype(np.int64) + (lead >= 2) + (lead >= 5)))
    unique, inverse = np.unique(codes, return_inverse=True)
    labels = pa.array([_band_label(int(code)) for code in unique], pa.string())
    banded = labels.take(pa.array(inverse.reshape(-1), pa.int64()))
    return pc.if_else(amounts.is_valid(), banded, pa.scalar(None, pa.string()))


def _band_label(code: int) -> str:
    if code < 0:
        return "<0" if code == -2 else "[0, 1)"
    decade, step = divmod(code, 3)
    low, high = (1, 2, 5)[step], (2, 5, 10)[step]
    return f"[{low * 10 ** decade}, {high * 10 ** decade})"


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
    ``smallest_kept_class`` the smallest after it (0 when nothing is kept). ``generalized`` names
    the quasi-identifiers whose classes were formed over a generalization (see the module).
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
    generalized: tuple[str, ...] = field(default=(), repr=False)

    @property
    def classes_suppressed(self) -> int:
        """Classes smaller than ``k``, whose rows were all dropped."""
        return sum(count for size, count in self.class_sizes.items() if size < self.k)

    def report(self) -> dict:
        """What was measured and suppressed, as JSON-ready counts (no row, no value)."""
        return {"k": self.k, "quasi_identifiers": list(self.quasi_identifiers),
                "generalized": {name: "class formed over a band of the value" for name in self.generalized},
                "rows": self.rows_kept + self.rows_suppressed, "rows_kept": self.rows_kept,
                "rows_suppressed": self.rows_suppressed, "classes": self.classes,
                "classes_suppressed": self.classes_suppressed, "smallest_class": self.smallest_class,
                "smallest_kept_class": self.smallest_kept_class,
                "class_sizes": [{"size": size, "classes": count} for size, count in sorted(self.class_sizes.items())]}

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
                        *, k: int = DEFAULT_K,
                        generalized: Mapping[str, Callable[[pa.ChunkedArray], pa.Array]] | None = None,
                        ) -> KAnonymityResult:
    """Measure the equivalence classes of ``rows`` and drop every row of a class smaller than ``k``.

    ``quasi_identifiers`` defaults to ``default_quasi_identifiers(columns)``; with none at all the
    whole table is one class. ``generalized`` maps a quasi-identifier to the function whose output
    forms its classes (e.g. ``amount_band``); the kept rows keep their own values. The returned
    table has the input's type and column order, rows in input order; every class in it has at
    least ``k`` rows.

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
    generalized = dict(generalized or {})
    stray = [c for c in generalized if c not in quasi_identifiers]
    if stray:
        raise PortraitError(f"generalized column(s) {', '.join(stray)} are not among the quasi-identifiers "
                            f"{', '.join(quasi_identifiers) or '(none)'}")
    classes = table.select(list(quasi_identifiers))
    for name, generalize in generalized.items():
        classes = classes.set_column(classes.schema.get_field_index(name), name, generalize(table.column(name)))
    # rows: one code vector per row -> class id per row, class sizes
    if table.num_rows == 0:
        sizes = np.zeros(0, dtype=np.int64)
        keep = np.zeros(0, dtype=bool)
    else:
        _, inverse, sizes = np.unique(_class_keys(classes, quasi_identifiers), axis=0,
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
        generalized=tuple(c for c in quasi_identifiers if c in generalized),
    )
