"""Split-conformal one-sided lower bounds for any regressor: :class:`OneSidedConformalRegressor`.

The statistics live in :mod:`skddh.conformal._quantile`; this module is the scikit-learn
shell (the split, the bias correction, the scores, prediction).
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator, MetaEstimatorMixin, RegressorMixin, clone
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit
from sklearn.utils import _safe_indexing, get_tags

# Private helpers, stable since scikit-learn 1.3 (we require >= 1.6); sklearn-compat does not
# re-export these constraint classes.
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import _num_samples, check_is_fitted
from sklearn_compat.base import _fit_context

from skddh.conformal._quantile import fit_affine, one_sided_quantile, smallest_delta


class OneSidedConformalRegressor(MetaEstimatorMixin, RegressorMixin, BaseEstimator):
    """Calibrated one-sided lower bounds for any regressor, per target.

    Fits a clone of ``estimator`` on a training part and calibrates on a disjoint,
    subject-level calibration part: an optional affine bias correction, then the
    finite-sample one-sided residual quantile per target (the DDH paper, arXiv 2511.18457).
    ``predict_lower(X)`` returns ``LB`` with ``P(y >= LB) >= 1 - delta`` per target under
    exchangeability (see the module docstring for exactly when).

    Parameters
    ----------
    estimator : regressor, default=None
        Any scikit-learn regressor (multi-output for several targets); ``None`` means
        ``Ridge()``. Wrapped in :class:`~sklearn.frozen.FrozenEstimator`, it is not refitted
        and every case given to ``fit`` is calibration data.
    delta : float or dict, default=0.1
        Miscoverage in (0, 1), or a mapping target name -> miscoverage covering every target.
    calibration_size : float or int, default=0.2
        Share (float in (0, 1)) or number (int) of *groups* (subjects) held out for
        calibration when ``groups`` are given, otherwise of cases.
    bias_correction : {"affine", "affine-split"} or None, default="affine"
        ``"affine"``: the paper's correction, least squares on the calibration cases
        themselves (coverage then only approximately valid: slightly below nominal at small
        n). ``"affine-split"``: fitted on half of the calibration groups, scores from the
        other half (exact guarantee, fewer scores). ``None``: no correction (exact).
    random_state : int, RandomState instance or None, default=None
        Controls the training / calibration split.

    Attributes
    ----------
    estimator_ : regressor
        The fitted (or frozen) base estimator.
    affine_ : DataFrame
        Rows ``a`` and ``b`` per target (identity when ``bias_correction=None``).
    residuals_ : ndarray of shape (n_calibration, n_targets)
        Calibration residuals ``y - y_tilde`` after the correction.
    quantile_ : pandas Series
        ``q+`` per target at the fitted ``delta`` (``LB = y_tilde - q+``); +inf if too small.
    target_names_ : ndarray of str
        Target names (DataFrame columns, or ``y0``, ``y1``, ...).
    n_calibration_ : int
        Number of calibration scores.
    calibration_indices_ : ndarray
        Row indices of ``X`` used for calibration scores.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import OneSidedConformalRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 3))
    >>> y = X @ [2.0, -1.0, 0.5] + rng.gumbel(size=400)
    >>> model = OneSidedConformalRegressor(delta=0.1, random_state=0).fit(X[:300], y[:300])
    >>> lb = model.predict_lower(X[300:])
    >>> bool(np.mean(y[300:] >= lb) > 0.8)
    True
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict"]), None],
        "delta": [Interval(Real, 0, 1, closed="neither"), dict],
        "calibration_size": [
            Interval(Real, 0, 1, closed="neither"),
            Interval(Integral, 1, None, closed="left"),
        ],
        "bias_correction": [StrOptions({"affine", "affine-split"}), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        estimator=None,
        *,
        delta=0.1,
        calibration_size=0.2,
        bias_correction="affine",
        random_state=None,
    ):
        self.estimator = estimator
        self.delta = delta
        self.calibration_size = calibration_size
        self.bias_correction = bias_correction
        self.random_state = random_state

    # ---- fitting ---------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, groups=None, **fit_params):
        """Fit the base estimator (unless frozen) and calibrate the lower bounds.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Passed to the base estimator as is (images or features).
        y : array-like of shape (n_samples,) or (n_samples, n_targets), or DataFrame
            Targets; DataFrame column names are kept. NaN is an error.
        groups : array-like of shape (n_samples,), default=None
            Subject ids: the calibration split is then made by subject.
        **fit_params : dict
            Passed to the base estimator's ``fit``.

        Returns
        -------
        self
        """
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        if sp.issparse(X):
            X = X.tocsr()  # row indexing; the base estimator decides whether it accepts sparse
        y_arr, names, self._y_1d = self._check_y(y)
        self.target_names_ = names
        n = len(y_arr)
        if _num_samples(X) != n:
            raise ValueError(f"X has {_num_samples(X)} samples but y has {n}.")
        groups_arr = None if groups is None else np.asarray(groups)
        if groups_arr is not None and len(groups_arr) != n:
            raise ValueError(f"groups has {len(groups_arr)} entries but y has {n}.")
        base = Ridge() if self.estimator is None else self.estimator
        if isinstance(base, FrozenEstimator):
            self.estimator_ = base
            cal = np.arange(n)
        else:
            train, cal = self._split(n, groups_arr, self.calibration_size, "calibration_size")
            self.estimator_ = clone(base).fit(_take(X, train), self._fit_y(y, train), **fit_params)
        pred = self._raw_predict(_take(X, cal))
        y_cal = y_arr[cal]
        if self.bias_correction == "affine-split":
            g = None if groups_arr is None else groups_arr[cal]
            fit_part, score_part = self._split(len(cal), g, 0.5, "calibration data")
            a, b = fit_affine(pred[fit_part], y_cal[fit_part])
            cal, pred, y_cal = cal[score_part], pred[score_part], y_cal[score_part]
        elif self.bias_correction == "affine":
            a, b = fit_affine(pred, y_cal)
        else:
            a, b = np.ones(len(names)), np.zeros(len(names))
        self.affine_ = pd.DataFrame([a, b], index=["a", "b"], columns=names)
        self.residuals_ = y_cal - (a * pred + b)
        self.calibration_indices_ = cal
        self.n_calibration_ = len(cal)
        self.quantile_ = pd.Series(self._quantiles(self.delta), index=names, name="quantile")
        return self

    def _split(self, n, groups, size, what):
        if groups is not None:
            n_groups = len(np.unique(groups))
            if n_groups < 2:
                raise ValueError(
                    f"{what}: need at least 2 distinct groups (subjects) to split, got {n_groups}."
                )
            splitter = GroupShuffleSplit(1, test_size=size, random_state=self.random_state)
            train, cal = next(splitter.split(np.zeros(n), groups=groups))
        else:
            if n < 2:
                raise ValueError(f"{what}: need at least 2 samples to split, got {n} sample(s).")
            splitter = ShuffleSplit(1, test_size=size, random_state=self.random_state)
            train, cal = next(splitter.split(np.zeros(n)))
        if len(cal) == 0 or len(train) == 0:
            raise ValueError(f"{what}={size!r} leaves an empty training or calibration part.")
        return train, cal

    def _check_y(self, y):
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

    def _fit_y(self, y, idx):
        if isinstance(y, (pd.DataFrame, pd.Series)):
            return y.iloc[idx]
        return np.asarray(y)[idx]

    def _raw_predict(self, X):
        pred = np.asarray(self.estimator_.predict(X), dtype=float)
        return pred.reshape(pred.shape[0], -1)

    def _deltas(self, delta):
        names = self.target_names_
        if isinstance(delta, dict):
            unknown = sorted(set(delta) - set(names))
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
        for t, d in zip(names, values):
            if not isinstance(d, Real) or not 0 < d < 1:
                raise ValueError(f"delta for target {t!r} must lie in (0, 1), got {d!r}.")
        return values

    def _quantiles(self, delta):
        scores = -self.residuals_  # over-prediction scores s = y_tilde - y
        q = np.array(
            [one_sided_quantile(scores[:, j], d) for j, d in enumerate(self._deltas(delta))]
        )
        if np.isinf(q).any():
            worst = [str(t) for t, v in zip(self.target_names_, q) if np.isinf(v)]
            warnings.warn(
                f"delta is too small for n_calibration={self.n_calibration_} for target(s) "
                f"{worst}: the smallest delta this calibration size supports is "
                f"1/(n+1) = {smallest_delta(self.n_calibration_):.4g}; "
                "their lower bounds are -inf.",
                UserWarning,
                stacklevel=3,
            )
        return q

    @property
    def n_features_in_(self):
        """Number of features seen by the base estimator (delegated)."""
        check_is_fitted(self)
        return self.estimator_.n_features_in_

    @property
    def feature_names_in_(self):
        """Feature names seen by the base estimator (delegated)."""
        check_is_fitted(self)
        return self.estimator_.feature_names_in_

    # ---- prediction --------------------------------------------------------------------
    def predict(self, X):
        """Bias-corrected predictions ``y_tilde = a * y_hat + b``, shaped like ``y`` in fit."""
        check_is_fitted(self)
        out = (
            self._raw_predict(X) * self.affine_.loc["a"].to_numpy()
            + self.affine_.loc["b"].to_numpy()
        )
        return out[:, 0] if self._y_1d else out

    def predict_lower(self, X, delta=None):
        """Calibrated lower bounds ``LB = y_tilde - q+(delta)``.

        Parameters
        ----------
        X : array-like
        delta : float or dict, default=None
            Another miscoverage than the fitted one, without refitting.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_targets)
            ``-inf`` where the calibration set cannot support ``delta`` (with a warning).
        """
        check_is_fitted(self)
        q = self.quantile_.to_numpy() if delta is None else self._quantiles(delta)
        y_tilde = self.predict(X)
        return y_tilde - (q[0] if self._y_1d else q)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.single_output = False
        tags.target_tags.multi_output = True
        base = Ridge() if self.estimator is None else self.estimator
        tags.input_tags.sparse = get_tags(base).input_tags.sparse
        return tags


def _take(X, idx):
    if not (isinstance(X, (pd.DataFrame, pd.Series, np.ndarray, list)) or sp.issparse(X)):
        X = np.asarray(X)  # array-likes that are not subscriptable
    return _safe_indexing(X, idx)
