"""Policies calibrated for the decision, not per measurement: risk control and selection.

:class:`~skddh.SelectiveImagingPolicy` bounds each measurement; the two policies here
calibrate the pass decision itself on held-out subjects, around a point regressor:

- :class:`RiskControlledPolicy` picks the margin ``m`` (pass when the rule's margin of the
  *predictions* over the thresholds is ``>= m``) so that the missed-finding rate
  ``P(pass and abnormal)`` of a new subject is controlled: with high probability
  (Learn-then-Test, ``method="ltt"``) or in expectation (conformal risk control,
  ``method="crc"``); the pure functions are :func:`skddh.conformal.learn_then_test` and
  :func:`skddh.conformal.conformal_risk_control`.
- :class:`ConformalSelectionPolicy` passes the hips whose conformal p-values survive
  Benjamini-Hochberg at level ``q``: the share of abnormal hips among those passed (a false
  discovery rate) is at most ``q`` (:func:`skddh.conformal.conformal_selection`).

Both split the training data by subject into a part that fits the regressor and a part that
calibrates, as :class:`~skddh.OneSidedConformalRegressor` does.
"""

from __future__ import annotations

import inspect
from numbers import Integral, Real

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import clone, is_classifier
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import Ridge
from sklearn.utils import check_random_state, get_tags

# Private helpers, stable since scikit-learn 1.3; sklearn-compat does not re-export them.
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import _num_samples, check_is_fitted
from sklearn_compat.base import _fit_context

from skddh.conformal._base import check_groups, no_groups_message, subset_fit_params, take
from skddh.conformal._risk import (
    AGGREGATES,
    LTT_METHODS,
    conformal_risk_control,
    learn_then_test,
    subject_losses,
)
from skddh.conformal._selection import ConformalSelection, conformal_selection
from skddh.conformal._split import _split
from skddh.metrics import utility
from skddh.policy._policy import _PolicyBase, untrustworthy_rows
from skddh.policy._rules import RULES, rule_margin
from skddh.policy._thresholds import check_covariates, resolve_thresholds

__all__ = ["ConformalSelectionPolicy", "RiskControlledPolicy"]


def _untrusted_units(margin, units) -> np.ndarray:
    """Per row: whether its unit (subject, or row) has any non-finite margin."""
    codes = np.unique(units, return_inverse=True)[1]
    bad = np.zeros(codes.max() + 1 if len(codes) else 0, dtype=bool)
    np.logical_or.at(bad, codes, ~np.isfinite(margin))
    return bad[codes]


def default_margins() -> np.ndarray:
    """-5 to 30 (deg or pp) in steps of 0.5, then ``+inf`` (refer every hip)."""
    return np.r_[np.linspace(-5.0, 30.0, 71), np.inf]


