"""Tests of skddh.policy: the rules, their guarantees, fail-safe referral, the estimator."""

import pickle

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from skddh import (
    OneSidedConformalRegressor,
    SelectiveImagingPolicy,
    SelectiveImagingPolicyCV,
    make_policy_scorer,
)
from skddh.conformal import lower_bound
from skddh.policy import apply_rule, rule_margin

THR = {"alpha": 60.0, "coverage": 50.0}

# Why the policy fails these checks: it learns from continuous measurements (y is the
# regression target of its conformal regressor), and predicts 0/1 decisions, not y's labels.
LABELS_ARE_NOT_TARGETS = (
    "the policy is fitted on continuous measurements and predicts 0/1 referral decisions, "
    "not the class labels it was fitted on"
)
EXPECTED_FAILURES = {
    "check_classifiers_train": LABELS_ARE_NOT_TARGETS,
    "check_classifiers_classes": LABELS_ARE_NOT_TARGETS + " (string labels are not numbers)",
    "check_classifiers_one_label": LABELS_ARE_NOT_TARGETS,
    "check_classifier_multioutput": "one decision per hip from several measurements, by design",
    "check_classifiers_regression_target": "a continuous y is exactly what the policy learns from",
}


def _policy_for_checks(cls, **kw):
    return cls(OneSidedConformalRegressor(random_state=0), thresholds={"y0": 0.37}, delta=0.3, **kw)


