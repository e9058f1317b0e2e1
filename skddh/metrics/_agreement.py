"""Agreement between raters on a categorical label: Gwet's AC1.

Written for the hip morphology study (two readers labelling cam deformity, dysplasia, ... on
AP pelvis radiographs), but nothing here knows about hips: :func:`gwet_ac1` takes a table of
ratings, one row per subject and one column per rater, any number of raters and categories,
with missing ratings allowed.

AC1 (Gwet 2008) is a chance-corrected agreement coefficient, ``(p_a - p_e) / (1 - p_e)`` like
Cohen's or Fleiss' kappa, whose chance agreement ``p_e`` is small when the raters pile onto
one category. Kappa's ``p_e`` is then close to ``p_a`` and kappa can be low although the
raters almost always agree (the "kappa paradox", common for a rare finding); AC1 stays high.

The formulas are those of Gwet's handbook (2014, chapter 5 for missing ratings), written
here from the text; the standard error is Gwet's (2008) linearisation, which does not assume
independent raters. The GPL ``irrCAC`` package is used only as a test-time cross-check.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import special

__all__ = ["GwetAC1Result", "gwet_ac1"]


@dataclass(frozen=True)
class GwetAC1Result:
    """What :func:`gwet_ac1` returns.

    Attributes
    ----------
    coefficient : float
        Gwet's AC1, ``(p_a - p_e) / (1 - p_e)``; 1 for perfect agreement.
    standard_error : float
        Gwet's (2008) standard error (no finite-population correction); 0 when every subject
        contributes the same, NaN with a single subject.
    confidence_interval : tuple of float
        ``coefficient -+ t * standard_error``, ``t`` the ``(1 + confidence_level) / 2``
        quantile of Student's t on ``n_subjects - 1`` degrees of freedom, clipped to
        ``[-1, 1]`` (Gwet clips the upper end at 1).
    p_value : float
        Two-sided p-value of ``AC1 = 0`` on the same t distribution.
    p_a : float
        Observed agreement: mean over the subjects with 2 or more ratings of the share of
        agreeing rater pairs.
    p_e : float
        Chance agreement ``sum_k pi_k (1 - pi_k) / (q - 1)``.
    n_subjects : int
        Subjects with at least one rating (those enter ``pi_k`` and the variance).
    n_subjects_paired : int
        Subjects with 2 or more ratings (those enter ``p_a``).
    n_raters : int
        Columns of the rating table.
    categories : tuple
        The ``q`` categories, in the order used.
    confidence_level : float
    """

    coefficient: float
    standard_error: float
    confidence_interval: tuple[float, float]
    p_value: float
    p_a: float
    p_e: float
    n_subjects: int
    n_subjects_paired: int
    n_raters: int
    categories: tuple[Any, ...]
    confidence_level: float


def _level(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}.")
    return float(value)


def _category_counts(ratings, categories) -> tuple[np.ndarray, tuple[Any, ...], int]:
    """The ``(n_subjects, q)`` table ``r_ik`` of how many raters put subject ``i`` in ``k``."""
    if isinstance(ratings, pd.DataFrame):
        table = ratings.to_numpy(dtype=object)
    else:
        table = np.asarray(ratings, dtype=object)
    if table.ndim != 2:
        raise ValueError(
            f"ratings must be 2-D (n_subjects, n_raters), got shape {np.shape(table)}."
        )
    n_raters = table.shape[1]
    if n_raters < 2:
        raise ValueError(f"ratings must have at least 2 raters (columns), got {n_raters}.")
    flat = table.ravel()
    missing = np.asarray(pd.isna(flat), dtype=bool)
    values = flat[~missing]
    if categories is None:
        found = list(pd.unique(pd.Series(values, dtype=object)))
        with contextlib.suppress(TypeError):  # mixed types: keep the order of appearance
            found = sorted(found)
        cats = tuple(found)
    else:
        cats = tuple(categories)
        if any(np.asarray(pd.isna(np.array(cats, dtype=object)), dtype=bool)):
            raise ValueError("categories must not hold a missing value (NaN / None).")
        if len(set(cats)) != len(cats):
            raise ValueError(f"categories must be distinct, got {list(cats)!r}.")
    if len(cats) < 2:
        raise ValueError(
            f"AC1 needs at least 2 categories, got {list(cats)!r}: when every rating is the "
            "same, pass all possible ones, e.g. categories=[0, 1]."
        )
    codes = np.full(flat.shape, -1, dtype=np.intp)
    codes[~missing] = pd.Index(cats, dtype=object).get_indexer(values)
    unknown = ~missing & (codes < 0)
    if unknown.any():
        cell = int(np.flatnonzero(unknown)[0])
        row, col = divmod(cell, n_raters)
        raise ValueError(
            f"ratings hold {flat[cell]!r} (subject {row}, rater {col}), which is not among "
            f"categories={list(cats)!r}."
        )
    q = len(cats)
    counts = np.zeros((table.shape[0], q))
    rows = np.repeat(np.arange(table.shape[0]), n_raters)[~missing]
    np.add.at(counts, (rows, codes[~missing]), 1.0)
    return counts, cats, n_raters


def gwet_ac1(
    ratings: ArrayLike | pd.DataFrame,
    *,
    categories: ArrayLike | None = None,
    confidence_level: float = 0.95,
) -> GwetAC1Result:
    """Gwet's AC1 agreement coefficient, its standard error and confidence interval.

    With ``r_ik`` the number of raters who put subject ``i`` in category ``k``,
    ``r_i = sum_k r_ik`` (the ratings subject ``i`` received), ``q`` categories, ``n``
    subjects with at least one rating and ``n'`` of them with two or more (Gwet 2014,
    section 5.2)::

        p_a  = 1/n' * sum_{i: r_i >= 2} sum_k r_ik (r_ik - 1) / (r_i (r_i - 1))
        pi_k = 1/n  * sum_i r_ik / r_i
        p_e  = 1/(q - 1) * sum_k pi_k (1 - pi_k)
        AC1  = (p_a - p_e) / (1 - p_e)

    The variance is Gwet's (2008) linearisation ``v = 1 / (n (n - 1)) * sum_i (g_i - AC1)**2``
    with subject terms ``g_i = n/n' * (p_a|i - p_e) / (1 - p_e) - 2 (1 - AC1) (p_e|i - p_e) /
    (1 - p_e)``, where ``p_a|i`` is subject ``i``'s share of agreeing pairs (its ``p_e``
    term dropped when ``r_i < 2``) and ``p_e|i = sum_k r_ik (1 - pi_k) / (r_i (q - 1))``.
    The interval uses Student's t on ``n - 1`` degrees of freedom, as Gwet does.

    Parameters
    ----------
    ratings : array-like or DataFrame of shape (n_subjects, n_raters)
        One row per subject, one column per rater; any hashable category values (numbers,
        strings, booleans). Missing ratings are NaN, None or ``pd.NA``. A subject with a
        single rating enters ``pi_k`` (the raters' category propensities) and the variance
        but not ``p_a``; a subject with none is dropped, as in Gwet (2014).
    categories : array-like, default=None
        All possible categories. By default those that occur in ``ratings``; give them when
        some category was never used (it changes ``q`` and so ``p_e``).
    confidence_level : float, default=0.95
        Level of the confidence interval.

    Returns
    -------
    GwetAC1Result

    Raises
    ------
    ValueError
        When ``ratings`` is not 2-D or has fewer than 2 raters; when no subject has 2 or more
        ratings; when a rating is not among ``categories``; when there is only one category
        (pass ``categories``); when ``confidence_level`` is not in (0, 1).

    Notes
    -----
    AC1 ranges from ``-p_e / (1 - p_e)`` (at least ``-1``) to 1. The standard error treats
    the subjects as a sample of a large population (no finite-population correction) and
    the raters as fixed.

    References
    ----------
    .. [1] Gwet KL. Computing inter-rater reliability and its variance in the presence of
       high agreement. British Journal of Mathematical and Statistical Psychology 2008; 61:
       29-48.
    .. [2] Gwet KL. Handbook of Inter-Rater Reliability, 4th ed. Advanced Analytics,
       Gaithersburg, 2014 (chapters 2 and 5).

    Examples
    --------
    Two readers labelling 12 hips "normal" (0) or "cam" (1) agree on 10:

    >>> from skddh.metrics import gwet_ac1
    >>> reader_1 = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    >>> reader_2 = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1]
    >>> res = gwet_ac1(list(zip(reader_1, reader_2)))
    >>> round(res.coefficient, 4), round(res.p_a, 4), round(res.p_e, 4)
    (0.7692, 0.8333, 0.2778)
    >>> [round(v, 4) for v in res.confidence_interval]
    [0.3769, 1.0]
    """
    confidence_level = _level(confidence_level, "confidence_level")
    counts, cats, n_raters = _category_counts(ratings, categories)
    r = counts.sum(axis=1)
    counts, r = counts[r > 0], r[r > 0]
    paired = r >= 2
    n, n2 = len(r), int(paired.sum())
    if n2 == 0:
        raise ValueError(
            "ratings must have at least one subject (row) rated by 2 or more raters; "
            f"none of the {n} rated subjects is."
        )
    q = len(cats)
    pairs = r * (r - 1)
    pa_i = np.divide((counts * (counts - 1)).sum(axis=1), pairs, out=np.zeros(n), where=paired)
    p_a = float(pa_i.sum() / n2)
    pi = (counts / r[:, None]).mean(axis=0)
    p_e = float((pi * (1 - pi)).sum() / (q - 1))  # <= 1/q < 1
    ac1 = (p_a - p_e) / (1 - p_e)

    pe_i = counts @ (1 - pi) / (r * (q - 1))
    g = (n / n2) * (pa_i - p_e * paired) / (1 - p_e) - 2 * (1 - ac1) * (pe_i - p_e) / (1 - p_e)
    if n > 1:
        se = float(np.sqrt(((g - ac1) ** 2).sum() / (n * (n - 1))))
        t = float(special.stdtrit(n - 1, (1 + confidence_level) / 2))
        low, high = max(-1.0, ac1 - t * se), min(1.0, ac1 + t * se)
        if se > 0:
            p_value = float(2 * special.stdtr(n - 1, -abs(ac1) / se))
        else:
            p_value = 0.0 if ac1 != 0 else 1.0
    else:
        se = low = high = p_value = float("nan")
    return GwetAC1Result(
        coefficient=float(ac1),
        standard_error=se,
        confidence_interval=(float(low), float(high)),
        p_value=p_value,
        p_a=p_a,
        p_e=p_e,
        n_subjects=n,
        n_subjects_paired=n2,
        n_raters=n_raters,
        categories=cats,
        confidence_level=confidence_level,
    )
