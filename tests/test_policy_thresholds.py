"""Age-aware thresholds: the preset, the policy with covariates, the guarantee as users call it."""

import pickle

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.base import clone
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV, GroupKFold

from skddh import (
    GrafAlphaThreshold,
    OneSidedConformalRegressor,
    SelectiveImagingPolicy,
    SelectiveImagingPolicyCV,
)
from skddh.policy import resolve_thresholds, rule_margin

DELTA = 0.1


def _infants(rng, n_subjects):
    """Subjects of 2-4 correlated images; alpha grows with age; one noisy feature per image."""
    sizes = rng.integers(2, 5, n_subjects)
    groups = np.repeat(np.arange(n_subjects), sizes)
    age = rng.uniform(1, 24, n_subjects)[groups]
    subject_alpha = (52 + 0.5 * age[np.unique(groups, return_index=True)[1]]) + rng.normal(
        0, 4, n_subjects
    )
    alpha = subject_alpha[groups] + rng.normal(0, 1, len(groups))
    X = (alpha + rng.normal(0, 3, len(groups)))[:, None]
    y = pd.DataFrame({"alpha": alpha})
    cov = pd.DataFrame({"age_weeks": age})
    return X, y, groups, cov


def _policy(delta=DELTA):
    return SelectiveImagingPolicy(
        OneSidedConformalRegressor(LinearRegression(), random_state=0),
        rule="alpha",
        delta=delta,
        thresholds={"alpha": GrafAlphaThreshold()},
    )


def test_preset_values_and_repr_round_trip():
    t = GrafAlphaThreshold(cutoff_weeks=10, immature=52.0)
    cov = pd.DataFrame({"age_weeks": [0.0, 9.99, 10.0]})
    np.testing.assert_array_equal(t(cov), [52.0, 52.0, 60.0])
    assert eval(repr(t), {"GrafAlphaThreshold": GrafAlphaThreshold}) == t
    assert pickle.loads(pickle.dumps(t)) == t and hash(t) == hash(clone(t, safe=False))


@pytest.mark.parametrize(
    ("cov", "match"),
    [
        (pd.DataFrame({"age": [3.0]}), "column 'age_weeks'"),
        (pd.DataFrame({"age_weeks": [np.nan]}), "row 0"),
        (pd.DataFrame({"age_weeks": [2.0, -1.0]}), "row 1"),
    ],
)
def test_preset_bad_covariates(cov, match):
    with pytest.raises(ValueError, match=match):
        GrafAlphaThreshold()(cov)


def test_resolve_and_margin_per_row():
    cov = pd.DataFrame({"age_weeks": [6.0, 16.0]})
    thr = resolve_thresholds({"alpha": GrafAlphaThreshold(), "coverage": 50.0}, cov, 2)
    lb = pd.DataFrame({"alpha": [55.0, 55.0], "coverage": [52.0, 52.0]})
    np.testing.assert_array_equal(rule_margin(lb, thr, "and"), [2.0, -5.0])
    with pytest.raises(ValueError, match="pass covariates="):
        resolve_thresholds({"alpha": GrafAlphaThreshold()}, None, 2)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        resolve_thresholds({"alpha": lambda c: np.ones(3)}, cov, 2)
    with pytest.raises(ValueError, match="covariates row 1"):
        resolve_thresholds({"alpha": lambda c: np.array([1.0, np.inf])}, cov, 2)
    with pytest.raises(ValueError, match=r"thresholds\['alpha'\] must be a finite number"):
        resolve_thresholds({"alpha": "60"}, cov, 2)


def test_policy_needs_and_checks_covariates():
    rng = np.random.default_rng(0)
    X, y, g, cov = _infants(rng, 60)
    policy = _policy().fit(X, y, groups=g)  # fitting does not read the thresholds' covariates
    with pytest.raises(ValueError, match="pass covariates="):
        policy.predict(X)
    with pytest.raises(ValueError, match="covariates has 3 rows"):
        policy.predict(X, covariates=cov.iloc[:3])
    with pytest.raises(TypeError, match="covariates must be a pandas DataFrame"):
        policy.predict(X, covariates=cov.to_numpy())
    with pytest.raises(ValueError, match="column 'age_weeks'"):
        policy.score(X, y, covariates=cov.rename(columns={"age_weeks": "age"}))
    # Per row: the same bound passes a 6-week-old at 55 deg and refers a 16-week-old.
    lb = policy.predict_lower(X)["alpha"].to_numpy()
    young = cov.assign(age_weeks=6.0)
    old = cov.assign(age_weeks=16.0)
    np.testing.assert_array_equal(policy.predict(X, covariates=young), lb >= 50)
    np.testing.assert_array_equal(policy.predict(X, covariates=old), lb >= 60)
    abnormal = policy.abnormal(y, cov)
    t = np.where(cov["age_weeks"] < 12, 50.0, 60.0)
    np.testing.assert_array_equal(abnormal, y["alpha"].to_numpy() < t)


