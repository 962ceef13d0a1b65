"""As-of consent evaluation: each rule of the semantics, and the vectorized kernel against a slow reference."""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiling.consent import ConsentSnapshot, Exclusion
from profiling.purposes import (
    CATALOGUE,
    CONSENT_EVENT_TYPES,
    POLICY_HISTORY,
    POLICY_VERSIONS,
    PURPOSE_EVENT_TYPES,
    SENSITIVE_EVENT_TYPES,
)
from profiling.schema import TIMESTAMP

UTC = dt.timezone.utc


def day(year: int, month: int, d: int = 1, hour: int = 0) -> dt.datetime:
    return dt.datetime(year, month, d, hour, tzinfo=UTC)


def history(*events: tuple) -> pa.Table:
    """Events ``(account, moment, type, purpose, version)`` in ledger order."""
    rows = [dict(account_id=a, event_at=t, event_type=k, purpose=p, policy_version=v) for a, t, k, p, v in events]
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("account_id", pa.string()), ("event_at", TIMESTAMP), ("event_type", pa.string()),
        ("purpose", pa.string()), ("policy_version", pa.string())]))


def state_at(table: pa.Table, moment: dt.datetime):
    return ConsentSnapshot.from_arrow(table).evaluate(moment)


def verdict(table: pa.Table, moment: dt.datetime, purpose: str, account: str = "A1", **kwargs) -> str:
    state = state_at(table, moment)
    index = state.account_ids.to_pylist().index(account)
    return Exclusion(state.exclusions(purpose, **kwargs)[index]).label


NEW = "2019-06"
OLD = "2018-01"


def test_deny_by_default_and_core_purposes_rest_on_the_accepted_policy():
    events = history(("A1", day(2020, 1), "policy_accept", None, NEW), ("A2", day(2020, 1), "dnd_off", None, NEW))
    later = day(2020, 2)
    assert verdict(events, later, "personalization") == "not_granted"
    assert verdict(events, later, "camera") == "not_granted"
    assert verdict(events, later, "service_provision") == "eligible"
    assert verdict(events, later, "service_provision", account="A2") == "no_policy_accepted"
    assert verdict(events, day(2019, 12), "service_provision") == "no_policy_accepted"  # not yet accepted


def test_revocation_between_two_runs_stops_later_processing_only():
    events = history(("A1", day(2020, 1), "grant", "personalization", NEW),
                     ("A1", day(2020, 3), "revoke", "personalization", NEW))
    first_run, second_run = day(2020, 2), day(2020, 4)
    assert verdict(events, first_run, "personalization") == "eligible"
    assert verdict(events, second_run, "personalization") == "revoked"
    assert verdict(events, first_run, "personalization") == "eligible"  # the earlier run stays lawful
    regranted = history(*[(r["account_id"], r["event_at"], r["event_type"], r["purpose"], r["policy_version"])
                          for r in events.to_pylist()], ("A1", day(2020, 5), "grant", "personalization", NEW))
    assert verdict(regranted, day(2020, 6), "personalization") == "eligible"


def test_core_purpose_revoked_explicitly_is_refused():
    events = history(("A1", day(2020, 1), "policy_accept", None, NEW),
                     ("A1", day(2020, 2), "revoke", "product_improvement", NEW))
    assert verdict(events, day(2020, 3), "product_improvement") == "revoked"
    assert verdict(events, day(2020, 3), "messaging") == "eligible"


def test_dnd_keeps_personalization_flagged_and_removes_marketing():
    events = history(("A1", day(2020, 1), "grant", "personalization", NEW),
                     ("A1", day(2020, 1), "grant", "marketing_messages", NEW),
                     ("A1", day(2020, 2), "dnd_on", None, NEW),
                     ("A1", day(2020, 4), "dnd_off", None, NEW))
    during, after = state_at(events, day(2020, 3)), state_at(events, day(2020, 5))
    assert during.eligible("personalization")[0] and during.dnd[0]
    assert not during.eligible("marketing_messages")[0]
    assert verdict(events, day(2020, 3), "marketing_messages") == "do_not_disturb"
    assert during.consents("marketing_messages")[0]  # the grant itself stands
    assert after.eligible("marketing_messages")[0] and not after.dnd[0]


