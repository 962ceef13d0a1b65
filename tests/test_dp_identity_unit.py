"""The identity as privacy unit: attribution of rows, the group bound for one human's accounts, device bounds.

The privacy audit follows ``tests/test_dp_privacy.py`` (one-run canary auditing, Steinke, Nasr and
Jagielski 2023) through the public API: device events -> ``build_identity_graph`` ->
``dp.units.attach_identity`` -> ``PrivateSession(privacy_unit="identity_id", accounts_per_human=k)``
-> ``release()``. Each canary is one human with two accounts (two identities, since the graph never
links accounts), each signed in on a phone of its own with anonymous events after; neighbouring
datasets differ by every row of the human (both accounts, both phones).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dp import BudgetLedger, PrivacyParameterError, PrivateSession
from dp.cross_device import (
    DEVICE_TYPES,
    bound_devices,
    devices_per_identity,
    release_devices_per_identity,
    release_events_per_device_type,
)
from dp.units import attach_identity
from pipelines.engine_jobs import release_group_counts
from pipelines.engines import LocalEngine
from pipelines.ingest import ingest
from pipelines.run import parse_as_of, run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from portrait_cli import run_cli
from profiling.consent import ConsentGate, SqliteConsentStore
from profiling.errors import PortraitError
from profiling.identity import TRUSTED_AFTER, build_identity_graph
from profiling.keys import create_key_file, load_master_key
from test_dp_privacy import _audit, _epsilon_lower_bound

EPSILON = 2.0
R = 3          # rows per identity in its group
BASE = 2       # base persons per group, each with one signed-in row there, on a shared device


@pytest.fixture
def ledger(tmp_path):
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("device_events", epsilon=1e9, set_by="test")
    ledger.set_budget("orders", epsilon=10.0, set_by="test")
    ledger.set_budget("portraits", epsilon=10.0, set_by="test")
    return ledger


def _events(included: np.ndarray) -> pd.DataFrame:
    """Device events of BASE persons per group (signed in on one shared kiosk) and of each included canary human's two
    accounts, each on its own phone: one signed-in event, then R + 1 anonymous ones, all in the human's group;
    plus anonymous events on the kiosk in every group, which nobody can be charged for (dropped)."""
    groups = [f"g{i:05d}" for i in range(len(included))]
    frames = [pd.DataFrame({"device_id": "kiosk", "person_id": [f"b{k}_{g}" for k in range(BASE) for g in groups],
                            "group": groups * BASE}),
              pd.DataFrame({"device_id": "kiosk", "person_id": None, "group": groups})]
    for i in np.flatnonzero(included):
        for account in ("a", "b"):
            frames.append(pd.DataFrame({"device_id": f"phone{i}{account}",
                                        "person_id": [f"z{i}{account}"] + [None] * (R + 1), "group": groups[i]}))
    return pd.concat(frames, ignore_index=True)


def _identity_rows(events: pd.DataFrame) -> pd.DataFrame:
    signed_in = events[["device_id", "person_id"]].dropna()
    # each sign-in seen twice, TRUSTED_AFTER (24 hours) apart, so a device of one account is trusted and joins it
    first = pd.Timestamp("2026-10-01", tz="UTC")
    links = pa.Table.from_pandas(pd.concat([signed_in.assign(event_at=at) for at in (first, first + TRUSTED_AFTER)]),
                                 preserve_index=False)
    persons = pa.array(sorted(set(links.column("person_id").to_pylist())))
    graph = build_identity_graph(links, persons, persons)
    return attach_identity(events, persons=graph.persons, devices=graph.devices)


@pytest.mark.parametrize("accounts_per_human", [2, 1], ids=["group-bound-2", "control-per-account"])
def test_a_human_with_two_accounts_moves_the_release_by_at_most_epsilon_under_the_group_bound(ledger,
                                                                                              accounts_per_human):
    m = 1000
    groups = [f"g{i:05d}" for i in range(m)]

    def run(included):
        rows = _identity_rows(_events(included))
        session = PrivateSession(rows, dataset="device_events", ledger=ledger, purpose="privacy audit",
                                 privacy_unit="identity_id", accounts_per_human=accounts_per_human)
        released = (session.query(epsilon=EPSILON).group_by("group", keys=groups)
                    .bound(max_partitions=1, max_rows_per_partition=R).count().release())
        counts = released["count"].to_numpy()
        # the human's two identities add 2R rows to its group: likelihood ratio e^eps at k=2, e^(2 eps) at k=1
        return np.where(counts >= BASE + 2 * R, 1, np.where(counts <= BASE, -1, 0))

    correct, guessed = _audit(run, runs=4, canaries=m, seed=11)
    found = _epsilon_lower_bound(correct, guessed)
    assert guessed > 1500
    if accounts_per_human == 2:
        assert found <= EPSILON, (correct, guessed, found)
    else:   # calibrated per account, the human gets about 2 epsilon: caught
        assert found > 1.4 * EPSILON, (correct, guessed, found)
    charges = ledger.charges("device_events")
    unit = "per identity_id (any 2 together" if accounts_per_human == 2 else "per identity_id at most"
    assert all(unit in charge["query"] for charge in charges), charges[0]["query"]


def test_rows_are_attributed_to_their_identity_and_unattributable_ones_dropped():
    persons = pd.DataFrame({"person_id": ["A", "B"], "identity_id": ["A", "B"]})
    devices = pd.DataFrame({"device_id": ["phoneB"], "identity_id": ["B"]})
    events = pd.DataFrame({
        "device_id": ["phoneB", "phoneB", "family", "family", "pcC", "pcC"],
        "person_id": [None, "B", "A", None, "C", None],
        "n": [1, 2, 3, 4, 5, 6]})
    attached = attach_identity(events, persons=persons, devices=devices)
    # anonymous on B's linked phone -> B; signed in on the family device -> A; anonymous there -> dropped;
    # C is in no graph (their own identity); C's pc is linked to nobody, so its anonymous event is dropped
    assert attached[["n", "identity_id"]].values.tolist() == [[1, "B"], [2, "B"], [3, "A"], [5, "C"]]
    orders = pd.DataFrame({"person_id": ["A", "C", None], "amount": [1.0, 2.0, 3.0]})
    assert attach_identity(orders, persons=persons)["identity_id"].tolist() == ["A", "C"]
    with pytest.raises(PortraitError, match="maps device_id 'd' to more than one identity"):
        attach_identity(events, devices=pd.DataFrame({"device_id": ["d", "d"], "identity_id": ["A", "B"]}))
    with pytest.raises(PortraitError, match="neither 'person_id' nor 'device_id'"):
        attach_identity(pd.DataFrame({"x": [1]}))


def test_the_group_bound_multiplies_every_sensitivity_and_is_recorded(ledger):
    rows = pd.DataFrame({"identity_id": ["A", "B"], "g": ["x", "y"], "v": [1.0, 2.0]})

    def plan(k):
        session = PrivateSession(rows, dataset="device_events", ledger=ledger, purpose="test",
                                 privacy_unit="identity_id", accounts_per_human=k)
        return (session.query(epsilon=1.0).group_by("g", keys=["x", "y"]).bound(max_partitions=2)
                .count().sum("v", bounds=(0, 10), resolution=1.0).quantile("v", 0.5, bounds=(0, 10), candidates=11))

    one, three = plan(1).explain(), plan(3).explain()
    assert three["noise_scale"].iloc[:2].tolist() == pytest.approx((3 * one["noise_scale"].iloc[:2]).tolist())
    # the quantile runs at a third of its per-group epsilon: three times the scale, the same charged total
    assert three["noise_scale"].iloc[2] == pytest.approx(3 * one["noise_scale"].iloc[2], rel=1e-6)
    assert three["epsilon"].sum() == pytest.approx(1.0) and one["epsilon"].sum() == pytest.approx(1.0)
    plan(3).release()
    assert "per identity_id (any 3 together: accounts_per_human=3)" in ledger.charges("device_events")[-1]["query"]


def test_refused_units_and_group_bounds_charge_nothing(ledger):
    rows = pd.DataFrame({"identity_id": ["A"], "person_id": ["A"], "device_id": ["d"], "g": ["x"]})
    before = ledger.spent("device_events")["epsilon"], ledger.spent("portraits")["epsilon"]
    with pytest.raises(PrivacyParameterError, match="accounts_per_human must be a positive integer"):
        PrivateSession(rows, dataset="device_events", ledger=ledger, purpose="t", privacy_unit="identity_id",
                       accounts_per_human=0)
    with pytest.raises(PrivacyParameterError, match="registered with privacy unit 'person_id', not 'device_id'"):
        PrivateSession(rows, dataset="device_events", ledger=ledger, purpose="t", privacy_unit="device_id")
    # the portraits are registered per identity: a per-person bound does not cover an identity's devices
    with pytest.raises(PrivacyParameterError, match="registered with privacy unit 'identity_id', not 'person_id'"):
        PrivateSession(rows, dataset="portraits", ledger=ledger, purpose="t", privacy_unit="person_id")
    assert ledger.dataset("portraits").privacy_unit == "identity_id"
    assert (ledger.spent("device_events")["epsilon"], ledger.spent("portraits")["epsilon"]) == before


# cross-device statistics -------------------------------------------------------------------------------

def _reference_bound(events: pd.DataFrame, devices: pd.DataFrame, k: int, per_device: int, seed: int) -> pd.DataFrame:
    """Plain loops: each identity's devices that have events, ordered by the keyed hash, first k; first rows each."""
    from dp._bounding import hash_values
    owner = dict(zip(devices["device_id"], devices["identity_id"]))
    with_rows = [d for d in dict.fromkeys(events["device_id"]) if d in owner]
    by_identity: dict[str, list[str]] = {}
    for device in with_rows:
        by_identity.setdefault(owner[device], []).append(device)
    kept = set()
    for identity, owned in by_identity.items():
        rank = {d: int(hash_values(np.array([identity]), seed)[0] ^ hash_values(np.array([d]), seed)[0])
                for d in owned}
        kept |= set(sorted(owned, key=lambda d: (rank[d], d))[:k])
    rows, seen = [], {}
    for row in events.itertuples(index=False):
        if row.device_id in kept and seen.get(row.device_id, 0) < per_device:
            seen[row.device_id] = seen.get(row.device_id, 0) + 1
            rows.append((*row, owner[row.device_id]))
    return pd.DataFrame(rows, columns=[*events.columns, "identity_id"])


