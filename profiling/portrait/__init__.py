"""The user portrait: per-person features as of a moment, only for persons whose personalization consent holds.

Features (recency/frequency/monetary value in the customer-base literature's sense, category and
payment shares, service-type mix, regions, parcel weights, devices, active hours) are computed by
compiled kernels over encoded batches, never by a Python loop per person. ``FEATURES`` is the data
dictionary; ``portrait_schema()`` the output's Arrow schema with each feature's unit and sources.
"""

from profiling.portrait._build import (
    DEFAULT_CNY_PER_UNIT,
    DEVICES_COLUMNS,
    PERSONS_COLUMNS,
    SOURCE_COLUMNS,
    PortraitBuilder,
    portraits,
    spill_folder,
)
from profiling.portrait._dictionary import (
    DATA_DICTIONARY,
    DEVICE_TYPES,
    FEATURES,
    Feature,
    data_dictionary,
    portrait_schema,
    write_data_dictionary,
)

__all__ = [
    "DATA_DICTIONARY",
    "DEFAULT_CNY_PER_UNIT",
    "DEVICES_COLUMNS",
    "DEVICE_TYPES",
    "FEATURES",
    "PERSONS_COLUMNS",
    "SOURCE_COLUMNS",
    "Feature",
    "PortraitBuilder",
    "data_dictionary",
    "portrait_schema",
    "portraits",
    "spill_folder",
    "write_data_dictionary",
]
