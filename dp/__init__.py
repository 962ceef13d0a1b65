"""Differentially private releases: person-level bounds, OpenDP noise, a budget ledger and the privacy review.

Every aggregate that leaves the engine is planned as a data-free ``QueryPlan`` (built through a
``PrivateSession`` query, or directly by an engine job), compiled to OpenDP measurements, charged to
the persistent ``BudgetLedger`` before its noise is drawn, and noised by those measurements. A count
released every day of a horizon goes through a ``ContinualCounter``, whose horizon is charged once.
"""

from dp._bounding import join_devices
from dp._errors import BudgetExceededError, BudgetNotSetError, PrivacyParameterError
from dp._expressions import ExpressionError
from dp._keysets import KeySet
from dp._mechanisms import enabled_features
from dp.budget import DEFAULT_PERIOD, Budget, BudgetChange, BudgetLedger, ChargeLine, Dataset, UnregisteredDatasetError
from dp.continual import ContinualCounter, DayRelease, ScheduleError, TreeShape
from dp.plan import BoundedTotals, CompiledRelease, QueryPlan
from dp.review import build_review, write_review
from dp.session import PrivateSession, Query

__all__ = [
    "DEFAULT_PERIOD",
    "Budget",
    "BudgetChange",
    "BudgetExceededError",
    "BoundedTotals",
    "BudgetLedger",
    "BudgetNotSetError",
    "ChargeLine",
    "CompiledRelease",
    "ContinualCounter",
    "Dataset",
    "DayRelease",
    "ExpressionError",
    "KeySet",
    "PrivacyParameterError",
    "PrivateSession",
    "Query",
    "QueryPlan",
    "ScheduleError",
    "TreeShape",
    "UnregisteredDatasetError",
    "build_review",
    "enabled_features",
    "join_devices",
    "write_review",
]
