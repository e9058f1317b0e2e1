"""Thresholds that depend on covariates: a measurement's cut-off as a function of age.

A policy's ``thresholds`` map a measurement to a number, or to a callable of the
``covariates`` DataFrame (one row per image, facts observed before the outcome: age, side,
machine) that returns one threshold per row. :class:`GrafAlphaThreshold` is the ready preset
for Graf's age rule.

Why the rule guarantees still hold. A missed finding is a passed hip whose true measurement is
below its threshold ``t(c)``. A hip passes only when its lower bound clears the threshold, so
a missed finding has ``y < t(c) <= LB``: the bound failed. Hence ``P(pass and y < t(c)) <=
P(y < LB) <= delta`` whatever ``t`` is, as long as ``t(c)`` is fixed by the covariates alone
(not by the outcome), so that "abnormal" means the same thing before and after the outcome
is read.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

# Private helper, stable since scikit-learn 1.3; sklearn-compat does not re-export it.
from sklearn.utils._param_validation import Interval

__all__ = ["GrafAlphaThreshold", "resolve_thresholds"]


class GrafAlphaThreshold(BaseEstimator):
    """Graf's alpha threshold by age: immature hips (type IIa) are normal before 12 weeks.

    Graf alpha 50-59 deg is type IIa, physiologically immature, in an infant younger than 12
    weeks, and type IIb, dysplastic, from 12 weeks on; alpha >= 60 deg is mature (type I) at
    every age (Graf's classification; Radiopaedia, "Graf method"). As a pass threshold:
    ``immature`` (50 deg) before ``cutoff_weeks`` (12) and ``mature`` (60 deg) from then on.
    An infant under 12 weeks with alpha 50-59 is followed up by ultrasound, not X-ray, in
    Graf's scheme; whether your service does so is a clinical decision: set the values.

    Parameters
    ----------
    column : str, default="age_weeks"
        Column of ``covariates`` holding the age in weeks (as ``load_registry`` writes it).
    mature : float, default=60.0
        Threshold from ``cutoff_weeks`` on (and the Graf type I cut-off).
    immature : float, default=50.0
        Threshold before ``cutoff_weeks``.
    cutoff_weeks : float, default=12.0
        Age at which immaturity stops being physiological.

    Notes
    -----
    A scikit-learn ``BaseEstimator`` only for its parameter handling: ``get_params``,
    ``clone`` and the skddh model file (which stores parameters, never code) treat it like the
    estimators around it. It is not fitted.

    Examples
    --------
    >>> import pandas as pd
    >>> from skddh.policy import GrafAlphaThreshold
    >>> threshold = GrafAlphaThreshold()
    >>> threshold(pd.DataFrame({"age_weeks": [4.0, 11.9, 12.0, 20.0]}))
    array([50., 50., 60., 60.])
    """

    _parameter_constraints: dict = {
        "column": [str],
        "mature": [Interval(Real, None, None, closed="neither")],
        "immature": [Interval(Real, None, None, closed="neither")],
        "cutoff_weeks": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, column="age_weeks", mature=60.0, immature=50.0, cutoff_weeks=12.0):
        self.column = column
        self.mature = mature
        self.immature = immature
        self.cutoff_weeks = cutoff_weeks

    def __call__(self, covariates: pd.DataFrame) -> np.ndarray:
        for name in ("mature", "immature", "cutoff_weeks"):
            value = getattr(self, name)
            if not isinstance(value, Real) or not np.isfinite(value):
                raise ValueError(
                    f"GrafAlphaThreshold {name} must be a finite number, got {value!r}."
                )
        if not isinstance(covariates, pd.DataFrame) or self.column not in covariates.columns:
            have = list(covariates.columns) if isinstance(covariates, pd.DataFrame) else None
            raise ValueError(
                f"GrafAlphaThreshold reads covariates column {self.column!r}; covariates has "
                f"columns {have}."
            )
        age = pd.to_numeric(covariates[self.column], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(age) | (age < 0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"covariates column {self.column!r} must hold ages >= 0 in weeks; row {row} "
                f"is {covariates[self.column].iloc[row]!r}."
            )
        return np.where(age < self.cutoff_weeks, float(self.immature), float(self.mature))

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.get_params() == self.get_params()

    def __hash__(self) -> int:
        return hash((type(self), *sorted(self.get_params().items())))


def check_threshold_spec(thresholds: dict) -> dict:
    """Thresholds as given, each a finite number or a callable; names as strings."""
    out = {}
    for name, value in thresholds.items():
        if callable(value):
            out[str(name)] = value
        elif isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(value):
            out[str(name)] = float(value)
        else:
            raise ValueError(
                f"thresholds[{name!r}] must be a finite number or a callable of the "
                f"covariates, got {value!r}."
            )
    return out


def depends_on_covariates(thresholds: dict) -> bool:
    """Whether any threshold is a callable of the covariates."""
    return any(callable(v) for v in thresholds.values())


def check_covariates(covariates, n_rows: int, what: str = "X", like=None):
    """``covariates`` as a DataFrame with one row per row of ``what`` (or None).

    Rows are matched by position. When ``like`` (the ``X`` or ``y`` they go with) is a pandas
    object, its index must equal the covariates' index: a shuffled or foreign index would
    otherwise pair each image with another infant's age, silently.
    """
    if covariates is None:
        return None
    if not isinstance(covariates, pd.DataFrame):
        raise TypeError(
            f"covariates must be a pandas DataFrame (one row per image), got "
            f"{type(covariates).__name__}."
        )
    if len(covariates) != n_rows:
        raise ValueError(
            f"covariates has {len(covariates)} rows but {what} has {n_rows}: one row per image."
        )
    if isinstance(like, (pd.DataFrame, pd.Series)) and not like.index.equals(covariates.index):
        raise ValueError(
            f"covariates' index differs from {what}'s: rows are matched by position, so "
            f"align them first (covariates.loc[{what}.index]) or pass both with a default "
            "index."
        )
    return covariates.reset_index(drop=True)


def resolve_thresholds(thresholds: dict, covariates, n_rows: int) -> dict:
    """Each threshold as a float, or as an array of shape (n_rows,) from the covariates.

    Parameters
    ----------
    thresholds : dict
        Measurement -> number or callable ``f(covariates) -> array of shape (n_rows,)``.
    covariates : DataFrame or None
        One row per case; required when a threshold is a callable.
    n_rows : int
        Number of cases.

    Returns
    -------
    dict

    Examples
    --------
    >>> import pandas as pd
    >>> from skddh.policy import GrafAlphaThreshold, resolve_thresholds
    >>> cov = pd.DataFrame({"age_weeks": [6.0, 16.0]})
    >>> resolve_thresholds({"alpha": GrafAlphaThreshold(), "coverage": 50.0}, cov, 2)
    {'alpha': array([50., 60.]), 'coverage': 50.0}
    """
    out = {}
    for name, value in check_threshold_spec(thresholds).items():
        if not callable(value):
            out[name] = value
            continue
        if covariates is None:
            raise ValueError(
                f"thresholds[{name!r}] is a function of the covariates ({value!r}); pass "
                "covariates= (a DataFrame, one row per image)."
            )
        cov = check_covariates(covariates, n_rows)
        t = np.asarray(value(cov), dtype=float)
        if t.shape != (n_rows,):
            raise ValueError(
                f"thresholds[{name!r}] returned shape {t.shape}; expected ({n_rows},), one "
                "threshold per row of covariates."
            )
        bad = ~np.isfinite(t)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"thresholds[{name!r}] is not finite at covariates row {row}.")
        out[name] = t
    return out
