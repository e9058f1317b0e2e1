"""Data-parallel training under ``torchrun``: one process per device, DDP, synced batch norm.

:class:`~skddh.SimSiamFeaturizer` and :class:`~skddh.FineTuningRegressor` open a
:func:`session` around their training loop. It decides, once per ``fit``:

- **Which group.** A ``torch.distributed`` process group the caller initialised is used as
  it is (and left open). Otherwise, when the environment says ``WORLD_SIZE > 1`` (as
  ``torchrun`` sets it, with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
  ``MASTER_PORT``), a group is initialised from it (``nccl`` on CUDA, ``gloo`` on the CPU)
  and destroyed when ``fit`` ends. A world of one process is the ordinary single-process
  fit, unchanged.
- **Which device.** ``device="auto"`` or ``"cuda"`` becomes ``cuda:LOCAL_RANK`` (and the
  current device); an explicit index is kept.

Inside the loop every rank walks the same sequence of *global* batches, of ``batch_size``
images: the epoch permutation is drawn from a generator seeded identically on every rank
(the seed is broadcast from rank 0, so ``random_state=None`` works too) and advanced once
per epoch, which is what ``DistributedSampler(seed=s).set_epoch(epoch)`` achieves; each rank
then takes its contiguous share of each global batch (:func:`shard`, sizes differing by at
most one). Unlike ``DistributedSampler``, nothing is padded: no image is repeated to even
out the shards, and the loss of a rank is weighted by its share (:func:`loss_scale`), so
the averaged gradient is the gradient of the global batch mean, uneven shards included.
Batch norm layers are synchronised over the global batch (:func:`sync_batchnorm`: torch's
``SyncBatchNorm`` on accelerators, :class:`GlooSyncBatchNorm` on the CPU, where torch's
refuses to run), and put back as plain batch norm layers when ``fit`` ends (:func:`revert`),
so the fitted estimator holds (and pickles) ordinary modules, with no DDP wrapper.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Context:
    """Where this process stands: ``world`` processes, this one ``rank``, on ``device``."""

    world: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        """Whether the fit is data-parallel (more than one process)."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """Whether this process logs, shows progress and writes checkpoints (rank 0)."""
        return self.rank == 0


def _env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _local_device(device: torch.device, rank: int) -> torch.device:
    """``cuda`` without an index -> ``cuda:LOCAL_RANK``, made the current device."""
    if device.type != "cuda":
        return device
    if device.index is None:
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
        device = torch.device("cuda", local)
    torch.cuda.set_device(device)  # NCCL works on the current device
    return device


@contextlib.contextmanager
def session(device_param: str):
    """The :class:`Context` of one fit; initialises (and then destroys) a group if needed.

    Parameters
    ----------
    device_param : str
        The estimator's ``device`` parameter (``"auto"`` resolved here).

    Yields
    ------
    Context
    """
    from skddh.models import _torch as T

    device = T.resolve_device(device_param)
    owned = False
    if dist.is_available() and not dist.is_initialized() and _env_world() > 1:
        device = _local_device(device, int(os.environ.get("RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owned = True
    try:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            rank = dist.get_rank()
            ctx = Context(dist.get_world_size(), rank, _local_device(device, rank))
        else:
            ctx = Context(1, 0, device)
        yield ctx
    finally:
        if owned:
            dist.destroy_process_group()


def _comm_device(ctx: Context) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
    return ctx.device if ctx.device.type == "cuda" else torch.device("cpu")


def shared_seed(ctx: Context, seed: int) -> int:
    """Rank 0's ``seed`` on every rank (each drew its own from ``random_state=None``)."""
    if not ctx.active:
        return seed
    t = torch.tensor([seed], dtype=torch.int64, device=_comm_device(ctx))
    dist.broadcast(t, 0)
    return int(t.item())


