"""Tests of skddh.models._localize: HipJointLocalizer (CPU, 64 px network input, few epochs)."""

import pickle

import numpy as np
import pandas as pd
import pytest
from _api_checks import DATA_FREE_CHECKS
from sklearn.base import clone

from skddh.datasets import make_hip_morphology_cohort
from skddh.datasets._morphology import crop_hips
from skddh.models import HipJointLocalizer
from skddh.models._localize import box_iou, check_hip_boxes

COLS = ["x0", "y0", "x1", "y1"]


def _model(**kw):
    params = dict(image_size=64, epochs=1, batch_size=8, device="cpu", random_state=0)
    params.update(kw)
    return HipJointLocalizer(**params)


def _subset(cohort, rows):
    """Images ``rows`` and their boxes, image_index renumbered to the subset."""
    rows = np.asarray(rows)
    boxes = cohort.boxes[cohort.boxes.image_index.isin(rows)].copy()
    boxes["image_index"] = boxes.image_index.map({r: k for k, r in enumerate(rows)})
    return cohort.images[rows], boxes.sort_values("image_index", kind="stable").reset_index(
        drop=True
    )


@pytest.fixture(scope="module")
def cohort():
    return make_hip_morphology_cohort(n_patients=80, image_size=128, n_holdout=20, random_state=0)


@pytest.fixture(scope="module")
def split(cohort):
    split = cohort.radiographs.split.to_numpy()
    return _subset(cohort, np.flatnonzero(split == "train")), _subset(
        cohort, np.flatnonzero(split == "holdout")
    )


@pytest.fixture(scope="module")
def fitted(split):
    (X, boxes), _ = split
    return _model(epochs=6).fit(X, boxes)


@pytest.mark.parametrize("check", DATA_FREE_CHECKS)
def test_sklearn_api_checks_that_need_no_tabular_data(check):
    check("HipJointLocalizer", _model())


def test_finds_the_hips_on_held_out_radiographs(fitted, split):
    _, (X, boxes) = split
    pred = fitted.predict(X)
    assert list(pred.columns) == ["image_index", "side", *COLS, "score"]
    assert pred.image_index.tolist() == np.repeat(np.arange(len(X)), 2).tolist()
    assert pred.side.tolist() == ["R", "L"] * len(X)
    assert pred.score.between(0, 1).all()
    true = boxes[COLS].to_numpy()
    got = pred[COLS].to_numpy()
    iou = box_iou(got, true)
    centre = np.hypot(*((got[:, :2] + got[:, 2:] - true[:, :2] - true[:, 2:]) / 2).T)
    # the mean training box on every radiograph scores IoU 0.76, 3.9 px here
    assert iou.mean() > 0.7, iou.mean()
    assert centre.mean() < 0.1 * X.shape[-1], centre.mean()
    assert fitted.history_.shape[0] == 6 and fitted.n_steps_ == 6 * 8
    assert fitted.history_.loss.iloc[-1] < fitted.history_.loss.iloc[0]
    assert fitted.input_shape_ == (128, 128) and fitted.image_size_ == 64


def test_crops_are_right_then_mirrored_left_from_the_predicted_boxes(fitted, split):
    _, (X, _) = split
    X = X[:3]
    crops = fitted.transform(X)
    assert crops.shape == (6, 64, 64) and crops.dtype == np.uint8
    pred = fitted.predict(X)
    np.testing.assert_array_equal(crops, crop_hips(X, pred, 64))
    small = fitted.crop(X, size=32, mirror_left=False)
    assert small.shape == (6, 32, 32)
    plain = crop_hips(X, pred, 32, mirror_left=False)
    np.testing.assert_array_equal(small, plain)
    mirrored = fitted.crop(X, size=32)
    np.testing.assert_array_equal(mirrored[1::2], plain[1::2, :, ::-1])  # L mirrored
    np.testing.assert_array_equal(mirrored[0::2], plain[0::2])  # R as it is
    floats = fitted.crop(X.astype(np.float32) / 255, size=32)
    assert np.abs(floats.astype(int) - mirrored).max() <= 1


