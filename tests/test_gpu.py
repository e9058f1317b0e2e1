"""The GPU path, run for real: ``pytest -m gpu`` on a machine with CUDA (``make gpu-check``).

Every test here is marked ``gpu`` and skipped without a CUDA device, so the CPU suite only
collects them. They check what a CPU cannot: fitted modules and staged images on the device,
batches through pinned host memory, bf16 autocast, channels_last, ``compile=True`` at one
shape, a real out-of-memory back-off, and a CUDA-fitted model pickled without a GPU-side copy
and loaded where there is no GPU. Images are tiny except where memory is the point.
"""

import itertools
import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from skddh import FineTuningRegressor, SimSiamFeaturizer
from skddh.models import _batches as B
from skddh.models._images import ImageSource

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")


def _images(n=48, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def _targets(X):
    return pd.DataFrame({"alpha": X.mean((1, 2)) / 4, "coverage": np.linspace(40, 70, len(X))})


def _enc(**kw):
    params = dict(
        image_size=32,
        epochs=1,
        batch_size=16,
        projection_dim=64,
        prediction_dim=32,
        device="cuda",
        random_state=0,
    )
    params.update(kw)
    return SimSiamFeaturizer(**params)


def _reg(**kw):
    params = dict(image_size=32, epochs=1, batch_size=16, device="cuda", random_state=0)
    params.update(kw)
    return FineTuningRegressor(**params)


def _on_cuda(module):
    return all(t.is_cuda for t in itertools.chain(module.parameters(), module.buffers()))


def test_fitted_modules_and_resident_images_stay_on_the_device():
    X = _images()
    enc = _enc().fit(X)
    assert enc.device_.startswith("cuda") and _on_cuda(enc.encoder_)
    assert enc.precision_ == "bf16"  # "auto" on CUDA
    f = enc.transform(X[:5])
    assert f.shape == (5, 512) and f.dtype == np.float32 and np.isfinite(f).all()
    reg = _reg().fit(X, _targets(X))
    assert reg.device_.startswith("cuda") and _on_cuda(reg.module_)
    assert reg.predict(X[:3]).shape == (3, 2)
    staged = B.stage(ImageSource(X, 32), CUDA)
    assert staged.data.is_cuda and staged.data.dtype == torch.uint8  # uint8, not float


def test_host_batches_go_through_pinned_buffers(monkeypatch, tmp_path):
    X = _images(n=40)
    monkeypatch.setattr(B, "RESIDENT_SHARE", 0.0)  # "too large for the GPU": pinned host
    staged = B.stage(ImageSource(X, 32), CUDA)
    assert staged.data.is_pinned()
    idx = torch.tensor([5, 1, 30, 7])
    x = staged.take(idx, 32)
    assert x.is_cuda
    torch.testing.assert_close(x.cpu(), torch.from_numpy(X[idx.numpy()][:, None]).float() / 255)
    bufs = [b for b in staged._bufs if b is not None]
    assert bufs and all(b.is_pinned() for b in bufs)
    paths = []
    for i, img in enumerate(X):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).save(paths[-1])
    files = B.stage(ImageSource(paths, 32), CUDA)
    files.take(torch.arange(8), 32, ahead=torch.arange(8, 16))  # reads 8..15 meanwhile
    y = files.take(torch.arange(8, 16), 32)
    torch.testing.assert_close(y.cpu(), torch.from_numpy(X[8:16][:, None]).float() / 255)
    assert all(b is not None and b.is_pinned() for b in files._bufs)
    for data in (X, paths):  # whole fits through pinned memory, in memory and streamed
        enc = _enc(epochs=2).fit(data)
        assert np.isfinite(enc.history_["loss"]).all()


def test_bf16_autocast_fit():
    X = _images()
    enc = _enc(precision="bf16", epochs=2).fit(X)
    assert enc.precision_ == "bf16" and np.isfinite(enc.history_["loss"]).all()
    bf16 = enc.transform(X[:16])  # explicit bf16: autocast in transform too
    fp32 = enc.set_params(precision="fp32").transform(X[:16])
    assert bf16.dtype == fp32.dtype == np.float32
    assert np.corrcoef(bf16.ravel(), fp32.ravel())[0, 1] > 0.99


