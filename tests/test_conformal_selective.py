"""Selective classification (skddh.conformal._selective): the guarantee by simulation.

Patients with 1-3 hips whose features are correlated (a patient effect), labels drawn from a
logistic model, and an over-confident, biased classifier. The promise: with probability at
least ``1 - delta`` over the calibration draw, the chosen rule's error rate among accepted
patients (a patient is wrong when any of its accepted calls is) is at most ``alpha``. The
true rate of a rule is computed on a population of 300,000 patients. The control: the
plug-in rule (the smallest threshold whose empirical error among accepted calibration
patients is at most ``alpha``) breaks the promise about half the time.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import config_context
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.multioutput import MultiOutputClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from skddh.conformal import SelectiveClassifier, selective_threshold
from skddh.conformal._selective import _unit_counts

ALPHA, DELTA = 0.15, 0.1
GRID = np.linspace(0.0, 0.5, 20)


def draw(rng, n_patients):
    """(x, y, patient): 1-3 hips per patient, corr(x) about 0.6 within a patient."""
    sizes = rng.integers(1, 4, n_patients)
    patient = np.repeat(np.arange(n_patients), sizes)
    x = rng.normal(size=n_patients)[patient] + 0.8 * rng.normal(size=len(patient))
    y = (rng.uniform(size=len(patient)) < 1 / (1 + np.exp(-5.0 * x))).astype(int)
    return x, y, patient


class Overconfident(ClassifierMixin, BaseEstimator):
    """P(y = 1) = sigmoid(8 x + 0.5): too sure and shifted (the truth is sigmoid(5 x))."""

    def fit(self, X, y=None):
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        p = 1 / (1 + np.exp(-(8.0 * np.asarray(X, float)[:, 0] + 0.5)))
        return np.column_stack([1 - p, p])


def score(x):
    return Overconfident().fit(None).predict_proba(x[:, None])[:, 1]


def true_risk(rng, lambdas, model_score=score, n=300_000):
    """Patient-level error rate among accepted patients, per lambda, on a large population."""
    x, y, patient = draw(rng, n)
    s = model_score(x)
    wrong = (s >= 0.5).astype(int) != y
    acc, err = _unit_counts(np.abs(s - 0.5), wrong, lambdas, patient)
    return err.sum(0) / np.maximum(acc.sum(0), 1)


@pytest.fixture(scope="module")
def risk():
    return true_risk(np.random.default_rng(123), GRID)


def plug_in(y, s, patient):
    """The naive rule: smallest lambda whose empirical selective risk is <= alpha."""
    wrong = (s >= 0.5).astype(int) != y
    acc, err = _unit_counts(np.abs(s - 0.5), wrong, GRID, patient)
    emp = err.sum(0) / np.maximum(acc.sum(0), 1)
    ok = (emp <= ALPHA) & (acc.sum(0) > 0)
    return GRID[np.argmax(ok)] if ok.any() else np.inf


def test_selective_risk_is_controlled_and_the_plug_in_is_not(risk):
    rng = np.random.default_rng(0)
    reps, n_cal = 1000, 150
    assert risk[0] > ALPHA > risk[-1]  # accepting everything is too risky: a real choice
    ltt, naive, accepted = [], [], []
    for _ in range(reps):
        x, y, patient = draw(rng, n_cal)
        s = score(x)
        res = selective_threshold(y, s, alpha=ALPHA, delta=DELTA, lambdas=GRID, groups=patient)
        r = risk[res.lambda_hat == GRID][0] if np.isfinite(res.lambda_hat) else 0.0
        ltt.append(r > ALPHA)
        accepted.append(np.isfinite(res.lambda_hat))
        lam = plug_in(y, s, patient)
        naive.append(risk[lam == GRID][0] > ALPHA if np.isfinite(lam) else False)
    se = np.sqrt(DELTA * (1 - DELTA) / reps)
    assert np.mean(ltt) <= DELTA + 3 * se, np.mean(ltt)
    assert np.mean(naive) > DELTA + 3 * se, np.mean(naive)  # the control fails the test
    assert np.mean(accepted) > 0.9  # and the controlled rule does accept cases


def test_the_estimator_through_gridsearchcv_with_routed_groups():
    """Tuned by GridSearchCV with routed groups, the refitted rule keeps the guarantee."""
    rng = np.random.default_rng(1)
    reps, violations = 80, []
    pop_x, pop_y, pop_patient = draw(np.random.default_rng(7), 20_000)
    with config_context(enable_metadata_routing=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for r in range(reps):
            x, y, patient = draw(rng, 400)
            model = SelectiveClassifier(
                LogisticRegression(), alpha=ALPHA, delta=DELTA, random_state=r
            ).set_fit_request(groups=True)
            search = GridSearchCV(model, {"estimator__C": [0.01, 1.0]}, cv=GroupKFold(3))
            search.fit(x[:, None], y, groups=patient)
            best = search.best_estimator_
            assert best.n_calibration_ == 120  # 30 % of the 400 patients
            pred = best.predict(pop_x[:, None])
            acc = pred != -1
            wrong = acc & (pred != pop_y)
            a, e = np.zeros(pop_patient.max() + 1, bool), np.zeros(pop_patient.max() + 1, bool)
            np.logical_or.at(a, pop_patient, acc)
            np.logical_or.at(e, pop_patient, wrong)
            violations.append(e.sum() / max(a.sum(), 1) > ALPHA)
    se = np.sqrt(DELTA * (1 - DELTA) / reps)
    assert np.mean(violations) <= DELTA + 3 * se, np.mean(violations)


def test_predict_refers_exactly_the_unsure_cases():
    rng = np.random.default_rng(2)
    x, y, patient = draw(rng, 600)
    model = SelectiveClassifier(FrozenEstimator(Overconfident().fit(None)), alpha=0.15)
    model.fit(x[:, None], y, groups=patient)
    assert model.n_calibration_ == 600  # frozen: every patient calibrates
    lam = model.lambdas_["y"]
    assert 0 < lam < 0.5
    p = score(x)
    pred = model.predict(x[:, None])
    np.testing.assert_array_equal(pred == -1, np.abs(p - 0.5) < lam)
    np.testing.assert_array_equal(pred[pred != -1], (p[pred != -1] >= 0.5).astype(int))
    np.testing.assert_array_equal(model.accept(x[:, None]), pred != -1)
    assert 0 < model.calibration_accepted_share_["y"] < 1
    assert model.score(x[:, None], y) > 1 - 0.15


def test_multi_label_per_label_thresholds():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1200, 2))
    y = pd.DataFrame(
        {
            "easy": (X[:, 0] + 0.2 * rng.normal(size=1200) > 0).astype(int),
            "hard": (X[:, 1] + 1.5 * rng.normal(size=1200) > 0).astype(int),
        }
    )
    groups = np.arange(1200) // 2
    model = SelectiveClassifier(
        MultiOutputClassifier(LogisticRegression()), alpha=0.1, random_state=0
    ).fit(X, y, groups=groups)
    assert list(model.label_names_) == ["easy", "hard"]
    assert model.lambdas_["easy"] < model.lambdas_["hard"]  # the hard label refers more
    pred = model.predict(X)
    assert pred.shape == (1200, 2)
    refer = (pred == -1).mean(0)
    assert refer[0] < refer[1]


def test_nothing_certified_refers_everyone_and_warns():
    rng = np.random.default_rng(4)
    x, y, patient = draw(rng, 20)
    with pytest.warns(UserWarning, match="every case is referred"):
        model = SelectiveClassifier(FrozenEstimator(Overconfident().fit(None)), alpha=0.01).fit(
            x[:, None], y, groups=patient
        )
    assert (model.predict(x[:, None]) == -1).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=1.5), "alpha"),
        (dict(delta=1.0), "delta"),
        (dict(method="holm"), "method"),
        (dict(threshold=1.2), "threshold"),
        (dict(lambdas=[0.2, 0.1]), "increasing"),
        (dict(groups=[1, 2]), "groups"),
    ],
)
def test_selective_threshold_bad_input_is_named(kwargs, match):
    args = dict(alpha=0.1, delta=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        selective_threshold([0, 1, 1], [0.2, 0.7, 0.9], **args)


def test_estimator_bad_input_is_named():
    X = np.zeros((10, 1))
    with pytest.raises(ValueError, match="groups"):
        SelectiveClassifier().fit(X, np.r_[[0, 1] * 5])
    with pytest.raises(ValueError, match="0/1"):
        SelectiveClassifier(calibration_unit="case").fit(X, np.c_[[0, 1] * 5, [0, 2] * 5])
    with pytest.raises(ValueError, match="Only binary"):
        SelectiveClassifier(calibration_unit="case").fit(X, np.r_[[0, 1, 2, 1, 0] * 2])
    with pytest.raises(ValueError, match="alpha"):
        SelectiveClassifier(alpha=2.0, calibration_unit="case").fit(X, np.r_[[0, 1] * 5])
    with pytest.raises(ValueError, match="at least 2 distinct subjects"):
        SelectiveClassifier().fit(X, np.r_[[0, 1] * 5], groups=np.zeros(10))


@parametrize_with_checks(
    [SelectiveClassifier(calibration_unit="case", random_state=0)],
    expected_failed_checks=lambda est: {
        "check_classifiers_train": "predict returns -1 (refer) for unsure cases by design",
        "check_classifiers_classes": "-1 marks a referral, so -1 cannot be a class",
        "check_classifier_multioutput": "multi-label predict returns -1 where referred",
    },
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check(estimator)


def test_red_team_findings_are_errors_or_right_answers():
    """Found by a red-team review: each was a silent wrong answer or a crash."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 2))
    groups = np.arange(400) // 2
    # labels that are not the frozen base's classes would all read as negatives
    lr = LogisticRegression().fit(X, np.where(X[:, 0] > 0, "yes", "no"))
    with pytest.raises(ValueError, match="not classes of the estimator"):
        SelectiveClassifier(FrozenEstimator(lr)).fit(X, (X[:, 0] > 0).astype(int), groups=groups)
    # -1 as a class would look like "refer"
    with pytest.raises(ValueError, match="-1 is one of the classes"):
        SelectiveClassifier(calibration_unit="case").fit(X, np.where(X[:, 0] > 0, 1, -1))
    # a plain DataFrame of 3 labels with the default multi-output base
    Y = pd.DataFrame((X[:, [0, 1, 0]] + rng.normal(size=(400, 3)) > 0).astype(int))
    model = SelectiveClassifier(alpha=0.3, random_state=0).fit(X, Y, groups=groups)
    assert model.predict(X).shape == (400, 3)
    assert np.isfinite(model.score(X, Y)) or np.isnan(model.score(X, Y))
    # missing patient ids
    bad = groups.astype(float)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="missing patient ids"):
        SelectiveClassifier().fit(X, Y, groups=bad)
    with pytest.raises(ValueError, match="missing patient ids"):
        selective_threshold(Y[0], np.full(400, 0.6), alpha=0.1, delta=0.1, groups=bad)


class NamedLabels(ClassifierMixin, BaseEstimator):
    """A multi-label model naming its labels (as MorphologyClassifier): columns in its order."""

    def fit(self, X, y):
        self.classes_ = np.array(["a", "b"], dtype=object)
        return self

    def predict_proba(self, X):
        X = np.asarray(X, float)
        return 1 / (1 + np.exp(-4 * X[:, :2]))


def test_named_labels_are_matched_by_name_and_auxiliaries_ignored():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(800, 2))
    y = pd.DataFrame(
        {
            "sex": rng.integers(0, 2, 800),  # an auxiliary target the base does not predict
            "b": (X[:, 1] + 0.3 * rng.normal(size=800) > 0).astype(int),
            "a": (X[:, 0] + 0.3 * rng.normal(size=800) > 0).astype(int),
        }
    )
    model = SelectiveClassifier(FrozenEstimator(NamedLabels().fit(X, y)), alpha=0.1)
    model.fit(X, y, groups=np.arange(800) // 2)
    assert list(model.label_names_) == ["a", "b"]
    assert np.isfinite(model.lambdas_).all()  # each label calibrated on its own score
    assert model.score(X, y) > 0.9
