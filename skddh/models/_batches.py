"""Training batches for the torch image estimators: staging, taking a batch, squaring, steps.

One place for what :class:`~skddh.SimSiamFeaturizer` and :class:`~skddh.FineTuningRegressor`
both do with an :class:`~skddh.models._images.ImageSource`, so their inputs cannot drift apart
(the same image must reach both networks the same way).
"""

from __future__ import annotations

import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Keep resident-on-GPU uint8 data under this share of free device memory.
RESIDENT_SHARE = 0.4
# Decode a lazy array-like once when it is at most this large (bytes), else stream it.
MATERIALIZE_BYTES = 8 * 2**30


def steps_per_epoch(n: int, batch: int, drop_last: bool = False) -> int:
    """Optimiser steps in one pass over ``n`` images: a last batch of one image is skipped.

    Batch norm cannot train on one image; every other remainder is a step of its own, unless
    ``drop_last`` (a compiled step, whose shapes must not change: see
    :func:`min_batch_rows`).

    >>> steps_per_epoch(100, 32), steps_per_epoch(97, 32), steps_per_epoch(96, 32)
    (4, 3, 3)
    >>> steps_per_epoch(100, 32, drop_last=True)
    3
    """
    full, rest = divmod(n, batch)
    return full + (not drop_last and rest >= 2)


def min_batch_rows(batch: int, drop_last: bool = False) -> int:
    """The smallest batch an epoch still trains on: 2 (batch norm), or all of ``batch``.

    >>> min_batch_rows(32), min_batch_rows(32, drop_last=True)
    (2, 32)
    """
    return batch if drop_last else 2


def epoch_batches(order, batch: int):
    """The index batches of one epoch, in order, without a trailing batch of one image."""
    n = len(order)
    return [order[s : s + batch] for s in range(0, n, batch) if min(batch, n - s) >= 2]


def next_batch(order, start: int, batch: int, drop_last: bool = False):
    """The indices of the batch after the one at ``start`` (for reading ahead), or None.

    >>> import torch
    >>> order = torch.arange(10)
    >>> next_batch(order, 4, 4).tolist(), next_batch(order, 4, 4, drop_last=True)
    ([8, 9], None)
    """
    nxt = start + batch
    if nxt + min_batch_rows(batch, drop_last) > len(order):
        return None
    return order[nxt : nxt + batch]


