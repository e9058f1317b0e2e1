"""The selective imaging policy: a classifier over a conformal lower-bound regressor.

The rules are in :mod:`skddh.policy._rules`; see :mod:`skddh.policy` for what each guarantees.
"""

from __future__ import annotations

import copy
from numbers import Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.utils import get_tags

# Private helpers, stable since scikit-learn 1.3; sklearn-compat does not re-export them.
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import _num_samples, check_is_fitted, check_memory
from sklearn_compat.base import _fit_context

from skddh.conformal import OneSidedConformalRegressor
from skddh.conformal._base import check_miscoverage as _miscoverage
from skddh.conformal._base import no_groups_message
from skddh.metrics import utility
from skddh.policy._cache import FITS, PREDICTIONS, content_key, dumps_fit, loads_fit
from skddh.policy._rules import DEFAULT_THRESHOLDS, RULES, rule_margin, rule_measurements
from skddh.policy._thresholds import check_covariates, check_threshold_spec, resolve_thresholds


def _fit_bounds(estimator, X, y, groups, fit_params):
    """Fit the conformal regressor; module level so that ``joblib.Memory`` can cache it."""
    return estimator.fit(X, y, groups=groups, **fit_params)


def _fit_bounds_keyed(key, estimator, X, y_values, y_columns, group_codes, fit_params) -> bytes:
    """The fitted regressor as bytes, cached by ``joblib.Memory`` under ``key`` alone.

    joblib would hash every argument again (pickling a torch encoder, which gives new bytes
    every time) and read a cached object back by pure-Python unpickling (about 10 ms for a
    512 -> 128 -> 3 MLP); the content key is computed once by
    :func:`skddh.policy._cache.content_key`, and a bytes blob loads in microseconds. The
    frozen estimators of ``estimator`` are written as references
    (:func:`skddh.policy._cache.dumps_fit`), so the blob holds the head, not the encoder.
    """
    y = pd.DataFrame(y_values, columns=y_columns)
    fitted = _fit_bounds(estimator, X, y, group_codes, fit_params)
    return dumps_fit(fitted, estimator)


_KEYED_ARGS = ["estimator", "X", "y_values", "y_columns", "group_codes", "fit_params"]


