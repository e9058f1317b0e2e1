"""Tests of skddh.conformal._cross: the CV+ lower bound and OneSidedCrossConformalRegressor."""

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GroupKFold, KFold, ShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from skddh.conformal import (
    OneSidedCrossConformalRegressor,
    cv_plus_lower_bound,
    smallest_delta,
)


def test_cv_plus_bound_is_the_order_statistic_of_the_combined_values():
    rng = np.random.default_rng(0)
    n, k_folds = 23, 4
    preds = rng.normal(size=(9, k_folds))
    scores = rng.gumbel(size=n)
    fold = rng.integers(0, k_folds, n)
    for delta in (0.05, 0.1, 0.25, 0.5):
        j = int(np.floor(delta * (n + 1) + 1e-9))
        lb = cv_plus_lower_bound(preds, scores, fold, delta)
        brute = np.array([np.sort(p[fold] - scores)[j - 1] for p in preds])
        np.testing.assert_allclose(lb, brute)
    assert np.isneginf(cv_plus_lower_bound(preds, scores, fold, 0.03)).all()  # j = 0


def test_cv_plus_with_one_fold_is_split_conformal():
    """With a single model, CV+ reduces to the split-conformal bound."""
    from skddh.conformal import lower_bound

    rng = np.random.default_rng(1)
    scores = rng.normal(size=30)
    preds = rng.normal(size=(5, 1))
    np.testing.assert_allclose(
        cv_plus_lower_bound(preds, scores, np.zeros(30, int), 0.2),
        lower_bound(preds[:, 0], scores, 0.2),
    )


@pytest.mark.parametrize("n", [20, 57, 120])
@pytest.mark.parametrize("delta", [0.05, 0.1, 0.17, 0.3, 0.45])
def test_matches_mapie_cv_plus(n, delta):
    """Image-level CV+ with fixed folds equals mapie's CrossConformalRegressor(method="plus").

    mapie's asymmetric score (``AbsoluteConformityScore(sym=False)``) puts ``alpha / 2`` in
    each tail, so its lower end at ``confidence_level = 1 - 2 * delta`` is our bound at
    ``delta``. Cases where ``(n + 1) delta`` is an integer can differ by one order statistic
    in mapie's floating-point k and are left out (ours is exact).
    """
    pytest.importorskip("mapie")
    from mapie.conformity_scores import AbsoluteConformityScore
    from mapie.regression import CrossConformalRegressor

    if abs((n + 1) * delta - round((n + 1) * delta)) < 1e-6:
        pytest.skip("float boundary: mapie's k may differ by one")
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n + 15, 2))
    y = X @ [3.0, -1.0] + rng.gumbel(0, 2, n + 15)
    folds = KFold(5)
    theirs = CrossConformalRegressor(
        LinearRegression(),
        confidence_level=1 - 2 * delta,
        conformity_score=AbsoluteConformityScore(sym=False),
        method="plus",
        cv=folds,
    ).fit_conformalize(X[:n], y[:n])
    _, intervals = theirs.predict_interval(X[n:], allow_infinite_bounds=True)
    ours = OneSidedCrossConformalRegressor(
        LinearRegression(), delta=delta, cv=folds, calibration_unit="image"
    ).fit(X[:n], y[:n])
    np.testing.assert_allclose(ours.predict_lower(X[n:]), intervals[:, 0, 0], rtol=0, atol=1e-9)
    assert np.isinf(ours.predict_lower(X[n:])).all() == (delta < smallest_delta(n))


def _data(n_subjects=40, seed=0):
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_subjects), rng.integers(1, 6, n_subjects))
    X = rng.normal(size=(len(subject), 3))
    y = pd.DataFrame(
        {
            "alpha": 60 + 4 * X[:, 0] + rng.normal(0, 2, n_subjects)[subject],
            "coverage": 55 + 5 * X[:, 1] + rng.gumbel(0, 3, len(subject)),
        }
    )
    return X, y, subject


def test_folds_are_over_subjects_and_every_subject_calibrates():
    X, y, subject = _data()
    model = OneSidedCrossConformalRegressor(LinearRegression(), cv=4, random_state=0)
    model.fit(X, y, groups=subject)
    assert model.n_calibration_ == 40 and len(model.estimators_) == 4
    np.testing.assert_array_equal(model.calibration_groups_, np.arange(40))
    assert set(model.unit_fold_) == {0, 1, 2, 3}
    assert model.scores_.shape == (40, 2)
    assert list(model.target_names_) == ["alpha", "coverage"]
    lb = model.predict_lower(X)
    assert lb.shape == (len(y), 2)
    assert (lb <= model.predict(X) + 1e-9).mean() > 0.9
    # another delta without refitting; larger delta gives a higher bound
    lb2 = model.predict_lower(X, delta={"alpha": 0.3, "coverage": 0.1})
    assert (lb2[:, 0] >= lb[:, 0]).all() and np.allclose(lb2[:, 1], lb[:, 1])
    assert model.predict_components(X).shape == (len(y), 4, 2)