def check_same(ctx: Context, n: int, what: str = "images") -> None:
    """Raise ``ValueError`` on every rank unless all ranks were given ``n`` ``what``."""
    if not ctx.active:
        return
    t = torch.tensor([n, -n], dtype=torch.int64, device=_comm_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    hi, lo = int(t[0]), -int(t[1])
    if hi != lo:
        raise ValueError(
            f"Under torch.distributed every rank must fit on the same data: ranks were given "
            f"between {lo} and {hi} {what}. Pass the whole training set to every rank; the "
            "estimator shards it itself."
        )


def check_batch(ctx: Context, batch: int) -> None:
    """A global batch needs at least one image per rank."""
    if ctx.active and batch < ctx.world:
        raise ValueError(
            f"batch_size={batch} (the global batch, capped at the number of images) is "
            f"smaller than the {ctx.world} processes: each rank needs at least one image."
        )


def barrier(ctx: Context) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.active:
        if ctx.device.type == "cuda" and dist.get_backend() == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def min_rows(batch: int, drop_last: bool, world: int = 1) -> int:
    """The smallest global batch an epoch trains on: 2 and one per rank, or all of ``batch``.

    >>> min_rows(32, False), min_rows(32, False, world=4), min_rows(32, True, world=4)
    (2, 4, 32)
    """
    return batch if drop_last else max(2, world)


def steps_per_epoch(n: int, batch: int, drop_last: bool = False, world: int = 1) -> int:
    """Optimiser steps in one pass over ``n`` images, for :func:`min_rows`.

    Equal to :func:`skddh.models._batches.steps_per_epoch` in a single process.

    >>> steps_per_epoch(100, 32), steps_per_epoch(99, 32, world=4)
    (4, 3)
    """
    full, rest = divmod(n, batch)
    return full + (not drop_last and rest >= max(2, world))


def shard(ctx: Context, idx):
    """This rank's contiguous share of a global batch ``idx`` (None stays None).

    >>> shard(Context(2, 1), torch.arange(5)).tolist()
    [3, 4]
    """
    if idx is None or not ctx.active:
        return idx
    return torch.tensor_split(idx, ctx.world)[ctx.rank]


def loss_scale(ctx: Context, local: int, total: int):
    """Factor on a rank's mean loss so that DDP's gradient average is the global mean's.

    DDP averages the ranks' gradients; with ``local`` of ``total`` rows on this rank, the
    global batch mean is ``sum_r local_r / total * loss_r``, i.e. the average over ranks
    of ``world * local_r / total * loss_r``. None in a single process (nothing to scale).
    """
    if not ctx.active:
        return None
    return ctx.world * local / total


def global_sum(ctx: Context, t):
    """``t`` summed over the ranks (in place; ``t`` itself in a single process)."""
    if ctx.active:
        dist.all_reduce(t)
    return t


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a rank's random draws at one step (augmentation, dropout) under DDP.

    A pure function of (seed, rank, step): every rank's stream differs, and a fit resumed
    from rank 0's checkpoint continues each rank's stream without saving it.

    >>> step_seed(0, 0, 5) == step_seed(0, 0, 5) != step_seed(0, 1, 5)
    True
    """
    state = np.random.SeedSequence([int(seed), int(rank), int(step)]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def seed_global(device: torch.device, seed: int) -> None:
    """Seed the global generator that draws on ``device`` (dropout's), and no other.

    ``torch.manual_seed`` would also queue a seeding of every CUDA device, which runs at the
    caller's first CUDA use, outside the fork of :func:`skddh.models._torch.seeded`.
    """
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # the current device: this rank's
    else:
        torch.default_generator.manual_seed(seed)


class Joined(nn.Module):
    """Modules trained together behind one ``forward`` (DDP wraps a single module).

    Parameters
    ----------
    forward : callable
        The computation, on the modules themselves (they are shared, not copied).
    **modules : torch.nn.Module
    """

    def __init__(self, forward, **modules) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(modules)
        self._fn = forward

    def forward(self, *args):
        return self._fn(*args)


def wrap(ctx: Context, module: nn.Module):
    """``module`` in ``DistributedDataParallel`` (None in a single process).

    Construction broadcasts rank 0's parameters and buffers, so every rank starts from the
    same weights (a resumed rank 0's included); each backward then averages the gradients.
    """
    if not ctx.active:
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with statistics over every rank's rows, for CPU training (gloo).

    torch's ``SyncBatchNorm`` refuses CPU tensors. This one reduces the per-channel sums
    and the centred sums of squares (two passes, as batch norm itself computes them) with
    a differentiable all-reduce, so forward and backward match batch norm over the global
    batch up to the order of floating-point additions. Running statistics are updated as
    ``F.batch_norm`` updates them (unbiased variance). Evaluation mode is plain batch norm.
    A converted ``timm`` ``BatchNormAct2d`` keeps its ``drop`` and ``act``.
    """

    def _check_input_dim(self, input) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    @classmethod
    def from_batchnorm(cls, bn):
        """A synchronised twin of ``bn`` sharing its parameters and running buffers."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        if bn.affine:
            new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        for extra in ("drop", "act"):
            if isinstance(getattr(bn, extra, None), nn.Module):
                new.add_module(extra, getattr(bn, extra))
        new.train(bn.training)
        return new

    def _tail(self, y):
        if "drop" in self._modules:
            y = self.drop(y)
        if "act" in self._modules:
            y = self.act(y)
        return y

    def forward(self, x):
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not (batch_stats and dist.is_initialized() and dist.get_world_size() > 1):
            return self._tail(super().forward(x))
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        xf = x.float()
        count = xf.new_full((1,), xf.numel() // xf.shape[1])
        tot = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]))
        n = tot[-1].detach()
        mean = tot[:-1] / n
        xc = xf - mean.view(shape)
        var = _AllReduceSum.apply((xc * xc).sum(dims)) / n
        y = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum
                if f is None:
                    f = 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.mul_(1 - f).add_(unbiased, alpha=f)
        return self._tail(y.to(x.dtype))


def _sync_twin(ctx: Context):
    if ctx.device.type == "cpu":
        return GlooSyncBatchNorm.from_batchnorm
    from timm.layers import convert_sync_batchnorm  # BatchNormAct2d keeps its activation

    return convert_sync_batchnorm


def sync_batchnorm(ctx: Context, *modules) -> list:
    """Swap every batch norm layer of ``modules`` for a synchronised twin, in place.

    The twins share the layers' parameters and buffers (the optimiser, the checkpoint and
    the weight average see the same tensors). Returns what :func:`revert` puts back; an
    empty list in a single process, where nothing changes.
    """
    if not ctx.active:
        return []
    twin = _sync_twin(ctx)
    swapped = []
    for m in modules:
        for parent in list(m.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.modules.batchnorm._BatchNorm):
                    setattr(parent, name, twin(child))
                    swapped.append((parent, name, child))
    return swapped


def revert(swapped: list) -> None:
    """Put back the plain batch norm layers :func:`sync_batchnorm` replaced.

    They share their tensors with the twins, so they hold the trained weights and
    statistics; the caller sets train or eval mode afterwards.
    """
    for parent, name, child in reversed(swapped):
        setattr(parent, name, child)
