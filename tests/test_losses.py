"""The adaptive triplet loss: its definition, its gradient, and the regressors' option."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.utils.estimator_checks import parametrize_with_checks

from skddh import FineTuningRegressor, MeasurementRegressor
from skddh.models import adaptive_triplet_loss


def _brute(e, y, margin=0.5):
    """The docstring's definition, one triplet at a time."""
    z = torch.nn.functional.normalize(e, dim=1)
    y = y.reshape(len(y), -1)
    total, count = 0.0, 0
    for a, p, n in itertools.product(range(len(e)), repeat=3):
        if a in (p, n):
            continue
        t_ap, t_an = (y[a] - y[p]).norm(), (y[a] - y[n]).norm()
        if t_an > t_ap:
            d = (z[a] - z[p]).norm() - (z[a] - z[n]).norm() + margin * (t_an - t_ap)
            total += max(0.0, float(d))
            count += 1
    return total / count


@pytest.mark.parametrize("k", [1, 2])
def test_equals_its_definition_triplet_by_triplet(k):
    g = torch.Generator().manual_seed(k)
    e, y = torch.randn(9, 4, generator=g), torch.randn(9, k, generator=g)
    assert float(adaptive_triplet_loss(e, y, margin=0.3)) == pytest.approx(_brute(e, y, 0.3))


def test_anchor_chunks_do_not_change_the_value():
    """280^3 triplets exceed one 2^24-entry chunk; the chunked sum equals the whole one."""
    g = torch.Generator().manual_seed(0)
    e, y = torch.randn(280, 8, generator=g), torch.randn(280, generator=g)
    z = torch.nn.functional.normalize(e, dim=1)
    d, t = torch.cdist(z, z), torch.cdist(y[:, None], y[:, None])
    gap = t[:, None, :] - t[:, :, None]
    off = ~torch.eye(280, dtype=torch.bool)
    valid = (gap > 0) & off[:, :, None] & off[:, None, :]
    whole = (torch.relu(d[:, :, None] - d[:, None, :] + 0.5 * gap) * valid).sum() / valid.sum()
    assert float(adaptive_triplet_loss(e, y)) == pytest.approx(float(whole), rel=1e-4)


def test_rewards_embeddings_ordered_like_targets():
    y = torch.linspace(0, 1, 12)
    angle = y * torch.pi / 2
    ordered = torch.stack([angle.cos(), angle.sin()], 1)
    shuffled = ordered[torch.randperm(12, generator=torch.Generator().manual_seed(0))]
    assert adaptive_triplet_loss(ordered, y, margin=0.1) < adaptive_triplet_loss(shuffled, y)
    # the margin grows with the target gap: a larger margin costs more on the same batch
    assert adaptive_triplet_loss(ordered, y, margin=2.0) > adaptive_triplet_loss(ordered, y)


def test_gradient_is_finite_with_duplicate_embeddings_and_ties():
    e = torch.randn(6, 3)
    e[1] = e[0]
    e.requires_grad_(True)
    y = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    adaptive_triplet_loss(e, y).backward()
    assert torch.isfinite(e.grad).all()
    # all targets equal: no ordered triplet, a zero loss that still backpropagates
    assert float(adaptive_triplet_loss(e.detach(), torch.zeros(6))) == 0.0


_TRIPLET_HEAD = MeasurementRegressor(
    hidden=32, epochs=60, triplet_weight=0.5, device="cpu", random_state=0
)
# the head's full check suite runs in test_heads.py; the option changes only the loss, so the
# checks that exercise fitting, refitting, pickling and dtypes run again with it on
_FIT_CHECKS = {
    "check_regressors_train",
    "check_fit_idempotent",
    "check_estimators_pickle",
    "check_regressors_int",
}


@parametrize_with_checks([_TRIPLET_HEAD])
def test_head_with_triplet_loss_is_sklearn_compatible(estimator, check):
    name = getattr(check, "func", check).__name__
    if name not in _FIT_CHECKS:
        pytest.skip("run in test_heads.py without the option")
    check(estimator)


def _hidden(head, X):
    m = head.module_
    xt = torch.from_numpy((X - head.x_mean_) / head.x_scale_)
    with torch.inference_mode():
        return m[1](m[0](xt)).numpy()


def test_triplet_option_orders_the_hidden_layer_by_target():
    """The option does what it says: hidden distances follow target distances more closely.

    The control is the same head with ``triplet_weight=0``.
    """
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 16)).astype(np.float32)
    y = pd.Series(2 * X[:, 0] + np.sin(3 * X[:, 1]) + rng.normal(0, 0.3, 300), name="bmd")
    iu = np.triu_indices(len(X), 1)
    target_gap = np.abs(y.to_numpy()[:, None] - y.to_numpy()[None, :])[iu]
    rho = {}
    for w in (0.0, 2.0):
        head = MeasurementRegressor(
            hidden=32, epochs=80, triplet_weight=w, device="cpu", random_state=0
        ).fit(X, y)
        h = _hidden(head, X)
        h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
        d = np.linalg.norm(h[:, None] - h[None], axis=2)[iu]
        rho[w] = spearmanr(d, target_gap).statistic
        assert np.isfinite(head.predict(X)).all()
    assert rho[2.0] > rho[0.0] + 0.05, rho


def test_fine_tuning_takes_the_triplet_option_and_defaults_to_none():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (16, 32, 32), dtype=np.uint8)
    y = pd.Series(images.mean((1, 2)) / 4, name="bmd")
    kw = dict(image_size=32, epochs=1, batch_size=8, device="cpu", random_state=0)
    plain = FineTuningRegressor(**kw).fit(images, y)
    zero = FineTuningRegressor(triplet_weight=0.0, **kw).fit(images, y)
    np.testing.assert_array_equal(plain.predict(images), zero.predict(images))
    tri = FineTuningRegressor(triplet_weight=1.0, **kw).fit(images, y)
    assert np.isfinite(tri.history_["loss"]).all()
    assert not np.array_equal(tri.predict(images), plain.predict(images))


def test_bad_triplet_parameters_are_named():
    X, y = np.zeros((4, 2), np.float32), np.arange(4.0)
    with pytest.raises(ValueError, match="triplet_weight"):
        MeasurementRegressor(triplet_weight=-1).fit(X, y)
    with pytest.raises(ValueError, match="triplet_margin"):
        MeasurementRegressor(triplet_margin=-0.1).fit(X, y)
