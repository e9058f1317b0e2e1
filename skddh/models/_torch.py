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


@contextlib.contextmanager
def seeded(seed: int):
    """Run code that draws from the global RNG (timm's weight init) without leaking state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is a device out-of-memory error."""
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom) or "out of memory" in str(exc).lower()


def cpu_state(module):
    """A CPU copy of a module for pickling, so a GPU-fitted model loads without CUDA."""
    if module is None:
        return None
    try:
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        on_cpu = on_cpu and all(b.device.type == "cpu" for b in module.buffers())
    except AttributeError:
        return module
    return module if on_cpu else copy.deepcopy(module).to("cpu")


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """float32 numpy array from any tensor."""
    return t.detach().to("cpu", torch.float32).numpy()
