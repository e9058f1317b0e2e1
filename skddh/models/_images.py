"""Image inputs for the torch estimators: arrays, lazy array-likes and file paths, in batches.

A registry of 50k images must not need 50k decoded images at once: file paths and lazy
array-likes (``SyntheticImageRegistry``) are read one batch at a time.

Pixel values are checked where they enter, never guessed at: uint8 is read as 0-255, uint16 as
0-65535, and float images must already lie in [0, 1] (a float image in [0, 255] is an error
naming the row, not a picture 255 times too bright); NaN or infinite pixels are an error naming
the row. Files are decoded as :func:`skddh.datasets.load_image_table` decodes them (16-bit and
float files windowed into uint8, decompression bombs refused).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def _is_paths(X) -> bool:
    if isinstance(X, (str, os.PathLike)):
        return True
    if isinstance(X, np.ndarray):
        return X.dtype.kind in "UO" and X.ndim == 1
    if isinstance(X, (list, tuple)) and len(X) > 0:
        return isinstance(X[0], (str, os.PathLike))
    if isinstance(X, pd.Series):
        return X.dtype.kind in "UO"
    return False


class ImageSource:
    """Uniform batched access to images given as an array, a lazy array-like or file paths.

    Parameters
    ----------
    X : ndarray of shape (n, H, W) or (n, C, H, W), lazy array-like, or sequence of paths
    image_size : int
        File images are letterboxed to this square size when read (arrays keep theirs; the
        estimator resizes batches on its device).
    """

    def __init__(self, X, image_size: int):
        self.image_size = image_size
        if _is_paths(X):
            paths = [X] if isinstance(X, (str, os.PathLike)) else list(X)
            if len(paths) == 0:
                raise ValueError("X is empty: 0 images.")
            for i, p in enumerate(paths):
                if not isinstance(p, (str, os.PathLike)):
                    raise TypeError(f"X[{i}] is {type(p).__name__}, expected a file path.")
                if not Path(p).is_file():
                    raise ValueError(f"X[{i}] = {str(p)!r} is not a file.")
            self.paths = [Path(p) for p in paths]
            self._pool = None  # the decoding threads, made on the first read (_decoder)
            self.array = None
            self.n, self.channels = len(paths), 1
            self.shape = (self.n, 1, image_size, image_size)
            self.dtype = np.dtype(np.uint8)
            return
        self.paths = None
        self._pool = None
        if not hasattr(X, "shape") or not hasattr(X, "__getitem__"):
            X = np.asarray(X)
        shape = tuple(X.shape)
        if len(shape) not in (3, 4):
            raise ValueError(
                f"X must hold images of shape (n, H, W) or (n, C, H, W), got {len(shape)}-D "
                f"shape {shape}; reshape flattened images first."
            )
        if shape[0] == 0:
            raise ValueError("X is empty: 0 images.")
        dtype = np.dtype(X.dtype)
        if dtype.kind not in "uf" or (dtype.kind == "u" and dtype not in _SCALES):
            raise TypeError(f"X must be uint8, uint16 or float images, got dtype {dtype}.")
        self.array = X
        self.n = shape[0]
        self.channels = 1 if len(shape) == 3 else shape[1]
        self.shape = (self.n, self.channels, shape[-2], shape[-1])
        self.dtype = dtype
        if isinstance(X, np.ndarray) and dtype.kind == "f":
            self._check_float(X, np.arange(self.n))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def in_memory(self) -> bool:
        return isinstance(self.array, np.ndarray)

    @property
    def chunk_rows(self) -> int:
        """Images per storage chunk of a lazy array-like (1 when it does not say).

        Read from its ``chunks`` (h5py and zarr: a tuple of ints; dask: a tuple of block
        sizes per axis; :class:`~skddh.datasets.SyntheticImageRegistry`: its render chunk).
        """
        chunks = getattr(self.array, "chunks", None) if not self.in_memory else None
        try:
            first = chunks[0]
            first = first[0] if isinstance(first, tuple) else first
            return max(1, int(first))
        except (TypeError, IndexError, ValueError):
            return 1

    def _decoder(self, n_files: int):
        """The thread pool that decodes files, made once per source (None: decode inline).

        A pool per batch cost a thread start-up per worker per step; this one lives as long
        as the source (one fit or one transform) and is shut down when it is collected.
        """
        workers = min(8, os.cpu_count() or 1)
        if workers < 2 or n_files < 2:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="skddh-decode")
            weakref.finalize(self, self._pool.shutdown, wait=False)
        return self._pool

    def materialize(self) -> None:
        """Decode a lazy array-like once (e.g. before several epochs), if it is not already."""
        if self.array is not None and not self.in_memory:
            self.array = np.asarray(self.array)
            if self.dtype.kind == "f":
                self._check_float(self.array, np.arange(self.n))

    @staticmethod
    def _check_float(arr, rows) -> None:
        """Float pixels must be finite and in [0, 1]; the error names the first bad row of X."""
        flat = arr.reshape(len(arr), -1)
        finite = np.isfinite(flat).all(axis=1)
        if not finite.all():
            row = int(rows[int(np.argmin(finite))])
            raise ValueError(f"X has NaN or infinite pixels in image {row} (row {row} of X).")
        if flat.shape[1] == 0:
            return
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        bad = (lo < 0) | (hi > 1)
        if bad.any():
            k = int(np.argmax(bad))
            which, value = ("max", hi[k]) if hi[k] > 1 else ("min", lo[k])
            fix = "divide by 255 or pass uint8" if which == "max" else "rescale or pass uint8"
            raise ValueError(
                f"float images must lie in [0, 1]; row {int(rows[k])} has {which} "
                f"{np.format_float_positional(value, trim='0')}: {fix}."
            )

    def read(self, index) -> np.ndarray:
        """Images ``index`` (a slice or an index array) as (b, C, H, W), in X's dtype."""
        if self.paths is not None:
            from skddh.datasets._io import _bombs_refused, _letterbox, _read_image

            idx = range(self.n)[index] if isinstance(index, slice) else index
            out = np.empty((len(idx), 1, self.image_size, self.image_size), np.uint8)

            def load(j_i):
                j, i = j_i
                try:
                    img, _ = _read_image(self.paths[int(i)], 0)
                except ValueError as exc:
                    raise ValueError(f"X[{int(i)}]: {exc}") from exc
                out[j, 0] = _letterbox(img, self.image_size)[0]

            # Decoding and resizing release the GIL (Pillow, pydicom's numpy work), so a
            # batch of files decodes in parallel threads; the order of `out` is fixed. The
            # warning filter is global, so it is set here, around the threads, and only on
            # the main thread: set from a prefetching thread it could undo a filter the main
            # thread sets meanwhile. Without it Pillow only warns on a bomb, and
            # _check_pixel_count still refuses it.
            pool = self._decoder(len(idx))
            main = threading.current_thread() is threading.main_thread()
            with _bombs_refused() if main else contextlib.nullcontext():
                if pool is not None:
                    list(pool.map(load, enumerate(idx)))
                else:
                    for pair in enumerate(idx):
                        load(pair)
            return out
        if isinstance(index, slice) or self.in_memory:
            batch = np.asarray(self.array[index])
        else:
            batch = self._read_runs(np.asarray(index))
        if batch.ndim == 3:
            batch = batch[:, None]
        if self.dtype.kind == "f" and not self.in_memory:
            rows = np.arange(self.n)[index] if isinstance(index, slice) else np.asarray(index)
            self._check_float(batch, rows)
        return batch

    def _read_runs(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` of a lazy array-like, one slice per storage chunk touched.

        Reading image by image made the array decode (or, for the synthetic registry,
        render) a whole chunk per image whenever consecutive images of the batch lay in
        different chunks. Sorted, the rows of one chunk are read as one slice spanning only
        that chunk; without chunk information, each run of consecutive rows is one slice.
        Returned in ``index``'s order.
        """
        order = np.argsort(index, kind="stable")
        rows = index[order]
        k = self.chunk_rows
        key = rows // k if k > 1 else rows - np.arange(len(rows))  # same key: one slice
        cut = np.flatnonzero(np.diff(key)) + 1
        parts = []
        for run in np.split(rows, cut):
            lo, hi = int(run[0]), int(run[-1]) + 1
            parts.append(np.asarray(self.array[lo:hi])[run - lo])
        batch = np.concatenate(parts)
        out = np.empty_like(batch)
        out[order] = batch
        return out

    def scale(self) -> float:
        """Divide by this to map pixel values to [0, 1] (1 for float images)."""
        return _SCALES.get(self.dtype, 1.0)
