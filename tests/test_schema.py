"""The data model and its field registry."""

from __future__ import annotations

import pyarrow as pa
import pytest

from profiling.schema import INGEST_ORDER, TABLES, PrivacyClass, arrow_schema, fields_of_class, table


def test_every_column_carries_its_privacy_class_in_the_arrow_schema():
    for name in TABLES:
        for field in arrow_schema(name):
            assert PrivacyClass(field.metadata[b"privacy"].decode())
            assert field.metadata[b"description"]


def test_direct_identifiers_the_policy_names():
    kinds = {f.identifier for _, f in fields_of_class(PrivacyClass.DIRECT_IDENTIFIER)}
    assert {"phone", "person_name", "address", "device_id", "ip", "account_id", "email"} <= kinds


def test_sensitive_information_is_classed_sensitive():
    sensitive = {(t, f.name) for t, f in fields_of_class(PrivacyClass.SENSITIVE)}
    assert sensitive == {("waybills", "id_card_number"), ("device_events", "precise_lat"),
                         ("device_events", "precise_lon")}


def test_quasi_identifiers():
    assert {(t, f.name) for t, f in fields_of_class(PrivacyClass.QUASI_IDENTIFIER)} >= {
        ("accounts", "birthday"), ("accounts", "gender"), ("accounts", "region"),
        ("device_events", "coarse_region"), ("waybills", "destination_region")}


def test_parents_are_ingested_before_children():
    position = {name: i for i, name in enumerate(INGEST_ORDER)}
    assert sorted(INGEST_ORDER) == sorted(TABLES)
    for t in TABLES.values():
        for parent in t.parents:
            assert position[parent] < position[t.name]


def test_references_and_keys_resolve():
    for t in TABLES.values():
        assert t.primary_key in t.column_names and t[t.primary_key].required
        for f in t.fields:
            if f.references:
                parent, column = f.references.split(".")
                assert TABLES[parent].primary_key == column
            if f.required_if:
                assert f.required_if[0] in t.column_names and not f.required


def test_payment_institutions_get_order_number_and_amount():
    orders = table("orders")
    assert orders["order_id"].identifier == "order_id" and orders["amount"].type == pa.float64()


def test_unknown_table_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown table 'order'; the data model has catalogue, accounts"):
        table("order")