class _CalibratedPointPolicy(_PolicyBase):
    """A point regressor fitted on some subjects, the decision calibrated on the others."""

    def _base_bounds(self):  # the fitted regressor is a plain one here
        return Ridge() if self.estimator is None else self.estimator

    def _fit_point(self, X, y, groups, covariates, fit_params, rule):
        """Fit on the training subjects; what the calibration subjects need afterwards."""
        if sp.issparse(X):
            X = X.tocsr()  # row indexing for the split; the regressor decides about sparse
        y_fit, _ = self._split_y(y)
        n = len(y_fit)
        if _num_samples(X) != n:
            raise ValueError(f"X has {_num_samples(X)} rows but y has {n}.")
        proxy = self._is_proxy()
        if proxy and getattr(self, "outcome", None) is None:
            raise ValueError(
                f"estimator {type(self._base_bounds()).__name__} is a classifier: it predicts "
                "the outcome column, so set outcome= (the paired X-ray finding, 0/1)."
            )
        # A classifier predicts the outcome, not the measurements: no thresholds apply.
        self.thresholds_ = {} if proxy else self._check_thresholds(list(y_fit.columns), rule)
        abnormal = self.abnormal(y, covariates)  # checks NaN and the outcome before fitting
        covariates = check_covariates(covariates, n, "X", X)
        if groups is None and self.calibration_unit != "image":
            raise ValueError(no_groups_message(type(self).__name__, self.calibration_unit))
        g = np.arange(n) if groups is None else check_groups(groups)
        if len(g) != n:
            raise ValueError(f"groups has {len(g)} entries but y has {n} rows.")
        rng = check_random_state(self.random_state)
        if isinstance(self._base_bounds(), FrozenEstimator):  # not refitted: all calibrate
            train, cal = np.array([], dtype=int), np.arange(n)
        else:
            train, cal = _split(g, self.calibration_size, rng, "calibration_size")
        if proxy:
            target = abnormal.astype(int)
        else:
            target = y_fit.to_numpy(dtype=float)
            target = target.ravel() if target.shape[1] == 1 else target
        params = subset_fit_params(X, fit_params, train)
        base = clone(self._base_bounds())
        if "groups" in inspect.signature(base.fit).parameters:  # e.g. CrossModalProxy
            params["groups"] = g[train]
        self.estimator_ = (
            base if len(train) == 0 else base.fit(take(X, train), target[train], **params)
        )
        self.target_names_ = (
            np.asarray([self.outcome], dtype=object)
            if proxy
            else np.asarray(y_fit.columns, dtype=object)
        )
        self.classes_ = np.array([0, 1])
        self.n_calibration_ = len(np.unique(g[cal]))
        self._seed = int(rng.randint(2**31 - 1))
        cov_cal = None if covariates is None else covariates.iloc[cal].reset_index(drop=True)
        margin = self._margin(take(X, cal), cov_cal, rule)
        # "image": the split is still by subject (when groups are given), each image a unit.
        units = np.arange(len(cal)) if self.calibration_unit == "image" else g[cal]
        return margin, abnormal[cal], units, cov_cal, y_fit.iloc[cal], cal

    def _is_proxy(self) -> bool:
        """Whether the base is a classifier of the outcome (a cross-modal proxy)."""
        return is_classifier(self._base_bounds())

    def predict_point(self, X) -> pd.DataFrame:
        """The regressor's point predictions, one column per measurement.

        With a classifier base (a cross-modal proxy): its probability of the outcome, in a
        column named after ``outcome``.
        """
        check_is_fitted(self)
        if self._is_proxy():
            proba = self.estimator_.predict_proba(X)
            classes = list(self.estimator_.classes_)
            pred = np.asarray(proba, dtype=float)[:, [classes.index(1)]]
        else:
            pred = np.asarray(self.estimator_.predict(X), dtype=float)
            pred = pred.reshape(_num_samples(X), -1)
        index = X.index if isinstance(X, pd.DataFrame) else None
        return pd.DataFrame(pred, columns=self.target_names_, index=index)

    def _margin(self, X, covariates, rule) -> np.ndarray:
        """The rule's margin of the point predictions over the thresholds; -inf if untrusted.

        As in :class:`~skddh.SelectiveImagingPolicy`, the regressor sees every row (a regressor
        that refuses NaN raises) and a row flagged by
        :func:`~skddh.policy._policy.untrustworthy_rows` is referred whatever it predicts.
        """
        pred = self.predict_point(X)
        if self._is_proxy():  # the safer the hip, the larger: 1 - P(abnormal outcome)
            p = pred.to_numpy()[:, 0]
            margin = np.where(np.isfinite(p) & (p >= 0) & (p <= 1), 1.0 - p, -np.inf)
        else:
            thr = resolve_thresholds(self.thresholds_, covariates, len(pred))
            margin = rule_margin(pred, thr, rule)
        return np.where(untrustworthy_rows(X), -np.inf, margin)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = get_tags(self._base_bounds()).input_tags.sparse
        return tags