def test_other_sizes_are_letterboxed_and_boxes_come_back_in_their_pixels(fitted, split):
    _, (X, _) = split
    big = np.repeat(np.repeat(X[:4], 2, axis=1), 2, axis=2)  # 256 px: the same radiographs
    small, large = fitted.predict(X[:4]), fitted.predict(big)
    np.testing.assert_allclose(large[COLS].to_numpy() / 2, small[COLS].to_numpy(), atol=1.5)
    # a wide radiograph is padded to a square (centred, black) before resizing: its boxes
    # are those of the padded square, less the padding
    wide = np.zeros((4, 96, 128), np.uint8)
    wide[:, :, :] = X[:4, 16:112]
    square = np.zeros((4, 128, 128), np.uint8)
    square[:, 16:112] = wide
    got = fitted.predict(wide)[COLS].to_numpy()
    want = fitted.predict(square)[COLS].to_numpy() - [0, 16, 0, 16]
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_image_size_none_keeps_the_fit_size(split):
    (X, boxes), _ = split
    X, boxes = X[:8], boxes[boxes.image_index < 8]
    model = _model(image_size=None, width=8).fit(X, boxes)
    assert model.image_size_ == 128
    assert len(model.predict(X[:2])) == 4
    with pytest.raises(ValueError, match="fitted on 128 x 128 with image_size=None"):
        model.predict(X[:2, :96, :96])
    with pytest.raises(ValueError, match="needs square radiographs"):
        _model(image_size=None).fit(X[:, :, :120], boxes)


def test_deterministic_on_cpu_pickle_and_clone(fitted, split):
    (X, boxes), _ = split
    X, boxes = X[:12], boxes[boxes.image_index < 12]
    a = _model(width=16).fit(X, boxes)
    b = _model(width=16).fit(X, boxes)
    pd.testing.assert_frame_equal(a.predict(X[:4]), b.predict(X[:4]))
    other = _model(width=16, random_state=1).fit(X, boxes)
    assert not np.allclose(other.predict(X[:4])[COLS], a.predict(X[:4])[COLS])
    again = pickle.loads(pickle.dumps(fitted))
    pd.testing.assert_frame_equal(again.predict(X[:4]), fitted.predict(X[:4]))
    c = clone(fitted)
    assert not hasattr(c, "module_") and c.get_params() == fitted.get_params()


def _boxes(n=2):
    return pd.DataFrame(
        {
            "image_index": np.repeat(np.arange(n), 2),
            "side": ["R", "L"] * n,
            "x0": [10.0, 70.0] * n,
            "y0": [40.0] * 2 * n,
            "x1": [50.0, 110.0] * n,
            "y1": [80.0] * 2 * n,
        }
    )


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda b: b.iloc[:0], "boxes is empty"),
        (lambda b: b.drop(columns="side"), r"missing column\(s\) \['side'\]"),
        (lambda b: b.iloc[[0, 1, 2]], "image 1 has no box for side 'L'"),
        (lambda b: b.assign(side=["R", "R", "R", "L"]), "image 0 has 2 boxes for side 'R'"),
        (lambda b: b.assign(side=["R", "X", "R", "L"]), "side must be 'R' or 'L'"),
        (lambda b: b.assign(image_index=[0, 0, 1, 5]), "image_index 5 is not a row of X"),
        (lambda b: b.assign(x1=[50.0, 130.0, 50.0, 110.0]), "'L' box of image 0 lies outside"),
        (lambda b: b.assign(y0=[40.0, 40.0, -3.0, 40.0]), "'R' box of image 1 lies outside"),
        (lambda b: b.assign(x1=[5.0, 110.0, 50.0, 110.0]), "'R' box of image 0 is empty"),
        (lambda b: b.assign(y1=[80.0, np.nan, 80.0, 80.0]), "NaN or infinite"),
    ],
)
def test_bad_boxes_are_named(edit, match):
    X = np.zeros((2, 128, 128), np.uint8)
    with pytest.raises(ValueError, match=match):
        _model().fit(X, edit(_boxes()))


def test_bad_inputs_are_named():
    X = np.zeros((2, 128, 128), np.uint8)
    with pytest.raises(TypeError, match="boxes must be a DataFrame"):
        _model().fit(X, _boxes().to_numpy())
    with pytest.raises(ValueError, match=r"shape \(n, H, W\)"):
        _model().fit(X[:, None], _boxes())
    with pytest.raises(TypeError, match="as an array"):
        _model().fit(["a.png", "b.png"], _boxes())
    with pytest.raises(ValueError, match="at least 2 radiographs"):
        _model().fit(X[:1], _boxes(1))
    with pytest.raises(ValueError, match="'epochs' parameter"):
        _model(epochs=0).fit(X, _boxes())
    with pytest.raises(ValueError, match="no feature maps at strides 4, 8 and 16"):
        _model(backbone="vit_tiny_patch16_224").fit(X, _boxes())


def test_check_hip_boxes_orders_right_then_left():
    b = _boxes().iloc[[3, 0, 2, 1]]
    out = check_hip_boxes(b, 2, 128, 128)
    assert out.shape == (2, 2, 4)
    np.testing.assert_array_equal(out[:, 0, 0], [10.0, 10.0])
    np.testing.assert_array_equal(out[:, 1, 0], [70.0, 70.0])
