"""Risk-controlled and conformal-selection policies: guarantees as statistics, with controls."""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.utils.estimator_checks import parametrize_with_checks

from skddh import ConformalSelectionPolicy, GrafAlphaThreshold, RiskControlledPolicy

THR = {"alpha": 60.0}


def _subjects(rng, n_subjects, noise=3.0):
    """Subjects of 2-4 correlated images; one noisy feature per image predicts alpha."""
    sizes = rng.integers(2, 5, n_subjects)
    groups = np.repeat(np.arange(n_subjects), sizes)
    alpha = rng.normal(62, 4, n_subjects)[groups] + rng.normal(0, 1, len(groups))
    X = (alpha + rng.normal(0, noise, len(groups)))[:, None]
    age = rng.uniform(1, 24, n_subjects)[groups]
    return X, pd.DataFrame({"alpha": alpha}), groups, pd.DataFrame({"age_weeks": age})


# One large population stands in for "a new subject": a policy's true risk is its rate there.
_POP = _subjects(np.random.default_rng(99), 20000)


def _true_risk(passed_rows, abnormal_rows, groups):
    """P(a new subject has an image passed while abnormal), on the population."""
    hit = np.bincount(groups, weights=(passed_rows & abnormal_rows).astype(float)) > 0
    return hit.mean()


def _risk_at(policy, margin):
    X, y, g, _ = _POP
    passed = policy._margin(X, None, policy.rule) >= margin
    return _true_risk(passed, y["alpha"].to_numpy() < 60, g)


def _plugin_margin(policy, alpha):
    """The naive choice: the least conservative margin whose calibration risk is <= alpha."""
    return policy.margins_[np.argmax(policy.calibration_risk_ <= alpha)]


def _fit(rng, n=80, **kw):
    X, y, g, _ = _subjects(rng, n)
    return RiskControlledPolicy(
        LinearRegression(), thresholds=THR, random_state=int(rng.integers(2**31)), **kw
    ).fit(X, y, groups=g)


def test_ltt_controls_the_risk_with_high_probability_plugin_does_not():
    """P(R(m_hat) > alpha) <= epsilon over calibration draws; the plug-in violates ~half."""
    rng = np.random.default_rng(0)
    alpha, eps, reps = 0.1, 0.1, 300
    ours, plugin, passed = [], [], []
    for _ in range(reps):
        policy = _fit(rng, alpha=alpha, epsilon=eps)
        ours.append(_risk_at(policy, policy.margin_) > alpha)
        plugin.append(_risk_at(policy, _plugin_margin(policy, alpha)) > alpha)
        passed.append(np.isfinite(policy.margin_))
    se = np.sqrt(eps * (1 - eps) / reps)
    assert np.mean(ours) <= eps + 3 * se, np.mean(ours)
    assert np.mean(plugin) > eps + 3 * se, np.mean(plugin)
    assert np.mean(passed) > 0.9  # a finite margin nearly always: the test is not vacuous


def test_crc_controls_the_expected_risk_plugin_does_not():
    rng = np.random.default_rng(1)
    alpha, reps = 0.1, 300
    ours, plugin = [], []
    for _ in range(reps):
        policy = _fit(rng, n=40, alpha=alpha, method="crc")  # 12 calibration subjects
        ours.append(_risk_at(policy, policy.margin_))
        plugin.append(_risk_at(policy, _plugin_margin(policy, alpha)))
    ours, plugin = np.array(ours), np.array(plugin)
    assert ours.mean() <= alpha + 3 * ours.std(ddof=1) / np.sqrt(reps), ours.mean()
    assert plugin.mean() > alpha + 3 * plugin.std(ddof=1) / np.sqrt(reps), plugin.mean()


