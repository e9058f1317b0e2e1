"""Adult AP pelvis radiograph phantom drawn from per-hip morphology you can measure back.

Anatomical frame, millimetres: origin in the midline on the line through both femoral head
centres, x to the image right (the patient's left), y inferior. A hip on side ``s`` (-1 right,
on the image left; +1 left) has its head centre at ``C = (s hx, 0)`` and radius ``r``.

* Acetabular roof: the socket is a circle of radius ``R = r + jsw`` (``jsw`` the superior joint
  space) around ``C``. Its bony lateral edge is ``E = C + R (s sin LCEA, -cos LCEA)``, so the
  angle between the vertical through ``C`` and ``C -> E`` is the lateral centre-edge angle;
  lateral to ``E`` the ilium's outline rises away from the head. The sclerotic sourcil runs on
  the socket from the medial point at angle ``-(LCEA + 2 Tonnis)`` to ``E``; the chord from its
  medial end to ``E`` then makes the Tonnis angle with the horizontal (a chord of a circle
  between angles ``a`` and ``b`` from the vertical slopes by ``(a + b) / 2``).
* Femoral head-neck junction: in neck coordinates (``a`` along the neck axis from ``C``,
  ``b`` perpendicular, superior positive) the superior contour follows the head circle down to
  the angle ``alpha`` from the neck axis and then leaves it outwards, turning into the neck
  (half-width ``0.6 r``) over ``0.7 r``: the contour first exceeds the head radius at
  ``alpha``, the alpha angle's definition. A large alpha is the cam bump.
* Ischial spine: a bony triangle on the lateral wall of the lesser pelvis whose tip lies
  ``spine_mm`` medial to the pelvic brim (the inlet oval, the iliopectineal line); the sign is
  positive when ``spine_mm > 0``, i.e. the spine projects into the inlet.
* Other findings: minimum joint space ``jsw`` (narrowing at <= 2 mm) and an osteophyte of
  ``osteophyte_mm`` at the inferior head-neck junction.
* Sex: the inlet is wider and rounder in women, the subpubic arch wider, the obturator
  foramen wider relative to its height.

Labels are invariant to the nuisances (in-plane rotation, scale, shift, exposure, noise), which
act as a similarity transform and on the grey levels. Pelvic tilt changes the apparent inlet and
obturator heights only (a confounder for sex, not a label change).

The image is a projection: bone path lengths from smooth signed-distance shapes (a plateau
plus a cortical rim, so the iliopectineal line, the sourcil and the head outline are bright
lines), soft tissue, photon noise (Gaussian approximation of Poisson counts), a scatter veil,
``-log`` transmission (bone bright), detector blur, a percentile window and a gamma.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy import ndimage

from skddh.datasets._us_phantom import upsample

_F32 = np.float32
#: Largest grid the attenuation is computed on; bigger images are upsampled from it.
MAX_WORK = 512
#: The hip box in multiples of the head radius: lateral, medial, superior, inferior extent.
BOX_EXTENT = (1.8, 2.7, 2.0, 2.5)
#: Field-of-view centre (mm, anatomical) before the shift: between iliac crest and trochanters.
FOV_CENTRE_Y = -22.0


def chunk_size(image_size: int) -> int:
    """Radiographs rendered in one vectorised call; a function of ``image_size`` only."""
    return int(max(1, min(16, 16 * (192 / image_size) ** 2)))


def _col(a):
    return np.atleast_1d(np.asarray(a, dtype=_F32))[:, None, None]


def _ellipse_sd(x, y, cx, cy, a, b):
    """Approximate signed distance (mm) to an ellipse: f / |grad f| with f = q^2 - 1."""
    dx, dy = (x - _col(cx)) / _col(a), (y - _col(cy)) / _col(b)
    f = dx * dx + dy * dy - 1.0
    g = 2.0 * np.sqrt((dx / _col(a)) ** 2 + (dy / _col(b)) ** 2) + 1e-6
    return f / g


def _halfplane_sd(x, y, px, py, nx, ny):
    """Signed distance to the half-plane {(P - p) . n <= 0}, n a unit normal (outward)."""
    return (x - _col(px)) * _col(nx) + (y - _col(py)) * _col(ny)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def draw_pelvis_geometry(hips: pd.DataFrame, patients: pd.DataFrame, rng) -> dict:
    """Per-radiograph anatomy (mm) realising each hip's drawn morphology.

    ``hips`` has two rows per radiograph, ordered (radiograph, [R, L]), with columns
    ``alpha``, ``lcea``, ``tonnis``, ``spine_mm``, ``jsw_mm``, ``osteophyte_mm``;
    ``patients`` one row per radiograph with ``sex`` ("F"/"M").
    """
    n = len(patients)
    g = {c: hips[c].to_numpy(float).reshape(n, 2) for c in hips.columns if c != "side"}
    female = patients["sex"].to_numpy() == "F"
    body = np.where(female, 0.94, 1.0) * rng.uniform(0.95, 1.05, n)
    r = np.where(female, rng.normal(22.0, 1.0, n), rng.normal(25.0, 1.1, n))
    r = r[:, None] * rng.uniform(0.98, 1.02, (n, 2))
    inlet_a = np.where(female, rng.normal(64.0, 2.5, n), rng.normal(57.0, 2.5, n)) * body
    inlet_ratio = np.where(female, rng.normal(0.78, 0.07, n), rng.normal(0.66, 0.07, n))
    hx = inlet_a + r.mean(1) + 14.0 + rng.normal(0.0, 1.5, n)
    return {
        "r": r,
        "hx": hx,
        "body": body,
        "inlet_a": inlet_a,
        "inlet_ratio": inlet_ratio,
        "inlet_cy": rng.normal(-16.0, 2.0, n),
        "subpubic_deg": np.where(female, rng.normal(95.0, 7.0, n), rng.normal(65.0, 6.0, n)),
        "obturator_ratio": np.where(female, rng.normal(0.85, 0.08, n), rng.normal(0.70, 0.08, n)),
        "obturator_b": rng.normal(22.0, 1.5, n) * body,
        "nsa_deg": np.clip(rng.normal(130.0, 4.5, (n, 2)), 118.0, 142.0),
        "neck_len": r * rng.uniform(1.7, 2.0, (n, 2)),
        "alpha_inf": rng.uniform(38.0, 44.0, (n, 2)),
        "spine_y": rng.uniform(2.0, 12.0, (n, 2)),
        "ilium_gamma_deg": rng.uniform(15.0, 30.0, (n, 2)),
        **g,
    }


def draw_pelvis_nuisance(n: int, rng) -> pd.DataFrame:
    """Acquisition per radiograph; none of it changes a label."""
    return pd.DataFrame(
        {
            "rotation_deg": rng.uniform(-5.0, 5.0, n),
            "fov_mm": rng.uniform(370.0, 420.0, n),
            "shift_x_mm": rng.uniform(-12.0, 12.0, n),
            "shift_y_mm": rng.uniform(-12.0, 12.0, n),
            "tilt": rng.uniform(0.88, 1.12, n),  # apparent inlet / obturator height
            "soft_mm": rng.uniform(160.0, 280.0, n),
            "n0": np.exp(rng.uniform(np.log(400.0), np.log(3000.0), n)),
            "scatter": rng.uniform(0.1, 0.3, n),
            "blur_px": rng.uniform(0.5, 1.1, n),
            "gamma": np.exp(rng.uniform(np.log(0.75), np.log(1.35), n)),
            "bone_density": rng.uniform(0.8, 1.2, n),
        }
    )


def _frame(geom, nuis):
    """Field-of-view centre (n, 2) and rotation (n,) of each radiograph."""
    centre = (
        np.stack([nuis["shift_x_mm"].to_numpy(), FOV_CENTRE_Y + nuis["shift_y_mm"].to_numpy()], 1)
        * geom["body"][:, None]
    )
    return centre, np.deg2rad(nuis["rotation_deg"].to_numpy())


def to_pixels(p, geom, nuis, size):
    """Anatomical points (n, m, 2) -> pixel coordinates (column, row)."""
    centre, theta = _frame(geom, nuis)
    fov = nuis["fov_mm"].to_numpy() * geom["body"]
    d = p - centre[:, None, :]
    c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
    u = c * d[..., 0] + s * d[..., 1]
    v = -s * d[..., 0] + c * d[..., 1]
    scale = (size / fov)[:, None]
    return np.stack([u * scale + size / 2 - 0.5, v * scale + size / 2 - 0.5], -1)


def hip_boxes_px(geom, nuis, size) -> pd.DataFrame:
    """Per-hip boxes and head circles in pixels, rows ordered (radiograph, [R, L])."""
    n = len(nuis)
    rows = []
    fov = nuis["fov_mm"].to_numpy() * geom["body"]
    lat, med, sup, inf = BOX_EXTENT
    for k, s in enumerate((-1.0, 1.0)):
        r = geom["r"][:, k]
        cx = s * geom["hx"]
        xs = np.stack([cx + s * lat * r, cx - s * med * r], 1)
        ys = np.stack([-sup * r, inf * r], 1)
        corners = np.stack([np.stack([xs[:, i], ys[:, j]], 1) for i in (0, 1) for j in (0, 1)], 1)
        px = to_pixels(corners, geom, nuis, size)
        head = to_pixels(np.stack([cx, np.zeros(n)], 1)[:, None, :], geom, nuis, size)[:, 0]
        rows.append(
            pd.DataFrame(
                {
                    "x0": px[..., 0].min(1),
                    "y0": px[..., 1].min(1),
                    "x1": px[..., 0].max(1),
                    "y1": px[..., 1].max(1),
                    "head_x": head[:, 0],
                    "head_y": head[:, 1],
                    "head_r": r * size / fov,
                    "_o": np.arange(n) * 2 + k,
                }
            )
        )
    out = pd.concat(rows).sort_values("_o").drop(columns="_o").reset_index(drop=True)
    return out


def _hemipelvis(x, y, g, k, s, tilt):
    """Signed distance of one hip bone (ilium, ischium, pubis) with its socket and spine."""
    n = x.shape[0]
    r, hx = g["r"][:, k], g["hx"]
    cx = s * hx
    R = r + g["jsw_mm"][:, k]
    lcea = np.deg2rad(g["lcea"][:, k])
    ex, ey = cx + s * R * np.sin(lcea), -R * np.cos(lcea)
    # outer outline: iliac wing and the ischiopubic block
    wing = _ellipse_sd(x, y, s * (0.62 * hx + 8.0), -78.0 * np.ones(n), 0.5 * hx + 26, 72.0)
    low = _ellipse_sd(x, y, s * 0.55 * hx, 36.0 * np.ones(n), 0.52 * hx, 44.0 + 0.4 * r)
    sd = np.minimum(wing, low)
    sd = np.maximum(sd, -_col(s) * x + 1.5)  # stop at the symphysis / midline
    # lateral outline above the acetabular edge E, rising laterally by gamma; below E,
    # nothing lateral to the vertical through E
    gam = np.deg2rad(g["ilium_gamma_deg"][:, k])
    nx, ny = s * np.cos(gam), np.sin(gam)  # outward normal of the line through E
    above = _halfplane_sd(x, y, ex, ey, nx, ny)
    below = _halfplane_sd(x, y, ex, ey, s * np.ones(n), np.zeros(n))
    sd = np.maximum(sd, np.where(y < _col(ey), above, below))
    # socket: joint space and head
    sock = np.sqrt((x - _col(cx)) ** 2 + y**2) - _col(R)
    sd = np.maximum(sd, -sock)
    # pelvic inlet (brim) and obturator foramen; tilt changes their apparent heights
    a_i = g["inlet_a"]
    b_i = a_i * g["inlet_ratio"] * tilt
    inlet = _ellipse_sd(x, y, np.zeros(n), g["inlet_cy"], a_i, b_i)
    sd = np.maximum(sd, -inlet)
    ob_b = g["obturator_b"] * tilt
    ob_a = g["obturator_b"] * g["obturator_ratio"]
    ob_cx = s * (hx - 1.15 * r - ob_a - 4.0)
    ob_cy = 0.8 * r + ob_b + 4.0
    sd = np.maximum(sd, -_ellipse_sd(x, y, ob_cx, ob_cy, ob_a, ob_b))
    # subpubic arch below the symphysis
    apex_y = ob_cy + 0.35 * ob_b
    half = np.deg2rad(g["subpubic_deg"] / 2.0)
    arch = np.maximum(
        _halfplane_sd(x, y, np.zeros(n), apex_y, np.cos(half), -np.sin(half)),
        _halfplane_sd(x, y, np.zeros(n), apex_y, -np.cos(half), -np.sin(half)),
    )
    sd = np.maximum(sd, -arch)
    # ischial spine: a triangle whose tip is spine_mm medial to the brim at its height
    ys = g["spine_y"][:, k]
    xb = s * a_i * np.sqrt(np.clip(1.0 - ((ys - g["inlet_cy"]) / b_i) ** 2, 0.05, 1.0))
    tip = np.stack([xb - s * g["spine_mm"][:, k], ys + 2.0], 1)
    base1 = np.stack([xb + s * 5.0, ys - 7.0], 1)
    base2 = np.stack([xb + s * 5.0, ys + 12.0], 1)
    tri = None
    for p, q, o in ((tip, base1, base2), (base1, base2, tip), (base2, tip, base1)):
        nx_, ny_ = q[:, 1] - p[:, 1], p[:, 0] - q[:, 0]
        ln = np.hypot(nx_, ny_)
        flip = np.sign((o[:, 0] - p[:, 0]) * nx_ + (o[:, 1] - p[:, 1]) * ny_)
        nx_, ny_ = -flip * nx_ / ln, -flip * ny_ / ln  # outward: away from the third vertex
        h = _halfplane_sd(x, y, p[:, 0], p[:, 1], nx_, ny_)
        tri = h if tri is None else np.maximum(tri, h)
    sd = np.minimum(sd, tri)
    # the sourcil: medial end at -(LCEA + 2 Tonnis) from the vertical
    th_m = lcea + 2.0 * np.deg2rad(g["tonnis"][:, k])
    ang = np.arctan2(_col(s) * (x - _col(cx)), -y)  # from the vertical, lateral positive
    on_arc = _smoothstep((ang + _col(th_m)) / 0.08) * _smoothstep((_col(lcea) - ang) / 0.05)
    sourcil = np.exp(-(((sock - 1.6) / 1.4) ** 2)) * on_arc
    return sd, sourcil


def _femur(x, y, g, k, s):
    """Signed distance of one proximal femur: head, cam profile, neck, trochanters, shaft."""
    r = g["r"][:, k]
    cx = s * g["hx"]
    beta = np.deg2rad(g["nsa_deg"][:, k] - 90.0)  # neck axis below the horizontal
    ux, uy = s * np.cos(beta), np.sin(beta)
    dx, dy = x - _col(cx), y
    a = dx * _col(ux) + dy * _col(uy)
    b = dx * _col(s * np.sin(beta)) - dy * _col(np.cos(beta))  # superior positive
    al_s = np.deg2rad(g["alpha"][:, k])
    al_i = np.deg2rad(g["alpha_inf"][:, k])
    disk = np.sqrt(dx * dx + dy * dy) - _col(r)
    wedge = np.maximum(
        b * _col(np.cos(al_s)) - a * _col(np.sin(al_s)),
        -b * _col(np.cos(al_i)) - a * _col(np.sin(al_i)),
    )
    head = np.maximum(disk, -wedge)
    w = 0.6 * r
    a0s, a0i = r * np.cos(al_s), r * np.cos(al_i)
    w_s = _col(w) + _col(r * np.sin(al_s) - w) * (1 - _smoothstep((a - _col(a0s)) / _col(0.7 * r)))
    w_i = _col(w) + _col(r * np.sin(al_i) - w) * (1 - _smoothstep((a - _col(a0i)) / _col(0.7 * r)))
    ln = g["neck_len"][:, k]
    neck = np.maximum(np.where(b > 0, b - w_s, -b - w_i), np.maximum(-a, a - _col(ln)))
    # osteophyte at the inferior head-neck junction
    ost = g["osteophyte_mm"][:, k]
    oa = al_i + np.deg2rad(8.0)
    ox = cx + r * (ux * np.cos(oa) - s * np.sin(beta) * np.sin(oa))
    oy = r * (uy * np.cos(oa) + np.cos(beta) * np.sin(oa))
    ost_sd = np.sqrt((x - _col(ox)) ** 2 + (y - _col(oy)) ** 2) - _col(ost)
    # shaft: from the junction J down and slightly medial
    jx, jy = cx + ln * ux, ln * uy
    sh = np.deg2rad(7.0)
    vx, vy = -s * np.sin(sh), np.cos(sh)
    along = (x - _col(jx)) * _col(vx) + (y - _col(jy)) * _col(vy)
    perp = (x - _col(jx)) * _col(vy * 1.0) - (y - _col(jy)) * _col(vx)
    shaft = np.maximum(np.abs(perp) - _col(0.72 * r), -along - _col(0.3 * r))
    gt = _ellipse_sd(x, y, jx + s * 0.45 * r, jy - 0.55 * r, 0.62 * r, 0.95 * r)
    lt = _ellipse_sd(x, y, jx - s * 0.75 * r, jy + 1.7 * r, 0.35 * r, 0.45 * r)
    sd = np.minimum(np.minimum(head, neck), np.minimum(shaft, np.minimum(gt, lt)))
    return np.minimum(sd, ost_sd), disk


def render_pelvis(geom, nuis: pd.DataFrame, size: int, rng) -> np.ndarray:
    """Render AP pelvis radiographs (n, size, size) uint8."""
    n = len(nuis)
    work = min(size, MAX_WORK)
    centre, theta = _frame(geom, nuis)
    fov = nuis["fov_mm"].to_numpy() * geom["body"]
    px_mm = fov / work
    grid = (np.arange(work, dtype=_F32) + 0.5) / work - 0.5
    u = grid[None, None, :] * _col(fov)
    v = grid[None, :, None] * _col(fov)
    c, s_ = _col(np.cos(theta)), _col(np.sin(theta))
    x = (c * u - s_ * v + _col(centre[:, 0])).astype(_F32)
    y = (s_ * u + c * v + _col(centre[:, 1])).astype(_F32)
    tilt = nuis["tilt"].to_numpy()
    eps = _col(0.5 * px_mm)  # edge softness: half a pixel
    rim_w = _col(np.maximum(0.9, 0.8 * px_mm))

    soft = _col(nuis["soft_mm"]) * np.sqrt(
        np.clip(1.0 - (x / _col(175.0 * geom["body"])) ** 2 - ((y + 20) / 330.0) ** 2, 0, None)
    )
    for sd_ in (-1.0, 1.0):  # thighs
        d = np.abs(x - _col(sd_ * (geom["hx"] + 10.0)) - 0.12 * sd_ * np.clip(y, 0, None))
        thigh = 2.0 * np.sqrt(np.clip(70.0**2 - d**2, 0, None))
        soft = np.maximum(soft, thigh / (1.0 + np.exp(-(y - 30.0) / 12.0)))
    atten = 0.010 * soft
    rho = _col(nuis["bone_density"])
    tex = ndimage.gaussian_filter(rng.standard_normal(x.shape, dtype=_F32), (0, 1.0, 1.0))
    tex = 1.0 + 0.12 * tex / (tex.std() + 1e-6)

    def add_bone(sd, plate, rim, tex=tex):
        inside = 1.0 / (1.0 + np.exp(np.clip(sd / eps, -30, 30)))
        depth = np.clip(-sd / 6.0, 0.0, 1.0)
        return rho * (
            plate * inside * (0.55 + 0.45 * depth) * tex + rim * np.exp(-((sd / rim_w) ** 2))
        )

    # each side's bones lie on its half of the image (rotation <= 5 deg, shift <= 12 mm):
    # compute them on 60 % of the columns only
    half = int(np.ceil(0.6 * work))
    for k, s in enumerate((-1.0, 1.0)):
        cols = slice(0, half) if s < 0 else slice(work - half, work)
        xs, ys, ts = x[..., cols], y[..., cols], tex[..., cols]
        sd_p, sourcil = _hemipelvis(xs, ys, geom, k, s, tilt)
        sd_f, _ = _femur(xs, ys, geom, k, s)
        atten[..., cols] += (
            add_bone(sd_p, 0.75, 1.1, ts) + 1.0 * rho * sourcil + add_bone(sd_f, 1.1, 1.1, ts)
        )
    # sacrum (trapezoid) and L5
    n1 = np.ones(n)
    sac = np.maximum(
        np.maximum(_halfplane_sd(x, y, 0 * n1, -118.0 * n1, 0 * n1, -1 * n1), y + 20.0),
        np.maximum(
            _halfplane_sd(x, y, 52.0 * n1, -118.0 * n1, 0.966 * n1, 0.259 * n1),
            _halfplane_sd(x, y, -52.0 * n1, -118.0 * n1, -0.966 * n1, 0.259 * n1),
        ),
    )
    atten += add_bone(sac, 0.8, 0.4)
    l5 = _ellipse_sd(x, y, 0 * n1, -140.0 * n1, 26.0 * n1, 13.0 * n1)
    atten += add_bone(l5, 1.0, 0.6)
    if work != size:
        atten = upsample(atten, size)

    n0 = _col(nuis["n0"]) * (256.0 / size) ** 2
    primary = n0 * np.exp(-atten)
    veil = _col(nuis["scatter"]) * primary.mean(axis=(1, 2), keepdims=True)
    lam = primary + veil
    counts = lam + np.sqrt(lam) * rng.standard_normal(lam.shape, dtype=_F32)
    img = -np.log(np.maximum(counts, 0.5) / (n0 * (1.0 + _col(nuis["scatter"]))))
    blur = nuis["blur_px"].to_numpy() * size / 256.0
    for i in range(n):
        img[i] = ndimage.gaussian_filter(img[i], blur[i], mode="nearest")
    lo = np.percentile(img, 12.0, axis=(1, 2), keepdims=True)
    hi = np.percentile(img, 99.8, axis=(1, 2), keepdims=True)
    img = np.clip((img - lo) / (hi - lo + 1e-6), 0.0, 1.0) ** _col(nuis["gamma"])
    return (img * 255.0 + 0.5).astype(np.uint8)


def _pelvis_chunk(seed, hips: pd.DataFrame, patients: pd.DataFrame, size: int):
    rng = np.random.default_rng(seed)
    geom = draw_pelvis_geometry(hips.reset_index(drop=True), patients.reset_index(drop=True), rng)
    nuis = draw_pelvis_nuisance(len(patients), rng)
    images = render_pelvis(geom, nuis, size, rng)
    boxes = hip_boxes_px(geom, nuis, size)
    nuis = nuis.assign(
        pixel_spacing_mm=nuis["fov_mm"] * geom["body"] / size,
        head_radius_r_mm=geom["r"][:, 0],
        head_radius_l_mm=geom["r"][:, 1],
        inlet_ratio=geom["inlet_ratio"],
        subpubic_deg=geom["subpubic_deg"],
    )
    return images, boxes, nuis


def render_pelvis_images(hips: pd.DataFrame, patients: pd.DataFrame, size: int, seeds, n_jobs=None):
    """Render one radiograph per row of ``patients`` (two rows of ``hips`` each) in chunks.

    Returns images (m, size, size), per-hip boxes/head circles (2m rows, [R, L] per
    radiograph) and the per-radiograph acquisition. A chunk depends only on its seed and rows.
    """
    step = chunk_size(size)
    parts = Parallel(n_jobs=n_jobs)(
        delayed(_pelvis_chunk)(
            seeds[i], hips.iloc[2 * s : 2 * (s + step)], patients.iloc[s : s + step], size
        )
        for i, s in enumerate(range(0, len(patients), step))
    )
    images = np.concatenate([p[0] for p in parts])
    boxes = pd.concat([p[1] for p in parts], ignore_index=True)
    acq = pd.concat([p[2] for p in parts], ignore_index=True)
    return images, boxes, acq