def test_policy_version_demanding_reconsent_lapses_older_grants_once_in_force():
    change = POLICY_HISTORY[1].in_force
    assert {"personalization", "marketing_messages"} == POLICY_HISTORY[1].reconsent
    events = history(("A1", day(2018, 6), "policy_accept", None, OLD),
                     ("A1", day(2018, 6), "grant", "personalization", OLD),
                     ("A1", day(2018, 6), "grant", "cross_device_sync", OLD),
                     ("A2", day(2018, 6), "grant", "personalization", OLD),
                     ("A2", day(2019, 7), "grant", "personalization", NEW))
    before, after = change - dt.timedelta(microseconds=1), change
    assert verdict(events, before, "personalization") == "eligible"
    assert verdict(events, after, "personalization") == "reconsent_required"
    assert verdict(events, after, "cross_device_sync") == "eligible"   # not asked again
    assert verdict(events, after, "service_provision") == "eligible"   # core: the old accepted policy suffices
    assert verdict(events, day(2019, 6, 20), "personalization", account="A2") == "reconsent_required"
    assert verdict(events, day(2019, 8), "personalization", account="A2") == "eligible"  # the fresh yes


def test_cancellation_is_final():
    events = history(("A1", day(2020, 1), "policy_accept", None, NEW),
                     ("A1", day(2020, 1), "grant", "personalization", NEW),
                     ("A1", day(2020, 2), "cancel", None, NEW),
                     ("A1", day(2020, 3), "grant", "personalization", NEW),
                     ("A1", day(2020, 3), "dnd_on", None, NEW))
    state = state_at(events, day(2020, 4))
    for name in CATALOGUE:
        assert state.exclusions(name)[0] == Exclusion.CANCELLED
    assert not state.dnd[0] and not state.non_personalized[0]  # not served at all
    assert verdict(events, day(2020, 1, 15), "personalization") == "eligible"


def test_sensitive_data_needs_the_separate_consent():
    events = history(("A1", day(2020, 1), "policy_accept", None, NEW),
                     ("A1", day(2020, 2), "sensitive_grant", "service_provision", NEW),
                     ("A1", day(2020, 4), "sensitive_revoke", "service_provision", NEW),
                     ("A2", day(2020, 1), "policy_accept", None, NEW))
    assert verdict(events, day(2020, 3), "service_provision", sensitive=True) == "eligible"
    assert verdict(events, day(2020, 5), "service_provision", sensitive=True) == "no_sensitive_consent"
    assert verdict(events, day(2020, 5), "service_provision") == "eligible"  # without the ID numbers
    assert verdict(events, day(2020, 3), "service_provision", account="A2", sensitive=True) == "no_sensitive_consent"
    with pytest.raises(ValueError, match="may not read sensitive data"):
        state_at(events, day(2020, 3)).eligible("personalization", sensitive=True)


def test_refused_personalization_is_flagged_for_non_personalized_recommendations():
    events = history(("A1", day(2020, 1), "policy_accept", None, NEW),
                     ("A2", day(2020, 1), "policy_accept", None, NEW),
                     ("A2", day(2020, 1), "grant", "personalization", NEW))
    state = state_at(events, day(2020, 2))
    assert state.non_personalized.tolist() == [True, False]
    assert state.eligible("service_provision").tolist() == [True, True]


def test_events_at_the_same_moment_follow_the_ledger_order():
    moment = day(2020, 1)
    grant_then_revoke = history(("A1", moment, "grant", "camera", NEW), ("A1", moment, "revoke", "camera", NEW))
    revoke_then_grant = history(("A1", moment, "revoke", "camera", NEW), ("A1", moment, "grant", "camera", NEW))
    assert verdict(grant_then_revoke, moment, "camera") == "revoked"
    assert verdict(revoke_then_grant, moment, "camera") == "eligible"