@parametrize_with_checks(
    [
        _policy_for_checks(SelectiveImagingPolicy, rule="and"),
        SelectiveImagingPolicyCV(
            OneSidedConformalRegressor(random_state=0),
            rules=["and", "or"],
            deltas=[0.3, 0.5],
            thresholds={"y0": 0.37},
            cv=3,
        ),
    ],
    expected_failed_checks=lambda est: (
        EXPECTED_FAILURES
        if isinstance(est, SelectiveImagingPolicy)
        # The tuned twin happens to predict the single label of check_classifiers_one_label.
        else {k: v for k, v in EXPECTED_FAILURES.items() if k != "check_classifiers_one_label"}
    ),
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ---- the rules as pure functions ------------------------------------------------------------
def test_rules_on_hand_made_bounds():
    lb = pd.DataFrame({"alpha": [65.0, 65.0, 55.0, 55.0], "coverage": [55.0, 45.0, 55.0, 45.0]})
    np.testing.assert_array_equal(apply_rule(lb, THR, "alpha"), [1, 1, 0, 0])
    np.testing.assert_array_equal(apply_rule(lb, THR, "and"), [1, 0, 0, 0])
    np.testing.assert_array_equal(apply_rule(lb, THR, "or"), [1, 1, 1, 0])
    np.testing.assert_allclose(rule_margin(lb, THR, "and"), [5, -5, -5, -5])
    # A bound exactly at the threshold passes (LB >= threshold).
    assert apply_rule({"alpha": [60.0]}, THR, "alpha")[0]


@pytest.mark.parametrize("rule", ["alpha", "or", "and"])
@pytest.mark.parametrize("bad", [np.nan, -np.inf, np.inf])
def test_non_finite_bounds_are_referred_under_every_rule(rule, bad):
    lb = pd.DataFrame({"alpha": [bad, 70.0], "coverage": [70.0, bad]})
    passed = apply_rule(lb, THR, rule)
    if rule == "alpha":
        np.testing.assert_array_equal(passed, [False, True])  # alpha reads alpha only
    else:
        np.testing.assert_array_equal(passed, [False, False])


def _rule_simulation(rule, delta, reps=3000, n=28, seed=0):
    """P(pass and truly abnormal) under exchangeable calibration draws (pure functions)."""
    rng = np.random.default_rng(seed)
    bad = np.empty(reps)
    for r in range(reps):
        m = n + 1
        truth = {"alpha": rng.normal(62, 5, m), "coverage": rng.normal(54, 7, m)}
        pred = {k: v + rng.gumbel(0, 3, m) - 1.5 for k, v in truth.items()}
        lb = {k: lower_bound(pred[k][n:], pred[k][:n] - truth[k][:n], delta) for k in truth}
        passed = apply_rule(lb, THR, rule)[0]
        if rule == "alpha":
            abnormal = truth["alpha"][n] < 60
        else:
            abnormal = truth["alpha"][n] < 60 or truth["coverage"][n] < 50
        bad[r] = passed and abnormal
    return bad.mean(), bad.std() / np.sqrt(reps)


@pytest.mark.slow
@pytest.mark.parametrize("rule, bound", [("alpha", 1.0), ("and", 2.0)])
def test_rule_guarantees_by_simulation(rule, bound):
    """alpha: P(pass, alpha < 60) <= delta; and: P(pass, any truly fails) <= 2 delta."""
    delta = 0.2
    rate, se = _rule_simulation(rule, delta)
    assert rate <= bound * delta + 3 * se, (rate, se)


def test_rule_errors_name_the_problem():
    with pytest.raises(ValueError, match="rule must be one of"):
        apply_rule({"alpha": [1.0]}, THR, "majority")
    with pytest.raises(ValueError, match="needs a threshold for 'alpha'"):
        apply_rule({"coverage": [1.0]}, {"coverage": 50.0}, "alpha")
    with pytest.raises(ValueError, match=r"lack measurement\(s\) \['coverage'\]"):
        apply_rule({"alpha": [1.0]}, THR, "and")


# ---- the estimator --------------------------------------------------------------------------
def _hips(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = pd.DataFrame(
        {
            "alpha": 62 + 4 * X[:, 0] + rng.gumbel(0, 1.5, n),
            "beta": 55 - 3 * X[:, 0] + rng.normal(0, 2, n),
            "coverage": 55 + 5 * X[:, 1] + rng.normal(0, 2, n),
        }
    )
    groups = np.repeat(np.arange(n // 4), 4)
    return X, y, groups


def _conformal(**kw):
    return OneSidedConformalRegressor(LinearRegression(), random_state=0, **kw)


def test_predict_follows_bounds_thresholds_and_rule():
    X, y, g = _hips()
    policy = SelectiveImagingPolicy(_conformal(), rule="or", delta=0.2).fit(X, y, groups=g)
    lb = policy.predict_lower(X)
    assert list(lb.columns) == ["alpha", "beta", "coverage"]
    expected = (lb["alpha"] >= 60) | (lb["coverage"] >= 50)
    np.testing.assert_array_equal(policy.predict(X), expected.astype(int))
    np.testing.assert_array_equal(policy.classes_, [0, 1])
    # The lower bounds are the conformal regressor's at the policy's delta.
    np.testing.assert_allclose(lb, policy.estimator_.predict_lower(X, delta=0.2))


def test_lower_delta_is_more_conservative_and_and_is_strictest():
    X, y, g = _hips()
    rates = {}
    for rule in ["alpha", "or", "and"]:
        for delta in [0.05, 0.2, 0.4]:
            p = SelectiveImagingPolicy(_conformal(), rule=rule, delta=delta).fit(X, y, groups=g)
            rates[rule, delta] = p.predict(X).mean()
    for rule in ["alpha", "or", "and"]:
        assert rates[rule, 0.05] <= rates[rule, 0.2] <= rates[rule, 0.4]
    for delta in [0.05, 0.2, 0.4]:
        assert rates["and", delta] <= rates["alpha", delta] <= rates["or", delta]


def test_delta_mapping_per_measurement():
    X, y, g = _hips()
    policy = SelectiveImagingPolicy(
        _conformal(), rule="and", delta={"alpha": 0.1, "coverage": 0.35}
    ).fit(X, y, groups=g)
    lb = policy.predict_lower(X)
    ref = policy.estimator_.predict_lower(X, delta={"alpha": 0.1, "beta": 0.1, "coverage": 0.35})
    np.testing.assert_allclose(lb, ref)
    with pytest.raises(ValueError, match=r"no miscoverage for measurement\(s\) \['coverage'\]"):
        SelectiveImagingPolicy(_conformal(), rule="and", delta={"alpha": 0.1}).fit(X, y).predict(X)


class _NaNRegressor(RegressorMixin, BaseEstimator):
    """Predicts NaN for rows with X[:, 0] > 1 (a broken head on a bad image)."""

    def fit(self, X, y):
        self.model_ = LinearRegression().fit(X, y)
        return self

    def predict(self, X):
        out = self.model_.predict(X)
        out[np.asarray(X)[:, 0] > 1] = np.nan
        return out


def test_fail_safe_nan_predictions_are_referred():
    X, y, g = _hips()
    policy = SelectiveImagingPolicy(
        OneSidedConformalRegressor(_NaNRegressor(), random_state=0), rule="or", delta=0.4
    )
    cal_ok = X[:, 0] <= 1
    policy.fit(X[cal_ok], y[cal_ok])
    X_new = X.copy()
    X_new[:10, 0] = 5.0  # these would pass on alpha: a high alpha prediction
    assert (policy.predict(X_new)[:10] == 0).all()
    assert np.isneginf(policy.decision_function(X_new)[:10]).all()


def test_fail_safe_unbounded_case_is_referred_with_a_warning():
    X, y, g = _hips(n=40)
    policy = SelectiveImagingPolicy(_conformal(calibration_size=0.2), rule="alpha", delta=0.01).fit(
        X, y, groups=g
    )  # 2 calibration subjects, 8 cases: delta 0.01 is unbounded
    with pytest.warns(UserWarning, match="smallest delta"):
        passed = policy.predict(X)
    assert (passed == 0).all()


def test_outcome_column_scores_and_is_not_a_target():
    X, y, g = _hips()
    y = y.assign(xr_abnormal=(y["alpha"] < 58).astype(int))
    policy = SelectiveImagingPolicy(_conformal(), outcome="xr_abnormal", delta=0.2)
    policy.fit(X, y, groups=g)
    assert "xr_abnormal" not in policy.target_names_
    np.testing.assert_array_equal(policy.abnormal(y), y["xr_abnormal"].to_numpy(bool))
    passed = policy.predict(X)
    missed = np.mean((passed == 1) & (y["xr_abnormal"] == 1))
    assert policy.score(X, y) == pytest.approx(-1.0 * (1 - passed.mean()) - 10.0 * missed)
    bad = y.assign(xr_abnormal=y["xr_abnormal"].astype(float))
    bad.loc[7, "xr_abnormal"] = 0.5
    with pytest.raises(ValueError, match="outcome column 'xr_abnormal' must hold 0/1.*row 7"):
        policy.score(X, bad)


def test_abnormal_without_outcome_is_rule_independent():
    X, y, _ = _hips()
    expected = (y["alpha"] < 60) | (y["coverage"] < 50)
    for rule in ["alpha", "or", "and"]:
        p = SelectiveImagingPolicy(_conformal(), rule=rule)
        np.testing.assert_array_equal(p.abnormal(y), expected)


@pytest.mark.parametrize(
    "params, fit_y, match",
    [
        ({"delta": 1.5}, None, "'delta' parameter"),
        ({"delta": 0.0}, None, "'delta' parameter"),
        ({"rule": "majority"}, None, "'rule' parameter"),
        ({"thresholds": {"ai": 10.0}}, None, r"thresholds name measurement\(s\) \['ai'\]"),
        ({"thresholds": {"alpha": float("nan")}}, None, r"thresholds\['alpha'\]"),
        ({"rule": "alpha", "thresholds": {"coverage": 50.0}}, None, "threshold for 'alpha'"),
        ({"delta": {"alpha": 0.1, "ai": 0.1}}, None, r"delta names measurement\(s\) \['ai'\]"),
        ({"outcome": "xr"}, None, "outcome='xr' is not a column"),
        ({}, "nan", "row 3, target 'coverage'"),
    ],
)
def test_bad_input_is_named(params, fit_y, match):
    X, y, g = _hips(n=80)
    if fit_y == "nan":
        y.loc[3, "coverage"] = np.nan
    with pytest.raises(ValueError, match=match):
        SelectiveImagingPolicy(_conformal(), **params).fit(X, y, groups=g)


def test_too_few_calibration_subjects_is_named():
    X, y, _ = _hips(n=40)
    with pytest.raises(ValueError, match="at least 2 distinct groups"):
        SelectiveImagingPolicy(_conformal()).fit(X, y, groups=np.zeros(40))


# ---- working with scikit-learn --------------------------------------------------------------
def test_clone_pickle_pipeline():
    X, y, g = _hips()
    pipe = make_pipeline(StandardScaler(), SelectiveImagingPolicy(_conformal(), rule="and"))
    pipe.fit(X, y)
    again = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(again.predict(X), pipe.predict(X))
    assert clone(pipe).get_params()["selectiveimagingpolicy__rule"] == "and"
    scores = cross_validate(SelectiveImagingPolicy(_conformal()), X, y, groups=g, cv=GroupKFold(4))[
        "test_score"
    ]
    assert np.all(scores <= 0)


class _CountingRegressor(LinearRegression):
    """LinearRegression that counts its fits and predictions in a file ("f" and "p")."""

    def __init__(self, counter=None):
        self.counter = counter
        super().__init__()

    def fit(self, X, y):
        with open(self.counter, "a") as fh:
            fh.write("f")
        return super().fit(X, y)

    def predict(self, X):
        with open(self.counter, "a") as fh:
            fh.write("p")
        return super().predict(X)


def _n_fits(path):
    return path.read_text().count("f") if path.exists() else 0


def _n_predicts(path):
    return path.read_text().count("p") if path.exists() else 0


def test_gridsearch_with_groups_and_memory_fits_once_per_fold(tmp_path):
    X, y, g = _hips()
    counter = tmp_path / "fits.txt"
    grid = {"rule": ["alpha", "or", "and"], "delta": [0.05, 0.1, 0.2, 0.35]}
    scorer = make_policy_scorer(radiation_cost=1.0, miss_penalty=10.0)
    results = {}
    for memory in [None, str(tmp_path / "cache")]:
        counter.unlink(missing_ok=True)
        base = OneSidedConformalRegressor(_CountingRegressor(str(counter)), random_state=0)
        with sklearn.config_context(enable_metadata_routing=True):
            policy = SelectiveImagingPolicy(base, memory=memory).set_fit_request(groups=True)
            search = GridSearchCV(policy, grid, scoring=scorer, cv=GroupKFold(4), refit=False)
            search.fit(X, y, groups=g)
        results[memory is None] = (
            search.cv_results_["mean_test_score"],
            _n_fits(counter),
            _n_predicts(counter),
        )
    (plain_scores, plain_fits, plain_pred), (cached_scores, cached_fits, cached_pred) = (
        results[True],
        results[False],
    )
    np.testing.assert_allclose(cached_scores, plain_scores)
    assert plain_fits == 12 * 4
    assert cached_fits == 4  # one per fold, shared by all 12 candidates
    # Each fit predicts its calibration part once; each fold's test part is predicted once.
    assert plain_pred == 12 * 4 * 2
    assert cached_pred == 4 * 2


def test_policy_cv_agrees_with_gridsearch_exactly():
    X, y, g = _hips()
    rules, deltas = ["alpha", "or", "and"], [0.05, 0.1, 0.2, 0.35]
    twin = SelectiveImagingPolicyCV(
        _conformal(), rules=rules, deltas=deltas, cv=GroupKFold(4), miss_penalty=20.0
    ).fit(X, y, groups=g)
    with sklearn.config_context(enable_metadata_routing=True):
        policy = SelectiveImagingPolicy(_conformal()).set_fit_request(groups=True)
        search = GridSearchCV(
            policy,
            {"rule": rules, "delta": deltas},
            scoring=make_policy_scorer(radiation_cost=1.0, miss_penalty=20.0),
            cv=GroupKFold(4),
        ).fit(X, y, groups=g)
    ours = twin.cv_results_.set_index(["rule", "delta"])["mean_test_score"]
    theirs = pd.Series(
        search.cv_results_["mean_test_score"],
        index=pd.MultiIndex.from_arrays(
            [search.cv_results_["param_rule"], search.cv_results_["param_delta"].astype(float)]
        ),
    )
    for key, value in theirs.items():
        assert ours.loc[key] == pytest.approx(value, abs=1e-12)
    assert twin.best_score_ == pytest.approx(search.best_score_, abs=1e-12)
    np.testing.assert_array_equal(twin.predict(X), twin.policy_.predict(X))
    assert twin.policy_.rule == twin.best_rule_


def test_policy_cv_delta_dicts_and_errors():
    X, y, g = _hips()
    grid = [{"alpha": 0.1, "coverage": 0.35}, {"alpha": 0.35, "coverage": 0.35}]
    twin = SelectiveImagingPolicyCV(_conformal(), rules=["or"], deltas=grid, cv=3).fit(
        X, y, groups=g
    )
    assert twin.best_delta_ in grid
    with pytest.raises(ValueError, match="rules must be a non-empty list"):
        SelectiveImagingPolicyCV(_conformal(), rules=["majority"]).fit(X, y)
    with pytest.raises(ValueError, match=r"every miscoverage must lie in \(0, 1\)"):
        SelectiveImagingPolicyCV(_conformal(), deltas=[0.1, 1.0]).fit(X, y)


def test_cache_keys_hash_a_frozen_estimator_once(monkeypatch):
    from sklearn.frozen import FrozenEstimator

    from skddh.policy import _cache

    X, y, _ = _hips()
    frozen = FrozenEstimator(LinearRegression().fit(X, y))
    calls = []
    real_hash = _cache.joblib.hash
    monkeypatch.setattr(_cache.joblib, "hash", lambda obj: calls.append(1) or real_hash(obj))
    model = OneSidedConformalRegressor(frozen)
    k1 = _cache.content_key(clone(model), X)
    k2 = _cache.content_key(clone(model), X)
    assert k1 == k2 and len(calls) == 1  # clone keeps the frozen object: digest reused
    assert _cache.content_key(clone(model), X + 1) != k1


def test_cached_policy_predicts_like_the_uncached_one(tmp_path):
    X, y, g = _hips()
    plain = SelectiveImagingPolicy(_conformal(), rule="or", delta=0.2).fit(X, y, groups=g)
    cached = SelectiveImagingPolicy(_conformal(), rule="or", delta=0.2, memory=str(tmp_path)).fit(
        X, y, groups=g
    )
    pd.testing.assert_frame_equal(cached.predict_lower(X), plain.predict_lower(X))
    np.testing.assert_array_equal(cached.predict(X), plain.predict(X))
    # A second policy with another delta reuses the fit and the predictions.
    other = clone(cached).set_params(delta=0.35).fit(X, y, groups=g)
    assert other.estimator_ is cached.estimator_
    np.testing.assert_allclose(
        other.predict_lower(X), plain.estimator_.predict_lower(X, delta=0.35)
    )