class RiskControlledPolicy(_CalibratedPointPolicy):
    """Pass a hip when its predictions clear the thresholds by a margin chosen to control misses.

    The policies ``pass when rule_margin(predictions) >= m`` form a family indexed by the
    margin ``m`` (larger is more conservative). ``fit`` fits ``estimator`` on the training
    subjects and, on the calibration subjects, picks the least conservative ``m`` on
    ``margins`` whose missed-finding rate is controlled:

    - ``method="ltt"`` (Learn-then-Test, Angelopoulos et al., arXiv 2110.01052):
      ``P(R(m_hat) <= alpha) >= 1 - epsilon`` over the calibration draw, where ``R(m)`` is
      the probability that a new subject is passed while abnormal. Multiple testing over the
      grid is handled by ``ltt_method``: fixed-sequence testing from the most conservative
      margin down (valid since the risk is non-increasing in ``m``) or Bonferroni.
    - ``method="crc"`` (conformal risk control, Angelopoulos et al., arXiv 2208.02814):
      ``E[R(m_hat)] <= alpha``, on average over calibration sets.

    Both assume the calibration subjects and the new one are i.i.d. from one population; a
    subject is the unit (``groups``), and ``aggregate="max"`` counts a subject as missed when
    any of its images is passed while abnormal. Unlike the lower-bound rules, every ``rule``
    (``"or"`` included) gets the guarantee, since it is calibrated for the decision itself.
    Abnormal means the ``outcome`` column when set, else a thresholded measurement truly
    below its threshold (which may depend on covariates, as in
    :class:`~skddh.SelectiveImagingPolicy`).

    Parameters
    ----------
    estimator : regressor or classifier, default=None
        Point regressor of the measurements; ``None`` means ``Ridge()``. Wrapped in
        :class:`~sklearn.frozen.FrozenEstimator` it is not refitted and every row given to
        ``fit`` calibrates (it must not have been fitted on them). A **classifier** of the
        ``outcome`` column (the cross-modal proxy, :class:`~skddh.models.CrossModalProxy`)
        makes the policy refer on the predicted X-ray finding: the margin is ``1 -
        P(abnormal)``, ``margins`` are then probabilities (default 0 to 1 in steps of 0.01,
        then ``+inf``), ``thresholds`` and ``rule`` do not apply, and ``outcome`` is
        required. A base whose ``fit`` takes ``groups`` gets the training subjects' ids.
    alpha : float in (0, 1), default=0.1
        Target missed-finding rate.
    method : {"ltt", "crc"}, default="ltt"
        High-probability (``"ltt"``) or expected (``"crc"``) control.
    epsilon : float in (0, 1), default=0.1
        Learn-then-Test's allowed probability of a calibration set whose chosen policy
        exceeds ``alpha`` (ignored by ``"crc"``).
    ltt_method : {"fixed_sequence", "bonferroni"}, default="fixed_sequence"
        Learn-then-Test's multiple-testing correction.
    margins : array-like, default=None
        Strictly increasing grid of margins, in the measurements' units; ``None`` means -5 to
        30 in steps of 0.5. ``+inf`` (refer every hip) is appended when the grid does not end
        with it: it is the fail-safe end both guarantees need.
    rule : {"alpha", "or", "and"}, default="alpha"
        How the measurements' margins combine (see :func:`~skddh.policy.rule_margin`).
    thresholds : dict, default=None
        As in :class:`~skddh.SelectiveImagingPolicy`.
    outcome : str, default=None
        As in :class:`~skddh.SelectiveImagingPolicy`.
    aggregate : {"max", "mean"}, default="max"
        A subject's loss: 1 if any image is missed (``"max"``) or the share missed.
    calibration_size : float or int, default=0.3
        Share (or number) of subjects that calibrate the margin.
    calibration_unit : {"subject", "image"}, default="subject"
        ``"subject"`` needs ``groups`` at ``fit`` (inside ``GridSearchCV``, through metadata
        routing); ``"image"`` makes every row a calibration unit (the split stays by subject
        when ``groups`` are given), exact only when no subject has several images.
    radiation_cost, miss_penalty : float, default=1.0, 10.0
        The weights of :meth:`score`.
    random_state : int, RandomState or None, default=None
        Seed of the subject-level split.

    Attributes
    ----------
    estimator_ : regressor
        Fitted on the training subjects.
    margin_ : float
        The chosen margin; ``inf`` (refer everyone, with a warning) when none is certified.
    margins_ : ndarray
        The grid.
    calibration_risk_ : ndarray of shape (n_margins,)
        The calibration subjects' missed-finding rate at each margin (the plug-in estimate).
    p_values_ : ndarray of shape (n_margins,) or None
        Learn-then-Test's p-values of ``R(m) > alpha`` (``None`` for ``"crc"``).
    n_calibration_ : int
        Calibration subjects.
    thresholds_, target_names_, classes_
        As in :class:`~skddh.SelectiveImagingPolicy`.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from skddh import RiskControlledPolicy
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(600, 1))
    >>> y = pd.DataFrame({"alpha": 62 + 4 * X[:, 0] + rng.normal(0, 1.5, 600)})
    >>> policy = RiskControlledPolicy(alpha=0.05, thresholds={"alpha": 60.0}, random_state=0)
    >>> policy = policy.fit(X[:400], y[:400], groups=np.arange(400) // 2)
    >>> passed = policy.predict(X[400:])
    >>> bool(np.mean((passed == 1) & policy.abnormal(y[400:])) <= 0.05)
    True
    """

    _parameter_constraints: dict = {
        **_PolicyBase._parameter_constraints,
        "alpha": [Interval(Real, 0, 1, closed="neither")],
        "method": [StrOptions({"ltt", "crc"})],
        "epsilon": [Interval(Real, 0, 1, closed="neither")],
        "ltt_method": [StrOptions(set(LTT_METHODS))],
        "margins": ["array-like", None],
        "rule": [StrOptions(set(RULES))],
        "aggregate": [StrOptions(set(AGGREGATES))],
        "calibration_size": [
            Interval(Real, 0, 1, closed="neither"),
            Interval(Integral, 1, None, closed="left"),
        ],
        "calibration_unit": [StrOptions({"subject", "image"})],
        "random_state": ["random_state"],
        "estimator": [HasMethods(["fit", "predict"]), None],
    }
    _parameter_constraints.pop("memory")

    def __init__(
        self,
        estimator=None,
        *,
        alpha=0.1,
        method="ltt",
        epsilon=0.1,
        ltt_method="fixed_sequence",
        margins=None,
        rule="alpha",
        thresholds=None,
        outcome=None,
        aggregate="max",
        calibration_size=0.3,
        calibration_unit="subject",
        radiation_cost=1.0,
        miss_penalty=10.0,
        random_state=None,
    ):
        self.estimator = estimator
        self.alpha = alpha
        self.method = method
        self.epsilon = epsilon
        self.ltt_method = ltt_method
        self.margins = margins
        self.rule = rule
        self.thresholds = thresholds
        self.outcome = outcome
        self.aggregate = aggregate
        self.calibration_size = calibration_size
        self.calibration_unit = calibration_unit
        self.radiation_cost = radiation_cost
        self.miss_penalty = miss_penalty
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, groups=None, covariates=None, sample_weight=None, **fit_params):
        """Fit the regressor on the training subjects; choose the margin on the others.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
        y : DataFrame or array-like of shape (n_samples, n_targets)
            Measurements (plus the ``outcome`` column when set).
        groups : array-like of shape (n_samples,), default=None
            Subject ids; required unless ``calibration_unit="image"``.
        covariates : DataFrame of shape (n_samples, n_covariates), default=None
            For thresholds that depend on covariates.
        sample_weight : array-like of shape (n_samples,), default=None
            Passed to the regressor's ``fit``, sliced to the training rows (not used in
            calibration: every calibration unit counts once).
        **fit_params : dict
            Passed to the regressor's ``fit`` (per-sample ones sliced to the training rows).

        Returns
        -------
        self
        """
        if self.margins is not None:
            margins = np.asarray(self.margins, float)
        elif self._is_proxy():
            margins = np.r_[np.linspace(0.0, 1.0, 101), np.inf]
        else:
            margins = default_margins()
        if margins.ndim != 1 or len(margins) == 0 or np.isnan(margins).any():
            raise ValueError("margins must be a non-empty 1-D array of numbers.")
        if (np.diff(margins) <= 0).any():
            raise ValueError("margins must be strictly increasing (the most conservative last).")
        if np.isfinite(margins[-1]):
            # Both guarantees need a last policy with no loss (refer every hip); without it
            # the fallback would be a finite margin that controls nothing.
            margins = np.r_[margins, np.inf]
        if sample_weight is not None:
            fit_params = {**fit_params, "sample_weight": sample_weight}
        margin, abnormal, g_cal, _, _, _ = self._fit_point(
            X, y, groups, covariates, fit_params, self.rule
        )
        # rule_margin(pred - m) = rule_margin(pred) - m for every rule (min/max of shifted
        # margins), so the policy at m passes exactly where margin >= m.
        with np.errstate(invalid="ignore"):
            passed = np.isfinite(margin)[:, None] & (margin[:, None] >= margins[None, :])
        losses = (passed & abnormal[:, None]).astype(float)
        self.margins_ = margins
        self.calibration_risk_ = subject_losses(losses, g_cal, aggregate=self.aggregate)[0].mean(0)
        if self.method == "ltt":
            res = learn_then_test(
                losses,
                margins,
                alpha=self.alpha,
                epsilon=self.epsilon,
                method=self.ltt_method,
                groups=g_cal,
                aggregate=self.aggregate,
            )
            self.margin_, self.p_values_ = float(res.lambda_hat), res.p_values
        else:
            self.margin_ = conformal_risk_control(
                losses, margins, alpha=self.alpha, groups=g_cal, aggregate=self.aggregate
            )
            self.p_values_ = None
        return self

    def decision_function(self, X, covariates=None) -> np.ndarray:
        """The rule's margin of the predictions over the thresholds, less ``margin_``.

        Passed when ``>= 0``; ``-inf`` (referred) for a non-finite prediction or an input row
        no model can vouch for (:func:`~skddh.policy._policy.untrustworthy_rows`).
        """
        check_is_fitted(self)
        covariates = check_covariates(covariates, _num_samples(X), "X", X)
        with np.errstate(invalid="ignore"):
            return self._margin(X, covariates, self.rule) - self.margin_

    def predict(self, X, covariates=None) -> np.ndarray:
        """1 = ultrasound suffices, 0 = refer to X-ray."""
        d = self.decision_function(X, covariates)
        return (np.nan_to_num(d, nan=-np.inf) >= 0).astype(int)

    def score(self, X, y, sample_weight=None, covariates=None) -> float:
        """Decision utility ``-radiation_cost * xray_rate - miss_penalty * missed_rate``."""
        return utility(
            self.predict(X, covariates),
            self.abnormal(y, covariates),
            radiation_cost=self.radiation_cost,
            miss_penalty=self.miss_penalty,
            sample_weight=sample_weight,
        )