def test_ltt_through_grid_search_with_routed_groups():
    """Tuning the regressor by CV utility, then refitting: each candidate stays valid."""
    rng = np.random.default_rng(2)
    alpha, eps, reps = 0.1, 0.1, 40
    violated = []
    with sklearn.config_context(enable_metadata_routing=True):
        policy = RiskControlledPolicy(Ridge(), thresholds=THR, alpha=alpha, random_state=0)
        policy.set_fit_request(groups=True)
        for _ in range(reps):
            X, y, g, _ = _subjects(rng, 120)  # folds calibrate on 24 subjects
            search = GridSearchCV(policy, {"estimator__alpha": [1e-3, 1e3]}, cv=GroupKFold(3)).fit(
                X, y, groups=g
            )
            best = search.best_estimator_
            violated.append(_risk_at(best, best.margin_) > alpha)
    assert np.mean(violated) <= eps + 3 * np.sqrt(eps * (1 - eps) / reps), np.mean(violated)


def test_groups_are_required_unless_image_level():
    """GridSearchCV without routing drops groups: the policy refuses, it does not under-cover."""
    X, y, g, _ = _subjects(np.random.default_rng(8), 40)
    search = GridSearchCV(
        RiskControlledPolicy(thresholds=THR),
        {"alpha": [0.1]},
        cv=GroupKFold(3),
        error_score="raise",
    )
    with pytest.raises(ValueError, match="set_fit_request"):
        search.fit(X, y, groups=g)
    RiskControlledPolicy(thresholds=THR, calibration_unit="image").fit(X, y)


def _fdp(passed, abnormal, groups):
    sel = np.bincount(groups, weights=passed) > 0
    bad = np.bincount(groups, weights=abnormal.astype(float)) > 0
    return (sel & bad).sum() / max(1, sel.sum()), sel.mean()


def test_selection_controls_fdr_over_subjects_plugin_does_not():
    """E[share of abnormal subjects among the passed] <= q; passing z_hat >= 0 does not."""
    rng = np.random.default_rng(3)
    q, reps = 0.1, 300
    ours, plugin, share = [], [], []
    for _ in range(reps):
        X, y, g, _ = _subjects(rng, 60)
        Xt, yt, gt, _ = _subjects(rng, 60)
        policy = ConformalSelectionPolicy(
            LinearRegression(), q=q, thresholds=THR, random_state=int(rng.integers(2**31))
        ).fit(X, y, groups=g)
        ab = policy.abnormal(yt)
        fdp, passed = _fdp(policy.predict(Xt, groups=gt), ab, gt)
        ours.append(fdp)
        share.append(passed)
        naive = policy.predict_point(Xt)["alpha"].to_numpy() >= 60
        plugin.append(_fdp(naive, ab, gt)[0])
    ours, plugin = np.array(ours), np.array(plugin)
    assert ours.mean() <= q + 3 * ours.std(ddof=1) / np.sqrt(reps), ours.mean()
    assert plugin.mean() > q + 3 * plugin.std(ddof=1) / np.sqrt(reps), plugin.mean()
    assert np.mean(share) > 0.1


def test_selection_with_age_thresholds_and_batch_semantics():
    rng = np.random.default_rng(4)
    X, y, g, cov = _subjects(rng, 150)
    policy = ConformalSelectionPolicy(
        thresholds={"alpha": GrafAlphaThreshold()}, random_state=0
    ).fit(X, y, groups=g, covariates=cov)
    res = policy.select(X[:60], covariates=cov[:60], groups=g[:60])
    assert res.selected.shape == (60,) and len(res.pvalues) == len(np.unique(g[:60]))
    # All images of a subject share its decision.
    assert all(len(set(res.selected[g[:60] == s])) == 1 for s in np.unique(g[:60]))
    np.testing.assert_array_equal(
        policy.predict(X[:60], covariates=cov[:60], groups=g[:60]), res.selected
    )
    with pytest.raises(ValueError, match="pass covariates="):
        policy.predict(X)
    unfitted_groups = ConformalSelectionPolicy(
        thresholds=THR, calibration_unit="image", random_state=0
    ).fit(X, y)
    with pytest.raises(ValueError, match="calibrated images"):
        unfitted_groups.predict(X, groups=g)
    with pytest.raises(ValueError, match="calibrated by subject: pass the test"):
        policy.predict(X, covariates=cov)  # groups are not optional at subject level


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"margins": [1.0, 0.5]}, "strictly increasing"),
        ({"margins": []}, "non-empty"),
        ({"alpha": 1.5}, "alpha"),
        ({"thresholds": {"coverage": 50.0}}, "does not predict"),
        ({"outcome": "ihdi"}, "outcome='ihdi' is not a column"),
    ],
)
def test_risk_policy_bad_input(params, match):
    X, y, g, _ = _subjects(np.random.default_rng(5), 30)
    with pytest.raises((ValueError, TypeError), match=match):
        RiskControlledPolicy(**{"thresholds": THR, **params}).fit(X, y, groups=g)


