"""Tests of skddh.policy._cache: content keys, torch weight digests, cached fits and searches.

Each claim of the module docstring has a test here.
"""

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn
import torch
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline

from skddh import (
    MeasurementRegressor,
    OneSidedConformalRegressor,
    SelectiveImagingPolicy,
    SimSiamFeaturizer,
    make_policy_scorer,
)
from skddh.policy import _cache, _policy
from skddh.policy._cache import content_key, dumps_fit, loads_fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _empty_lrus():
    """The in-process LRUs are global: each test starts as a fresh process would."""
    _cache.FITS.clear()
    _cache.PREDICTIONS.clear()
    yield
    _cache.FITS.clear()
    _cache.PREDICTIONS.clear()


@pytest.fixture
def fit_calls(monkeypatch):
    """Counts the regressor fits the policy really runs (cache misses)."""
    calls = []
    real = _policy._fit_bounds

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(_policy, "_fit_bounds", counting)
    return calls


def _hips(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = pd.DataFrame(
        {
            "alpha": 62 + 4 * X[:, 0] + rng.gumbel(0, 1.5, n),
            "beta": 55 - 3 * X[:, 0] + rng.normal(0, 2, n),
            "coverage": 55 + 5 * X[:, 1] + rng.normal(0, 2, n),
        }
    )
    return X, y, np.repeat(np.arange(n // 4), 4)


def _conformal(estimator=None, **kw):
    est = LinearRegression() if estimator is None else estimator
    return OneSidedConformalRegressor(est, random_state=0, **kw)


def _images(n=32, seed=0):
    """Random 32 px images, two per subject, with alpha and coverage to predict."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(n, 32, 32), dtype=np.uint8)
    y = pd.DataFrame({"alpha": 60 + rng.normal(0, 5, n), "coverage": 50 + rng.normal(0, 5, n)})
    return X, y, np.repeat(np.arange(n // 2), 2)


def _encoder(backbone="resnet18", random_state=0):
    X, _, _ = _images()
    return SimSiamFeaturizer(
        backbone,
        image_size=32,
        epochs=1,
        batch_size=16,
        projection_dim=64,
        prediction_dim=32,
        device="cpu",
        random_state=random_state,
    ).fit(X)


def _image_model(encoder):
    """The DESIGN.md pipeline: a frozen encoder and the head, calibrated by subject."""
    head = MeasurementRegressor(epochs=2, device="cpu", random_state=0)
    return _conformal(
        make_pipeline(FrozenEstimator(encoder), head), calibration_size=0.5, delta=0.2
    )


@pytest.fixture(scope="module")
def resnet18():
    """A fitted ResNet-18 SimSiam encoder (its pickle is about 45 MB)."""
    return _encoder()


# ---- keys ----------------------------------------------------------------------------------
def test_array_keys_see_dtype_shape_and_values_not_layout():
    a = np.zeros(4, np.float32)
    same_bytes = [a, np.zeros(2, np.float64), a.reshape(2, 2), a.astype(">f4"), a.view(np.int32)]
    assert len({content_key(x) for x in same_bytes}) == len(same_bytes)
    assert content_key(np.ones(4, np.float32)) != content_key(a)
    m = np.arange(12.0).reshape(3, 4)
    assert content_key(np.asfortranarray(m)) == content_key(m)
    assert content_key(m[:, ::2]) == content_key(m[:, ::2].copy())
    assert content_key(np.float64(1.0)) != content_key(1.0) != content_key(np.float32(1.0))
    # Object arrays hash their items (labels of any kind).
    assert content_key(np.array(["a", "b"], dtype=object)) != content_key(
        np.array(["b", "a"], dtype=object)
    )


def test_keys_delimit_their_parts_and_tell_types_apart():
    assert content_key("ab", "c") != content_key("a", "bc")
    assert content_key(["ab"], "c") != content_key(["ab", "c"])
    keys = [content_key(x) for x in ([1, 2], (1, 2), np.array([1, 2]), {1: 2}, 1, 1.0, True, "1")]
    assert len(set(keys)) == len(keys)
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})
    # Sets and other objects go to joblib's hasher (which sorts sets).
    assert content_key({"x", "y"}) == content_key({"y", "x"}) != content_key({"x"})
    # A container that holds itself does too.
    loop = [1]
    loop.append(loop)
    assert content_key(loop) == content_key(loop)


def test_dataframe_keys_see_labels_dtypes_and_values():
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]})
    assert content_key(df) == content_key(df.copy())
    variants = [
        df.rename(columns={"b": "c"}),
        df.astype({"a": float}),
        df.set_axis([5, 6]),
        df.assign(b=[0.5, 2.5]),
        df[["b", "a"]],
    ]
    keys = {content_key(v) for v in variants}
    assert len(keys) == len(variants) and content_key(df) not in keys


def test_paths_are_keyed_by_name_not_by_file_content(tmp_path):
    image = tmp_path / "hip.png"
    image.write_bytes(b"one")
    key = content_key([str(image)])
    image.write_bytes(b"two")
    assert content_key([str(image)]) == key


def test_a_frozen_estimator_is_keyed_by_its_content():
    X, y, _ = _hips()
    lr = LinearRegression().fit(X, y)
    model = _conformal(FrozenEstimator(lr))
    key = content_key(clone(model), X)
    assert content_key(clone(model), X) == key  # clone keeps the frozen object
    assert content_key(_conformal(FrozenEstimator(copy.deepcopy(lr))), X) == key
    lr.fit(X[::2], y[::2])  # refitted in place
    refit = content_key(clone(model), X)
    assert refit != key
    lr.coef_[0, 0] += 1.0  # an array edited in place
    assert content_key(clone(model), X) not in (key, refit)


def test_a_module_is_keyed_by_its_weights_and_digested_once_per_state(monkeypatch):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    read = []
    real = _cache._tensor_bytes
    monkeypatch.setattr(_cache, "_tensor_bytes", lambda t: read.append(1) or real(t))
    key = content_key(net)
    assert len(read) == 4  # two weights, two biases
    assert content_key(net) == key and len(read) == 4  # memoised
    twin = copy.deepcopy(net)
    assert content_key(twin) == key  # another object with the same weights
    assert content_key(pickle.loads(pickle.dumps(net))) == key
    # Why a module is not keyed by its pickle: equal copies pickle to different bytes.
    assert pickle.dumps(twin) != pickle.dumps(net)

    with torch.no_grad():
        net[0].weight[0, 0] += 1.0  # in place: the tensor's version counter moves
    assert content_key(net) != key
    net.load_state_dict(twin.state_dict())  # copied back in place
    assert content_key(net) == key
    torch.optim.SGD(net.parameters(), lr=0.1).zero_grad()
    net(torch.ones(1, 4)).sum().backward()
    torch.optim.SGD(net.parameters(), lr=0.1).step()  # an optimiser step
    stepped = content_key(net)
    assert stepped != key
    net[2].bias = torch.nn.Parameter(torch.zeros(2))  # a tensor replaced
    assert content_key(net) not in (key, stepped)
    net[2] = torch.nn.Linear(3, 2)  # a submodule replaced
    replaced = content_key(net)
    assert replaced not in (key, stepped)
    net[2].weight.data = torch.zeros(2, 3)  # new storage, same tensor and version
    zeroed = content_key(net)
    assert zeroed != replaced
    net[2].weight.data.add_(1.0)  # the documented blind spot: .data bypasses the version
    assert content_key(net) == zeroed

    assert content_key(twin.eval()) != key  # train/eval flags
    twin.train()
    assert content_key(twin) == key
    tanh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    tanh.load_state_dict(twin.state_dict())  # same weights, another architecture
    assert content_key(tanh) != key
    assert content_key(copy.deepcopy(twin).to(torch.bfloat16)) != key  # any dtype has bytes
    assert content_key(torch.ones(3)) != content_key(torch.ones(3, dtype=torch.float64))


def test_refitting_the_frozen_encoder_in_place_is_a_new_fit(tmp_path, fit_calls):
    X, y, g = _images()
    encoder = _encoder("resnet10t")
    twin = copy.deepcopy(encoder)
    assert content_key(FrozenEstimator(twin)) == content_key(FrozenEstimator(encoder))
    twin.history_["seconds"] += 1.0  # a fresh fit with the same seed differs in its timings
    assert content_key(FrozenEstimator(twin)) != content_key(FrozenEstimator(encoder))
    model = _image_model(encoder)

    def cached():
        return SelectiveImagingPolicy(model, rule="or", delta=0.2, memory=str(tmp_path)).fit(
            X, y, groups=g
        )

    first = cached()
    assert cached()._cache_key_ == first._cache_key_ and len(fit_calls) == 1
    before = first.predict_lower(X)
    encoder.set_params(random_state=1).fit(X)  # the same FrozenEstimator, refitted inside
    second = cached()
    assert len(fit_calls) == 2 and second._cache_key_ != first._cache_key_
    plain = SelectiveImagingPolicy(clone(model), rule="or", delta=0.2).fit(X, y, groups=g)
    pd.testing.assert_frame_equal(second.predict_lower(X), plain.predict_lower(X))
    assert not np.allclose(second.predict_lower(X), before)
    with torch.no_grad():
        next(encoder.encoder_.parameters()).mul_(0.5)  # weights edited in place
    n_fits = len(fit_calls)
    assert cached()._cache_key_ not in (first._cache_key_, second._cache_key_)
    assert len(fit_calls) == n_fits + 1


# ---- cached fits -----------------------------------------------------------------------------
def test_a_cached_fit_leaves_the_frozen_encoder_out(resnet18, tmp_path, fit_calls):
    X, y, g = _images()
    model = _image_model(resnet18)
    first = SelectiveImagingPolicy(model, rule="or", delta=0.2, memory=str(tmp_path)).fit(
        X, y, groups=g
    )
    stored = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    encoder_size = len(pickle.dumps(resnet18))
    assert encoder_size > 40e6 and stored < encoder_size / 10
    assert stored < 1e6  # the head's weights (512 -> 128 -> 2), about 0.3 MB

    # A hit read from disk, as in a new process (empty LRUs), refers to the caller's encoder.
    _cache.FITS.clear()
    _cache.PREDICTIONS.clear()
    hit = SelectiveImagingPolicy(clone(model), rule="or", delta=0.2, memory=str(tmp_path))
    hit.fit(X, y, groups=g)
    assert len(fit_calls) == 1 and hit.estimator_ is not first.estimator_
    assert hit.estimator_.estimator_.steps[0][1] is model.estimator.steps[0][1]
    plain = SelectiveImagingPolicy(clone(model), rule="or", delta=0.2).fit(X, y, groups=g)
    pd.testing.assert_frame_equal(hit.predict_lower(X), plain.predict_lower(X))


def test_frozen_parts_pickle_as_references_to_the_callers_objects():
    X, y, _ = _hips()
    frozen = FrozenEstimator(LinearRegression().fit(X, y))
    model = _conformal(make_pipeline(frozen))
    fitted = clone(model).fit(X, y, groups=np.arange(len(X)) // 4)
    blob = dumps_fit(fitted, model)
    assert b"LinearRegression" not in blob
    other = FrozenEstimator(copy.deepcopy(frozen.estimator))  # another caller's equal copy
    loaded = loads_fit(blob, _conformal(make_pipeline(other)))
    assert loaded.estimator_.steps[0][1] is other
    np.testing.assert_array_equal(loaded.predict(X), fitted.predict(X))
    assert loads_fit(dumps_fit(frozen, frozen), other) is other  # a frozen estimator itself
    with pytest.raises(pickle.UnpicklingError, match="frozen estimator"):
        loads_fit(blob, _conformal(LinearRegression()))


_PROCESS = """
import json, pickle, sys
import numpy as np
from skddh import SelectiveImagingPolicy
from skddh.policy import _policy

calls = []
real = _policy._fit_bounds
_policy._fit_bounds = lambda *args: calls.append(1) or real(*args)
with open(sys.argv[1], "rb") as fh:
    model, X, y, g = pickle.load(fh)
policy = SelectiveImagingPolicy(model, rule="or", delta=0.2, memory=sys.argv[2])
policy.fit(X, y, groups=g)
np.save(sys.argv[3], policy.predict_lower(X).to_numpy())
print(json.dumps({"fits": len(calls), "key": policy._cache_key_}))
"""


@pytest.mark.slow
def test_the_disk_cache_is_shared_across_processes(resnet18, tmp_path):
    """A second process (a joblib worker, a later session) reads the first one's fit."""
    X, y, g = _images()
    model = _image_model(resnet18)
    inputs = tmp_path / "inputs.pkl"
    inputs.write_bytes(pickle.dumps((model, X, y, g)))  # as joblib sends them to a worker
    runs = []
    for i in range(2):
        out = tmp_path / f"lower{i}.npy"
        env = {**os.environ, "PYTHONHASHSEED": str(i + 1)}
        done = subprocess.run(
            [sys.executable, "-c", _PROCESS, str(inputs), str(tmp_path / "cache"), str(out)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        runs.append((json.loads(done.stdout.strip().splitlines()[-1]), np.load(out)))
    (first, lower0), (second, lower1) = runs
    assert first["fits"] == 1 and second["fits"] == 0
    np.testing.assert_array_equal(lower1, lower0)
    here = SelectiveImagingPolicy(model, rule="or", delta=0.2, memory=str(tmp_path / "here"))
    here.fit(X, y, groups=g)
    assert first["key"] == second["key"] == here._cache_key_
    plain = SelectiveImagingPolicy(clone(model), rule="or", delta=0.2).fit(X, y, groups=g)
    np.testing.assert_allclose(lower1, plain.predict_lower(X).to_numpy())


# ---- the policy's cached search ------------------------------------------------------------
class _CountingRegressor(LinearRegression):
    """LinearRegression that counts its fits and predictions in a file ("f" and "p")."""

    def __init__(self, counter=None):
        self.counter = counter
        super().__init__()

    def fit(self, X, y):
        with open(self.counter, "a") as fh:
            fh.write("f")
        return super().fit(X, y)

    def predict(self, X):
        with open(self.counter, "a") as fh:
            fh.write("p")
        return super().predict(X)


def _n_fits(path):
    return path.read_text().count("f") if path.exists() else 0


def _n_predicts(path):
    return path.read_text().count("p") if path.exists() else 0


def test_gridsearch_with_groups_and_memory_fits_once_per_fold(tmp_path):
    X, y, g = _hips()
    counter = tmp_path / "fits.txt"
    grid = {"rule": ["alpha", "or", "and"], "delta": [0.05, 0.1, 0.2, 0.35]}
    scorer = make_policy_scorer(radiation_cost=1.0, miss_penalty=10.0)
    results = {}
    for memory in [None, str(tmp_path / "cache")]:
        counter.unlink(missing_ok=True)
        base = OneSidedConformalRegressor(_CountingRegressor(str(counter)), random_state=0)
        with sklearn.config_context(enable_metadata_routing=True):
            policy = SelectiveImagingPolicy(base, memory=memory).set_fit_request(groups=True)
            search = GridSearchCV(policy, grid, scoring=scorer, cv=GroupKFold(4), refit=False)
            search.fit(X, y, groups=g)
        results[memory is None] = (
            search.cv_results_["mean_test_score"],
            _n_fits(counter),
            _n_predicts(counter),
        )
    (plain_scores, plain_fits, plain_pred), (cached_scores, cached_fits, cached_pred) = (
        results[True],
        results[False],
    )
    np.testing.assert_allclose(cached_scores, plain_scores)
    assert plain_fits == 12 * 4
    assert cached_fits == 4  # one per fold, shared by all 12 candidates
    # Each fit predicts its calibration part once; each fold's test part is predicted once.
    assert plain_pred == 12 * 4 * 2
    assert cached_pred == 4 * 2


def test_cached_policy_predicts_like_the_uncached_one(tmp_path):
    X, y, g = _hips()
    plain = SelectiveImagingPolicy(_conformal(), rule="or", delta=0.2).fit(X, y, groups=g)
    cached = SelectiveImagingPolicy(_conformal(), rule="or", delta=0.2, memory=str(tmp_path)).fit(
        X, y, groups=g
    )
    pd.testing.assert_frame_equal(cached.predict_lower(X), plain.predict_lower(X))
    np.testing.assert_array_equal(cached.predict(X), plain.predict(X))
    # A second policy with another delta reuses the fit and the predictions.
    other = clone(cached).set_params(delta=0.35).fit(X, y, groups=g)
    # (the policy holds a shallow copy that names its own subjects; the fitted model is shared)
    assert other.estimator_.estimator_ is cached.estimator_.estimator_
    np.testing.assert_allclose(
        other.predict_lower(X), plain.estimator_.predict_lower(X, delta=0.35)
    )


def test_cached_fit_reports_the_callers_subject_ids(tmp_path):
    """The cache fits on integer codes; calibration_groups_ still names the caller's subjects."""
    from sklearn.linear_model import LinearRegression

    from skddh import OneSidedConformalRegressor, SelectiveImagingPolicy

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 2))
    y = pd.DataFrame({"alpha": 60 + X[:, 0], "coverage": 55 + X[:, 1]})
    ids = np.array([f"infant-{i:03d}" for i in np.arange(120) // 3])
    policy = SelectiveImagingPolicy(
        OneSidedConformalRegressor(LinearRegression(), random_state=0), memory=str(tmp_path)
    )
    cached = policy.fit(X, y, groups=ids).estimator_.calibration_groups_
    plain = SelectiveImagingPolicy(
        OneSidedConformalRegressor(LinearRegression(), random_state=0)
    ).fit(X, y, groups=ids)
    np.testing.assert_array_equal(cached, plain.estimator_.calibration_groups_)
    assert str(cached[0]).startswith("infant-")
