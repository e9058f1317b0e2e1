"""What a selective imaging policy costs and what its bounds deliver: pure functions on arrays.

A policy *passes* a hip (ultrasound suffices) or *refers* it to X-ray. A *missed finding* is a
passed hip that is truly abnormal. With radiation cost ``lambda`` per X-ray and penalty ``mu``
per missed finding, the decision utility of a policy per hip is (DESIGN.md; the DDH paper,
arXiv 2511.18457)::

    utility = -lambda * xray_rate - mu * missed_rate

Net benefit is the decision-curve-analysis form of the same quantity (Vickers & Elkin 2006),
with "refer to X-ray" as the intervention, "truly abnormal" as the outcome and threshold
probability ``pt = lambda / mu``: ``NB = TP / n - FP / n * pt / (1 - pt)``. It satisfies
``NB * (mu - lambda) = utility(policy) - utility(ultrasound for everyone)``.

Every function takes an optional ``sample_weight`` and returns a plain float (or a Series per
target for :func:`coverage`).
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

__all__ = [
    "coverage",
    "pass_rate",
    "xray_rate",
    "missed_rate",
    "utility",
    "net_benefit",
    "decision_curve",
    "make_policy_scorer",
]


def _flags(values, name: str) -> np.ndarray:
    """A 0/1 or boolean vector, NaN-free, as bool."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}.")
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold 0/1 or booleans, got dtype {arr.dtype}.")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must hold only 0/1, got {arr[row].item()!r} at row {row}.")
    return arr.astype(bool)


def _mean(flags: np.ndarray, sample_weight) -> float:
    if len(flags) == 0:
        raise ValueError("cannot rate an empty set of cases.")
    if sample_weight is None:
        return float(np.mean(flags))
    w = np.asarray(sample_weight, dtype=float)
    if w.shape != flags.shape:
        raise ValueError(f"sample_weight has shape {w.shape}, expected {flags.shape}.")
    return float(np.average(flags, weights=w))


def _pair(passed, abnormal):
    p = _flags(passed, "passed")
    a = _flags(abnormal, "abnormal")
    if p.shape != a.shape:
        raise ValueError(f"passed has {len(p)} cases but abnormal has {len(a)}.")
    return p, a


def _costs(radiation_cost, miss_penalty):
    for name, v in (("radiation_cost", radiation_cost), ("miss_penalty", miss_penalty)):
        if not isinstance(v, Real) or not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}.")


def coverage(
    y_true: ArrayLike,
    lower: ArrayLike,
    sample_weight: ArrayLike | None = None,
    *,
    groups: ArrayLike | None = None,
    per_subject: str = "all",
) -> float | pd.Series:
    """Empirical coverage ``mean(y >= LB)``, per target; per subject when ``groups`` are given.

    Parameters
    ----------
    y_true : array-like of shape (n,) or (n, n_targets), or DataFrame
    lower : array-like of the same shape
        Lower bounds (``-inf`` covers everything).
    sample_weight : array-like of shape (n,), default=None
        Per image; not allowed with ``groups``.
    groups : array-like of shape (n,), default=None
        Subject ids. Then each subject counts once: with ``per_subject="all"`` the share of
        subjects whose every image is covered (what ``calibration_unit="subject-max"`` and
        CV+ promise), with ``"mean"`` the mean over subjects of the share of their images
        covered (a random image per subject: what ``"subject-subsample"`` promises).
    per_subject : {"all", "mean"}, default="all"

    Returns
    -------
    float, or Series indexed by target when ``y_true`` is 2-D.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.metrics import coverage
    >>> coverage(np.array([60.0, 55.0, 70.0, 64.0]), np.array([58.0, 57.0, 61.0, -np.inf]))
    0.75
    """
    names = y_true.columns if isinstance(y_true, pd.DataFrame) else None
    y = np.asarray(y_true, dtype=float)
    lb = np.asarray(lower, dtype=float)
    if y.shape != lb.shape:
        raise ValueError(f"y_true has shape {y.shape} but lower has shape {lb.shape}.")
    if np.isnan(y).any() or np.isnan(lb).any():
        raise ValueError("y_true and lower must not hold NaN.")
    hit = y >= lb
    if groups is not None:
        hit = _per_subject(hit, groups, per_subject, sample_weight)
    if y.ndim == 1:
        return _mean(hit, sample_weight if groups is None else None)
    names = names if names is not None else [f"y{j}" for j in range(y.shape[1])]
    return pd.Series(
        [_mean(hit[:, j], sample_weight if groups is None else None) for j in range(y.shape[1])],
        index=names,
        name="coverage",
    )


