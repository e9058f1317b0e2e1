"""Checkpoint and resume (skddh.models._checkpoint) of SimSiamFeaturizer and FineTuningRegressor.

The central test kills a real fit (a subprocess, SIGKILL, mid-epoch), resumes it here from
its checkpoint and asks for a bitwise-equal result to a fit never interrupted (CPU, tiny
images, timm's tiny ``test_resnet``). On Linux the subprocess is forked, so it does not pay
the seconds of importing torch and timm again.
"""

import datetime
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _checkpoint_fits import (
    EPOCHS,
    KINDS,
    N,
    data,
    estimator,
    fit,
    fit_until_killed,
    network,
    output,
)
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.utils._param_validation import InvalidParameterError

from skddh.models import _checkpoint as C

CHILD = Path(__file__).with_name("_checkpoint_fits.py")
KILL_FROM_STEP = 4  # the 2nd step of the 2nd epoch (3 steps an epoch)
HISTORY_LOSSES = {"simsiam": ["loss", "batch_size"], "finetune": ["loss", "lr"]}


pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every fit here on one torch thread, as the killed one (the rounding is the same)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _Child:
    """A fit in a subprocess: forked where that is safe (Linux), else a fresh interpreter."""

    def __init__(self, kind, path):
        if sys.platform.startswith("linux"):
            ctx = multiprocessing.get_context("fork")
            with warnings.catch_warnings():  # Python >= 3.12 warns on fork in a threaded process
                warnings.simplefilter("ignore", DeprecationWarning)
                self.proc = ctx.Process(
                    target=fit_until_killed, args=(kind, str(path), KILL_FROM_STEP), daemon=True
                )
                self.proc.start()
        else:
            args = [sys.executable, str(CHILD), kind, str(path), str(KILL_FROM_STEP)]
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        self.pid = self.proc.pid

    def returncode(self):
        """None while it runs."""
        if isinstance(self.proc, subprocess.Popen):
            return self.proc.poll()
        return None if self.proc.is_alive() else self.proc.exitcode

    def wait(self):
        (self.proc.wait if isinstance(self.proc, subprocess.Popen) else self.proc.join)()
        return self.returncode()


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _wait_for_step(path, proc, step, timeout=120.0):
    """Poll the checkpoint until it reports ``step`` or later; its loop state then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.returncode() is not None:
            pytest.fail(f"the fit ended before it was killed (exit code {proc.returncode()})")
        if path.is_file():
            loop = _load(path)["loop"]
            if loop["step"] >= step:
                return loop
        time.sleep(0.01)
    pytest.fail(f"no checkpoint at step {step} within {timeout} s")


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """Both estimators' fits, started at once in subprocesses, each SIGKILLed mid-epoch."""
    import timm  # noqa: F401  (imported once here: forked children inherit it)

    root = tmp_path_factory.mktemp("killed")
    procs = {kind: (root / f"{kind}.ckpt", None) for kind in KINDS}
    out = {}
    try:
        for kind, (path, _) in procs.items():
            procs[kind] = path, _Child(kind, path)
        for kind, (path, proc) in procs.items():
            loop = _wait_for_step(path, proc, KILL_FROM_STEP)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
            out[kind] = path, loop
    finally:
        for _, proc in procs.values():
            if proc is not None and proc.returncode() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    return out


@pytest.fixture(scope="module")
def reference():
    """Uninterrupted fits, without any checkpoint."""
    return {kind: fit(estimator(kind)) for kind in KINDS}


def _assert_same_fit(a, b, kind):
    sa, sb = network(a).state_dict(), network(b).state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    images = data()[0]
    np.testing.assert_array_equal(output(a, images), output(b, images))
    cols = HISTORY_LOSSES[kind]
    assert a.history_[cols].equals(b.history_[cols])
    assert a.n_steps_ == b.n_steps_ == EPOCHS * 3


