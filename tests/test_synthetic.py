"""The synthetic data generator: schemas, every field rule, keys, determinism, realism, refusals."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines import synthetic
from pipelines.synthetic import generate
from profiling import identifiers
from profiling.schema import TABLE_NAMES, TABLES, Format, arrow_schema

ACCOUNTS = 1_500
UNTIL = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
PARAMS = dict(accounts=ACCOUNTS, seed=7, catalogue_items=3_000, batch_accounts=600, progress=False)  # 3 batches


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def generated(data_root) -> tuple[Path, dict[str, int]]:
    out = data_root / "raw"
    return out, generate(out, truth_dir=data_root / "raw-truth", **PARAMS)


@pytest.fixture(scope="module")
def truth(generated, data_root) -> dict[str, pd.DataFrame]:
    return {name: pq.read_table(data_root / "raw-truth" / name).to_pandas() for name in ("accounts", "devices")}


@pytest.fixture(scope="module")
def tables(generated) -> dict[str, pa.Table]:
    out, _ = generated
    return {name: pa.concat_tables(pq.read_table(path) for path in sorted((out / name).glob("*.parquet")))
            for name in TABLE_NAMES}


@pytest.fixture(scope="module")
def frames(tables) -> dict[str, pd.DataFrame]:
    return {name: table.to_pandas() for name, table in tables.items()}


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}


def _true(values) -> np.ndarray:
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


# --- Files and schemas ------------------------------------------------------------------------

def test_every_table_has_part_files_with_exactly_the_model_schema(generated):
    out, rows = generated
    assert sorted(p.name for p in out.iterdir()) == sorted(TABLE_NAMES)
    for name in TABLE_NAMES:
        parts = sorted((out / name).glob("part-*.parquet"))
        assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(len(parts))]
        assert len(parts) == (1 if name == "catalogue" else 3)
        for part in parts:
            assert pq.read_schema(part).equals(arrow_schema(name), check_metadata=True), part
        assert sum(pq.ParquetFile(p).metadata.num_rows for p in parts) == rows[name]
    assert rows["accounts"] == ACCOUNTS
    assert rows["catalogue"] == PARAMS["catalogue_items"]


def test_no_partial_folder_is_left_next_to_the_data_set(generated):
    out, _ = generated
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


# --- Field rules of profiling.schema ----------------------------------------------------------

def _format_invalid(fmt: Format, values: pa.Array) -> pa.Array:
    checks = {
        Format.PHONE: identifiers.phone_invalid,
        Format.ID_CARD: identifiers.id_card_invalid,
        Format.REGION: identifiers.region_invalid,
        Format.IP: identifiers.ip_invalid,
        Format.PROVINCE: lambda v: pc.invert(pc.is_in(v, value_set=pa.array(sorted(identifiers.PROVINCE_CODES)))),
        Format.EMAIL: lambda v: pc.invert(pc.match_substring_regex(v, r"^[^@\s]+@[^@\s]+\.[^@\s]+$")),
        Format.VERSION: lambda v: pc.invert(pc.match_substring_regex(v, r"^[0-9]+\.[0-9]+\.[0-9]+$")),
    }
    return checks[fmt](values)


def _assert_field_rules(name: str, table: pa.Table, until: dt.datetime) -> None:
    """Every rule ``profiling.schema`` declares for the columns of ``table``."""
    for field in TABLES[name].fields:
        column = table.column(field.name).combine_chunks()
        where = f"{name}.{field.name}"
        values = column.flatten() if pa.types.is_list(field.type) else column
        if field.required:
            assert column.null_count == 0, where
        if field.required_if is not None:
            other, triggers = field.required_if
            triggered = _true(pc.is_in(table.column(other), value_set=pa.array(triggers)))
            assert not (triggered & _true(pc.is_null(column))).any(), where
        if pa.types.is_list(field.type):
            assert values.null_count == 0, where
        if field.format is not None:
            assert not _true(_format_invalid(field.format, values)).any(), where
        if field.allowed is not None:
            assert _true(pc.is_in(values.drop_null(), value_set=pa.array(field.allowed))).all(), where
        if field.minimum is not None:
            assert not _true(pc.less(values, field.minimum)).any(), where
        if field.maximum is not None:
            assert not _true(pc.greater(values, field.maximum)).any(), where
        if pa.types.is_floating(field.type):
            assert _true(pc.is_finite(values.drop_null())).all(), where
        if field.earliest is not None:
            earliest = EARLIEST if pa.types.is_timestamp(field.type) else field.earliest
            assert not _true(pc.less(values, pa.scalar(earliest, field.type))).any(), where
        if field.not_future:
            latest = until if pa.types.is_timestamp(field.type) else until.date()
            assert not _true(pc.greater(values, pa.scalar(latest, field.type))).any(), where


def _assert_keys(tables: dict[str, pa.Table]) -> int:
    """Primary keys unique, foreign keys (list elements included) found in the parent; returns FKs checked."""
    checked = 0
    for name, model in TABLES.items():
        keys = tables[name].column(model.primary_key)
        assert pc.count_distinct(keys).as_py() == len(keys), name
        for field in model.fields:
            if field.references is None:
                continue
            parent, column = field.references.split(".")
            values = tables[name].column(field.name).combine_chunks()
            if pa.types.is_list(values.type):
                values = values.flatten()
            parent_keys = tables[parent].column(column).combine_chunks()
            assert _true(pc.is_in(values.drop_null(), value_set=parent_keys)).all(), f"{name}.{field.name}"
            checked += 1
    return checked


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_every_value_satisfies_its_field_rules(tables, name):
    _assert_field_rules(name, tables[name], UNTIL)


@pytest.mark.parametrize("options", [
    dict(accounts=1, catalogue_items=1),
    dict(accounts=5, catalogue_items=3, batch_accounts=5),
    dict(accounts=300, catalogue_items=50, until=dt.datetime(2018, 3, 1, tzinfo=dt.UTC)),
], ids=["one-account-one-item", "tiny", "until-early-2018"])
def test_edge_cases_keep_every_rule(tmp_path, options):
    until = options.get("until", UNTIL)
    generate(tmp_path / "raw", seed=11, progress=False, **options)
    tables = {name: pq.read_table(tmp_path / "raw" / name) for name in TABLE_NAMES}
    for name in TABLE_NAMES:
        _assert_field_rules(name, tables[name], until)
    assert _assert_keys(tables) >= 8


def test_the_ingest_rule_engine_accepts_every_row(tables):
    validation = pytest.importorskip("profiling.validation")
    from profiling.schema import INGEST_ORDER

    keys: dict[str, pa.Array] = {}
    for name in INGEST_ORDER:
        model = TABLES[name]
        for field in model.fields:
            if field.references and field.references not in keys:
                parent, column = field.references.split(".")
                keys[field.references] = tables[parent].column(column).combine_chunks()
        context = validation.CheckContext(now=UNTIL, parent_keys=keys)
        for batch in tables[name].to_batches():
            verdict = validation.check_batch(model, batch, context)
            assert verdict.accepted.all(), (name, verdict.detail.drop_null()[:3])


def test_keys_are_unique_and_references_resolve(tables):
    assert _assert_keys(tables) >= 8  # every foreign key of the model, list columns included


# --- Consistency between tables -----------------------------------------------------------------

def test_times_follow_each_other(frames):
    created = frames["accounts"].set_index("account_id")["created_at"]
    orders = frames["orders"]
    assert (orders["placed_at"] >= orders["account_id"].map(created)).all()
    waybills = frames["waybills"]
    placed = orders.set_index("order_id")["placed_at"]
    shipped = waybills.dropna(subset=["order_id"])
    assert (shipped["created_at"] >= shipped["order_id"].map(placed)).all()
    events = frames["device_events"]
    first_seen = frames["devices"].set_index("device_id")["first_seen_at"]
    assert (events["event_at"] >= events["device_id"].map(first_seen)).all()
    signed = events.dropna(subset=["account_id"])
    assert (signed["event_at"] >= signed["account_id"].map(created)).all()
    listed = frames["catalogue"].set_index("item_id")["listed_at"]
    lines = orders[["placed_at", "items"]].explode("items")
    assert (lines["placed_at"] >= lines["items"].map(listed)).all()


def test_orders_are_consistent_with_the_catalogue(frames):
    catalogue = frames["catalogue"].set_index("item_id")
    orders = frames["orders"]
    first = orders["items"].str[0]
    assert (orders["category"].to_numpy() == first.map(catalogue["category"]).to_numpy()).all()
    assert orders["items"].map(len).between(1, 5).all()
    kind_prefix = {"service": "service_", "coupon": "coupon_"}
    for kind, prefix in kind_prefix.items():
        assert catalogue.loc[catalogue["kind"] == kind, "category"].str.startswith(prefix).all()
    commodity_categories = catalogue.loc[catalogue["kind"] == "commodity", "category"]
    assert not commodity_categories.str.match("service_|coupon_").any()
    assert catalogue.loc[catalogue["kind"] == "coupon", "price"].isna().all()
    assert orders.loc[orders["currency"] != "CNY"].shape[0] > 0
    assert (orders["currency"] == "CNY").mean() > 0.95


def test_consent_history_is_ordered_and_purposes_are_set_exactly_when_needed(frames):
    consent = frames["consent_events"]
    assert consent.groupby("account_id", sort=False)["event_at"].apply(lambda t: t.is_monotonic_increasing).all()
    needs_purpose = consent["event_type"].isin(["grant", "revoke", "sensitive_grant", "sensitive_revoke"])
    assert (consent["purpose"].notna() == needs_purpose).all()
    first = consent.groupby("account_id", sort=False).first()
    assert (first["event_type"] == "policy_accept").all()
    created = frames["accounts"].set_index("account_id")["created_at"]
    assert (first["event_at"] == created.reindex(first.index)).all()
    change = pd.Timestamp("2019-06-10", tz="UTC")
    assert ((consent["event_at"] >= change) == (consent["policy_version"] == "2019-06")).all()


def test_cross_border_waybills_carry_the_buyers_id_number_and_consent(frames):
    waybills, accounts = frames["waybills"], frames["accounts"].set_index("account_id")
    cross = waybills[waybills["cross_border"]]
    assert len(cross) > 0
    assert waybills.loc[~waybills["cross_border"], "id_card_number"].isna().all()
    assert (cross["service_type"] == "international").all()
    birthday = cross["account_id"].map(accounts["birthday"])
    known = birthday.notna()
    assert known.any()
    written = cross.loc[known, "id_card_number"].str[6:14]
    assert (written == pd.to_datetime(birthday[known]).dt.strftime("%Y%m%d")).all()
    consent = frames["consent_events"]
    sensitive = consent[consent["event_type"] == "sensitive_grant"].groupby("account_id")["event_at"].min()
    first_cross = cross.groupby("account_id")["created_at"].min()
    assert set(first_cross.index) <= set(sensitive.index)
    assert (sensitive.reindex(first_cross.index) <= first_cross).all()


# --- Realism --------------------------------------------------------------------------------------

def test_orders_per_account_are_heavy_tailed(frames):
    per_account = frames["orders"]["account_id"].value_counts().reindex(frames["accounts"]["account_id"], fill_value=0)
    assert 7 <= per_account.mean() <= 13
    assert per_account.max() > 8 * per_account.mean()
    assert (per_account <= 2).mean() > 0.2


def test_waybills_ship_most_orders(frames):
    shipped = frames["waybills"]["order_id"].notna().sum() / len(frames["orders"])
    assert 0.6 <= shipped <= 0.8
    assert 0.01 <= frames["waybills"]["cross_border"].mean() <= 0.06


def test_some_receivers_have_no_account(frames):
    account_phones = set(frames["accounts"]["phone"])
    without_account = ~frames["waybills"]["receiver_phone"].isin(account_phones)
    assert 0.05 <= without_account.mean() <= 0.3


def test_shared_devices_are_used_by_several_accounts(frames):
    signed_in = frames["device_events"].dropna(subset=["account_id"])
    accounts_per_device = signed_in.groupby("device_id")["account_id"].nunique()
    assert (accounts_per_device >= 2).sum() >= 1
    per_account = frames["devices"].shape[0] / len(frames["accounts"])
    assert 1.7 <= per_account <= 2.3


def test_device_events_have_network_and_location_details(frames):
    events = frames["device_events"]
    assert 0.15 <= events["precise_lat"].notna().mean() <= 0.45
    assert (events["precise_lat"].notna() == events["precise_lon"].notna()).all()
    assert events["precise_lat"].dropna().between(18, 54).all()
    assert events["precise_lon"].dropna().between(73, 135).all()
    assert events["coarse_region"].notna().mean() > 0.8
    assert (events["item_id"].notna() == (events["event_type"] == "view_item")).all()
    assert 0.3 <= events["account_id"].notna().mean() <= 0.9


def test_a_policy_version_change_exists(frames):
    accepts = frames["consent_events"].query("event_type == 'policy_accept'")
    versions = accepts.groupby("account_id")["policy_version"].agg(list)
    assert versions.map(lambda v: v[:2] == ["2018-01", "2019-06"]).any()


def test_a_cancellation_is_the_last_thing_an_account_says(frames):
    consent = frames["consent_events"]
    cancels = consent[consent["event_type"] == "cancel"]
    assert len(cancels) > 0
    last = consent.groupby("account_id", sort=False).tail(1)
    assert set(cancels["event_id"]) <= set(last["event_id"])
    cancelled_at = cancels.set_index("account_id")["event_at"]
    orders = frames["orders"]
    mine = orders[orders["account_id"].isin(cancelled_at.index)]
    assert (mine["placed_at"] <= mine["account_id"].map(cancelled_at)).all()


# --- Determinism ----------------------------------------------------------------------------------

def test_the_same_seed_gives_byte_identical_files(generated, data_root):
    out, _ = generated
    again = data_root / "again"
    generate(again, truth_dir=data_root / "again-truth", **PARAMS)
    assert _files(again) == _files(out)
    assert _files(data_root / "again-truth") == _files(data_root / "raw-truth")
    untold = data_root / "untold"
    generate(untold, **PARAMS)  # asking for the truth changes nothing in the raw data set
    assert _files(untold) == _files(out)


def test_another_seed_gives_other_data(tables, data_root):
    other = data_root / "other"
    generate(other, **{**PARAMS, "seed": 8, "accounts": 600})
    ours = tables["accounts"].slice(0, 600).column("phone")
    theirs = pq.read_table(other / "accounts").column("phone")
    assert not ours.equals(theirs)


# --- Ground truth ---------------------------------------------------------------------------------

def test_the_truth_names_the_human_of_every_account_and_device(truth, frames, data_root):
    accounts, devices = truth["accounts"], truth["devices"]
    assert sorted(p.name for p in (data_root / "raw-truth").iterdir()) == ["accounts", "devices", "risk_incidents"]
    assert accounts["account_id"].tolist() == frames["accounts"]["account_id"].tolist()
    assert sorted(devices["device_id"]) == sorted(frames["devices"]["device_id"])
    assert devices["human_id"].isna().tolist() == (devices["use"] != "personal").tolist()
    assert set(devices["use"]) == {"personal", "household", "public", "intruder"}
    humans = accounts["human_id"].value_counts()
    assert 0.015 <= (humans >= 2).sum() / len(accounts) <= 0.05  # people with a second account
    assert humans.max() <= 4


def test_signed_in_use_matches_the_truth(truth, frames):
    human_of_account = truth["accounts"].set_index("account_id")["human_id"]
    signed = frames["device_events"].dropna(subset=["account_id"]).drop_duplicates(["device_id", "account_id"])
    signed = signed.merge(truth["devices"], on="device_id")
    personal = signed[signed["use"] == "personal"]
    assert (personal["account_id"].map(human_of_account) == personal["human_id"]).all()  # only its human signs in
    households = signed[signed["use"] == "household"].groupby("device_id")["account_id"].nunique()
    assert len(households) >= 5 and (households >= 2).all()  # every member signs in on the family device
    # Second accounts show on their human's own devices: one human, two accounts, one device.
    per_device = personal.groupby("device_id")["account_id"].nunique()
    assert (per_device >= 2).sum() >= 5


@pytest.mark.parametrize("where", ["inside", "holding", "same"])
def test_the_truth_must_lie_apart_from_the_raw_data(tmp_path, where):
    out = tmp_path / "raw"
    truth_dir = {"inside": out / "truth", "holding": tmp_path, "same": out}[where]
    with pytest.raises(ValueError, match="the ground truth must lie apart from the raw data set"):
        generate(out, accounts=20, seed=1, catalogue_items=100, truth_dir=truth_dir, progress=False)
    assert not out.exists() and not (out / "truth").exists()


def test_the_command_line_writes_the_truth_and_refuses_an_overlap(tmp_path, capsys):
    from pipelines.cli import main

    assert main(["-q", "synth", "--out", str(tmp_path / "raw"), "--accounts", "30", "--truth",
                 str(tmp_path / "raw" / "truth")]) == 2
    assert "portrait: error: truth_dir" in capsys.readouterr().err
    assert main(["-q", "synth", "--out", str(tmp_path / "raw"), "--accounts", "30", "--truth",
                 str(tmp_path / "truth")]) == 0
    assert pq.read_table(tmp_path / "truth" / "accounts").num_rows == 30
    assert not (tmp_path / "raw" / "truth").exists()


# --- Refusals and atomicity ----------------------------------------------------------------------

def test_refuses_zero_accounts(tmp_path):
    with pytest.raises(ValueError, match="accounts must be a whole number between 1 and"):
        generate(tmp_path / "raw", accounts=0, seed=1, progress=False)
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("bad, message", [
    (dict(seed=-1), "seed must be a whole number between 0 and"),
    (dict(accounts=True), "accounts must be a whole number"),
    (dict(catalogue_items=0), "catalogue_items must be a whole number between 1 and"),
    (dict(batch_accounts=0), "batch_accounts must be a whole number between 1 and"),
    (dict(until=dt.datetime(2026, 1, 1)), "timezone-aware"),
    (dict(until=dt.datetime(2017, 1, 1, tzinfo=dt.UTC)), "until must be on or after 2018-03-01"),
    (dict(accounts=200_000, batch_accounts=1), "raise batch_accounts"),
])
def test_refuses_bad_parameters(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        generate(tmp_path / "raw", **{"accounts": 10, "seed": 1, "progress": False, **bad})


def test_refuses_a_folder_that_already_holds_data(generated):
    out, _ = generated
    before = _files(out)
    with pytest.raises(ValueError, match="already holds the tables .*refusing to overwrite"):
        generate(out, accounts=10, seed=1, progress=False)
    with pytest.raises(ValueError, match="is not empty"):
        generate(out / "accounts", accounts=10, seed=1, progress=False)
    with pytest.raises(ValueError, match="is a file"):
        generate(next((out / "accounts").iterdir()), accounts=10, seed=1, progress=False)
    assert _files(out) == before


def test_an_empty_existing_folder_is_filled(tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    rows = generate(out, accounts=50, seed=3, catalogue_items=200, progress=False)
    assert rows["accounts"] == 50
    assert sorted(p.name for p in out.iterdir()) == sorted(TABLE_NAMES)


def test_an_interrupted_run_leaves_nothing_behind(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "raw", accounts=50, seed=3, catalogue_items=200, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_progress_goes_to_stderr(tmp_path, capsys):
    generate(tmp_path / "raw", accounts=20, seed=3, catalogue_items=100, progress=True)
    captured = capsys.readouterr()
    assert "synthetic data" in captured.err and captured.out == ""