class ConformalSelectionPolicy(_CalibratedPointPolicy):
    """Pass the hips whose conformal p-values survive Benjamini-Hochberg at level ``q``.

    Conformal selection (Jin and Candès, "Selection by prediction with conformal p-values",
    JMLR 2023, arXiv 2210.01408), reimplemented from the paper. A hip is null (abnormal) when
    any thresholded measurement is truly below its threshold. The measurements are combined
    into ``z = min_j (y_j - t_j)`` (abnormal exactly when ``z < 0``) and the predictions into
    ``z_hat = min_j (mu_j - t_j)``; :func:`skddh.conformal.conformal_selection` then decides
    with threshold 0 on the calibration subjects held out at ``fit``.

    **Guarantee.** If the calibration subjects and the test subjects are i.i.d. from one
    population (the thresholds fixed or functions of covariates, the regressor fitted on
    other subjects), then over the calibration draw, the test draw and the tie-breaking
    uniforms, ``FDR = E[#{passed and abnormal} / max(1, #passed)] <= q``: at most a share
    ``q`` of the hips sent home on ultrasound alone are abnormal, on average. It is a
    statement about the *batch* passed in one call to :meth:`predict` (each call is one
    selection), not a per-hip probability nor a bound on one batch's share. Subject level:
    pass the test ``groups`` to :meth:`predict` (all images of a subject pass or fail
    together; a subject is abnormal when any image is); a policy calibrated by subject
    refuses a batch without them. A unit with a non-finite prediction or a flagged image is
    referred, and such units are left out of the calibration too.

    Parameters
    ----------
    estimator : regressor, default=None
        Point regressor of the measurements; ``None`` means ``Ridge()``; frozen, as in
        :class:`RiskControlledPolicy`.
    q : float in (0, 1), default=0.1
        Target false discovery rate among the passed.
    thresholds : dict, default=None
        As in :class:`~skddh.SelectiveImagingPolicy`.
    calibration_size : float or int, default=0.3
        Share (or number) of subjects that calibrate.
    calibration_unit : {"subject", "image"}, default="subject"
        As in :class:`RiskControlledPolicy`.
    randomized : bool, default=False
        Deterministic p-values (the default: conservative, valid whatever the seed, and
        :meth:`predict` is repeatable) or randomized ones (exact, but the guarantee averages
        over the tie-breaking uniforms: each :meth:`predict` call then draws fresh ones, so
        calling it twice on the same batch may differ).
    radiation_cost, miss_penalty : float, default=1.0, 10.0
        The weights of :meth:`score`.
    random_state : int, RandomState or None, default=None
        Seed of the split and of the stream of tie-breaking uniforms (``randomized=True``).

    Attributes
    ----------
    estimator_ : regressor
    n_calibration_ : int
        Calibration subjects.
    n_untrusted_calibration_ : int
        Calibration units left out because a prediction was not finite or an image flagged
        (the same units are referred at selection).
    thresholds_, target_names_, classes_
        As in :class:`~skddh.SelectiveImagingPolicy`.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from skddh import ConformalSelectionPolicy
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(600, 1))
    >>> y = pd.DataFrame({"alpha": 62 + 4 * X[:, 0] + rng.normal(0, 1.5, 600)})
    >>> policy = ConformalSelectionPolicy(q=0.1, thresholds={"alpha": 60.0}, random_state=0)
    >>> policy = policy.fit(X[:400], y[:400], groups=np.arange(400))  # one image each
    >>> passed = policy.predict(X[400:], groups=np.arange(200))
    >>> bool(passed.mean() > 0.3), bool(policy.abnormal(y[400:])[passed == 1].mean() < 0.2)
    (True, True)
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict"]), None],
        "q": [Interval(Real, 0, 1, closed="neither")],
        "thresholds": [dict, None],
        "calibration_size": [
            Interval(Real, 0, 1, closed="neither"),
            Interval(Integral, 1, None, closed="left"),
        ],
        "calibration_unit": [StrOptions({"subject", "image"})],
        "randomized": ["boolean"],
        "radiation_cost": [Interval(Real, 0, None, closed="left")],
        "miss_penalty": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
    }

    outcome = None  # abnormal is defined by the thresholds (the selection's null)

    def __init__(
        self,
        estimator=None,
        *,
        q=0.1,
        thresholds=None,
        calibration_size=0.3,
        calibration_unit="subject",
        randomized=False,
        radiation_cost=1.0,
        miss_penalty=10.0,
        random_state=None,
    ):
        self.estimator = estimator
        self.q = q
        self.thresholds = thresholds
        self.calibration_size = calibration_size
        self.calibration_unit = calibration_unit
        self.randomized = randomized
        self.radiation_cost = radiation_cost
        self.miss_penalty = miss_penalty
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, groups=None, covariates=None, sample_weight=None, **fit_params):
        """Fit the regressor on the training subjects; keep the calibration subjects' scores.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
        y : DataFrame or array-like of shape (n_samples, n_targets)
        groups : array-like of shape (n_samples,), default=None
            Subject ids; required unless ``calibration_unit="image"``.
        covariates : DataFrame of shape (n_samples, n_covariates), default=None
            For thresholds that depend on covariates.
        sample_weight : array-like of shape (n_samples,), default=None
            Passed to the regressor's ``fit``, sliced to the training rows (not used in
            calibration: every calibration unit counts once).
        **fit_params : dict
            Passed to the regressor's ``fit``.

        Returns
        -------
        self
        """
        if sample_weight is not None:
            fit_params = {**fit_params, "sample_weight": sample_weight}
        margin, _, g_cal, cov_cal, y_cal, _ = self._fit_point(
            X, y, groups, covariates, fit_params, "and"
        )
        thr = resolve_thresholds(self.thresholds_, cov_cal, len(y_cal))
        z = rule_margin(y_cal, thr, "and")
        # Units the policy cannot vouch for (a non-finite prediction, a flagged image) are
        # left out of the calibration here and referred at selection: the same filter on
        # both sides keeps the trusted units exchangeable.
        untrusted = _untrusted_units(margin, g_cal)
        if untrusted.all():
            raise ValueError(
                "every calibration unit has a non-finite prediction or a flagged image: "
                "nothing to calibrate on."
            )
        self.calibration_z_ = z[~untrusted]
        self.calibration_z_hat_ = margin[~untrusted]
        self.calibration_groups_ = g_cal[~untrusted]
        self.n_untrusted_calibration_ = len(np.unique(g_cal[untrusted]))
        self._subject_level = self.calibration_unit == "subject"
        self._rng = np.random.default_rng(self._seed)
        return self

    def select(self, X, covariates=None, groups=None):
        """The selection on one batch: decisions, p-values and the BH cut-off.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            The batch of hips to decide on together.
        covariates : DataFrame, default=None
            For thresholds that depend on covariates.
        groups : array-like of shape (n_samples,), default=None
            Subject ids of the batch (see the class docstring).

        Returns
        -------
        skddh.conformal.ConformalSelection
        """
        check_is_fitted(self)
        covariates = check_covariates(covariates, _num_samples(X), "X", X)
        z_hat = self._margin(X, covariates, "and")
        n = len(z_hat)
        if self._subject_level:
            if groups is None:
                raise ValueError(
                    "ConformalSelectionPolicy was calibrated by subject: pass the test "
                    "subjects' groups= to predict/select (subject-level calibration scores are "
                    "exchangeable with test subjects, not with single images). Inside "
                    "GridSearchCV route them: set_score_request(groups=True)."
                )
            test_groups = check_groups(groups)
            if len(test_groups) != n:
                raise ValueError(f"groups has {len(test_groups)} entries but X has {n}.")
        elif groups is not None:
            raise ValueError(
                "groups passed to select/predict, but the policy calibrated images "
                "(calibration_unit='image'): its units are rows, not subjects."
            )
        else:
            test_groups = np.arange(n)
        units, codes = np.unique(test_groups, return_inverse=True)
        untrusted = _untrusted_units(z_hat, test_groups)
        trusted_rows = ~untrusted
        selected = np.zeros(n, dtype=bool)
        pvalues = np.ones(len(units))
        unit_selected = np.zeros(len(units), dtype=bool)
        cutoff = 0.0
        if trusted_rows.any():
            kw = {}
            if self._subject_level:
                kw = {"groups": self.calibration_groups_, "test_groups": test_groups[trusted_rows]}
            res = conformal_selection(
                self.calibration_z_hat_,
                self.calibration_z_,
                z_hat[trusted_rows],
                threshold=0.0,
                q=self.q,
                random_state=self._rng,
                randomized=self.randomized,
                **kw,
            )
            selected[trusted_rows] = res.selected
            kept = np.unique(codes[trusted_rows])  # the trusted units, in sorted order
            pvalues[kept] = res.pvalues
            unit_selected[kept] = res.unit_selected
            cutoff = res.cutoff
        return ConformalSelection(
            selected=selected,
            pvalues=pvalues,
            units=units,
            unit_selected=unit_selected,
            cutoff=cutoff,
            n_calibration=len(np.unique(self.calibration_groups_)),
        )

    def predict(self, X, covariates=None, groups=None) -> np.ndarray:
        """1 = ultrasound suffices (selected), 0 = refer to X-ray; one selection per call."""
        return self.select(X, covariates, groups).selected.astype(int)

    def score(self, X, y, sample_weight=None, covariates=None, groups=None) -> float:
        """Decision utility ``-radiation_cost * xray_rate - miss_penalty * missed_rate``."""
        return utility(
            self.predict(X, covariates, groups),
            self.abnormal(y, covariates),
            radiation_cost=self.radiation_cost,
            miss_penalty=self.miss_penalty,
            sample_weight=sample_weight,
        )
