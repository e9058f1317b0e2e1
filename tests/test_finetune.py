"""Tests of skddh.models._finetune: FineTuningRegressor (CPU, tiny images, few epochs)."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from _api_checks import DATA_FREE_CHECKS
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV, GroupKFold

from skddh import FineTuningRegressor, OneSidedConformalRegressor, SimSiamFeaturizer
from skddh.models._augment import (
    MeasureAugmentParams,
    augment_measurement,
    measurement_views,
)


def _model(**kw):
    params = dict(
        backbone="resnet18", image_size=32, epochs=2, batch_size=16, device="cpu", random_state=0
    )
    params.update(kw)
    return FineTuningRegressor(**params)


@pytest.fixture(scope="module")
def data():
    """Images whose target is in the pixels: a disc's brightness, invariant to the augmentation."""
    rng = np.random.default_rng(0)
    n = 96
    yy, xx = np.mgrid[:32, :32]
    level = rng.uniform(60, 240, n)
    cx, cy, r = rng.uniform(12, 20, n), rng.uniform(12, 20, n), rng.uniform(5, 8, n)
    disc = (xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2
    images = np.where(disc < (r**2)[:, None, None], level[:, None, None], 20.0)
    images = (images + rng.normal(0, 5, images.shape)).clip(0, 255).astype(np.uint8)
    y = pd.DataFrame({"level": level / 4, "grade": np.where(level > 150, 2, 1)})
    groups = np.repeat(np.arange(n // 3), 3)
    return images, y, groups


@pytest.fixture(scope="module")
def encoder(data):
    images = data[0]
    return SimSiamFeaturizer(
        image_size=32,
        epochs=1,
        batch_size=32,
        projection_dim=32,
        prediction_dim=16,
        device="cpu",
        random_state=0,
    ).fit(images)


# Images in, like SimSiamFeaturizer: the common checks feed 2-D tables and would be skipped;
# the data-free API checks run as they are and the data-dependent contract is tested below.
@pytest.mark.parametrize("check", DATA_FREE_CHECKS)
def test_sklearn_api_checks_that_need_no_tabular_data(check):
    check("FineTuningRegressor", _model())


def test_learns_what_is_in_the_pixels_and_beats_the_median(data):
    images, y, _ = data
    tr, te = slice(0, 72), slice(72, None)
    model = _model(  # brightness is the label here: only the geometry is augmented
        epochs=12, brightness=0, contrast=0, gamma=0, classification_targets=("grade",)
    )
    model.fit(images[tr], y[tr])
    pred = model.predict(images[te])
    mae = np.abs(pred[:, 0] - y.level[te]).mean()
    median = np.abs(np.median(y.level[tr]) - y.level[te]).mean()
    assert mae < 0.6 * median, (mae, median)
    assert set(np.unique(pred[:, 1])) <= {1, 2}
    proba = model.predict_proba(images[te])
    assert proba.shape == (24, 2)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    assert list(model.target_names_) == ["level", "grade"]
    assert model.history_.shape[0] == 12 and model.n_steps_ == 12 * 5
    assert model.initialised_from_ == "scratch" and model.precision_ == "fp32"


def test_starts_from_the_simsiam_encoder_and_leaves_it_alone(data, encoder):
    images, y, _ = data
    before = {k: v.clone() for k, v in encoder.encoder_.state_dict().items()}
    frozen_encoder = _model(encoder=encoder, encoder_lr=0.0, ema_decay=None).fit(images, y.level)
    assert frozen_encoder.initialised_from_ == "simsiam"
    assert frozen_encoder.image_size_ == encoder.image_size
    after = frozen_encoder.module_[0].state_dict()
    for k, v in before.items():  # encoder_lr=0: copied and kept, the head trained alone
        torch.testing.assert_close(after[k], v)
        torch.testing.assert_close(encoder.encoder_.state_dict()[k], v)  # never modified
    tuned = _model(encoder=encoder).fit(images, y.level)
    w = "conv1.weight"
    assert not torch.equal(tuned.module_[0].state_dict()[w], before[w])
    torch.testing.assert_close(encoder.encoder_.state_dict()[w], before[w])
    np.testing.assert_allclose(  # features as the featurizer computes them
        encoder.transform(images[:4]),
        frozen_encoder.module_[0](torch.from_numpy(_norm(images[:4]))).detach().numpy(),
        atol=1e-5,
    )


def _norm(images):
    return ((images[:, None].astype(np.float32) / 255.0) - 0.5) / 0.25


def test_encoder_must_be_a_fitted_featurizer(data, encoder):
    images, y, _ = data
    with pytest.raises(ValueError, match="unfitted SimSiamFeaturizer.*FrozenEstimator"):
        _model(encoder=SimSiamFeaturizer()).fit(images, y)
    with pytest.raises(TypeError, match="encoder must be None or a fitted SimSiamFeaturizer"):
        _model(encoder=FrozenEstimator(pd.DataFrame)).fit(images, y)
    rgb = np.repeat(images[:, None], 3, axis=1)
    with pytest.raises(ValueError, match="3 channel"):
        _model(encoder=encoder).fit(rgb, y)


def test_in_gridsearch_with_a_frozen_encoder_and_in_the_conformal_wrapper(data, encoder):
    images, y, groups = data
    search = GridSearchCV(
        _model(encoder=FrozenEstimator(encoder), epochs=1),
        {"encoder_lr": [0.0, 1e-4]},
        cv=GroupKFold(2),
        scoring="neg_mean_absolute_error",
    )
    search.fit(images, y.level, groups=groups)
    assert search.best_estimator_.initialised_from_ == "simsiam"
    conf = OneSidedConformalRegressor(
        _model(epochs=1), delta=0.2, calibration_size=0.4, random_state=0
    ).fit(images, y[["level"]], groups=groups)
    lb = conf.predict_lower(images[:5])
    assert lb.shape == (5, 1) and np.isfinite(lb).all()
    assert (lb[:, 0] <= conf.predict(images[:5])[:, 0] + 1e-9).all()


def test_deterministic_on_cpu_pickle_and_clone(data):
    images, y, _ = data
    a = _model(epochs=1).fit(images, y.level)
    b = _model(epochs=1).fit(images, y.level)
    np.testing.assert_array_equal(a.predict(images[:8]), b.predict(images[:8]))
    again = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(again.predict(images[:8]), a.predict(images[:8]))
    assert a.predict(images[:8]).shape == (8,)
    c = clone(a)
    assert not hasattr(c, "module_") and c.get_params() == a.get_params()


def test_test_time_views_average_fixed_transforms_of_each_image(data):
    """Averaged views: one view is the plain prediction, and a prediction depends on its image
    only (not on the batch, its position or the call), as conformal calibration needs."""
    images, y, _ = data
    plain = _model(epochs=1).fit(images, y.level)
    views = pickle.loads(pickle.dumps(plain)).set_params(test_time_views=5)  # same weights
    full = views.predict(images)
    np.testing.assert_allclose(views.predict(images[::-1][:7]), full[::-1][:7], atol=1e-5)
    np.testing.assert_array_equal(views.predict(images), full)  # every call the same
    assert np.abs(full - plain.predict(images)).max() > 1e-4  # the other views count
    x = torch.rand(3, 1, 32, 32)
    v = list(measurement_views(x, MeasureAugmentParams(), 4))
    assert len(v) == 4 and torch.equal(v[0], x) and not torch.equal(v[1], x)
    fitted = _model(epochs=1, test_time_views=3).fit(images, y.level)
    w = "conv1.weight"  # training is unchanged by the views
    torch.testing.assert_close(fitted.module_[0].state_dict()[w], plain.module_[0].state_dict()[w])


def test_not_square_arrays_are_letterboxed_like_files(data):
    images, y, _ = data
    model = _model(epochs=1).fit(images, y.level)
    wide = np.zeros((4, 24, 32), np.uint8)
    wide[:] = images[:4, 4:28, :]
    boxed = np.zeros((4, 32, 32), np.uint8)
    boxed[:, 4:28, :] = wide  # centred black padding, as load_image_table letterboxes files
    np.testing.assert_allclose(model.predict(wide), model.predict(boxed), atol=1e-4)


def test_label_preserving_augmentation_keeps_circles_circles():
    """Rotation, isotropic zoom and shift: a similarity transform keeps every angle."""
    yy, xx = np.mgrid[:64, :64]
    disc = (((xx - 32) ** 2 + (yy - 32) ** 2) < 12**2).astype(np.float32)
    x = torch.from_numpy(disc)[None, None].repeat(8, 1, 1, 1)
    p = MeasureAugmentParams(brightness=0, contrast=0, gamma=0, noise=0)
    v = augment_measurement(x, p, torch.Generator().manual_seed(0)).numpy()[:, 0]
    areas = []
    for img in v:
        w = img / img.sum()
        my, mx = (w * yy).sum(), (w * xx).sum()
        cov = np.cov(np.stack([xx.ravel() - mx, yy.ravel() - my]), aweights=w.ravel())
        ev = np.linalg.eigvalsh(cov)
        assert ev[0] / ev[1] > 0.97  # still round: no shear, no aspect change
        areas.append(img.sum())
    areas = np.asarray(areas) / disc.sum()
    assert areas.min() >= 0.85**2 * 0.95 and areas.max() <= 1.15**2 * 1.05
    assert len(np.unique(areas.round(3))) == 8  # a zoom per sample


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(scale=(1.2, 0.8)), "scale must satisfy"),
        (dict(scale=("big", 1)), "scale must be a pair"),
        (dict(precision="fp8"), "'precision' parameter"),
        (dict(encoder_lr=-1.0), "'encoder_lr' parameter"),
    ],
)
def test_bad_parameters_are_named(data, params, match):
    images, y, _ = data
    with pytest.raises(ValueError, match=match):
        _model(**params).fit(images[:8], y.level[:8])