def test_selection_bad_q_and_one_subject():
    X, y, g, _ = _subjects(np.random.default_rng(6), 30)
    with pytest.raises(ValueError, match="q"):
        ConformalSelectionPolicy(q=1.0, thresholds=THR).fit(X, y, groups=g)
    with pytest.raises(ValueError, match="at least 2 distinct subjects"):
        ConformalSelectionPolicy(thresholds=THR).fit(X, y, groups=np.zeros(len(y)))


def test_failsafe_and_pickle():
    rng = np.random.default_rng(7)
    X, y, g, _ = _subjects(rng, 120)
    policy = RiskControlledPolicy(
        HistGradientBoostingRegressor(max_iter=20), thresholds=THR, alpha=0.2, random_state=0
    ).fit(X, y, groups=g)
    X, _, _, _ = _subjects(rng, 5)
    X[0, 0] = np.nan  # the NaN-tolerant regressor predicts something; the policy refers it
    assert policy.predict(X)[0] == 0
    assert np.isneginf(policy.decision_function(X)[0])
    again = pickle.loads(pickle.dumps(policy))
    np.testing.assert_array_equal(again.predict(X[1:]), policy.predict(X[1:]))
    assert clone(policy).get_params()["alpha"] == 0.2
    X, y, g, _ = _subjects(rng, 20)
    nothing = RiskControlledPolicy(thresholds=THR, alpha=0.01, random_state=0)
    with pytest.warns(UserWarning):  # 6 calibration subjects cannot certify 1 %
        nothing.fit(X, y, groups=g)
    assert np.isposinf(nothing.margin_) and not nothing.predict(X).any()


# Why the policies fail these checks: as for SelectiveImagingPolicy (tests/test_policy.py),
# they learn from continuous measurements and predict 0/1 decisions, not y's labels.
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
    # Weights reach the regressor's fit; the calibration counts every unit once, as the
    # exchangeability argument needs, so a weight is not a repeated row there.
    "check_sample_weight_equivalence_on_dense_data": "calibration units are unweighted",
    "check_sample_weight_equivalence_on_sparse_data": "calibration units are unweighted",
}


