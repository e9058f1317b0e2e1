"""Agreement between a regression and a reference method: Bland-Altman and friends.

Written for the BMD study (predicted BMD against DEXA BMD), but nothing here knows about
bone: each function takes a reference ``y_true`` and a prediction ``y_pred`` as 1-D arrays.

Sign convention: a *difference* is ``d = y_pred - y_true``, so a positive ``bias`` means the
prediction reads high against the reference.

:func:`bland_altman` gives the mean difference (bias), the limits of agreement
``bias -+ z * sd`` (``z = 1.96`` for 95 % limits) and confidence intervals for all three
(Bland & Altman 1999), plus a check for proportional bias (the slope of the differences on
the pair means). :func:`regression_agreement` puts the usual one-row summary together: Pearson's
``r`` with its confidence interval, MAE, RMSE, bias, limits of agreement and Lin's concordance
correlation coefficient (Lin 1989).

The limits of agreement describe where about ``agreement_level`` of *individual* differences
fall, and assume the differences are roughly normal with a constant spread across the range
of the measurement; check the Bland-Altman plot (:class:`skddh.plotting.BlandAltmanDisplay`)
before trusting them. The intervals treat the pairs as independent: with several images per
subject, summarise per subject first.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from numbers import Real

import numpy as np
from numpy.typing import ArrayLike
from scipy import special, stats

__all__ = [
    "BlandAltmanResult",
    "bland_altman",
    "concordance_correlation_coefficient",
    "regression_agreement",
]

_MIN_PAIRS = 3


def _vector(values, name: str) -> np.ndarray:
    """A finite 1-D float vector (a single column is flattened)."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}.")
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must be finite, got {float(arr[row])!r} at row {row} "
            f"({int(bad.sum())} non-finite value(s) in all)."
        )
    return arr


