"""The whole job on synthetic data: what reaches the analytics zone and the outputs, and who.

These are the engine's promises checked end to end: no direct identifier and no sensitive value
passes the door; only persons the consent gate lets through get recommendations; Do Not Disturb
keeps people out of the marketing audience; a revocation between two runs removes the person;
everyone who may be served gets a list, non-personalized (ranked without personal data unless by
the DP release) for those who refused personalization; no identity holds two persons.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from dp import BudgetLedger
from pipelines.cli import main
from pipelines.ingest import ingest
from pipelines.config import JobConfig
from pipelines.dsr import export_account
from pipelines.engines import LocalEngine
from pipelines.engine_jobs import release_item_buyers
from pipelines.popularity import read_popularity
from pipelines.recommend import CATALOGUE_RANKING, RANKING_KEY, non_personalized_ranking
from pipelines.run import run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.consent import ConsentEvent, ConsentGate, SqliteConsentStore
from profiling.keys import create_key_file
from profiling.portrait import portrait_schema
from profiling.pseudonyms import MARKETING, PERSON, pseudonymize
from profiling.schema import PrivacyClass, fields_of_class

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    generate(root / "raw", accounts=400, seed=7, catalogue_items=500, progress=False)
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, progress=False)
    key = create_key_file(root / "keys" / "master.key")
    BudgetLedger(workspace.ledger).set_budget("orders", epsilon=0.15, set_by="test")  # one popularity release
    summary = run_pipeline(workspace, root / "keys" / "master.key", AS_OF, progress=False)
    return workspace, key, root / "keys" / "master.key", summary


@pytest.fixture(scope="module")
def unbudgeted(tmp_path_factory):
    """``portrait run`` on its command line, with no privacy budget set: no DP popularity release."""
    root = tmp_path_factory.mktemp("unbudgeted")
    generate(root / "raw", accounts=400, seed=8, catalogue_items=500, progress=False)
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, progress=False)
    key = create_key_file(root / "keys" / "master.key")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["-q", "run", "--workspace", str(workspace.root), "--key-file", str(root / "keys" / "master.key"),
                     "--as-of", AS_OF.isoformat()])
    assert code == 0
    return workspace, key, printed.getvalue()


def _values(folder) -> set[str]:
    """Every text value (list elements included) in every Parquet file under ``folder``."""
    found: set[str] = set()
    for fragment in ds.dataset(folder, format="parquet").get_fragments():
        table = fragment.to_table()
        for column in table.columns:
            flat = column
            while pa.types.is_list(flat.type) or pa.types.is_large_list(flat.type):
                flat = pc.list_flatten(flat)
            if pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type):
                found.update(v for v in flat.to_pylist() if v is not None)
    return found


def _raw_identifiers(raw_dir) -> set[str]:
    """Every direct identifier and sensitive text value of the raw source."""
    raw: set[str] = set()
    for klass in (PrivacyClass.DIRECT_IDENTIFIER, PrivacyClass.SENSITIVE):
        for table, field in fields_of_class(klass):
            if pa.types.is_string(field.type):
                column = ds.dataset(raw_dir / table, format="parquet").to_table(columns=[field.name]).column(0)
                raw.update(v for v in column.to_pylist() if v)
    return raw


def test_every_stage_reports(job):
    _, _, _, summary = job
    stages = {row["stage"] for row in summary}
    assert {"verify-ingested", "consent-ledger", "pseudonymize", "seal", "k-anonymity", "popularity",
            "consent-gate", "recommend"} <= stages


def test_no_direct_identifier_or_sensitive_value_leaves_the_identifiable_zone(job):
    workspace, _, _, _ = job
    raw = _raw_identifiers(workspace.root.parent / "raw")
    assert len(raw) > 1000  # phones, names, ids, ID numbers, IPs of 400 accounts
    id_numbers = set(ds.dataset(workspace.root.parent / "raw" / "waybills").to_table(columns=["id_card_number"])
                     .column(0).drop_null().to_pylist())
    assert id_numbers and id_numbers <= raw
    for folder in ("pseudonymized", "outputs", "ingested", "vault"):  # sealing moved the ID numbers out
        found = raw & _values(workspace.root / folder)
        leaked = found & id_numbers if folder in ("ingested", "vault") else found
        assert not leaked, f"{len(leaked)} raw identifiers under {folder}/, e.g. {sorted(leaked)[:3]}"


def test_only_gated_persons_are_recommended_and_dnd_never_marketed(job):
    workspace, key, _, _ = job
    with SqliteConsentStore(workspace.ledger) as store:
        gate = ConsentGate(store)
        personalization = gate.decide("personalization", AS_OF, job="test").person_frame(key)
        served = gate.decide("service_provision", AS_OF, job="test").person_frame(key)
        marketing_decision = gate.decide("marketing_messages", AS_OF, job="test")
        marketing = marketing_decision.person_frame(key)
        marketing["marketing_id"] = pseudonymize(marketing_decision.account_ids, key, MARKETING,
                                                 identifier="account_id").to_pandas()
    lists = ds.dataset(workspace.outputs("recommendations")).to_table()
    recommended = set(lists.column("person_id").to_pylist())
    audience = set(ds.dataset(workspace.outputs("marketing_audience")).to_table().column("marketing_id").to_pylist())
    assert recommended == set(served.person_id)  # everyone who may be served, nobody else
    personalized = set(lists.filter(lists.column("personalized")).column("person_id").to_pylist())
    assert personalized and personalized <= set(personalization.person_id)
    assert audience and audience == set(marketing.marketing_id[~marketing.dnd])
    dnd_persons = set(personalization.person_id[personalization.dnd]) | set(marketing.person_id[marketing.dnd])
    assert not audience & set(marketing.marketing_id[marketing.person_id.isin(dnd_persons)])
    assert not audience & set(personalization.person_id)  # a different pseudonym domain: no join


def test_only_persons_eligible_for_personalization_have_a_portrait(job):
    workspace, key, _, summary = job
    with SqliteConsentStore(workspace.ledger) as store:
        gate = ConsentGate(store)
        eligible = set(gate.decide("personalization", AS_OF, job="test").person_ids(key).to_pylist())
        syncing = set(gate.decide("cross_device_sync", AS_OF, job="test").person_ids(key).to_pylist())
    portraits = ds.dataset(workspace.outputs("portraits")).to_table()
    assert portraits.schema.equals(portrait_schema())
    linked = [set(ids) for ids in portraits.column("linked_person_ids").to_pylist()]
    assert set().union(*linked) == eligible  # every eligible person is in exactly one row, nobody else
    assert {len(ids) for ids in linked} == {1}  # accounts are never linked
    for ids, row in zip(linked, portraits.select(["person_id", "cross_device_sync", "device_count"]).to_pylist()):
        assert {row["person_id"]} == ids
        assert row["cross_device_sync"] == (ids <= syncing)
        if not row["cross_device_sync"]:
            assert row["device_count"] == 0
    assert (workspace.outputs("portraits") / "_data_dictionary.json").is_file()
    assert {"identity", "portraits"} <= {row["stage"] for row in summary}


def test_a_device_another_account_signed_in_on_belongs_to_no_identity(job):
    workspace, _, _, _ = job
    events = ds.dataset(workspace.pseudonymized("device_events")).to_table(columns=["device_id", "person_id"])
    signed = events.filter(pc.is_valid(events.column("person_id"))).group_by("device_id").aggregate(
        [("person_id", "count_distinct")])
    accounts_on = dict(zip(signed.column("device_id").to_pylist(),
                           signed.column("person_id_count_distinct").to_pylist(), strict=True))
    assert max(accounts_on.values()) >= 3  # the data holds shared devices: the rule is exercised
    devices = ds.dataset(workspace.outputs("identity") / "devices").to_table()
    assert devices.num_rows > 0
    assert {accounts_on[d] for d in devices.column("device_id").to_pylist()} == {1}
    identity_of = dict(zip(devices.column("device_id").to_pylist(), devices.column("identity_id").to_pylist(),
                           strict=True))
    owner = events.filter(pc.is_in(events.column("device_id"), value_set=devices.column("device_id")))
    owner = owner.filter(pc.is_valid(owner.column("person_id")))
    assert all(identity_of[d] == p for d, p in zip(owner.column("device_id").to_pylist(),
                                                    owner.column("person_id").to_pylist(), strict=True))


def test_a_data_subject_export_holds_the_portrait_row(job, tmp_path):
    workspace, key, _, _ = job
    portraits = ds.dataset(workspace.outputs("portraits")).to_table()
    person = portraits.column("linked_person_ids")[0].as_py()[-1]
    accounts = workspace.read("accounts", ["account_id"]).column("account_id")
    account = accounts.filter(pc.equal(pseudonymize(accounts, key, PERSON, identifier="account_id"),
                                       person))[0].as_py()
    bundle = export_account(workspace, account, key, tmp_path / "export")
    rows = bundle["tables"]["outputs/portraits"]
    assert len(rows) == 1 and person in rows[0]["linked_person_ids"]


def test_a_revocation_between_two_runs_removes_the_persons_portrait_and_personalized_list(job):
    workspace, key, key_file, _ = job
    recommendations = ds.dataset(workspace.outputs("recommendations")).to_table()
    person = recommendations.filter(recommendations.column("personalized")).column("person_id")[0].as_py()
    accounts = workspace.read("accounts", ["account_id"]).column("account_id")
    account = accounts.filter(pc.equal(pseudonymize(accounts, key, PERSON, identifier="account_id"),
                                       person))[0].as_py()
    later = AS_OF + dt.timedelta(days=1)
    with SqliteConsentStore(workspace.ledger) as store:
        store.append([ConsentEvent(account, AS_OF + dt.timedelta(hours=1), "revoke", "personalization")],
                     source="test")
        audits_before = len(store.audit_records())
    run_pipeline(workspace, key_file, later, progress=False)
    after = ds.dataset(workspace.outputs("recommendations")).to_table()
    theirs = after.filter(pc.equal(after.column("person_id"), person))
    assert theirs.num_rows and not pc.any(theirs.column("personalized")).as_py()  # served, not personalized
    portrayed = ds.dataset(workspace.outputs("portraits")).to_table().column("linked_person_ids")
    assert person not in set(pc.list_flatten(portrayed).to_pylist())
    with SqliteConsentStore(workspace.ledger) as store:
        audits = store.audit_records()
    assert len(audits) >= audits_before + 2  # the second run's decisions are audited; the first run's stay


def test_popularity_is_released_with_dp_and_never_beyond_the_budget(job):
    workspace, key, _, _ = job
    popularity = read_popularity(workspace)
    assert popularity is not None and len(popularity) == 500  # every catalogue item, a public key
    ledger = BudgetLedger(workspace.ledger)
    assert ledger.remaining("orders")["epsilon"] == pytest.approx(0.05)
    before = sorted(p.read_bytes() for p in workspace.outputs("popularity").glob("*.parquet"))
    persons = pa.array(["not-a-person"], pa.string())
    with LocalEngine(workspace=workspace) as engine:
        row = release_item_buyers(engine, workspace, persons, AS_OF)
    assert row["rows"] == 0 and row["note"].startswith("release refused, nothing charged or released")
    assert sorted(p.read_bytes() for p in workspace.outputs("popularity").glob("*.parquet")) == before
    assert ledger.remaining("orders")["epsilon"] == pytest.approx(0.05)


def test_a_job_without_the_optional_purposes_links_nobody_and_markets_to_nobody(job):
    workspace, _, key_file, _ = job
    config = JobConfig(purposes=("personalization",), k=3)
    summary = run_pipeline(workspace, key_file, AS_OF + dt.timedelta(days=2), progress=False, config=config)
    assert ds.dataset(workspace.outputs("marketing_audience")).count_rows() == 0
    portraits = ds.dataset(workspace.outputs("portraits")).to_table(columns=["linked_person_ids", "device_count"])
    assert max(len(ids) for ids in portraits.column("linked_person_ids").to_pylist()) == 1
    assert pc.sum(portraits.column("device_count")).as_py() == 0
    assert [row.get("note", "") for row in summary if row["stage"] == "popularity"][0].startswith("skipped")
    lists = ds.dataset(workspace.outputs("recommendations")).to_table(columns=["person_id"]).column("person_id")
    assert pc.max(pc.value_counts(lists).field("counts")).as_py() <= 3


def test_a_job_interrupted_midway_keeps_the_previous_outputs_and_can_be_rerun(job, monkeypatch):
    workspace, _, key_file, _ = job
    before = ds.dataset(workspace.outputs("portraits")).to_table()
    lists_before = ds.dataset(workspace.outputs("recommendations")).to_table()

    def killed(self):
        yield from ()
        raise KeyboardInterrupt

    monkeypatch.setattr("profiling.portrait.PortraitBuilder.tables", killed)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(workspace, key_file, AS_OF + dt.timedelta(days=3), progress=False)
    assert ds.dataset(workspace.outputs("portraits")).to_table().equals(before)
    assert ds.dataset(workspace.outputs("recommendations")).to_table().equals(lists_before)
    assert not list(workspace.root.glob(".staging-*"))
    monkeypatch.undo()
    run_pipeline(workspace, key_file, AS_OF + dt.timedelta(days=3), progress=False)
    after = ds.dataset(workspace.outputs("portraits")).to_table()
    assert after.column("as_of")[0].as_py() == AS_OF + dt.timedelta(days=3)


def _refusers(workspace, key):
    with SqliteConsentStore(workspace.ledger) as store:
        served = ConsentGate(store).decide("service_provision", AS_OF, job="test").person_frame(key)
    return set(served.person_id[served.non_personalized])


def test_refusers_of_personalization_get_a_non_personalized_list_through_portrait_run(unbudgeted):
    workspace, key, _ = unbudgeted
    refusers = _refusers(workspace, key)
    assert refusers  # the synthetic data holds persons who refused personalization
    lists = ds.dataset(workspace.outputs("recommendations")).to_table()
    theirs = lists.filter(pc.is_in(lists.column("person_id"), value_set=pa.array(sorted(refusers))))
    assert set(theirs.column("person_id").to_pylist()) == refusers
    assert not pc.any(theirs.column("personalized")).as_py()
    per_person = theirs.group_by("person_id").aggregate([("item_id", "list")])
    assert len({tuple(items) for items in per_person.column("item_id_list").to_pylist()}) == 1  # one list for all


def test_without_a_budget_the_non_personalized_lists_follow_the_catalogue_and_say_so(unbudgeted):
    workspace, _, printed = unbudgeted
    assert read_popularity(workspace) is None
    folder = workspace.outputs("recommendations")
    assert non_personalized_ranking(folder) == CATALOGUE_RANKING
    assert ds.dataset(folder).schema.metadata[RANKING_KEY.encode()] == CATALOGUE_RANKING.encode()
    assert CATALOGUE_RANKING in printed
    lists = ds.dataset(folder).to_table()
    popular = lists.filter(pc.invert(lists.column("personalized")))
    catalogue = ds.dataset(workspace.pseudonymized("catalogue")).to_table(columns=["item_id", "listed_at"])
    listed_day = {item: at.timestamp() / 86_400 for item, at in zip(catalogue.column("item_id").to_pylist(),
                                                                    catalogue.column("listed_at").to_pylist(),
                                                                    strict=True)}
    items, scores = popular.column("item_id").to_pylist(), popular.column("score").to_pylist()
    assert scores == pytest.approx([listed_day[i] for i in items], abs=0.01)  # float32 days since 1970
    orders = ds.dataset(workspace.pseudonymized("orders")).to_table(columns=["person_id", "items"])
    buyers = pc.list_flatten(orders.column("items")).to_pylist()
    assert any(score != buyers.count(item) for item, score in zip(items, scores, strict=True))
    assert max(scores) > 10_000  # days since 1970, not counts of 400 accounts' buyers


def test_with_the_dp_release_the_lists_name_the_release(job):
    workspace, _, _, summary = job
    (charge,) = [c for c in BudgetLedger(workspace.ledger).charges("orders") if c["released_at"]][:1]
    assert non_personalized_ranking(workspace.outputs("recommendations")) == f"dp_popularity:{charge['release_id']}"
    assert [r["ranking"] for r in summary if r.get("kind") == "non-personalized"] == [
        f"dp_popularity:{charge['release_id']}"]
