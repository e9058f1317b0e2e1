"""The selective imaging rules as small pure functions on lower bounds.

What each rule guarantees is stated in :mod:`skddh.policy`.
"""

from __future__ import annotations

import numpy as np

RULES = ("alpha", "or", "and")
DEFAULT_THRESHOLDS = {"alpha": 60.0, "coverage": 50.0}
#: What a measurement can physically be (deg, or % for coverage). A lower bound above the
#: maximum is no bound at all but a broken model (corrupted weights, an image far outside the
#: training range): the case is referred, never passed.
PHYSICAL_RANGES = {
    "alpha": (0.0, 90.0),
    "beta": (0.0, 180.0),
    "coverage": (0.0, 100.0),
    "ai": (0.0, 90.0),
    "ce": (-90.0, 90.0),
}


def rule_measurements(rule: str, thresholds: dict) -> list[str]:
    """The measurements a rule reads: ``["alpha"]`` for ``"alpha"``, else all thresholded.

    Examples
    --------
    >>> from skddh.policy import rule_measurements
    >>> rule_measurements("or", {"alpha": 60.0, "coverage": 50.0})
    ['alpha', 'coverage']
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
    if not thresholds:
        raise ValueError("thresholds must name at least one measurement.")
    if rule == "alpha":
        if "alpha" not in thresholds:
            raise ValueError(
                f"rule='alpha' needs a threshold for 'alpha'; thresholds name {list(thresholds)}."
            )
        return ["alpha"]
    return list(thresholds)


def rule_margin(lower, thresholds: dict, rule: str) -> np.ndarray:
    """Margin of the lower bounds over their thresholds under a rule; pass when ``>= 0``.

    ``alpha``: ``LB_alpha - t_alpha``; ``and``: the smallest margin; ``or``: the largest.
    Fail-safe: a case with a non-finite bound on any measurement the rule reads, or a bound
    above that measurement's physical maximum (:data:`PHYSICAL_RANGES`), gets ``-inf``
    (referred).

    Parameters
    ----------
    lower : DataFrame or mapping of name -> array of shape (n,)
        Lower bounds per measurement.
    thresholds : dict
        Measurement name -> clinical threshold: a number, or an array of shape (n,) with one
        threshold per case (see :func:`resolve_thresholds`).
    rule : {"alpha", "or", "and"}

    Returns
    -------
    ndarray of shape (n,)

    Examples
    --------
    >>> import pandas as pd
    >>> from skddh.policy import rule_margin
    >>> lb = pd.DataFrame({"alpha": [62.0, 58.0, float("nan")], "coverage": [45.0, 55.0, 60.0]})
    >>> rule_margin(lb, {"alpha": 60.0, "coverage": 50.0}, "or")
    array([  2.,   5., -inf])
    >>> rule_margin(lb, {"alpha": 60.0, "coverage": 50.0}, "and")
    array([ -5.,  -2., -inf])
    >>> rule_margin({"alpha": [75.0, 1e20]}, {"alpha": 60.0}, "alpha")  # 1e20 deg: broken
    array([ 15., -inf])
    """
    cols = rule_measurements(rule, thresholds)
    missing = [c for c in cols if c not in lower]
    if missing:
        raise ValueError(f"lower bounds lack measurement(s) {missing} that rule {rule!r} reads.")
    lb = np.column_stack([np.asarray(lower[c], dtype=float) for c in cols])
    top = np.array([PHYSICAL_RANGES.get(c, (-np.inf, np.inf))[1] for c in cols])
    thr = [np.asarray(thresholds[c], dtype=float) for c in cols]
    bad = [c for c, t in zip(cols, thr) if t.ndim > 1 or (t.ndim == 1 and len(t) != len(lb))]
    if bad:
        raise ValueError(
            f"thresholds for {bad} must be a number or one value per case ({len(lb)} cases)."
        )
    m = lb - np.column_stack([np.broadcast_to(t, (len(lb),)) for t in thr])
    combined = m.max(axis=1) if rule == "or" else m.min(axis=1)
    sound = np.isfinite(lb).all(axis=1) & (lb <= top).all(axis=1)
    return np.where(sound, combined, -np.inf)


def apply_rule(lower, thresholds: dict, rule: str) -> np.ndarray:
    """Boolean pass decisions: ``rule_margin(...) >= 0``.

    Examples
    --------
    >>> from skddh.policy import apply_rule
    >>> apply_rule({"alpha": [61.0, 59.0]}, {"alpha": 60.0}, "alpha")
    array([ True, False])
    """
    return rule_margin(lower, thresholds, rule) >= 0