def _pairs(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = _vector(y_true, "y_true")
    p = _vector(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {len(t)} values but y_pred has {len(p)}.")
    if len(t) < _MIN_PAIRS:
        raise ValueError(f"need at least {_MIN_PAIRS} pairs of y_true and y_pred, got {len(t)}.")
    return t, p


def _level(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class BlandAltmanResult:
    """What :func:`bland_altman` returns (all differences are ``y_pred - y_true``).

    Attributes
    ----------
    n : int
        Number of pairs.
    bias : float
        Mean difference ``mean(y_pred - y_true)``; positive when the prediction reads high.
    sd : float
        Standard deviation of the differences (``ddof=1``).
    loa_low, loa_high : float
        Limits of agreement ``bias -+ multiplier * sd``.
    multiplier : float
        ``norm.ppf((1 + agreement_level) / 2)``: 1.959964 for 95 % limits.
    bias_ci, loa_low_ci, loa_high_ci : tuple of float
        ``(low, high)`` confidence intervals at ``confidence_level``.
    agreement_level : float
        Share of individual differences the limits aim to contain.
    confidence_level : float
        Level of the three confidence intervals.
    ci_method : str
        ``"approximate"`` (Bland & Altman 1999) or ``"exact"`` (non-central t).
    slope, intercept : float
        Least-squares line of the differences on the pair means ``(y_true + y_pred) / 2``.
        A slope far from 0 suggests proportional bias (NaN when the means are all equal).
    slope_pvalue : float
        Two-sided p-value of ``slope = 0`` (as ``scipy.stats.linregress`` gives it).
    """

    n: int
    bias: float
    sd: float
    loa_low: float
    loa_high: float
    multiplier: float
    bias_ci: tuple[float, float]
    loa_low_ci: tuple[float, float]
    loa_high_ci: tuple[float, float]
    agreement_level: float
    confidence_level: float
    ci_method: str
    slope: float
    intercept: float
    slope_pvalue: float


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Slope, intercept and two-sided slope p-value of least squares of ``y`` on ``x``.

    The numbers of ``scipy.stats.linregress`` (the tests hold them equal), without its
    per-call overhead, several times the arithmetic at these sizes and felt in simulation
    loops. NaN when ``x`` is constant.
    """
    xc, yc = x - x.mean(), y - y.mean()
    sxx = float(xc @ xc)
    if sxx == 0:
        return (float("nan"),) * 3
    slope = float(xc @ yc) / sxx
    intercept = float(y.mean() - slope * x.mean())
    df = len(x) - 2
    rss = max(float(yc @ yc) - slope**2 * sxx, 0.0)
    se = np.sqrt(rss / df / sxx) if df > 0 else float("nan")
    if se == 0:
        pvalue = 0.0 if slope != 0 else 1.0
    else:
        pvalue = float(2.0 * special.stdtr(df, -abs(slope) / se))
    return slope, intercept, pvalue


def _limit_ci(bias, sd, n, z, t_q, confidence_level, method, sign):
    """CI of ``bias + sign * z * sd``: the limit of agreement on that side."""
    limit = bias + sign * z * sd
    if method == "approximate":
        # Var(d_bar + z s) ~ s^2 / n + z^2 s^2 / (2 (n - 1)); ~ 3 s^2 / n for z = 1.96.
        half = t_q * sd * np.sqrt(1.0 / n + z**2 / (2.0 * (n - 1)))
        return (float(limit - half), float(limit + half))
    # sqrt(n) (theta - d_bar) / s is non-central t(n - 1, z sqrt(n)) for theta = mu + z sigma.
    a = (1.0 - confidence_level) / 2.0
    k_lo, k_hi = special.nctdtrit(n - 1, z * np.sqrt(n), [a, 1.0 - a]) / np.sqrt(n)
    if sign > 0:
        return (float(bias + k_lo * sd), float(bias + k_hi * sd))
    return (float(bias - k_hi * sd), float(bias - k_lo * sd))


def bland_altman(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    agreement_level: float = 0.95,
    confidence_level: float = 0.95,
    ci_method: str = "approximate",
) -> BlandAltmanResult:
    """Bias, limits of agreement and their confidence intervals (Bland & Altman 1999).

    With differences ``d = y_pred - y_true`` (mean ``bias``, standard deviation ``sd`` with
    ``ddof=1``) and ``z = norm.ppf((1 + agreement_level) / 2)``:

    - limits of agreement: ``bias -+ z * sd`` (``z = 1.96`` for 95 % limits);
    - CI of the bias: ``bias -+ t * sd / sqrt(n)``, with ``t`` the ``(1 + confidence_level)
      / 2`` quantile of Student's t on ``n - 1`` degrees of freedom;
    - CI of each limit, ``ci_method="approximate"``: ``limit -+ t * SE`` with
      ``SE = sd * sqrt(1 / n + z**2 / (2 * (n - 1)))``, Bland & Altman's standard error
      before they round it to ``sqrt(3 * sd**2 / n)`` for ``z = 1.96``
      (``1 + 1.96**2 / 2 = 2.92``); it under-covers a little at small ``n``;
      ``ci_method="exact"``: the exact interval for a normal quantile ``mu + z * sigma``
      from the non-central t distribution (Carkeet 2015), better for small ``n``.
    - proportional bias: least squares of ``d`` on the pair means, with the slope's
      two-sided t test (the numbers of ``scipy.stats.linregress``). A slope can
      also come from the two methods having different spreads (Bland & Altman 1999),
      so read it as a prompt to look at the plot, not as proof.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Reference measurements (e.g. DEXA BMD).
    y_pred : array-like of shape (n,)
        Predicted (or new-method) measurements.
    agreement_level : float, default=0.95
        Share of individual differences the limits aim to contain.
    confidence_level : float, default=0.95
        Level of the confidence intervals for the bias and the limits.
    ci_method : {"approximate", "exact"}, default="approximate"
        How the limits' confidence intervals are made (see above). The bias CI is the exact
        t interval either way.

    Returns
    -------
    BlandAltmanResult

    Raises
    ------
    ValueError
        When ``y_true`` and ``y_pred`` differ in length, hold NaN or inf, are not 1-D, or give
        fewer than 3 pairs; when a level is not in (0, 1).

    Notes
    -----
    There is no ``sample_weight``: the intervals rest on ``n`` independent pairs, and
    weights would need an effective sample size that this function cannot guess. With
    several measurements per subject, average them per subject first (or see Bland &
    Altman 1999 on repeated measurements).

    The limits are estimates: on average they contain a share
    ``P(|T| <= z / sqrt(1 + 1 / n))`` of new differences (``T`` Student's t on ``n - 1``
    degrees of freedom), below ``agreement_level`` for small samples (0.936 at ``n = 30``,
    0.946 at ``n = 100`` for 95 % limits). The intervals for the limits say how far they may
    be from the population's.

    When every difference is the same, ``sd = 0`` and all limits and intervals collapse onto
    the bias.

    References
    ----------
    .. [1] Bland JM, Altman DG. Measuring agreement in method comparison studies. Statistical
       Methods in Medical Research 1999; 8: 135-160.
    .. [2] Carkeet A. Exact parametric confidence intervals for Bland-Altman limits of
       agreement. Optometry and Vision Science 2015; 92: e71-e80.

    Examples
    --------
    >>> from skddh.metrics import bland_altman
    >>> dexa = [0.91, 1.02, 0.85, 1.10, 0.97, 0.88]
    >>> predicted = [0.95, 1.00, 0.90, 1.12, 1.01, 0.87]
    >>> res = bland_altman(dexa, predicted)
    >>> res.n, round(res.bias, 4), round(res.sd, 4)
    (6, 0.02, 0.029)
    >>> round(res.loa_low, 4), round(res.loa_high, 4)
    (-0.0368, 0.0768)
    >>> [round(v, 4) for v in res.bias_ci]
    [-0.0104, 0.0504]
    """
    t, p = _pairs(y_true, y_pred)
    agreement_level = _level(agreement_level, "agreement_level")
    confidence_level = _level(confidence_level, "confidence_level")
    if ci_method not in ("approximate", "exact"):
        raise ValueError(f"ci_method must be 'approximate' or 'exact', got {ci_method!r}.")
    d = p - t
    n = len(d)
    bias = float(np.mean(d))
    sd = float(np.std(d, ddof=1))
    # scipy.special's quantiles (= stats.norm.ppf, stats.t.ppf) skip the distribution
    # objects' overhead, which dominates in simulation loops.
    z = float(special.ndtri((1.0 + agreement_level) / 2.0))
    t_q = float(special.stdtrit(n - 1, (1.0 + confidence_level) / 2.0))
    half = t_q * sd / np.sqrt(n)
    slope, intercept, pvalue = _line((t + p) / 2.0, d)
    return BlandAltmanResult(
        n=n,
        bias=bias,
        sd=sd,
        loa_low=bias - z * sd,
        loa_high=bias + z * sd,
        multiplier=z,
        bias_ci=(float(bias - half), float(bias + half)),
        loa_low_ci=_limit_ci(bias, sd, n, z, t_q, confidence_level, ci_method, -1),
        loa_high_ci=_limit_ci(bias, sd, n, z, t_q, confidence_level, ci_method, +1),
        agreement_level=agreement_level,
        confidence_level=confidence_level,
        ci_method=ci_method,
        slope=slope,
        intercept=intercept,
        slope_pvalue=pvalue,
    )


def concordance_correlation_coefficient(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Lin's concordance correlation coefficient (Lin 1989).

    ``rho_c = 2 s_xy / (s_x**2 + s_y**2 + (mean_x - mean_y)**2)`` with moments divided by
    ``n``, as in Lin's paper. It is Pearson's ``r`` times a bias-correction factor in
    ``(0, 1]``: 1 only for identical vectors, below ``|r|`` as soon as there is a location or
    scale shift.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)

    Returns
    -------
    float
        In ``[-1, 1]``; 0 when exactly one of the inputs is constant, NaN when both are the
        same constant (0 / 0).

    Raises
    ------
    ValueError
        As :func:`bland_altman`, for mismatched, non-finite or too few values.

    References
    ----------
    .. [1] Lin LI-K. A concordance correlation coefficient to evaluate reproducibility.
       Biometrics 1989; 45: 255-268.

    Examples
    --------
    >>> from skddh.metrics import concordance_correlation_coefficient
    >>> concordance_correlation_coefficient([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    1.0
    >>> round(concordance_correlation_coefficient([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]), 4)
    0.5714
    """
    t, p = _pairs(y_true, y_pred)
    return _ccc(t, p)


def _ccc(t: np.ndarray, p: np.ndarray) -> float:
    cov = np.mean((t - t.mean()) * (p - p.mean()))
    denom = t.var() + p.var() + (t.mean() - p.mean()) ** 2
    if denom == 0:
        return float("nan")
    return float(2.0 * cov / denom)


def regression_agreement(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    confidence_level: float = 0.95,
) -> dict[str, float | int]:
    """One row of agreement statistics between a prediction and its reference.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        Reference measurements (e.g. DEXA BMD).
    y_pred : array-like of shape (n,)
        Predictions.
    confidence_level : float, default=0.95
        Level of the interval for Pearson's ``r`` (Fisher's z, through
        ``scipy.stats.pearsonr``). The limits of agreement are the 95 % ones; call
        :func:`bland_altman` for other levels and for their intervals.

    Returns
    -------
    dict
        ``n``; ``pearson_r``, ``pearson_r_low``, ``pearson_r_high``; ``mae``; ``rmse``;
        ``bias`` (``mean(y_pred - y_true)``); ``loa_low``, ``loa_high`` (95 % limits of
        agreement); ``ccc`` (:func:`concordance_correlation_coefficient`). Make a table of
        several models with ``pandas.DataFrame([row, ...])``.

    Raises
    ------
    ValueError
        For mismatched lengths, NaN or inf, non-1-D input or fewer than 3 pairs.

    Warns
    -----
    UserWarning
        When ``y_true`` or ``y_pred`` is constant: Pearson's ``r`` is undefined, and
        ``pearson_r`` and its interval are NaN. The other entries are still computed (``ccc``
        is then 0, or NaN when both are the same constant).

    Notes
    -----
    With ``n = 3`` Fisher's interval has infinite standard error and spans ``[-1, 1]``.

    References
    ----------
    .. [1] Lin LI-K. A concordance correlation coefficient to evaluate reproducibility.
       Biometrics 1989; 45: 255-268.
    .. [2] Bland JM, Altman DG. Measuring agreement in method comparison studies. Statistical
       Methods in Medical Research 1999; 8: 135-160.

    Examples
    --------
    >>> from skddh.metrics import regression_agreement
    >>> row = regression_agreement([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.5, 5.0])
    >>> {k: round(v, 4) for k, v in row.items() if k in ("n", "mae", "rmse", "bias")}
    {'n': 4, 'mae': 0.5, 'rmse': 0.6124, 'bias': 0.25}
    """
    t, p = _pairs(y_true, y_pred)
    confidence_level = _level(confidence_level, "confidence_level")
    constant = [name for name, v in (("y_true", t), ("y_pred", p)) if np.ptp(v) == 0]
    if constant:
        warnings.warn(
            f"{' and '.join(constant)} {'is' if len(constant) == 1 else 'are'} constant: "
            "Pearson's r is undefined and reported as NaN.",
            UserWarning,
            stacklevel=2,
        )
        r = low = high = float("nan")
    else:
        res = stats.pearsonr(t, p)
        ci = res.confidence_interval(confidence_level=confidence_level)
        r, low, high = float(res.statistic), float(ci.low), float(ci.high)
    ba = bland_altman(t, p)
    d = p - t
    return {
        "n": len(t),
        "pearson_r": r,
        "pearson_r_low": low,
        "pearson_r_high": high,
        "mae": float(np.mean(np.abs(d))),
        "rmse": float(np.sqrt(np.mean(d**2))),
        "bias": ba.bias,
        "loa_low": ba.loa_low,
        "loa_high": ba.loa_high,
        "ccc": _ccc(t, p),
    }
