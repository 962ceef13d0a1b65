"""The account-risk model: an isolation forest over person-week features.

Why an isolation forest and not a gradient-boosted classifier: the job has no labels. Nothing in
the data model says which past weeks were fraud (confirmed incidents live with customer service
and the payment institutions, not in Portrait), and the synthetic ground truth is kept out of
ingest and the job on purpose. A gradient-boosted model would need those labels at every fit and
would learn only the patterns already caught; the isolation forest is fitted on the unlabelled
weeks of the training period and ranks how easily a week is isolated from them, so a new
conjunction (a new device, then a new region, then a large order to a new address) scores high
without anyone having labelled one. The features are per-person ratios and counts of what is new
to that person, so heavy but habitual buyers are not isolated for their volume alone. The price:
without labels the scores are a ranking, not a calibrated probability, and the threshold at which
a week is reviewed is a business choice.

The estimator follows scikit-learn's contract (keyword-only ``__init__`` storing parameters, ``fit``
returning ``self``, fitted attributes ending in ``_``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest
from sklearn.utils.validation import check_is_fitted

from profiling.risk._features import FEATURE_COLUMNS

__all__ = ["RiskModel", "feature_matrix"]

# Heavy-tailed counts and amounts enter on a log scale, so a ratio of 50 is not 10 times a ratio of 5.
_LOG_COLUMNS = frozenset({"orders", "max_amount", "amount_ratio", "most_orders_in_a_day", "destinations",
                          "new_destinations", "new_devices", "new_provinces", "new_networks", "history_days"})


def feature_matrix(features) -> np.ndarray:
    """The model's input: ``FEATURE_COLUMNS`` of ``features`` (a pandas frame or an Arrow table, one row a
    person-week) as a C-ordered float32 matrix, heavy-tailed columns on a log scale.

    float32 because the isolation forest's trees split in float32 (scikit-learn casts its input so):
    built here once, it is not copied again by ``fit`` or ``score``, and it is a quarter of the raw rows.
    """
    names = features.columns if isinstance(features, pd.DataFrame) else features.column_names
    missing = [c for c in FEATURE_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"features lack the columns {', '.join(missing)}; compute them with risk_features")
    matrix = np.empty((len(features), len(FEATURE_COLUMNS)), dtype=np.float32)
    for position, name in enumerate(FEATURE_COLUMNS):
        values = np.asarray(features[name], dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"feature {name!r} holds NaN or infinite values")
        matrix[:, position] = np.log1p(np.maximum(values, 0.0)) if name in _LOG_COLUMNS else values
    return matrix


def _matrix(features) -> np.ndarray:
    """``features`` as the model's input: a frame or table of ``FEATURE_COLUMNS``, or ``feature_matrix``'s result."""
    if isinstance(features, np.ndarray):
        if features.dtype != np.float32 or features.ndim != 2 or features.shape[1] != len(FEATURE_COLUMNS):
            raise ValueError(f"a feature matrix must be float32 with {len(FEATURE_COLUMNS)} columns "
                             f"(feature_matrix's result), got {features.dtype} of shape {features.shape}")
        return features
    return feature_matrix(features)


class RiskModel(BaseEstimator):
    """Isolation-forest risk scores of person-weeks (higher: riskier, in (0, 1]).

    >>> rng = np.random.default_rng(0)
    >>> usual = pd.DataFrame({c: rng.poisson(1.0, 500).astype(float) for c in FEATURE_COLUMNS})
    >>> odd = usual.head(1).assign(new_devices=3.0, new_provinces=2.0, amount_ratio=80.0, max_amount=9000.0)
    >>> model = RiskModel(random_state=0).fit(usual)
    >>> bool(model.score(odd)[0] > np.quantile(model.score(usual), 0.99))
    True
    """

    def __init__(self, *, n_estimators: int = 300, max_samples: int | str = 1024, random_state: int = 0) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state

    def fit(self, features) -> RiskModel:
        """Fit on the person-weeks of a training period, no labels: ``risk_features`` rows (a pandas frame or
        an Arrow table), or their ``feature_matrix``. The forest draws rows by position: the same rows in
        another order fit another forest."""
        matrix = _matrix(features)
        if len(matrix) < 2:
            raise ValueError(f"the training period holds {len(matrix)} person-weeks with an order; at least 2 "
                             "are needed: train on more weeks")
        max_samples = min(self.max_samples, len(matrix)) if isinstance(self.max_samples, int) else self.max_samples
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, max_samples=max_samples,
                                       random_state=self.random_state).fit(matrix)
        self.n_features_in_ = matrix.shape[1]
        return self

    def score(self, features) -> np.ndarray:
        """The anomaly score of each person-week (Liu et al.'s s(x): near 1 isolated, 0.5 and below usual)."""
        check_is_fitted(self, "forest_")
        return -self.forest_.score_samples(_matrix(features))