def _device_world(seed: int = 5):
    rng = np.random.default_rng(seed)
    devices = pd.DataFrame({"device_id": [f"d{i}" for i in range(60)],
                            "identity_id": [f"p{int(i)}" for i in rng.integers(0, 15, 60)]})
    kinds = pd.DataFrame({"device_id": [f"d{i}" for i in range(70)],
                          "device_type": rng.choice(DEVICE_TYPES, 70)})
    events = pd.DataFrame({"device_id": [f"d{int(i)}" for i in rng.integers(0, 70, 900)],   # d60..d69: shared
                           "person_id": None, "n": np.arange(900)})
    return devices, kinds, events


def test_devices_are_bounded_per_identity_before_any_per_device_aggregate():
    devices, _, events = _device_world()
    got = bound_devices(events, devices, max_devices_per_identity=2, max_events_per_device=4, seed=9)
    expected = _reference_bound(events, devices, 2, 4, 9)
    assert got.sort_values("n")[["n", "device_id", "identity_id"]].values.tolist() == \
        expected.sort_values("n")[["n", "device_id", "identity_id"]].values.tolist()
    assert got.groupby("identity_id")["device_id"].nunique().max() == 2
    assert got.groupby("device_id").size().max() == 4
    counted = devices_per_identity(devices, [f"p{i}" for i in range(17)], max_devices_per_identity=3)
    owned = devices.groupby("identity_id").size()
    assert counted["devices"].tolist() == [min(int(owned.get(f"p{i}", 0)), 3) for i in range(17)]


