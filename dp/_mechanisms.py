"""OpenDP measurements: calibration of noise scales, the noise itself, and 95% half-widths.

Every noisy number Portrait releases is drawn by an OpenDP measurement built here; the
privacy loss charged is the one OpenDP's own privacy map certifies for the sensitivity.
Sums are computed in whole multiples of a declared resolution (e.g. cents) so that both
the aggregation and the noise are exact integer arithmetic, and no floating-point
feature flag is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import opendp.prelude as dp

from profiling.errors import InternalError

__all__ = [
    "APPROXIMATE",
    "PURE",
    "ZCDP",
    "NoisePlan",
    "add_vector_noise",
    "enabled_features",
    "half_width",
    "plan_quantile",
    "plan_threshold",
    "plan_vector_noise",
    "release_quantile",
    "scale_for_half_width",
    "release_threshold",
]

PURE, APPROXIMATE, ZCDP = "pure", "approximate", "zCDP"
CONFIDENCE = 0.95
_ALPHA = 1.0 - CONFIDENCE
_INSIDE = 1e-8
_FEATURES: set[str] = set()


def _enable(*features: str) -> None:
    dp.enable_features(*features)
    _FEATURES.update(features)


def enabled_features() -> tuple[str, ...]:
    """The OpenDP feature flags Portrait has enabled in this process (listed in the privacy review)."""
    return tuple(sorted(_FEATURES))


_enable("contrib")


@dataclass(frozen=True)
class NoisePlan:
    """One calibrated OpenDP measurement and what it costs.

    ``sensitivity`` is in the measurement's input units (L1 or L2 distance between the
    neighbouring aggregate vectors, or (l0, l1, linf) for thresholding, or rows for
    quantiles); ``scale`` in the same units. Exactly one of (epsilon, delta) or rho is the
    charged cost, as the budget's measure asks; ``half_width`` is the 95% confidence
    half-width of each noisy value in units of the integer aggregate (multiply by the
    resolution for sums; in ranks, i.e. rows, for quantiles), the one the ledger records
    (``half_width(plan, alpha)`` gives it at any level). ``loss`` is OpenDP's privacy map of
    this measurement at the planned sensitivity, as a function of the scale (epsilon, or rho
    under zCDP; the threshold's delta is fixed by its threshold).
    """

    mechanism: str
    measure: str
    sensitivity: object
    scale: float
    epsilon: float | None
    delta: float | None
    rho: float | None
    half_width: float
    threshold: int | None = None
    candidates: int | None = None
    loss: Callable[[float], float] | None = field(default=None, compare=False, repr=False)

    def cost(self) -> dict[str, float]:
        return {"epsilon": self.epsilon or 0.0, "delta": self.delta or 0.0, "rho": self.rho or 0.0}


def _int_space(metric):
    return dp.vector_domain(dp.atom_domain(T=int)), metric


def _laplace(scale: float):
    return dp.m.make_laplace(*_int_space(dp.l1_distance(T=int)), scale=scale)


def _gaussian(scale: float):
    return dp.m.make_gaussian(*_int_space(dp.l2_distance(T=float)), scale=scale)


def _search_scale(loss, target: float, start: float) -> float:
    """Smallest scale (to 1e-9 relative) with ``loss(scale) <= target``; ``loss`` decreases in scale.

    ``start`` is the analytic calibration; OpenDP's map (which rounds conservatively) usually
    accepts it or a hair above it, so the bisection is the fallback.
    """
    for nudge in (1.0, 1.0 + 1e-12, 1.0 + 1e-9):
        if loss(start * nudge) <= target and loss(start * (1.0 - 1e-9)) > target:
            return start * nudge
    high = start
    while loss(high) > target:
        high *= 2.0
    low = high / 2.0
    if loss(low) <= target:
        return low
    while (high - low) > 1e-9 * high:
        middle = (low + high) / 2.0
        if loss(middle) <= target:
            high = middle
        else:
            low = middle
    return high


def plan_vector_noise(*, mechanism: str, measure: str, l1_sensitivity: int, l2_sensitivity: float,
                      epsilon: float | None = None, delta: float | None = None, rho: float | None = None) -> NoisePlan:
    """Calibrate discrete Laplace or discrete Gaussian noise for an integer vector.

    ``measure`` is the budget's: PURE (Laplace only, costs epsilon), APPROXIMATE (Laplace costs
    epsilon; Gaussian costs (epsilon, delta) through OpenDP's zCDP -> approximate-DP conversion),
    ZCDP (costs rho; Laplace converted by OpenDP's pure -> zCDP map).
    """
    if mechanism == "laplace":
        d_in = int(l1_sensitivity)
        if measure == ZCDP:
            loss = lambda s: dp.c.make_pureDP_to_zCDP(_laplace(s)).map(d_in)
            target, start = rho, d_in / math.sqrt(2.0 * rho)
        else:
            loss = lambda s: _laplace(s).map(d_in)
            target, start = epsilon, d_in / epsilon
        name = "discrete Laplace"
    elif mechanism == "gaussian":
        d_in = float(l2_sensitivity)
        if measure == PURE:
            raise InternalError("Gaussian noise under a pure-DP budget must be refused during validation")
        if measure == ZCDP:
            loss = lambda s: _gaussian(s).map(d_in)
            target, start = rho, d_in / math.sqrt(2.0 * rho)
        else:
            loss = lambda s: dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(_gaussian(s)), delta=delta).map(d_in)[0]
            target, start = epsilon, d_in * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon
        name = "discrete Gaussian"
    else:
        raise InternalError(f"unknown mechanism {mechanism!r} passed validation")
    scale = _search_scale(loss, target, start)
    spent = loss(scale)
    plan = NoisePlan(name, measure, d_in, scale, None, None, None, 0.0, loss=loss)
    if measure == ZCDP:
        plan = replace(plan, rho=spent)
    else:
        plan = replace(plan, epsilon=spent, delta=delta if mechanism == "gaussian" else 0.0)
    return replace(plan, half_width=half_width(plan, _ALPHA))


def add_vector_noise(plan: NoisePlan, exact: np.ndarray) -> np.ndarray:
    """Noisy copy of an integer vector, drawn by the OpenDP measurement ``plan`` describes."""
    measurement = _laplace(plan.scale) if plan.mechanism == "discrete Laplace" else _gaussian(plan.scale)
    values = [int(v) for v in np.asarray(exact, dtype=np.int64)]
    if not values:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(measurement(values), dtype=np.int64)


def _threshold_measurement(scale: float, threshold: int):
    domain = dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T=int))
    return dp.m.make_laplace_threshold(domain, dp.l01inf_distance(dp.absolute_distance(T=int)),
                                       scale=scale, threshold=threshold)


def plan_threshold(*, max_partitions: int, max_rows_per_partition: int, epsilon: float, delta: float) -> NoisePlan:
    """Laplace noise plus a threshold for counts over keys nobody declared (private partition selection).

    The threshold is the smallest whole count for which OpenDP certifies ``delta``.
    """
    d_in = (max_partitions, max_partitions * max_rows_per_partition, max_rows_per_partition)
    loss = lambda s: _threshold_measurement(s, 2**30).map(d_in)[0]
    scale = _search_scale(loss, epsilon, d_in[1] / epsilon)
    low = high = max_rows_per_partition
    while _threshold_measurement(scale, high).map(d_in)[1] > delta:
        low, high = high, high * 2
        if high > 2**30:
            raise InternalError("no threshold reaches the asked delta")
    while low < high:
        middle = (low + high) // 2
        if _threshold_measurement(scale, middle).map(d_in)[1] <= delta:
            high = middle
        else:
            low = middle + 1
    spent_epsilon, spent_delta = _threshold_measurement(scale, high).map(d_in)
    return NoisePlan("Laplace threshold", APPROXIMATE, d_in, scale, spent_epsilon, spent_delta, None,
                     dp.discrete_laplacian_scale_to_accuracy(scale, _ALPHA), threshold=high, loss=loss)


def release_threshold(plan: NoisePlan, exact_counts: dict[str, int]) -> dict[str, int]:
    """Noisy counts of the keys whose noisy count reaches the threshold; the rest are dropped."""
    if not exact_counts:
        return {}
    return dict(_threshold_measurement(plan.scale, plan.threshold)({str(k): int(v) for k, v in exact_counts.items()}))


def _quantile_measurement(measure: str, candidates: list[float], alpha: float, scale: float):
    output = dp.zero_concentrated_divergence() if measure == ZCDP else dp.max_divergence()
    return dp.m.make_private_quantile(dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance(),
                                      output, candidates=candidates, alpha=alpha, scale=scale)


def plan_quantile(*, measure: str, rows_per_person: int, candidates: list[float], alpha: float,
                  epsilon: float | None = None, rho: float | None = None) -> NoisePlan:
    """Calibrate the private quantile over ``candidates`` (OpenDP ``make_private_quantile``).

    The half-width is in ranks (rows), not in the value's units (those would depend on the
    data): with 95% probability the released candidate's rank error ``|(1 - alpha) * below -
    alpha * above|`` exceeds the best candidate's by less than ``half_width`` rows, whatever the
    data. OpenDP picks the candidate by permute-and-flip: candidates are visited in random order
    and one whose rank error exceeds the best by ``g`` is taken with probability ``exp(-g / b)``,
    where ``b = 2 * max(alpha, 1 - alpha) / eps1`` and ``eps1`` is what OpenDP charges for one
    row (its map at distance 1). The worst data puts every other candidate exactly ``h`` rows
    behind the best; then a miss has probability ``1 - (1 - (1 - x)**C) / (C * x)`` with
    ``x = exp(-h / b)`` for C candidates, and the half-width is the ``h`` that makes it 5%
    (checked both ways, on that worst case, by the privacy tests). OpenDP's map is
    ``2 * max(alpha, 1 - alpha) / b`` per row, so ``h = b * ln(1 / x)``.
    """
    target = rho if measure == ZCDP else epsilon
    loss = lambda s: _quantile_measurement(measure, candidates, alpha, s).map(rows_per_person)
    scale = _search_scale(loss, target, float(rows_per_person) / target)
    spent = loss(scale)
    plan = NoisePlan("permute-and-flip (quantile)", measure, rows_per_person, scale, None, None, None, 0.0,
                     candidates=len(candidates), loss=loss)
    plan = replace(plan, rho=spent) if measure == ZCDP else replace(plan, epsilon=spent, delta=0.0)
    return replace(plan, half_width=half_width(plan, _ALPHA))


def _worst_acceptance(candidates: int, miss: float) -> float:
    """The largest acceptance probability x of the C - 1 worse candidates for which permute-and-flip
    misses the best with probability at most ``miss`` (the miss probability grows with x)."""
    def missed(x: float) -> float:
        if candidates == 1:
            return 0.0
        return 1.0 + math.expm1(candidates * math.log1p(-x)) / (candidates * x)

    low, high = 0.0, 1.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if middle > 0 and missed(middle) <= miss:
            low = middle
        else:
            high = middle
    if low <= 0.0:
        raise InternalError(f"no acceptance probability gives a {miss:g} miss over {candidates} candidates")
    return low


def release_quantile(plan: NoisePlan, values: np.ndarray, candidates: list[float], alpha: float) -> float:
    return float(_quantile_measurement(plan.measure, candidates, alpha, plan.scale)(
        [float(v) for v in np.asarray(values, dtype=np.float64)]))


def half_width(plan: NoisePlan, alpha: float) -> float:
    """The (1 - alpha) confidence half-width of one value noised by ``plan`` (integer units; ranks for quantiles)."""
    if plan.mechanism == "discrete Gaussian":
        return dp.discrete_gaussian_scale_to_accuracy(plan.scale, alpha)
    if plan.candidates is not None:
        return plan.scale * -math.log(_worst_acceptance(plan.candidates, alpha))
    # OpenDP's formula underflows to -inf at tiny scales, where the noise is 0 with probability above 1 - alpha
    return max(0.0, dp.discrete_laplacian_scale_to_accuracy(plan.scale, alpha))


def scale_for_half_width(plan: NoisePlan, target: float, alpha: float) -> float:
    """The largest noise scale of ``plan``'s mechanism whose (1 - alpha) half-width is at most ``target``.

    Inverts OpenDP's accuracy formulas (``accuracy_to_discrete_laplacian_scale``,
    ``accuracy_to_discrete_gaussian_scale``; for quantiles ``h = b * ln(1 / x)``), then checks the
    result with the forward formula and bisects where the inverse is not exact (the discrete
    Gaussian's accuracy moves in whole steps). The scale returned is ``1e-8`` (relative) below
    that largest one, so a release calibrated to its cost meets ``target`` even at a step's edge.
    """
    if plan.mechanism == "discrete Gaussian":
        start = dp.accuracy_to_discrete_gaussian_scale(target, alpha)
    elif plan.candidates is not None:
        start = target / -math.log(_worst_acceptance(plan.candidates, alpha))
    else:
        start = dp.accuracy_to_discrete_laplacian_scale(target, alpha)
    fits = lambda s: half_width(replace(plan, scale=s), alpha) <= target
    low = start
    while not fits(low):
        low /= 2.0
    high = low * 2.0
    while fits(high):
        low, high = high, high * 2.0
    while (high - low) > 1e-12 * high:
        middle = (low + high) / 2.0
        if fits(middle):
            low = middle
        else:
            high = middle
    # 1e-8 inside: the release calibrates its scale to within 1e-9 above the one its cost allows
    return low * (1.0 - _INSIDE)
