"""Tests of skddh.heads: MeasurementRegressor."""

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from skddh import MeasurementRegressor, OneSidedConformalRegressor


@parametrize_with_checks([MeasurementRegressor(hidden=32, epochs=60, device="cpu", random_state=0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _data(n=240, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 16)).astype(np.float32)
    y = pd.DataFrame(
        {
            "alpha": 60 + 6 * X[:, 0] + rng.normal(0, 1, n),
            "coverage": 50 + 8 * np.tanh(X[:, 1]) + rng.normal(0, 1, n),
            "ihdi": 1 + (X[:, 2] > 0.5) + (X[:, 2] > 1.5),
        }
    )
    return X, y


def _head(**kw):
    return MeasurementRegressor(
        hidden=32, epochs=150, device="cpu", random_state=0, classification_targets=("ihdi",), **kw
    )


def test_named_outputs_classes_and_probabilities():
    X, y = _data()
    head = _head().fit(X[:200], y[:200])
    pred = head.predict(X[200:])
    assert pred.shape == (40, 3)
    assert list(head.target_names_) == ["alpha", "coverage", "ihdi"]
    assert set(np.unique(pred[:, 2])) <= {1, 2, 3}
    proba = head.predict_proba(X[200:])
    assert proba.shape == (40, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    mae = np.abs(pred[:, 0] - y["alpha"].to_numpy()[200:]).mean()
    assert mae < 3.0  # the mean predictor's MAE is about 4.8
    assert np.mean(pred[:, 2] == y["ihdi"].to_numpy()[200:]) > 0.8
    assert head.history_["loss"].iloc[-1] < head.history_["loss"].iloc[0]


def test_loss_weights_steer_the_fit():
    X, y = _data()
    y = y[["alpha", "coverage"]]
    mae = {}
    for w in [{"alpha": 1.0, "coverage": 0.0}, {"alpha": 0.0, "coverage": 1.0}]:
        pred = (
            MeasurementRegressor(
                hidden=32, epochs=100, device="cpu", random_state=0, loss_weights=w
            )
            .fit(X, y)
            .predict(X)
        )
        mae[tuple(w.values())] = np.abs(pred - y.to_numpy()).mean(0)
    assert mae[(1.0, 0.0)][0] < mae[(0.0, 1.0)][0]
    assert mae[(0.0, 1.0)][1] < mae[(1.0, 0.0)][1]


def test_deterministic_on_cpu_and_pickle_clone():
    X, y = _data()
    a = _head().fit(X, y).predict(X)
    head = _head().fit(X, y)
    np.testing.assert_array_equal(a, head.predict(X))
    again = pickle.loads(pickle.dumps(head))
    np.testing.assert_array_equal(again.predict(X), a)
    assert clone(head).get_params()["classification_targets"] == ("ihdi",)


def test_inside_conformal_and_cross_val_score():
    X, y = _data()
    head = MeasurementRegressor(hidden=32, epochs=100, device="cpu", random_state=0)
    subjects = np.arange(len(y)) // 3
    model = OneSidedConformalRegressor(head, random_state=0)
    model.fit(X, y[["alpha", "coverage"]], groups=subjects)
    assert model.predict_lower(X).shape == (240, 2)
    scores = cross_val_score(
        MeasurementRegressor(hidden=16, epochs=200, lr=3e-3, device="cpu", random_state=0),
        X,
        y["alpha"],
        cv=3,
    )
    assert np.all(scores > 0.5)


@pytest.mark.parametrize(
    "params, y_edit, match",
    [
        ({"classification_targets": ("grade",)}, None, "classification_targets names 'grade'"),
        ({"loss_weights": {"ai": 1.0}}, None, r"unknown target\(s\) \['ai'\]"),
        ({"loss_weights": [1.0]}, None, "1 entries for 3 targets"),
        ({}, "nan", "row 5, target 'coverage'"),
    ],
)
def test_bad_input_is_named(params, y_edit, match):
    X, y = _data(n=40)
    if y_edit == "nan":
        y.loc[5, "coverage"] = np.nan
    kw = {"classification_targets": ("ihdi",), **params}
    with pytest.raises(ValueError, match=match):
        MeasurementRegressor(epochs=2, device="cpu", **kw).fit(X, y)


def test_garbage_targets_are_refused_or_fitted_finitely():
    """Hypothesis feeds the head targets with NaN, inf, huge values, strings and odd shapes:
    each is a ValueError/TypeError, or a fit whose predictions are finite and shaped."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    X = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    cell = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True, width=32),
        st.sampled_from(["", "abc", None, "1.5"]),
        st.integers(-(10**6), 10**6),
    )
    column = st.lists(cell, min_size=11, max_size=13)

    @hypothesis.settings(
        max_examples=60, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )  # fmt: skip
    @hypothesis.given(st.lists(column, min_size=1, max_size=3), st.booleans())
    def check(columns, classify):
        y = pd.DataFrame({f"t{j}": pd.Series(c, dtype=object) for j, c in enumerate(columns)})
        head = MeasurementRegressor(
            hidden=4,
            epochs=1,
            device="cpu",
            random_state=0,
            classification_targets=("t0",) if classify else (),
        )
        try:
            head.fit(X, y)
        except (ValueError, TypeError):
            return
        pred = head.predict(X)
        assert pred.shape == (len(X), y.shape[1])
        reg = [j for j, t in enumerate(head.target_names_) if t not in head.classes_]
        assert np.isfinite(pred[:, reg].astype(float)).all()

    check()
