"""The consent gate: every semantic of the consent issue, and the audit record each decision leaves."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from profiling.consent import (
    NO_CONSENT_RECORD,
    ConsentError,
    ConsentEvent,
    ConsentGate,
    SqliteConsentStore,
    sensitive_consent_holds,
)
from profiling.keys import MasterKey
from profiling.pseudonyms import PERSON, pseudonymize

UTC = dt.timezone.utc
KEY = MasterKey(bytes(range(32)))


def at(year: int, month: int = 1, day: int = 1) -> dt.datetime:
    return dt.datetime(year, month, day, tzinfo=UTC)


@pytest.fixture
def store(tmp_path):
    with SqliteConsentStore(tmp_path / "ledger.sqlite") as opened:
        yield opened


def record(store, *events) -> None:
    store.append([ConsentEvent(*e) for e in events], source="api")


def test_revocation_between_two_runs_keeps_the_earlier_audit(store):
    record(store, ("A1", at(2025), "policy_accept"), ("A1", at(2025, 1, 2), "grant", "personalization"),
           ("A2", at(2025), "policy_accept"), ("A2", at(2025, 1, 2), "grant", "personalization"))
    gate = ConsentGate(store)
    first = gate.decide("personalization", at(2025, 6), job="portraits")
    assert sorted(first.account_ids.to_pylist()) == ["A1", "A2"]
    record(store, ("A1", at(2025, 7), "revoke", "personalization"))
    second = gate.decide("personalization", at(2025, 8), job="portraits")
    assert second.account_ids.to_pylist() == ["A2"] and second.excluded == {"revoked": 1}
    audits = store.audit_records()
    assert [(a["id"], a["eligible"], a["excluded_reasons"]) for a in audits] == [
        (first.audit_id, 2, {}), (second.audit_id, 1, {"revoked": 1})]
    # What was processed before the revocation stays lawful: the earlier moment still says yes.
    assert gate.decide("personalization", at(2025, 6), job="replay").eligible == 2


def test_do_not_disturb_keeps_personalization_flagged_and_stops_marketing(store):
    record(store, ("A1", at(2025), "policy_accept"), ("A1", at(2025), "grant", "personalization"),
           ("A1", at(2025), "grant", "marketing_messages"), ("A1", at(2025, 2), "dnd_on"),
           ("A2", at(2025), "policy_accept"), ("A2", at(2025), "grant", "marketing_messages"))
    gate = ConsentGate(store)
    personal = gate.decide("personalization", at(2025, 3), job="portraits")
    assert personal.frame().set_index("account_id")["dnd"].to_dict() == {"A1": True}
    marketing = gate.decide("marketing_messages", at(2025, 3), job="audience")
    assert marketing.account_ids.to_pylist() == ["A2"]
    assert marketing.excluded == {"do_not_disturb": 1}
    assert gate.decide("marketing_messages", at(2025, 1, 15), job="audience").eligible == 2  # before DND
    record(store, ("A1", at(2025, 4), "dnd_off"))
    assert gate.decide("marketing_messages", at(2025, 5), job="audience").eligible == 2
    assert store.audit_records()[1]["dnd"] == 0 and store.audit_records()[0]["dnd"] == 1


def test_policy_version_change_requires_reconsent(store):
    record(store, ("A1", at(2018, 3), "policy_accept"), ("A1", at(2018, 3), "grant", "personalization"),
           ("A1", at(2018, 3), "grant", "camera"))
    gate = ConsentGate(store)
    assert gate.decide("personalization", at(2019, 6, 9), job="j").eligible == 1
    after = gate.decide("personalization", at(2019, 6, 10), job="j")
    assert after.eligible == 0 and after.excluded == {"reconsent_required": 1}
    assert gate.decide("camera", at(2020), job="j").eligible == 1  # the update does not ask again for it
    record(store, ("A1", at(2019, 7), "grant", "personalization"))  # under 2019-06, the version in force
    assert gate.decide("personalization", at(2019, 8), job="j").eligible == 1
    events = store.history("A1")
    assert [e["policy_version"] for e in events] == ["2018-01", "2018-01", "2018-01", "2019-06"]


def test_cancellation_is_final(store):
    record(store, ("A1", at(2025), "policy_accept"), ("A1", at(2025), "grant", "personalization"),
           ("A1", at(2025, 3), "cancel"))
    gate = ConsentGate(store)
    for purpose in ("personalization", "service_provision"):
        decision = gate.decide(purpose, at(2025, 4), job="j")
        assert decision.eligible == 0 and decision.excluded == {"cancelled": 1}
    with pytest.raises(ConsentError, match="cancellation is final"):
        record(store, ("A1", at(2025, 5), "grant", "personalization"))
    assert len(store.history("A1")) == 3
    assert gate.decide("personalization", at(2025, 2), job="j").eligible == 1  # before the cancellation


def test_sensitive_data_needs_its_own_consent(store):
    record(store, ("A1", at(2025), "policy_accept"), ("A2", at(2025), "policy_accept"),
           ("A2", at(2025, 2), "sensitive_grant", "service_provision"))
    gate = ConsentGate(store)
    assert gate.decide("service_provision", at(2025, 3), job="j").eligible == 2
    sensitive = gate.decide("service_provision", at(2025, 3), job="customs", sensitive=True)
    assert sensitive.account_ids.to_pylist() == ["A2"]
    assert sensitive.excluded == {"no_sensitive_consent": 1}
    assert store.audit_records()[-1]["sensitive"] is True
    assert sensitive_consent_holds(store, ["A1", "A2", "A3"], at(2025, 3)) == [False, True, False]
    record(store, ("A2", at(2025, 4), "sensitive_revoke", "service_provision"))
    assert sensitive_consent_holds(store, ["A2"], at(2025, 5)) == [False]
    with pytest.raises(ConsentError, match="never reads sensitive data"):
        record(store, ("A1", at(2025, 5), "sensitive_grant", "personalization"))


def test_deny_by_default_and_no_consent_record(store):
    record(store, ("A1", at(2025), "policy_accept"))
    decision = ConsentGate(store).decide("personalization", at(2025, 2), job="portraits",
                                         population=["A1", "A2", "A3"])
    assert decision.eligible == 0
    assert decision.excluded == {"not_granted": 1, NO_CONSENT_RECORD: 2}
    assert ConsentGate(store).decide("service_provision", at(2024), job="j").excluded == {"no_policy_accepted": 1}


def test_audit_record_holds_counts_and_a_snapshot_hash(store):
    record(store, ("A1", at(2025), "policy_accept"), ("A1", at(2025), "grant", "personalization"),
           ("A2", at(2025), "policy_accept"))
    gate = ConsentGate(store)
    decision = gate.decide("personalization", at(2025, 6), job="portraits")
    audit = store.audit_records()[-1]
    assert {k: audit[k] for k in ("job", "purpose", "as_of", "sensitive", "eligible", "excluded",
                                  "excluded_reasons", "dnd", "non_personalized", "events")} == {
        "job": "portraits", "purpose": "personalization", "as_of": "2025-06-01T00:00:00+00:00",
        "sensitive": False, "eligible": 1, "excluded": 1, "excluded_reasons": {"not_granted": 1},
        "dnd": 0, "non_personalized": 0, "events": 3}
    assert len(audit["snapshot_hash"]) == 64 and audit["snapshot_hash"] == decision.snapshot_hash
    assert "A1" not in str(audit) and "A2" not in str(audit)
    # An event after the as-of moment does not change the history as it stood; one before does.
    record(store, ("A2", at(2025, 9), "grant", "personalization"), ("A0", at(2025, 9), "policy_accept"))
    assert gate.decide("personalization", at(2025, 6), job="p").snapshot_hash == decision.snapshot_hash
    record(store, ("A2", at(2025, 5), "dnd_on"))
    assert gate.decide("personalization", at(2025, 6), job="p").snapshot_hash != decision.snapshot_hash
    with pytest.raises(ValueError, match="name the job"):
        gate.decide("personalization", at(2025, 6), job="")
    with pytest.raises(ValueError, match="unknown purpose"):
        gate.decide("personalisation", at(2025, 6), job="p")


def test_person_frame_and_keep_use_pseudonyms(store):
    record(store, ("A1", at(2025), "policy_accept"), ("A1", at(2025), "grant", "personalization"),
           ("A2", at(2025), "policy_accept"))
    decision = ConsentGate(store).decide("service_provision", at(2025, 6), job="recommend")
    frame = decision.person_frame(KEY).set_index("person_id")
    person = pseudonymize(["A1", "A2"], KEY, PERSON, identifier="account_id").to_pylist()
    assert frame["non_personalized"].to_dict() == {person[0]: False, person[1]: True}
    rows = pa.table({"person_id": person + ["0" * 32], "x": [1, 2, 3]})
    assert decision.keep(rows, "person_id", key=KEY)["x"].to_pylist() == [1, 2]
    with pytest.raises(ValueError, match="needs the master key"):
        decision.keep(rows, "person_id")
    with pytest.raises(ValueError, match="no column 'account_id'"):
        decision.keep(rows)
