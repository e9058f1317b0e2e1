"""The tuned twin of the selective imaging policy: rule and delta by cross-validation, cheaply.

As scikit-learn's ``TunedThresholdClassifierCV`` is to ``FixedThresholdClassifier``,
:class:`SelectiveImagingPolicyCV` is to :class:`~skddh.SelectiveImagingPolicy`. Fitting the
conformal regressor depends on neither the rule nor delta, so each fold is fitted once and
every (rule, delta) candidate is scored from that fit: the regressor predicts the held-out
fold once, the calibration scores are sorted once, and each candidate costs one order
statistic and one comparison per case.
"""

from __future__ import annotations

import warnings
from numbers import Integral

import numpy as np
import pandas as pd
import scipy.sparse as sp
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.model_selection import GroupKFold, check_cv
from sklearn.utils.validation import check_is_fitted
from sklearn_compat.base import _fit_context

from skddh.conformal._base import subset_fit_params
from skddh.conformal._base import take as _take
from skddh.metrics import missed_rate, pass_rate, utility
from skddh.policy._policy import (
    SelectiveImagingPolicy,
    _check_delta_names,
    _full_delta,
    _miscoverage,
    _PolicyBase,
)
from skddh.policy._rules import RULES, rule_margin, rule_measurements
from skddh.policy._thresholds import check_covariates, resolve_thresholds

__all__ = ["SelectiveImagingPolicyCV"]


def _default_deltas():
    return [round(d, 2) for d in np.arange(0.05, 0.501, 0.05)]


#: Tie-break among rules, most conservative first.
_CONSERVATIVENESS = {"and": 0, "alpha": 1, "or": 2}


def _candidates(rules, deltas):
    """(rule, delta) pairs, deltas outermost: the rows of ``cv_results_``."""
    return [(rule, delta) for delta in deltas for rule in rules]


def _tie_key(rule, delta, thresholds):
    """Order among candidates of equal utility, the first one wins.

    The largest miscoverage over the measurements the rule reads, then their mean, then the
    rule's conservativeness (``"and"``, ``"alpha"``, ``"or"``). For a float delta both are
    the float, so among equal floats the most conservative rule wins.
    """
    read = rule_measurements(rule, thresholds)
    values = [_miscoverage(delta[t] if isinstance(delta, dict) else delta) for t in read]
    return max(values), sum(values) / len(values), _CONSERVATIVENESS[rule]


def _lower_bounds_of(fitted, X, kw):
    """``delta -> (n_samples, n_targets)`` lower bounds on ``X``, one forward pass for all."""
    if hasattr(fitted, "predict_components"):
        components = fitted.predict_components(X)

        def lower(delta):
            return fitted.lower_from_components(components, delta, **kw)

    else:  # a duck-typed regressor: predict_lower only

        def lower(delta):
            lb = np.asarray(fitted.predict_lower(X, delta=delta, **kw), dtype=float)
            return lb.reshape(len(lb), -1)

    return lower


def _score_fold(
    policy, X, y_fit, abnormal, groups, covariates, train, test, candidates, fit_params
):
    """Fit once on ``train``; utility, pass and missed rates of every candidate on ``test``."""
    g = None if groups is None else groups[train]
    params = subset_fit_params(X, fit_params, train)  # sample_weight of the fold's rows
    fitted, _ = policy._fit_base(_take(X, train), y_fit.iloc[train], g, params)
    cov_test = None if covariates is None else covariates.iloc[test].reset_index(drop=True)
    kw = {"covariates": cov_test} if policy._uses_covariates(fitted) else {}
    lower = _lower_bounds_of(fitted, _take(X, test), kw)
    names = [str(t) for t in fitted.target_names_]
    ab = abnormal[test]
    thr = resolve_thresholds(policy.thresholds_, cov_test, len(test))
    rows = []
    with warnings.catch_warnings():
        # A delta too small for the fold's calibration set is a legitimate candidate (every
        # case referred); one warning per candidate would drown the user.
        warnings.simplefilter("ignore", UserWarning)
        cache = {}
        for rule, delta in candidates:
            full = _full_delta(fitted, delta, rule_measurements(rule, thr))
            # Keyed by the complete per-target delta in force, not by how it was written.
            key = tuple(full[t] for t in names) if isinstance(full, dict) else (full,) * len(names)
            if key not in cache:
                cache[key] = pd.DataFrame(lower(full), columns=names)
            passed = rule_margin(cache[key], thr, rule) >= 0
            rows.append(
                (
                    utility(
                        passed,
                        ab,
                        radiation_cost=policy.radiation_cost,
                        miss_penalty=policy.miss_penalty,
                    ),
                    pass_rate(passed),
                    missed_rate(passed, ab),
                )
            )
    return np.array(rows)


