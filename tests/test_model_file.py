"""Model files that run no code: skddh.model_file.save_policy / load_policy."""

import copy
import hashlib
import json
import os
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline

from skddh import (
    MeasurementRegressor,
    OneSidedConformalRegressor,
    SelectiveImagingPolicy,
    SimSiamFeaturizer,
)
from skddh.model_file import ARRAYS, METADATA, load_policy, save_policy

N = 40
#: A pickle whose loading calls os.system("echo pwned") (protocol 0, by hand).
EVIL_PICKLE = b"cos\nsystem\n(S'echo pwned'\ntR."


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (N, 32, 32), dtype=np.uint8)
    y = pd.DataFrame(
        {
            "alpha": rng.normal(60, 5, N),
            "beta": rng.normal(55, 5, N),
            "coverage": rng.normal(50, 5, N),
        }
    )
    subject = np.array([f"s{i // 2:02d}" for i in range(N)], dtype=object)
    return images, y, subject


@pytest.fixture(scope="module")
def encoder(data):
    """A tiny fitted featurizer, shared by the policies below."""
    return SimSiamFeaturizer(
        image_size=32,
        epochs=1,
        batch_size=16,
        projection_dim=32,
        prediction_dim=16,
        device="cpu",
        random_state=0,
    ).fit(data[0])


@pytest.fixture(scope="module")
def policy(data, encoder):
    """The policy ``skddh fit`` builds, tiny: a frozen fitted head under the conformal layer."""
    images, y, subject = data
    head = make_pipeline(
        FrozenEstimator(encoder), MeasurementRegressor(epochs=3, device="cpu", random_state=0)
    ).fit(images[:20], y[:20])
    deltas = {"alpha": 0.2, "beta": 0.2, "coverage": 0.2}
    model = OneSidedConformalRegressor(FrozenEstimator(head), delta=deltas, random_state=0)
    return SelectiveImagingPolicy(model, rule="or", delta={"alpha": 0.3, "coverage": 0.3}).fit(
        images[20:], y[20:], groups=subject[20:]
    )


@pytest.fixture(scope="module")
def saved(policy, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "policy.skddh"
    save_policy(policy, path, extra={"image_size": 32, "rule": "or"})
    return path


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read(METADATA)), zf.read(ARRAYS)


def _canonical(obj):
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _write(path, metadata, arrays, *, fix_checksums=True, more=()):
    """A model file with edited members; checksums recomputed unless told otherwise."""
    if fix_checksums:
        metadata["checksums"] = {
            ARRAYS: hashlib.sha256(arrays).hexdigest(),
            "model": hashlib.sha256(
                _canonical({"model": metadata["model"], "extra": metadata["extra"]})
            ).hexdigest(),
        }
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(METADATA, json.dumps(metadata))
        zf.writestr(ARRAYS, arrays)
        for name, content in more:
            zf.writestr(name, content)
    return path


def _node(metadata, name):
    return next(n for n in metadata["model"]["estimators"] if n["class"] == name)


@pytest.fixture
def no_system(monkeypatch):
    """Replace os.system (and posix.system) by a recorder: any call is code run from a file."""
    calls = []
    monkeypatch.setattr(os, "system", lambda cmd: calls.append(cmd) or 0)
    if hasattr(os, "posix") or os.name == "posix":
        import posix

        monkeypatch.setattr(posix, "system", lambda cmd: calls.append(cmd) or 0)
    return calls


# ---- the round trip ------------------------------------------------------------------------
def test_round_trip_predicts_exactly(policy, saved, data):
    images, y, _ = data
    loaded, meta = load_policy(saved, return_metadata=True)
    pd.testing.assert_frame_equal(
        loaded.predict_lower(images), policy.predict_lower(images), check_exact=True
    )
    np.testing.assert_array_equal(loaded.predict(images), policy.predict(images))
    assert loaded.score(images, y) == policy.score(images, y)
    assert meta["extra"] == {"image_size": 32, "rule": "or"}
    assert meta["format_version"] == 1 and "model" not in meta
    assert set(meta["versions"]) >= {"skddh", "scikit-learn", "torch"}


