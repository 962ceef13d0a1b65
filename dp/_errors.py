"""Exceptions of the release side: bad privacy parameters and budget refusals.

All are ``PortraitError`` (hence ``ValueError``): the caller can act on them, and
none of them is raised after budget has been charged.
"""

from __future__ import annotations

from profiling.errors import PortraitError

__all__ = ["BudgetExceededError", "BudgetNotSetError", "PrivacyParameterError"]


class PrivacyParameterError(PortraitError):
    """A privacy or bounding parameter is invalid (NaN, infinite, out of range, inverted bounds)."""


class BudgetExceededError(PortraitError):
    """A release asked for more than the remaining budget; nothing was charged or released."""


class BudgetNotSetError(PortraitError):
    """No budget has been set for the dataset and period a release is charged to."""
