"""Torch plumbing shared by the estimators: device, precision, seeding, pickling to CPU.

torch is imported lazily by the estimators (``import skddh`` stays fast); this module is
imported only from inside their methods.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other strings as torch reads them."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but CUDA is not available here.")
    return dev


def resolve_dtype(precision: str, device: torch.device):
    """Autocast dtype: bf16 on CUDA for ``"auto"``/``"bf16"``, else None (float32)."""
    if precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype):
    """Autocast context when ``dtype`` is set, else a no-op."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_from(random_state) -> int:
    """A 63-bit seed from an int, a RandomState or None (scikit-learn's convention)."""
    from sklearn.utils import check_random_state

    return int(check_random_state(random_state).randint(0, 2**31 - 1))


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A local generator on ``device``: the global torch RNG is never touched."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _forked_devices() -> list[int]:
    """Every CUDA device when CUDA is initialised (its RNG is live), else none."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


@contextlib.contextmanager
def seeded(seed: int):
    """Run code that draws from the global RNG (timm's weight init) without leaking state.

    The CPU generator and, once CUDA is initialised, every CUDA device's generator are
    seeded inside and restored on exit. ``torch.manual_seed`` would also seed CUDA, but
    ``fork_rng(devices=[])`` restores only the CPU, so the caller's CUDA RNG was overwritten;
    and before CUDA is initialised it queues a lazy CUDA seeding that would run at the
    caller's first CUDA use. So: fork every CUDA device when CUDA is initialised (the
    estimators move their network to the device before the training loop's ``seeded``),
    else seed the CPU generator alone and leave CUDA untouched.
    """
    devices = _forked_devices()
    with torch.random.fork_rng(devices=devices):
        if devices:
            torch.manual_seed(seed)  # CPU and every CUDA device; fork_rng restores them all
        else:
            torch.default_generator.manual_seed(seed)
        yield


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is a device out-of-memory error.

    cuBLAS and cuDNN report a failed workspace or handle allocation as ``*_ALLOC_FAILED``,
    not as torch's ``OutOfMemoryError``; a smaller batch is the cure for those too.
    """
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    text = str(exc).lower()
    return isinstance(exc, oom) or "out of memory" in text or "status_alloc_failed" in text


def release_after_oom(exc: BaseException, device: torch.device) -> None:
    """Free what a failed step still holds, so the retry at half the batch can use it.

    The exception's traceback keeps the failed step's frames, and with them its
    activations, alive until the ``except`` block ends: drop it before emptying the cache.
    """
    exc.__traceback__ = None
    if device.type == "cuda":
        torch.cuda.empty_cache()


class BatchNormGuard:
    """Snapshot and restore the running statistics of every batch-norm layer of ``modules``.

    A step that runs out of memory after (part of) its forward pass has already updated
    ``running_mean``, ``running_var`` and ``num_batches_tracked``; retried at half the
    batch, the same images would count twice. :meth:`save` before each step and
    :meth:`restore` on out-of-memory undo that. The copies are preallocated once and
    moved with one fused ``_foreach_copy_`` per call (not one kernel per buffer), so a
    step pays a few microseconds for the guard.

    Parameters
    ----------
    *modules : torch.nn.Module
        The modules trained by the step (their batch-norm layers, at any depth).
    """

    def __init__(self, *modules) -> None:
        bn = torch.nn.modules.batchnorm._NormBase
        self.buffers = [
            b
            for m in modules
            for layer in m.modules()
            if isinstance(layer, bn) and layer.track_running_stats
            for b in (layer.running_mean, layer.running_var, layer.num_batches_tracked)
            if b is not None
        ]
        self.copies = [torch.empty_like(b) for b in self.buffers]

    @torch.no_grad()
    def save(self) -> None:
        """Copy the running statistics aside (before a step)."""
        if self.buffers:
            torch._foreach_copy_(self.copies, self.buffers)

    @torch.no_grad()
    def restore(self) -> None:
        """Put the statistics saved by :meth:`save` back (after a failed step)."""
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.copies)


def cpu_state(module):
    """A CPU copy of a module for pickling, so a GPU-fitted model loads without CUDA.

    A module already on the CPU is returned as is (no copy); see :func:`cpu_copy`.
    """
    if module is None:
        return None
    try:
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        on_cpu = on_cpu and all(b.device.type == "cpu" for b in module.buffers())
    except AttributeError:
        return module
    return module if on_cpu else cpu_copy(module)


def cpu_copy(module):
    """A deep copy of ``module`` whose parameters and buffers are CPU copies of its own.

    ``copy.deepcopy(module).to("cpu")`` first copies every tensor on its device: twice the
    model's GPU memory on every pickle. Here each parameter and buffer is copied straight to
    the CPU, tensor by tensor, and ``deepcopy`` is handed those copies through its memo
    (keyed by ``id``), so it copies only the Python structure around them; a tensor shared
    by two layers stays shared. Gradients are not copied (a fitted model has none worth
    keeping). The original is not modified.
    """
    memo: dict = {}
    tensors = [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]
    for _, t in tensors:
        if t is None or id(t) in memo:
            continue
        c = t.detach().to("cpu", copy=True)
        if isinstance(t, torch.nn.Parameter):
            c = torch.nn.Parameter(c, requires_grad=t.requires_grad)
        memo[id(t)] = c
    # A tensor held as a plain attribute (not a parameter or buffer) is rare; deepcopy copies
    # it where it lives, and it is left there.
    return copy.deepcopy(module, memo)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """float32 numpy array from any tensor."""
    return t.detach().to("cpu", torch.float32).numpy()