def test_cross_device_releases_match_their_reference_when_the_noise_cannot_move_them(ledger):
    devices, kinds, events = _device_world()
    identities = [f"p{i}" for i in range(17)]
    histogram = release_devices_per_identity(identities, devices, ledger=ledger, purpose="test", epsilon=1e6,
                                             max_devices_per_identity=4)
    reference = devices_per_identity(devices, identities, max_devices_per_identity=4)["devices"].value_counts()
    assert histogram["devices"].tolist() == [0, 1, 2, 3, 4]
    assert histogram["count"].tolist() == [float(reference.get(k, 0)) for k in range(5)]
    by_type = release_events_per_device_type(events, kinds, devices, ledger=ledger, purpose="test", epsilon=1e6,
                                             max_devices_per_identity=2, max_events_per_device=4, seed=9)
    typed = _reference_bound(events, devices, 2, 4, 9).merge(kinds, on="device_id")
    assert by_type["device_type"].tolist() == list(DEVICE_TYPES)
    assert by_type["count"].tolist() == [float((typed["device_type"] == t).sum()) for t in DEVICE_TYPES]
    charges = ledger.charges("device_events")
    assert len({c["release_id"] for c in charges}) == 2
    assert all("per identity_id" in c["query"] for c in charges)


def test_a_refused_cross_device_release_charges_nothing(ledger):
    devices, kinds, events = _device_world()
    with pytest.raises(PrivacyParameterError, match="max_devices_per_identity must be a positive integer"):
        release_events_per_device_type(events, kinds, devices, ledger=ledger, purpose="t", epsilon=1.0,
                                       max_devices_per_identity=0, max_events_per_device=4)
    with pytest.raises(PortraitError, match="device_types needs columns device_id and device_type"):
        release_events_per_device_type(events, devices, devices, ledger=ledger, purpose="t", epsilon=1.0,
                                       max_devices_per_identity=2, max_events_per_device=4)
    assert ledger.charges("device_events") == []


