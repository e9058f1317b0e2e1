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
    OneSidedCrossConformalRegressor,
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
    # sample_weight reaches the regressor (sliced to its training rows), so the fit succeeds
    # and the decisions come from the bounds, not from the one label the weights keep.
    "check_classifiers_one_label_sample_weights": LABELS_ARE_NOT_TARGETS,
    "check_classifier_multioutput": "one decision per hip from several measurements, by design",
    "check_classifiers_regression_target": "a continuous y is exactly what the policy learns from",
}


# scikit-learn's checks call fit(X, y) without groups, and a regressor that calibrates by
# subject refuses that (rightly: image-level calibration under-covers a new subject). These
# instances opt into image-level calibration, where every row is its own unit.
def _image_level():
    return OneSidedConformalRegressor(random_state=0, calibration_unit="image")


def _policy_for_checks(cls, **kw):
    return cls(_image_level(), thresholds={"y0": 0.37}, delta=0.3, **kw)


@parametrize_with_checks(
    [
        _policy_for_checks(SelectiveImagingPolicy, rule="and"),
        SelectiveImagingPolicyCV(
            _image_level(),
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


def _conformal(estimator=None, **kw):
    est = LinearRegression() if estimator is None else estimator
    return OneSidedConformalRegressor(est, random_state=0, **kw)


def _cross(estimator=None, **kw):
    """CV+ over subjects: every subject both fits and calibrates."""
    est = LinearRegression() if estimator is None else estimator
    return OneSidedCrossConformalRegressor(est, cv=3, random_state=0, **kw)


@pytest.mark.parametrize("make", [_conformal, _cross], ids=["split", "cv+"])
def test_predict_follows_bounds_thresholds_and_rule(make):
    X, y, g = _hips()
    policy = SelectiveImagingPolicy(make(), rule="or", delta=0.2).fit(X, y, groups=g)
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
        SelectiveImagingPolicy(_conformal(), rule="and", delta={"alpha": 0.1}).fit(
            X, y, groups=g
        ).predict(X)


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
    policy.fit(X[cal_ok], y[cal_ok], groups=g[cal_ok])
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
    with pytest.raises(ValueError, match=r"at least 2 distinct subjects \(groups\)"):
        SelectiveImagingPolicy(_conformal()).fit(X, y, groups=np.zeros(40))


# ---- working with scikit-learn --------------------------------------------------------------
def test_clone_pickle_pipeline():
    X, y, g = _hips()
    pipe = make_pipeline(StandardScaler(), SelectiveImagingPolicy(_conformal(), rule="and"))
    pipe.fit(X, y, selectiveimagingpolicy__groups=g)
    again = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(again.predict(X), pipe.predict(X))
    assert clone(pipe).get_params()["selectiveimagingpolicy__rule"] == "and"
    with sklearn.config_context(enable_metadata_routing=True):
        policy = SelectiveImagingPolicy(_conformal()).set_fit_request(groups=True)
        scores = cross_validate(policy, X, y, params={"groups": g}, cv=GroupKFold(4))
    assert np.all(scores["test_score"] <= 0)


@pytest.mark.parametrize("make", [_conformal, _cross], ids=["split", "cv+"])
def test_policy_cv_agrees_with_gridsearch_exactly(make):
    X, y, g = _hips()
    rules = ["alpha", "or", "and"]
    deltas = [0.05, 0.1, 0.2, 0.35, {"alpha": 0.1, "coverage": 0.35}]
    twin = SelectiveImagingPolicyCV(
        make(), rules=rules, deltas=deltas, cv=GroupKFold(4), miss_penalty=20.0
    ).fit(X, y, groups=g)
    with sklearn.config_context(enable_metadata_routing=True):
        policy = SelectiveImagingPolicy(make()).set_fit_request(groups=True)
        search = GridSearchCV(
            policy,
            {"rule": rules, "delta": deltas},
            scoring=make_policy_scorer(radiation_cost=1.0, miss_penalty=20.0),
            cv=GroupKFold(4),
        ).fit(X, y, groups=g)
    ours = twin.cv_results_.assign(delta=twin.cv_results_["delta"].map(repr))
    ours = ours.set_index(["rule", "delta"])
    res = search.cv_results_
    theirs = pd.DataFrame(
        {f"split{k}_test_score": res[f"split{k}_test_score"] for k in range(4)},
        index=pd.MultiIndex.from_arrays(
            [list(res["param_rule"]), [repr(d) for d in res["param_delta"]]]
        ),
    ).assign(mean_test_score=res["mean_test_score"])
    assert len(theirs) == len(ours) == len(rules) * len(deltas)
    for key, row in theirs.iterrows():  # candidate by candidate, fold by fold
        for col, value in row.items():
            assert ours.loc[key, col] == pytest.approx(value, abs=1e-12), (key, col)
    assert twin.best_score_ == pytest.approx(search.best_score_, abs=1e-12)
    np.testing.assert_array_equal(twin.predict(X), twin.policy_.predict(X))
    assert twin.policy_.rule == twin.best_rule_
    assert type(twin.estimator_) is type(make())


def test_policy_cv_delta_dicts_and_errors():
    X, y, g = _hips()
    grid = [{"alpha": 0.1, "coverage": 0.35}, {"alpha": 0.35, "coverage": 0.35}]
    twin = SelectiveImagingPolicyCV(_conformal(), rules=["or"], deltas=grid, cv=3).fit(
        X, y, groups=g
    )
    assert twin.best_delta_ in grid
    with pytest.raises(ValueError, match="rules must be a non-empty list"):
        SelectiveImagingPolicyCV(_conformal(), rules=["majority"]).fit(X, y, groups=g)
    with pytest.raises(ValueError, match=r"every miscoverage must lie in \(0, 1\)"):
        SelectiveImagingPolicyCV(_conformal(), deltas=[0.1, 1.0]).fit(X, y, groups=g)


def _cv_rows(twin):
    """cv_results_ in a canonical row order (rule, then delta as written)."""
    res = twin.cv_results_.assign(delta=twin.cv_results_["delta"].map(repr))
    return res.sort_values(["rule", "delta"]).reset_index(drop=True)


def test_policy_cv_rule_order_does_not_change_results():
    """Bounds are cached by the complete per-target delta, not by how a candidate reads."""
    X, y, g = _hips()
    deltas = [{"alpha": 0.4, "coverage": 0.2}, 0.1, {"alpha": 0.1, "beta": 0.3, "coverage": 0.35}]
    a, b = (
        SelectiveImagingPolicyCV(_conformal(), rules=rules, deltas=deltas, cv=GroupKFold(3)).fit(
            X, y, groups=g
        )
        for rules in (["alpha", "or"], ["or", "alpha"])
    )
    pd.testing.assert_frame_equal(_cv_rows(a), _cv_rows(b))
    assert (a.best_rule_, a.best_delta_) == (b.best_rule_, b.best_delta_)


class _UnfittableRegressor(LinearRegression):
    def fit(self, X, y, sample_weight=None):
        raise AssertionError("fitted before the candidates were checked")


def test_policy_cv_checks_every_candidate_before_fitting_in_either_rule_order():
    X, y, g = _hips(n=80)
    messages = []
    for rules in (["alpha", "or"], ["or", "alpha"]):
        twin = SelectiveImagingPolicyCV(
            OneSidedConformalRegressor(_UnfittableRegressor()), rules=rules, deltas=[{"alpha": 0.4}]
        )
        match = r"gives no miscoverage for measurement\(s\) \['coverage'\] that rule 'or' reads"
        with pytest.raises(ValueError, match=match) as err:
            twin.fit(X, y, groups=g)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    # The same dict is a valid candidate for the alpha rule alone.
    twin = SelectiveImagingPolicyCV(_conformal(), rules=["alpha"], deltas=[{"alpha": 0.4}], cv=3)
    assert twin.fit(X, y, groups=g).best_delta_ == {"alpha": 0.4}


def test_policy_cv_ties_go_to_the_smaller_delta():
    X, y, g = _hips()
    # Thresholds no bound reaches: every candidate refers every hip, so all of them tie.
    kw = dict(thresholds={"alpha": 1e6, "coverage": 1e6}, cv=GroupKFold(3))
    twin = SelectiveImagingPolicyCV(
        _conformal(), rules=["or", "alpha", "and"], deltas=[0.4, 0.3, 0.2], **kw
    ).fit(X, y, groups=g)
    assert twin.cv_results_["mean_test_score"].nunique() == 1
    assert (twin.best_rule_, twin.best_delta_) == ("and", 0.2)  # smallest, most conservative
    dicts = [
        {"alpha": 0.3, "coverage": 0.1},  # largest read miscoverage 0.3 under "or"
        {"alpha": 0.2, "coverage": 0.2},  # 0.2, mean 0.2
        {"alpha": 0.2, "coverage": 0.15},  # 0.2, mean 0.175: the smallest under "or"
    ]
    best = SelectiveImagingPolicyCV(_conformal(), rules=["or"], deltas=dicts, **kw)
    assert best.fit(X, y, groups=g).best_delta_ == dicts[2]
    # "alpha" reads alpha only: dicts[1] and dicts[2] tie on (0.2, 0.2); the first listed wins.
    best = SelectiveImagingPolicyCV(_conformal(), rules=["alpha"], deltas=dicts, **kw)
    assert best.fit(X, y, groups=g).best_delta_ == dicts[1]
    # Across rules: "alpha" at dicts[1] or dicts[2] reads (0.2; mean 0.2), "and" at dicts[2]
    # (0.2; mean 0.175); listed last, it still wins.
    best = SelectiveImagingPolicyCV(_conformal(), rules=["alpha", "and"], deltas=dicts, **kw)
    best.fit(X, y, groups=g)
    assert (best.best_rule_, best.best_delta_) == ("and", dicts[2])


def test_numpy_scalar_deltas_work_and_bool_is_not_a_delta():
    X, y, g = _hips()
    read = ["alpha", "coverage"]
    plain = SelectiveImagingPolicy(_conformal(), rule="and", delta=0.35).fit(X, y, groups=g)
    for delta in (
        np.float32(0.35),
        np.float64(0.35),
        {"alpha": np.float32(0.35), "coverage": np.float16(0.35)},
    ):
        policy = clone(plain).set_params(delta=delta).fit(X, y, groups=g)
        # np.float32(0.35) counts as the 0.35 it prints as (the exact order statistic).
        pd.testing.assert_frame_equal(policy.predict_lower(X)[read], plain.predict_lower(X)[read])
    kw = dict(rules=["and"], cv=GroupKFold(3))
    ref = SelectiveImagingPolicyCV(_conformal(), deltas=[0.2, 0.35], **kw).fit(X, y, groups=g)
    for deltas in (
        np.array([0.2, 0.35], dtype=np.float32),
        [{"alpha": np.float32(0.2), "coverage": np.float32(0.2)}, np.float32(0.35)],
    ):
        twin = SelectiveImagingPolicyCV(_conformal(), deltas=deltas, **kw).fit(X, y, groups=g)
        np.testing.assert_array_equal(
            twin.cv_results_["mean_test_score"], ref.cv_results_["mean_test_score"]
        )
    for bad in (True, np.True_):
        with pytest.raises(ValueError, match="'delta' parameter"):
            SelectiveImagingPolicy(_conformal(), delta=bad).fit(X, y, groups=g)
        with pytest.raises(ValueError, match=r"every miscoverage must lie in \(0, 1\)"):
            SelectiveImagingPolicy(
                _conformal(), rule="and", delta={"alpha": bad, "coverage": 0.1}
            ).fit(X, y, groups=g)
        with pytest.raises(ValueError, match=r"every miscoverage must lie in \(0, 1\)"):
            SelectiveImagingPolicyCV(_conformal(), deltas=[0.1, bad]).fit(X, y, groups=g)


# ---- subjects: groups must reach every calibration split --------------------------------------
def test_gridsearch_without_routing_names_metadata_routing():
    X, y, g = _hips(n=80)
    search = GridSearchCV(
        SelectiveImagingPolicy(OneSidedConformalRegressor(LinearRegression(), random_state=0)),
        {"delta": [0.1, 0.3]},
        scoring=make_policy_scorer(),
        cv=GroupKFold(4),
    )
    # Without routing GridSearchCV gives groups to its splitter only: every fit must fail
    # loudly instead of calibrating image by image.
    with pytest.raises(ValueError, match="metadata routing"):
        search.fit(X, y, groups=g)


class _RecordingRegressor(LinearRegression):
    """LinearRegression that keeps the rows (and the sample weights) it was fitted on."""

    def fit(self, X, y, sample_weight=None):
        self.fit_X_ = np.asarray(X).copy()
        self.sample_weight_ = None if sample_weight is None else np.asarray(sample_weight)
        return super().fit(X, y, sample_weight=sample_weight)


def _subjects_of_rows(rows, X, g):
    """Subject ids of rows of X (the first feature is unique per row in _hips)."""
    lookup = dict(zip(X[:, 0], g))
    return np.array([lookup[v] for v in rows[:, 0]])


def _assert_no_calibration_subject_trains(reg, X, g, idx):
    """``reg`` was fitted on rows ``idx`` of (X, g)."""
    gf = g[idx]
    if isinstance(reg, OneSidedCrossConformalRegressor):
        # Every subject calibrates once, scored by the one fold model that did not train on it.
        np.testing.assert_array_equal(reg.calibration_groups_, np.unique(gf))
        assert len(reg.unit_fold_) == reg.n_calibration_ == len(np.unique(gf))
        for k, est in enumerate(reg.estimators_):
            trained = _subjects_of_rows(est.fit_X_, X, g)
            scored = reg.calibration_groups_[reg.unit_fold_ == k]
            assert len(scored) and np.intersect1d(trained, scored).size == 0
        return
    cal = reg.calibration_groups_
    assert np.intersect1d(cal, gf[reg.train_indices_]).size == 0
    np.testing.assert_array_equal(cal, np.unique(gf[reg.calibration_indices_]))
    assert reg.n_calibration_ == len(cal) < len(reg.calibration_indices_)  # subjects, not images
    trained = _subjects_of_rows(reg.estimator_.fit_X_, X, g)
    assert np.intersect1d(cal, trained).size == 0


@pytest.mark.parametrize("make", [_conformal, _cross], ids=["split", "cv+"])
def test_routed_groups_keep_calibration_subjects_out_of_training(make):
    X, y, g = _hips()
    with sklearn.config_context(enable_metadata_routing=True):
        policy = SelectiveImagingPolicy(make(_RecordingRegressor()), delta=0.2)
        policy.set_fit_request(groups=True)
        cv = cross_validate(
            policy,
            X,
            y,
            params={"groups": g},
            cv=GroupKFold(4),
            return_estimator=True,
            return_indices=True,
        )
        search = GridSearchCV(
            policy, {"delta": [0.1, 0.3]}, scoring=make_policy_scorer(), cv=GroupKFold(4)
        ).fit(X, y, groups=g)
    for fold_policy, train in zip(cv["estimator"], cv["indices"]["train"]):
        _assert_no_calibration_subject_trains(fold_policy.estimator_, X, g, train)
    _assert_no_calibration_subject_trains(
        search.best_estimator_.estimator_, X, g, np.arange(len(g))
    )


def test_policy_cv_with_cross_conformal_regressor():
    X, y, g = _hips()
    twin = SelectiveImagingPolicyCV(
        _cross(_RecordingRegressor()), deltas=[0.1, 0.3], cv=GroupKFold(3)
    ).fit(X, y, groups=g)
    assert isinstance(twin.estimator_, OneSidedCrossConformalRegressor)
    _assert_no_calibration_subject_trains(twin.estimator_, X, g, np.arange(len(g)))
    np.testing.assert_allclose(
        twin.predict_lower(X), twin.estimator_.predict_lower(X, delta=twin.best_delta_)
    )


# ---- fit parameters ---------------------------------------------------------------------------
class _WeightCheckingRegressor(_RecordingRegressor):
    """Fails unless each row's sample weight is the one it was given with (weight = f(row))."""

    def fit(self, X, y, sample_weight=None):
        np.testing.assert_array_equal(sample_weight, _weight_of(np.asarray(X)))
        return super().fit(X, y, sample_weight=sample_weight)


def _weight_of(X):
    return 1.0 + X[:, 2] ** 2


@pytest.mark.parametrize("make", [_conformal, _cross], ids=["split", "cv+"])
def test_sample_weight_reaches_the_regressor_training_rows(make):
    X, y, g = _hips()
    w = _weight_of(X)

    def check(reg):
        if isinstance(reg, OneSidedCrossConformalRegressor):
            fitted = reg.estimators_
        else:
            fitted = [reg.estimator_]
            np.testing.assert_array_equal(reg.estimator_.sample_weight_, w[reg.train_indices_])
        for est in fitted:  # the weights of the rows it trained on, not all of them
            assert len(est.sample_weight_) == len(est.fit_X_) < len(X)

    policy = SelectiveImagingPolicy(make(_WeightCheckingRegressor()), delta=0.2)
    check(policy.fit(X, y, groups=g, sample_weight=w).estimator_)
    # The CV twin slices them to each fold's rows first (the checking regressor fails if not).
    twin = SelectiveImagingPolicyCV(
        make(_WeightCheckingRegressor()), rules=["and"], deltas=[0.2, 0.4], cv=GroupKFold(3)
    )
    check(twin.fit(X, y, groups=g, sample_weight=w).estimator_)
