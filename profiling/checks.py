"""Checks of the parameters callers pass: whole numbers in range, finite numbers, probabilities.

One place for what every package asks of its counts, sizes and rates, so that the same mistake
reads the same everywhere. Each check returns the value as the type it promises, or raises
``error`` (``ValueError`` unless the caller's package has its own subclass, e.g. ``dp``'s
``PrivacyParameterError``) with one line naming the parameter, where it came from, what it must
be and what was given. ``True`` is not an integer here, and NaN or infinity is never in range.
This module imports nothing from the rest of Portrait, so every package may use it.

>>> check_int(3, "k")
3
>>> check_int(0, "k", where="in job.toml")
Traceback (most recent call last):
...
ValueError: k in job.toml must be a positive integer, got 0
>>> check_probability(0.95, "confidence")
0.95
"""

from __future__ import annotations

import math
import numbers

__all__ = ["check_int", "check_number", "check_probability"]


def _named(name: str, where: str) -> str:
    return f"{name} {where}" if where else name


def check_int(value: object, name: str, *, minimum: int = 1, maximum: int | None = None, where: str = "",
              error: type[Exception] = ValueError) -> int:
    """A whole number (Python or numpy integer, not a bool) in ``[minimum, maximum]``.

    ``where`` says where the value came from ("in job.toml"); it follows the name in the message.
    """
    if maximum is not None:
        wanted = f"a whole number between {minimum:,} and {maximum:,}"
    elif minimum == 1:
        wanted = "a positive integer"
    else:
        wanted = f"a whole number of at least {minimum:,}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum \
            or (maximum is not None and value > maximum):
        raise error(f"{_named(name, where)} must be {wanted}, got {value!r}")
    return int(value)


def check_number(value: object, name: str, *, minimum: float | None = None, positive: bool = False,
                 where: str = "", error: type[Exception] = ValueError) -> float:
    """A finite real number (not a bool), at least ``minimum`` when given, above 0 when ``positive``."""
    named = _named(name, where)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{named} must be a number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        raise error(f"{named} is {'NaN' if math.isnan(number) else 'infinite'}; pass a finite number")
    if positive and number <= 0:
        raise error(f"{named} must be > 0, got {value!r}")
    if minimum is not None and number < minimum:
        raise error(f"{named} must be >= {minimum:g}, got {value!r}")
    return number


def check_probability(value: object, name: str, *, where: str = "", error: type[Exception] = ValueError) -> float:
    """A finite number strictly between 0 and 1 (a quantile, a confidence level, a share)."""
    number = check_number(value, name, where=where, error=error)
    if not 0.0 < number < 1.0:
        raise error(f"{_named(name, where)} must be strictly between 0 and 1, got {number}")
    return number
