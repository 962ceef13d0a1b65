"""The identity stage is the same on every engine, equals the in-memory reference (devices trusted once their first
and last sign-in are 24 hours apart), and on Spark brings no person-level table to the driver."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from engines._workspaces import AS_OF, prepared_workspace
from engines.test_driver_rows import driver_rows
from pipelines.engines import get_engine
from pipelines.portraits import read_identity, write_identity
from profiling.consent import ConsentGate, SqliteConsentStore
from profiling.identity import TRUSTED_AFTER, build_identity_graph

PARTITIONS = 4


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    workspace, decision, key = prepared_workspace(tmp_path_factory.mktemp("identity-engines"), accounts=300, seed=17,
                                                  catalogue_items=40,
                                                  stages=["consent-ledger", "pseudonymize"])
    with SqliteConsentStore(workspace.ledger) as store:
        linking = ConsentGate(store).decide("cross_device_sync", AS_OF, job="test").person_ids(key)
    eligible = pa.table({"person_id": decision.person_ids(key)})
    links = ds.dataset(workspace.pseudonymized("device_events")).to_table(columns=["device_id", "person_id",
                                                                                  "event_at"])
    expected = build_identity_graph(links, eligible.column("person_id"), linking)
    return workspace, eligible, linking, expected, links


def untrusted(links: pa.Table, may_link: set) -> set:
    """Devices of one account, that account allowed to link, its first and last sign-in less than TRUSTED_AFTER
    apart."""
    signed = links.filter(pc.is_valid(links.column("person_id"))).to_pandas()
    per_device = signed.groupby("device_id").agg(accounts=("person_id", "nunique"), person=("person_id", "first"),
                                                 first=("event_at", "min"), last=("event_at", "max"))
    return set(per_device[(per_device["accounts"] == 1) & per_device["person"].isin(may_link)
                          & (per_device["last"] - per_device["first"] < TRUSTED_AFTER)].index)


def written(workspace) -> tuple[pa.Table, pa.Table]:
    persons, devices = read_identity(workspace)
    return persons.sort_by("person_id"), devices.sort_by("device_id")


def test_identity_is_the_reference_on_every_engine(engine, prepared):
    workspace, eligible, linking, expected, links = prepared
    assert expected.report["linked_devices"] > 50 and expected.report["shared_devices"] > 0
    report = write_identity(workspace, eligible, linking, engine=engine)
    assert report == expected.report
    assert json.loads((workspace.root / "identity-report.json").read_text()) == expected.report
    persons, devices = written(workspace)
    assert persons.select(["person_id", "identity_id"]).cast(expected.persons.schema).equals(expected.persons)
    assert persons.column("cross_device_sync").to_pylist() == pc.is_in(persons.column("person_id"),
                                                                       value_set=linking).to_pylist()
    assert devices.cast(expected.devices.schema).equals(expected.devices.sort_by("device_id"))
    seen_once = untrusted(links, set(eligible.column("person_id").to_pylist()) & set(linking.to_pylist()))
    assert seen_once and not seen_once & set(devices.column("device_id").to_pylist())
    assert workspace.verified(workspace.outputs("identity")) == workspace.outputs("identity")


def test_identity_collects_only_counts_on_spark(spark, prepared):
    workspace, eligible, linking, expected, _ = prepared
    with get_engine("spark", spark=spark, partitions=PARTITIONS) as engine, driver_rows(spark) as seen:
        write_identity(workspace, eligible, linking, engine=engine)
    assert seen, "the report's counts are collected"
    # per partition: the shared-device count and one row per (devices, persons) size present there
    bound = PARTITIONS * len(expected.report["devices_per_identity"])
    assert eligible.num_rows > 4 * bound
    assert all(rows <= bound for _, rows in seen), seen
