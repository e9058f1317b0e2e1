"""Selective imaging: pass a hip on ultrasound only when its calibrated lower bounds clear.

The rules are small pure functions on lower bounds (:func:`rule_margin`, :func:`apply_rule`);
:class:`SelectiveImagingPolicy` is the scikit-learn classifier around them (1 = ultrasound
suffices, 0 = refer to X-ray), shaped like scikit-learn's ``FixedThresholdClassifier``: the
rule and the miscoverage are plain hyper-parameters, and fitting depends on neither.

Rules over the measurements named in ``thresholds`` (default Graf alpha >= 60 deg and femoral
head coverage >= 50 %; the DDH paper, arXiv 2511.18457):

- ``"alpha"``: pass when ``LB_alpha >= 60``. Guarantee: ``P(pass and truly alpha < 60) <=
  delta_alpha``.
- ``"and"``: pass when every bound clears. ``P(pass and some measurement truly fails) <=
  sum of the deltas``.
- ``"or"``: pass when any bound clears. No such guarantee: the most lenient rule.

None of them bounds the share of abnormal hips *among the passed ones*; each guarantee is
marginal, under exchangeability of the calibration subjects and the new one, per measurement.

Policies calibrated for the decision itself, around a point regressor
(:mod:`skddh.policy._controlled`): :class:`RiskControlledPolicy` picks a margin so that
``P(pass and abnormal) <= alpha`` with probability ``1 - epsilon`` (Learn-then-Test) or in
expectation (conformal risk control), for any rule; :class:`ConformalSelectionPolicy` passes
the hips whose conformal p-values survive Benjamini-Hochberg, so that the share of abnormal
hips *among those passed* is at most ``q`` in expectation (a false discovery rate).

Thresholds may depend on covariates observed before the outcome (age in weeks:
:class:`GrafAlphaThreshold`, 50 deg before 12 weeks and 60 after); each guarantee above then
holds with ``t(c)`` in place of the fixed threshold, since a missed finding still needs
``y < t(c) <= LB``.

Fail-safe: a case whose bound is NaN or infinite for any measurement the rule reads (a NaN
prediction, or a delta too small for the calibration set) is referred, never passed.
"""

from skddh.policy._controlled import ConformalSelectionPolicy, RiskControlledPolicy
from skddh.policy._policy import SelectiveImagingPolicy
from skddh.policy._policy_cv import SelectiveImagingPolicyCV
from skddh.policy._rules import (
    DEFAULT_THRESHOLDS,
    RULES,
    apply_rule,
    rule_margin,
    rule_measurements,
)
from skddh.policy._thresholds import GrafAlphaThreshold, resolve_thresholds

__all__ = [
    "ConformalSelectionPolicy",
    "DEFAULT_THRESHOLDS",
    "GrafAlphaThreshold",
    "RULES",
    "RiskControlledPolicy",
    "SelectiveImagingPolicy",
    "SelectiveImagingPolicyCV",
    "apply_rule",
    "rule_margin",
    "resolve_thresholds",
    "rule_measurements",
]
