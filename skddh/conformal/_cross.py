"""Cross-conformal (CV+) one-sided lower bounds at subject level, for tiny cohorts.

Split conformal spends subjects twice over: those that calibrate do not train. With K folds
over subjects, CV+ (Barber, Candes, Ramdas and Tibshirani, "Predictive inference with the
jackknife+", Ann. Statist. 2021) lets every subject do both: the model fitted without fold
``k`` scores the subjects of fold ``k``, and a new case's bound combines every fold model's
prediction with the scores it made::

    LB(x) = the j-th smallest of { mu_{-k(i)}(x) - s_i : i = 1..n },  j = floor(delta (n + 1))

with ``s_i`` subject ``i``'s largest over-prediction ``mu_{-k(i)}(x_ij) - y_ij`` over its
images, and ``LB = -inf`` when ``j = 0``. Guarantee, for a new subject exchangeable with the
``n`` subjects (Barber et al. 2021, Theorem 4, with subjects as the units; the maximum makes
the event "every image of the subject is covered"):

    P(every image of the new subject has y >= LB) >= 1 - 2 delta - min(2 (1 - 1/K) / (n/K + 1),
                                                                       (1 - K/n) / (K + 1))

(``1 - 2 delta`` for the jackknife+, ``K = n``). That is the worst case; in simulation CV+
covers close to ``1 - delta`` (see ``tests/test_conformal_cross.py``).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.model_selection import GroupKFold, KFold, check_cv
from sklearn.utils import check_random_state

# Private helpers, stable since scikit-learn 1.3; sklearn-compat does not re-export them.
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from sklearn_compat.base import _fit_context

from skddh.conformal._base import LowerBoundBase, nan_scores_unbounded, subset_fit_params, take
from skddh.conformal._quantile import _exact_k
from skddh.conformal._scores import subject_max_scores


def cv_plus_lower_bound(fold_predictions, scores, unit_fold, delta: float) -> np.ndarray:
    """CV+ one-sided lower bound for one target.

    Parameters
    ----------
    fold_predictions : array-like of shape (n_samples, n_folds)
        Each fold model's prediction for the new cases.
    scores : array-like of shape (n_units,)
        Out-of-fold over-prediction scores of the calibration units.
    unit_fold : array-like of int, shape (n_units,)
        The fold whose model scored each unit.
    delta : float in (0, 1)

    Returns
    -------
    ndarray of shape (n_samples,)
        The ``floor(delta (n + 1))``-th smallest ``mu_{-k(i)}(x) - s_i``; ``-inf`` if that
        index is 0.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import cv_plus_lower_bound
    >>> preds = np.array([[10.0, 12.0]])  # one new case, two fold models
    >>> scores, fold = np.array([1.0, 2.0, 3.0, 0.5]), np.array([0, 0, 1, 1])
    >>> cv_plus_lower_bound(preds, scores, fold, 0.4)  # 2nd smallest of [9, 8, 9, 11.5]
    array([9.])
    """
    p = np.asarray(fold_predictions, dtype=float)
    s = np.asarray(scores, dtype=float)
    n = len(s)
    j = n + 1 - _exact_k(n, delta)  # floor(delta (n + 1)) in exact arithmetic
    if j <= 0:
        return np.full(len(p), -np.inf)
    values = p[:, np.asarray(unit_fold)] - s  # (n_samples, n_units)
    # A NaN (a fold model that predicted NaN, for the case or a calibration subject) must not
    # sort last and drop out: as -inf it can only lower the bound (conservative).
    values = np.where(np.isnan(values), -np.inf, values)
    return np.partition(values, j - 1, axis=1)[:, j - 1]


class OneSidedCrossConformalRegressor(LowerBoundBase):
    """Cross-conformal (CV+) one-sided lower bounds per target, folds over subjects.

    Every subject serves both fitting and calibration: ``cv`` folds over subjects, a clone
    of ``estimator`` fitted per fold, out-of-fold scores one per subject (its largest
    over-prediction), and the CV+ lower bound of :func:`cv_plus_lower_bound`. See
    :mod:`skddh.conformal._cross` for the guarantee: at least ``1 - 2 delta`` (less a small
    term for K-fold) in the worst case, close to ``1 - delta`` in practice.

    Parameters
    ----------
    estimator : regressor, default=None
        Any scikit-learn regressor; ``None`` means ``Ridge()``. It is fitted once per fold.
    delta : float or dict, default=0.1
        Miscoverage in (0, 1), or a mapping target name -> miscoverage covering every target.
    cv : int or cross-validation generator, default=5
        An int means ``GroupKFold(cv, shuffle=True)`` over subjects (over rows when
        ``groups`` is None with ``calibration_unit="image"``). A splitter must partition
        the rows (each row in exactly one test fold) and keep every subject in one fold.
    calibration_unit : {"subject-max", "image"}, default="subject-max"
        One score per subject (its maximum over-prediction), or per image (explicit opt-in;
        ``groups`` are then not required).
    n_jobs : int, default=None
        Folds fitted in parallel (joblib).
    random_state : int, RandomState instance or None, default=None
        Shuffles the subjects into folds when ``cv`` is an int.

    Attributes
    ----------
    estimators_ : list of regressors
        One fitted clone per fold.
    scores_ : ndarray of shape (n_calibration, n_targets)
        Out-of-fold over-prediction scores, one per unit.
    unit_fold_ : ndarray of shape (n_calibration,)
        The fold (index into ``estimators_``) whose model scored each unit.
    calibration_groups_ : ndarray
        Unit ids (subjects, or row indices for ``"image"``).
    n_calibration_ : int
        Number of calibration units (every subject).
    target_names_ : ndarray of str
        Target names.

    See Also
    --------
    OneSidedConformalRegressor : split conformal, exact in ``[1 - delta, 1 - delta + 1/(n+1)]``.

    References
    ----------
    Barber, Candes, Ramdas and Tibshirani, "Predictive inference with the jackknife+",
    Annals of Statistics 49(1), 2021, arXiv 1905.02928.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import OneSidedCrossConformalRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(160, 3))
    >>> y = X @ [2.0, -1.0, 0.5] + rng.gumbel(size=160)
    >>> subject = np.arange(160) // 4
    >>> model = OneSidedCrossConformalRegressor(cv=5, random_state=0)
    >>> model = model.fit(X[:120], y[:120], groups=subject[:120])
    >>> model.n_calibration_, len(model.estimators_)
    (30, 5)
    >>> lb = model.predict_lower(X[120:])
    >>> bool(np.mean(y[120:] >= lb) > 0.8)
    True
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict"]), None],
        "delta": [Interval(Real, 0, 1, closed="neither"), dict],
        "cv": ["cv_object"],
        "calibration_unit": [StrOptions({"subject-max", "image"})],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        estimator=None,
        *,
        delta=0.1,
        cv=5,
        calibration_unit="subject-max",
        n_jobs=None,
        random_state=None,
    ):
        self.estimator = estimator
        self.delta = delta
        self.cv = cv
        self.calibration_unit = calibration_unit
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _folds(self, groups_arr, n, given):
        cv = self.cv
        if isinstance(cv, Integral):
            seed = check_random_state(self.random_state).randint(2**32)
            n_units = len(np.unique(groups_arr))
            if cv > n_units:
                raise ValueError(
                    f"cv={cv} folds need at least {cv} {self._unit_word()}, got {n_units} "
                    f"(in {n} sample{'s' if n != 1 else ''})."
                )
            # Folds over subjects whenever they are known (also for image-level scores: no
            # subject both trains and is scored); over rows only without groups.
            splitter = GroupKFold if given else KFold
            cv = splitter(cv, shuffle=True, random_state=seed)
        cv = check_cv(cv)
        # Without groups (image-level by choice) a plain splitter gets none, and does not warn.
        folds = list(cv.split(np.zeros(n), None, groups_arr if given else None))
        seen = np.zeros(n, dtype=int)
        for train, test in folds:
            seen[test] += 1
            if np.intersect1d(groups_arr[train], groups_arr[test]).size:
                raise ValueError(
                    "cv puts images of one subject in a fold's training and test part; CV+ "
                    "needs folds over subjects (e.g. GroupKFold)."
                )
        if (seen != 1).any():
            raise ValueError(
                "cv must partition the rows: every row in exactly one test fold "
                f"({int((seen == 0).sum())} rows in none, {int((seen > 1).sum())} in several)."
            )
        return folds

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, groups=None, covariates=None, **fit_params):
        """Fit one clone per fold and score every subject out of fold.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
        y : array-like of shape (n_samples,) or (n_samples, n_targets), or DataFrame
        groups : array-like of shape (n_samples,)
            Subject ids; required unless ``calibration_unit="image"`` (through metadata
            routing inside meta-estimators).
        covariates : DataFrame, default=None
            Accepted and ignored, so that code written for a Mondrian
            :class:`OneSidedConformalRegressor` runs unchanged (CV+ has no Mondrian option).
        **fit_params : dict
            Passed to the base estimator's ``fit``, per-sample ones sliced per fold.

        Returns
        -------
        self
        """
        X, y_arr, groups_arr = self._check_data(X, y, groups)
        folds = self._folds(groups_arr, len(y_arr), groups is not None)
        base = self._base()

        def fit_fold(train):
            params = subset_fit_params(X, fit_params, train)
            return clone(base).fit(take(X, train), self._fit_y(y, train), **params)

        self.estimators_ = Parallel(n_jobs=self.n_jobs)(
            delayed(fit_fold)(train) for train, _ in folds
        )
        image_scores = np.empty_like(y_arr)
        image_fold = np.empty(len(y_arr), dtype=int)
        for k, (_, test) in enumerate(folds):
            image_scores[test] = _predict(self.estimators_[k], take(X, test)) - y_arr[test]
            image_fold[test] = k
        image_scores = nan_scores_unbounded(image_scores, type(self).__name__)
        if self.calibration_unit == "image":
            self.scores_, self.calibration_groups_ = image_scores, np.arange(len(y_arr))
            self.unit_fold_ = image_fold
        else:
            self.scores_, self.calibration_groups_ = subject_max_scores(image_scores, groups_arr)
            _, first = np.unique(groups_arr, return_index=True)
            self.unit_fold_ = image_fold[first]  # a subject lies in one fold
        self.n_calibration_ = len(self.calibration_groups_)
        self._deltas(self.delta)  # validate the fitted delta now, not at predict
        return self

    def _first_estimator(self):
        return self.estimators_[0]

    # ---- prediction --------------------------------------------------------------------
    def predict_components(self, X) -> np.ndarray:
        """Every fold model's prediction: shape (n_samples, n_folds, n_targets)."""
        check_is_fitted(self)
        return np.stack([_predict(est, X) for est in self.estimators_], axis=1)

    def lower_from_components(self, components, delta=None, covariates=None) -> np.ndarray:
        """CV+ lower bounds of shape (n_samples, n_targets) from :meth:`predict_components`.

        ``covariates`` is accepted and ignored (no Mondrian option here).
        """
        check_is_fitted(self)
        comp = np.asarray(components, dtype=float)
        deltas = self._deltas(self.delta if delta is None else delta)
        out = np.column_stack(
            [
                cv_plus_lower_bound(comp[:, :, j], self.scores_[:, j], self.unit_fold_, d)
                for j, d in enumerate(deltas)
            ]
        )
        n = self.n_calibration_
        self._warn_unbounded(np.array([np.inf if _exact_k(n, d) > n else 0.0 for d in deltas]))
        return out

    def predict(self, X):
        """Mean of the fold models' predictions, shaped like ``y`` in fit."""
        return self._shape(self.predict_components(X).mean(axis=1))


def _predict(estimator, X):
    pred = np.asarray(estimator.predict(X), dtype=float)
    return pred.reshape(pred.shape[0], -1)