class _PolicyBase(ClassifierMixin, MetaEstimatorMixin, BaseEstimator):
    """What the fixed policy and its tuned twin share: thresholds, outcome, costs, y handling."""

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict"]), None],
        "thresholds": [dict, None],
        "outcome": [str, None],
        "radiation_cost": [Interval(Real, 0, None, closed="left")],
        "miss_penalty": [Interval(Real, 0, None, closed="left")],
        "memory": [None, str, HasMethods(["cache"])],
    }

    # ---- shared helpers -------------------------------------------------------------------
    def _base_bounds(self):
        """The conformal regressor to fit: given, or wrapped around a plain regressor."""
        if self.estimator is None:
            return OneSidedConformalRegressor()
        if hasattr(self.estimator, "predict_lower"):
            return self.estimator
        return OneSidedConformalRegressor(self.estimator)

    def _thresholds(self):
        """The thresholds in force: name -> float, or a callable of the covariates."""
        return check_threshold_spec(
            DEFAULT_THRESHOLDS if self.thresholds is None else self.thresholds
        )

    def _uses_covariates(self, estimator=None) -> bool:
        """Whether the conformal regressor is calibrated within strata of the covariates."""
        est = self._base_bounds() if estimator is None else estimator
        return getattr(est, "mondrian", None) is not None

    def _with_covariates(self, X, fit_params, covariates):
        """Fit parameters plus ``covariates`` when the regressor calibrates by stratum."""
        if covariates is None or not self._uses_covariates():
            return fit_params
        return {**fit_params, "covariates": check_covariates(covariates, _num_samples(X))}

    def _split_y(self, y):
        """Targets for the regressor and, if ``outcome`` is set, the paired finding column."""
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        if isinstance(y, pd.Series):
            y = y.to_frame(name="y0" if y.name is None else y.name)
        if not isinstance(y, pd.DataFrame):
            arr = np.asarray(y)
            if arr.ndim == 1:
                arr = arr[:, None]
            if arr.ndim != 2:
                raise ValueError(f"y must be 1-D or 2-D, got {arr.ndim} dimensions.")
            y = pd.DataFrame(arr, columns=[f"y{j}" for j in range(arr.shape[1])])
        y = y.rename(columns=str)
        if self.outcome is None:
            return y, None
        if self.outcome not in y.columns:
            raise ValueError(
                f"outcome={self.outcome!r} is not a column of y; columns are {list(y.columns)}."
            )
        return y.drop(columns=[self.outcome]), y[self.outcome]

    def _check_thresholds(self, names, rule):
        thr = self._thresholds()
        unknown = [t for t in thr if t not in names]
        if unknown:
            raise ValueError(
                f"thresholds name measurement(s) {unknown} the model does not predict; "
                f"it predicts {list(names)}."
            )
        rule_measurements(rule, thr)
        return thr

    def _fit_base(self, X, y_fit, groups, fit_params):
        """The fitted regressor and its cache key (``None`` without ``memory``)."""
        if self.memory is None:
            return _fit_bounds(clone(self._base_bounds()), X, y_fit, groups, fit_params), None
        # Keyed on the estimator itself, not a clone: equal content gives equal clones, and
        # a hit then costs no clone. (A fitted estimator's state only makes the key stricter.)
        base = self._base_bounds()
        # Integer codes in sorted order split exactly as the labels do (GroupShuffleSplit
        # ranks groups by np.unique too) and hash at memory speed, as plain arrays do; a
        # DataFrame or an object array would be hashed by pure-Python pickling.
        labels, codes = (None, None) if groups is None else np.unique(groups, return_inverse=True)
        y_values, columns = y_fit.to_numpy(dtype=float), list(y_fit.columns)
        key = content_key(base, X, y_values, columns, codes, fit_params)
        fitted = FITS.get(key)
        if fitted is None:
            cached = check_memory(self.memory).cache(_fit_bounds_keyed, ignore=_KEYED_ARGS)
            # On a miss it fits a clone, whose frozen estimators are base's own objects.
            blob = cached(key, clone(base), X, y_values, columns, codes, fit_params)
            fitted = loads_fit(blob, base)
            FITS.put(key, fitted)
        if labels is not None and hasattr(fitted, "calibration_groups_"):
            # The shared fit was made on codes: show this caller's subject ids (a shallow
            # copy, so the cached object stays as it is for other callers).
            fitted = copy.copy(fitted)
            fitted.calibration_groups_ = labels[np.asarray(fitted.calibration_groups_, int)]
        return fitted, key

    def _check_groups(self, groups):
        """Fail before any fit when a subject-level regressor would get no subject ids."""
        unit = getattr(self._base_bounds(), "calibration_unit", "image")
        if groups is None and unit != "image":
            raise ValueError(no_groups_message(type(self).__name__, unit))

    def _lower_bounds(self, X, delta, covariates=None) -> np.ndarray:
        """Lower bounds (n_samples, n_targets) of the fitted regressor at ``delta``.

        Candidates of one cached search predict the same fold with the same fit: the
        regressor's components (an encoder's forward pass) are kept and each delta applied.
        A regressor calibrated by stratum (``mondrian``) gets the covariates.
        """
        est = self.estimator_
        kw = {}
        if self._uses_covariates(est):
            if covariates is None:
                raise ValueError(
                    f"the regressor is calibrated by stratum (mondrian={est.mondrian!r}); "
                    "pass covariates= (a DataFrame, one row per image)."
                )
            kw["covariates"] = check_covariates(covariates, _num_samples(X))
        if not hasattr(est, "predict_components"):  # a duck-typed regressor: predict_lower only
            lb = np.asarray(est.predict_lower(X, delta=delta, **kw), dtype=float)
            return lb.reshape(len(lb), -1)
        if self._cache_key_ is None:
            return est.lower_from_components(est.predict_components(X), delta, **kw)
        pkey = (self._cache_key_, content_key(X))
        comp = PREDICTIONS.get(pkey)
        if comp is None:
            comp = est.predict_components(X)
            PREDICTIONS.put(pkey, comp)
        return est.lower_from_components(comp, delta, **kw)

    def abnormal(self, y, covariates=None) -> np.ndarray:
        """Which hips are truly abnormal: the definition of a *missed finding*.

        With ``outcome`` set, the paired X-ray finding in that column of ``y`` (1 = abnormal).
        Otherwise a hip is abnormal when any measurement named in ``thresholds`` is truly
        below its threshold (for a threshold that depends on the covariates, the threshold of
        that row). That definition does not depend on the rule, so utilities compare across
        rules.

        Parameters
        ----------
        y : DataFrame or array-like
            True measurements (and the outcome column), as given to ``fit``.
        covariates : DataFrame of shape (n_samples, n_covariates), default=None
            Required when a threshold is a callable of the covariates (e.g.
            :class:`~skddh.policy.GrafAlphaThreshold`).

        Returns
        -------
        ndarray of bool, shape (n_samples,)
        """
        targets, outcome = self._split_y(y)
        if outcome is not None:
            vals = pd.to_numeric(outcome, errors="coerce").to_numpy(dtype=float)
            bad = ~np.isin(vals, (0.0, 1.0))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"outcome column {self.outcome!r} must hold 0/1, got "
                    f"{outcome.iloc[row]!r} at row {row}."
                )
            return vals.astype(bool)
        thr = self._thresholds()
        missing = [t for t in thr if t not in targets.columns]
        if missing:
            raise ValueError(
                f"y lacks the thresholded measurement(s) {missing}; columns are "
                f"{list(targets.columns)}."
            )
        vals = targets[list(thr)].to_numpy(dtype=float)
        bad = np.isnan(vals)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"y has NaN at row {row}, measurement {list(thr)[col]!r}: its truth is unknown."
            )
        t = resolve_thresholds(thr, check_covariates(covariates, len(vals), "y", y), len(vals))
        cut = np.column_stack([np.broadcast_to(t[name], (len(vals),)) for name in thr])
        return (vals < cut).any(axis=1)

    @property
    def n_features_in_(self):
        """Number of features seen by the regressor (delegated)."""
        check_is_fitted(self)
        return self.estimator_.n_features_in_

    @property
    def feature_names_in_(self):
        """Feature names seen by the regressor (delegated)."""
        check_is_fitted(self)
        return self.estimator_.feature_names_in_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.input_tags.sparse = get_tags(self._base_bounds()).input_tags.sparse
        return tags