def test_round_trip_keeps_state_and_structure(policy, saved):
    loaded = load_policy(saved)
    old, new = policy.estimator_, loaded.estimator_
    pd.testing.assert_series_equal(new.quantile_, old.quantile_, check_exact=True)
    pd.testing.assert_frame_equal(new.affine_, old.affine_, check_exact=True)
    for attr in ("scores_", "residuals_", "calibration_indices_", "train_indices_"):
        np.testing.assert_array_equal(getattr(new, attr), getattr(old, attr))
        assert getattr(new, attr).dtype == getattr(old, attr).dtype
    assert new.calibration_groups_.tolist() == old.calibration_groups_.tolist()
    assert new.calibration_groups_.dtype == object
    assert new.n_calibration_ == old.n_calibration_ and new._y_1d is old._y_1d
    assert loaded.thresholds_ == policy.thresholds_ and loaded.delta == policy.delta
    assert loaded._cache_key_ is None
    # The frozen head is one object, shared by the unfitted and the fitted regressor.
    assert loaded.estimator.estimator is new.estimator_
    head_old, head_new = old.estimator_.estimator, new.estimator_.estimator
    enc_old, enc_new = head_old.steps[0][1].estimator, head_new.steps[0][1].estimator
    assert enc_new.get_params() == enc_old.get_params()  # crop_scale stays a tuple
    pd.testing.assert_frame_equal(enc_new.history_, enc_old.history_, check_exact=True)
    assert not enc_new.encoder_.training
    assert not any(p.requires_grad for p in enc_new.encoder_.parameters())
    mr_old, mr_new = head_old.steps[1][1], head_new.steps[1][1]
    pd.testing.assert_frame_equal(mr_new.history_, mr_old.history_, check_exact=True)
    np.testing.assert_array_equal(mr_new.x_scale_, mr_old.x_scale_)
    assert mr_new.x_scale_.dtype == np.float32


def test_save_is_deterministic_in_content(policy, saved, tmp_path):
    again = save_policy(policy, tmp_path / "again.skddh", extra={"image_size": 32, "rule": "or"})
    meta_a, arrays_a = _members(saved)
    meta_b, arrays_b = _members(again)
    assert arrays_a == arrays_b and meta_a["model"] == meta_b["model"]


def test_gpu_model_loads_on_cpu(policy, data, tmp_path):
    """A model fitted with device='cuda' (faked: its tensors are CPU ones) loads on a CPU."""
    images = data[0]
    gpu = copy.deepcopy(policy)
    encoder = gpu.estimator_.estimator_.estimator.steps[0][1].estimator
    head = gpu.estimator_.estimator_.estimator.steps[1][1]
    encoder.set_params(device="cuda")
    encoder.device_ = "cuda:0"
    head.set_params(device="cuda")
    meta_path = save_policy(gpu, tmp_path / "gpu.skddh")
    meta, _ = _members(meta_path)
    assert _node(meta, "SimSiamFeaturizer")["params"]["device"] == "cuda"
    loaded = load_policy(meta_path, device="cpu")
    parts = loaded.estimator_.estimator_.estimator.steps
    assert parts[0][1].estimator.device == "cpu" and parts[0][1].estimator.device_ == "cpu"
    assert parts[1][1].device == "cpu"
    assert next(parts[1][1].module_.parameters()).device.type == "cpu"
    pd.testing.assert_frame_equal(
        loaded.predict_lower(images), policy.predict_lower(images), check_exact=True
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_asked_for_without_cuda(saved):
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_policy(saved, device="cuda")


# ---- corruption ----------------------------------------------------------------------------
def test_checksum_catches_edited_weights(saved, tmp_path):
    """Finite corrupted weights in a well-formed zip: the SHA-256 of the payload catches them."""
    meta, arrays = _members(saved)
    header = 8 + int.from_bytes(arrays[:8], "little")
    flipped = bytearray(arrays)
    flipped[header + (len(arrays) - header) // 2] ^= 0x01
    bad = _write(tmp_path / "bad.skddh", meta, bytes(flipped), fix_checksums=False)
    with pytest.raises(ValueError, match=r"'arrays\.safetensors' fails its SHA-256 checksum"):
        load_policy(bad)


def test_crc_catches_a_flipped_byte_in_the_file(saved, tmp_path):
    raw = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as zf:
        info = zf.getinfo(ARRAYS)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0x01
    bad = tmp_path / "flipped.skddh"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"'arrays\.safetensors' is corrupted \(zip checksum"):
        load_policy(bad)


def test_checksum_catches_edited_metadata(saved, tmp_path):
    meta, arrays = _members(saved)
    meta["model"]["estimators"][0]["params"]["rule"] = "and"
    bad = _write(tmp_path / "edited.skddh", meta, arrays, fix_checksums=False)
    with pytest.raises(ValueError, match=r"checksums\.model"):
        load_policy(bad)


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_file(saved, tmp_path, cut):
    raw = saved.read_bytes()
    bad = tmp_path / "truncated.skddh"
    bad.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(ValueError, match="not a zip archive") as info:
        load_policy(bad)
    assert "\n" not in str(info.value)


def test_not_a_zip_and_a_pickle(tmp_path, no_system):
    text = tmp_path / "model.txt"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match="not a zip archive") as info:
        load_policy(text)
    assert "\n" not in str(info.value)
    # The classic: a pickle whose loading calls os.system.
    evil = tmp_path / "evil.joblib"
    evil.write_bytes(EVIL_PICKLE)
    with pytest.raises(ValueError, match="joblib.load only if you trust it"):
        load_policy(evil)
    assert no_system == []


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path / "nowhere.skddh")


