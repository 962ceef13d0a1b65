"""Rows past their table's retention period are deleted by the job, counted, and kept out by later ingests.

Through the real command line: ``portrait synth`` (plus one old device event that ingest rejects),
``keys init``, ``ingest``, ``run --as-of``, re-ingest of the same raw feed, and a run thirty years on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import sqlite3
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from portrait_cli import run_cli
from profiling.schema import RETENTION, TABLES

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
EVENTS_CUTOFF = AS_OF - dt.timedelta(days=RETENTION["device_events"].days)
OLD_REJECTED_EVENT = "E-OLD-REJECTED"


def _cli(*argv) -> None:
    code = run_cli(*argv)
    assert code == 0, f"portrait {' '.join(map(str, argv))} exited {code}"


def _table(folder: Path, columns: list[str] | None = None):
    return ds.dataset(folder, format="parquet").to_table(columns=columns)


def _summary(output: str, stage: str) -> dict[str, dict[str, str]]:
    """One stage's table of ``portrait run``'s summary: {first column: {column: text}}."""
    lines = output.split(f"\n{stage}\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header, dashes, rows = lines[0], lines[1], lines[2:]
    spans, start = [], 0
    for dash in dashes.split("  "):
        spans.append((start, start + len(dash)))
        start += len(dash) + 2
    names = [header[a:b].strip() for a, b in spans]
    parsed = [{name: row[a:b].strip() for name, (a, b) in zip(names, spans)} for row in rows]
    return {row[names[0]]: row for row in parsed}


class Site:
    def __init__(self, root: Path) -> None:
        self.raw, self.ws, self.key = root / "raw", root / "ws", root / "keys" / "master.key"

    def ingest(self) -> dict:
        _cli("ingest", "--raw", self.raw, "--workspace", self.ws, "--key-file", self.key)
        return json.loads((self.ws / "ingest-report.json").read_text())["tables"]

    def run(self, as_of: dt.datetime) -> str:
        """``portrait run``'s printed summary."""
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            _cli("run", "--workspace", self.ws, "--key-file", self.key, "--as-of", as_of.isoformat())
        return printed.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    site = Site(tmp_path_factory.mktemp("retention"))
    _cli("synth", "--out", site.raw, "--accounts", 300, "--seed", 5)
    _cli("keys", "init", "--key-file", site.key)
    device = _table(site.raw / "devices", ["device_id"]).column("device_id")[0].as_py()
    # An old event ingest rejects (its IP does not parse): the rejects hold personal data too.
    (site.raw / "device_events" / "late-feed.csv").write_text(
        "event_id,device_id,account_id,event_at,event_type,ip,coarse_region,precise_lat,precise_lon,item_id\n"
        f"{OLD_REJECTED_EVENT},{device},,2024-03-01T08:00:00Z,app_open,300.1.2.3,,,,\n")
    site.ingest()
    return site


@pytest.fixture(scope="module")
def first_run(site) -> str:
    return site.run(AS_OF)


def test_rows_past_retention_are_deleted_and_counted(site, first_run):
    deleted = _summary(first_run, "retention")
    events = _table(site.ws / "ingested" / "device_events")
    before = _table(site.raw / "device_events" / "part-00000.parquet", ["event_at"]).column("event_at")
    old = int(pc.sum(pc.less(before, EVENTS_CUTOFF)).as_py())
    assert old > 0 and int(deleted["device_events"]["rows"]) > 0
    assert pc.min(events.column("event_at")).as_py() >= EVENTS_CUTOFF
    assert deleted["device_events"]["cutoff"] == EVENTS_CUTOFF.date().isoformat()
    # the count is what left the identifiable zone (cancelled accounts' events went with them before)
    report = json.loads((site.ws / "ingest-report.json").read_text())["tables"]
    for name in ("devices", "device_events"):
        assert report[name]["expired_after_ingest"] == int(deleted[name]["rows"]) > 0
        counts = report[name]
        assert counts["rows_in"] == counts["accepted"] + counts["rejected"] + counts.get("erased_after_ingest", 0) \
            + counts["expired_after_ingest"]
    # a device past its period stays only while an event within the period names it
    devices = _table(site.ws / "ingested" / "devices").to_pylist()
    active = set(events.column("device_id").to_pylist())
    assert all(d["first_seen_at"] >= EVENTS_CUTOFF or d["device_id"] in active for d in devices)
    # the rejects lose their old rows too
    rejects = _table(site.ws / "rejects" / "device_events", ["event_id"]).column("event_id").to_pylist()
    assert OLD_REJECTED_EVENT not in rejects and deleted["device_events"]["rejects"] == "1"
    # orders and waybills are kept thirty years: nothing of 2018-2026 goes
    assert deleted["orders"]["rows"] == "0" and deleted["waybills"]["rows"] == "0"
    connection = sqlite3.connect(site.ws / "ledger.sqlite")
    recorded = dict(connection.execute("SELECT table_name, rows_deleted FROM dsr_retention WHERE as_of = ?",
                                       (AS_OF.isoformat(timespec="microseconds"),)).fetchall())
    connection.close()
    assert recorded["device_events"] == int(deleted["device_events"]["rows"])
    assert run_cli("ledger", "verify", "--workspace", site.ws) == 0