def test_bad_targets_are_named(data):
    images, y, _ = data
    bad = y.level.to_numpy().copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        _model().fit(images, bad)
    with pytest.raises(ValueError, match="X has 96 samples but y has 95"):
        _model().fit(images, y.level[:95])


def _with_unlabelled(y, rows):
    """``y`` with every target missing at ``rows``: those images are unlabelled."""
    out = y.copy()
    out.loc[rows, :] = np.nan
    return out


def test_mean_teacher_trains_on_labelled_rows_and_reads_the_unlabelled_images(data):
    images, y, _ = data
    lab = slice(0, 24)
    y_semi = _with_unlabelled(y[["level"]], range(24, 96))
    kw = dict(backbone="test_resnet", ema_decay=0.9)
    semi = _model(consistency_weight=1.0, unlabelled_batch_size=8, **kw).fit(images, y_semi)
    assert semi.n_steps_ == 2 * 2  # epochs pass over the 24 labelled images (batches of 16)
    np.testing.assert_allclose(semi.y_mean_, [y.level[lab].mean()])  # labelled rows only
    assert np.isfinite(semi.predict(images)).all() and semi.predict(images).shape == (96, 1)
    again = _model(consistency_weight=1.0, unlabelled_batch_size=8, **kw).fit(images, y_semi)
    np.testing.assert_array_equal(semi.predict(images), again.predict(images))
    plain = _model(**kw).fit(images[lab], y[["level"]][lab])
    w = "conv1.0.weight"  # the unlabelled images moved the weights
    assert not torch.equal(semi.module_[0].state_dict()[w], plain.module_[0].state_dict()[w])
    # With nothing unlabelled the fit is the plain one, weight for weight.
    none_missing = _model(consistency_weight=1.0, **kw).fit(images[lab], y[["level"]][lab])
    torch.testing.assert_close(
        none_missing.module_[0].state_dict()[w], plain.module_[0].state_dict()[w], rtol=0, atol=0
    )


