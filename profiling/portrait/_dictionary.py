"""The portrait's data dictionary: every feature with its type, unit, source columns and meaning.

The dictionary is the output's schema: ``portrait_schema()`` builds the Arrow schema from it and
stores each feature's unit, sources and description in the field metadata, so a Parquet reader
finds the documentation next to the values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from profiling.schema import CATEGORIES, PAYMENT_INSTITUTIONS, SERVICE_TYPES, TIMESTAMP

__all__ = ["DATA_DICTIONARY", "DEVICE_TYPES", "FEATURES", "LOCAL_UTC_OFFSET_HOURS", "Feature", "data_dictionary",
           "portrait_schema", "write_data_dictionary"]

DEVICE_TYPES: tuple[str, ...] = ("phone", "tablet", "pc", "watch")
# The dictionary's file name beside the portraits (readers skip names starting with ``_``).
DATA_DICTIONARY = "_data_dictionary.json"
# Days and hours of day are counted in China Standard Time (UTC+8, no daylight saving time).
LOCAL_UTC_OFFSET_HOURS = 8


@dataclass(frozen=True)
class Feature:
    name: str
    type: pa.DataType
    unit: str
    sources: tuple[str, ...]
    description: str

    def arrow_field(self) -> pa.Field:
        metadata = {"unit": self.unit, "sources": ", ".join(self.sources), "description": self.description}
        return pa.field(self.name, self.type, nullable=self.name != "person_id", metadata=metadata)


_DAYS = "days (UTC+8 calendar days)"
_ORDER_CONTEXT = "orders placed at or before the as-of moment"


def _f(name: str, type_: pa.DataType, unit: str, sources: str, description: str) -> Feature:
    return Feature(name, type_, unit, tuple(s.strip() for s in sources.split(",")), description)


FEATURES: tuple[Feature, ...] = (
    _f("person_id", pa.string(), "PERSON pseudonym", "identity graph",
       "The person: the smallest account pseudonym of the identity (accounts linked through devices "
       "of persons who allow cross-device synchronization)."),
    _f("linked_person_ids", pa.list_(pa.string()), "PERSON pseudonyms", "identity graph",
       "Every account pseudonym of the identity, sorted; one entry unless cross-device sync linked several."),
    _f("as_of", TIMESTAMP, "UTC", "job parameter", "The moment consent and every feature are evaluated at."),
    _f("dnd", pa.bool_(), "flag", "consent ledger", "Do Not Disturb is on for at least one of the accounts."),
    _f("non_personalized", pa.bool_(), "flag", "consent ledger",
       "At least one account asked for non-personalized recommendations."),
    _f("cross_device_sync", pa.bool_(), "flag", "consent ledger",
       "Every account allows cross-device synchronization; when false, no device is linked and the "
       "device features are 0."),
    _f("orders", pa.int32(), "orders", "orders.placed_at", f"Number of {_ORDER_CONTEXT}."),
    _f("first_order_at", TIMESTAMP, "UTC", "orders.placed_at", "First order; null without orders."),
    _f("last_order_at", TIMESTAMP, "UTC", "orders.placed_at", "Last order; null without orders."),
    _f("frequency", pa.int32(), "days", "orders.placed_at",
       "Repeat purchase days: distinct days with an order, minus one (the first purchase day is not a "
       "repeat); null without orders."),
    _f("recency_days", pa.int32(), _DAYS, "orders.placed_at",
       "Age of the person at the last purchase: days from the first to the last purchase day; null "
       "without orders."),
    _f("T_days", pa.int32(), _DAYS, "orders.placed_at, as_of",
       "Age of the person at the as-of moment: days from the first purchase day to the as-of day; null "
       "without orders."),
    _f("monetary_value_cny", pa.float64(), "CNY", "orders.amount, orders.currency, orders.placed_at",
       "Average order value over repeat purchases: the mean, over purchase days after the first, of the "
       "day's summed order amounts; 0 when frequency is 0, null without orders."),
    _f("total_spend_cny", pa.float64(), "CNY", "orders.amount, orders.currency",
       f"Sum of the amounts of {_ORDER_CONTEXT}, converted at the job's rates."),
    _f("average_order_value_cny", pa.float64(), "CNY", "orders.amount, orders.currency",
       "Total spend divided by orders; null without orders."),
    *(_f(f"category_share_{c}", pa.float64(), "fraction of orders", "orders.category",
         f"Share of the person's orders whose main item is in category {c}; null without orders.")
      for c in CATEGORIES),
    *(_f(f"payment_share_{p}", pa.float64(), "fraction of orders", "orders.payment_institution",
         f"Share of the person's orders settled through {p}; null without orders.")
      for p in PAYMENT_INSTITUTIONS),
    _f("waybills", pa.int32(), "waybills", "waybills.created_at",
       "Number of waybills created at or before the as-of moment."),
    *(_f(f"service_share_{s}", pa.float64(), "fraction of waybills", "waybills.service_type",
         f"Share of the person's waybills with service type {s}; null without waybills.")
      for s in SERVICE_TYPES),
    _f("cross_border_share", pa.float64(), "fraction of waybills", "waybills.cross_border",
       "Share of the person's waybills that clear customs; null without waybills."),
    _f("weight_kg_mean", pa.float64(), "kg", "waybills.weight_kg", "Mean parcel weight; null without waybills."),
    _f("weight_kg_max", pa.float64(), "kg", "waybills.weight_kg", "Heaviest parcel; null without waybills."),
    _f("weight_kg_total", pa.float64(), "kg", "waybills.weight_kg", "Total parcel weight."),
    _f("top_origin_province", pa.string(), "2-digit GB/T 2260 province", "waybills.origin_province",
       "Most frequent origin province (ties: the smallest code); null when no waybill has one."),
    _f("top_destination_province", pa.string(), "2-digit GB/T 2260 province", "waybills.destination_province",
       "Most frequent destination province (ties: the smallest code); null when no waybill has one."),
    _f("destination_provinces", pa.int32(), "provinces", "waybills.destination_province",
       "Number of distinct destination provinces."),
    _f("device_count", pa.int32(), "devices", "identity graph, devices.device_id",
       "Devices linked to the person by the identity graph (shared devices never are)."),
    *(_f(f"device_count_{t}", pa.int32(), "devices", "identity graph, devices.device_type",
         f"Linked devices of type {t}.") for t in DEVICE_TYPES),
    _f("device_ids", pa.list_(pa.string()), "DEVICE pseudonyms", "identity graph",
       "The linked devices, sorted."),
    _f("events", pa.int32(), "events", "device_events.event_at",
       "Device events at or before the as-of moment with one of the person's accounts signed in."),
    _f("active_hour_counts", pa.list_(pa.int32()), "events per hour of day (UTC+8), 24 entries",
       "device_events.event_at",
       "Histogram of those events by local hour of day: entry h counts events from h:00 to h:59."),
)


def portrait_schema() -> pa.Schema:
    """The Arrow schema of ``WS/outputs/portraits/``, documented field by field."""
    return pa.schema([feature.arrow_field() for feature in FEATURES], metadata={"table": "portraits"})


def data_dictionary() -> list[dict]:
    """One row per feature: name, Arrow type, unit, source columns, description.

    >>> rows = data_dictionary()
    >>> rows[0]["name"], rows[0]["unit"]
    ('person_id', 'PERSON pseudonym')
    """
    return [{"name": f.name, "type": str(f.type), "unit": f.unit, "sources": list(f.sources),
             "description": f.description} for f in FEATURES]


def write_data_dictionary(folder: str | Path) -> Path:
    """Write ``data_dictionary()`` as JSON to ``folder/_data_dictionary.json``; return its path.

    Write it into the staged portraits folder before publishing, so the manifest lists it and the
    dictionary is replaced together with the portraits it describes.
    """
    path = Path(folder) / DATA_DICTIONARY
    path.write_text(json.dumps(data_dictionary(), indent=2) + "\n", encoding="utf-8")
    return path
