"""Checkpoint and resume for the torch training loops: a killed fit continues where it died.

:class:`~skddh.SimSiamFeaturizer` and :class:`~skddh.FineTuningRegressor` take ``checkpoint``
(a file path) and ``checkpoint_every`` (optimisation steps, or a :class:`datetime.timedelta`).
A :class:`Checkpointer` writes, every ``checkpoint_every`` and at the end of every epoch,
everything the rest of the fit depends on:

- the state dicts of the networks, the optimiser and the weight average (batch-norm
  statistics, momentum and Adam moments included);
- every random generator the loop draws from (the local CPU and device generators, and the
  global torch RNG where dropout draws from it);
- the loop's position: epoch, step, position in the epoch, the epoch's permutation, the
  batch size and schedule length (an out-of-memory halving changes both), the losses of the
  epoch so far and the history of the finished epochs;
- a fingerprint of the parameters and of the training data, so that a checkpoint from a
  different fit is refused (``ValueError`` naming ``checkpoint``) instead of resumed.

Writes are atomic (:func:`skddh._atomic.atomic_write`: a temporary file, fsynced, then
renamed over the checkpoint), so a process killed at any moment leaves either the previous
checkpoint or the new one, complete; a stale temporary file is removed, never loaded. Loading
uses ``torch.load(weights_only=True)`` (tensors and plain containers only: no code runs) onto
the CPU, so a checkpoint written on a GPU loads on a machine without one. On the CPU, the
resumed fit ends bitwise equal to the uninterrupted one (same weights, same history losses);
a checkpoint written on another device type resumes with a warning, since its device
generator cannot be carried over (the augmentation stream is reseeded).

In a distributed fit (:mod:`skddh.models._distributed`) only rank 0 writes (and deletes)
the file and every rank resumes from it; the loop's position counts global batches, and the
ranks' random streams are functions of the step, so rank 0's file is all they need.

The file is deleted when the fit ends: the fitted estimator is the result, the checkpoint
only its insurance. A fit killed after its last epoch's checkpoint resumes into the end of
the loop and returns the same estimator.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import time
import warnings
from pathlib import Path

import numpy as np

from skddh._atomic import atomic_write

FORMAT = 1
# Parameters that do not change what a fit computes (or, for ``device``, that a resume on
# another machine may change: see the module docstring).
_NOT_FINGERPRINTED = frozenset({"checkpoint", "checkpoint_every", "verbose", "device"})
# Arrays up to this size are hashed whole; larger and lazy ones by a sample of rows.
_HASH_WHOLE_BYTES = 256 * 2**20
_HASH_ROWS = 64


def _hash_tensors(h, tensors) -> None:
    import torch

    for t in tensors:
        t = t.detach().to("cpu").reshape(-1)
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())


def data_hash(src, *arrays) -> str:
    """A cheap hash of the training images (``src``, an ImageSource) and of target arrays.

    Shape and dtype always; in-memory arrays up to 256 MiB whole, larger or lazy ones by
    64 evenly spaced images; file paths by their names, sizes and modification times.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(int(s) for s in src.shape), str(src.dtype))).encode())
    if src.paths is not None:
        for p in src.paths:
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    elif src.in_memory and src.nbytes <= _HASH_WHOLE_BYTES:
        h.update(np.ascontiguousarray(src.array).tobytes())
    else:
        rows = np.unique(np.linspace(0, src.n - 1, min(src.n, _HASH_ROWS)).astype(np.int64))
        h.update(np.ascontiguousarray(src.read(rows)).tobytes())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(repr((a.shape, str(a.dtype))).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fingerprint(estimator, seed, src, *arrays, encoder=None) -> dict:
    """What a checkpoint must match to be resumed: parameters (as reprs) and training data.

    ``random_state`` enters as the resolved ``seed`` (None stays None: an unseeded fit
    resumes from its own checkpoint); an ``encoder`` estimator parameter as a hash of the
    fitted encoder's weights.
    """
    params = {}
    for name, value in sorted(estimator.get_params(deep=False).items()):
        if name in _NOT_FINGERPRINTED:
            continue
        if name == "random_state":
            value = None if value is None else int(seed)
        elif name == "encoder" and value is not None:
            h = hashlib.blake2b(digest_size=16)
            if encoder is not None:
                state = encoder.encoder_.state_dict()
                h.update(repr(list(state)).encode())
                _hash_tensors(h, state.values())
            value = f"{type(value).__name__}:{h.hexdigest()}"
        params[name] = repr(value)
    return {
        "format": FORMAT,
        "estimator": type(estimator).__name__,
        "params": params,
        "data": data_hash(src, *arrays),
    }


def _plain(obj):
    """numpy scalars to Python ones, recursively: ``weights_only`` loads plain containers."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):  # state dicts are OrderedDicts with versions in _metadata
        out = {k: _plain(v) for k, v in obj.items()}
        out = out if type(obj) is dict else type(obj)(out)
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


class GlobalRNG:
    """The global torch RNG (CPU, and CUDA on a CUDA device) as a state_dict-able object.

    Dropout draws from it; the fine-tuning loop forks it (``_torch.seeded``), and a resume
    must continue its stream.
    """

    def __init__(self, device):
        self.device = device

    def state_dict(self):
        import torch

        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state):
        import torch

        torch.set_rng_state(state["cpu"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)


class Checkpointer:
    """Saves and restores one training loop's state (a no-op when ``path`` is None).

    Parameters
    ----------
    path : str, PathLike or None
        The checkpoint file (its directory must exist).
    every : int or datetime.timedelta
        Save after every ``every``-th optimisation step (int), or after the first step
        that ends at least ``every`` after the last save (timedelta).
    fingerprint : dict or callable
        :func:`fingerprint` of this fit, or a function computing it (called only when
        ``path`` is set: hashing the data is skipped otherwise).
    device : torch.device
        The device the fit runs on.
    write : bool, default=True
        False on the ranks of a distributed fit other than rank 0: they :meth:`restore`
        from the file but never save to it, remove temporaries or delete it.
    **stateful
        Objects with ``state_dict``/``load_state_dict`` (modules, optimisers,
        :class:`GlobalRNG`) and ``torch.Generator`` objects, saved under these names.
    """

    def __init__(self, path, every, fingerprint, device, write=True, **stateful):
        self.path = None if path is None else Path(os.fspath(path))
        self.write = bool(write)
        self.every = every
        self.device = device
        self.stateful = stateful
        self.fingerprint = None
        if self.path is not None:
            if self.path.is_dir() or not self.path.parent.is_dir():
                what = "is a directory" if self.path.is_dir() else "is in no existing directory"
                raise ValueError(
                    f"checkpoint={str(path)!r} {what}: pass a file path in an existing one."
                )
            self.fingerprint = fingerprint() if callable(fingerprint) else fingerprint
        self._last = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def _stale_temporaries(self):
        return self.path.parent.glob(f".{self.path.name}.*.tmp")

    def _remove_stale_temporaries(self) -> None:
        # atomic_write's temporary files: one is left only by a process killed mid-write.
        for tmp in self._stale_temporaries():
            with contextlib.suppress(OSError):
                tmp.unlink()

    def restore(self) -> dict | None:
        """Load the checkpoint into the stateful objects; return the loop state, or None.

        None when checkpointing is off or no checkpoint exists yet. A checkpoint of another
        fit raises ``ValueError`` (naming ``checkpoint``); so does a file that is not one.
        """
        if self.path is None:
            return None
        if self.write:
            self._remove_stale_temporaries()
        if not self.path.is_file():
            return None
        import torch

        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ValueError(
                f"checkpoint={str(self.path)!r} exists but is not a readable checkpoint "
                f"({type(exc).__name__}: {first}); delete it or choose another path."
            ) from exc
        if not isinstance(saved, dict) or "fingerprint" not in saved:
            raise ValueError(
                f"checkpoint={str(self.path)!r} exists but is not an skddh checkpoint; "
                "delete it or choose another path."
            )
        self._check(saved["fingerprint"])
        same_device = saved["device_type"] == self.device.type
        for name, obj in self.stateful.items():
            state = saved["state"][name]
            if hasattr(obj, "set_state"):  # a torch.Generator
                # A generator's state cannot change device type (CUDA's is not CPU's):
                # the fit's own generator then keeps its fresh seed.
                if state["device_type"] == obj.device.type:
                    obj.set_state(state["state"])
            elif isinstance(obj, GlobalRNG) and not same_device:
                obj.load_state_dict({"cpu": state["cpu"]})
            else:
                obj.load_state_dict(state)
        if not same_device:
            warnings.warn(
                f"checkpoint={str(self.path)!r} was written on {saved['device_type']} and "
                f"resumes on {self.device.type}: weights, optimiser and schedule continue, "
                "but the device's random stream starts afresh (the result is not the one "
                "an uninterrupted fit would give).",
                RuntimeWarning,
                stacklevel=3,
            )
        self._last = time.monotonic()
        return saved["loop"]

    def _check(self, found) -> None:
        want = self.fingerprint
        if found == want:
            return
        if not isinstance(found, dict) or found.get("format") != want["format"]:
            why = "it was written by another version of the checkpoint format"
        elif found.get("estimator") != want["estimator"]:
            why = f"it was written by {found.get('estimator')}, not {want['estimator']}"
        elif found.get("params") != want["params"]:
            a, b = found.get("params", {}), want["params"]
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            shown = ", ".join(f"{k}: {a.get(k, '?')} there, {b.get(k, '?')} here" for k in diff)
            why = f"its parameters differ ({shown})"
        else:
            why = "its training data differ (shape, dtype or content)"
        raise ValueError(
            f"checkpoint={str(self.path)!r} belongs to a different fit: {why}. Delete it, "
            "choose another checkpoint path, or fit with the same parameters and data."
        )

    def due(self, step: int) -> bool:
        """Whether to save after optimisation step ``step`` (counted from 1)."""
        if self.path is None or not self.write:
            return False
        if isinstance(self.every, datetime.timedelta):
            return time.monotonic() - self._last >= self.every.total_seconds()
        return step % int(self.every) == 0

    def save(self, loop: dict) -> None:
        """Write the stateful objects and ``loop`` (tensors and plain values), atomically."""
        if self.path is None or not self.write:
            return
        import torch

        state = {}
        for name, obj in self.stateful.items():
            if hasattr(obj, "get_state"):  # a torch.Generator
                state[name] = {"device_type": obj.device.type, "state": obj.get_state()}
            else:
                state[name] = obj.state_dict()
        payload = {
            "fingerprint": self.fingerprint,
            "device_type": self.device.type,
            "state": _plain(state),  # an optimiser's lr may be a numpy float
            "loop": _plain(loop),
        }
        with atomic_write(self.path, "wb") as f:
            torch.save(payload, f)
        self._last = time.monotonic()

    def finish(self) -> None:
        """The fit succeeded: delete the checkpoint (and any stale temporary file)."""
        if self.path is None or not self.write:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._remove_stale_temporaries()
