"""A small, hand-written raw data set that satisfies every rule of the data model, and writers for it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from profiling.schema import TABLES, arrow_schema

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 1, tzinfo=UTC)


def _t(day: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(2025, 1, day, hour, tzinfo=UTC)


def valid_rows() -> dict[str, list[dict]]:
    """Rows per table, as Python dicts, all valid and consistent."""
    return {
        "catalogue": [
            dict(item_id="I001", kind="commodity", category="books", title="Novel", price=35.0,
                 served_provinces=None, active=True, listed_at=_t(1)),
            dict(item_id="I002", kind="commodity", category="digital", title="Charger", price=99.5,
                 served_provinces=["44", "11"], active=True, listed_at=_t(1)),
            dict(item_id="I003", kind="coupon", category="coupon_shipping", title="Free shipping", price=None,
                 served_provinces=None, active=False, listed_at=_t(2)),
        ],
        "accounts": [
            dict(account_id="A001", phone="13812345678", nickname="Li Lei", email="li@example.com",
                 birthday=dt.date(1990, 5, 17), gender="male", region="440305", created_at=_t(3)),
            dict(account_id="A002", phone="+86 139-0000-1111", nickname="Han Meimei", email=None,
                 birthday=None, gender=None, region=None, created_at=_t(4)),
            dict(account_id="A003", phone="15011112222", nickname="Wang Fang", email=None,
                 birthday=dt.date(1975, 1, 2), gender="female", region="110105", created_at=_t(5)),
        ],
        "devices": [
            dict(device_id="D001", device_type="phone", os="android", carrier="china_mobile",
                 app_version="5.12.3", first_seen_at=_t(3)),
            dict(device_id="D002", device_type="pc", os="windows", carrier=None, app_version="5.1.0",
                 first_seen_at=_t(4)),
        ],
        "orders": [
            dict(order_id="O001", account_id="A001", placed_at=_t(10), amount=134.5, currency="CNY",
                 payment_institution="alipay", category="books", items=["I001", "I002"]),
            dict(order_id="O002", account_id="A002", placed_at=_t(11), amount=0.0, currency="CNY",
                 payment_institution="wechat_pay", category="coupon_shipping", items=["I003"]),
            dict(order_id="O003", account_id="A001", placed_at=_t(12), amount=99.5, currency="HKD",
                 payment_institution="unionpay", category="digital", items=["I002"]),
        ],
        "waybills": [
            dict(waybill_id="W001", order_id="O001", account_id="A001", created_at=_t(10, 13),
                 shipper_name="Shop Ltd", shipper_phone="13700000000", shipper_address="Shenzhen Nanshan Road 1",
                 receiver_name="Li Lei", receiver_phone="13812345678", receiver_address="Shenzhen Futian Road 9",
                 origin_region="440305", destination_region="440304", weight_kg=1.2, service_type="express",
                 cross_border=False, id_card_number=None),
            dict(waybill_id="W002", order_id="O003", account_id="A001", created_at=_t(12, 13),
                 shipper_name="HK Shop", shipper_phone="13700000001", shipper_address="Hong Kong Road 2",
                 receiver_name="Zhao Min", receiver_phone="18600001234", receiver_address="Beijing Chaoyang 3",
                 origin_region="810000", destination_region="110105", weight_kg=0.4, service_type="international",
                 cross_border=True, id_card_number="11010519491231002X"),
            dict(waybill_id="W003", order_id=None, account_id=None, created_at=_t(13),
                 shipper_name="Walk-in", shipper_phone="13300002222", shipper_address="Beijing Haidian 4",
                 receiver_name="Sun Li", receiver_phone="13300003333", receiver_address="Tianjin Heping 5",
                 origin_region="110108", destination_region="120101", weight_kg=3.0, service_type="standard",
                 cross_border=False, id_card_number=None),
        ],
        "device_events": [
            dict(event_id="E001", device_id="D001", account_id="A001", event_at=_t(10, 8), event_type="sign_in",
                 ip="10.1.2.3", coarse_region="440300", precise_lat=22.53, precise_lon=113.93, item_id=None),
            dict(event_id="E002", device_id="D001", account_id="A001", event_at=_t(10, 9), event_type="view_item",
                 ip="10.1.2.3", coarse_region=None, precise_lat=None, precise_lon=None, item_id="I002"),
            dict(event_id="E003", device_id="D002", account_id=None, event_at=_t(11, 20), event_type="app_open",
                 ip="2001:db8::1", coarse_region="110100", precise_lat=None, precise_lon=None, item_id=None),
        ],
        "consent_events": [
            dict(event_id="C001", account_id="A001", event_at=_t(3), event_type="policy_accept", purpose=None,
                 policy_version="2019-06", channel="app"),
            dict(event_id="C002", account_id="A001", event_at=_t(3, 13), event_type="grant",
                 purpose="personalization", policy_version="2019-06", channel="app"),
            dict(event_id="C003", account_id="A002", event_at=_t(6), event_type="dnd_on", purpose=None,
                 policy_version="2019-06", channel="wechat"),
            dict(event_id="C004", account_id="A003", event_at=_t(7), event_type="cancel", purpose=None,
                 policy_version="2019-06", channel="customer_service"),
        ],
    }


def to_tables(rows: dict[str, list[dict]], *, raw: bool = False) -> dict[str, pa.Table]:
    """Rows as Arrow tables of the model's schema; ``raw`` relaxes nullability, as outside files may hold nulls."""
    tables = {}
    for name, table_rows in rows.items():
        schema = arrow_schema(name)
        if raw:
            schema = pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)
        tables[name] = pa.Table.from_pylist(table_rows, schema=schema)
    return tables


def as_text(table: pa.Table) -> pa.Table:
    """Every column as CSV text, lists joined with ';' (what ingest reads back)."""
    columns = []
    for column in table.columns:
        if pa.types.is_list(column.type):
            columns.append(pc.binary_join(column, ";"))
        elif pa.types.is_timestamp(column.type):
            columns.append(pc.strftime(column, format="%Y-%m-%dT%H:%M:%SZ"))
        else:
            columns.append(column.cast(pa.string()))
    return pa.table(columns, names=table.column_names)


def write_raw(folder: Path, rows: dict[str, list[dict]] | None = None, fmt: str = "parquet") -> Path:
    """Write a raw data set (default: ``valid_rows()``) as ``<table>.parquet`` or ``<table>.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in to_tables(rows or valid_rows(), raw=True).items():
        if fmt == "parquet":
            pq.write_table(table, folder / f"{name}.parquet")
        else:
            pacsv.write_csv(as_text(table), folder / f"{name}.csv")
    return folder


assert set(valid_rows()) == set(TABLES)