def test_subject_scores_are_out_of_fold_maxima():
    X, y, subject = _data()
    model = OneSidedCrossConformalRegressor(LinearRegression(), cv=4, random_state=0)
    model.fit(X, y, groups=subject)
    for i in (0, 7, 31):
        rows = subject == i
        est = model.estimators_[model.unit_fold_[i]]
        expected = (est.predict(X[rows]) - y[rows].to_numpy()).max(axis=0)
        np.testing.assert_allclose(model.scores_[i], expected)


def test_random_state_reproduces_and_clone_pickle_pipeline():
    X, y, subject = _data()
    model = OneSidedCrossConformalRegressor(
        make_pipeline(StandardScaler(), LinearRegression()), cv=3, random_state=5
    )
    a = clone(model).fit(X, y, groups=subject).predict_lower(X)
    fitted = clone(model).fit(X, y, groups=subject)
    np.testing.assert_array_equal(a, fitted.predict_lower(X))
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict_lower(X), a)


def test_sample_weight_reaches_each_fold_sliced():
    from sklearn.linear_model import Ridge

    X, y, subject = _data()
    w = np.linspace(0.5, 2.0, len(y))
    model = OneSidedCrossConformalRegressor(Ridge(), cv=GroupKFold(3)).fit(
        X, y, groups=subject, sample_weight=w
    )
    train, _ = next(GroupKFold(3).split(X, y, subject))
    ref = Ridge().fit(X[train], y.iloc[train], sample_weight=w[train])
    np.testing.assert_allclose(model.estimators_[0].coef_, ref.coef_)


@pytest.mark.parametrize(
    "params, groups, match",
    [
        ({}, None, "groups=None.*metadata routing"),
        ({"cv": 50}, "subjects", "cv=50 folds need at least 50 subjects, got 40 "),
        ({"cv": KFold(3)}, "subjects", "images of one subject in a fold's training and test"),
        ({"cv": ShuffleSplit(3, random_state=0), "calibration_unit": "image"}, None, "partition"),
        ({"calibration_unit": "subject-subsample"}, "subjects", "calibration_unit"),
        ({"delta": {"alpha": 0.1}}, "subjects", r"no miscoverage for target\(s\) \['coverage'\]"),
    ],
)
def test_bad_input(params, groups, match):
    X, y, subject = _data()
    with pytest.raises(ValueError, match=match):
        OneSidedCrossConformalRegressor(**params).fit(
            X, y, groups=None if groups is None else subject
        )


def test_too_small_delta_warns_and_gives_minus_inf():
    X, y, subject = _data(n_subjects=12)
    model = OneSidedCrossConformalRegressor(delta=0.05, cv=3, random_state=0)
    model.fit(X, y, groups=subject)
    with pytest.warns(UserWarning, match=r"n_calibration=12 \(subjects\).* = 0\.07692"):
        lb = model.predict_lower(X)
    assert np.isneginf(lb).all()


# scikit-learn's checks call fit(X, y) without groups: the image-level opt-in only.
@parametrize_with_checks(
    [
        OneSidedCrossConformalRegressor(cv=3, calibration_unit="image"),
        OneSidedCrossConformalRegressor(cv=2, calibration_unit="image", delta=0.3),
    ],
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_nan_predictions_cannot_drop_subjects_out_of_the_ranking():
    """A NaN sorted last would count a subject as covered; as -inf it can only lower the bound."""
    rng = np.random.default_rng(3)
    preds = rng.normal(size=(4, 3))
    scores = rng.normal(size=12)
    fold = np.arange(12) % 3
    scores_nan = scores.copy()
    scores_nan[:4] = np.nan
    lb_nan = cv_plus_lower_bound(preds, scores_nan, fold, 0.3)
    lb_inf = cv_plus_lower_bound(preds, np.where(np.isnan(scores_nan), np.inf, scores), fold, 0.3)
    np.testing.assert_array_equal(lb_nan, lb_inf)
    assert (lb_nan <= cv_plus_lower_bound(preds, scores, fold, 0.3)).all()
    preds[1, 0] = np.nan  # one fold model cannot predict this case
    assert cv_plus_lower_bound(preds, scores, fold, 0.3)[1] <= lb_inf.max()


def test_nan_predicting_base_warns_and_stays_conservative():
    X, y, subject = _data()

    class NanSome(LinearRegression):
        def predict(self, X):
            p = super().predict(X)
            p[np.asarray(X)[:, 2] > 0.8] = np.nan
            return p

    with pytest.warns(UserWarning, match="predicted NaN for"):
        model = OneSidedCrossConformalRegressor(NanSome(), cv=4, random_state=0)
        model.fit(X, y, groups=subject)
    assert np.isposinf(model.scores_).any()