def test_bad_histories_and_moments_are_refused_with_the_column_named():
    with pytest.raises(ValueError, match="column 'purpose' holds 'telepathy'"):
        ConsentSnapshot.from_arrow(history(("A1", day(2020, 1), "grant", "telepathy", NEW)))
    with pytest.raises(ValueError, match="'grant' event .* names no purpose"):
        ConsentSnapshot.from_arrow(history(("A1", day(2020, 1), "grant", None, NEW)))
    with pytest.raises(ValueError, match="lacks column"):
        ConsentSnapshot.from_arrow(pa.table({"account_id": ["A1"]}))
    with pytest.raises(ValueError, match="timezone-aware"):
        ConsentSnapshot.from_arrow(history()).evaluate(dt.datetime(2020, 1, 1))
    with pytest.raises(ValueError, match="unknown purpose 'personalisation'; did you mean 'personalization'"):
        state_at(history(), day(2020, 1)).eligible("personalisation")


def test_an_empty_history_gives_nobody():
    state = state_at(history(), day(2020, 1))
    assert len(state.account_ids) == 0 and state.eligible("messaging").shape == (0,)


# The slow, obviously-correct reference --------------------------------------------------------------------

def reference(rows: list[dict], moment: dt.datetime) -> dict[str, dict]:
    """Per account: {"eligible": {purpose: bool}, "sensitive": {purpose: bool}, "dnd": bool, "non_personalized": bool}."""
    by_account = defaultdict(list)
    for seq, row in enumerate(rows):
        by_account[row["account_id"]].append((row["event_at"], seq, row))
    result = {}
    for account, entries in by_account.items():
        said = [row for at, _, row in sorted(entries, key=lambda e: (e[0], e[1])) if at <= moment]
        cancelled = any(r["event_type"] == "cancel" for r in said)
        accepted = any(r["event_type"] == "policy_accept" for r in said)
        dnd = False
        for r in said:
            if r["event_type"] in ("dnd_on", "dnd_off"):
                dnd = r["event_type"] == "dnd_on"

        def allowed(name: str) -> bool:
            last = None
            for r in said:
                if r["event_type"] in PURPOSE_EVENT_TYPES and r["purpose"] == name:
                    last = r
            if cancelled:
                return False
            if last is None:
                return not CATALOGUE[name].needs_consent and accepted
            if last["event_type"] == "revoke":
                return False
            given = POLICY_VERSIONS.index(last["policy_version"])
            return not any(v.in_force <= moment and name in v.reconsent and POLICY_VERSIONS.index(v.name) > given
                           for v in POLICY_HISTORY)

        def sensitive(name: str) -> bool:
            last = None
            for r in said:
                if r["event_type"] in SENSITIVE_EVENT_TYPES and r["purpose"] == name:
                    last = r
            return last is not None and last["event_type"] == "sensitive_grant"

        eligible = {name: allowed(name) and not (CATALOGUE[name].suppressed_by_dnd and dnd) for name in CATALOGUE}
        result[account] = {
            "eligible": eligible,
            "sensitive": {name: eligible[name] and sensitive(name)
                          for name in CATALOGUE if CATALOGUE[name].needs_sensitive_consent},
            "dnd": dnd and not cancelled,
            "non_personalized": not cancelled and not allowed("personalization"),
        }
    return result


_MOMENTS = [day(2018, 3), day(2019, 6, 10), day(2019, 6, 11), day(2020, 1), day(2020, 1, 1, 12), day(2021, 1)]
_PURPOSES = ["personalization", "marketing_messages", "service_provision", "location", "camera",
             "account_registration"]


# Grants often, cancellations rarely, so that histories reach every rule instead of ending early.
_TYPES_WEIGHTED = ["grant"] * 5 + ["revoke"] * 2 + ["sensitive_grant"] * 2 + ["policy_accept"] * 2 + [
    "sensitive_revoke", "dnd_on", "dnd_off", "cancel"]
assert set(_TYPES_WEIGHTED) == set(CONSENT_EVENT_TYPES)


@st.composite
def histories(draw) -> tuple[list[dict], bool]:
    rows = []
    for _ in range(draw(st.integers(0, 40))):
        event_type = draw(st.sampled_from(_TYPES_WEIGHTED))
        if event_type in SENSITIVE_EVENT_TYPES:
            purpose = draw(st.sampled_from(["service_provision", "location"]))
        elif event_type in PURPOSE_EVENT_TYPES:
            purpose = draw(st.sampled_from(_PURPOSES))
        else:
            purpose = None
        rows.append(dict(account_id=draw(st.sampled_from(["A1", "A2", "B07", "A10"])),
                         event_at=draw(st.sampled_from(_MOMENTS)), event_type=event_type, purpose=purpose,
                         policy_version=draw(st.sampled_from(POLICY_VERSIONS))))
    return rows, draw(st.booleans())


