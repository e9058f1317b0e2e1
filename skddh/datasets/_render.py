"""From latent hips to images: one chunk at a time, each chunk with its own random stream.

Used by both the labelled cohort and the unlabelled registries, so the two share one image
distribution. A chunk's output depends only on its seed, never on how many workers ran it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from skddh.datasets._measure import measure_us
from skddh.datasets._us_phantom import (
    draw_us_geometry,
    draw_us_nuisance,
    render_us,
    us_landmarks_px,
)
from skddh.datasets._xr_phantom import (
    draw_xr_nuisance,
    render_xr,
    xr_landmarks_px,
)

#: Images rendered together in one vectorised call (memory ~ chunk * size^2 * 60 bytes).
CHUNK = 32


def take(d: dict, idx) -> dict:
    """Index every array of a geometry dict along its first axis."""
    return {k: np.asarray(v)[idx] for k, v in d.items()}


def us_drawn_values(hips: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Per-image drawn values: the plane offset moves alpha and FHC."""
    o = rng.uniform(-1.0, 1.0, len(hips))
    return pd.DataFrame(
        {
            "alpha_img": np.clip(hips["alpha"].to_numpy() + 2.8 * o, 20.0, 85.0),
            "beta_img": hips["beta"].to_numpy(),
            "fhc_img": np.clip(hips["fhc"].to_numpy() + 0.03 * o, 0.0, 0.9),
            "plane_offset": o,
            "standard_plane": np.abs(o) <= 0.7,
        }
    )


def _us_chunk(seed, drawn: pd.DataFrame, age_weeks, size):
    rng = np.random.default_rng(seed)
    geom = draw_us_geometry(drawn["alpha_img"], drawn["beta_img"], drawn["fhc_img"], rng, age_weeks)
    nuis = draw_us_nuisance(geom, rng)
    # ossific nucleus: P rises from 0 at 6 weeks to ~0.5 at 4-6 months
    p_nuc = 0.5 * np.clip((np.asarray(age_weeks) - 6.0) / 14.0, 0.0, 1.0)
    ossified = rng.random(len(drawn)) < p_nuc
    images = render_us(geom, nuis, size, rng, plane_offset=drawn["plane_offset"], ossified=ossified)
    nuis = nuis.assign(ossific_nucleus=ossified, pixel_spacing_mm=nuis["fov_mm"] / size)
    return images, us_landmarks_px(geom, nuis, size), nuis


def render_us_images(drawn, age_weeks, size, seeds, n_jobs=None):
    """Render US images for the rows of ``drawn`` in chunks -> images, landmarks, nuisances."""
    starts = range(0, len(drawn), CHUNK)
    age_weeks = np.asarray(age_weeks, float)
    parts = Parallel(n_jobs=n_jobs)(
        delayed(_us_chunk)(seeds[i], drawn.iloc[s : s + CHUNK], age_weeks[s : s + CHUNK], size)
        for i, s in enumerate(starts)
    )
    if not parts:
        return np.zeros((0, size, size), np.uint8), pd.DataFrame(), pd.DataFrame()
    images = np.concatenate([p[0] for p in parts])
    landmarks = pd.concat([p[1] for p in parts], ignore_index=True)
    nuis = pd.concat([p[2] for p in parts], ignore_index=True)
    return images, landmarks, nuis


def _xr_chunk(seed, geom, size, pelvis_size):
    rng = np.random.default_rng(seed)
    n = len(geom["w_t"])
    nuis = draw_xr_nuisance(n, rng)
    views = {v: render_xr(geom, nuis, size, rng, view=v) for v in ("R", "L")}
    marks = {v: xr_landmarks_px(geom, nuis, v, size) for v in ("R", "L")}
    pelvis = render_xr(geom, nuis, pelvis_size, rng, view="pelvis") if pelvis_size else None
    return views, marks, nuis, pelvis


def render_xr_images(geom, size, seeds, *, pelvis_size=None, n_jobs=None):
    """Render per-hip views (R then L per radiograph, interleaved) and optional AP pelvis images.

    Returns images (2m, size, size), landmarks and measured labels per view, nuisances per
    radiograph and the pelvis images (m, P, P) or None.
    """
    m = len(geom["w_t"])
    starts = list(range(0, m, CHUNK // 2))
    parts = Parallel(n_jobs=n_jobs)(
        delayed(_xr_chunk)(seeds[i], take(geom, slice(s, s + CHUNK // 2)), size, pelvis_size)
        for i, s in enumerate(starts)
    )
    images, marks, nuis, pelvis = [], [], [], []
    for views, mk, nu, pel in parts:
        k = len(nu)
        stacked = np.stack([views["R"], views["L"]], 1).reshape(2 * k, size, size)
        images.append(stacked)
        both = pd.concat(
            [mk["R"].assign(_o=np.arange(k) * 2), mk["L"].assign(_o=np.arange(k) * 2 + 1)]
        )
        marks.append(both.sort_values("_o").drop(columns="_o"))
        nuis.append(nu)
        if pel is not None:
            pelvis.append(pel)
    landmarks = pd.concat(marks, ignore_index=True)
    return (
        np.concatenate(images),
        landmarks,
        pd.concat(nuis, ignore_index=True),
        np.concatenate(pelvis) if pelvis else None,
    )


def measured_us(landmarks):
    """Labels measured on US landmarks, FHC as a fraction (the latent scale)."""
    m = measure_us(landmarks)
    return pd.DataFrame({"alpha": m["alpha"], "beta": m["beta"], "fhc": m["coverage"] / 100.0})
