"""Mondrian (group-conditional) one-sided lower bounds: one calibration per stratum.

The split bound promises ``P(y >= LB) >= 1 - delta`` on average over the population; within
a subgroup whose residuals are wider (young infants, one machine) it may cover far less. A
Mondrian bound (Vovk et al. 2005, ch. 4; Vovk 2012, "Conditional validity of inductive
conformal predictors") calibrates each stratum ``s`` on its own calibration units::

    LB = y_tilde - q+_s(delta),    q+_s = the k_s-th smallest over-prediction y_tilde - y
                                    among stratum s, k_s = ceil((n_s + 1)(1 - delta)),

with the same order statistic as :func:`skddh.conformal.one_sided_quantile` (so a single
stratum gives the pooled bound exactly). Strata are labels known before the outcome (age
band, side, machine), never a function of ``y``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from skddh.conformal._base import check_groups, check_miscoverage
from skddh.conformal._quantile import _exact_k, one_sided_quantile, smallest_delta
from skddh.conformal._scores import subject_max_scores


def mondrian_lower_bound(
    calibration_residuals,
    calibration_strata,
    test_predictions,
    test_strata,
    *,
    delta: float,
    groups=None,
) -> np.ndarray:
    """Lower bounds calibrated within each test row's stratum.

    **Guarantee** (conditional on the stratum, marginal otherwise). If, within stratum ``s``,
    the calibration units and the new unit are exchangeable (e.g. i.i.d. from the population,
    the stratum a label fixed before the outcome, the predictor fitted on other data), then
    for every stratum ``P(y >= LB | stratum = s) >= 1 - delta``, and at most
    ``1 - delta + 1/(n_s + 1)`` without ties. It is conditional on the stratum only: not on
    the prediction or on a finer subgroup, and not after a shift in population.

    **Subject level** (``groups``). The unit is a subject within a stratum: a subject's score
    in stratum ``s`` is its largest over-prediction among its images in ``s`` (as in
    :func:`skddh.conformal.subject_max_scores`), so ``n_s`` counts subjects with an image in
    ``s`` and a subject whose images span strata (left and right sides) counts once in each.
    For a new subject i.i.d. with the calibration subjects:
    ``P(every image of the subject in s has y >= LB | it has an image in s) >= 1 - delta``.

    Parameters
    ----------
    calibration_residuals : array-like of shape (n_cal,) or (n_cal, n_targets)
        Residuals ``r = y - y_tilde`` of the calibration rows (as
        ``OneSidedConformalRegressor.residuals_``; *not* the over-prediction ``y_tilde - y``).
        NaN-free.
    calibration_strata : array-like of shape (n_cal,)
        Stratum label of each calibration row (strings, integers; one type).
    test_predictions : array-like of shape (n_test,) or (n_test, n_targets)
        Point predictions ``y_tilde`` of the rows to bound (same bias correction as the
        residuals).
    test_strata : array-like of shape (n_test,)
        Stratum label of each test row.
    delta : float in (0, 1)
        Miscoverage, the same in every stratum.
    groups : array-like of shape (n_cal,), default=None
        Subject ids of the calibration rows; ``None``: every row its own unit (exact only
        when rows are exchangeable, e.g. one image per subject).

    Returns
    -------
    ndarray of the shape of ``test_predictions``
        ``-inf`` for a test row whose stratum is too small for ``delta``
        (``1/(n_s + 1) > delta``) or absent from the calibration set (with a warning).

    Warns
    -----
    UserWarning
        Naming each too-small stratum (its ``n_s`` and the smallest delta it supports) and
        each test stratum with no calibration unit.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import mondrian_lower_bound
    >>> r = np.array([-1.0, -2.0, -3.0, -4.0, -10.0, -20.0, -30.0, -40.0])
    >>> strata = ["old"] * 4 + ["young"] * 4
    >>> mondrian_lower_bound(r, strata, [60.0, 60.0], ["old", "young"], delta=0.2)
    array([56., 20.])
    """
    delta = check_miscoverage(delta)
    r = np.asarray(calibration_residuals, dtype=float)
    pred = np.asarray(test_predictions, dtype=float)
    if r.ndim not in (1, 2) or pred.ndim != r.ndim or r.shape[1:] != pred.shape[1:]:
        raise ValueError(
            "calibration_residuals and test_predictions must both be 1-D, or 2-D with the "
            f"same number of targets; got shapes {r.shape} and {pred.shape}."
        )
    if np.isnan(r).any():
        raise ValueError("calibration_residuals has NaN values.")
    if len(r) == 0:
        raise ValueError("calibration_residuals is empty.")
    cal_s = _labels(calibration_strata, len(r), "calibration_strata")
    test_s = _labels(test_strata, len(pred), "test_strata")
    scores = -r  # over-prediction y_tilde - y: its upper tail gives the lower bound's radius
    if groups is not None:
        g = check_groups(groups)
        if g.ndim != 1 or len(g) != len(r):
            raise ValueError(f"groups must have shape ({len(r)},), got {g.shape}.")
        if pd.isna(g).any():
            raise ValueError("groups has a missing subject id.")
    out = np.full(pred.shape, -np.inf)
    too_small, unseen = [], []
    for label in pd.unique(test_s):
        label = label.item() if isinstance(label, np.generic) else label  # plain repr
        rows = test_s == label
        cal = cal_s == label
        if not cal.any():
            unseen.append(label)
            continue
        s = scores[cal]
        if groups is not None:
            s, _ = subject_max_scores(s, g[cal])
        n_s = len(s)
        if _exact_k(n_s, delta) > n_s:  # the test one_sided_quantile makes, stated up front
            too_small.append((label, n_s))
            continue
        out[rows] = pred[rows] - one_sided_quantile(s, delta)
    unit = "subjects" if groups is not None else "rows"
    if too_small:
        names = ", ".join(
            f"{lab!r} (n={n} {unit}; needs delta >= {smallest_delta(n):.4g})"
            for lab, n in too_small
        )
        warnings.warn(
            f"mondrian_lower_bound: stratum too small for delta={delta}: {names}; "
            "their lower bounds are -inf.",
            UserWarning,
            stacklevel=2,
        )
    if unseen:
        warnings.warn(
            f"mondrian_lower_bound: test stratum {unseen!r} has no calibration {unit}; "
            "its lower bounds are -inf.",
            UserWarning,
            stacklevel=2,
        )
    return out


def stratum_labels(mondrian, covariates, n: int, *, owner: str) -> np.ndarray:
    """The stratum label of each of ``n`` rows, from ``covariates`` by ``mondrian``.

    ``mondrian`` is a column name of ``covariates`` or a callable taking the ``covariates``
    DataFrame and returning one label per row. Errors name ``covariates`` (missing, wrong
    length, missing column, a missing label and its first row).
    """
    name = getattr(mondrian, "__name__", None) if callable(mondrian) else None
    what = f"mondrian={mondrian!r}" if name is None else f"mondrian={name}"
    if covariates is None:
        raise ValueError(
            f"{owner} with {what} needs covariates=<DataFrame, one row per sample> to find "
            "each sample's stratum; got covariates=None. Inside GridSearchCV or a Pipeline "
            "they arrive through metadata routing: set_fit_request(covariates=True)."
        )
    if not isinstance(covariates, pd.DataFrame):
        raise ValueError(
            f"{owner}: covariates must be a pandas DataFrame (one row per sample), got "
            f"{type(covariates).__name__}."
        )
    if len(covariates) != n:
        raise ValueError(
            f"{owner}: covariates has {len(covariates)} rows but there are {n} samples "
            "(one row of covariates per sample)."
        )
    columns = [str(c) for c in covariates.columns]
    if isinstance(mondrian, str):
        if mondrian not in covariates.columns:
            raise ValueError(
                f"{owner}: covariates has no column {mondrian!r} ({what}); its columns are "
                f"{columns}."
            )
        values = covariates[mondrian]
    else:
        try:
            values = mondrian(covariates)
        except KeyError as exc:
            raise ValueError(
                f"{owner}: {what} looked up column {exc.args[0]!r}, which covariates does "
                f"not have; its columns are {columns}."
            ) from exc
    if isinstance(values, pd.DataFrame) and values.shape[1] == 1:
        values = values.iloc[:, 0]
    if np.ndim(values) != 1:
        raise ValueError(
            f"{owner}: {what} must give one stratum label per row of covariates, shape "
            f"({n},); got shape {np.shape(values)}."
        )
    return _labels(values, n, f"covariates (the stratum labels of {what})")


def _labels(values, n: int, name: str) -> np.ndarray:
    """Stratum labels as an array of shape (n,), one type, none missing."""
    try:
        arr = check_groups(values)
    except ValueError:
        raise ValueError(
            f"{name} mixes label types or has labels that cannot be compared; use one type "
            "(e.g. all strings)."
        ) from None
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}.")
    if pd.isna(arr).any():
        row = int(np.flatnonzero(pd.isna(arr))[0])
        raise ValueError(f"{name} has a missing stratum label at row {row}.")
    return arr