def test_channels_last_on_cuda():
    X = _images()
    enc = _enc().fit(X)
    w = enc.encoder_.layer1[0].conv1.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    reg = _reg().fit(X, _targets(X))
    w = reg.module_[0].layer1[0].conv1.weight
    assert w.is_contiguous(memory_format=torch.channels_last)


def test_compile_fit_and_transform_keep_one_shape(monkeypatch):
    real, shapes = torch.compile, []

    def spy(fn, **kwargs):
        compiled = real(fn, **kwargs)

        def call(x, *rest):
            shapes.append(tuple(x.shape))
            return compiled(x, *rest)

        return call

    monkeypatch.setattr(torch, "compile", spy)
    X = _images(n=40)
    enc = _enc(compile=True, epochs=2).fit(X)  # 16 + 16 + (8 dropped) per epoch
    assert enc.n_steps_ == 4 and set(shapes) == {(16, 1, 32, 32)}
    shapes.clear()
    got = enc.transform(X)  # 16 + 16 + 8 padded to 16
    assert shapes == [(16, 1, 32, 32)] * 3
    want = enc.set_params(compile=False).transform(X)
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


def test_out_of_memory_halves_the_batch_for_real():
    X = _images(n=256, size=224)
    _enc(image_size=224, batch_size=8).fit(X[:16])  # cuBLAS / cuDNN set up while memory lasts
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(max(0, int(free - 3 * 2**30)), dtype=torch.uint8, device=CUDA)
    try:  # two 224 px views of 256 images need far more than the 3 GiB left
        with pytest.warns(RuntimeWarning, match="batch_size halved"):
            enc = _enc(image_size=224, batch_size=256).fit(X)
    finally:
        del hog
        torch.cuda.empty_cache()
    assert enc.history_["batch_size"].iloc[-1] < 256
    assert enc.n_steps_ >= 1 and np.isfinite(enc.history_["loss"]).all()
    assert np.isfinite(enc.transform(X[:4])).all()


_CHILD = """
import pickle, sys
import numpy as np, torch
assert not torch.cuda.is_available()
d = sys.argv[1]
X = np.load(d + "/X.npy")
with open(d + "/enc.pkl", "rb") as f:
    enc = pickle.load(f)
with open(d + "/reg.pkl", "rb") as f:
    reg = pickle.load(f)
np.save(d + "/features.npy", enc.transform(X))
np.save(d + "/predictions.npy", reg.predict(X))
print(enc.encoder_.conv1.weight.device.type, reg.module_[0].conv1.weight.device.type)
"""


def test_cuda_fitted_models_pickle_without_a_gpu_copy_and_load_without_cuda(tmp_path):
    X = _images()
    enc = _enc(device="auto").fit(X)  # "auto": CUDA here, the CPU in the child
    reg = _reg(device="auto").fit(X, _targets(X))
    assert enc.device_.startswith("cuda") and reg.device_.startswith("cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    blobs = {"enc": pickle.dumps(enc), "reg": pickle.dumps(reg)}
    weights = sum(t.numel() * t.element_size() for t in enc.encoder_.state_dict().values())
    assert torch.cuda.max_memory_allocated() - base < 0.05 * weights  # no copy on the GPU
    assert _on_cuda(enc.encoder_) and _on_cuda(reg.module_)  # the fitted ones stay put
    for name, blob in blobs.items():
        (tmp_path / f"{name}.pkl").write_bytes(blob)
    np.save(tmp_path / "X.npy", X[:6])
    features, predictions = enc.transform(X[:6]), reg.predict(X[:6])
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["cpu", "cpu"]
    # CUDA convolutions use TF32 by default: close to the CPU's float32, not equal.
    np.testing.assert_allclose(np.load(tmp_path / "features.npy"), features, rtol=0.02, atol=0.02)
    np.testing.assert_allclose(
        np.load(tmp_path / "predictions.npy"), predictions, rtol=0.02, atol=0.1
    )
