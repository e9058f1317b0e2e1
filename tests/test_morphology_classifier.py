"""Tests of skddh.models._morphology: MorphologyClassifier (CPU, tiny images, few epochs)."""

import pickle

import numpy as np
import pandas as pd
import pytest
from _api_checks import DATA_FREE_CHECKS
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from skddh.models import MorphologyClassifier
from skddh.models._morphology import (
    balanced_pos_weight,
    sensitivity_threshold,
    youden_threshold,
)


def _model(**kw):
    params = dict(
        backbone="resnet10t", image_size=None, epochs=1, batch_size=16, device="cpu", random_state=0
    )
    params.update(kw)
    return MorphologyClassifier(**params)


def shapes(n, size, seed=0):
    """Label ``blob``: a bright disc upper-left; ``bar``: a bar lower-right; ``sex``: noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    cx, cy = 0.25 + rng.uniform(-0.04, 0.04, (2, n))
    blob = ((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2) < 0.14**2
    bar = np.broadcast_to((xx > 0.55) & (xx < 0.9) & (np.abs(yy - 0.75) < 0.05), blob.shape)
    img = rng.normal(60, 12, (n, size, size))
    img = img + 150 * (blob & (a[:, None, None] == 1)) + 150 * (bar & (b[:, None, None] == 1))
    y = pd.DataFrame({"blob": a, "bar": b, "sex": rng.integers(0, 2, n)})
    return img.clip(0, 255).astype(np.uint8), y, blob, bar


@pytest.fixture(scope="module")
def data():
    return shapes(176, 48)


@pytest.fixture(scope="module")
def fitted(data):
    images, y, _, _ = data
    groups = np.repeat(np.arange(64), 2)  # two images per subject in the 128 training ones
    model = _model(epochs=4, lr=1e-3, auxiliary=("sex",), validation_size=0.2, threshold="youden")
    return model.fit(images[:128], y[:128], groups=groups)


# Images in, like FineTuningRegressor: the common checks feed 2-D tables and would be skipped;
# the data-free API checks run as they are and the data-dependent contract is tested below.
@pytest.mark.parametrize("check", DATA_FREE_CHECKS)
def test_sklearn_api_checks_that_need_no_tabular_data(check):
    check("MorphologyClassifier", _model())


def test_learns_each_drawn_shape_as_its_own_label(fitted, data):
    images, y, _, _ = data
    proba = fitted.predict_proba(images[128:])
    labels = y[["blob", "bar"]][128:]
    auroc = roc_auc_score(labels, proba, average=None)
    assert (auroc > 0.8).all(), auroc
    assert list(fitted.classes_) == ["blob", "bar"] == list(fitted.label_names_)
    assert list(fitted.auxiliary_names_) == ["sex"]
    assert fitted.predict_auxiliary_proba(images[:3]).shape == (3, 1)
    pred = fitted.predict(images[128:])
    assert pred.shape == (48, 2) and set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (proba >= fitted.thresholds_).astype(int))
    assert ((fitted.thresholds_ > 0) & (fitted.thresholds_ <= 1)).all()
    assert fitted.validation_auroc_.shape == (2,)
    assert list(fitted.history_.columns) == ["loss", "lr", "images_per_s", "seconds", "val_loss"]
    assert fitted.history_.shape[0] == 4 and fitted.precision_ == "fp32"
    assert fitted.input_shape_ == (48, 48) and fitted.image_size_ == 48
    np.testing.assert_allclose(proba, 1 / (1 + np.exp(-fitted.decision_function(images[128:]))))


def test_default_convnext_tiny_fits_and_predicts():
    images, y, _, _ = shapes(16, 32, seed=1)
    model = MorphologyClassifier(epochs=1, batch_size=8, device="cpu", random_state=0)
    assert model.backbone == "convnext_tiny"
    model.fit(images, y)
    assert model.predict_proba(images[:4]).shape == (4, 3)
    np.testing.assert_array_equal(model.thresholds_, 0.5)


def test_deterministic_on_cpu_pickle_and_clone():
    images, y, _, _ = shapes(32, 32, seed=2)
    a = _model().fit(images, y)
    b = _model().fit(images, y)
    np.testing.assert_array_equal(a.predict_proba(images[:8]), b.predict_proba(images[:8]))
    again = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(again.predict_proba(images[:8]), a.predict_proba(images[:8]))
    c = clone(a)
    assert not hasattr(c, "module_") and c.get_params() == a.get_params()
    assert a.__sklearn_tags__().classifier_tags.multi_label


def test_image_size_letterboxes_any_size_and_none_refuses_another_size(fitted, data):
    images = data[0]
    with pytest.raises(ValueError, match=r"fitted on \(48, 48\) images with image_size=None"):
        fitted.predict(images[:2, :40, :40])
    sq, y, _, _ = shapes(24, 32, seed=3)
    model = _model(image_size=32).fit(sq, y[["blob", "bar"]])
    assert model.input_shape_ is None
    assert model.predict_proba(images[:2]).shape == (2, 2)  # 48 px letterboxed to 32


def test_thresholds_by_target_sensitivity_on_a_subject_split():
    images, y, _, _ = shapes(40, 32, seed=4)
    groups = np.repeat(np.arange(20), 2)
    model = _model(validation_size=0.3, threshold={"target_sensitivity": 0.9})
    model.fit(images, y[["blob", "bar"]], groups=groups)
    assert model.thresholds_.shape == (2,)
    assert model.history_["val_loss"].notna().all()
    with pytest.warns(UserWarning, match="groups is None"):
        _model(validation_size=0.3).fit(images, y[["blob", "bar"]])


def test_pure_threshold_functions():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    s = np.array([0.1, 0.3, 0.35, 0.8, 0.7, 0.4, 0.2, 0.05])
    t = youden_threshold(y, s)
    sens = ((s >= t) & (y == 1)).sum() / 4
    spec = ((s < t) & (y == 0)).sum() / 4
    assert sens + spec - 1 == pytest.approx(0.5)
    t9 = sensitivity_threshold(y, s, 1.0)
    assert t9 == 0.2 and ((s >= t9) & (y == 1)).sum() == 4
    np.testing.assert_allclose(balanced_pos_weight(y[:, None]), [1.0])


def test_weights_and_balanced_pos_weight():
    images, y, _, _ = shapes(24, 32, seed=5)
    y = y.assign(blob=[1] * 6 + [0] * 18)
    model = _model(pos_weight="balanced", label_weights={"bar": 2.0, "sex": 0.5})
    model.fit(images, y, groups=None)
    np.testing.assert_allclose(model.pos_weight_[0], 3.0)
    assert len(model.classes_) == 3
    _model(label_weights=[1.0, 1.0, 0.5], auxiliary=(2,)).fit(images, y)


@pytest.mark.parametrize(
    "y_change, params, match",
    [
        (dict(), dict(auxiliary=("age",)), r"auxiliary names 'age', not a column of y"),
        (dict(bar=0), dict(), r"column 'bar' of y has only class 0"),
        (dict(blob=[np.nan] + [1.0] * 23), dict(), r"column 'blob' of y has NaN labels.*row 0"),
        (dict(blob=[2] * 24), dict(), r"column 'blob' of y must hold 0/1 labels; row 0"),
        (dict(), dict(label_weights={"dyspl": 1.0}), r"label_weights names unknown.*dyspl"),
        (dict(), dict(threshold="youden"), r"threshold='youden'.*set validation_size"),
        (dict(), dict(threshold={"sens": 0.9}), r"\{'target_sensitivity': s\}"),
        (dict(), dict(scale=(1.2, 0.8)), "scale must satisfy"),
        (dict(), dict(precision="fp8"), "'precision' parameter"),
        (dict(), dict(validation_size=1.5), "'validation_size' parameter"),
    ],
)
def test_bad_input_is_named(y_change, params, match):
    images, y, _, _ = shapes(24, 32, seed=6)
    with pytest.raises(ValueError, match=match):
        _model(**params).fit(images, y.assign(**y_change))


def test_bad_shapes_are_named():
    images, y, _, _ = shapes(24, 32, seed=6)
    with pytest.raises(ValueError, match="X has 24 samples but y has 23"):
        _model().fit(images, y[:23])
    with pytest.raises(ValueError, match="requires y"):
        _model().fit(images, None)
    with pytest.raises(ValueError, match="groups has 3"):
        _model(validation_size=0.3).fit(images, y, groups=[1, 2, 3])
