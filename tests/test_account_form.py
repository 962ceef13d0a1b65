"""One account form through the API: the consent ledger keys persons as ingest does, whatever is typed."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given
from hypothesis import strategies as st

from profiling.consent import ConsentEvent, SqliteConsentStore
from profiling.consent.events import canonical_account_id
from profiling.pseudonyms import normalize

UTC = dt.UTC
# Every character Unicode calls white space (what ingest's normalization trims), plus ordinary text.
WHITE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2005\u200a\u2028\u2029\u202f\u205f\u3000"
ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
padding = st.text(WHITE, max_size=4)


@given(account=ids, left=padding, right=padding)
def test_padded_ids_take_ingests_form(account, left, right):
    """Padding never changes the form; the form is exactly what ingest's normalization gives, case kept."""
    typed = left + account + right
    form = canonical_account_id(typed)
    assert form == canonical_account_id(account)
    assert form == normalize(pa.array([typed]), "account_id")[0].as_py() == account.strip()
    assert canonical_account_id(typed.swapcase()) == account.strip().swapcase()


def test_the_ledger_keys_every_entry_point_by_the_same_form(tmp_path):
    at = dt.datetime(2025, 1, 1, tzinfo=UTC)
    with SqliteConsentStore(tmp_path / "ledger.sqlite") as store:
        store.append([ConsentEvent(" A0000000270 ", at, "policy_accept"),
                      ConsentEvent("A0000000270\t", at + dt.timedelta(days=1), "grant", "personalization")],
                     source="api")
        loaded = pa.table({"event_id": ["e1"], "account_id": ["\u3000A0000000270"],
                           "event_at": pa.array([at + dt.timedelta(days=2)], pa.timestamp("us", tz="UTC")),
                           "event_type": ["revoke"], "purpose": ["personalization"], "policy_version": ["2019.06"],
                           "channel": ["app"]})
        assert store.append_table(loaded, source="ingest").recorded == 1
        assert store.events(None).column("account_id").to_pylist() == ["A0000000270"] * 3
        assert [e["event_type"] for e in store.history(" A0000000270")] == ["policy_accept", "grant", "revoke"]
        assert store.events([" A0000000270 "]).num_rows == 3
        assert store.erase_account("A0000000270 ") == 3
        assert store.history("A0000000270") == []
        assert pc.sum(pc.equal(store.events(None).column("account_id"), "A0000000270")).as_py() in (None, 0)
