"""Tests of skddh.featurize: SimSiamFeaturizer and its batched augmentation (CPU, tiny images)."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from _api_checks import DATA_FREE_CHECKS
from PIL import Image
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import Ridge
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline

from skddh import SimSiamFeaturizer
from skddh.models._augment import AugmentParams, augment


def _enc(**kw):
    params = dict(
        image_size=32,
        epochs=1,
        batch_size=16,
        projection_dim=32,
        prediction_dim=16,
        device="cpu",
        random_state=0,
    )
    params.update(kw)
    return SimSiamFeaturizer(**params)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (40, 36, 36), dtype=np.uint8)


@pytest.fixture(scope="module")
def fitted(images):
    return _enc().fit(images)


# The featurizer takes images, (n, H, W) or (n, C, H, W): scikit-learn's common checks feed
# 2-D tables and skip an estimator whose tags say it takes no 2-D input. The data-free API
# checks apply as they are; the data-dependent ones are covered with images below.
@pytest.mark.parametrize("check", DATA_FREE_CHECKS)
def test_sklearn_api_checks_that_need_no_tabular_data(check):
    check("SimSiamFeaturizer", _enc())


def test_tags_declare_image_input_and_gpu_nondeterminism():
    tags = _enc().__sklearn_tags__()
    assert tags.input_tags.three_d_array and not tags.input_tags.two_d_array
    assert not tags.non_deterministic
    assert SimSiamFeaturizer(device="auto").__sklearn_tags__().non_deterministic


def test_shapes_history_and_names(fitted, images):
    f = fitted.transform(images[:5])
    assert f.shape == (5, 512) and f.dtype == np.float32
    assert fitted.n_features_out_ == 512
    assert list(fitted.history_.columns) == ["loss", "images_per_s", "batch_size", "seconds"]
    assert fitted.get_feature_names_out()[[0, -1]].tolist() == ["simsiam0", "simsiam511"]
    frame = clone(fitted).set_params(epochs=1).fit(images).set_output(transform="pandas")
    out = frame.transform(images[:3])
    assert isinstance(out, pd.DataFrame) and out.columns[0] == "simsiam0"
    # Not in training mode, and frozen.
    assert not fitted.encoder_.training
    assert not any(p.requires_grad for p in fitted.encoder_.parameters())


def test_same_random_state_same_features_on_cpu(fitted, images):
    again = _enc().fit(images)
    np.testing.assert_array_equal(again.transform(images[:8]), fitted.transform(images[:8]))
    other = _enc(random_state=1).fit(images)
    assert not np.allclose(other.transform(images[:8]), fitted.transform(images[:8]))


def test_loss_falls_on_the_synthetic_registry(small_cohort):
    reg = small_cohort.registry_us  # lazy, 200 images of 32 px
    enc = _enc(epochs=4, batch_size=32, lr=0.5).fit(reg)
    loss = enc.history_["loss"].to_numpy()
    # Negative cosine similarity: -1 is perfect agreement between the two views.
    assert loss[-1] < loss[0] - 0.03 and loss[-1] < loss[1], loss


def test_frozen_in_pipeline_cross_val_and_pickle(fitted, images):
    y = images.reshape(len(images), -1).mean(1)
    pipe = make_pipeline(FrozenEstimator(fitted), Ridge(alpha=10.0))
    scores = cross_val_score(pipe, images, y, cv=3)
    assert scores.shape == (3,)
    # FrozenEstimator: cross-validation did not refit the encoder.
    np.testing.assert_array_equal(
        fitted.transform(images[:2]), _enc().fit(images).transform(images[:2])
    )
    blob = pickle.dumps(fitted)
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.transform(images[:4]), fitted.transform(images[:4]))


def test_gpu_state_pickles_to_cpu(fitted, monkeypatch):
    """A model whose encoder sits on another device pickles a CPU copy."""
    from skddh.models import _torch as T

    moved = []
    orig = T.cpu_state

    def spy(module):
        moved.append(module)
        return orig(module)

    monkeypatch.setattr(T, "cpu_state", spy)
    state = fitted.__getstate__()
    assert moved and all(p.device.type == "cpu" for p in state["encoder_"].parameters())


def test_channels_float_and_path_inputs(tmp_path, images):
    rgb = np.repeat(images[:, None], 3, axis=1).astype(np.float32) / 255.0
    enc = _enc().fit(rgb)
    assert enc.n_channels_in_ == 3
    assert enc.transform(rgb[:2]).shape == (2, 512)
    with pytest.raises(ValueError, match="3 channel"):
        _enc().fit(images).transform(rgb[:2])
    paths = []
    for i in range(20):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(images[i, :32, :32]).save(p)  # image_size: no resampling either way
        paths.append(str(p))
    enc = _enc().fit(paths)
    same = enc.transform(np.ascontiguousarray(images[:3, :32, :32]))
    np.testing.assert_allclose(enc.transform(paths[:3]), same, atol=1e-4)


def test_convnext_backbone():
    imgs = np.random.default_rng(1).integers(0, 256, (8, 32, 32), dtype=np.uint8)
    enc = _enc(backbone="convnext_tiny", batch_size=4).fit(imgs)
    assert enc.transform(imgs[:2]).shape == (2, 768)


@pytest.mark.parametrize(
    "X, err, match",
    [
        (np.zeros((4, 32)), ValueError, r"\(n, H, W\) or \(n, C, H, W\), got 2-D"),
        (np.zeros((0, 32, 32), np.uint8), ValueError, "empty"),
        (np.full((4, 32, 32), np.nan, np.float32), ValueError, "NaN or infinite pixels in image 0"),
        (["not/a/file.png", "x.png"], ValueError, r"X\[0\] = 'not/a/file.png' is not a file"),
        (np.zeros((4, 32, 32), np.int64), TypeError, "uint8, uint16 or float"),
        (np.zeros((1, 32, 32), np.uint8), ValueError, "at least 2 images"),
    ],
)
def test_bad_input_is_named(X, err, match):
    with pytest.raises(err, match=match):
        _enc().fit(X)


def test_bad_parameters_are_named(images):
    with pytest.raises(ValueError, match="crop_scale"):
        _enc(crop_scale=(0.9, 0.2)).fit(images)
    with pytest.raises(ValueError, match="'precision' parameter"):
        _enc(precision="fp8").fit(images)


def test_augmentation_draws_per_sample():
    x = torch.rand(1, 1, 32, 32).repeat(6, 1, 1, 1)  # six copies of one image
    g = torch.Generator().manual_seed(0)
    v = augment(x, 24, AugmentParams(), g)
    assert v.shape == (6, 1, 24, 24)
    assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    flat = v.reshape(6, -1)
    # Every copy got its own crop, rotation, intensity and noise.
    assert len({round(float(t), 6) for t in flat.mean(1)}) == 6
    g2 = torch.Generator().manual_seed(0)
    torch.testing.assert_close(augment(x, 24, AugmentParams(), g2), v)


def test_out_of_memory_halves_the_batch_and_goes_on(images, monkeypatch):
    original = SimSiamFeaturizer._make_step
    calls = {"n": 0}

    def flaky_make_step(self, *args):
        step = original(self, *args)

        def step_that_fails_once(x, gen):
            calls["n"] += 1
            if calls["n"] == 1:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return step(x, gen)

        return step_that_fails_once

    monkeypatch.setattr(SimSiamFeaturizer, "_make_step", flaky_make_step)
    with pytest.warns(RuntimeWarning, match="batch_size halved to 8"):
        enc = _enc(batch_size=16).fit(images)
    assert enc.history_["batch_size"].iloc[-1] == 8
    assert enc.transform(images[:2]).shape == (2, 512)


def test_schedule_counts_the_steps_the_loop_takes(images):
    from skddh.models._batches import steps_per_epoch

    enc = _enc(epochs=2, batch_size=16).fit(images[:33])  # 33 = 16 + 16 + 1: two steps
    assert enc.n_steps_ == 2 * steps_per_epoch(33, 16) == 4
    enc = _enc(epochs=2, batch_size=16).fit(images[:34])  # the last 2 images are a step
    assert enc.n_steps_ == 2 * 3


def test_precision_is_fixed_at_fit_and_features_stay_float32(images, monkeypatch):
    """A model fitted in bf16 on a GPU ("auto") must give its float32 features on a CPU."""
    from skddh.models import _torch as T

    enc = _enc().fit(images)
    assert enc.precision_ == "fp32"
    expected = enc.transform(images[:4])
    # Pretend "auto" resolves to bf16 here (as on CUDA): transform must not autocast.
    monkeypatch.setattr(T, "resolve_dtype", lambda precision, device: torch.bfloat16)
    np.testing.assert_array_equal(enc.transform(images[:4]), expected)
    explicit = enc.set_params(precision="bf16").transform(images[:4])
    assert not np.array_equal(explicit, expected)  # asked for: bf16 autocast, visibly


def test_arrays_that_are_not_square_are_letterboxed_not_stretched(fitted, images):
    wide = np.ascontiguousarray(images[:4, 6:30, :32])  # 24 x 32
    boxed = np.zeros((4, 32, 32), np.uint8)
    boxed[:, 4:28, :] = wide  # centred black bands, as files are letterboxed
    np.testing.assert_allclose(fitted.transform(wide), fitted.transform(boxed), atol=1e-5)


def test_angle_keeping_augmentation_is_a_parameter(images):
    p = _enc(crop_ratio=(1.0, 1.0), flip_p=0.0)._augment_params()
    assert p.crop_ratio == (1.0, 1.0) and p.flip_p == 0.0
    x = torch.rand(4, 1, 32, 32)
    ident = AugmentParams(
        crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, rotation=0.0,
        brightness=0.0, contrast=0.0, gamma=0.0, blur_p=0.0, speckle_p=0.0,
    )  # fmt: skip
    torch.testing.assert_close(augment(x, 32, ident, torch.Generator()), x, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="crop_ratio must satisfy"):
        _enc(crop_ratio=(2.0, 1.0)).fit(images)


def _failing_first_step(pollute, original=SimSiamFeaturizer._make_step):
    """A ``_make_step`` whose first step runs out of memory, after a forward pass when
    ``pollute`` (batch norm's running statistics have moved), else before anything."""

    def make_step(self, model, *args):
        step = original(self, model, *args)
        calls = {"n": 0}

        def step_that_fails_once(x, gen):
            calls["n"] += 1
            if calls["n"] == 1:
                if pollute:
                    with torch.no_grad():
                        model["encoder"](x * 4 + 1)
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return step(x, gen)

        return step_that_fails_once

    return make_step


def test_out_of_memory_restores_batch_norm_statistics(images, monkeypatch):
    """A failed step's forward must not stay in the running statistics (issue 15)."""
    feats = []
    for pollute in (False, True):
        monkeypatch.setattr(SimSiamFeaturizer, "_make_step", _failing_first_step(pollute))
        with pytest.warns(RuntimeWarning, match="batch_size halved to 8"):
            enc = _enc(batch_size=16).fit(images[:24])
        feats.append(enc.transform(images[:4]))
    np.testing.assert_array_equal(feats[0], feats[1])


def test_out_of_memory_while_building_the_batch_is_caught(images, monkeypatch):
    from skddh.models import _batches as B

    original, calls = B.take, {"n": 0}

    def take(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(B, "take", take)
    with pytest.warns(RuntimeWarning, match="batch_size halved to 8"):
        enc = _enc(batch_size=16).fit(images[:24])
    assert enc.n_steps_ == 3  # 24 images at 8


def test_compile_keeps_one_shape_in_fit_and_transform(images, monkeypatch):
    """compile=True: no short last batch (it would compile again); the CPU test records the
    shapes the compiled functions see, torch.compile itself replaced by the identity."""
    shapes = []

    def record(fn, **kwargs):
        assert kwargs.get("dynamic") is False

        def call(x, *rest):
            shapes.append(tuple(x.shape))
            return fn(x, *rest)

        return call

    monkeypatch.setattr(torch, "compile", record)
    enc = _enc(batch_size=8, epochs=2, compile=True).fit(images[:20])  # 8 + 8 + (4 dropped)
    assert enc.n_steps_ == 2 * 2
    assert set(shapes) == {(8, 1, 32, 32)}  # each view of each step
    shapes.clear()
    got = enc.transform(images[:20])  # 8 + 8 + 4 padded to 8
    assert set(shapes) == {(8, 1, 32, 32)} and len(shapes) == 3
    expected = enc.set_params(compile=False).transform(images[:20])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
