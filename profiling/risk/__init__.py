"""Transaction safety: account-risk features, a rules baseline and an isolation-forest model.

This serves the core purpose ``transaction_safety`` alone ("we may judge your account risk by
accessing your browse information, order information, Waybill Information ... and device
information"). It needs no consent, so what it computes must never reach personalization,
marketing or a DP release: the purpose catalogue (``profiling.purposes``) lets only
``transaction_safety`` read the risk outputs, and ``pipelines.workspace.Workspace.output_for``
refuses every other purpose.
"""

from profiling.risk._features import FEATURE_COLUMNS, WEEK, risk_feature_table, risk_features
from profiling.risk._model import RiskModel, feature_matrix
from profiling.risk._rules import RULES, rule_scores

__all__ = ["FEATURE_COLUMNS", "RULES", "RiskModel", "WEEK", "feature_matrix", "risk_feature_table", "risk_features",
           "rule_scores"]
