"""What the conformal lower-bound estimators share: y handling, groups, deltas, prediction.

Every estimator here predicts in two steps, so that a search over many deltas runs the base
model once (the policy, its CV twin and the study all use this path):

- ``predict_components(X)``: the point predictions the bounds are built from;
- ``lower_from_components(components, delta)``: the lower bounds at a miscoverage.

``predict_lower(X, delta)`` is the two in one.
"""

from __future__ import annotations

import warnings
from numbers import Real

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator, MetaEstimatorMixin, RegressorMixin
from sklearn.linear_model import Ridge
from sklearn.utils import _safe_indexing, get_tags
from sklearn.utils.validation import _check_method_params, _num_samples, check_is_fitted

from skddh.conformal._quantile import smallest_delta

#: The calibration units: one score per subject (two ways) or, as an explicit opt-in, per image.
CALIBRATION_UNITS = ("subject-max", "subject-subsample", "image")


def check_groups(groups) -> np.ndarray:
    """Subject ids as an array, refusing ids of mixed types (``1`` and ``"1"``).

    ``np.asarray([1, "1"])`` would silently make them one subject (both strings), and an
    object Series of mixed types cannot be sorted; either way ``n`` would be wrong.
    """
    values = groups.to_numpy() if isinstance(groups, (pd.Series, pd.Index)) else groups
    if not isinstance(values, np.ndarray) or values.dtype == object:
        kinds = {type(v) for v in values if not pd.isna(v)}  # missing ids: named later
        kinds = {bool if issubclass(k, (bool, np.bool_)) else k for k in kinds}
        kinds = {str if issubclass(k, str) else k for k in kinds}  # np.str_ is a str
        numeric = {k for k in kinds if issubclass(k, (int, float, np.number))}
        if len(kinds - numeric) + bool(numeric) > 1:
            names = sorted(k.__name__ for k in kinds)
            raise ValueError(
                f"groups mixes subject id types {names}: ids such as 1 and '1' would be "
                "merged or could not be compared. Use one type (e.g. all strings)."
            )
    arr = np.asarray(values)
    if arr.dtype == object:
        try:
            np.unique(arr[~pd.isna(arr)])
        except TypeError as exc:
            raise ValueError(f"groups: subject ids cannot be compared ({exc}).") from None
    return arr


def no_groups_message(name: str, unit: str) -> str:
    """The error for a subject-level estimator fitted without ``groups``."""
    return (
        f"{name}.fit got groups=None, but calibration_unit={unit!r} calibrates by subject. "
        "Pass groups=<subject id per row>. Inside GridSearchCV, cross_validate or a "
        "Pipeline, groups reach this estimator only through metadata routing: call "
        "sklearn.set_config(enable_metadata_routing=True) and request them with "
        "<estimator>.set_fit_request(groups=True) on this estimator and on every "
        "meta-estimator around it. If every row really is its own subject, set "
        "calibration_unit='image' (image-level calibration; it under-covers a new subject "
        "whose images are correlated)."
    )