def epoch_order(batches, n: int, gen, batch: int, rows=None):
    """The shuffled order of one epoch's images (``rows``, default ``0..n-1``).

    A random permutation, drawn from ``gen`` exactly as ``torch.randperm(n, generator=gen)``,
    except for a lazy array-like too large to decode at once (streamed): there, a random
    batch would touch a different storage chunk per image and decode (or render) a whole
    chunk for each. Its chunks are shuffled instead, then the images within each window of
    ``batch`` rows, so a batch reads about ``batch / chunk + 1`` chunks, each once per epoch
    (the shuffle of webdataset shards or a shuffle buffer, at chunk granularity).
    """
    import torch

    src = batches.src
    k = src.chunk_rows if batches.data is None and src.paths is None else 1
    if k <= 1 or n <= k:
        perm = torch.randperm(n, generator=gen)
        return perm if rows is None else rows[perm]
    r = torch.arange(n) if rows is None else rows
    _, chunk = torch.unique(r // k, return_inverse=True)
    n_chunks = int(chunk.max()) + 1
    rank = torch.empty(n_chunks, dtype=torch.long)
    rank[torch.randperm(n_chunks, generator=gen)] = torch.arange(n_chunks)
    grouped = r[torch.argsort(rank[chunk], stable=True)]
    window = torch.arange(n, dtype=torch.float64) // batch
    jitter = torch.rand(n, generator=gen, dtype=torch.float64)  # in [0, 1): stays in its window
    return grouped[torch.argsort(window + jitter)]


class Batches:
    """Where one fit takes its training batches from, and how they reach the device.

    Made by :func:`stage`. ``data`` is the images as a tensor (on the device, in pinned host
    memory, or on the CPU for CPU training), or None when they are streamed from files or a
    large lazy array-like (:class:`~skddh.models._images.ImageSource`).

    On CUDA, a batch gathered on the host goes through one of two preallocated pinned
    buffers, so that ``non_blocking=True`` is a real asynchronous copy: indexing a pinned
    tensor returns an unpinned one, and a copy from pageable memory blocks the host. Before
    a buffer is written again, the event recorded after its last copy is waited on (two
    buffers: that copy was issued a whole step earlier, so the wait is normally nil).

    Streamed images are read by one background thread: :meth:`take` given the next batch's
    indices (``ahead``) starts reading them while the current batch trains; a hint that
    turns out wrong (the batch was halved after an out-of-memory error) is waited for and
    dropped. File decoding itself runs on the source's thread pool, one for the whole fit.
    """

    def __init__(self, src, device, data) -> None:
        self.src, self.device, self.data = src, device, data
        self.cuda = device.type == "cuda"
        self._bufs: list = [None, None]
        self._events: list = [None, None]
        self._next = 0
        self._ahead = None  # (indices, Future) of the batch being read in the background
        self._reader = None

    def take(self, idx, size: int, ahead=None):
        """A float [0, 1] batch of images ``idx`` (a CPU index tensor), square at ``size``."""
        data = self.data
        if data is not None and (data.is_cuda or not self.cuda):  # on the GPU, or CPU training
            x = data[idx.to(data.device)]
        else:
            buf, k = self._host(idx)
            x = buf.to(self.device, non_blocking=True)
            if k is not None:
                import torch

                ev = torch.cuda.Event()
                ev.record()  # after the copy on this stream: the buffer is free once it fires
                self._events[k] = ev
        if ahead is not None and self.data is None and len(ahead) > 0:
            self._read_ahead(ahead)
        return square(x.float() / self.src.scale(), size)

    def _host(self, idx):
        """Images ``idx`` on the host: in a pinned buffer (and its number) on CUDA."""
        import torch

        if self.data is not None:  # pinned, too large for the GPU: gather straight into a buffer
            buf, k = self._buffer(len(idx), self.data.shape[1:], self.data.dtype)
            torch.index_select(self.data, 0, idx, out=buf)
            return buf, k
        t = torch.from_numpy(np.ascontiguousarray(self._read(idx)))
        if not self.cuda:
            return t, None
        buf, k = self._buffer(len(t), t.shape[1:], t.dtype)
        buf.copy_(t)
        return buf, k

    def _buffer(self, rows: int, shape, dtype):
        import torch

        k, self._next = self._next, 1 - self._next
        if self._events[k] is not None:
            self._events[k].synchronize()  # its last host-to-device copy has finished
            self._events[k] = None
        buf = self._bufs[k]
        if buf is None or len(buf) < rows or buf.shape[1:] != shape or buf.dtype != dtype:
            buf = torch.empty((rows, *shape), dtype=dtype, pin_memory=True)
            self._bufs[k] = buf
        return buf[:rows], k

    def _read(self, idx) -> np.ndarray:
        """Images ``idx`` from the source, from the background read when it was these."""
        import torch

        pending, self._ahead = self._ahead, None
        if pending is not None:
            want, future = pending
            if torch.equal(want, idx):
                return future.result()  # its error, if any, is this batch's: raised here
            if not future.cancel():
                future.exception()  # wait: the source is not read by two threads at once
        return self.src.read(idx.numpy())

    def _read_ahead(self, idx) -> None:
        if self._ahead is not None:  # a hint never taken: finish it before the next
            self._read(self._ahead[0])
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="skddh-prefetch")
            weakref.finalize(self, self._reader.shutdown, wait=False)
        idx = idx.clone()
        self._ahead = (idx, self._reader.submit(self.src.read, idx.numpy()))


def stage(src, device) -> Batches:
    """Put the training images where batches are cheapest to take from (data None: stream)."""
    import torch

    if src.paths is not None:
        return Batches(src, device, None)  # streamed from disk, batch by batch
    if not src.in_memory:
        if src.nbytes > MATERIALIZE_BYTES:
            return Batches(src, device, None)
        src.materialize()
    arr = np.ascontiguousarray(src.array)
    if arr.ndim == 3:
        arr = arr[:, None]
    t = torch.from_numpy(arr)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if t.nbytes < RESIDENT_SHARE * free:
            return Batches(src, device, t.to(device))  # uint8 stays uint8 on the GPU
        return Batches(src, device, t.pin_memory())
    return Batches(src, device, t)


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


def take(batches, src, idx, device, size: int, ahead=None):
    """A float [0, 1] batch of images ``idx`` (a CPU index tensor), square at ``size``.

    ``batches`` comes from :func:`stage`; ``ahead``, the next batch's indices when known,
    starts reading them in the background (streamed images only).
    """
    if not isinstance(batches, Batches):  # a bare tensor or None: no state to read ahead into
        return Batches(src, device, batches).take(idx, size)
    return batches.take(idx, size, ahead)


def read(src, sl, device, size: int):
    """Images ``sl`` (a slice) for inference: float [0, 1], square at ``size``, on ``device``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(src.read(sl)))
    if device.type == "cuda":
        # From pageable memory the copy blocks the host; pinned (torch's caching host
        # allocator: no cudaHostAlloc per batch, and it keeps the block until the copy is
        # done) it is asynchronous.
        x = x.pin_memory()
    return square(x.to(device, non_blocking=True).float() / src.scale(), size)


def pad_rows(x, rows: int):
    """``x`` with zero rows appended up to ``rows`` (a compiled network sees one shape).

    >>> import torch
    >>> pad_rows(torch.ones(2, 3), 4).tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    import torch

    if len(x) >= rows:
        return x
    return torch.cat([x, x.new_zeros((rows - len(x), *x.shape[1:]))])
