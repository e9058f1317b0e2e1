"""Tests of skddh.plotting: the Display objects."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402

from skddh import (  # noqa: E402
    CoverageDisplay,
    DecisionCurveDisplay,
    OneSidedConformalRegressor,
    SelectiveImagingPolicy,
)
from skddh.metrics import utility  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _fitted(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    y = pd.DataFrame(
        {
            "alpha": 62 + 4 * X[:, 0] + rng.gumbel(0, 1.5, n),
            "coverage": 55 + 5 * X[:, 1] + rng.normal(0, 2, n),
        }
    )
    model = OneSidedConformalRegressor(LinearRegression(), calibration_size=0.5, random_state=0)
    groups = np.arange(n) // 2  # two images per subject
    policy = SelectiveImagingPolicy(model, rule="or", delta=0.2)
    policy.fit(X[:200], y[:200], groups=groups[:200])
    return policy, X[200:], y[200:]


def test_decision_curve_from_estimator_draws_policy_and_references():
    policy, X, y = _fitted()
    disp = DecisionCurveDisplay.from_estimator(policy, X, y, radiation_costs=[0.0, 1.0, 2.0])
    assert disp.line_.get_label() == "or, delta=0.2"
    assert [r.get_label() for r in disp.references_] == ["X-ray everyone", "ultrasound only"]
    expected = [
        utility(policy.predict(X), policy.abnormal(y), radiation_cost=lam, miss_penalty=10.0)
        for lam in [0.0, 1.0, 2.0]
    ]
    np.testing.assert_allclose(disp.line_.get_ydata(), expected)
    # A second policy on the same axes, without repeating the references.
    other = DecisionCurveDisplay.from_predictions(
        np.zeros(len(y)), policy.abnormal(y), ax=disp.ax_, references=False, name="none"
    )
    assert other.ax_ is disp.ax_ and other.references_ == []
    assert len(disp.ax_.get_lines()) == 4


def test_coverage_display_from_estimator_has_band_and_one_line_per_target():
    policy, X, y = _fitted()
    disp = CoverageDisplay.from_estimator(policy, X, y, deltas=[0.1, 0.2, 0.4])
    assert [line.get_label() for line in disp.lines_] == ["alpha", "coverage"]
    assert disp.band_ is not None
    np.testing.assert_allclose(disp.nominal, [0.9, 0.8, 0.6])
    lb = policy.estimator_.predict_lower(X, delta=0.2)
    assert disp.coverage.loc[0.2, "alpha"] == np.mean(y["alpha"].to_numpy() >= lb[:, 0])
    # Coverage rises with 1 - delta.
    assert (np.diff(disp.coverage["alpha"].to_numpy()) <= 0).all()


def test_coverage_display_bad_input():
    with pytest.raises(ValueError, match="at least one delta"):
        CoverageDisplay.from_predictions(np.ones(3), {})
    with pytest.raises(ValueError, match=r"deltas in \(0, 1\)"):
        CoverageDisplay.from_predictions(np.ones(3), {1.5: np.zeros(3)})


def test_coverage_display_counts_subjects_when_given_groups():
    from skddh import OneSidedCrossConformalRegressor

    rng = np.random.default_rng(0)
    subject = np.repeat(np.arange(60), 3)
    X = rng.normal(size=(180, 2))
    y = X @ [2.0, 1.0] + rng.normal(0, 2, 60)[subject] + rng.normal(0, 0.3, 180)
    fit, new = subject < 40, subject >= 40
    split = OneSidedConformalRegressor(LinearRegression(), random_state=0)
    split.fit(X[fit], y[fit], groups=subject[fit])
    disp = CoverageDisplay.from_estimator(split, X[new], y[new], groups=subject[new])
    assert disp.n_calibration == split.n_calibration_ == 8  # subjects, not images
    per_image = CoverageDisplay.from_estimator(split, X[new], y[new])
    assert (disp.coverage.to_numpy() <= per_image.coverage.to_numpy() + 1e-12).all()
    cv = OneSidedCrossConformalRegressor(LinearRegression(), cv=4, random_state=0)
    cv.fit(X[fit], y[fit], groups=subject[fit])
    disp = CoverageDisplay.from_estimator(cv, X[new], y[new], groups=subject[new])
    assert disp.n_calibration is None and disp.band_ is None  # CV+ has no exact band
    plt.close("all")