@given(histories(), st.sampled_from(_MOMENTS + [day(2017, 1), day(2019, 6, 9)]))
def test_vectorized_evaluation_agrees_with_the_reference(drawn, moment):
    rows, ledger_ordered = drawn
    if ledger_ordered:  # the order the ledger returns: by account, then time, ties in recording order
        rows = sorted(rows, key=lambda r: (r["account_id"], r["event_at"]))
    state = state_at(history(*[tuple(r.values()) for r in rows]), moment)
    expected = reference(rows, moment)
    accounts = state.account_ids.to_pylist()
    assert sorted(accounts) == sorted(expected)
    for name in CATALOGUE:
        got = dict(zip(accounts, state.eligible(name).tolist()))
        assert got == {a: e["eligible"][name] for a, e in expected.items()}, name
        if CATALOGUE[name].needs_sensitive_consent:
            got = dict(zip(accounts, state.eligible(name, sensitive=True).tolist()))
            assert got == {a: e["sensitive"][name] for a, e in expected.items()}, name
    assert dict(zip(accounts, state.dnd.tolist())) == {a: e["dnd"] for a, e in expected.items()}
    assert dict(zip(accounts, state.non_personalized.tolist())) == {
        a: e["non_personalized"] for a, e in expected.items()}


def test_shuffled_and_ordered_inputs_give_the_same_state():
    rng = random.Random(3)
    rows = [dict(account_id=f"A{rng.randrange(50)}", event_type=rng.choice(["grant", "revoke"]),
                 event_at=day(2019, 1) + dt.timedelta(days=rng.randrange(900), seconds=i),  # no ties
                 purpose=rng.choice(_PURPOSES), policy_version=rng.choice(POLICY_VERSIONS))
            for i in range(400)]
    ordered = sorted(rows, key=lambda r: (r["account_id"], r["event_at"]))
    shuffled = ordered[:]
    rng.shuffle(shuffled)
    columns = ("account_id", "event_at", "event_type", "purpose", "policy_version")
    a = state_at(history(*[tuple(r[c] for c in columns) for r in ordered]), day(2020, 6))
    b = state_at(history(*[tuple(r[c] for c in columns) for r in shuffled]), day(2020, 6))
    order = np.argsort(b.account_ids.to_numpy(zero_copy_only=False))
    assert a.account_ids.to_pylist() == [b.account_ids.to_pylist()[i] for i in order]
    assert (a.cells == b.cells[:, order]).all()


@given(histories(), st.lists(st.integers(0, 40), max_size=6))
def test_a_history_prepared_piece_by_piece_is_the_one_prepared_whole(drawn, cuts):
    rows, _ = drawn
    table = history(*[tuple(r.values()) for r in sorted(rows, key=lambda r: (r["account_id"], r["event_at"]))])
    bounds = [0, *sorted(min(cut, table.num_rows) for cut in cuts), table.num_rows]
    # pieces cut anywhere: inside an account's events, empty ones, all in one
    pieces = [table.slice(start, stop - start) for start, stop in zip(bounds, bounds[1:])]
    whole, pieced = ConsentSnapshot.from_arrow(table), ConsentSnapshot.from_pieces(pieces)
    assert pieced.account_ids.equals(whole.account_ids)
    for name in ("cell", "event_at", "next_at", "code"):
        np.testing.assert_array_equal(getattr(pieced, name), getattr(whole, name), err_msg=name)
    for moment in _MOMENTS:
        assert pieced.digest(moment) == whole.digest(moment)


def test_pieces_out_of_account_order_are_refused():
    first = history(("A2", day(2020, 1), "policy_accept", None, NEW))
    second = history(("A1", day(2020, 2), "policy_accept", None, NEW))
    with pytest.raises(ValueError, match="not ordered by account then time"):
        ConsentSnapshot.from_pieces([first, second])
    assert ConsentSnapshot.from_pieces([]).persons == 0
