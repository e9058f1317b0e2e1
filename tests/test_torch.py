"""Tests of skddh.models._torch: device and precision resolution, local seeding, CPU pickling."""

import pytest
import torch

from skddh.models import _torch as T


def test_resolve_device_and_dtype():
    assert T.resolve_device("cpu").type == "cpu"
    assert T.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            T.resolve_device("cuda")
    cpu = torch.device("cpu")
    assert T.resolve_dtype("auto", cpu) is None
    assert T.resolve_dtype("bf16", cpu) is torch.bfloat16
    assert T.resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert T.resolve_dtype("fp32", torch.device("cuda")) is None


def test_seeded_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with T.seeded(7):
        a = torch.rand(2)
    assert torch.equal(torch.rand(3), expected)
    with T.seeded(7):
        assert torch.equal(torch.rand(2), a)


def test_is_oom_and_cpu_state():
    assert T.is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not T.is_oom(RuntimeError("shape mismatch"))
    m = torch.nn.Linear(2, 2)
    assert T.cpu_state(m) is m  # already on the CPU: no copy
    assert T.cpu_state(None) is None
