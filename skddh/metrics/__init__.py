"""Metrics: what a selective imaging policy costs and what its bounds deliver; how well a
regression agrees with its reference (Bland-Altman, Pearson, Lin's CCC)."""

from skddh.metrics._policy import (
    coverage,
    decision_curve,
    make_policy_scorer,
    missed_rate,
    net_benefit,
    pass_rate,
    utility,
    xray_rate,
)
from skddh.metrics._regression_agreement import (
    BlandAltmanResult,
    bland_altman,
    concordance_correlation_coefficient,
    regression_agreement,
)

__all__ = [
    "BlandAltmanResult",
    "bland_altman",
    "concordance_correlation_coefficient",
    "coverage",
    "decision_curve",
    "make_policy_scorer",
    "missed_rate",
    "net_benefit",
    "pass_rate",
    "regression_agreement",
    "utility",
    "xray_rate",
]