def untrustworthy_rows(X) -> np.ndarray:
    """Rows of numeric input no bound can vouch for: any NaN or infinite value, or a constant
    image (blank, saturated: no anatomy in it).

    A NaN-tolerant base (histogram gradient boosting) would predict something for such a row,
    and a bound built on it would look valid; the policy refers these rows instead. Feature
    matrices (2-D) are checked for non-finite values only. Inputs that are not numeric arrays
    (file paths) pass through: their checks belong to the loader.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.policy._policy import untrustworthy_rows
    >>> images = np.random.default_rng(0).random((3, 8, 8))
    >>> images[1] = 1.0  # blank white
    >>> images[2, 0, 0] = np.nan
    >>> untrustworthy_rows(images)
    array([False,  True,  True])
    """
    arr = X.to_numpy() if isinstance(X, pd.DataFrame) else X
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf" or arr.ndim < 2:
        return np.zeros(_num_samples(X), dtype=bool)
    rows = arr.reshape(len(arr), -1)
    bad = np.zeros(len(arr), dtype=bool)
    if rows.dtype.kind == "f":
        bad |= ~np.isfinite(rows).all(axis=1)
    if arr.ndim >= 3 and rows.shape[1] > 1:  # images: a constant one carries no anatomy
        bad |= rows.max(axis=1) == rows.min(axis=1)  # NaN rows are flagged above already
    return bad


def _check_delta_names(delta, names, what="delta"):
    """A per-measurement delta may only name measurements the model predicts, each in (0, 1)."""
    names = [str(t) for t in names]
    unknown = sorted(set(delta) - set(names))
    if unknown:
        raise ValueError(
            f"{what} names measurement(s) {unknown} the model does not predict; "
            f"it predicts {names}."
        )
    for value in delta.values():
        _miscoverage(value, what)


def _full_delta(conformal, delta, used):
    """The policy's delta as the conformal regressor wants it: a float or a complete dict.

    A dict must name every measurement the rule reads (``used``); targets it does not name
    keep the regressor's own ``delta``. Values come back as plain floats (see
    :func:`_miscoverage`).
    """
    if not isinstance(delta, dict):
        return _miscoverage(delta)
    names = [str(t) for t in conformal.target_names_]
    _check_delta_names(delta, names)
    lacking = [t for t in used if t not in delta]
    if lacking:
        raise ValueError(f"delta gives no miscoverage for measurement(s) {lacking} the rule reads.")
    own = conformal.delta
    return {
        t: _miscoverage(delta[t] if t in delta else own[t] if isinstance(own, dict) else own)
        for t in names
    }


