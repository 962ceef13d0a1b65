"""Validation of privacy and bounding parameters, run before anything is charged.

``epsilon <= 0`` is False for NaN, so every check first requires a finite number.
"""

from __future__ import annotations

import math
import numbers

from dp._errors import PrivacyParameterError

__all__ = [
    "check_bounds",
    "check_delta",
    "check_epsilon",
    "check_positive_int",
    "check_probability",
    "check_resolution",
    "check_rho",
]


def _finite(name: str, value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrivacyParameterError(f"{name} must be a number{where}, got {value!r} ({type(value).__name__})")
    number = float(value)
    if math.isnan(number):
        raise PrivacyParameterError(f"{name} is NaN{where}; pass a finite number")
    if math.isinf(number):
        raise PrivacyParameterError(f"{name} is infinite{where}; pass a finite number")
    return number


def _at(where: str) -> str:
    return f" in {where}" if where else ""


def check_epsilon(value: object, name: str = "epsilon", where: str = "") -> float:
    """A finite epsilon > 0.

    >>> check_epsilon(0.5)
    0.5
    """
    number = _finite(name, value, _at(where))
    if number <= 0:
        raise PrivacyParameterError(f"{name} must be > 0{_at(where)}, got {number}; a release with {name} <= 0 "
                                    f"would promise more privacy than any noise gives")
    return number


def check_rho(value: object, name: str = "rho", where: str = "") -> float:
    """A finite zCDP rho > 0."""
    return check_epsilon(value, name, where)


def check_delta(value: object, name: str = "delta", where: str = "") -> float:
    """A finite delta in [0, 1).

    >>> check_delta(1e-7)
    1e-07
    """
    number = _finite(name, value, _at(where))
    if not 0.0 <= number < 1.0:
        raise PrivacyParameterError(f"{name} must be in [0, 1){_at(where)}, got {number}; "
                                    f"typical values are below 1/number of persons, e.g. 1e-7")
    return number


def check_probability(value: object, name: str, where: str = "") -> float:
    """A finite number strictly between 0 and 1 (a quantile, a confidence level)."""
    number = _finite(name, value, _at(where))
    if not 0.0 < number < 1.0:
        raise PrivacyParameterError(f"{name} must be strictly between 0 and 1{_at(where)}, got {number}")
    return number


def check_bounds(bounds: object, name: str = "bounds", where: str = "") -> tuple[float, float]:
    """Finite clamp bounds ``(lower, upper)`` with lower < upper.

    >>> check_bounds((0, 500))
    (0.0, 500.0)
    """
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise PrivacyParameterError(f"{name} must be a pair (lower, upper){_at(where)}, got {bounds!r}")
    lower = _finite(f"lower {name}", bounds[0], _at(where))
    upper = _finite(f"upper {name}", bounds[1], _at(where))
    if not lower < upper:
        raise PrivacyParameterError(f"{name} are inverted or empty{_at(where)}: lower {lower} must be below "
                                    f"upper {upper}; pass ({min(lower, upper)}, {max(lower, upper)})")
    return lower, upper


def check_positive_int(value: object, name: str, where: str = "") -> int:
    """An integer >= 1 (contribution bounds, device bounds)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise PrivacyParameterError(f"{name} must be a whole number >= 1{_at(where)}, got {value!r}")
    if value < 1:
        raise PrivacyParameterError(f"{name} must be >= 1{_at(where)}, got {value}")
    return int(value)


def check_resolution(value: object, name: str = "resolution", where: str = "") -> float:
    """The unit sums are rounded to (e.g. 0.01 for cents): finite and > 0."""
    number = _finite(name, value, _at(where))
    if number <= 0:
        raise PrivacyParameterError(f"{name} must be > 0{_at(where)}, got {number}")
    return number