# ---- refusing what is not ours -------------------------------------------------------------
def test_extra_pickle_member_is_refused_unread(saved, tmp_path, no_system):
    meta, arrays = _members(saved)
    bad = _write(tmp_path / "extra.skddh", meta, arrays, more=[("payload.pkl", EVIL_PICKLE)])
    with pytest.raises(ValueError, match=r"unexpected member\(s\) \['payload\.pkl'\]"):
        load_policy(bad)
    assert no_system == []


@pytest.mark.parametrize(
    "name", ["os.system", "system", "posix.system", "Ridge", "sklearn.linear_model.Ridge"]
)
def test_class_outside_the_allow_list(saved, tmp_path, no_system, name):
    meta, arrays = _members(saved)
    node = _node(meta, "MeasurementRegressor")
    node["class"] = name
    bad = _write(tmp_path / "class.skddh", meta, arrays)
    with pytest.raises(ValueError, match=r"\.class: .* is not one of the classes") as info:
        load_policy(bad)
    assert name in str(info.value)
    assert no_system == []


def test_unknown_parameter_and_bad_values(saved, tmp_path):
    meta, arrays = _members(saved)
    _node(meta, "MeasurementRegressor")["params"]["__class__"] = "os.system"
    with pytest.raises(ValueError, match=r"takes no parameter\(s\) \['__class__'\]"):
        load_policy(_write(tmp_path / "p.skddh", meta, arrays))
    meta, arrays = _members(saved)
    meta["model"]["estimators"][0]["params"]["rule"] = "os.system"
    with pytest.raises(ValueError, match=r"estimators\[0\]\.params: invalid SelectiveImaging"):
        load_policy(_write(tmp_path / "r.skddh", meta, arrays))
    meta, arrays = _members(saved)
    meta["model"]["estimators"][0]["attributes"]["predict"] = {"$estimator": 0}
    with pytest.raises(ValueError, match=r"attributes\.predict: 'predict' is not a fitted"):
        load_policy(_write(tmp_path / "a.skddh", meta, arrays))
    meta, arrays = _members(saved)
    meta["model"]["estimators"][0]["attributes"]["thresholds_"] = {"$pickle": "gASV..."}
    with pytest.raises(ValueError, match=r"attributes\.thresholds_: an object must have"):
        load_policy(_write(tmp_path / "t.skddh", meta, arrays))


