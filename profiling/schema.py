"""The raw data model: Arrow schemas of the tables the privacy policy describes, and one field registry.

Every column is declared once, here, with its Arrow type, its privacy class and the rules ingest
checks. Later stages (pseudonymization, data-subject export) read the registry — for example
``fields_of_class(PrivacyClass.DIRECT_IDENTIFIER)`` — instead of hard-coding column names.

Units: money in the order's currency (major units, e.g. yuan), weights in kilograms, coordinates in
WGS-84 degrees, timestamps in UTC with microsecond resolution.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import Enum
from graphlib import TopologicalSorter

import pyarrow as pa

from profiling.purposes import CONSENT_EVENT_TYPES, POLICY_VERSIONS, PURPOSES

__all__ = [
    "PrivacyClass",
    "Format",
    "RETENTION",
    "Retention",
    "Field",
    "Table",
    "TABLES",
    "TABLE_NAMES",
    "INGEST_ORDER",
    "TIMESTAMP",
    "CATEGORIES",
    "CURRENCIES",
    "PAYMENT_INSTITUTIONS",
    "SERVICE_TYPES",
    "arrow_schema",
    "fields_of_class",
    "table",
]

TIMESTAMP = pa.timestamp("us", tz="UTC")
EARLIEST_EVENT = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)


class PrivacyClass(str, Enum):
    """How a column can single a person out; decides what the pseudonymization door does with it."""

    DIRECT_IDENTIFIER = "direct_identifier"  # names a person or their thing by itself: pseudonymize
    QUASI_IDENTIFIER = "quasi_identifier"    # identifies in combination: generalize, count in k-anonymity
    SENSITIVE = "sensitive"                  # harmful if leaked (ID card, precise location): never analysed
    NON_PERSONAL = "non_personal"            # identifies nobody on its own: passes as is


class Format(str, Enum):
    """Textual formats ingest checks; each maps to a rejection reason ``malformed_<format>``."""

    PHONE = "phone"
    ID_CARD = "id_card"
    REGION = "region"
    PROVINCE = "province"
    IP = "ip"
    EMAIL = "email"
    VERSION = "version"


@dataclass(frozen=True)
class Field:
    """One column of a raw table and the rules ingest applies to it.

    ``identifier`` names the kind of thing a direct identifier or sensitive value identifies
    (``"phone"``, ``"person_name"``, ``"account_id"`` ...), so that values of one kind found in
    different tables get the same treatment. ``references`` is ``"table.column"`` for a foreign key
    (checked element-wise for list columns). ``required_if`` makes a nullable column required when
    another column of the row holds one of the given values.
    """

    name: str
    type: pa.DataType
    privacy: PrivacyClass
    description: str
    unit: str | None = None
    required: bool = True
    identifier: str | None = None
    format: Format | None = None
    allowed: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    earliest: dt.datetime | dt.date | None = None
    not_future: bool = False
    references: str | None = None
    required_if: tuple[str, tuple[object, ...]] | None = None

    def arrow_field(self) -> pa.Field:
        metadata = {"privacy": self.privacy.value, "description": self.description}
        if self.unit:
            metadata["unit"] = self.unit
        if self.identifier:
            metadata["identifier"] = self.identifier
        return pa.field(self.name, self.type, nullable=not self.required, metadata=metadata)


@dataclass(frozen=True)
class Table:
    """A raw table: its columns in order, its primary key and what it holds."""

    name: str
    description: str
    primary_key: str
    fields: tuple[Field, ...]
    _by_name: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {f.name: f for f in self.fields})

    def __getitem__(self, name: str) -> Field:
        return self._by_name[name]

    @property
    def column_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([f.arrow_field() for f in self.fields], metadata={"table": self.name})

    @property
    def parents(self) -> set[str]:
        return {f.references.split(".")[0] for f in self.fields if f.references} - {self.name}

    @property
    def retention(self) -> Retention:
        """How long this table's rows are kept (``RETENTION``)."""
        return RETENTION[self.name]


