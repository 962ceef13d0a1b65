"""The purpose catalogue and the policy versions."""

from __future__ import annotations

import datetime as dt

import pytest

from profiling.purposes import (
    CATALOGUE,
    CONSENT_EVENT_TYPES,
    POLICY_HISTORY,
    POLICY_VERSIONS,
    PURPOSES,
    PurposeGroup,
    policy_in_force,
    policy_version,
    purpose,
)
from profiling.schema import PrivacyClass, table

UTC = dt.timezone.utc


def test_core_purposes_need_no_grant_and_the_rest_do():
    core = {name for name, p in CATALOGUE.items() if p.group is PurposeGroup.CORE}
    assert core == {"account_registration", "service_provision", "payment_settlement", "messaging",
                    "customer_service", "product_improvement", "transaction_safety"}
    assert all(not CATALOGUE[n].needs_consent for n in core)
    assert all(p.needs_consent for n, p in CATALOGUE.items() if n not in core)


def test_sensitive_reads_and_dnd():
    assert {n for n, p in CATALOGUE.items() if p.needs_sensitive_consent} == {
        "service_provision", "location", "cross_border_transfer"}
    assert {n for n, p in CATALOGUE.items() if p.suppressed_by_dnd} == {"marketing_messages"}
    classes = {c.value for c in PrivacyClass}
    assert all(p.reads <= classes and p.reads for p in CATALOGUE.values())
    assert "direct_identifier" not in purpose("personalization").reads  # pseudonymized data only


def test_the_data_model_uses_the_catalogue():
    consent = table("consent_events")
    assert consent["purpose"].allowed == tuple(PURPOSES) == tuple(CATALOGUE)
    assert consent["event_type"].allowed == CONSENT_EVENT_TYPES
    assert consent["policy_version"].allowed == POLICY_VERSIONS == ("2018-01", "2019-06")


def test_unknown_purpose_names_the_near_match_and_the_known_ones():
    with pytest.raises(ValueError, match="unknown purpose 'marketing'; did you mean 'marketing_messages'") as error:
        purpose("marketing")
    assert all(name in str(error.value) for name in CATALOGUE)
    with pytest.raises(ValueError, match="unknown purpose None"):
        purpose(None)


def test_policy_versions():
    assert policy_version("2019-06").reconsent == {"personalization", "marketing_messages"}
    assert policy_version("2018-01").reconsent == frozenset()
    with pytest.raises(ValueError, match="unknown policy version '2020-01'.*Known: 2018-01, 2019-06"):
        policy_version("2020-01")
    update = POLICY_HISTORY[1].in_force
    assert policy_in_force(update - dt.timedelta(microseconds=1)).name == "2018-01"
    assert policy_in_force(update).name == "2019-06"
    assert policy_in_force(dt.datetime(2010, 1, 1, tzinfo=UTC)).name == "2018-01"  # before the first
    assert policy_in_force(dt.datetime(2019, 6, 10, 8, tzinfo=dt.timezone(dt.timedelta(hours=8)))).name == "2019-06"
    with pytest.raises(ValueError, match="timezone-aware"):
        policy_in_force(dt.datetime(2020, 1, 1))
