"""Metrics: what a selective imaging policy costs and what its bounds deliver; how well a
regression agrees with its reference (Bland-Altman, Pearson, Lin's CCC); a clinical report of a
classifier with patient-level bootstrap intervals; agreement between raters (Gwet's AC1)."""

from skddh.metrics._agreement import GwetAC1Result, gwet_ac1
from skddh.metrics._clinical import clinical_report
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
    "GwetAC1Result",
    "bland_altman",
    "clinical_report",
    "concordance_correlation_coefficient",
    "coverage",
    "decision_curve",
    "gwet_ac1",
    "make_policy_scorer",
    "missed_rate",
    "net_benefit",
    "pass_rate",
    "regression_agreement",
    "utility",
    "xray_rate",
]