def _missed(passed, abnormal):
    return float(np.mean(passed.astype(bool) & abnormal))


def test_age_thresholds_keep_the_guarantee_with_a_failing_control():
    """P(pass and alpha < t(age)) <= delta over many exchangeable draws; plug-in fails."""
    rng = np.random.default_rng(20261202)
    delta = 0.05  # where the plug-in control misses more than allowed (0.066 at 300 draws)
    reps, ours, plugin, passed = 300, [], [], []
    for _ in range(reps):
        X, y, g, cov = _infants(rng, 100)
        Xt, yt, _, ct = _infants(rng, 100)
        policy = _policy(delta).fit(X, y, groups=g)
        decided = policy.predict(Xt, covariates=ct)
        ab = policy.abnormal(yt, ct)
        ours.append(_missed(decided, ab))
        passed.append(decided.mean())
        # Control: the point prediction itself against the age threshold (no bound).
        point = policy.estimator_.predict(Xt).ravel()
        plugin.append(_missed(point >= GrafAlphaThreshold()(ct), ab))
    ours, plugin = np.array(ours), np.array(plugin)
    se = ours.std(ddof=1) / np.sqrt(reps)
    assert ours.mean() <= delta + 3 * se, (ours.mean(), se)
    assert plugin.mean() > delta + 3 * plugin.std(ddof=1) / np.sqrt(reps), plugin.mean()
    assert np.mean(passed) > 0.2  # the rule passes hips: the test is not vacuous


def test_age_thresholds_through_grid_search_with_metadata_routing():
    """Routed groups and covariates: folds by subject, each fold scored with its own ages."""
    rng = np.random.default_rng(1)
    reps, missed, chosen = 40, [], []
    with sklearn.config_context(enable_metadata_routing=True):
        for _ in range(reps):
            X, y, g, cov = _infants(rng, 150)  # folds calibrate on ~20 subjects: delta 0.05
            Xt, yt, _, ct = _infants(rng, 150)
            policy = (
                _policy()
                .set_fit_request(groups=True, covariates=True)
                .set_score_request(covariates=True)
            )
            search = GridSearchCV(policy, {"delta": [0.05, 0.1]}, cv=GroupKFold(3))
            search.fit(X, y, groups=g, covariates=cov)
            best = search.best_estimator_
            missed.append(_missed(best.predict(Xt, covariates=ct), best.abnormal(yt, ct)))
            chosen.append(best.delta)
    missed = np.array(missed)
    se = missed.std(ddof=1) / np.sqrt(reps)
    # Each candidate's guarantee is at its own delta; both are <= 0.1.
    assert missed.mean() <= max(chosen) + 3 * se


def test_policy_cv_with_age_thresholds():
    rng = np.random.default_rng(2)
    X, y, g, cov = _infants(rng, 90)
    search = SelectiveImagingPolicyCV(
        OneSidedConformalRegressor(LinearRegression(), random_state=0),
        rules=["alpha"],
        deltas=[0.05, 0.2],
        thresholds={"alpha": GrafAlphaThreshold()},
        cv=3,
    ).fit(X, y, groups=g, covariates=cov)
    assert set(search.cv_results_["delta"]) == {0.05, 0.2}
    np.testing.assert_array_equal(
        search.predict(X, covariates=cov), search.policy_.predict(X, covariates=cov)
    )
    with pytest.raises(ValueError, match="pass covariates="):
        SelectiveImagingPolicyCV(
            OneSidedConformalRegressor(LinearRegression(), random_state=0),
            thresholds={"alpha": GrafAlphaThreshold()},
            rules=["alpha"],
        ).fit(X, y, groups=g)


def test_policy_forwards_covariates_to_a_mondrian_regressor():
    """Per-band bounds through the policy, its CV twin and a cached fit."""
    rng = np.random.default_rng(3)
    X, y, g, cov = _infants(rng, 120)
    cov["band"] = np.where(cov["age_weeks"] < 12, "young", "old")
    base = OneSidedConformalRegressor(
        LinearRegression(), delta=0.3, mondrian="band", random_state=0
    )
    policy = SelectiveImagingPolicy(base, rule="alpha", delta=0.2, thresholds={"alpha": 60.0})
    policy.fit(X, y, groups=g, covariates=cov)
    assert set(policy.estimator_.strata_) == {"young", "old"}
    by_hand = clone(base).fit(X, y, groups=g, covariates=cov).predict_lower(X, 0.2, covariates=cov)
    np.testing.assert_allclose(policy.predict_lower(X, covariates=cov)["alpha"], np.ravel(by_hand))
    with pytest.raises(ValueError, match="pass covariates="):
        policy.predict(X)
    search = SelectiveImagingPolicyCV(
        base, rules=["alpha"], deltas=[0.2, 0.3], thresholds={"alpha": 60.0}, cv=3
    ).fit(X, y, groups=g, covariates=cov)
    assert search.predict(X, covariates=cov).shape == (len(X),)
