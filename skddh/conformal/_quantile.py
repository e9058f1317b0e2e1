"""Pure finite-sample functions of one-sided conformal lower bounds (no estimator here).

:func:`one_sided_quantile`, :func:`lower_bound` and :func:`fit_affine` work on arrays of
scores; the estimators in this subpackage are thin shells around them. The guarantee and its
conditions are stated in :mod:`skddh.conformal`.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def _exact_k(n: int, delta: float) -> int:
    """k = ceil((n + 1)(1 - delta)) in exact arithmetic.

    ``(n + 1)(1 - delta)`` is often an integer in decimal terms (n = 19, delta = 0.05) but not
    in floating point; the delta a user typed is recovered as a fraction with a denominator
    below 10**9 so that k is the intended order statistic.
    """
    exact = Fraction(float(delta))  # float(): numpy scalars too
    frac = exact.limit_denominator(10**9)
    if not 0 < frac < 1:  # a delta within 1e-9 of 0 or 1: keep it as the float it is
        frac = exact
    return math.ceil((n + 1) * (1 - frac))


def smallest_delta(n: int) -> float:
    """Smallest miscoverage with a finite one-sided bound from ``n`` calibration cases: 1/(n+1).

    Examples
    --------
    >>> from skddh.conformal import smallest_delta
    >>> smallest_delta(7)
    0.125
    """
    return 1.0 / (n + 1)


def one_sided_quantile(scores, delta: float) -> np.ndarray:
    """Finite-sample conformal quantile of over-prediction scores ``s = y_tilde - y``.

    ``q+ = s_(k)``, the k-th smallest score, with ``k = ceil((n + 1)(1 - delta))``, and
    ``q+ = +inf`` when ``k > n``. Then ``LB = y_tilde - q+`` satisfies
    ``P(y >= LB) >= 1 - delta`` under exchangeability. Mind the sign: the upper tail of
    ``y_tilde - y``, not of ``y - y_tilde`` (that one gives an *upper* bound's radius).

    Parameters
    ----------
    scores : array-like of shape (n,) or (n, n_targets)
        Over-prediction scores on the calibration cases, NaN-free.
    delta : float in (0, 1)
        Miscoverage.

    Returns
    -------
    ndarray of shape () or (n_targets,)

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import one_sided_quantile
    >>> float(one_sided_quantile(np.arange(1.0, 10.0), 0.1))  # n=9, k=ceil(10*0.9)=9
    9.0
    >>> float(one_sided_quantile(np.arange(1.0, 10.0), 0.05))  # k=10 > n: no finite bound
    inf
    """
    s = np.asarray(scores, dtype=float)
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}.")
    n = s.shape[0]
    k = _exact_k(n, delta)
    if k > n:
        return np.full(s.shape[1:], np.inf)
    return np.sort(s, axis=0)[k - 1]


def lower_bound(y_tilde, scores, delta: float) -> np.ndarray:
    """``LB = y_tilde - q+(delta)``; ``-inf`` where the calibration set is too small.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import lower_bound
    >>> lower_bound(np.array([60.0, 70.0]), np.arange(1.0, 10.0), 0.2)  # k=8
    array([52., 62.])
    """
    return np.asarray(y_tilde, dtype=float) - one_sided_quantile(scores, delta)


def fit_affine(y_pred, y_true) -> tuple[np.ndarray, np.ndarray]:
    """Per-target least-squares bias correction ``y ~ a * y_pred + b``.

    A target whose predictions are constant gets ``a = 1`` and ``b = mean(y - y_pred)``
    (the slope is not identifiable).

    Returns
    -------
    a, b : ndarray of shape (n_targets,)

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import fit_affine
    >>> a, b = fit_affine(np.array([[1.0], [2.0], [3.0]]), np.array([[3.0], [5.0], [7.0]]))
    >>> a.round(6), b.round(6)
    (array([2.]), array([1.]))
    """
    p = np.asarray(y_pred, dtype=float)
    y = np.asarray(y_true, dtype=float)
    p = p.reshape(len(p), -1)
    y = y.reshape(len(y), -1)
    pm, ym = p.mean(0), y.mean(0)
    var = ((p - pm) ** 2).sum(0)
    cov = ((p - pm) * (y - ym)).sum(0)
    degenerate = var <= 1e-12 * np.maximum(1.0, (p**2).sum(0))
    a = np.where(degenerate, 1.0, cov / np.where(degenerate, 1.0, var))
    b = ym - a * pm
    return a, b