@pytest.mark.parametrize("kind", KINDS)
def test_a_fit_killed_mid_epoch_resumes_bitwise_equal(kind, killed, reference, monkeypatch):
    path, loop = killed[kind]
    # Killed mid-epoch: the checkpoint holds a position inside the 2nd epoch.
    saved = _load(path)
    assert saved["loop"]["epoch"] == 1 and 0 < saved["loop"]["start"] < N
    assert saved["loop"]["step"] >= loop["step"] >= KILL_FROM_STEP
    assert len(saved["loop"]["history"]) == 1
    # What a kill during a write leaves beside it: never loaded, removed.
    partial = path.with_name(f".{path.name}.x1y2z3.tmp")
    partial.write_bytes(b"half a checkpoint")
    steps, save = [], C.Checkpointer.save

    def recording_save(self, loop):
        steps.append(loop["step"])
        save(self, loop)

    monkeypatch.setattr(C.Checkpointer, "save", recording_save)
    resumed = fit(estimator(kind, checkpoint=str(path), checkpoint_every=1))
    _assert_same_fit(resumed, reference[kind], kind)
    # It resumed (a fresh start would give the same result): only the steps after the kill.
    first = saved["loop"]["step"] + 1
    assert steps[0] == first and steps[:-1] == list(range(first, EPOCHS * 3 + 1))
    # Cleaned up after the fit: no checkpoint, no temporary file.
    assert sorted(p.name for p in path.parent.iterdir() if kind in p.name) == []


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Per kind, the checkpoint a completed fit leaves when killed before it deletes it."""
    root = tmp_path_factory.mktemp("finished")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(C.Checkpointer, "finish", lambda self: None)
        for kind in KINDS:
            path = root / f"{kind}.ckpt"
            fit(estimator(kind, checkpoint=path, checkpoint_every=2))
            out[kind] = path
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_resuming_a_finished_fit_gives_the_same_estimator(
    kind, finished, reference, tmp_path, monkeypatch
):
    path = tmp_path / "done.ckpt"
    path.write_bytes(finished[kind].read_bytes())
    assert _load(path)["loop"]["epoch"] == EPOCHS
    saves = []
    monkeypatch.setattr(C.Checkpointer, "save", lambda self, loop: saves.append(loop))
    again = fit(estimator(kind, checkpoint=path))  # checkpoint_every is not matched
    _assert_same_fit(again, reference[kind], kind)
    assert saves == []  # not one step trained again
    assert not path.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_of_another_fit_is_refused(kind, finished, reference):
    path = finished[kind]
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"checkpoint=.*parameters differ \(lr: "):
        fit(estimator(kind, checkpoint=path, lr=0.25))
    images, y = data()
    with pytest.raises(ValueError, match="checkpoint=.*training data differ"):
        fit(estimator(kind, checkpoint=path), 255 - images, y)
    if kind == "finetune":  # the targets are training data too
        with pytest.raises(ValueError, match="checkpoint=.*training data differ"):
            fit(estimator(kind, checkpoint=path), images, y.assign(level=y.level + 1))
    if kind == "finetune":  # so are the weights the network starts from
        with pytest.raises(ValueError, match=r"parameters differ \(encoder: None there"):
            fit(estimator(kind, checkpoint=path, encoder=FrozenEstimator(reference["simsiam"])))
    other = KINDS[1 - KINDS.index(kind)]
    with pytest.raises(ValueError, match="checkpoint=.*written by"):
        fit(estimator(other, checkpoint=path))
    assert path.read_bytes() == before  # refused, never overwritten


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path):
    path = tmp_path / "c.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint=.*not a readable checkpoint"):
        fit(estimator("simsiam", checkpoint=path))
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="checkpoint=.*not an skddh checkpoint"):
        fit(estimator("simsiam", checkpoint=path))
    # A path that cannot be written fails at once, not after the first steps.
    with pytest.raises(ValueError, match="checkpoint=.*is a directory"):
        fit(estimator("finetune", checkpoint=tmp_path))
    with pytest.raises(ValueError, match="checkpoint=.*in no existing directory"):
        fit(estimator("finetune", checkpoint=tmp_path / "missing" / "c.ckpt"))


def _tiny_checkpointer(path, every=1):
    lin = torch.nn.Linear(2, 1)
    fp = {"format": C.FORMAT, "estimator": "T", "params": {}, "data": "d"}
    return C.Checkpointer(path, every, fp, torch.device("cpu"), lin=lin), lin


def test_a_failed_write_leaves_the_old_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    ckpt, lin = _tiny_checkpointer(path)
    ckpt.save({"step": 1})
    before, weight = path.read_bytes(), lin.weight.detach().clone()

    def half_then_full_disk(obj, f, *a, **k):
        f.write(b"\x00" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full_disk)
    with torch.no_grad():
        lin.weight.add_(1)
    with pytest.raises(OSError):
        ckpt.save({"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]
    # A stale temporary (a kill mid-write) is not what gets loaded, and is removed.
    (tmp_path / ".c.ckpt.abc.tmp").write_bytes(b"partial")
    fresh, fresh_lin = _tiny_checkpointer(path)
    assert fresh.restore() == {"step": 1}
    assert torch.equal(fresh_lin.weight, weight)
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]
    # And with no checkpoint at all, only a temporary: a fresh start.
    path.unlink()
    (tmp_path / ".c.ckpt.def.tmp").write_bytes(b"partial")
    assert _tiny_checkpointer(path)[0].restore() is None
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_every_counts_steps_or_time(tmp_path):
    ckpt = _tiny_checkpointer(tmp_path / "c", every=3)[0]
    assert [ckpt.due(s) for s in range(1, 7)] == [False, False, True, False, False, True]
    assert _tiny_checkpointer(tmp_path / "c", datetime.timedelta(0))[0].due(1)
    assert not _tiny_checkpointer(tmp_path / "c", datetime.timedelta(hours=1))[0].due(1)
    assert not _tiny_checkpointer(None)[0].due(1)


def test_a_checkpoint_from_another_device_resumes_with_a_warning(finished, tmp_path):
    """A CUDA checkpoint on a CPU machine: weights continue, the CUDA generator cannot."""
    saved = _load(finished["simsiam"])
    saved["device_type"] = "cuda"
    saved["state"]["gen"] = {"device_type": "cuda", "state": torch.zeros(16, dtype=torch.uint8)}
    path = tmp_path / "cuda.ckpt"
    torch.save(saved, path)
    with pytest.warns(RuntimeWarning, match="written on cuda and resumes on cpu"):
        est = fit(estimator("simsiam", checkpoint=path))
    assert est.n_steps_ == EPOCHS * 3


@pytest.mark.parametrize("kind", KINDS)
def test_parameters_clone_validate_and_pickle(kind, tmp_path, reference):
    est = estimator(kind, checkpoint=tmp_path / "c.ckpt", checkpoint_every=7)
    params = clone(est).get_params()
    assert params["checkpoint"] == tmp_path / "c.ckpt" and params["checkpoint_every"] == 7
    assert estimator(kind).get_params()["checkpoint"] is None
    assert estimator(kind).get_params()["checkpoint_every"] == 100
    with pytest.raises(InvalidParameterError, match="checkpoint"):
        fit(estimator(kind, checkpoint=3))
    with pytest.raises(InvalidParameterError, match="checkpoint_every"):
        fit(estimator(kind, checkpoint_every=0))
    est.set_params(checkpoint_every=datetime.timedelta(minutes=5))
    fitted = fit(est)
    assert not (tmp_path / "c.ckpt").exists()
    loaded = pickle.loads(pickle.dumps(fitted))
    images = data()[0]
    np.testing.assert_array_equal(output(loaded, images), output(reference[kind], images))


def test_a_mean_teacher_fit_stopped_mid_epoch_resumes_bitwise_equal(tmp_path, monkeypatch):
    """Unlabelled rows (every target missing) draw a batch per step from the checkpointed
    generators: a fit stopped after any step resumes to the uninterrupted result, and a
    checkpoint of the same data with other rows unlabelled is refused."""
    images, y = data()
    extra = np.random.default_rng(1).integers(0, 256, (12, 32, 32), dtype=np.uint8)
    X = np.concatenate([images, extra])
    semi = y.reindex(range(len(X)))  # NaN at the 12 extra rows: unlabelled
    kw = dict(consistency_weight=1.0, unlabelled_batch_size=4)
    ref = fit(estimator("finetune", **kw), X, semi)
    path = tmp_path / "mt.ckpt"
    save = C.Checkpointer.save

    def save_then_stop(self, loop):
        save(self, loop)
        if loop["step"] == 4:  # inside the second epoch (3 steps each)
            raise KeyboardInterrupt

    monkeypatch.setattr(C.Checkpointer, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        fit(estimator("finetune", checkpoint=path, checkpoint_every=1, **kw), X, semi)
    steps = []

    def recording_save(self, loop):
        steps.append(loop["step"])
        save(self, loop)

    monkeypatch.setattr(C.Checkpointer, "save", recording_save)
    loop = _load(path)["loop"]
    assert loop["epoch"] == 1 and 0 < loop["start"] < N  # stopped inside the 2nd epoch
    other = semi.copy()
    other.iloc[0], other.iloc[-1] = np.nan, y.iloc[0]  # another row unlabelled
    with pytest.raises(ValueError, match="checkpoint=.*training data differ"):
        fit(estimator("finetune", checkpoint=path, **kw), X, other)
    resumed = fit(estimator("finetune", checkpoint=path, checkpoint_every=1, **kw), X, semi)
    _assert_same_fit(resumed, ref, "finetune")
    assert steps[0] == loop["step"] + 1  # it resumed: a fresh start would save step 1 first
    assert not path.exists()
