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


def test_seeded_forks_cuda_only_once_it_is_live(monkeypatch):
    """``fork_rng(devices=[])`` restored only the CPU: a live CUDA RNG must be forked too,
    and before CUDA starts no lazy CUDA seeding may be queued for the caller's first use."""
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    if tracker is not None and not torch.cuda.is_initialized():
        before = tracker.get_calls()
        with T.seeded(3):
            torch.rand(1)
        assert tracker.get_calls() == before
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert T._forked_devices() == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert T._forked_devices() == [0, 1]


def _net():
    with T.seeded(0):
        nn = torch.nn
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2))


def test_cpu_copy_copies_tensor_by_tensor_never_the_module_on_its_device(monkeypatch):
    """A GPU module was deep-copied on the GPU before moving (twice its memory)."""
    net = _net()
    net[0].weight.requires_grad_(False)
    shared = torch.nn.ModuleList([net, torch.nn.Linear(2, 2)])
    shared[1].weight = net[3].weight  # one tensor in two places stays one tensor
    expected = {k: v.clone() for k, v in shared.state_dict().items()}

    def refuse(self, memo):
        raise AssertionError("a tensor was deep-copied where it lives")

    monkeypatch.setattr(torch.Tensor, "__deepcopy__", refuse)
    monkeypatch.setattr(torch.nn.Parameter, "__deepcopy__", refuse)
    copy = T.cpu_copy(shared)
    assert copy is not shared and copy[0][0] is not net[0]
    assert copy[1].weight is copy[0][3].weight
    assert not copy[0][0].weight.requires_grad and copy[0][3].weight.requires_grad
    for k, v in copy.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(v, expected[k])
        assert v.data_ptr() != shared.state_dict()[k].data_ptr()  # a copy, not a view


def test_batch_norm_guard_restores_running_statistics():
    net = _net().train()
    guard = T.BatchNormGuard(net)
    assert len(guard.buffers) == 3  # running_mean, running_var, num_batches_tracked
    before = [b.clone() for b in guard.buffers]
    guard.save()
    net(torch.rand(4, 1, 6, 6) * 9)  # a step that then runs out of memory
    assert not torch.equal(guard.buffers[0], before[0])
    guard.restore()
    assert all(torch.equal(b, c) for b, c in zip(guard.buffers, before))