CATEGORIES: tuple[str, ...] = (
    "fresh_food", "snacks", "beverages", "digital", "appliances", "apparel", "shoes", "beauty",
    "home", "furniture", "books", "maternity", "toys", "sports", "outdoor", "pharmacy", "pet",
    "office", "auto", "jewelry", "luggage", "alcohol",
    "service_insurance", "service_installation", "service_storage", "service_express_upgrade",
    "coupon_shipping", "coupon_store",
)
CURRENCIES: tuple[str, ...] = ("CNY", "HKD", "MOP", "TWD", "USD", "EUR", "JPY", "KRW", "GBP")
PAYMENT_INSTITUTIONS: tuple[str, ...] = ("we_financial", "alipay", "wechat_pay", "unionpay", "netsunion")
SERVICE_TYPES: tuple[str, ...] = ("standard", "express", "same_day", "economy", "cold_chain", "freight", "international")

_D = PrivacyClass.DIRECT_IDENTIFIER
_Q = PrivacyClass.QUASI_IDENTIFIER
_S = PrivacyClass.SENSITIVE
_N = PrivacyClass.NON_PERSONAL


def _when(name: str, description: str, *, required: bool = True) -> Field:
    return Field(name, TIMESTAMP, _N, description, unit="UTC", required=required,
                 earliest=EARLIEST_EVENT, not_future=True)