def test_nothing_derived_reflects_the_deleted_rows(site, first_run):
    analytics = _table(site.ws / "pseudonymized" / "device_events")
    assert analytics.num_rows == _table(site.ws / "ingested" / "device_events").num_rows
    assert pc.min(analytics.column("event_at")).as_py() >= EVENTS_CUTOFF
    portraits = _table(site.ws / "outputs" / "portraits", ["events"])
    assert 0 < pc.sum(portraits.column("events")).as_py() <= analytics.num_rows
    linked = set(_table(site.ws / "outputs" / "identity" / "devices").column("device_id").to_pylist())
    assert linked <= set(_table(site.ws / "pseudonymized" / "devices").column("device_id").to_pylist())


def test_reingesting_the_same_feed_does_not_bring_expired_rows_back(site, first_run):
    raw_events = _table(site.raw / "device_events" / "part-00000.parquet", ["event_at"]).column("event_at")
    report = site.ingest()
    assert report["device_events"]["expired"] >= int(pc.sum(pc.less(raw_events, EVENTS_CUTOFF)).as_py()) \
        - report["device_events"]["erased"]
    assert report["device_events"]["expired"] > 0 and report["devices"]["expired"] > 0
    assert pc.min(_table(site.ws / "ingested" / "device_events").column("event_at")).as_py() >= EVENTS_CUTOFF
    rejects = _table(site.ws / "rejects" / "device_events", ["event_id"]).column("event_id").to_pylist()
    assert OLD_REJECTED_EVENT not in rejects
    for name, counts in report.items():
        assert counts["rows_in"] == counts["accepted"] + counts["rejected"], name


def test_orders_and_waybills_go_after_thirty_years_with_what_was_derived_from_them(site, first_run):
    as_of = dt.datetime(2049, 1, 1, tzinfo=dt.timezone.utc)
    cutoff = as_of - dt.timedelta(days=RETENTION["orders"].days)
    orders = _table(site.ws / "ingested" / "orders", ["order_id", "placed_at"])
    old = set(orders.filter(pc.less(orders.column("placed_at"), cutoff)).column("order_id").to_pylist())
    assert old
    deleted = _summary(site.run(as_of), "retention")
    assert int(deleted["orders"]["rows"]) == len(old)
    kept = _table(site.ws / "ingested" / "orders", ["order_id", "placed_at"])
    assert pc.min(kept.column("placed_at")).as_py() >= cutoff
    waybills = _table(site.ws / "ingested" / "waybills", ["order_id", "created_at"])
    assert not set(waybills.column("order_id").drop_null().to_pylist()) & old  # a waybill goes with its order
    assert pc.min(waybills.column("created_at")).as_py() >= cutoff
    assert _table(site.ws / "ingested" / "device_events").num_rows == 0  # six months are long gone
    portraits = _table(site.ws / "outputs" / "portraits", ["first_order_at"]).column("first_order_at")
    assert pc.min(portraits).as_py() >= cutoff


def test_every_table_has_a_retention_entry():
    assert set(RETENTION) == set(TABLES)
    for name, rule in RETENTION.items():
        assert rule.basis, name
        assert (rule.days is None) == (rule.column is None), name
        if rule.column:
            assert TABLES[name][rule.column].type == TABLES["orders"]["placed_at"].type, name