def test_unlabelled_rows_are_named_and_checked(data):
    images, y, _ = data
    semi = y[["level"]].assign(other=y.level * 2)
    semi.loc[40:, :] = np.nan
    semi.loc[30, "other"] = np.nan  # only one target missing: an error, not an unlabelled row
    with pytest.raises(ValueError, match="row 30, target 'other', where other targets"):
        _model(consistency_weight=1.0, ema_decay=0.9).fit(images, semi)
    with pytest.raises(ValueError, match="consistency_weight > 0 needs ema_decay"):
        _model(consistency_weight=1.0).fit(images, y.level)
    few = _with_unlabelled(y[["level"]], range(1, 96))
    with pytest.raises(ValueError, match="at least 2 labelled images, got 1"):
        _model(consistency_weight=1.0, ema_decay=0.9).fit(images, few)
    with pytest.raises(ValueError, match="row 1, target 'level'"):  # no consistency: an error
        _model().fit(images, few)
    inf = _with_unlabelled(y[["level"]], range(0, 10))
    inf.loc[12, "level"] = np.inf  # reported at the caller's row, not the labelled subset's
    with pytest.raises(ValueError, match="row 12, target 'level'"):
        _model(consistency_weight=1.0, ema_decay=0.9).fit(images, inf)
    with pytest.raises(ValueError, match="'unlabelled_batch_size' parameter"):
        _model(unlabelled_batch_size=0).fit(images, y.level)
