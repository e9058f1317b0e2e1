"""Conformal selection: pass hips whose true measurement clears a threshold, FDR-controlled.

The lower-bound rules bound a *joint* error, ``P(pass and truly alpha < 60) <= delta``; none
bounds the share of abnormal hips among the hips passed. Conformal selection (Jin and Candès,
"Selection by prediction with conformal p-values", JMLR 2023, arXiv 2210.01408) does: it
tests, for every test unit ``j``, the null ``H_j: y_j < c`` with a conformal p-value and
passes the units that Benjamini-Hochberg rejects at level ``q``.

The score is the paper's *clipped* score, written for our one-sided event "``y >= c``"::

    V(x, y) = M * 1{y >= c} + c * 1{y < c} - mu(x),     M = +inf,

with ``mu`` the point prediction. It is nondecreasing in ``y`` (monotone, as the paper
requires), a calibration unit that truly clears the threshold gets ``V_i = +inf`` (it is in
the calibration set, ``n`` counts it, but it never ranks below a test score), and a test unit
is scored at the null boundary, ``V_hat_j = c - mu(x_j)`` (the largest score any null value
``y < c`` gives, ``sup_{y < c} V(x_j, y)``). The p-value counts the calibration units that are truly
below the threshold yet were predicted at least as high as the test unit::

    p_j = (#{i: V_i < V_hat_j} + U_j * (1 + #{i: V_i = V_hat_j})) / (n + 1),  U_j ~ U(0, 1).

For a null test unit ``V_hat_j`` equals its own (unobservable) score, so ``p_j`` is exactly
the oracle conformal p-value, uniform on (0, 1) under exchangeability.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from numbers import Real

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from skddh.conformal._base import check_groups
from skddh.conformal._scores import subject_max_scores


@dataclass(frozen=True)
class ConformalSelection:
    """What :func:`conformal_selection` decided.

    Attributes
    ----------
    selected : ndarray of bool, shape (n_test,)
        Per test row: ``True`` = passed (the true measurement is claimed ``>= threshold``).
        With ``groups``, every row of a subject carries the subject's decision.
    pvalues : ndarray of shape (n_test_units,)
        Conformal p-value of each test unit (row, or subject in ``units`` order).
    units : ndarray of shape (n_test_units,)
        The test units: row indices, or the sorted test subject ids.
    unit_selected : ndarray of bool, shape (n_test_units,)
        The decision per unit.
    cutoff : float
        The Benjamini-Hochberg rejection threshold ``q * R / m`` (``R`` units passed out of
        ``m``): a unit passes when its p-value is at most ``cutoff``. ``0.0`` when none pass.
    n_calibration : int
        Calibration units (images, or subjects with ``groups``), null or not.
    """

    selected: np.ndarray
    pvalues: np.ndarray
    units: np.ndarray
    unit_selected: np.ndarray
    cutoff: float
    n_calibration: int


def conformal_pvalues(
    calibration_scores, test_scores, *, random_state=None, randomized: bool = True
) -> np.ndarray:
    """Conformal p-values of test scores against calibration scores (Jin and Candès, eq. 5).

    ``p_j = (#{i: V_i < V_hat_j} + U_j * (1 + #{i: V_i = V_hat_j})) / (n + 1)`` with
    ``U_j ~ U(0, 1)`` independent (``U_j = 1`` when ``randomized=False``, which gives the
    larger, deterministic ``(1 + #{i: V_i <= V_hat_j}) / (n + 1)``). Small ``V_hat_j`` is
    evidence against the null. If the calibration scores and the test unit's *oracle* score
    ``V_j`` are exchangeable, the p-value computed at ``V_j`` is uniform on (0, 1)
    (super-uniform without randomization); a null value ``V_hat_j >= V_j`` makes it larger,
    i.e. still valid.

    Parameters
    ----------
    calibration_scores : array-like of shape (n,)
        Scores ``V_i`` of the calibration units, computed with their observed outcomes;
        ``+inf`` allowed (a clipped non-null unit), NaN not.
    test_scores : array-like of shape (m,)
        Scores ``V_hat_j`` of the test units at the null value.
    random_state : int, numpy Generator or None, default=None
        Seed of the tie-breaking uniforms ``U_j``.
    randomized : bool, default=True
        ``False``: ``U_j = 1`` (deterministic and conservative).

    Returns
    -------
    ndarray of shape (m,)
        Values in (0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import conformal_pvalues
    >>> cal = np.array([-70.0, -65.0, -58.0, np.inf])  # three nulls, one non-null
    >>> conformal_pvalues(cal, np.array([-72.0, -60.0]), randomized=False)
    array([0.2, 0.6])
    """
    cal = _finite_or_inf(calibration_scores, "calibration_scores")
    test = _finite_or_inf(test_scores, "test_scores")
    if len(cal) == 0:
        raise ValueError("calibration_scores is empty: no calibration unit.")
    cal = np.sort(cal)
    below = np.searchsorted(cal, test, side="left")
    ties = np.searchsorted(cal, test, side="right") - below
    u = np.random.default_rng(random_state).random(len(test)) if randomized else 1.0
    return (below + u * (1 + ties)) / (len(cal) + 1)


def conformal_selection(
    calibration_predictions,
    calibration_y,
    test_predictions,
    *,
    threshold: float,
    q: float,
    groups=None,
    test_groups=None,
    random_state=None,
    randomized: bool = True,
) -> ConformalSelection:
    """Pass the test units whose true measurement is ``>= threshold``, at FDR level ``q``.

    Conformal selection (Jin and Candès 2023) with the clipped score of
    :mod:`skddh.conformal._selection`: per test unit the null is ``y < threshold``,
    :func:`conformal_pvalues` gives its p-value, and the Benjamini-Hochberg step-up at level
    ``q`` (``scipy.stats.false_discovery_control``) decides which units pass.

    **Guarantee.** Let the calibration units and the test units be i.i.d. draws from one
    population (more generally: the calibration units and each test unit exchangeable given
    the other test units), and the predictor fitted on other data. Then the false discovery
    rate among the units passed,
    ``FDR = E[#{passed units with y < threshold} / max(1, #passed)] <= q``,
    in finite samples, on average over the calibration draw, the test draw and ``U``
    (marginal, not conditional on this calibration set, nor a bound on one run's share).
    It is not ``P(pass | abnormal)``, nor the joint ``P(pass and abnormal)`` the lower-bound
    rules bound.

    **Subject level** (``groups`` and ``test_groups``). A subject is one unit: its truth is
    its worst image, ``min_k y_k`` (the subject is null when *any* image is below the
    threshold), and its prediction its lowest, ``min_k mu_k``; the clipped score is then
    applied to these, so ``n`` counts calibration subjects and all rows of a test subject pass
    or fail together. Controlled: the FDR over test *subjects*, ``E[#{passed subjects with
    some image below the threshold} / max(1, #passed subjects)] <= q``, when subjects (each
    with any number of correlated images) are i.i.d.; images within a subject need not be.

    Parameters
    ----------
    calibration_predictions : array-like of shape (n_cal,)
        Point predictions ``mu(x)`` of the calibration rows (a held-out set).
    calibration_y : array-like of shape (n_cal,)
        Their true measurements (all rows, null or not).
    test_predictions : array-like of shape (n_test,)
        Point predictions of the rows to decide on.
    threshold : float
        Pass means "true measurement ``>= threshold``" (e.g. 60 for Graf alpha).
    q : float in (0, 1)
        Target false discovery rate among passed units.
    groups, test_groups : array-like of shape (n_cal,) and (n_test,), default=None
        Subject ids of the calibration and of the test rows; both or neither.
    random_state : int, numpy Generator or None, default=None
        Seed of the p-values' tie-breaking uniforms.
    randomized : bool, default=True
        ``False``: deterministic, conservative p-values (see :func:`conformal_pvalues`).

    Returns
    -------
    ConformalSelection

    Warns
    -----
    UserWarning
        When ``n_cal + 1 < 1 / q`` (units): no unit can pass with deterministic p-values,
        and the randomized ones would pass units on the coin ``U`` alone; none pass.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import conformal_selection
    >>> rng = np.random.default_rng(0)
    >>> y = rng.normal(62, 5, 400)
    >>> mu = y + rng.normal(0, 2, 400)
    >>> res = conformal_selection(mu[:200], y[:200], mu[200:], threshold=60, q=0.1,
    ...                           random_state=0)
    >>> bool(res.selected.any()), bool((y[200:][res.selected] < 60).mean() < 0.2)
    (True, True)
    """
    q = _check_level(q)
    if not isinstance(threshold, Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}.")
    mu_cal = _vector(calibration_predictions, "calibration_predictions")
    y_cal = _vector(calibration_y, "calibration_y")
    mu_test = _vector(test_predictions, "test_predictions")
    if len(mu_cal) != len(y_cal):
        raise ValueError(
            f"calibration_predictions has {len(mu_cal)} rows but calibration_y has {len(y_cal)}."
        )
    if len(mu_cal) == 0 or len(mu_test) == 0:
        raise ValueError("calibration and test sets must each have at least one row.")
    if (groups is None) != (test_groups is None):
        raise ValueError(
            "Pass both groups (calibration subject ids) and test_groups (test subject ids) "
            "or neither: subject-level calibration scores are exchangeable with test "
            "subjects, not with single test images."
        )
    if groups is None:
        units = np.arange(len(mu_test))
        codes = units
    else:
        _, mu_cal, y_cal = _per_subject(groups, len(mu_cal), mu_cal, y_cal, "groups")
        units, mu_test, codes = _per_subject(
            test_groups, len(mu_test), mu_test, None, "test_groups"
        )
    # The clipped score with M = +inf; the constant c cancels from every comparison.
    cal_scores = np.where(y_cal >= threshold, np.inf, threshold - mu_cal)
    test_scores = threshold - mu_test
    pvalues = conformal_pvalues(
        cal_scores, test_scores, random_state=random_state, randomized=randomized
    )
    n = len(cal_scores)
    if Fraction(q).limit_denominator(10**9) * (n + 1) < 1:
        warnings.warn(
            f"conformal_selection: {n} calibration unit(s) cannot support q={q}: the "
            f"smallest deterministic conformal p-value is 1/(n+1) = {1 / (n + 1):.4g} > q. "
            "No unit is passed; use at least ceil(1/q) - 1 calibration units.",
            UserWarning,
            stacklevel=2,
        )
        unit_selected = np.zeros(len(pvalues), dtype=bool)
    else:
        unit_selected = false_discovery_control(pvalues, method="bh") <= q
    n_pass = int(unit_selected.sum())
    return ConformalSelection(
        selected=unit_selected[codes],
        pvalues=pvalues,
        units=units,
        unit_selected=unit_selected,
        cutoff=q * n_pass / len(pvalues),
        n_calibration=n,
    )


def _check_level(q) -> float:
    if isinstance(q, (bool, np.bool_)) or not isinstance(q, Real) or not 0 < q < 1:
        raise ValueError(f"q (the target FDR) must lie in (0, 1), got {q!r}.")
    return float(str(q)) if isinstance(q, np.floating) else float(q)


def _vector(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one target), got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        row = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name} has a NaN or infinite value at row {row}.")
    return arr


def _finite_or_inf(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if np.isnan(arr).any():
        raise ValueError(f"{name} has a NaN at position {int(np.flatnonzero(np.isnan(arr))[0])}.")
    return arr


def _per_subject(groups, n_rows, mu, y, name):
    """Subject ids, each subject's lowest prediction (and lowest truth), row -> subject code."""
    g = check_groups(groups)
    if g.ndim != 1 or len(g) != n_rows:
        raise ValueError(f"{name} must have shape ({n_rows},), got {g.shape}.")
    if pd.isna(g).any():
        raise ValueError(
            f"{name} has a missing subject id at row {int(np.flatnonzero(pd.isna(g))[0])}."
        )
    # A subject's minimum is minus its maximum of the negated values (np.unique order).
    neg_mu, subjects = subject_max_scores(-mu, g)
    if y is None:
        return subjects, -neg_mu, np.unique(g, return_inverse=True)[1]
    return subjects, -neg_mu, -subject_max_scores(-y, g)[0]
