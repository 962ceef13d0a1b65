"""Differentially private releases: person-level bounds, OpenDP noise, a budget ledger and the privacy review.

Every aggregate that leaves the engine goes through a ``PrivateSession`` query, is charged to the
persistent ``BudgetLedger`` before its value is computed, and is noised by an OpenDP measurement.
"""

from dp._bounding import join_devices
from dp._errors import BudgetExceededError, BudgetNotSetError, PrivacyParameterError
from dp._mechanisms import enabled_features
from dp.budget import DEFAULT_PERIOD, Budget, BudgetChange, BudgetLedger, ChargeLine, Dataset, UnregisteredDatasetError
from dp.review import build_review, write_review
from dp.session import PrivateSession, Query

__all__ = [
    "DEFAULT_PERIOD",
    "Budget",
    "BudgetChange",
    "BudgetExceededError",
    "BudgetLedger",
    "BudgetNotSetError",
    "ChargeLine",
    "Dataset",
    "PrivacyParameterError",
    "PrivateSession",
    "Query",
    "UnregisteredDatasetError",
    "build_review",
    "enabled_features",
    "join_devices",
    "write_review",
]
