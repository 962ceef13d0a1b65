"""Pseudonyms: a keyed, domain-separated, deterministic function of the normalized identifier."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

import profiling.pseudonyms as pseudonyms_module
from profiling._string_hash import _dictionary_encode
from profiling.keys import MasterKey, derive_key
from profiling.pseudonyms import (
    DEVICE,
    DOMAINS,
    IDENTIFIERS,
    PERSON,
    normalize,
    pseudonymize,
    pseudonymize_one,
    recipient_domain,
)

KEY = MasterKey({1: bytes(range(32)), 2: bytes(range(1, 33))}, tombstone_secret=bytes(range(2, 34)))


def _reference(value: str, domain: str, version: int | None = None) -> str:
    """The definition, one value at a time."""
    return hmac.new(derive_key(KEY, domain, version), value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


@given(st.lists(st.one_of(st.none(), st.text(max_size=30)), max_size=40))
def test_matches_plain_hmac_and_keeps_nulls(values):
    got = pseudonymize(pa.array(values, pa.string()), KEY, PERSON, identifier="account_id").to_pylist()
    expected = [None if v is None else _reference(normalize(pa.array([v]), "account_id")[0].as_py(), PERSON)
                for v in values]
    assert got == expected


def test_shape_determinism_and_domain_separation():
    values = pa.array(["A1", "A2", "A1"])
    person = pseudonymize(values, KEY, PERSON, identifier="account_id")
    assert person.type == pa.string()
    assert all(len(p) == 32 and p == p.lower() and int(p, 16) >= 0 for p in person.to_pylist())
    assert person[0] == person[2] != person[1]
    assert person.equals(pseudonymize(values, KEY, PERSON, identifier="account_id"))
    per_domain = {d: pseudonymize(values, KEY, d, identifier="account_id")[0].as_py() for d in DOMAINS}
    assert len(set(per_domain.values())) == len(DOMAINS)
    assert pseudonymize(values, KEY, recipient_domain("courier_a"), identifier="account_id")[0] != person[0]


def test_versions_differ_and_newest_is_default():
    values = pa.array(["A1"])
    assert pseudonymize(values, KEY, PERSON, identifier="account_id")[0].as_py() == _reference("A1", PERSON, 2)
    oldest = pseudonymize(values, KEY, PERSON, identifier="account_id", version=1)
    assert oldest[0].as_py() == _reference("A1", PERSON, 1)
    assert _reference("A1", PERSON, 1) != _reference("A1", PERSON, 2)


def test_accepts_chunked_dictionary_and_lists():
    plain = pseudonymize(pa.array(["x", None, "y"]), KEY, DEVICE, identifier="device_id")
    chunked = pa.chunked_array([["x"], [None, "y"]])
    assert pseudonymize(chunked, KEY, DEVICE, identifier="device_id").equals(plain)
    encoded = pa.array(["x", None, "y"]).dictionary_encode()
    assert pseudonymize(encoded, KEY, DEVICE, identifier="device_id").equals(plain)
    assert pseudonymize(["x", None, "y"], KEY, DEVICE, identifier="device_id").equals(plain)
    assert pseudonymize(pa.array([], pa.string()), KEY, DEVICE, identifier="device_id").to_pylist() == []
    assert pseudonymize_one("x", KEY, DEVICE, identifier="device_id") == plain[0].as_py()


@given(st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True),
       st.sampled_from(["{}", "+86{}", "+86 {}", "0086{}", "86{}", "{a}-{b}-{c}", "({a}) {b} {c}", " {a}.{b}.{c} "]))
def test_phone_spellings_share_a_pseudonym(phone, template):
    spelled = template.format(phone, a=phone[:3], b=phone[3:7], c=phone[7:])
    pair = pseudonymize([phone, spelled], KEY, PERSON, identifier="phone")
    assert pair[0] == pair[1]


@given(st.from_regex(r"[A-Za-z][A-Za-z ]{0,15}[A-Za-z]", fullmatch=True), st.sampled_from(["person_name", "email"]))
def test_names_and_emails_trimmed_and_case_folded(text, identifier):
    variants = [text, f"  {text.upper()} ", text.lower() + "\t", text.swapcase()]
    assert len(set(pseudonymize(variants, KEY, PERSON, identifier=identifier).to_pylist())) == 1


@given(st.from_regex(r"[0-9]{17}[0-9xX]", fullmatch=True))
def test_id_numbers_upper_cased(number):
    assert len(set(pseudonymize([number, number.lower(), f" {number.upper()}"], KEY, PERSON,
                                identifier="id_card").to_pylist())) == 1


def test_ids_are_case_sensitive_but_trimmed():
    out = pseudonymize(["Ab1", " Ab1 ", "ab1"], KEY, PERSON, identifier="account_id").to_pylist()
    assert out[0] == out[1] != out[2]


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match=r"unknown identifier kind 'passport'; known: account_id"):
        pseudonymize(["x"], KEY, PERSON, identifier="passport")
    with pytest.raises(TypeError, match="needs string values, got an array of int64"):
        pseudonymize(pa.array([1, 2]), KEY, PERSON, identifier="account_id")
    with pytest.raises(TypeError, match="not str"):
        pseudonymize("abc", KEY, PERSON, identifier="account_id")
    with pytest.raises(ValueError, match="recipient name 'Bad Name!'"):
        recipient_domain("Bad Name!")
    assert set(IDENTIFIERS) >= {"account_id", "phone", "device_id", "order_id", "waybill_id"}


def test_every_message_length_matches_hmac():
    # 0..200 bytes crosses the one- and two-block padding cases of SHA-256 several times
    values = ["é" * (n // 2) + "x" * (n % 2) for n in range(0, 201)]
    got = pseudonymize(values, KEY, DEVICE, identifier="device_id").to_pylist()
    assert got == [_reference(v, DEVICE) for v in values]


def test_an_encoded_column_keeps_its_dictionary():
    indices = pa.array([0, 1, 2, None, 0], pa.int32())
    encoded = pa.DictionaryArray.from_arrays(indices, pa.array(["x", " x ", "y"]))
    plain = pseudonymize(["x", "x", "y", None, "x"], KEY, PERSON, identifier="account_id")
    assert pseudonymize(encoded, KEY, PERSON, identifier="account_id").equals(plain)
    other = pa.DictionaryArray.from_arrays(pa.array([1, None, 0], pa.int32()), pa.array(["x", "y"]))
    chunked = pa.chunked_array([encoded.slice(0, 2), other])
    assert pseudonymize(chunked, KEY, PERSON, identifier="account_id").equals(plain)


# The compiled dictionary path against the definition: hmac.new per row, in Python.

_POOL = st.one_of(st.none(), st.sampled_from(["", " ", "a", "A", "é", "李雷", "x" * 16, "x" * 17, "x" * 15 + "y"]),
                  st.text(max_size=40))


def _expected(values: list) -> list:
    return [None if v is None else _reference(normalize(pa.array([v]), "account_id")[0].as_py(), PERSON)
            for v in values]


@given(st.lists(_POOL, max_size=60), st.data())
def test_sliced_chunked_and_large_columns_match_plain_hmac(values, data):
    start = data.draw(st.integers(0, len(values)))
    stop = data.draw(st.integers(start, len(values)))
    column = pa.array(values, pa.string())
    got = pseudonymize(column.slice(start, stop - start), KEY, PERSON, identifier="account_id")
    assert got.type == pa.string()
    assert got.to_pylist() == _expected(values[start:stop])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(values)), max_size=4)))
    chunks = [values[a:b] for a, b in zip([0, *cuts], [*cuts, len(values)])]
    chunked = pa.chunked_array([pa.array(chunk, pa.string()) for chunk in chunks], pa.string())
    assert pseudonymize(chunked, KEY, PERSON, identifier="account_id").to_pylist() == _expected(values)
    large = pa.array(values, pa.large_string()).slice(start, stop - start)
    assert pseudonymize(large, KEY, PERSON, identifier="account_id").equals(got)


def _first_occurrence_codes(values: list) -> tuple[list, list]:
    codes, first = {}, []
    for row, value in enumerate(values):
        if value is not None and value not in codes:
            codes[value] = len(first)
            first.append(value)
    return [0 if v is None else codes[v] for v in values], first


@given(st.lists(st.one_of(st.none(), st.text(max_size=3), st.text(min_size=15, max_size=20)), max_size=200),
       st.integers(1, 6), st.integers(0, 9))
def test_tiny_colliding_tables_encode_exactly(values, table_bits, start):
    # A 2..64-slot table grows many times and most lookups probe past other values' slots.
    values = [f"v{i % 7}" for i in range(start)] + values  # duplicates, and a slice offset below
    column = pa.array(values, pa.string()).slice(start)
    distinct, indices = _dictionary_encode(column, table_bits=table_bits)
    codes, first = _first_occurrence_codes(values[start:])
    assert distinct.to_pylist() == first
    assert indices.tolist() == codes


def test_inline_and_long_values_with_shared_prefixes_stay_apart():
    # 16 bytes are kept in the table slot; longer values are compared in place
    values = ["", "\x00", "\x00\x00", "a" * 8, "a" * 8 + "\x00", "a" * 16, "a" * 16 + "b", "a" * 16 + "c",
              "a" * 40, "a" * 39 + "b", "é" * 8, "é" * 9]
    repeated = values * 3 + [None]
    distinct, indices = _dictionary_encode(pa.array(repeated), table_bits=1)
    assert distinct.to_pylist() == values
    assert indices.tolist() == list(range(len(values))) * 3 + [0]
    got = pseudonymize(repeated, KEY, DEVICE, identifier="device_id").to_pylist()
    assert got == [None if v is None else _reference(v.strip(), DEVICE) for v in repeated]


@pytest.mark.parametrize("offset", [0, 3, 8, 13])
def test_nulls_of_sliced_columns_stay_null(offset):
    values = [None if i % 3 == 0 else f"id{i % 5}" for i in range(40)]
    got = pseudonymize(pa.array(values).slice(offset), KEY, DEVICE, identifier="device_id")
    got.validate(full=True)
    assert got.null_count == sum(v is None for v in values[offset:])
    assert got.to_pylist() == [None if v is None else _reference(v, DEVICE) for v in values[offset:]]
    assert pseudonymize(pa.array([None, None], pa.string()), KEY, DEVICE,
                        identifier="device_id").to_pylist() == [None, None]


def test_malformed_dictionary_and_oversized_columns_are_refused(monkeypatch):
    broken = pa.DictionaryArray.from_arrays(pa.array([0, 5], pa.int32()), pa.array(["x", "y"]), safe=False)
    with pytest.raises(ValueError, match=r"dictionary indices run from 0 to 5, outside the 2-value dictionary"):
        pseudonymize(broken, KEY, PERSON, identifier="account_id")
    monkeypatch.setattr(pseudonyms_module, "_MAX_VALUES", 2)
    with pytest.raises(ValueError, match=r"at most 2 non-null pseudonyms per call .* got 3; pass the column in"):
        pseudonymize(["a", "b", None, "c"], KEY, PERSON, identifier="account_id")


@pytest.mark.parametrize("use_libcrypto", [True, False])
def test_both_block_functions_match_hashlib(use_libcrypto):
    available = pseudonyms_module._libcrypto_loaded()  # binds the kernels' block function either way
    if use_libcrypto and not available:
        pytest.skip("libcrypto's SHA256_Transform is not available here")
    key = derive_key(KEY, PERSON)
    values = [("é" * n + "x" * (n % 3)).encode() for n in range(0, 140, 3)]
    offsets = np.cumsum([0] + [len(v) for v in values]).astype(np.int32)
    data = np.frombuffer(b"".join(values) or b"\0", np.uint8)
    got = np.empty((len(values), 32), np.uint8)
    pseudonyms_module._hmac_hex(offsets, data, *pseudonyms_module._hmac_states(key), pseudonyms_module._HEX,
                                use_libcrypto, got)
    assert [row.tobytes().decode() for row in got] == [hmac.new(key, v, hashlib.sha256).hexdigest()[:32]
                                                       for v in values]
