"""Unlabelled synthetic registries, generated lazily and deterministically chunk by chunk."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import numpy as np
from joblib import Parallel, delayed

from skddh.datasets._latent import DEFAULT_CORRELATION, draw_hips, draw_subjects
from skddh.datasets._render import CHUNK, render_us_images, render_xr_images, us_drawn_values
from skddh.datasets._xr_phantom import draw_xr_geometry


class SyntheticImageRegistry(Sequence):
    """A registry of unlabelled synthetic images that renders itself on demand.

    Indexing returns uint8 arrays: ``registry[i]`` one image (H, W), ``registry[a:b]`` or
    ``registry[[i, j]]`` a stack (k, H, W). Chunk ``c`` (``CHUNK`` images) is drawn from its own
    seed, so any image is the same whichever way and in whatever order it is requested, and a
    registry of the paper's size (37,186 ultrasound images) never needs to be held in memory:
    only the most recently used chunk is cached. ``np.asarray(registry)`` or
    :meth:`to_numpy` materialises everything (37,186 x 128 x 128 bytes = 0.6 GB).

    Parameters
    ----------
    modality : {"us", "xr"}
        Ultrasound Graf planes, or per-hip views of AP pelvis radiographs.
    n_images : int
        Number of images.
    image_size : int
        Side of the square images in pixels.
    preset : {"registry", "screening"}
        Population the hips are drawn from.
    seed : numpy.random.SeedSequence
        Root of the per-chunk seeds.

    Examples
    --------
    >>> from skddh.datasets import make_hip_cohort
    >>> reg = make_hip_cohort(n_subjects=4, image_size=32, n_registry_us=300,
    ...                       n_registry_xr=10, random_state=0).registry_us
    >>> len(reg), reg.shape, reg[5:9].shape
    (300, (300, 32, 32), (4, 32, 32))
    """

    def __init__(self, modality, n_images, image_size, preset, seed):
        self.modality = modality
        self.n_images = int(n_images)
        self.image_size = int(image_size)
        self.preset = preset
        self.seed = seed
        self._cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.n_images

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_images, self.image_size, self.image_size)

    @property
    def dtype(self):
        return np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        return 3

    @property
    def chunks(self) -> tuple[int, int, int]:
        """Images rendered together, h5py-style: reading along these blocks is cheapest."""
        return (CHUNK, self.image_size, self.image_size)

    def __repr__(self) -> str:
        return (
            f"SyntheticImageRegistry(modality={self.modality!r}, n_images={self.n_images}, "
            f"image_size={self.image_size}, preset={self.preset!r})"
        )

    def _chunk(self, c: int) -> np.ndarray:
        cache = self._cache  # read once: a prefetching thread may replace it meanwhile
        if cache is not None and cache[0] == c:
            return cache[1]
        images = _render_registry_chunk(
            self.modality, self.seed, c, self.n_images, self.image_size, self.preset
        )
        self._cache = (c, images)
        return images

    def __getitem__(self, index):
        if isinstance(index, Integral):
            i = int(index) + (self.n_images if index < 0 else 0)
            if not 0 <= i < self.n_images:
                raise IndexError(f"index {index} out of range for {self.n_images} images.")
            return self._chunk(i // CHUNK)[i % CHUNK]
        idx = np.arange(self.n_images)[index]
        out = np.empty((len(idx), self.image_size, self.image_size), np.uint8)
        for c in np.unique(idx // CHUNK):
            sel = idx // CHUNK == c
            out[sel] = self._chunk(int(c))[idx[sel] % CHUNK]
        return out

    def to_numpy(self, n_jobs=None) -> np.ndarray:
        """Render every image, chunks in parallel with joblib (``n_jobs`` as in joblib)."""
        n_chunks = -(-self.n_images // CHUNK)
        parts = Parallel(n_jobs=n_jobs)(
            delayed(_render_registry_chunk)(
                self.modality, self.seed, c, self.n_images, self.image_size, self.preset
            )
            for c in range(n_chunks)
        )
        if not parts:
            return np.zeros(self.shape, np.uint8)
        return np.concatenate(parts)

    def __array__(self, dtype=None, copy=None):
        arr = self.to_numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None
        return state


def _render_registry_chunk(modality, seed, c, n_images, size, preset):
    count = min(CHUNK, n_images - c * CHUNK)
    ss = np.random.SeedSequence(seed.entropy, spawn_key=tuple(seed.spawn_key) + (c,))
    latent_seed, render_seed = ss.spawn(2)
    rng = np.random.default_rng(latent_seed)
    n_subjects = count if modality == "us" else -(-count // 2)
    subjects = draw_subjects(n_subjects, preset, rng)
    hips = draw_hips(subjects, preset, rng, correlation=DEFAULT_CORRELATION, lr_correlation=0.5)
    if modality == "us":
        # one hip per subject, either side
        pick = 2 * np.arange(n_subjects) + rng.integers(0, 2, n_subjects)
        chosen = hips.iloc[pick].reset_index(drop=True)
        drawn = us_drawn_values(chosen, rng)
        images, _, _ = render_us_images(
            drawn, subjects["age_us_weeks"].to_numpy(), size, [render_seed], n_jobs=None
        )
        return images[:count]
    geom = draw_xr_geometry(hips, subjects["age_xr_months"].to_numpy(), rng)
    images, _, _, _ = render_xr_images(geom, size, [render_seed], n_jobs=None)
    return images[:count]
