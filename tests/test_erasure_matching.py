"""The erasure's fast paths against plain, obviously-correct ones: phones normalized without the regular
expressions where they change nothing, and the search of other files for the erased persons' ids."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from pipelines.dsr import _holds_any
from pipelines.dsr_scope import _phones_normalized
from profiling.pseudonyms import normalize

# What phones are written with: digits (ASCII and not), the country codes' characters, separators,
# whitespace around and inside (ASCII and Unicode), letters.
_PHONE_TEXT = st.text(alphabet=st.sampled_from(list("0123456789" "0123456789" "+86()-. \t\u3000\u00a0１٣a")),
                      max_size=18)
_MOBILE = st.from_regex(r"(\+86|0086|86)?1[3-9][0-9]{9}", fullmatch=True)


@given(st.lists(st.one_of(_PHONE_TEXT, _MOBILE, st.none()), max_size=30))
def test_phones_normalized_as_the_registry_normalizes_them(values):
    column = pa.array(values, pa.string())
    assert _phones_normalized(column).to_pylist() == normalize(column, "phone").to_pylist()


@given(st.binary(max_size=60, min_size=0) | st.text(alphabet="ab\"{}:", max_size=60).map(str.encode),
       st.sets(st.binary(max_size=4) | st.text(alphabet="ab", min_size=1, max_size=5).map(str.encode), max_size=40))
def test_a_file_holds_a_needle_as_a_plain_search_finds_it(content, needles):
    by_length: dict[int, set[bytes]] = {}
    for needle in needles:
        by_length.setdefault(len(needle), set()).add(needle)
    assert _holds_any(content, needles, by_length) == any(needle in content for needle in needles)
