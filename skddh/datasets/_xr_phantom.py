"""X-ray phantom: an infant AP pelvis drawn from (AI, CE, IHDI) per hip.

Anatomical frame, millimetres: origin on the Hilgenreiner line (H) in the
midline, x to the image right (the patient's left), y inferior. For a hip on side ``s``
(-1 right, +1 left; "lateral" is ``s`` along x):

* triradiate point ``TCC = (s w_t, 0)``; acetabular edge ``ASM = TCC + w (s cos AI, -sin AI)``,
  so the angle between H and TCC->ASM is the acetabular index;
* femoral head centre ``C = ASM + rho (-s sin CE, cos CE)`` with ``rho = (r + c) / cos(AI+CE)``,
  so the signed centre-edge angle is CE and the head (plus cartilage) touches the roof line;
* metaphyseal H-point ``MOFM = C + (r + m)(s sin phi, cos phi)``; for a displaced hip the
  H-point is placed in the region of its target IHDI grade and the head follows it.

Labels are then *measured* from the projected landmarks (after pelvic rotation and tilt), as a
reader would measure them, by :func:`skddh.datasets.measure_xr`.

The image is a projection: soft-tissue and bone path lengths (analytic for ellipsoids and
tubes, blurred masks plus a cortical rim for flat bones), Poisson photon counts, a scatter
veil, ``-log`` transmission (bone bright), detector blur, percentile window and a grey map.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from skddh.datasets._us_phantom import upsample

#: Landmarks stored for each per-hip X-ray view, in that view's pixel coordinates.
XR_LANDMARKS = (
    "tcc_x",
    "tcc_y",
    "tcc_other_x",
    "tcc_other_y",
    "asm_x",
    "asm_y",
    "head_cx",
    "head_cy",
    "head_r",
    "mofm_x",
    "mofm_y",
)

_F32 = np.float32


def _col(a):
    return np.asarray(a, dtype=_F32)[:, None, None]


def _smooth_polygon(pts, n_iter=2, fixed_edge=None):
    """Chaikin corner cutting of closed polygons (n, K, 2).

    If ``fixed_edge=(i, i+1)`` is given, that edge (the acetabular roof) is kept exactly.
    """
    for _ in range(n_iter):
        k = pts.shape[1]
        out, new_fixed = [], None
        for i in range(k):
            j = (i + 1) % k
            if fixed_edge is not None and i == fixed_edge[0]:
                new_fixed = len(out)
                out.append(pts[:, i])
                out.append(pts[:, j])
            elif fixed_edge is not None and i == fixed_edge[1]:
                out.append(0.25 * pts[:, i] + 0.75 * pts[:, j])
            else:
                out.append(0.75 * pts[:, i] + 0.25 * pts[:, j])
                out.append(0.25 * pts[:, i] + 0.75 * pts[:, j])
        pts = np.stack(out, 1)
        if fixed_edge is not None:
            fixed_edge = (new_fixed, new_fixed + 1)
    return pts


def _poly_mask(x, y, pts):
    """Even-odd point-in-polygon test for per-image polygons pts (n, K, 2) -> bool (n, H, W)."""
    inside = np.zeros(x.shape, dtype=bool)
    k = pts.shape[1]
    for i in range(k):
        ax, ay = _col(pts[:, i, 0]), _col(pts[:, i, 1])
        bx, by = _col(pts[:, (i + 1) % k, 0]), _col(pts[:, (i + 1) % k, 1])
        crosses = (ay > y) != (by > y)
        xint = ax + (y - ay) * (bx - ax) / (by - ay + 1e-9)
        inside ^= crosses & (x < xint)
    return inside


def _ellipse_q(x, y, cx, cy, a, b):
    return ((x - _col(cx)) / _col(a)) ** 2 + ((y - _col(cy)) / _col(b)) ** 2


def draw_xr_geometry(hips: pd.DataFrame, age_months, rng) -> dict:
    """Per-subject pelvis geometry realising each hip's AI, CE and target IHDI grade.

    ``hips`` holds one row per hip with columns ``side`` (R/L), ``ai``, ``ce``,
    ``ihdi_target``, ``decentred``, ordered (subject, [R, L]).
    """
    n = len(hips) // 2
    age = np.asarray(age_months, float)
    side = np.where(hips["side"].to_numpy() == "R", -1.0, 1.0).reshape(n, 2)
    ai = np.deg2rad(hips["ai"].to_numpy().reshape(n, 2))
    ce_deg = np.minimum(hips["ce"].to_numpy(), 80.0 - hips["ai"].to_numpy()).reshape(n, 2)
    ce = np.deg2rad(ce_deg)
    target = hips["ihdi_target"].to_numpy().reshape(n, 2)
    w_t = rng.uniform(20.0, 25.0, n)[:, None] * np.ones((1, 2))
    w_r = rng.uniform(12.0, 18.0, (n, 2))
    r_h = rng.uniform(8.0, 10.0, (n, 2)) + 0.3 * np.clip(age - 4.0, -2, 3)[:, None]
    cart = rng.uniform(2.0, 4.0, (n, 2))
    meta = rng.uniform(2.0, 4.0, (n, 2))
    phi = np.deg2rad(rng.uniform(-5.0, 10.0, (n, 2)))

    tcc = np.stack([side * w_t, np.zeros((n, 2))], -1)
    asm = tcc + w_r[..., None] * np.stack([side * np.cos(ai), -np.sin(ai)], -1)
    rho = (r_h + cart) / np.cos(ai + ce)
    head = asm + rho[..., None] * np.stack([-side * np.sin(ce), np.cos(ce)], -1)
    down = np.stack([side * np.sin(phi), np.cos(phi)], -1)
    mofm = head + (r_h + meta)[..., None] * down

    # displaced hips: put the H-point in the region of the target grade, the head follows
    u = np.zeros((n, 2))
    v = np.zeros((n, 2))
    g2, g3, g4 = target == 2, target == 3, target == 4
    u[g2] = rng.uniform(1.5, 7.0, g2.sum())
    v[g2] = u[g2] + rng.uniform(1.0, 8.0, g2.sum())
    v[g3] = rng.uniform(0.5, 6.0, g3.sum())
    u[g3] = v[g3] + rng.uniform(1.5, 7.0, g3.sum())
    v[g4] = rng.uniform(-8.0, -1.5, g4.sum())
    u[g4] = rng.uniform(3.0, 10.0, g4.sum())
    displaced = target >= 2
    placed = np.stack([asm[..., 0] + side * u, v], -1)
    mofm = np.where(displaced[..., None], placed, mofm)
    head = np.where(displaced[..., None], mofm - (r_h + meta)[..., None] * down, head)

    # ossific nucleus: P rises from ~0 at 2 months to ~0.8 at 6 months, lower/smaller in DDH
    ddh = displaced | hips["decentred"].to_numpy().reshape(n, 2)
    p_nuc = 0.85 / (1 + np.exp(-(age[:, None] - 4.0) / 0.8)) * np.where(ddh, 0.5, 1.0)
    nuc = np.where(
        rng.random((n, 2)) < p_nuc,
        np.maximum(
            1.0,
            rng.uniform(1.0, 4.0, (n, 2)) * np.clip((age[:, None] - 1.5) / 4.5, 0.3, 1) - 0.7 * ddh,
        ),
        0.0,
    )
    return {
        "side": side,
        "tcc": tcc,
        "asm": asm,
        "head": head,
        "head_r": r_h,
        "mofm": mofm,
        "phi": phi,
        "nucleus_r": nuc,
        "w_t": w_t[:, 0],
        "shaft_deg": rng.uniform(-8.0, 10.0, (n, 2)),
        "metaphysis_w": rng.uniform(13.0, 16.0, (n, 2)),
        "shaft_w": rng.uniform(8.0, 10.0, (n, 2)),
        "obturator": rng.uniform(0.85, 1.15, (n, 2)),
        "body_w": rng.uniform(60.0, 72.0, n),
        "thigh_r": rng.uniform(22.0, 28.0, n),
    }


def draw_xr_nuisance(n, rng) -> pd.DataFrame:
    """Projection and exposure parameters per radiograph (label-changing only via projection)."""
    # pelvic rotation: each hemipelvis scaled horizontally; obturator ratio within MTDDH limits
    rot = rng.uniform(-0.12, 0.12, n)
    return pd.DataFrame(
        {
            "scale_r": 1.0 + rot,
            "scale_l": 1.0 - rot,
            "tilt_scale": rng.uniform(0.9, 1.08, n),
            "rotation_deg": rng.uniform(-5.0, 5.0, n),
            "fov_mm": rng.uniform(125.0, 150.0, n),
            "shift_x_mm": rng.uniform(-6.0, 6.0, n),
            "shift_y_mm": rng.uniform(-6.0, 6.0, n),
            "hip_fov_mm": rng.uniform(62.0, 72.0, n),
            "n0": rng.uniform(500.0, 5000.0, n),
            "scatter": rng.uniform(0.1, 0.3, n),
            "detector_blur_px": rng.uniform(0.5, 1.2, n),
            "gamma": rng.uniform(0.7, 1.4, n),
            "shield": rng.random(n) < 0.25,
            "marker": rng.random(n) < 0.7,
        }
    )


def project(p, nuis: pd.DataFrame):
    """Anatomical points (n, ..., 2) -> projected points: per-side horizontal scale and tilt.

    Pelvic rotation about the vertical axis foreshortens one hemipelvis and widens the other;
    pelvic tilt compresses vertically. The H-line stays horizontal, so labels measured on the
    projected landmarks change slightly, as they do on a real radiograph.
    """
    shape = (len(nuis),) + (1,) * (p.ndim - 2)
    sr = nuis["scale_r"].to_numpy().reshape(shape)
    sl = nuis["scale_l"].to_numpy().reshape(shape)
    tilt = nuis["tilt_scale"].to_numpy().reshape(shape)
    x = np.where(p[..., 0] < 0, p[..., 0] * sr, p[..., 0] * sl)
    return np.stack([x, p[..., 1] * tilt], -1)


def view_frame(geom, nuis: pd.DataFrame, view: str):
    """(centre in projected mm (n, 2), field of view (n,), mirror (n,)) of a view.

    ``view`` is ``"pelvis"`` (the whole AP radiograph) or ``"R"`` / ``"L"``: a per-hip view
    centred between the triradiate point and the head, the left hip mirrored so that lateral is
    always on the image left.
    """
    n = len(nuis)
    if view == "pelvis":
        centre = np.stack([nuis["shift_x_mm"], 12.0 + nuis["shift_y_mm"]], 1)
        return centre, nuis["fov_mm"].to_numpy(), np.zeros(n, bool)
    k = 0 if view == "R" else 1
    pts = project(np.stack([geom["tcc"][:, k], geom["head"][:, k], geom["asm"][:, k]], 1), nuis)
    centre = pts.mean(1) + np.array([0.0, 6.0])
    return centre, nuis["hip_fov_mm"].to_numpy(), np.full(n, view == "L")


def to_pixels(q, centre, fov, theta, mirror, size):
    """Projected points (n, m, 2) -> pixel coordinates (x = column, y = row) of a view."""
    d = q - centre[:, None, :]
    c, s = np.cos(-theta)[:, None], np.sin(-theta)[:, None]
    lx, ly = c * d[..., 0] - s * d[..., 1], s * d[..., 0] + c * d[..., 1]
    lx = np.where(mirror[:, None], -lx, lx)
    scale = (size / fov)[:, None]
    return np.stack([lx * scale + size / 2 - 0.5, ly * scale + size / 2 - 0.5], -1)


def xr_landmarks_px(geom, nuis, view, size) -> pd.DataFrame:
    """Per-hip view landmarks (:data:`XR_LANDMARKS`) in pixel coordinates."""
    k = 0 if view == "R" else 1
    centre, fov, mirror = view_frame(geom, nuis, view)
    theta = np.deg2rad(nuis["rotation_deg"].to_numpy())
    pts = np.stack(
        [
            geom["tcc"][:, k],
            geom["tcc"][:, 1 - k],
            geom["asm"][:, k],
            geom["head"][:, k],
            geom["mofm"][:, k],
        ],
        1,
    )
    px = to_pixels(project(pts, nuis), centre, fov, theta, mirror, size)
    # the head radius is drawn in anatomical mm; scale by the mean horizontal/vertical factor
    sc = np.where(k == 0, nuis["scale_r"], nuis["scale_l"]) * 0.5 + nuis["tilt_scale"] * 0.5
    out = {}
    for j, name in enumerate(["tcc", "tcc_other", "asm", "head_c", "mofm"]):
        stem = "head_c" if name == "head_c" else name
        xk, yk = ("head_cx", "head_cy") if stem == "head_c" else (f"{stem}_x", f"{stem}_y")
        out[xk], out[yk] = px[:, j, 0], px[:, j, 1]
    out["head_r"] = geom["head_r"][:, k] * sc.to_numpy() * size / fov
    return pd.DataFrame(out)[list(XR_LANDMARKS)]


# A 5x7 bitmap for the burnt-in side marker.
_GLYPHS = {
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
}


def _ilium_polygon(g, k):
    """Outline of one ilium (n, K, 2): the acetabular roof TCC->ASM is kept exactly."""
    s = g["side"][:, k][:, None]
    tcc, asm, wt = g["tcc"][:, k], g["asm"][:, k], g["w_t"][:, None]
    lat_top = asm[:, :1] * s + 14.0  # lateral extent of the wing, as |x|
    xs = np.concatenate(
        [
            tcc[:, :1] * s,
            asm[:, :1] * s,
            asm[:, :1] * s + 1.5,
            lat_top + 3.0,
            lat_top + 6.0,
            lat_top + 2.0,
            wt + 8.0,
            np.full_like(wt, 20.0),
            np.full_like(wt, 15.5),
            wt - 8.0,
        ],
        1,
    )
    ys = np.concatenate(
        [
            tcc[:, 1:],
            asm[:, 1:],
            asm[:, 1:] - 7.0,
            np.full_like(wt, -26.0),
            np.full_like(wt, -44.0),
            np.full_like(wt, -58.0),
            np.full_like(wt, -64.0),
            np.full_like(wt, -56.0),
            np.full_like(wt, -30.0),
            np.full_like(wt, -5.0),
        ],
        1,
    )
    return _smooth_polygon(np.stack([xs * s, ys], -1), n_iter=2, fixed_edge=(0, 1))


def _ring_polygon(g, k):
    """Ischium and pubis around the obturator foramen, up to the symphysis."""
    s = g["side"][:, k][:, None]
    wt = g["w_t"][:, None]
    one = np.ones_like(wt)
    xs = np.concatenate(
        [wt + 5.0, wt + 5.0, wt + 3.0, wt - 8.0, 2.0 * one, 2.0 * one, wt - 8.0, wt - 1.0], 1
    )
    ys = np.concatenate(
        [
            3.0 * one,
            14.0 * one,
            36.0 * one,
            38.0 * one,
            27.0 * one,
            13.0 * one,
            4.0 * one,
            2.5 * one,
        ],
        1,
    )
    return _smooth_polygon(np.stack([xs * s, ys], -1), n_iter=2)


def _femur_polygon(g, k):
    """Proximal femur: metaphysis whose top-edge midpoint is the H-point, then the shaft."""
    s = g["side"][:, k]
    wm, ws = g["metaphysis_w"][:, k], g["shaft_w"][:, k]
    # femur-local (u lateral, v down); the top edge is symmetric about the H-point
    z = np.zeros_like(wm)
    u = np.stack(
        [
            -wm / 2,
            wm / 2,
            wm / 2 + 0.3,
            ws / 2 + 1.0,
            ws / 2,
            ws / 2,
            -ws / 2,
            -ws / 2,
            -ws / 2 - 1.5,
            -wm / 2 + 0.3,
        ],
        1,
    )
    v = np.stack(
        [
            z - 0.8,
            z + 0.8,
            z + 4.0,
            z + 12.0,
            z + 22.0,
            z + 240.0,
            z + 240.0,
            z + 22.0,
            z + 11.0,
            z + 3.0,
        ],
        1,
    )
    a = np.deg2rad(g["shaft_deg"][:, k])[:, None]
    x = s[:, None] * (u * np.cos(a) + v * np.sin(a))
    y = -u * np.sin(a) + v * np.cos(a)
    pts = np.stack([x, y], -1) + g["mofm"][:, k][:, None, :]
    return _smooth_polygon(pts, n_iter=2, fixed_edge=(0, 1))


def render_xr(geom, nuis: pd.DataFrame, size: int, rng, view: str = "pelvis") -> np.ndarray:
    """Render radiographs (n, size, size) uint8 of the given view."""
    n = len(nuis)
    centre, fov, mirror = view_frame(geom, nuis, view)
    theta = np.deg2rad(nuis["rotation_deg"].to_numpy())
    out_size = size
    # Attenuation is smooth: compute it at <= 128 px and upsample; photon noise and the
    # detector stay at full resolution. This makes a 256 px pelvis ~4x cheaper.
    size = min(size, 128)
    px = fov / size
    grid = (np.arange(size, dtype=_F32) + 0.5) / size - 0.5
    lx = grid[None, None, :] * _col(fov)
    ly = grid[None, :, None] * _col(fov)
    lx = np.where(_col(mirror) > 0, -lx, lx)
    c, s_ = _col(np.cos(theta)), _col(np.sin(theta))
    qx = c * lx - s_ * ly + _col(centre[:, 0])
    qy = s_ * lx + c * ly + _col(centre[:, 1])
    x = np.where(qx < 0, qx / _col(nuis["scale_r"]), qx / _col(nuis["scale_l"])).astype(_F32)
    y = (qy / _col(nuis["tilt_scale"])).astype(_F32)
    sides = (0, 1) if view == "pelvis" else ((0,) if view == "R" else (1,))

    # ---- soft tissue path length (mm) ------------------------------------------------
    q_body = (x / _col(geom["body_w"])) ** 2 + ((y + 25.0) / 110.0) ** 2
    soft = 110.0 * np.sqrt(np.clip(1 - q_body, 0, None))
    for sd in (-1.0, 1.0):
        ax, ay, bx, by = sd * 36.0, 20.0, sd * 58.0, 260.0
        t = np.clip(
            ((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2), 0, 1
        )
        d2 = (x - ax - t * (bx - ax)) ** 2 + (y - ay - t * (by - ay)) ** 2
        soft = np.maximum(soft, 2 * np.sqrt(np.clip(_col(geom["thigh_r"]) ** 2 - d2, 0, None)))
    # bowel gas in the lower abdomen
    for _ in range(6):
        gx, gy = rng.uniform(-45, 45, n), rng.uniform(-95, -25, n)
        ga, gb = rng.uniform(4, 12, n), rng.uniform(3, 9, n)
        on = _col(rng.random(n) < 0.7)
        soft = soft - on * 0.8 * 2 * _col(gb) * np.sqrt(
            np.clip(1 - _ellipse_q(x, y, gx, gy, ga, gb), 0, None)
        )
    atten = 0.02 * np.clip(soft, 0, None)

    # ---- bones: masks -> blurred (rounded) profile + cortical rim + trabecular texture --
    # (mask, profile blur in mm, plateau weight, rim weight) per bone
    bones = []
    for k in sides:
        bones.append((_poly_mask(x, y, _ilium_polygon(geom, k)), 2.0, 0.9, 0.45))
        ring = _poly_mask(x, y, _ring_polygon(geom, k))
        sd, wt, ob = geom["side"][:, k], geom["w_t"], geom["obturator"][:, k]
        ring &= _ellipse_q(x, y, sd * (wt - 5.0), 19.0 * np.ones(n), 6.5 * ob, 9.5 / ob) > 1
        bones.append((ring, 1.5, 0.8, 0.5))
        bones.append((_poly_mask(x, y, _femur_polygon(geom, k)), 3.0, 0.7, 1.1))
    sacrum = np.stack(
        [
            np.tile([-13.5, 13.5, 9.0, 3.0, -3.0, -9.0], (n, 1)),
            np.tile([-34.0, -34.0, 0.0, 8.0, 8.0, 0.0], (n, 1)),
        ],
        -1,
    )
    bones.append((_poly_mask(x, y, _smooth_polygon(sacrum, 2)), 3.0, 0.8, 0.3))
    texture = ndimage.gaussian_filter(rng.standard_normal(x.shape, dtype=_F32), (0, 0.6, 0.6))
    texture = 1 + 0.08 * texture / (texture.std() + 1e-6)
    rim_sig = float(np.mean(0.6 / px))
    for mask, blur_mm, w_plateau, w_rim in bones:
        m = mask.astype(_F32)
        sig = float(np.mean(blur_mm / px))
        m_aa = ndimage.gaussian_filter(m, sigma=(0, 0.7, 0.7))  # anti-aliased edge
        plateau = ndimage.gaussian_filter(m, sigma=(0, sig, sig)) * m_aa
        rim = np.clip(m_aa - ndimage.gaussian_filter(m, sigma=(0, rim_sig, rim_sig)), 0, 1)
        atten += w_plateau * plateau * texture + w_rim * rim
    for yy in (-24.0, -14.0, -4.0):  # sacral foramina: faint lucencies
        for xx in (-6.5, 6.5):
            atten -= 0.25 * np.exp(-((x - xx) ** 2 + (y - yy) ** 2) / 2.0**2)

    # sclerotic acetabular roof (sourcil) and the ossific nuclei
    for k in sides:
        a, b = geom["tcc"][:, k], geom["asm"][:, k]
        ax, ay, bx, by = _col(a[:, 0]), _col(a[:, 1]), _col(b[:, 0]), _col(b[:, 1])
        t = np.clip(
            ((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2), 0, 1
        )
        d = np.sqrt((x - ax - t * (bx - ax)) ** 2 + (y - ay - t * (by - ay)) ** 2)
        atten += 0.25 * np.exp(-((d / 1.2) ** 2)) * (y <= ay + t * (by - ay) + 0.5)
        hc, rn = geom["head"][:, k], _col(geom["nucleus_r"][:, k])
        d2 = (x - _col(hc[:, 0])) ** 2 + (y - _col(hc[:, 1] - 1.0)) ** 2
        atten += 0.06 * 2 * np.sqrt(np.clip(rn**2 - d2, 0, None))
    # lumbar vertebral bodies (superellipses), L3-L5
    for yc in (-44.0, -61.0, -78.0):
        qv = (np.abs(x) / 12.0) ** 4 + (np.abs(y - yc) / 5.5) ** 4
        atten += 0.4 * np.clip(1 - qv, 0, None) ** 0.5 + 0.3 * np.exp(-(((qv - 0.85) / 0.15) ** 2))
        for sd in (-1.0, 1.0):  # pedicles: small cortical rings
            qp = ((x - sd * 7.5) / 2.5) ** 2 + ((y - yc) / 3.2) ** 2
            atten += 0.2 * np.exp(-(((qp - 1.0) / 0.35) ** 2))
    shield = (
        (view == "pelvis")
        * _col(nuis["shield"].to_numpy())
        * ((x / 13.0) ** 2 + ((y - 42.0) / 9.0) ** 2 < 1)
    )
    if out_size != size:
        atten = upsample(atten, out_size)
        shield = upsample(shield.astype(_F32), out_size) > 0.5
        size = out_size

    # ---- photon counts, scatter, log transmission --------------------------------------
    n0 = _col(nuis["n0"].to_numpy())
    primary = n0 * np.exp(-atten)
    veil = ndimage.gaussian_filter(
        primary, sigma=(0, 20 * size / 256, 20 * size / 256), mode="nearest"
    )
    counts = rng.poisson(primary + _col(nuis["scatter"].to_numpy()) * veil).astype(_F32)
    img = -np.log(np.maximum(counts, 1.0) / (n0 * (1 + _col(nuis["scatter"].to_numpy()))))
    blur = float(np.mean(nuis["detector_blur_px"])) * size / 256
    img = ndimage.gaussian_filter(img, sigma=(0, blur, blur))
    # the unsharp-mask "edge enhancement" of clinical radiograph processing
    smooth = ndimage.gaussian_filter(img, sigma=(0, 8 * size / 256, 8 * size / 256), mode="nearest")
    img = img + 0.8 * (img - smooth)
    lo = np.percentile(img, 2.0, axis=(1, 2), keepdims=True)
    hi = np.percentile(img, 99.7, axis=(1, 2), keepdims=True)
    img = np.clip((img - lo) / (hi - lo + 1e-6), 0, 1) ** _col(nuis["gamma"].to_numpy())
    img = np.where(shield, _F32(0.97), img)
    if view == "pelvis":
        img = _decorate(img, nuis, rng)
    return (img * 255 + 0.5).astype(np.uint8)


def _decorate(img, nuis, rng):
    """Collimation borders and a burnt-in side marker (pelvis view only)."""
    n, size, _ = img.shape
    for i in range(n):  # a handful of slices per image, not per-pixel work
        top, bot, left, right = (rng.uniform(0, 0.06, 4) * size).astype(int)
        img[i, :top] = 1.0
        img[i, size - bot :] = 1.0
        img[i, :, :left] = 1.0
        img[i, :, size - right :] = 1.0
        if nuis["marker"].iloc[i]:
            glyph = np.array([[c == "1" for c in row] for row in _GLYPHS["R"]])
            cell = max(1, size // 90)
            mark = np.kron(glyph, np.ones((cell, cell), bool))
            r0, c0 = top + size // 30, left + size // 30
            h, w = mark.shape
            img[i, r0 : r0 + h, c0 : c0 + w][mark] = 1.0
    return img