class SelectiveImagingPolicyCV(_PolicyBase):
    """Selective imaging policy whose rule and delta are chosen by cross-validated utility.

    Each fold fits the conformal regressor once; all ``len(rules) * len(deltas)`` candidates
    are scored on the held-out fold from that one fit. The best candidate (highest mean
    utility) is then refitted on all data as ``policy_``.

    Ties go to the smaller delta: among candidates of equal mean utility the winner has the
    smallest largest miscoverage over the measurements its rule reads (for a float delta,
    the float), then the smallest mean of those miscoverages, then the most conservative
    rule (``"and"``, then ``"alpha"``, then ``"or"``), then comes first in the grid. So
    among equal float deltas ``"and"`` wins; ``{"alpha": 0.2, "coverage": 0.15}`` beats
    ``{"alpha": 0.2, "coverage": 0.2}`` under ``"or"`` and ``"and"``, and ties with it
    under ``"alpha"``, which reads alpha only. The order in which ``rules`` and ``deltas``
    are listed matters only for exact ties of this order.

    Parameters
    ----------
    estimator : estimator, default=None
        As in :class:`~skddh.SelectiveImagingPolicy`.
    rules : list of {"alpha", "or", "and"}, default=None
        Rules to try; ``None`` means all three.
    deltas : list of float or dict, default=None
        Miscoverages to try; ``None`` means 0.05, 0.10, ..., 0.50. A dict gives one
        miscoverage per measurement (e.g. ``{"alpha": 0.1, "coverage": 0.35}``) and must
        name every measurement each rule in ``rules`` reads, as the ``delta`` of
        :class:`~skddh.SelectiveImagingPolicy` must; every candidate is checked before any
        fit.
    thresholds, outcome, radiation_cost, miss_penalty, memory
        As in :class:`~skddh.SelectiveImagingPolicy`.
    cv : int, cross-validation generator or iterable, default=5
        An int means ``GroupKFold`` when ``groups`` are given, else ``KFold``.
    n_jobs : int, default=None
        Folds fitted in parallel (joblib).

    Attributes
    ----------
    policy_ : SelectiveImagingPolicy
        The best policy, refitted on all data.
    estimator_ : OneSidedConformalRegressor
        ``policy_.estimator_``.
    best_rule_, best_delta_ : str, float or dict
        The chosen candidate.
    best_score_ : float
        Its mean cross-validated utility.
    cv_results_ : DataFrame
        One row per candidate: ``rule``, ``delta``, ``mean_test_score``, ``std_test_score``,
        ``split{k}_test_score``, ``mean_pass_rate``, ``mean_missed_rate``.
    classes_, target_names_, thresholds_
        As in :class:`~skddh.SelectiveImagingPolicy`.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from skddh import OneSidedConformalRegressor, SelectiveImagingPolicyCV
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 2))
    >>> y = pd.DataFrame({"alpha": 62 + 4 * X[:, 0] + rng.normal(0, 1, 300),
    ...                   "coverage": 55 + 5 * X[:, 1] + rng.normal(0, 2, 300)})
    >>> search = SelectiveImagingPolicyCV(
    ...     OneSidedConformalRegressor(random_state=0), deltas=[0.05, 0.1, 0.2, 0.4]
    ... ).fit(X, y, groups=np.arange(300) // 3)
    >>> len(search.cv_results_), search.best_rule_ in ("alpha", "or", "and")
    (12, True)
    """

    _parameter_constraints: dict = {
        **_PolicyBase._parameter_constraints,
        "rules": [list, tuple, None],
        "deltas": ["array-like", None],
        "cv": ["cv_object"],
        "n_jobs": [Integral, None],
    }

    def __init__(
        self,
        estimator=None,
        *,
        rules=None,
        deltas=None,
        thresholds=None,
        outcome=None,
        radiation_cost=1.0,
        miss_penalty=10.0,
        memory=None,
        cv=5,
        n_jobs=None,
    ):
        self.estimator = estimator
        self.rules = rules
        self.deltas = deltas
        self.thresholds = thresholds
        self.outcome = outcome
        self.radiation_cost = radiation_cost
        self.miss_penalty = miss_penalty
        self.memory = memory
        self.cv = cv
        self.n_jobs = n_jobs

    def _grid(self, names):
        """Rules and deltas, every (rule, delta) candidate checked on its own before any fit."""
        rules = list(RULES if self.rules is None else self.rules)
        bad = [r for r in rules if not isinstance(r, str) or r not in RULES]
        if bad or not rules:
            raise ValueError(f"rules must be a non-empty list from {RULES}, got {self.rules!r}.")
        deltas = _default_deltas() if self.deltas is None else list(self.deltas)
        if not deltas:
            raise ValueError("deltas must hold at least one miscoverage.")
        # In a fixed rule order, so that the error does not depend on how rules are listed.
        reads = {}
        for r in (r for r in RULES if r in rules):
            reads[r] = rule_measurements(r, self._check_thresholds(names, r))
        for d in deltas:
            if not isinstance(d, dict):
                _miscoverage(d, f"deltas entry {d!r}")
                continue
            _check_delta_names(d, names, what=f"deltas entry {d!r}")
            for r, used in reads.items():
                lacking = [t for t in used if t not in d]
                if lacking:
                    raise ValueError(
                        f"deltas entry {d!r} gives no miscoverage for measurement(s) "
                        f"{lacking} that rule {r!r} reads."
                    )
        return rules, deltas

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, groups=None, covariates=None, **fit_params):
        """Score every (rule, delta) candidate by cross-validation, refit the best.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
        y : DataFrame or array-like of shape (n_samples, n_targets)
        groups : array-like of shape (n_samples,), default=None
            Subject ids: used by the folds and by each calibration split.
        covariates : DataFrame of shape (n_samples, n_covariates), default=None
            Facts observed before the outcome, one row per image: for thresholds that are
            callables of them and for a regressor calibrated by stratum.
        **fit_params : dict
            Passed to the regressor's ``fit``.

        Returns
        -------
        self
        """
        if sp.issparse(X):
            X = X.tocsr()  # row indexing for the folds; the regressor decides about sparse
        y_fit, _ = self._split_y(y)
        self._check_groups(groups)
        names = list(y_fit.columns)
        self.thresholds_ = self._thresholds()
        rules, deltas = self._grid(names)
        abnormal = self.abnormal(y, covariates)  # covariates aligned with y's index
        covariates = check_covariates(covariates, len(y_fit), "X", X)
        fold_params = self._with_covariates(X, fit_params, covariates)
        groups_arr = None if groups is None else np.asarray(groups)
        cv = self.cv
        if isinstance(cv, Integral) and groups_arr is not None:
            cv = GroupKFold(cv)
        cv = check_cv(cv)
        splits = list(cv.split(np.zeros(len(y_fit)), None, groups_arr))
        if groups_arr is not None:
            for k, (train, test) in enumerate(splits):
                shared = np.intersect1d(groups_arr[train], groups_arr[test])
                if shared.size:
                    raise ValueError(
                        f"cv fold {k} puts {shared.size} subject(s) (e.g. {shared[0]!r}) in both "
                        "its training and test part: a candidate would be scored on subjects "
                        "it was fitted on. Use a group splitter such as GroupKFold."
                    )
        candidates = _candidates(rules, deltas)
        order = sorted(
            range(len(candidates)),
            key=lambda i: (_tie_key(*candidates[i], self.thresholds_), i),
        )
        scores = Parallel(n_jobs=self.n_jobs)(
            delayed(_score_fold)(
                self, X, y_fit, abnormal, groups_arr, covariates, tr, te, candidates, fold_params
            )
            for tr, te in splits
        )
        scores = np.stack(scores)  # (n_folds, n_candidates, 3)
        results = pd.DataFrame(
            {"rule": [c[0] for c in candidates], "delta": [c[1] for c in candidates]}
        )
        for k in range(len(splits)):
            results[f"split{k}_test_score"] = scores[k, :, 0]
        results["mean_test_score"] = scores[:, :, 0].mean(0)
        results["std_test_score"] = scores[:, :, 0].std(0)
        results["mean_pass_rate"] = scores[:, :, 1].mean(0)
        results["mean_missed_rate"] = scores[:, :, 2].mean(0)
        results["rank_test_score"] = (
            results["mean_test_score"].rank(ascending=False, method="min").astype(int)
        )
        self.cv_results_ = results
        mean = results["mean_test_score"].to_numpy()
        best = max(order, key=lambda i: mean[i])  # the first of the best in tie order
        self.best_rule_, self.best_delta_ = candidates[best]
        self.best_score_ = float(results["mean_test_score"].iloc[best])
        self.policy_ = SelectiveImagingPolicy(
            clone(self._base_bounds()),
            rule=self.best_rule_,
            delta=self.best_delta_,
            thresholds=self.thresholds,
            outcome=self.outcome,
            radiation_cost=self.radiation_cost,
            miss_penalty=self.miss_penalty,
            memory=self.memory,
        ).fit(X, y, groups=groups, covariates=covariates, **fit_params)
        self.estimator_ = self.policy_.estimator_
        self.target_names_ = self.policy_.target_names_
        self.classes_ = self.policy_.classes_
        return self

    def predict_lower(self, X, covariates=None) -> pd.DataFrame:
        """Lower bounds of the best policy (see :meth:`SelectiveImagingPolicy.predict_lower`)."""
        check_is_fitted(self)
        return self.policy_.predict_lower(X, covariates)

    def decision_function(self, X, covariates=None) -> np.ndarray:
        """Margin under the best rule; passed when ``>= 0``."""
        check_is_fitted(self)
        return self.policy_.decision_function(X, covariates)

    def predict(self, X, covariates=None) -> np.ndarray:
        """1 = ultrasound suffices, 0 = refer to X-ray, under the best candidate."""
        check_is_fitted(self)
        return self.policy_.predict(X, covariates)

    def score(self, X, y, sample_weight=None, covariates=None) -> float:
        """Decision utility of the best policy."""
        check_is_fitted(self)
        return self.policy_.score(X, y, sample_weight=sample_weight, covariates=covariates)