# the command line: portrait dp --privacy-unit identity ----------------------------------------------------

AS_OF = "2026-11-01T00:00:00Z"


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity-unit")
    generate(root / "raw", accounts=300, seed=4, catalogue_items=200, progress=False)
    key = create_key_file(root / "keys" / "master.key")
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, key=key, progress=False)
    run_pipeline(workspace, root / "keys" / "master.key", parse_as_of(AS_OF), progress=False)
    return workspace, root / "keys" / "master.key"


def _printed(out: str) -> dict[str, float]:
    lines = out.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    return {line.split()[0]: float(line.split()[1]) for line in lines[start:] if not line.startswith("charged")}


def test_portrait_dp_counts_each_identity_with_the_anonymous_events_of_its_own_devices(job, capsys):
    workspace, key_file = job
    ledger = BudgetLedger(workspace.ledger)
    ledger.set_budget("device_events", epsilon=1e10, set_by="test")
    assert run_cli("dp", "--workspace", workspace.root, "--key-file", key_file, "--as-of", AS_OF,
                   "--table", "device_events", "--privacy-unit", "identity", "--accounts-per-human", "2",
                   "--purpose", "personalization", "--by", "event_type", "--count", "--epsilon", "1e9",
                   "--max-partitions", "8", "--max-rows", "100000") == 0
    released = _printed(capsys.readouterr().out)
    # reference: signed-in events of consenting persons, and anonymous events of a device linked to one of them
    events = pd.read_parquet(workspace.pseudonymized("device_events"))
    devices = pd.read_parquet(workspace.outputs("identity") / "devices")
    with SqliteConsentStore(workspace.ledger) as store:
        consenting = set(ConsentGate(store).decide("personalization", parse_as_of(AS_OF), job="test")
                         .person_ids(load_master_key(key_file)).to_pylist())
    owner = dict(zip(devices["device_id"], devices["identity_id"], strict=True))
    whose = [p if isinstance(p, str) else owner.get(d) for p, d in zip(events["person_id"], events["device_id"],
                                                                         strict=True)]
    expected = events[[w in consenting for w in whose]].groupby("event_type").size()
    anonymous = sum(1 for p, w in zip(events["person_id"], whose, strict=True) if not isinstance(p, str)
                    and w in consenting)
    assert anonymous > 0     # the identity unit counts events the person unit cannot attribute
    assert released == {t: float(expected.get(t, 0)) for t in released}
    assert "per identity_id (any 2 together" in ledger.charges("device_events")[-1]["query"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--purpose", "product_improvement"], "purpose 'product_improvement' may not read the workspace output "
                                           "'identity'"),
    (["--purpose", "personalization", "--accounts-per-human", "0"], "accounts_per_human must be a positive integer"),
])
def test_a_refused_identity_release_is_one_line_and_charges_nothing(job, capsys, extra, message):
    workspace, key_file = job
    ledger = BudgetLedger(workspace.ledger)
    ledger.set_budget("device_events", epsilon=1e10, set_by="test", note="test budget")
    before = len(ledger.charges("device_events"))
    assert run_cli("dp", "--workspace", workspace.root, "--key-file", key_file, "--as-of", AS_OF,
                   "--table", "device_events", "--privacy-unit", "identity", "--by", "event_type", "--count",
                   "--epsilon", "1", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("portrait: error:") and message in err[0], err
    assert len(ledger.charges("device_events")) == before


def test_the_engine_release_counts_identities_under_the_group_bound(ledger, tmp_path):
    """The engine's bounded counts per identity (device events attributed first) equal a plain count, and the
    charge carries the group bound's doubled noise."""
    events = _events(np.array([True, False, True]))
    rows = _identity_rows(events)
    engine = LocalEngine(workspace=tmp_path / "engine")
    try:
        frame = engine.from_table(pa.Table.from_pandas(rows[["identity_id", "group"]], preserve_index=False),
                                  key="identity_id", partitions=2)
        released = {k: release_group_counts(engine, frame, group="group", keys=["g00000", "g00001", "g00002"],
                                            ledger=ledger, dataset="device_events", purpose="test", epsilon=1e6,
                                            max_rows_per_partition=R, accounts_per_human=k) for k in (1, 2)}
    finally:
        engine.close()
    # a canary's two accounts add R rows each; base persons one each; the kiosk's anonymous events count for nobody
    assert released[2]["count"].tolist() == [BASE + 2 * R, BASE, BASE + 2 * R]
    charges = ledger.charges("device_events")
    assert charges[-1]["noise_scale"] == pytest.approx(2 * charges[-2]["noise_scale"])
    assert "per identity_id (any 2 together" in charges[-1]["query"]


@given(st.lists(st.tuples(st.sampled_from(["d0", "d1", "d2", "d3"]), st.sampled_from([None, "A", "B", "C"])),
                max_size=30),
       st.dictionaries(st.sampled_from(["d0", "d1", "d2", "d3"]), st.sampled_from(["A", "B", "C"])))
def test_attribution_matches_a_per_row_reference(events, linked):
    rows = pd.DataFrame(events, columns=["device_id", "person_id"]).assign(n=range(len(events)))
    devices = pd.DataFrame({"device_id": list(linked), "identity_id": list(linked.values())})
    got = attach_identity(rows, devices=devices)
    expected = [(n, person if person is not None else linked[device]) for n, (device, person) in enumerate(events)
                if person is not None or device in linked]
    assert list(zip(got["n"], got["identity_id"], strict=True)) == expected
