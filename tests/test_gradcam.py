"""Tests of skddh.inspection.grad_cam and skddh.plotting.GradCAMDisplay."""

import copy

import matplotlib
import numpy as np
import pandas as pd
import pytest
import timm
from torch import nn

from skddh.inspection import grad_cam
from skddh.inspection._gradcam import default_target_layer
from skddh.models import MorphologyClassifier
from skddh.plotting import GradCAMDisplay

matplotlib.use("Agg")


def shapes(n, size, seed=0):
    """Label ``blob``: a bright disc upper-left; ``bar``: a bar lower-right; ``sex``: noise.

    As in test_morphology_classifier.py (test files do not import each other here).
    """
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
def trained():
    """resnet10t on 64 px drawn shapes: label ``blob`` upper-left, ``bar`` lower-right."""
    images, y, blob, bar = shapes(160, 64, seed=10)
    model = MorphologyClassifier(
        backbone="resnet10t",
        auxiliary=("sex",),
        epochs=4,
        lr=1e-3,
        batch_size=16,
        device="cpu",
        random_state=0,
    ).fit(images[:128], y[:128])
    return model, images[128:], y[128:].reset_index(drop=True), blob[128:], bar[128:]


def test_maps_concentrate_on_each_labels_own_shape(trained):
    model, images, y, blob, bar = trained
    pos = np.flatnonzero((y.blob == 1) & (y.bar == 1))[:12]  # both shapes drawn
    assert len(pos) >= 4
    # the default layer: layer4, a 2x2 map at 64 px (coarse, but enough for quadrants)
    m_blob = grad_cam(model, images[pos], label="blob")
    m_bar = grad_cam(model, images[pos], label="bar")
    assert m_blob.shape == (len(pos), 64, 64) and m_blob.dtype == np.float32
    assert m_blob.min() >= 0 and m_blob.max() <= 1
    in_blob, in_bar = blob[pos], bar[pos]
    background = ~(in_blob | in_bar)
    assert m_blob[in_blob].mean() > m_blob[background].mean()
    assert m_blob[in_blob].mean() > m_blob[in_bar].mean()  # not the argmax output's map
    assert m_bar[in_bar].mean() > m_bar[in_blob].mean()  # the control label looks elsewhere
    layer3 = grad_cam(model, images[pos], label="blob", target_layer="0.layer3")  # 4x4
    assert layer3[in_blob].mean() > layer3[in_bar].mean()
    aux = grad_cam(model, images[pos[:2]], label="sex", target_layer="0.layer3")
    np.testing.assert_array_equal(
        aux, grad_cam(model, images[pos[:2]], label=2, target_layer="0.layer3")
    )


def test_default_layer_is_the_last_stage_not_the_head():
    conv = nn.Sequential(
        timm.create_model("convnext_atto", pretrained=False, num_classes=0), nn.Linear(320, 2)
    )
    assert default_target_layer(conv) is conv[0].stages[3]
    res = nn.Sequential(
        timm.create_model("resnet10t", pretrained=False, num_classes=0), nn.Linear(512, 2)
    )
    assert default_target_layer(res) is res[0].layer4
    with pytest.raises(ValueError, match="pass target_layer"):
        default_target_layer(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 2)))


def test_module_state_is_restored_and_no_hooks_are_left(trained):
    model, images = trained[0], trained[1]
    module = model.module_
    module[0].layer3.train()  # an odd state, to see it come back as it was
    module[1].weight.requires_grad_(True)
    modes = [m.training for m in module.modules()]
    grads = [p.requires_grad for p in module.parameters()]
    grad_cam(model, images[:2], label="blob")
    assert [m.training for m in module.modules()] == modes
    assert [p.requires_grad for p in module.parameters()] == grads
    for m in module.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(p.grad is None for p in module.parameters())
    module.eval().requires_grad_(False)


class _Tuple(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x.mean()


def test_networks_returning_tuples(trained):
    model, images = trained[0], trained[1]
    wrapped = copy.copy(model)
    wrapped.module_ = _Tuple(model.module_)
    layer = model.module_[0].layer3
    got = grad_cam(wrapped, images[:3], label="bar", target_layer=layer)
    np.testing.assert_allclose(
        got, grad_cam(model, images[:3], label="bar", target_layer=layer), atol=1e-6
    )


def test_a_1x1_map_warns_and_inputs_of_other_shapes_come_back_at_their_size():
    images, y, _, _ = shapes(8, 32, seed=11)
    small = MorphologyClassifier(
        backbone="resnet10t", image_size=32, epochs=1, batch_size=8, device="cpu", random_state=0
    ).fit(images, y[["blob"]])
    with pytest.warns(UserWarning, match="1x1 at image_size=32"):
        grad_cam(small, images[:1], label="blob")
    wide = np.zeros((2, 24, 32), np.uint8)
    maps = grad_cam(small, wide + images[:2, 4:28], label="blob", target_layer="0.layer2")
    assert maps.shape == (2, 24, 32)


def test_unknown_labels_and_unfitted_models_are_named(trained):
    model, images = trained[0], trained[1]
    with pytest.raises(ValueError, match=r"label 'cam' is not an output.*'blob', 'bar'"):
        grad_cam(model, images[:1], label="cam")
    with pytest.raises(ValueError, match="out of range for 3 outputs"):
        grad_cam(model, images[:1], label=3)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        grad_cam(MorphologyClassifier(), images[:1], label=0)


def test_display_overlays_each_map_on_its_image(trained):
    import matplotlib.pyplot as plt

    model, images = trained[0], trained[1]
    disp = GradCAMDisplay.from_estimator(model, images[:3], label="bar", target_layer="0.layer3")
    assert disp.axes_.shape == (3,) and disp.maps.shape == (3, 64, 64)
    assert len(disp.overlay_artists_) == 3 and disp.ax_.get_title().startswith("bar p=")
    np.testing.assert_allclose(disp.probabilities, model.predict_proba(images[:3])[:, 1])
    _, ax = plt.subplots()
    one = GradCAMDisplay.from_estimator(model, images[:1], label=2, ax=ax, alpha=0.3)
    assert one.ax_ is ax and one.label == "sex" and one.figure_ is ax.figure
    with pytest.raises(ValueError, match="need 2 Axes"):
        GradCAMDisplay(images=images[:2], maps=disp.maps[:2]).plot(ax=ax)
    with pytest.raises(ValueError, match="differ in shape"):
        GradCAMDisplay(images=images[:2], maps=disp.maps[:2, :10]).plot()
    plt.close("all")