_TABLE_LIST = (
    Table("catalogue", "Items on offer: commodities, services and coupons.", "item_id", (
        Field("item_id", pa.string(), _N, "Catalogue item id."),
        Field("kind", pa.string(), _N, "What the item is.", allowed=("commodity", "service", "coupon")),
        Field("category", pa.string(), _N, "Item category.", allowed=CATEGORIES),
        Field("title", pa.string(), _N, "Display title."),
        Field("price", pa.float64(), _N, "List price.", unit="CNY", required=False, minimum=0.0, maximum=1_000_000.0),
        Field("served_provinces", pa.list_(pa.string()), _N,
              "Province codes where the item is offered; null means nationwide.",
              required=False, format=Format.PROVINCE),
        Field("active", pa.bool_(), _N, "Whether the item is currently in the catalogue."),
        _when("listed_at", "When the item was first listed."),
    )),
    Table("accounts", "Account Information: what a user gives when registering.", "account_id", (
        Field("account_id", pa.string(), _D, "Account id.", identifier="account_id"),
        Field("phone", pa.string(), _D, "Mobile phone number used to register.", identifier="phone",
              format=Format.PHONE),
        Field("nickname", pa.string(), _D, "Account name or nickname.", identifier="person_name"),
        Field("email", pa.string(), _D, "Email for updates.", required=False, identifier="email",
              format=Format.EMAIL),
        Field("birthday", pa.date32(), _Q, "Birthday, if given.", required=False,
              earliest=dt.date(1900, 1, 1), not_future=True),
        Field("gender", pa.string(), _Q, "Gender, if given.", required=False, allowed=("female", "male")),
        Field("region", pa.string(), _Q, "Home region (GB/T 2260 code), if given.", required=False,
              format=Format.REGION),
        _when("created_at", "When the account was created."),
    )),
    Table("devices", "Devices that contacted the service.", "device_id", (
        Field("device_id", pa.string(), _D, "Device identifier.", identifier="device_id"),
        Field("device_type", pa.string(), _N, "Device type.", allowed=("phone", "tablet", "pc", "watch")),
        Field("os", pa.string(), _N, "Operating system.",
              allowed=("android", "ios", "harmonyos", "windows", "macos", "linux")),
        Field("carrier", pa.string(), _N, "Mobile network carrier.", required=False,
              allowed=("china_mobile", "china_unicom", "china_telecom", "china_broadnet", "other")),
        Field("app_version", pa.string(), _N, "Application version (major.minor.patch).", format=Format.VERSION),
        _when("first_seen_at", "When the device first contacted the service."),
    )),
    Table("orders", "Order Information.", "order_id", (
        Field("order_id", pa.string(), _D, "Order number (given to payment institutions).", identifier="order_id"),
        Field("account_id", pa.string(), _D, "Ordering account.", identifier="account_id",
              references="accounts.account_id"),
        _when("placed_at", "When the order was placed."),
        Field("amount", pa.float64(), _N, "Transaction amount.", unit="currency major units",
              minimum=0.0, maximum=1_000_000.0),
        Field("currency", pa.string(), _N, "ISO 4217 currency code.", allowed=CURRENCIES),
        Field("payment_institution", pa.string(), _N, "Payment institution that settled the order.",
              allowed=PAYMENT_INSTITUTIONS),
        Field("category", pa.string(), _N, "Commodity category of the order's main item.", allowed=CATEGORIES),
        Field("items", pa.list_(pa.string()), _N, "Catalogue item ids in the order.",
              references="catalogue.item_id"),
    )),
    Table("waybills", "Waybill Information: shipper, receiver and shipment.", "waybill_id", (
        Field("waybill_id", pa.string(), _D, "Waybill (tracking) number.", identifier="waybill_id"),
        Field("order_id", pa.string(), _D, "Order shipped, if any.", required=False, identifier="order_id",
              references="orders.order_id"),
        Field("account_id", pa.string(), _D, "Account that sent or ordered the shipment, if any.",
              required=False, identifier="account_id", references="accounts.account_id"),
        _when("created_at", "When the waybill was generated."),
        Field("shipper_name", pa.string(), _D, "Shipper's name.", identifier="person_name"),
        Field("shipper_phone", pa.string(), _D, "Shipper's phone.", identifier="phone", format=Format.PHONE),
        Field("shipper_address", pa.string(), _D, "Shipper's address.", identifier="address"),
        Field("receiver_name", pa.string(), _D, "Receiver's name.", identifier="person_name"),
        Field("receiver_phone", pa.string(), _D, "Receiver's phone.", identifier="phone", format=Format.PHONE),
        Field("receiver_address", pa.string(), _D, "Receiver's address.", identifier="address"),
        Field("origin_region", pa.string(), _Q, "Origin region (GB/T 2260 code).", format=Format.REGION),
        Field("destination_region", pa.string(), _Q, "Destination region (GB/T 2260 code).", format=Format.REGION),
        Field("weight_kg", pa.float64(), _N, "Parcel weight.", unit="kg", minimum=0.0, maximum=50_000.0),
        Field("service_type", pa.string(), _N, "Service type.", allowed=SERVICE_TYPES),
        Field("cross_border", pa.bool_(), _N, "Whether the shipment clears customs."),
        Field("id_card_number", pa.string(), _S, "Resident ID number for customs declaration.",
              required=False, identifier="id_card", format=Format.ID_CARD,
              required_if=("cross_border", (True,))),
    )),
    Table("device_events", "What devices did, with network and location information.", "event_id", (
        Field("event_id", pa.string(), _D, "Event id: names one event of one device (and its account).",
              identifier="event_id"),
        Field("device_id", pa.string(), _D, "Device.", identifier="device_id", references="devices.device_id"),
        Field("account_id", pa.string(), _D, "Account signed in on the device, if any.", required=False,
              identifier="account_id", references="accounts.account_id"),
        _when("event_at", "When the event happened."),
        Field("event_type", pa.string(), _N, "What happened.",
              allowed=("app_open", "sign_in", "sign_out", "search", "view_item", "track_shipment", "place_order")),
        Field("ip", pa.string(), _D, "IP address (v4 or v6).", identifier="ip", format=Format.IP),
        Field("coarse_region", pa.string(), _Q, "City-level location (GB/T 2260 code).", required=False,
              format=Format.REGION),
        Field("precise_lat", pa.float64(), _S, "Precise latitude.", unit="degrees", required=False,
              identifier="precise_location", minimum=-90.0, maximum=90.0),
        Field("precise_lon", pa.float64(), _S, "Precise longitude.", unit="degrees", required=False,
              identifier="precise_location", minimum=-180.0, maximum=180.0),
        Field("item_id", pa.string(), _N, "Item viewed, if any.", required=False, references="catalogue.item_id"),
    )),
    Table("consent_events", "Consent history: grants, revocations, DND, policy versions, cancellation.", "event_id", (
        Field("event_id", pa.string(), _D, "Event id: names one statement of one account.", identifier="event_id"),
        Field("account_id", pa.string(), _D, "Account.", identifier="account_id", references="accounts.account_id"),
        _when("event_at", "When the user said it."),
        Field("event_type", pa.string(), _N, "What the user said.", allowed=CONSENT_EVENT_TYPES),
        Field("purpose", pa.string(), _N, "Purpose a grant or revocation is about.", required=False,
              allowed=tuple(PURPOSES),
              required_if=("event_type", ("grant", "revoke", "sensitive_grant", "sensitive_revoke"))),
        Field("policy_version", pa.string(), _N, "Policy version in force when the user said it.",
              allowed=POLICY_VERSIONS),
        Field("channel", pa.string(), _N, "Where the user said it.",
              allowed=("app", "web", "wechat", "customer_service", "sms")),
    )),
)



