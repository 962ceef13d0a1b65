"""A cancelled account is erased by the job once its grace period has passed, everywhere, and stays erased.

Through the real command line: ``portrait synth``, ``keys init``, ``ingest``, ``run --as-of`` with a
configuration file setting ``[retention] cancellation_grace_days``, ``dsr export``, re-ingest.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.config import ConfigError, load_config
from pipelines.retention import due_cancellations
from pipelines.workspace import Workspace
from portrait_cli import run_cli
from profiling.consent import ConsentEvent, SqliteConsentStore
from profiling.keys import load_key_file
from profiling.pseudonyms import MARKETING, PERSON, pseudonymize

GRACE_DAYS = 30


def _cli(*argv) -> None:
    code = run_cli(*argv)
    assert code == 0, f"portrait {' '.join(map(str, argv))} exited {code}"


class Site:
    """A raw feed, its workspace, its key file and a job configuration with a grace period."""

    def __init__(self, root: Path) -> None:
        self.raw, self.ws, self.key, self.config = root / "raw", root / "ws", root / "keys" / "master.key", \
            root / "job.toml"

    def ingest(self) -> dict:
        _cli("ingest", "--raw", self.raw, "--workspace", self.ws, "--key-file", self.key)
        return json.loads((self.ws / "ingest-report.json").read_text())["tables"]

    def run(self, as_of: dt.datetime, capsys) -> str:
        capsys.readouterr()
        _cli("run", "--config", self.config, "--workspace", self.ws, "--key-file", self.key,
             "--as-of", as_of.isoformat())
        return capsys.readouterr().out

    def holders(self, table: str, column: str = "account_id", zone: str = "ingested") -> set[str]:
        return set(ds.dataset(self.ws / zone / table).to_table(columns=[column]).column(column)
                   .drop_null().to_pylist())


def _last_cancellation(raw: Path) -> tuple[str, dt.datetime]:
    """The account cancelled last in the raw feed, and when."""
    events = ds.dataset(raw / "consent_events").to_table(filter=pc.field("event_type") == "cancel")
    last = pc.index(events.column("event_at"), pc.max(events.column("event_at")))  # first row at the latest time
    row = events.slice(last.as_py(), 1).to_pylist()[0]
    return row["account_id"], row["event_at"]


def _names_of(site: Site, account: str) -> set[str]:
    """The account id, its order numbers and every PERSON and MARKETING pseudonym of it (each key version)."""
    key = load_key_file(site.key)
    orders = ds.dataset(site.raw / "orders").to_table(filter=pc.field("account_id") == account)
    names = {account, *orders.column("order_id").to_pylist()}
    for version in key.versions:
        for domain in (PERSON, MARKETING):
            names |= set(pseudonymize([account], key, domain, identifier="account_id", version=version).to_pylist())
    return names


def _found_in_workspace(site: Site, names: set[str]) -> dict[str, set[str]]:
    """Which of ``names`` each Parquet file (every zone) or the ledger still holds."""
    targets = pa.array(sorted(names), pa.string())
    found: dict[str, set[str]] = {}
    for path in sorted(site.ws.rglob("*.parquet")):
        rows = pq.read_table(path)
        for column in rows.columns:
            values = column.combine_chunks()
            if pa.types.is_list(values.type):
                values = pc.list_flatten(values)
            if pa.types.is_string(values.type):
                hit = values.filter(pc.fill_null(pc.is_in(values, value_set=targets), False))
                found.setdefault(str(path.relative_to(site.ws)), set()).update(hit.to_pylist())
    connection = sqlite3.connect(site.ws / "ledger.sqlite")
    dump = "\n".join(connection.iterdump())
    connection.close()
    found["ledger.sqlite"] = {name for name in names if name in dump}
    return {where: hit for where, hit in found.items() if hit}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    site = Site(tmp_path_factory.mktemp("cancellation"))
    _cli("synth", "--out", site.raw, "--accounts", 300, "--seed", 11)
    _cli("keys", "init", "--key-file", site.key)
    site.config.write_text(f"[retention]\ncancellation_grace_days = {GRACE_DAYS}\n")
    site.ingest()
    return site


@pytest.fixture(scope="module")
def cancelled(site) -> tuple[str, dt.datetime]:
    return _last_cancellation(site.raw)


def test_a_cancelled_account_is_kept_until_its_grace_period_has_passed(site, cancelled, capsys):
    account, at = cancelled
    output = site.run(at + dt.timedelta(days=GRACE_DAYS) - dt.timedelta(days=1), capsys)
    assert account in site.holders("accounts")
    person = pseudonymize([account], load_key_file(site.key), PERSON, identifier="account_id")[0].as_py()
    assert person in site.holders("accounts", "person_id", zone="pseudonymized")
    # ... while the consent gate already keeps them out of everything derived
    assert person not in site.holders("portraits", "person_id", zone="outputs")
    assert person not in site.holders("recommendations", "person_id", zone="outputs")
    # the run's summary: accounts erased, still in their grace period, the grace period
    accounts_row = output.split("\nretention\n")[1].splitlines()[2].split()
    assert accounts_row[0] == "accounts" and int(accounts_row[2]) >= 1 and int(accounts_row[3]) == GRACE_DAYS


def test_a_cancelled_account_is_gone_everywhere_once_its_grace_period_has_passed(site, cancelled, capsys,
                                                                                   tmp_path):
    account, at = cancelled
    names = _names_of(site, account)
    assert _found_in_workspace(site, names)  # held before this run
    site.run(at + dt.timedelta(days=GRACE_DAYS), capsys)
    assert _found_in_workspace(site, names) == {}
    assert account not in site.holders("accounts")
    # their consent events are redacted in the chain; the job's erasure is recorded without their id
    connection = sqlite3.connect(site.ws / "ledger.sqlite")
    requests = connection.execute("SELECT kind, field, chain_redacted FROM dsr_requests").fetchall()
    stones = connection.execute("SELECT COUNT(*) FROM dsr_erased_ids WHERE kind = 'account_id'").fetchone()[0]
    connection.close()
    assert ("erase", "cancellation", 1) in requests and stones >= 1
    assert run_cli("ledger", "verify", "--workspace", site.ws) == 0
    # a data-subject export finds nothing about them any more
    capsys.readouterr()
    assert run_cli("dsr", "export", "--account", account, "--workspace", site.ws, "--key-file", site.key,
                   "--out", tmp_path / "bundle") == 2
    assert f"account {account!r} is not among" in capsys.readouterr().err


def test_a_cancelled_account_stays_erased_through_reingest_and_the_next_run(site, cancelled, capsys):
    account, at = cancelled
    report = site.ingest()
    assert report["accounts"]["erased"] >= 1
    assert account not in site.holders("accounts") and account not in site.holders("orders")
    site.run(at + dt.timedelta(days=GRACE_DAYS + 1), capsys)
    assert _found_in_workspace(site, _names_of(site, account)) == {}


@pytest.mark.parametrize("value", ["-1", "1.5", '"14"', "true"])
def test_a_grace_period_that_is_not_a_whole_number_of_days_is_one_error_line(site, tmp_path, capsys, value):
    config = tmp_path / "job.toml"
    config.write_text(f"[retention]\ncancellation_grace_days = {value}\n")
    capsys.readouterr()
    assert run_cli("run", "--config", config, "--workspace", site.ws, "--key-file", site.key,
                   "--as-of", "2026-11-01T00:00:00Z") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("portrait: error: cancellation_grace_days in ") and "whole number of at least 0" in err


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.integers(min_value=-10_000, max_value=100_000), st.floats(allow_nan=True), st.booleans(),
                 st.text(alphabet="0123456789-. ab", max_size=5)))
def test_only_whole_numbers_of_days_from_zero_up_are_a_grace_period(tmp_path_factory, value):
    config = tmp_path_factory.mktemp("config") / "job.toml"
    config.write_text(f"[retention]\ncancellation_grace_days = {json.dumps(value)}\n".replace("NaN", "nan")
                      .replace("Infinity", "inf"))
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if valid:
        assert load_config(config).cancellation_grace_days == value
    else:
        with pytest.raises(ConfigError, match=r"cancellation_grace_days in .* must be a whole number of at least 0"):
            load_config(config)


def test_the_grace_period_ends_at_the_microsecond(tmp_path):
    workspace = Workspace(tmp_path / "ws")
    cancelled_at = dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.timezone.utc)
    with SqliteConsentStore(workspace.ledger) as store:
        store.append([ConsentEvent("A1", cancelled_at, "cancel", None),
                      ConsentEvent("A2", cancelled_at + dt.timedelta(days=1), "cancel", None)], source="api")
    end = cancelled_at + dt.timedelta(days=GRACE_DAYS)
    assert due_cancellations(workspace, end - dt.timedelta(microseconds=1), GRACE_DAYS) == ([], 2)
    assert due_cancellations(workspace, end, GRACE_DAYS) == (["A1"], 1)
    assert due_cancellations(workspace, end, 0) == (["A1", "A2"], 0)