def check_miscoverage(value, what="delta") -> float:
    """A miscoverage as a float: a real number in (0, 1), numpy scalars too, never a bool.

    A numpy float becomes the decimal it prints as: ``np.float32(0.35)`` is 0.3499999940...,
    which would move the exact order statistic ``k = ceil((n + 1)(1 - delta))`` by one.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real) or not 0 < value < 1:
        raise ValueError(f"{what}: every miscoverage must lie in (0, 1), got {value!r}.")
    return float(str(value)) if isinstance(value, np.floating) else float(value)


def nan_scores_unbounded(scores, name: str) -> np.ndarray:
    """Over-prediction scores with NaN (a base model that predicted NaN) set to ``+inf``.

    A NaN score must not drop out of the ranking (``np.partition`` and ``np.sort`` put NaN
    last, which would count that subject as covered while ``n`` still counts it): as
    ``+inf`` it is the worst score, and the bound stays valid, only wider. Warns.
    """
    s = np.asarray(scores, dtype=float)
    bad = np.isnan(s)
    if bad.any():
        warnings.warn(
            f"{name}: the base estimator predicted NaN for {int(bad.any(axis=-1).sum())} "
            "calibration case(s); their scores count as +inf (unbounded), which widens the "
            "lower bounds.",
            UserWarning,
            stacklevel=3,
        )
        s = np.where(bad, np.inf, s)
    return s


def take(X, idx):
    """Rows ``idx`` of images, features, DataFrames or sparse matrices."""
    if not (isinstance(X, (pd.DataFrame, pd.Series, np.ndarray, list)) or sp.issparse(X)):
        X = np.asarray(X)  # array-likes that are not subscriptable
    return _safe_indexing(X, idx)


def subset_fit_params(X, fit_params, idx):
    """Fit parameters sliced to rows ``idx`` where they are per-sample (``sample_weight``)."""
    return _check_method_params(X, params=fit_params, indices=idx)


class LowerBoundBase(MetaEstimatorMixin, RegressorMixin, BaseEstimator):
    """Shared shell: checks of y, groups and delta; the two-step prediction."""

    def _base(self):
        return Ridge() if self.estimator is None else self.estimator

    # ---- checks -----------------------------------------------------------------------
    def _check_y(self, y):
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        if isinstance(y, pd.DataFrame):
            names = np.asarray(y.columns.astype(str))
            arr = y.to_numpy(dtype=float)
            one_d = False
        else:
            arr = np.asarray(y, dtype=float)
            one_d = arr.ndim == 1
            if one_d:
                arr = arr[:, None]
            if arr.ndim != 2:
                raise ValueError(f"y must be 1-D or 2-D, got {arr.ndim} dimensions.")
            names = (
                np.asarray([str(getattr(y, "name", None) or "y0")])
                if one_d and isinstance(y, pd.Series)
                else np.asarray([f"y{i}" for i in range(arr.shape[1])])
            )
        if arr.shape[0] == 0:
            raise ValueError("y is empty: 0 samples.")
        bad = ~np.isfinite(arr)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"y has a NaN or infinite value at row {row}, target {names[col]!r}.")
        return arr, names, one_d

    def _check_data(self, X, y, groups):
        """Arrays and names from fit's arguments; groups required unless image-level."""
        if sp.issparse(X):
            X = X.tocsr()  # row indexing; the base estimator decides whether it accepts sparse
        y_arr, names, one_d = self._check_y(y)
        n = len(y_arr)
        if _num_samples(X) != n:
            raise ValueError(f"X has {_num_samples(X)} samples but y has {n}.")
        if groups is None:
            if self.calibration_unit != "image":
                raise ValueError(no_groups_message(type(self).__name__, self.calibration_unit))
            groups_arr = np.arange(n)  # every image its own unit, by the user's choice
        else:
            groups_arr = check_groups(groups)
            if groups_arr.ndim != 1 or len(groups_arr) != n:
                raise ValueError(f"groups must have shape ({n},), got {groups_arr.shape}.")
            if pd.isna(groups_arr).any():
                row = int(np.flatnonzero(pd.isna(groups_arr))[0])
                raise ValueError(f"groups has a missing subject id at row {row}.")
        self.target_names_ = names
        self._y_1d = one_d
        return X, y_arr, groups_arr

    @staticmethod
    def _fit_y(y, idx):
        if isinstance(y, (pd.DataFrame, pd.Series)):
            return y.iloc[idx]
        return np.asarray(y)[idx]

    def _deltas(self, delta) -> list:
        """One miscoverage per target, validated (numpy scalars accepted)."""
        names = self.target_names_
        if isinstance(delta, dict):
            unknown = sorted(set(map(str, delta)) - set(names))
            if unknown:
                raise ValueError(
                    f"delta names target(s) {unknown} the model does not predict; "
                    f"targets are {list(names)}."
                )
            missing = [t for t in names if t not in delta]
            if missing:
                raise ValueError(f"delta gives no miscoverage for target(s) {missing}.")
            values = [delta[t] for t in names]
        else:
            values = [delta] * len(names)
        return [check_miscoverage(d, f"delta for target {t!r}") for t, d in zip(names, values)]

    def _warn_unbounded(self, q):
        if np.isinf(q).any():
            worst = [str(t) for t, v in zip(self.target_names_, q) if np.isinf(v)]
            warnings.warn(
                f"delta is too small for n_calibration={self.n_calibration_} "
                f"({self._unit_word()}) for target(s) {worst}: the smallest delta this "
                f"calibration size supports is 1/(n+1) = "
                f"{smallest_delta(self.n_calibration_):.4g}; their lower bounds are -inf.",
                UserWarning,
                stacklevel=4,
            )

    def _unit_word(self):
        return "images" if self.calibration_unit == "image" else "subjects"

    # ---- delegated attributes -------------------------------------------------------------
    @property
    def n_features_in_(self):
        """Number of features seen by the base estimator (delegated)."""
        check_is_fitted(self)
        return self._first_estimator().n_features_in_

    @property
    def feature_names_in_(self):
        """Feature names seen by the base estimator (delegated)."""
        check_is_fitted(self)
        return self._first_estimator().feature_names_in_

    # ---- prediction ---------------------------------------------------------------------
    def _shape(self, out):
        return out[:, 0] if self._y_1d else out

    def predict_lower(self, X, delta=None, covariates=None):
        """Calibrated lower bounds at ``delta`` (the fitted one by default), without refitting.

        Parameters
        ----------
        X : array-like
        delta : float or dict, default=None
            Another miscoverage than the fitted one: a float, or target name -> float.
        covariates : DataFrame of shape (n_samples, n_covariates), default=None
            The rows' covariates: required by a Mondrian estimator (``mondrian`` set),
            ignored otherwise.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_targets)
            ``-inf`` where the calibration set cannot support ``delta`` (with a warning).
        """
        components = self.predict_components(X)
        return self._shape(self.lower_from_components(components, delta, covariates=covariates))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.single_output = False
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = get_tags(self._base()).input_tags.sparse
        return tags