def test_hub_backbone_is_not_fetched(saved, tmp_path):
    meta, arrays = _members(saved)
    _node(meta, "SimSiamFeaturizer")["params"]["backbone"] = "hf-hub:someone/model"
    with pytest.raises(ValueError, match="not a model timm knows"):
        load_policy(_write(tmp_path / "hub.skddh", meta, arrays))


def test_tensor_shapes_must_fit_the_rebuilt_modules(saved, tmp_path):
    meta, arrays = _members(saved)
    tensors = st_load(arrays)
    key = next(k for k in tensors if k.endswith("module_/0.weight"))
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    bad = _write(tmp_path / "shape.skddh", meta, st_save(tensors))
    with pytest.raises(ValueError, match=rf"tensor '{key}' .* the rebuilt module wants"):
        load_policy(bad)
    tensors = st_load(arrays)
    tensors["stowaway"] = torch.zeros(3)
    bad = _write(tmp_path / "more.skddh", meta, st_save(tensors))
    with pytest.raises(ValueError, match=r"no estimator uses: \['stowaway'\]"):
        load_policy(bad)


def test_format_and_versions(saved, tmp_path):
    meta, arrays = _members(saved)
    meta["format_version"] = 2
    with pytest.raises(ValueError, match="format_version 2 is not one this skddh reads"):
        load_policy(_write(tmp_path / "f.skddh", meta, arrays))
    meta, arrays = _members(saved)
    meta["versions"]["skddh"] = "9.9.0"
    with pytest.raises(ValueError, match=r"written by skddh 9\.9\.0.*same major\.minor"):
        load_policy(_write(tmp_path / "v.skddh", meta, arrays))
    meta, arrays = _members(saved)
    meta["versions"]["scikit-learn"] = "99.0.0"
    with pytest.warns(UserWarning, match="written with scikit-learn 99.0.0, newer"):
        load_policy(_write(tmp_path / "w.skddh", meta, arrays))


# ---- what save refuses ---------------------------------------------------------------------
def test_save_refuses_classes_outside_the_allow_list(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = pd.DataFrame({"alpha": 60 + X[:, 0], "coverage": 50 + X[:, 1]})
    policy = SelectiveImagingPolicy(OneSidedConformalRegressor(Ridge(), delta=0.2, random_state=0))
    policy.fit(X, y, groups=np.arange(60) // 2)
    with pytest.raises(
        TypeError, match=r"save policy\.estimator\.estimator: .*Ridge .*joblib\.dump"
    ):
        save_policy(policy, tmp_path / "ridge.skddh")
    assert not (tmp_path / "ridge.skddh").exists()
    with pytest.raises(TypeError, match="saves a SelectiveImagingPolicy"):
        save_policy(policy.estimator_, tmp_path / "ridge.skddh")


def test_save_refuses_values_that_are_not_data(policy, tmp_path):
    bad = copy.deepcopy(policy)
    bad.estimator_.random_state = np.random.RandomState(0)
    with pytest.raises(TypeError, match=r"parameter policy\.estimator_\.random_state: .*Random"):
        save_policy(bad, tmp_path / "rs.skddh")
    with pytest.raises(TypeError, match="extra is not JSON-able"):
        save_policy(policy, tmp_path / "x.skddh", extra={"path": tmp_path})
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_fine_tuned_model_round_trips(data, encoder, tmp_path):
    """A policy over FineTuningRegressor (its encoder initialised from a frozen featurizer)."""
    from skddh import FineTuningRegressor

    images, y, subject = data
    tuned = FineTuningRegressor(
        FrozenEstimator(encoder), epochs=1, batch_size=16, device="cpu", random_state=0
    ).fit(images[:20], y[:20])
    model = OneSidedConformalRegressor(FrozenEstimator(tuned), delta=0.2, random_state=0)
    policy = SelectiveImagingPolicy(model, rule="alpha").fit(
        images[20:], y[20:], groups=subject[20:]
    )
    path = tmp_path / "tuned.skddh"
    save_policy(policy, path)
    again = load_policy(path)
    np.testing.assert_array_equal(again.predict(images), policy.predict(images))
    np.testing.assert_allclose(
        again.estimator_.predict_lower(images), policy.estimator_.predict_lower(images)
    )