@dataclass(frozen=True)
class Retention:
    """How long rows of a table are kept, from which time column, and on what basis.

    ``days``: a row whose ``column`` lies more than ``days`` days (86,400 s each) before the job's
    as-of moment is deleted by the job's retention stage and dropped by every later ingest; ``None``
    means no period runs on the rows themselves (``basis`` says what ends them). A row also goes with
    any row it references that went (a waybill with its order); with ``while_referenced``, a row past
    its period stays while a row within its own period references it (a device with recent events).
    """

    days: int | None
    column: str | None
    basis: str
    while_referenced: bool = False


_THIRTY_YEARS = 10_958  # days: 30 x 365.25, rounded up
RETENTION: dict[str, Retention] = {
    "catalogue": Retention(None, None, "non-personal: kept while the item is offered"),
    "accounts": Retention(None, None, "the account's life: erased [retention] cancellation_grace_days after the "
                          "account is cancelled (PIPL Art. 47; the policy's cancellation function)"),
    "devices": Retention(184, "first_seen_at", "as device_events: kept while an event of the device is kept",
                         while_referenced=True),
    "orders": Retention(_THIRTY_YEARS, "placed_at",
                        "30 years: accounting vouchers (Accounting Archives Management Measures 2015, Art. 14 and "
                        "annex); E-commerce Law Art. 31 asks at least 3 years for transaction information"),
    "waybills": Retention(_THIRTY_YEARS, "created_at",
                          "30 years, as orders: the shipment record behind a freight charge (Accounting Archives "
                          "Management Measures 2015); goes earlier with its order"),
    "device_events": Retention(184, "event_at",
                               "six months: network logs are kept at least six months (Cybersecurity Law Art. 21(3)); "
                               "nothing asks longer, and PIPL Art. 19 asks the shortest period necessary"),
    "consent_events": Retention(None, None, "the account's life: the evidence of consent for what is held; erased "
                                "(redacted in the ledger) with the account"),
}

TABLES: dict[str, Table] = {t.name: t for t in _TABLE_LIST}
TABLE_NAMES: tuple[str, ...] = tuple(TABLES)
# Parents before children, so foreign keys are checked against already accepted rows.
INGEST_ORDER: tuple[str, ...] = tuple(TopologicalSorter({t.name: t.parents for t in _TABLE_LIST}).static_order())


def table(name: str) -> Table:
    """The table called ``name``; a clear error names the known tables otherwise."""
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; the data model has {', '.join(TABLE_NAMES)}") from None


def arrow_schema(name: str) -> pa.Schema:
    """Arrow schema of table ``name``; each field's metadata carries its privacy class and description."""
    return table(name).schema


def fields_of_class(privacy: PrivacyClass) -> list[tuple[str, Field]]:
    """Every ``(table name, field)`` of a privacy class, in data-model order.

    >>> [(t, f.name) for t, f in fields_of_class(PrivacyClass.SENSITIVE)]
    [('waybills', 'id_card_number'), ('device_events', 'precise_lat'), ('device_events', 'precise_lon')]
    """
    return [(t.name, f) for t in _TABLE_LIST for f in t.fields if f.privacy is privacy]
