"""Validation of privacy and bounding parameters, run before anything is charged.

``epsilon <= 0`` is False for NaN, so every check first requires a finite number.

A release's own parameters have sanity limits beyond being positive (``check_release_privacy``):

* ``MIN_RELEASE_EPSILON`` = 1e-3. Below it a count of sensitivity 1 gets a 95% half-width of
  about ln(20) / 1e-3 = 3,000 rows, meaningless on any dataset this system holds, while the
  release would cost next to nothing: a near-zero epsilon is how one asks for an exact value
  "for free" (the noise scale overflows to infinity below about 1e-308, and OpenDP then adds
  none). With the floor, every release costs at least 1e-3, so a budget of epsilon 1 admits at
  most 1,000 releases.
* ``MIN_RELEASE_RHO`` = 5e-7, the zCDP cost of Gaussian noise comparable to epsilon 1e-3
  (rho = epsilon^2 / 2).
* ``MAX_RELEASE_DELTA`` = 1e-3. Delta is the probability the epsilon guarantee fails outright
  (private group selection may then reveal one person's group); it must stay far below 1 / the
  number of persons, and no dataset worth a DP release has fewer than a thousand.
"""

from __future__ import annotations

import math
import numbers

from dp._errors import PrivacyParameterError
from profiling.checks import check_int

__all__ = [
    "MAX_RELEASE_DELTA",
    "MIN_RELEASE_EPSILON",
    "MIN_RELEASE_RHO",
    "check_bounds",
    "check_delta",
    "check_epsilon",
    "check_positive_int",
    "check_probability",
    "check_release_privacy",
    "check_resolution",
    "check_rho",
]


MIN_RELEASE_EPSILON = 1e-3
MIN_RELEASE_RHO = 5e-7
MAX_RELEASE_DELTA = 1e-3


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


def check_release_privacy(epsilon: object, delta: object, rho: object,
                          where: str = "") -> tuple[float | None, float, float | None]:
    """A release's ``(epsilon, delta, rho)``, checked against the release limits of the module docstring.

    ``epsilon`` or ``rho`` may be None (exactly one is given by the caller).

    >>> check_release_privacy(0.5, 1e-7, None)
    (0.5, 1e-07, None)
    >>> check_release_privacy(1e-300, 0.0, None)
    Traceback (most recent call last):
    ...
    dp._errors.PrivacyParameterError: epsilon 1e-300 is below the smallest a release may cost, 0.001 (its noise would swamp any result while charging next to nothing); pass epsilon >= 0.001
    """
    limits = (("epsilon", epsilon, MIN_RELEASE_EPSILON), ("rho", rho, MIN_RELEASE_RHO))
    checked = {}
    for name, value, floor in limits:
        if value is None:
            checked[name] = None
            continue
        number = check_epsilon(value, name, where)
        if number < floor:
            raise PrivacyParameterError(f"{name} {number:g}{_at(where)} is below the smallest a release may cost, "
                                        f"{floor:g} (its noise would swamp any result while charging next to "
                                        f"nothing); pass {name} >= {floor:g}")
        checked[name] = number
    delta_value = check_delta(delta, where=where)
    if delta_value > MAX_RELEASE_DELTA:
        raise PrivacyParameterError(f"delta {delta_value:g}{_at(where)} is above the largest a release may use, "
                                    f"{MAX_RELEASE_DELTA:g} (delta is the chance the guarantee fails outright); "
                                    f"pass e.g. delta=1e-7")
    return checked["epsilon"], delta_value, checked["rho"]


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
    """An integer >= 1 (contribution bounds, device bounds): ``profiling.checks.check_int`` with dp's error."""
    return check_int(value, name, where=_at(where).strip(), error=PrivacyParameterError)


def check_resolution(value: object, name: str = "resolution", where: str = "") -> float:
    """The unit sums are rounded to (e.g. 0.01 for cents): finite and > 0."""
    number = _finite(name, value, _at(where))
    if number <= 0:
        raise PrivacyParameterError(f"{name} must be > 0{_at(where)}, got {number}")
    return number