def _per_subject(hit, groups, how, sample_weight):
    """Image hits (n, ...) -> one value per subject: all covered, or the covered share."""
    if sample_weight is not None:
        raise ValueError("coverage: sample_weight and groups cannot be combined.")
    if how not in ("all", "mean"):
        raise ValueError(f"per_subject must be 'all' or 'mean', got {how!r}.")
    g = np.asarray(groups)
    if g.shape != hit.shape[:1]:
        raise ValueError(f"groups has shape {g.shape}; y_true has {hit.shape[0]} rows.")
    _, codes = np.unique(g, return_inverse=True)
    counts = np.bincount(codes).reshape((-1,) + (1,) * (hit.ndim - 1))
    covered = np.zeros((counts.shape[0],) + hit.shape[1:])
    np.add.at(covered, codes, hit)
    return covered == counts if how == "all" else covered / counts


def pass_rate(passed: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
    """Share of hips for which ultrasound suffices.

    Examples
    --------
    >>> from skddh.metrics import pass_rate
    >>> pass_rate([1, 0, 0, 1])
    0.5
    """
    return _mean(_flags(passed, "passed"), sample_weight)


def xray_rate(passed: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
    """Share of hips referred to X-ray: ``1 - pass_rate``.

    Examples
    --------
    >>> from skddh.metrics import xray_rate
    >>> xray_rate([1, 0, 0, 0])
    0.75
    """
    return _mean(~_flags(passed, "passed"), sample_weight)


def missed_rate(
    passed: ArrayLike, abnormal: ArrayLike, sample_weight: ArrayLike | None = None
) -> float:
    """Share of all hips that were passed on ultrasound yet are truly abnormal.

    Examples
    --------
    >>> from skddh.metrics import missed_rate
    >>> missed_rate(passed=[1, 1, 0, 0], abnormal=[0, 1, 1, 0])
    0.25
    """
    p, a = _pair(passed, abnormal)
    return _mean(p & a, sample_weight)


def utility(
    passed: ArrayLike,
    abnormal: ArrayLike,
    *,
    radiation_cost: float = 1.0,
    miss_penalty: float = 10.0,
    sample_weight: ArrayLike | None = None,
) -> float:
    """Decision utility per hip: ``-lambda * xray_rate - mu * missed_rate`` (higher is better).

    Parameters
    ----------
    passed : array-like of 0/1 or bool
        1 = ultrasound suffices, 0 = referred to X-ray.
    abnormal : array-like of 0/1 or bool
        1 = the hip is truly abnormal (a finding an X-ray would show).
    radiation_cost : float, default=1.0
        ``lambda``, the cost of one X-ray.
    miss_penalty : float, default=10.0
        ``mu``, the cost of one missed finding.
    sample_weight : array-like, default=None

    Examples
    --------
    >>> from skddh.metrics import utility
    >>> utility([1, 1, 0, 0], [0, 1, 1, 0], radiation_cost=1.0, miss_penalty=10.0)
    -3.0
    """
    _costs(radiation_cost, miss_penalty)
    p, a = _pair(passed, abnormal)
    return -radiation_cost * _mean(~p, sample_weight) - miss_penalty * _mean(p & a, sample_weight)


def net_benefit(
    passed: ArrayLike,
    abnormal: ArrayLike,
    *,
    radiation_cost: float = 1.0,
    miss_penalty: float = 10.0,
    sample_weight: ArrayLike | None = None,
) -> float:
    """Net benefit of referring to X-ray as the policy does (decision curve analysis).

    ``NB = TP / n - FP / n * pt / (1 - pt)`` with ``pt = lambda / mu``, where a true positive
    is a referred abnormal hip and a false positive a referred normal hip. Requires
    ``miss_penalty > radiation_cost`` (otherwise referring never pays and ``pt >= 1``).

    Examples
    --------
    >>> from skddh.metrics import net_benefit
    >>> net_benefit([1, 1, 0, 0], [0, 1, 1, 0], radiation_cost=1.0, miss_penalty=5.0)
    0.1875
    """
    _costs(radiation_cost, miss_penalty)
    if not miss_penalty > radiation_cost:
        raise ValueError(
            f"net benefit needs miss_penalty > radiation_cost, got {miss_penalty!r} <= "
            f"{radiation_cost!r}."
        )
    p, a = _pair(passed, abnormal)
    pt = radiation_cost / miss_penalty
    tp = _mean(~p & a, sample_weight)
    fp = _mean(~p & ~a, sample_weight)
    return tp - fp * pt / (1 - pt)


def decision_curve(
    passed: ArrayLike,
    abnormal: ArrayLike,
    radiation_costs: ArrayLike | None = None,
    *,
    miss_penalty: float = 1.0,
) -> pd.DataFrame:
    """Utility against radiation cost for a policy and the two reference strategies.

    Parameters
    ----------
    passed, abnormal : array-like of 0/1 or bool
    radiation_costs : array-like, default=None
        Grid of ``lambda``; default 51 points in ``[0, miss_penalty]``.
    miss_penalty : float, default=1.0
        ``mu``; the curve depends on ``lambda / mu`` only, up to scale.

    Returns
    -------
    DataFrame
        Columns ``radiation_cost``, ``policy``, ``xray_everyone``, ``ultrasound_only``.

    Examples
    --------
    >>> from skddh.metrics import decision_curve
    >>> curve = decision_curve([1, 1, 0, 0], [0, 1, 1, 0], [0.0, 0.5, 1.0])
    >>> curve.round(3).to_numpy().tolist()
    [[0.0, -0.25, 0.0, -0.5], [0.5, -0.5, -0.5, -0.5], [1.0, -0.75, -1.0, -0.5]]
    """
    p, a = _pair(passed, abnormal)
    if radiation_costs is None:
        radiation_costs = np.linspace(0.0, miss_penalty, 51)
    lam = np.asarray(radiation_costs, dtype=float)
    if lam.ndim != 1 or not np.isfinite(lam).all() or (lam < 0).any():
        raise ValueError("radiation_costs must be a 1-D grid of finite numbers >= 0.")
    _costs(0.0, miss_penalty)
    refer, missed, prevalence = float(np.mean(~p)), float(np.mean(p & a)), float(np.mean(a))
    return pd.DataFrame(
        {
            "radiation_cost": lam,
            "policy": -lam * refer - miss_penalty * missed,
            "xray_everyone": 0.0 - lam,
            "ultrasound_only": np.full_like(lam, -miss_penalty * prevalence),
        }
    )


class _PolicyScorer:
    """Scorer ``(estimator, X, y) -> utility`` for model selection (picklable)."""

    def __init__(self, radiation_cost, miss_penalty, kind):
        self.radiation_cost = radiation_cost
        self.miss_penalty = miss_penalty
        self.kind = kind

    def __call__(self, estimator, X, y, sample_weight=None):
        passed = estimator.predict(X)
        abnormal = estimator.abnormal(y)
        fn = utility if self.kind == "utility" else net_benefit
        return fn(
            passed,
            abnormal,
            radiation_cost=self.radiation_cost,
            miss_penalty=self.miss_penalty,
            sample_weight=sample_weight,
        )

    def __repr__(self):
        return (
            f"make_policy_scorer(radiation_cost={self.radiation_cost!r}, "
            f"miss_penalty={self.miss_penalty!r}, kind={self.kind!r})"
        )


def make_policy_scorer(
    radiation_cost: float = 1.0, miss_penalty: float = 10.0, *, kind: str = "utility"
):
    """A scorer for ``GridSearchCV`` / ``cross_validate`` over selective imaging policies.

    It calls ``estimator.predict(X)`` and ``estimator.abnormal(y)`` (the policy's definition of
    a true finding) and returns :func:`utility` (or :func:`net_benefit`; both are "greater is
    better" and pick the same policy on a fixed fold).

    Parameters
    ----------
    radiation_cost : float, default=1.0
    miss_penalty : float, default=10.0
    kind : {"utility", "net_benefit"}, default="utility"

    Examples
    --------
    >>> from skddh.metrics import make_policy_scorer
    >>> make_policy_scorer(radiation_cost=1.0, miss_penalty=20.0)
    make_policy_scorer(radiation_cost=1.0, miss_penalty=20.0, kind='utility')
    """
    _costs(radiation_cost, miss_penalty)
    if kind not in ("utility", "net_benefit"):
        raise ValueError(f"kind must be 'utility' or 'net_benefit', got {kind!r}.")
    return _PolicyScorer(radiation_cost, miss_penalty, kind)
