"""Clinical measurements from landmarks, as a reader takes them off an image.

These are the label definitions of the synthetic cohort: every label of
:func:`skddh.datasets.make_hip_cohort` is what these functions return on the drawn landmarks,
and they work unchanged on landmarks annotated on real images (pixel coordinates, isotropic
spacing; scale, rotation and mirroring do not change the results).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from skddh.datasets._us_phantom import US_LANDMARKS
from skddh.datasets._xr_phantom import XR_LANDMARKS


def _xy(df: pd.DataFrame, stem: str) -> np.ndarray:
    return df[[f"{stem}_x", f"{stem}_y"]].to_numpy(dtype=float)


def _check(landmarks, required) -> pd.DataFrame:
    if not isinstance(landmarks, pd.DataFrame):
        raise TypeError(f"landmarks must be a pandas DataFrame, got {type(landmarks).__name__}.")
    missing = [c for c in required if c not in landmarks.columns]
    if missing:
        raise ValueError(f"landmarks is missing the column(s) {missing}.")
    return landmarks


def _angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Unsigned angle in degrees between row vectors u and v."""
    cross = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
    dot = (u * v).sum(1)
    return np.degrees(np.abs(np.arctan2(cross, dot)))


def measure_us(landmarks: pd.DataFrame) -> pd.DataFrame:
    """Graf alpha, beta and femoral head coverage from ultrasound landmarks.

    Parameters
    ----------
    landmarks : DataFrame
        Columns ``iliac_x/y`` (a point on the iliac line, cranial to the rim), ``rim_x/y``
        (bony rim), ``lower_limb_x/y``, ``labrum_x/y`` (labrum centre), ``head_cx/cy``,
        ``head_r`` (fitted head circle), in pixels.

    Returns
    -------
    DataFrame
        ``alpha`` (baseline to bony roof line), ``beta`` (baseline to cartilage roof line) in
        degrees, ``coverage`` = 100 d/D in percent, where D is the head diameter perpendicular
        to the baseline and d its part deep to the baseline (Morin).

    Examples
    --------
    >>> import pandas as pd
    >>> from skddh.datasets import measure_us
    >>> lm = pd.DataFrame({"iliac_x": [0.0], "iliac_y": [10.0], "rim_x": [40.0],
    ...                    "rim_y": [10.0], "lower_limb_x": [45.0], "lower_limb_y": [18.66],
    ...                    "labrum_x": [45.0], "labrum_y": [1.34], "head_cx": [55.0],
    ...                    "head_cy": [12.0], "head_r": [10.0]})
    >>> measure_us(lm).round(1)
       alpha  beta  coverage
    0   60.0  60.0      60.0
    """
    lm = _check(landmarks, US_LANDMARKS)
    rim = _xy(lm, "rim")
    base = rim - _xy(lm, "iliac")
    roof = _xy(lm, "lower_limb") - rim
    cart = _xy(lm, "labrum") - rim
    alpha = _angle(base, roof)
    beta = _angle(base, cart)
    # unit normal of the baseline pointing deep (towards the lower limb)
    nrm = np.stack([-base[:, 1], base[:, 0]], 1) / np.linalg.norm(base, axis=1, keepdims=True)
    nrm *= np.sign((roof * nrm).sum(1, keepdims=True))
    centre = lm[["head_cx", "head_cy"]].to_numpy(float)
    r = lm["head_r"].to_numpy(float)
    depth = ((centre - rim) * nrm).sum(1)  # signed depth of the centre below the baseline
    coverage = 100.0 * np.clip((r + depth) / (2 * r), 0.0, 1.0)
    return pd.DataFrame({"alpha": alpha, "beta": beta, "coverage": coverage}, index=lm.index)


def measure_xr(landmarks: pd.DataFrame) -> pd.DataFrame:
    """Acetabular index, signed centre-edge angle and IHDI grade from per-hip X-ray landmarks.

    Parameters
    ----------
    landmarks : DataFrame
        Columns ``tcc_x/y`` (triradiate point of this hip), ``tcc_other_x/y`` (of the other
        hip; both define Hilgenreiner's line H), ``asm_x/y`` (superolateral acetabular
        margin; Perkin's line P is perpendicular to H through it), ``head_cx/cy`` (femoral head
        centre) and ``mofm_x/y`` (H-point: midpoint of the top of the ossified metaphysis).

    Returns
    -------
    DataFrame
        ``ai``: angle between H and the line from the triradiate point to the acetabular
        margin; ``ce``: angle between P and the line from the head centre to the margin,
        negative when the centre lies lateral to P, clipped to [-90, 90] (a centre above
        the margin, as in a dislocated hip, gives -90); ``ihdi``: 1 when the H-point is at or
        medial to P, 2 when lateral to P and at or medial to the 45-degree D-line, 3 when
        lateral to D and at or below H, 4 when above H.

    Examples
    --------
    >>> import pandas as pd
    >>> from skddh.datasets import measure_xr
    >>> lm = pd.DataFrame({"tcc_x": [50.0], "tcc_y": [60.0], "tcc_other_x": [150.0],
    ...                    "tcc_other_y": [60.0], "asm_x": [36.14], "asm_y": [52.0],
    ...                    "head_cx": [42.0], "head_cy": [70.0], "head_r": [9.0],
    ...                    "mofm_x": [44.0], "mofm_y": [82.0]})
    >>> measure_xr(lm).round(1)
         ai    ce  ihdi
    0  30.0  18.0     1
    """
    lm = _check(landmarks, [c for c in XR_LANDMARKS if c != "head_r"])
    tcc = _xy(lm, "tcc")
    lat = tcc - _xy(lm, "tcc_other")
    lat /= np.linalg.norm(lat, axis=1, keepdims=True)
    roof = _xy(lm, "asm") - tcc
    sup = np.stack([-lat[:, 1], lat[:, 0]], 1)
    sup *= np.sign((roof * sup).sum(1, keepdims=True) + 1e-12)
    ai = np.degrees(np.arctan2((roof * sup).sum(1), (roof * lat).sum(1)))
    edge = _xy(lm, "asm") - lm[["head_cx", "head_cy"]].to_numpy(float)
    # A head centre above the acetabular margin (a dislocated hip) has no centre-edge angle in
    # the clinical sense; report the limit, -90 (fully uncovered), rather than an obtuse angle.
    ce = np.clip(np.degrees(np.arctan2((edge * lat).sum(1), (edge * sup).sum(1))), -90.0, 90.0)
    junction = tcc + (roof * lat).sum(1, keepdims=True) * lat  # H/P junction
    w = _xy(lm, "mofm") - junction
    u = (w * lat).sum(1)  # lateral of P
    v = -(w * sup).sum(1)  # below H
    ihdi = np.select([u <= 0, v >= u, v >= 0], [1, 2, 3], default=4)
    return pd.DataFrame({"ai": ai, "ce": ce, "ihdi": ihdi}, index=lm.index)
