"""Tests of skddh.plotting._bland_altman: the Bland-Altman display."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402

import skddh.plotting  # noqa: E402
from skddh.metrics import bland_altman  # noqa: E402
from skddh.plotting import BlandAltmanDisplay  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _bmd(n=60, seed=0):
    rng = np.random.default_rng(seed)
    dexa = rng.normal(0.95, 0.12, n)
    predicted = dexa + 0.03 + rng.normal(0, 0.04, n)
    return dexa, predicted


def test_exported():
    assert "BlandAltmanDisplay" in skddh.plotting.__all__


def test_from_predictions_draws_points_bias_limits_and_labels():
    dexa, predicted = _bmd()
    disp = BlandAltmanDisplay.from_predictions(
        dexa, predicted, name="predicted BMD", reference_name="DEXA", units="g/cm$^2$"
    )
    res = bland_altman(dexa, predicted)
    assert disp.result == res
    np.testing.assert_allclose(
        disp.scatter_.get_offsets(), np.c_[(dexa + predicted) / 2, predicted - dexa]
    )
    assert disp.bias_line_.get_ydata()[0] == pytest.approx(res.bias)
    assert [line.get_ydata()[0] for line in disp.loa_lines_] == pytest.approx(
        [res.loa_low, res.loa_high]
    )
    assert len(disp.ci_bands_) == 3
    assert disp.ax_.get_xlabel() == "mean of predicted BMD and DEXA (g/cm$^2$)"
    assert disp.ax_.get_ylabel() == "predicted BMD - DEXA (g/cm$^2$)"
    assert disp.figure_ is disp.ax_.figure
    labels = [t.get_text() for t in disp.ax_.get_legend().get_texts()]
    assert "predicted BMD (n = 60)" in labels and "95 % limits of agreement" in labels
    assert "95 % CI" in labels


def test_no_units_no_ci_and_an_existing_axes():
    dexa, predicted = _bmd()
    _, ax = plt.subplots()
    disp = BlandAltmanDisplay.from_predictions(dexa, predicted, ax=ax, show_ci=False, s=5)
    assert disp.ax_ is ax and disp.ci_bands_ == []
    assert ax.get_ylabel() == "prediction - reference"
    assert disp.scatter_.get_sizes()[0] == 5
    # plot() again with another name redraws on new axes.
    again = disp.plot(name="model B")
    assert again.ax_ is not ax and again.ax_.get_ylabel() == "model B - reference"


def test_levels_reach_the_result():
    dexa, predicted = _bmd()
    disp = BlandAltmanDisplay.from_predictions(
        dexa, predicted, agreement_level=0.9, confidence_level=0.8, ci_method="exact"
    )
    assert disp.result == bland_altman(
        dexa, predicted, agreement_level=0.9, confidence_level=0.8, ci_method="exact"
    )
    labels = [t.get_text() for t in disp.ax_.get_legend().get_texts()]
    assert "90 % limits of agreement" in labels and "80 % CI" in labels


def test_from_estimator_uses_predict_and_class_name():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 2))
    y = 0.9 + 0.1 * X[:, 0] + rng.normal(0, 0.02, 80)
    model = LinearRegression().fit(X[:40], y[:40])
    disp = BlandAltmanDisplay.from_estimator(model, X[40:], y[40:], units="g/cm$^2$")
    assert disp.result == bland_altman(y[40:], model.predict(X[40:]))
    assert disp.ax_.get_ylabel() == "LinearRegression - reference (g/cm$^2$)"
    # A single-column target and prediction are fine.
    col = LinearRegression().fit(X[:40], y[:40, None])
    disp = BlandAltmanDisplay.from_estimator(col, X[40:], y[40:, None], name="BMD head")
    assert disp.result.n == 40 and disp.ax_.get_ylabel() == "BMD head - reference"


def test_from_estimator_rejects_several_targets():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(30, 2))
    Y = rng.normal(size=(30, 2))
    model = LinearRegression().fit(X, Y)
    with pytest.raises(ValueError, match="one target"):
        BlandAltmanDisplay.from_estimator(model, X, Y)


def test_bad_input_is_rejected_before_drawing():
    with pytest.raises(ValueError, match="y_true has 3 values but y_pred has 2"):
        BlandAltmanDisplay.from_predictions([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="y_pred must be finite"):
        BlandAltmanDisplay.from_predictions([1.0, 2.0, 3.0], [1.0, np.nan, 2.0])
