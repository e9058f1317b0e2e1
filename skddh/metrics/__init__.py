"""Metrics: what a selective imaging policy costs and what its bounds deliver."""

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

__all__ = [
    "coverage",
    "decision_curve",
    "make_policy_scorer",
    "missed_rate",
    "net_benefit",
    "pass_rate",
    "utility",
    "xray_rate",
]
