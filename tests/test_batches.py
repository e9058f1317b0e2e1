"""Tests of skddh.models._batches and the lazy reads under it: chunk-aligned reads of large
lazy arrays, the chunk-wise epoch order, the background read of the next batch, one decoding
pool per source, and the padding that keeps a compiled network at one shape (CPU)."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from skddh.models import _batches as B
from skddh.models._images import ImageSource


class _Lazy:
    """A lazy array-like of (n, 8, 8) uint8 images stored in chunks of ``k``; counts reads."""

    def __init__(self, n=40, k=8):
        self.data = np.arange(n * 64, dtype=np.int64).reshape(n, 8, 8).astype(np.uint8)
        self.data[:, 0, 0] = np.arange(n)  # the image's own number
        self.shape, self.dtype, self.chunks = self.data.shape, self.data.dtype, (k, 8, 8)
        self.reads, self.threads = [], set()

    def __getitem__(self, index):
        self.reads.append(index)
        self.threads.add(threading.current_thread().name)
        return self.data[index]


def _streamed(lazy, monkeypatch):
    monkeypatch.setattr(B, "MATERIALIZE_BYTES", 0)  # "larger than memory": streamed
    src = ImageSource(lazy, 8)
    batches = B.stage(src, torch.device("cpu"))
    assert batches.data is None
    return src, batches


def test_lazy_arrays_are_read_one_slice_per_chunk():
    lazy = _Lazy(k=8)
    src = ImageSource(lazy, 8)
    index = np.array([17, 3, 22, 4, 16, 5])  # chunks 2, 0, 2, 0, 2, 0
    got = src.read(index)
    np.testing.assert_array_equal(got[:, 0, 0, 0], index)
    assert lazy.reads == [slice(3, 6), slice(16, 23)]  # not one read per image
    del lazy.chunks  # without chunk information: one slice per run of consecutive rows
    lazy.reads = []
    np.testing.assert_array_equal(src.read(index)[:, 0, 0, 0], index)
    assert lazy.reads == [slice(3, 6), slice(16, 18), slice(22, 23)]


def test_streamed_epochs_shuffle_whole_chunks_and_arrays_keep_randperm(monkeypatch):
    src, batches = _streamed(_Lazy(n=40, k=8), monkeypatch)
    order = B.epoch_order(batches, 40, torch.Generator().manual_seed(0), 16)
    assert sorted(order.tolist()) == list(range(40))
    for s in range(0, 40, 16):  # a batch of 16 spans at most 16 / 8 + 1 chunks
        assert len(set((order[s : s + 16] // 8).tolist())) <= 3
    rows = torch.arange(10, 30)  # a subset (a validation split left out) keeps to its rows
    sub = B.epoch_order(batches, 20, torch.Generator().manual_seed(0), 8, rows=rows)
    assert sorted(sub.tolist()) == rows.tolist()
    in_memory = B.stage(ImageSource(np.zeros((40, 8, 8), np.uint8), 8), torch.device("cpu"))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(B.epoch_order(in_memory, 40, g1, 16), torch.randperm(40, generator=g2))


def test_the_next_batch_is_read_in_the_background(monkeypatch):
    lazy = _Lazy(n=40, k=8)
    src, batches = _streamed(lazy, monkeypatch)
    first, second = torch.arange(0, 8), torch.arange(8, 16)
    x = batches.take(first, 8, ahead=second)
    assert x.shape == (8, 1, 8, 8) and x.dtype == torch.float32
    y = batches.take(second, 8)
    np.testing.assert_allclose(y[:, 0, 0, 0].numpy() * 255, np.arange(8, 16))
    assert any(name.startswith("skddh-prefetch") for name in lazy.threads)
    # A hint the loop did not follow (the batch was halved): waited for, dropped, reread.
    batches.take(torch.arange(16, 24), 8, ahead=torch.arange(24, 32))
    z = batches.take(torch.arange(24, 28), 8)
    np.testing.assert_allclose(z[:, 0, 0, 0].numpy() * 255, np.arange(24, 28))
    assert B.next_batch(torch.arange(40), 32, 8) is None  # nothing after the last batch


def test_files_decode_on_one_pool_per_source(tmp_path):
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((8, 8), 10 * i, np.uint8)).save(paths[-1])
    src = ImageSource([str(p) for p in paths], 8)
    a = src.read(np.arange(4))
    pool = src._pool
    b = src.read(slice(0, 4))
    assert src._pool is pool  # not a new pool per batch
    np.testing.assert_array_equal(a, b)
    assert pool is None or not pool._shutdown


@pytest.mark.parametrize("rows", [3, 8])
def test_pad_rows_keeps_the_real_rows(rows):
    x = torch.rand(rows, 1, 4, 4)
    padded = B.pad_rows(x, 8)
    assert padded.shape == (8, 1, 4, 4)
    assert torch.equal(padded[:rows], x)