class SelectiveImagingPolicy(_PolicyBase):
    """Ultrasound suffices (1) only when calibrated lower bounds clear clinical thresholds.

    A classifier over a :class:`~skddh.OneSidedConformalRegressor`: ``fit`` fits the
    regressor (its training and calibration split), and ``predict`` compares the lower bounds
    at ``delta`` with ``thresholds`` under ``rule``; a hip that is not passed is referred to
    X-ray (0). Neither ``rule`` nor ``delta`` affects fitting, so with ``memory`` set a
    ``GridSearchCV`` over them fits the regressor once per fold (see also
    :class:`SelectiveImagingPolicyCV`).

    Parameters
    ----------
    estimator : estimator, default=None
        A :class:`~skddh.OneSidedConformalRegressor` (or anything with ``predict_lower``),
        or a plain regressor, which is wrapped in ``OneSidedConformalRegressor`` with its
        defaults. ``None`` means ``OneSidedConformalRegressor()``.
    rule : {"alpha", "or", "and"}, default="alpha"
        See the module docstring: ``"and"`` is the most conservative, ``"or"`` the most
        lenient.
    delta : float or dict, default=0.1
        Miscoverage per measurement in (0, 1); a dict must name every measurement the rule
        reads (other targets keep the regressor's delta).
    thresholds : dict, default=None
        Measurement -> threshold; ``None`` means ``{"alpha": 60.0, "coverage": 50.0}``. A
        threshold may be a callable of the ``covariates`` DataFrame returning one threshold
        per row, e.g. :class:`~skddh.policy.GrafAlphaThreshold` (50 deg before 12 weeks, 60
        after); :meth:`predict`, :meth:`score` and :meth:`abnormal` then need ``covariates``.
        The rule guarantees hold unchanged because the threshold depends only on covariates
        observed before the outcome (see :mod:`skddh.policy._thresholds`).
    outcome : str, default=None
        A column of ``y`` holding a paired X-ray finding (1 = abnormal), used for scoring and
        not as a regression target. Without it a missed finding is a passed hip with a
        thresholded measurement truly below its threshold (:meth:`abnormal`).
    radiation_cost : float, default=1.0
        ``lambda`` in :meth:`score`: the cost of one X-ray.
    miss_penalty : float, default=10.0
        ``mu`` in :meth:`score`: the cost of one missed finding (an assumption; set yours).
    memory : str or joblib.Memory, default=None
        Caches the fitted regressor, keyed on its parameters and the data, as
        ``Pipeline(memory=...)`` does; candidates that differ only in ``rule``/``delta`` then
        share one fit.

    Notes
    -----
    ``covariates`` (``fit``, ``predict``, ``score``...) is a DataFrame with one row per image
    of facts observed before the outcome (``age_weeks``, ``side``, ``machine``). It feeds
    covariate thresholds and a regressor calibrated by stratum
    (``OneSidedConformalRegressor(mondrian=...)``). Inside ``GridSearchCV`` or
    ``cross_validate`` route it with metadata routing:
    ``sklearn.set_config(enable_metadata_routing=True)`` and
    ``policy.set_fit_request(groups=True, covariates=True).set_score_request(covariates=True)``.

    Attributes
    ----------
    estimator_ : OneSidedConformalRegressor
        The fitted regressor.
    classes_ : ndarray of shape (2,)
        ``[0, 1]``: 0 = refer to X-ray, 1 = ultrasound suffices.
    target_names_ : ndarray of str
        Measurements the regressor predicts.
    thresholds_ : dict
        The thresholds in force.

    See Also
    --------
    SelectiveImagingPolicyCV : picks rule and delta by cross-validated utility, one fit per fold.

    References
    ----------
    The DDH paper, arXiv 2511.18457: one-sided conformal bounds and the selective policy.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from skddh import OneSidedConformalRegressor, SelectiveImagingPolicy
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 2))
    >>> y = pd.DataFrame({"alpha": 62 + 4 * X[:, 0] + rng.normal(0, 1, 300),
    ...                   "coverage": 55 + 5 * X[:, 1] + rng.normal(0, 2, 300)})
    >>> policy = SelectiveImagingPolicy(
    ...     OneSidedConformalRegressor(random_state=0), rule="and", delta=0.1
    ... ).fit(X[:200], y[:200], groups=np.arange(200) // 2)  # two images per subject
    >>> policy.predict_lower(X[200:203]).round(1).columns.tolist()
    ['alpha', 'coverage']
    >>> passed = policy.predict(X[200:])
    >>> bool(policy.abnormal(y[200:])[passed == 1].mean() < 0.2)
    True
    """

    _parameter_constraints: dict = {
        **_PolicyBase._parameter_constraints,
        "rule": [StrOptions(set(RULES))],
        "delta": [Interval(Real, 0, 1, closed="neither"), dict],
    }

    def __init__(
        self,
        estimator=None,
        *,
        rule="alpha",
        delta=0.1,
        thresholds=None,
        outcome=None,
        radiation_cost=1.0,
        miss_penalty=10.0,
        memory=None,
    ):
        self.estimator = estimator
        self.rule = rule
        self.delta = delta
        self.thresholds = thresholds
        self.outcome = outcome
        self.radiation_cost = radiation_cost
        self.miss_penalty = miss_penalty
        self.memory = memory

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, groups=None, covariates=None, **fit_params):
        """Fit the conformal regressor on the measurements in ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Images or features, as the regressor takes them.
        y : DataFrame or array-like of shape (n_samples, n_targets)
            Measurements (plus the ``outcome`` column when set).
        groups : array-like of shape (n_samples,), default=None
            Subject ids for the subject-level calibration split.
        covariates : DataFrame of shape (n_samples, n_covariates), default=None
            Facts observed before the outcome, one row per image; passed to a regressor
            calibrated by stratum (``mondrian``), checked otherwise.
        **fit_params : dict
            Passed to the regressor's ``fit``.

        Returns
        -------
        self
        """
        y_fit, _ = self._split_y(y)
        # Fail before the (possibly long) fit when groups, thresholds or delta cannot apply.
        self._check_groups(groups)
        self.thresholds_ = self._check_thresholds(list(y_fit.columns), self.rule)
        if isinstance(self.delta, dict):
            _check_delta_names(self.delta, y_fit.columns)
        covariates = check_covariates(covariates, _num_samples(X), "X", X)
        fit_params = self._with_covariates(X, fit_params, covariates)
        self.estimator_, self._cache_key_ = self._fit_base(X, y_fit, groups, fit_params)
        self.target_names_ = np.asarray(self.estimator_.target_names_)
        self.classes_ = np.array([0, 1])
        return self

    def predict_lower(self, X, covariates=None) -> pd.DataFrame:
        """Calibrated lower bounds per measurement at the policy's ``delta``.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
        covariates : DataFrame, default=None
            One row per image; required by a regressor calibrated by stratum.

        Returns
        -------
        DataFrame of shape (n_samples, n_targets)
            Indexed like ``X`` when ``X`` is a DataFrame; ``-inf`` where unbounded.
        """
        check_is_fitted(self)
        covariates = check_covariates(covariates, _num_samples(X), "X", X)
        used = rule_measurements(self.rule, self.thresholds_)
        delta = _full_delta(self.estimator_, self.delta, used)
        lb = self._lower_bounds(X, delta, covariates)
        index = X.index if isinstance(X, pd.DataFrame) else None
        return pd.DataFrame(lb, columns=self.target_names_, index=index)

    def decision_function(self, X, covariates=None) -> np.ndarray:
        """Margin of the bounds over the thresholds under the rule; passed when ``>= 0``.

        ``-inf`` (fail-safe referral) for a case the policy cannot vouch for, whatever the
        base estimator does with it: a non-finite bound, a bound above the measurement's
        physical maximum, or an input row that is flagged (:func:`untrustworthy_rows`: a
        NaN or infinite value, or a constant image). ``covariates`` (one row per image) is
        required when a threshold depends on them or the regressor is calibrated by stratum.
        """
        lower = self.predict_lower(X, covariates)
        covariates = check_covariates(covariates, len(lower), "X", X)
        thr = resolve_thresholds(self.thresholds_, covariates, len(lower))
        margin = rule_margin(lower, thr, self.rule)
        return np.where(untrustworthy_rows(X), -np.inf, margin)

    def predict(self, X, covariates=None) -> np.ndarray:
        """1 = ultrasound suffices, 0 = refer to X-ray."""
        return (self.decision_function(X, covariates) >= 0).astype(int)

    def score(self, X, y, sample_weight=None, covariates=None) -> float:
        """Decision utility ``-radiation_cost * xray_rate - miss_penalty * missed_rate``."""
        return utility(
            self.predict(X, covariates),
            self.abnormal(y, covariates),
            radiation_cost=self.radiation_cost,
            miss_penalty=self.miss_penalty,
            sample_weight=sample_weight,
        )
