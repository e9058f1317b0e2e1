"""Training batches for the torch image estimators: staging, taking a batch, squaring, steps.

One place for what :class:`~skddh.SimSiamFeaturizer` and :class:`~skddh.FineTuningRegressor`
both do with an :class:`~skddh.models._images.ImageSource`, so their inputs cannot drift apart
(the same image must reach both networks the same way).
"""

from __future__ import annotations

import numpy as np

# Keep resident-on-GPU uint8 data under this share of free device memory.
RESIDENT_SHARE = 0.4
# Decode a lazy array-like once when it is at most this large (bytes), else stream it.
MATERIALIZE_BYTES = 8 * 2**30


def steps_per_epoch(n: int, batch: int) -> int:
    """Optimiser steps in one pass over ``n`` images: a last batch of one image is skipped.

    Batch norm cannot train on one image; every other remainder is a step of its own.

    >>> steps_per_epoch(100, 32), steps_per_epoch(97, 32), steps_per_epoch(96, 32)
    (4, 3, 3)
    """
    full, rest = divmod(n, batch)
    return full + (rest >= 2)


def epoch_batches(order, batch: int):
    """The index batches of one epoch, in order, without a trailing batch of one image."""
    n = len(order)
    return [order[s : s + batch] for s in range(0, n, batch) if min(batch, n - s) >= 2]


def stage(src, device):
    """Put the training images where batches are cheapest to take from (None: stream them)."""
    import torch

    if src.paths is not None:
        return None  # streamed from disk per batch
    if not src.in_memory:
        if src.nbytes > MATERIALIZE_BYTES:
            return None
        src.materialize()
    arr = np.ascontiguousarray(src.array)
    if arr.ndim == 3:
        arr = arr[:, None]
    t = torch.from_numpy(arr)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if t.nbytes < RESIDENT_SHARE * free:
            return t.to(device)  # uint8 stays uint8 on the GPU: 4x less than float
        return t.pin_memory()
    return t


def square(x, size: int):
    """Letterbox a float batch (b, C, H, W) to (b, C, size, size): pad to square, then resize.

    Padding is centred and black, as :func:`skddh.datasets.load_image_table` letterboxes
    files: an array that is not square keeps its aspect ratio, hence its angles (stretching
    it would change Graf's alpha and beta).
    """
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    if h != w:
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        x = F.pad(x, (left, side - w - left, top, side - h - top))
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x


def take(data, src, idx, device, size: int):
    """A float [0, 1] batch of images ``idx`` (a CPU index tensor), square at ``size``."""
    import torch

    if data is None:  # files and lazy arrays read fastest in index order; give idx's order
        idx = idx.numpy()
        order = np.argsort(idx, kind="stable")
        x = torch.from_numpy(src.read(idx[order]))[torch.from_numpy(np.argsort(order))]
    else:
        x = data[idx.to(data.device)]
    x = x.to(device, non_blocking=True).float() / src.scale()
    return square(x, size)


def read(src, sl, device, size: int):
    """Images ``sl`` (a slice) for inference: float [0, 1], square at ``size``, on ``device``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(src.read(sl)))
    return square(x.to(device, non_blocking=True).float() / src.scale(), size)