@parametrize_with_checks(
    [
        RiskControlledPolicy(
            thresholds={"y0": 0.37},
            rule="and",
            alpha=0.3,
            calibration_unit="image",
            random_state=0,
        ),
        ConformalSelectionPolicy(
            thresholds={"y0": 0.37}, q=0.3, calibration_unit="image", random_state=0
        ),
    ],
    expected_failed_checks=lambda est: (
        EXPECTED_FAILURES
        if isinstance(est, RiskControlledPolicy)
        # It refers every row of that check's data, which happens to be the single label.
        else {k: v for k, v in EXPECTED_FAILURES.items() if k != "check_classifiers_one_label"}
    ),
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_frozen_regressor_calibrates_on_every_subject():
    rng = np.random.default_rng(9)
    X, y, g, _ = _subjects(rng, 60)
    head = LinearRegression().fit(X, y["alpha"])
    from sklearn.frozen import FrozenEstimator

    Xc, yc, gc, _ = _subjects(rng, 40)
    for cls in (RiskControlledPolicy, ConformalSelectionPolicy):
        policy = cls(FrozenEstimator(head), thresholds=THR, random_state=0).fit(Xc, yc, groups=gc)
        assert policy.n_calibration_ == 40 and policy.estimator_.estimator is head


# ---- regressions from the red team (numbers in the closing note) ---------------------


def test_a_finite_margin_grid_gets_its_fail_safe_end():
    """A grid ending at a finite margin would fall back to a margin that controls nothing."""
    rng = np.random.default_rng(10)
    X, y, g, _ = _subjects(rng, 40)
    policy = RiskControlledPolicy(
        LinearRegression(), thresholds=THR, alpha=0.01, margins=np.linspace(-5, 0, 11)
    )
    with pytest.warns(UserWarning):
        policy.fit(X, y, groups=g)
    assert np.isposinf(policy.margins_[-1]) and np.isposinf(policy.margin_)
    assert not policy.predict(X).any()


def test_selection_refers_untrusted_units_on_both_sides():
    """A NaN image is referred, and calibration units with one are left out, not fatal."""
    rng = np.random.default_rng(11)
    X, y, g, _ = _subjects(rng, 120)
    X[:3, 0] = np.nan  # subject 0's images, in calibration or in training
    hgb = HistGradientBoostingRegressor(max_iter=20)
    policy = ConformalSelectionPolicy(hgb, thresholds=THR, random_state=0)
    policy.fit(X, y, groups=g)
    Xt, _, gt, _ = _subjects(rng, 30)
    Xt[0, 0] = np.nan
    res = policy.select(Xt, groups=gt)
    assert not res.selected[gt == gt[0]].any() and res.pvalues[0] == 1.0
    clean = policy.select(Xt[gt != gt[0]], groups=gt[gt != gt[0]])
    np.testing.assert_array_equal(res.selected[gt != gt[0]], clean.selected)


def test_randomized_selection_draws_fresh_uniforms_per_call():
    """A fixed seed must not fix the tie-breaking uniforms of every batch (FDR 0.12 at m=1)."""
    rng = np.random.default_rng(12)
    X, y, g, _ = _subjects(rng, 60)
    policy = ConformalSelectionPolicy(thresholds=THR, randomized=True, random_state=0)
    policy.fit(X, y, groups=g)
    Xt, _, gt, _ = _subjects(rng, 40)
    p1, p2 = policy.select(Xt, groups=gt).pvalues, policy.select(Xt, groups=gt).pvalues
    assert not np.array_equal(p1, p2)
    deterministic = ConformalSelectionPolicy(thresholds=THR, random_state=0).fit(X, y, groups=g)
    np.testing.assert_array_equal(
        deterministic.select(Xt, groups=gt).pvalues, deterministic.select(Xt, groups=gt).pvalues
    )


def test_covariates_must_share_the_index_of_x():
    rng = np.random.default_rng(13)
    X, y, g, cov = _subjects(rng, 60)
    Xf = pd.DataFrame(X, columns=["x"], index=rng.permutation(len(X)))
    policy = RiskControlledPolicy(thresholds={"alpha": GrafAlphaThreshold()}, random_state=0)
    policy.fit(Xf, y.set_index(Xf.index), groups=g, covariates=cov.set_index(Xf.index))
    with pytest.raises(ValueError, match="covariates' index differs from X's"):
        policy.predict(Xf, covariates=cov)  # default index against X's shuffled one
    assert policy.predict(Xf, covariates=cov.set_index(Xf.index)).shape == (len(X),)


def test_numpy_and_python_strings_are_one_id_type():
    rng = np.random.default_rng(14)
    X, y, g, _ = _subjects(rng, 40)
    ids = np.array([f"s{i}" for i in g], dtype=object)
    ids[::2] = np.array(ids[::2], dtype=str)  # np.str_ and str mixed, as np.where makes them
    RiskControlledPolicy(thresholds=THR, random_state=0).fit(X, y, groups=ids)


def test_image_unit_calibrates_rows_and_sample_weight_routes():
    rng = np.random.default_rng(15)
    X, y, g, _ = _subjects(rng, 60)
    policy = RiskControlledPolicy(thresholds=THR, calibration_unit="image", random_state=0)
    policy.fit(X, y, groups=g)
    assert policy.n_calibration_ == 18  # the split is by subject; 18 calibration subjects
    assert len(policy.calibration_risk_) == len(policy.margins_)
    with sklearn.config_context(enable_metadata_routing=True):
        routed = RiskControlledPolicy(Ridge(), thresholds=THR, random_state=0)
        routed.set_fit_request(groups=True, sample_weight=True).set_score_request(
            sample_weight=False
        )
        search = GridSearchCV(routed, {"alpha": [0.1]}, cv=GroupKFold(3))
        search.fit(X, y, groups=g, sample_weight=np.ones(len(y)))


@pytest.mark.parametrize("ltt_method", ["fixed_sequence", "bonferroni"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_risk_policy_matches_mapie_controller_end_to_end(ltt_method, seed):
    """The estimator, not just the function: ``RiskControlledPolicy`` against mapie's
    ``BinaryClassificationController`` on the same frozen regressor and calibration rows.

    Same thing computed when each subject has one image (``calibration_unit="image"``): a
    hip is passed at margin ``m`` iff ``pred - 60 >= m`` (mapie thresholds column 1 of
    ``predict_function`` by ``list_predict_params``), the risk is ``P(passed and abnormal)``,
    Learn-then-Test with the same FWER correction, the best parameter the valid one that
    refers fewest. ``n = 128`` and ``epsilon = 0.125`` avoid mapie's floating-point
    ``ceil(n * (k / n))`` and ``1 - confidence_level`` round trips (see
    ``tests/test_conformal_risk.py``). Compared: p-values (rtol 1e-12), the chosen margin and
    the pass/refer decisions on new hips (exactly).
    """
    rc = pytest.importorskip("mapie.risk_control")
    from sklearn.frozen import FrozenEstimator

    rng = np.random.default_rng(seed)
    n, eps, alpha = 128, 0.125, 0.1
    margins = np.linspace(-4.0, 12.0, 81)

    def draw(m):
        y = rng.normal(62, 4, m)
        return (y + rng.normal(0, 2, m))[:, None], pd.DataFrame({"alpha": y})

    X_train, y_train = draw(200)
    head = LinearRegression().fit(X_train, y_train)
    X_cal, y_cal = draw(n)
    X_new, _ = draw(500)
    policy = RiskControlledPolicy(
        FrozenEstimator(head),
        alpha=alpha,
        epsilon=eps,
        ltt_method=ltt_method,
        margins=margins,
        thresholds=THR,
        calibration_unit="image",
    ).fit(X_cal, y_cal)
    assert policy.n_calibration_ == n  # every row calibrates

    def predict_function(X):
        gap = head.predict(np.asarray(X, float))[:, 0] - 60.0
        return np.column_stack([-gap, gap])

    def risk(occurrence):
        return rc.BinaryRisk(
            risk_occurrence=occurrence,
            risk_condition=lambda y_true, y_pred: np.repeat(True, len(y_true)),
            higher_is_better=False,
        )

    ctrl = rc.BinaryClassificationController(
        predict_function=predict_function,
        risk=risk(lambda y_true, y_pred: (y_pred == 1) & (y_true == 1)),
        target_level=alpha,
        confidence_level=1 - eps,
        best_predict_param_choice=risk(lambda y_true, y_pred: y_pred == 0),
        list_predict_params=margins,
        fwer_method=ltt_method,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "predictions are not probabilities"
        ctrl.calibrate(X_cal, (y_cal["alpha"].to_numpy() < 60).astype(int))
    np.testing.assert_allclose(
        policy.p_values_[:-1], np.asarray(ctrl.p_values)[:, 0], rtol=1e-12
    )  # ours has +inf appended, whose p-value is 0
    assert np.isfinite(policy.margin_) and policy.margin_ == ctrl.best_predict_param
    passed = policy.predict(X_new)
    np.testing.assert_array_equal(passed, ctrl.predict(X_new))
    assert 0.05 < passed.mean() < 0.95  # both decisions occur: the comparison is not vacuous
