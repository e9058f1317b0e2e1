"""Split-conformal one-sided lower bounds for any regressor: :class:`OneSidedConformalRegressor`.

The statistics live in :mod:`skddh.conformal._quantile` and :mod:`skddh.conformal._scores`;
this module is the scikit-learn shell (the subject-level split, the bias correction, the
scores, prediction).
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GroupShuffleSplit
from sklearn.utils import check_random_state

# Private helpers, stable since scikit-learn 1.3 (we require >= 1.6); sklearn-compat does not
# re-export these constraint classes.
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from sklearn_compat.base import _fit_context

from skddh.conformal._base import (
    CALIBRATION_UNITS,
    LowerBoundBase,
    nan_scores_unbounded,
    subset_fit_params,
    take,
)
from skddh.conformal._mondrian import mondrian_lower_bound, stratum_labels
from skddh.conformal._quantile import fit_affine, one_sided_quantile
from skddh.conformal._scores import subject_max_scores, subsample_indices, subsampled_quantile


class OneSidedConformalRegressor(LowerBoundBase):
    """Calibrated one-sided lower bounds for any regressor, per target, at subject level.

    Fits a clone of ``estimator`` on the training subjects and calibrates on disjoint
    calibration subjects: an optional affine bias correction, one over-prediction score per
    calibration subject, then the finite-sample one-sided quantile per target (the DDH
    paper, arXiv 2511.18457, with subjects as the exchangeable units). What
    ``predict_lower(X)`` guarantees depends on ``calibration_unit`` (see
    :mod:`skddh.conformal`); ``n`` below counts calibration *subjects*.

    Parameters
    ----------
    estimator : regressor, default=None
        Any scikit-learn regressor (multi-output for several targets); ``None`` means
        ``Ridge()``. Wrapped in :class:`~sklearn.frozen.FrozenEstimator`, it is not refitted
        and every case given to ``fit`` is calibration data.
    delta : float or dict, default=0.1
        Miscoverage in (0, 1), or a mapping target name -> miscoverage covering every target.
    calibration_size : float or int, default=0.2
        Share (float in (0, 1)) or number (int) of subjects held out for calibration. The
        split is by subject whenever ``groups`` are given, also for ``"image"`` scores;
        without groups (``"image"`` only) it counts images.
    calibration_unit : {"subject-max", "subject-subsample", "image"}, default="subject-max"
        ``"subject-max"``: each calibration subject scores its largest over-prediction; for
        a new subject, ``P(every one of its images has y >= LB) >= 1 - delta`` (at most
        ``1 - delta + 1/(n+1)`` without ties). ``"subject-subsample"``: one random image per
        subject, ``n_resamples`` times, radii merged by majority vote; covers a random image
        of a new subject with probability ``>= 1 - 2 delta`` in the worst case (exactly in
        ``[1 - delta, 1 - delta + 1/(n+1)]`` with ``n_resamples=1``), close to
        ``1 - delta`` in practice, with narrower bounds than the maximum. ``"image"``: one
        score per image, as if images were independent (explicit opt-in: with correlated
        images of one subject it under-covers; ``groups`` are then not required).
    n_resamples : int, default=51
        Subsamples for ``calibration_unit="subject-subsample"`` (odd: a strict majority).
    bias_correction : {"affine", "affine-split"} or None, default=None
        ``None``: no correction (exact). ``"affine-split"``: least squares on half of the
        calibration subjects, scores from the other half (exact, fewer scores).
        ``"affine"``: the paper's correction, fitted on the scored calibration images
        themselves; the scores are then no longer exchangeable with a new subject's, and
        coverage is only approximately valid (0.829 for a nominal 0.875 at n = 7 in our
        simulation). Kept for fidelity to the paper.
    mondrian : str, callable or None, default=None
        Mondrian (group-conditional) calibration. ``None``: one pooled calibration.
        A string names a column of the ``covariates`` DataFrame given to ``fit`` and
        ``predict_lower``; a callable takes that DataFrame and returns one stratum label per
        row (e.g. ``lambda c: np.where(c["age_weeks"] < 12, "<12w", ">=12w")``). Each stratum
        is then calibrated on its own calibration units (:func:`mondrian_lower_bound`), and
        ``n`` in every statement above becomes ``n_s``, the units of that stratum: for a new
        subject exchangeable with the calibration subjects *of its stratum*,
        ``P(covered | stratum = s) >= 1 - delta`` in every stratum ``s`` (with
        ``"subject-max"``: every image of the subject in ``s``; a subject whose images span
        strata, left and right hips, is one unit in each). The guarantee is conditional on
        the stratum and marginal over everything else (not conditional on the prediction,
        nor on a finer subgroup). Strata must be facts fixed before the outcome (age band,
        side, machine), never a function of ``y``. A stratum with too few calibration units
        for ``delta`` (``1/(n_s + 1) > delta``) and a stratum absent from the calibration
        subjects give ``LB = -inf`` (the policy refers) with a UserWarning naming the
        stratum. Not available with ``calibration_unit="subject-subsample"``.
    random_state : int, RandomState instance or None, default=None
        Controls the training / calibration split and the subsamples.

    Attributes
    ----------
    estimator_ : regressor
        The fitted (or frozen) base estimator.
    affine_ : DataFrame
        Rows ``a`` and ``b`` per target (identity when ``bias_correction=None``).
    residuals_ : ndarray of shape (n_calibration_images, n_targets)
        Residuals ``y - y_tilde`` of the scored calibration images, after the correction.
    scores_ : ndarray of shape (n_calibration, n_targets)
        The conformal scores, one per unit: the subject maxima of ``y_tilde - y`` (or the
        image scores for ``"image"`` and ``"subject-subsample"``).
    subsample_indices_ : ndarray of shape (n_resamples, n_calibration) or None
        Rows of ``residuals_`` drawn per subsample (``"subject-subsample"`` only).
    quantile_ : pandas Series
        ``q+`` per target at the fitted ``delta`` (``LB = y_tilde - q+``); +inf if too small.
        Pooled over all calibration units, also with ``mondrian`` (then for reference only:
        the bounds use ``stratum_quantiles_``).
    strata_ : ndarray or None
        The strata seen among the calibration units (sorted); None without ``mondrian``.
    stratum_counts_ : pandas Series or None
        Calibration units per stratum, ``n_s`` (subjects with an image in the stratum;
        images for ``"image"``); None without ``mondrian``.
    stratum_quantiles_ : DataFrame or None
        ``q+_s`` per stratum (rows) and target (columns) at the fitted ``delta``; +inf where
        the stratum is too small. None without ``mondrian``.
    calibration_strata_ : ndarray or None
        The stratum of each row of ``residuals_``; None without ``mondrian``.
    target_names_ : ndarray of str
        Target names (DataFrame columns, or ``y0``, ``y1``, ...).
    n_calibration_ : int
        Number of calibration units: subjects (images for ``"image"``).
    n_calibration_images_ : int
        Number of scored calibration images.
    calibration_indices_ : ndarray
        Row indices of ``X`` whose scores calibrate.
    calibration_groups_ : ndarray
        Subject ids of the calibration subjects (sorted).
    train_indices_ : ndarray
        Row indices of ``X`` the base estimator was fitted on (empty when frozen).

    See Also
    --------
    OneSidedCrossConformalRegressor : CV+ bounds, every subject both fits and calibrates.

    References
    ----------
    The DDH paper, arXiv 2511.18457. Dunn, Wasserman and Ramdas, "Distribution-free
    prediction sets for two-layer hierarchical models", arXiv 1809.07441.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import OneSidedConformalRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 3))
    >>> y = X @ [2.0, -1.0, 0.5] + rng.gumbel(size=400)
    >>> subject = np.arange(400) // 4  # four images per subject
    >>> model = OneSidedConformalRegressor(delta=0.1, random_state=0)
    >>> model = model.fit(X[:300], y[:300], groups=subject[:300])
    >>> model.n_calibration_  # subjects
    15
    >>> lb = model.predict_lower(X[300:])
    >>> bool(np.mean(y[300:] >= lb) > 0.8)
    True

    Mondrian calibration by age band (a covariate known before the outcome):

    >>> import pandas as pd
    >>> age = pd.DataFrame({"age_weeks": np.repeat(rng.integers(2, 30, 100), 4)})
    >>> band = lambda c: np.where(c["age_weeks"] < 12, "<12w", ">=12w")
    >>> model = OneSidedConformalRegressor(delta=0.2, calibration_size=0.5, mondrian=band,
    ...                                    random_state=0)
    >>> model = model.fit(X[:300], y[:300], groups=subject[:300], covariates=age[:300])
    >>> model.stratum_counts_.to_dict()
    {'<12w': 14, '>=12w': 24}
    >>> lb = model.predict_lower(X[300:], covariates=age[300:])
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict"]), None],
        "delta": [Interval(Real, 0, 1, closed="neither"), dict],
        "calibration_size": [
            Interval(Real, 0, 1, closed="neither"),
            Interval(Integral, 1, None, closed="left"),
        ],
        "calibration_unit": [StrOptions(set(CALIBRATION_UNITS))],
        "n_resamples": [Interval(Integral, 1, None, closed="left")],
        "bias_correction": [StrOptions({"affine", "affine-split"}), None],
        "mondrian": [None, str, callable],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        estimator=None,
        *,
        delta=0.1,
        calibration_size=0.2,
        calibration_unit="subject-max",
        n_resamples=51,
        bias_correction=None,
        mondrian=None,
        random_state=None,
    ):
        self.estimator = estimator
        self.delta = delta
        self.calibration_size = calibration_size
        self.calibration_unit = calibration_unit
        self.n_resamples = n_resamples
        self.bias_correction = bias_correction
        self.mondrian = mondrian
        self.random_state = random_state

    # ---- fitting ---------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, groups=None, covariates=None, **fit_params):
        """Fit the base estimator (unless frozen) and calibrate the lower bounds.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Passed to the base estimator as is (images or features).
        y : array-like of shape (n_samples,) or (n_samples, n_targets), or DataFrame
            Targets; DataFrame column names are kept. NaN is an error.
        groups : array-like of shape (n_samples,)
            Subject ids. Required unless ``calibration_unit="image"``; inside a
            meta-estimator they arrive through metadata routing only.
        covariates : DataFrame of shape (n_samples, n_covariates), default=None
            Facts observed before the outcome, one row per sample (``age_weeks``, ``side``,
            ``machine``). Required with ``mondrian`` (the strata come from it), ignored
            without. Not passed to the base estimator.
        **fit_params : dict
            Passed to the base estimator's ``fit`` (per-sample ones, such as
            ``sample_weight``, sliced to the training rows).

        Returns
        -------
        self
        """
        X, y_arr, groups_arr = self._check_data(X, y, groups)
        n = len(y_arr)
        strata = None
        if self.mondrian is not None:
            if self.calibration_unit == "subject-subsample":
                raise ValueError(
                    "mondrian is not available with calibration_unit='subject-subsample'; "
                    "use 'subject-max' (the default) or 'image'."
                )
            strata = stratum_labels(
                self.mondrian, covariates, n, owner=f"{type(self).__name__}.fit"
            )
        rng = check_random_state(self.random_state)
        base = self._base()
        if isinstance(base, FrozenEstimator):
            self.estimator_ = base
            train, cal = np.arange(0), np.arange(n)
        else:
            train, cal = _split(groups_arr, self.calibration_size, rng, "calibration_size")
            params = subset_fit_params(X, fit_params, train)
            self.estimator_ = clone(base).fit(take(X, train), self._fit_y(y, train), **params)
        self.train_indices_ = train
        pred = self._raw_predict(take(X, cal))
        y_cal, g_cal = y_arr[cal], groups_arr[cal]
        if self.bias_correction == "affine-split":
            fit_part, score_part = _split(g_cal, 0.5, rng, "calibration data")
            a, b = fit_affine(pred[fit_part], y_cal[fit_part])
            cal, pred, y_cal, g_cal = (
                cal[score_part],
                pred[score_part],
                y_cal[score_part],
                g_cal[score_part],
            )
        elif self.bias_correction == "affine":
            a, b = fit_affine(pred, y_cal)
        else:
            a, b = np.ones(y_arr.shape[1]), np.zeros(y_arr.shape[1])
        self.affine_ = pd.DataFrame([a, b], index=["a", "b"], columns=self.target_names_)
        self.residuals_ = y_cal - (a * pred + b)
        # over-prediction scores s = y_tilde - y
        image_scores = nan_scores_unbounded(-self.residuals_, type(self).__name__)
        self.calibration_indices_ = cal
        self.n_calibration_images_ = len(cal)
        self.subsample_indices_ = None
        if self.calibration_unit == "subject-max":
            self.scores_, self.calibration_groups_ = subject_max_scores(image_scores, g_cal)
        else:
            self.scores_ = image_scores
            self.calibration_groups_ = np.unique(g_cal)
            if self.calibration_unit == "subject-subsample":
                self.subsample_indices_ = subsample_indices(
                    g_cal, self.n_resamples, rng.randint(2**32)
                )
        # Units: subjects (their count, also for the subsample), or images by explicit choice.
        self.n_calibration_ = (
            len(self.scores_) if self.calibration_unit == "image" else len(self.calibration_groups_)
        )
        self.quantile_ = pd.Series(
            self._quantiles(self.delta), index=self.target_names_, name="quantile"
        )
        self._calibrate_strata(None if strata is None else strata[cal], g_cal)
        return self

    def _calibrate_strata(self, cal_strata, g_cal):
        """Mondrian state: the strata, their unit counts and ``q+_s`` at the fitted delta."""
        self.calibration_strata_ = cal_strata
        if cal_strata is None:
            self.strata_ = self.stratum_counts_ = self.stratum_quantiles_ = None
            self._stratum_groups = None
            return
        self.strata_ = np.unique(cal_strata)
        # the units mondrian_lower_bound counts: subjects with an image in s, or images
        self._stratum_groups = None if self.calibration_unit == "image" else g_cal
        if self._stratum_groups is None:
            counts = [int(np.sum(cal_strata == s)) for s in self.strata_]
        else:
            counts = [len(np.unique(g_cal[cal_strata == s])) for s in self.strata_]
        self.stratum_counts_ = pd.Series(counts, index=self.strata_, name="n_calibration")
        self.stratum_quantiles_ = pd.DataFrame(
            self._stratum_quantiles(self.delta), index=self.strata_, columns=self.target_names_
        )

    def _stratum_quantiles(self, delta) -> np.ndarray:
        """``q+_s`` of shape (n_strata, n_targets) at ``delta``; +inf (and a warning) where
        a stratum is too small. Computed by :func:`mondrian_lower_bound` as ``0 - LB``."""
        deltas = self._deltas(delta)
        # a NaN prediction scored +inf (nan_scores_unbounded): residual -inf, the same rank
        r = np.where(np.isnan(self.residuals_), -np.inf, self.residuals_)
        q = np.empty((len(self.strata_), len(deltas)))
        for d in dict.fromkeys(deltas):  # one call per distinct delta: one warning each
            cols = [j for j, dj in enumerate(deltas) if dj == d]
            q[:, cols] = -mondrian_lower_bound(
                r[:, cols],
                self.calibration_strata_,
                np.zeros((len(self.strata_), len(cols))),
                self.strata_,
                delta=d,
                groups=self._stratum_groups,
            )
        return q

    def _raw_predict(self, X):
        pred = np.asarray(self.estimator_.predict(X), dtype=float)
        return pred.reshape(pred.shape[0], -1)

    def _first_estimator(self):
        return self.estimator_

    def _quantiles(self, delta):
        """``q+`` per target at ``delta`` (validated), warning where it is infinite."""
        deltas = self._deltas(delta)
        if self.subsample_indices_ is not None:
            q = np.array(
                [
                    subsampled_quantile(self.scores_[:, j], self.subsample_indices_, d)
                    for j, d in enumerate(deltas)
                ]
            )
        else:
            q = np.array([one_sided_quantile(self.scores_[:, j], d) for j, d in enumerate(deltas)])
        self._warn_unbounded(q)
        return q

    # ---- prediction --------------------------------------------------------------------
    def predict(self, X):
        """Bias-corrected predictions ``y_tilde = a * y_hat + b``, shaped like ``y`` in fit."""
        return self._shape(self.predict_components(X))

    def predict_components(self, X) -> np.ndarray:
        """Bias-corrected predictions ``y_tilde`` of shape (n_samples, n_targets).

        With :meth:`lower_from_components`, the fast path for many deltas on one forward pass.
        """
        check_is_fitted(self)
        return (
            self._raw_predict(X) * self.affine_.loc["a"].to_numpy()
            + self.affine_.loc["b"].to_numpy()
        )

    def lower_from_components(self, components, delta=None, covariates=None) -> np.ndarray:
        """Lower bounds ``y_tilde - q+(delta)`` of shape (n_samples, n_targets).

        Parameters
        ----------
        components : ndarray of shape (n_samples, n_targets)
            From :meth:`predict_components`.
        delta : float or dict, default=None
            The fitted ``delta`` when None.
        covariates : DataFrame of shape (n_samples, n_covariates), default=None
            The rows' covariates, required with ``mondrian`` (each row's stratum picks its
            ``q+_s``), ignored without.

        Returns
        -------
        ndarray of shape (n_samples, n_targets)
            ``-inf`` where the calibration set cannot support ``delta`` and, with
            ``mondrian``, for a row whose stratum is too small or was not seen in calibration
            (with a warning).
        """
        check_is_fitted(self)
        comp = np.asarray(components, dtype=float)
        if self.strata_ is None:
            q = self.quantile_.to_numpy() if delta is None else self._quantiles(delta)
            return comp - q
        test_strata = stratum_labels(
            self.mondrian, covariates, len(comp), owner=f"{type(self).__name__}.predict_lower"
        )
        q = self.stratum_quantiles_.to_numpy() if delta is None else self._stratum_quantiles(delta)
        idx = pd.Index(self.strata_).get_indexer(test_strata)
        seen = idx >= 0
        out = np.full(comp.shape, -np.inf)
        out[seen] = comp[seen] - q[idx[seen]]
        if not seen.all():
            unseen = [
                v.item() if isinstance(v, np.generic) else v  # plain repr
                for v in pd.unique(test_strata[~seen])
            ]
            warnings.warn(
                f"{type(self).__name__}: stratum {unseen!r} has no calibration "
                f"{self._unit_word()} (strata seen in calibration: {self.strata_.tolist()}); "
                "its lower bounds are -inf.",
                UserWarning,
                stacklevel=3,
            )
        return out


def _split(groups, size, rng, what):
    """Training / calibration rows, split by subject (the unit of exchangeability)."""
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError(
            f"{what}: need at least 2 distinct subjects (groups) to split, got {n_groups} "
            f"(in {len(groups)} sample{'s' if len(groups) != 1 else ''})."
        )
    if isinstance(size, Integral) and size >= n_groups:
        raise ValueError(
            f"{what}={size!r} asks for {size} calibration subjects, but there are only {n_groups}."
        )
    splitter = GroupShuffleSplit(1, test_size=size, random_state=rng.randint(2**32))
    train, cal = next(splitter.split(np.zeros(len(groups)), groups=groups))
    if len(cal) == 0 or len(train) == 0:
        raise ValueError(f"{what}={size!r} leaves an empty training or calibration part.")
    return train, cal
