"""The study's headline: how many hips the rules pass on ultrasound, and what they miss.

Two rules of the study's policy evaluation: the alpha-only rule at delta = 0.10 (pass when
``LB_alpha >= 60``) and the AND rule at 0.10 / 0.10 (pass when ``LB_alpha >= 60`` and
``LB_coverage >= 50``). For each, on the matched test pairs: the share of hips passed on
ultrasound, the share of all hips passed yet truly abnormal (and of the passed hips), and the
oracle's share, the hips an exact measurement would pass, for scale.

"Truly abnormal" is the rule's own criterion on the hip's true (latent) values: alpha < 60 for
the alpha rule, alpha < 60 or coverage < 50 for the AND rule. What the rules target
(DESIGN.md, statistical notes) is a joint miss rate, ``P(pass and alpha < 60) <= delta_alpha``
and at most ``delta_alpha + delta_coverage`` for AND, for the measurement the bounds are
calibrated on and with an exact calibration: ``target_miss_bound`` is that number, a reference
for ``missed_of_all``. Neither rule bounds ``missed_of_passed``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from skddh.metrics import missed_rate, pass_rate
from skddh.policy import DEFAULT_THRESHOLDS

__all__ = ["HEADLINE_POLICIES", "headline_figure", "headline_table", "policy_key"]

#: The headline's rules: (rule, delta_alpha, delta_coverage), as in the study's policy grid.
HEADLINE_POLICIES = (("alpha", 0.10, 0.10), ("and", 0.10, 0.10))

_LABELS = {"alpha": "alpha-only", "and": "AND", "or": "OR"}


def policy_key(rule: str, delta_alpha: float, delta_coverage: float) -> str:
    """The key of a policy in ``StudyResult.passed``: ``"alpha 0.10/0.10"``.

    Examples
    --------
    >>> from skddh.studies.headline import policy_key
    >>> policy_key("and", 0.1, 0.35)
    'and 0.10/0.35'
    """
    return f"{rule} {delta_alpha:.2f}/{delta_coverage:.2f}"


def _label(rule: str, delta_alpha: float, delta_coverage: float) -> str:
    if rule == "alpha":
        return f"alpha-only, delta {delta_alpha:.2f}"
    return f"{_LABELS[rule]}, delta {delta_alpha:.2f}/{delta_coverage:.2f}"


def headline_table(
    passed: Mapping[str, ArrayLike],
    alpha_true: ArrayLike,
    coverage_true: ArrayLike,
    *,
    thresholds: Mapping[str, float] | None = None,
    policies: Sequence[tuple[str, float, float]] = HEADLINE_POLICIES,
) -> pd.DataFrame:
    """Hips passed with a guarantee: one row per rule (see the module docstring).

    Parameters
    ----------
    passed : mapping of str to array-like of bool
        The pass decision per test hip for each policy, keyed by :func:`policy_key`
        (``StudyResult.passed``).
    alpha_true, coverage_true : array-like of shape (n_hips,)
        The test hips' true alpha (degrees) and coverage (percent).
    thresholds : mapping, default=None
        ``{"alpha": 60.0, "coverage": 50.0}`` (:data:`skddh.policy.DEFAULT_THRESHOLDS`)
        when None.
    policies : sequence of (rule, delta_alpha, delta_coverage), default=HEADLINE_POLICIES
        Rules ``"alpha"`` or ``"and"``: the two whose joint miss rate has a target.

    Returns
    -------
    DataFrame
        Indexed by ``policy`` (a readable label), with columns ``rule``, ``delta_alpha``,
        ``delta_coverage``, ``n_hips``, ``passed`` (share of hips passed on ultrasound),
        ``missed_of_all`` (passed and truly abnormal, over all hips), ``missed_of_passed``
        (the same over the passed hips; NaN when none is passed), ``oracle`` (share of hips
        truly normal by the rule's criterion) and ``target_miss_bound`` (delta_alpha, or
        delta_alpha + delta_coverage for AND).

    Examples
    --------
    >>> from skddh.studies.headline import headline_table
    >>> passed = {"alpha 0.10/0.10": [1, 1, 0, 0], "and 0.10/0.10": [1, 0, 0, 0]}
    >>> table = headline_table(passed, [70, 55, 65, 50], [60, 60, 40, 60])
    >>> list(table.index)
    ['alpha-only, delta 0.10', 'AND, delta 0.10/0.10']
    >>> table[["passed", "missed_of_all", "missed_of_passed", "oracle"]].to_numpy().tolist()
    [[0.5, 0.25, 0.5, 0.5], [0.25, 0.0, 0.0, 0.25]]
    """
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    alpha = np.asarray(alpha_true, dtype=float)
    cov = np.asarray(coverage_true, dtype=float)
    rows = []
    for rule, d_a, d_c in policies:
        if rule == "alpha":
            normal = alpha >= thresholds["alpha"]
            bound = d_a
        elif rule == "and":
            normal = (alpha >= thresholds["alpha"]) & (cov >= thresholds["coverage"])
            bound = d_a + d_c
        else:
            raise ValueError(f"the headline's rules are 'alpha' and 'and', not {rule!r}")
        p = np.asarray(passed[policy_key(rule, d_a, d_c)], dtype=bool)
        if p.shape != normal.shape:
            raise ValueError(f"{p.shape[0]} decisions for {normal.shape[0]} hips ({rule!r})")
        n_passed = int(p.sum())
        missed = missed_rate(p, ~normal)
        rows.append(
            {
                "policy": _label(rule, d_a, d_c),
                "rule": rule,
                "delta_alpha": d_a,
                "delta_coverage": d_c,
                "n_hips": len(p),
                "passed": pass_rate(p),
                "missed_of_all": missed,
                "missed_of_passed": float((p & ~normal).sum() / n_passed) if n_passed else np.nan,
                "oracle": float(np.mean(normal)),
                "target_miss_bound": bound,
            }
        )
    return pd.DataFrame(rows).set_index("policy")


def headline_figure(
    labels: Sequence[str],
    passed: ArrayLike,
    oracle: ArrayLike,
    missed_of_all: ArrayLike,
    missed_of_passed: ArrayLike,
    *,
    passed_range: tuple[ArrayLike, ArrayLike] | None = None,
    oracle_range: tuple[ArrayLike, ArrayLike] | None = None,
    title: str = "Hips passed on ultrasound",
):
    """Bars: passed vs oracle share per rule, each rule's miss rates written above its bars.

    Parameters
    ----------
    labels : sequence of str
        One label per rule.
    passed, oracle, missed_of_all, missed_of_passed : array-like of shape (n_rules,)
        The shares (over seeds: their means).
    passed_range, oracle_range : (low, high) of array-like, default=None
        Error bars from ``low`` to ``high`` (over seeds: min and max); none when None.
    title : str, default="Hips passed on ultrasound"

    Returns
    -------
    matplotlib.figure.Figure
        Close it (``plt.close(fig)``) once saved.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    passed, oracle = np.asarray(passed, float), np.asarray(oracle, float)
    x = np.arange(len(labels))
    width = 0.38

    def yerr(mean, rng):
        if rng is None:
            return None
        low, high = (np.asarray(v, float) for v in rng)
        return np.vstack([mean - low, high - mean])

    passed_err, oracle_err = yerr(passed, passed_range), yerr(oracle, oracle_range)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    bar = dict(width=width, capsize=4)
    ax.bar(x - width / 2, passed, yerr=passed_err, label="passed by the rule", **bar)
    ax.bar(x + width / 2, oracle, yerr=oracle_err, label="oracle (truly normal)", **bar)
    top = np.maximum(
        passed + (0 if passed_err is None else passed_err[1]),
        oracle + (0 if oracle_err is None else oracle_err[1]),
    )
    for i, (m_all, m_passed) in enumerate(zip(missed_of_all, missed_of_passed)):
        of_passed = "none passed" if not np.isfinite(m_passed) else f"{m_passed:.1%} of passed"
        ax.annotate(
            f"missed: {m_all:.1%} of all, {of_passed}",
            (x[i], top[i]),
            xytext=(0, 6),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1.3)
    ax.set_ylabel("share of test hips")
    ax.set_title(title)
    ax.legend(loc="upper center", ncols=2, fontsize=8)
    fig.tight_layout()
    return fig
