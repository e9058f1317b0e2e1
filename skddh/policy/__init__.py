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

Fail-safe: a case whose bound is NaN or infinite for any measurement the rule reads (a NaN
prediction, or a delta too small for the calibration set) is referred, never passed.
"""

from skddh.policy._policy import SelectiveImagingPolicy
from skddh.policy._policy_cv import SelectiveImagingPolicyCV
from skddh.policy._rules import (
    DEFAULT_THRESHOLDS,
    RULES,
    apply_rule,
    rule_margin,
    rule_measurements,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "RULES",
    "SelectiveImagingPolicy",
    "SelectiveImagingPolicyCV",
    "apply_rule",
    "rule_margin",
    "rule_measurements",
]
