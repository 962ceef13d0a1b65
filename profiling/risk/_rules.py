"""The rules baseline: what a fraud analyst writes first, one point per red flag of a person-week.

A score in [0, 1]: the share of these flags the week raises (each from ``risk_features``):

* a first sign-in on a new device;
* a signed-in event from a province never seen for the person;
* a waybill to a destination province never shipped to before;
* an order over 2,000 and over five times the person's usual (median) order;
* five or more orders in one day, or waybills to four or more provinces.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["RULES", "rule_scores"]

RULES: dict[str, str] = {
    "new_device": "new_devices >= 1",
    "new_province": "new_provinces >= 1",
    "new_destination": "new_destinations >= 1",
    "large_order": "max_amount > 2000 and amount_ratio > 5",
    "burst": "most_orders_in_a_day >= 5 or destinations >= 4",
}


def rule_scores(features: pd.DataFrame) -> np.ndarray:
    """Share of ``RULES`` each person-week raises (0.0 to 1.0, in steps of 1/5).

    >>> frame = pd.DataFrame({"new_devices": [1, 0], "new_provinces": [1, 0], "new_destinations": [0, 0],
    ...                       "max_amount": [5000.0, 10.0], "amount_ratio": [9.0, 1.0],
    ...                       "most_orders_in_a_day": [1, 1], "destinations": [1, 1]})
    >>> rule_scores(frame).tolist()
    [0.6, 0.0]
    """
    flags = np.column_stack([features.eval(rule).to_numpy(dtype=bool) for rule in RULES.values()])
    return flags.mean(axis=1)
