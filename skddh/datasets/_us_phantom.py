"""Ultrasound phantom: a coronal Graf standard plane drawn from (alpha, beta, FHC).

Geometry, in an anatomical frame in millimetres with the bony rim R at the
origin, the iliac baseline along -x (cranial to the left), depth +y (away from the transducer):

* bony roof from R to the lower limb ``L = s (cos a, sin a)``, so the angle between the
  baseline and the roof line is alpha;
* labrum centroid at ``k (cos b, -sin b)``, so the cartilage roof line makes beta with the
  baseline on the other side;
* femoral head centre ``C`` at depth ``(FHC - 0.5) 2 r`` (so d/D = FHC exactly) and at
  distance ``r + g`` from the roof line.

The image is formed like a B-mode scan: an echogenicity map, complex Gaussian speckle through
an anisotropic point-spread function, specular bone echoes, acoustic shadows cumulative along
each beam (image column), reverberation, gain/TGC, log compression into a dynamic range, a
grey map, noise, blur and 8-bit quantisation. Everything is vectorised over a chunk of images
(numpy + scipy.fft); no per-image Python work except a loop over a few line segments.

Label-invariant nuisances: probe tilt (in-plane rotation), translation, field of view, mirror,
every intensity parameter. The plane offset (within-hip variability) changes the drawn alpha
and FHC and is applied by the caller.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy import ndimage

#: Landmark columns (pixel coordinates, column = x, row = y) stored for every US image.
US_LANDMARKS = (
    "iliac_x",
    "iliac_y",
    "rim_x",
    "rim_y",
    "lower_limb_x",
    "lower_limb_y",
    "labrum_x",
    "labrum_y",
    "head_cx",
    "head_cy",
    "head_r",
)


def _col(a):
    return np.asarray(a, dtype=np.float32)[:, None, None]


def _dist_to_polyline(x, y, pts):
    """Distance from every pixel to a per-image polyline; pts has shape (n, K, 2)."""
    d2 = np.full(x.shape, np.inf, dtype=np.float32)
    for k in range(pts.shape[1] - 1):
        ax, ay = _col(pts[:, k, 0]), _col(pts[:, k, 1])
        dx, dy = _col(pts[:, k + 1, 0]) - ax, _col(pts[:, k + 1, 1]) - ay
        t = ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy + 1e-9)
        np.clip(t, 0.0, 1.0, out=t)
        ex, ey = x - ax - t * dx, y - ay - t * dy
        np.minimum(d2, ex * ex + ey * ey, out=d2)
    return np.sqrt(d2)


def _quartic_bump(d, width):
    """exp(-(d / width)^4), with the power as two squarings (numpy's pow is ~10x slower)."""
    q = d / width
    q *= q
    return np.exp(-(q * q))


def _bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix doing 1-D linear interpolation (cell centres aligned)."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] += 1 - w
    m[np.arange(n_out), hi] += w
    return m


def upsample(a: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a stack (n, h, w) to (n, size, size) by two small matmuls.

    Faster than ``scipy.ndimage.zoom`` on image stacks by an order of magnitude here.
    """
    ry, rx = _bilinear_matrix(size, a.shape[1]), _bilinear_matrix(size, a.shape[2])
    return np.matmul(np.matmul(ry, a), rx.T)


def _in_wedge(vx, vy, ax, ay, bx, by):
    """Whether vector v lies in the angular wedge from a to b (the shorter way round)."""
    cab = ax * by - ay * bx
    c1 = ax * vy - ay * vx
    c2 = vx * by - vy * bx
    return (c1 * cab >= 0) & (c2 * cab >= 0) & ((vx * (ax + bx) + vy * (ay + by)) > 0)


def _gaussian_transfer(shape, sig_rows, sig_cols, real=False):
    """Per-image Gaussian filter transfer function in the Fourier domain (n, H, W or W//2+1)."""
    h, w = shape
    fy = sfft.fftfreq(h).astype(np.float32)[None, :, None]
    fx = (sfft.rfftfreq(w) if real else sfft.fftfreq(w)).astype(np.float32)[None, None, :]
    return np.exp(-2 * np.pi**2 * (_col(sig_rows) ** 2 * fy**2 + _col(sig_cols) ** 2 * fx**2))


def draw_us_geometry(alpha_img, beta, fhc, rng, age_weeks=None):
    """Draw the landmark geometry (anatomical frame, mm) realising the given measurements."""
    alpha_img = np.asarray(alpha_img, dtype=float)
    n = len(alpha_img)
    age_months = np.zeros(n) if age_weeks is None else np.asarray(age_weeks) / 4.345
    r = rng.uniform(6.5, 9.5, n) + 0.5 * np.minimum(age_months, 6.0)
    g = rng.uniform(0.8, 1.5, n)
    s = r * rng.uniform(0.9, 1.1, n)
    a, b = np.deg2rad(alpha_img), np.deg2rad(np.asarray(beta, float))
    yc = (np.asarray(fhc, float) - 0.5) * 2.0 * r
    xc = (r + g + yc * np.cos(a)) / np.sin(a)
    k = 1.15 * (r + 1.5)
    return {
        "iliac": np.stack([np.full(n, -15.0), np.zeros(n)], 1),
        "rim": np.zeros((n, 2)),
        "lower_limb": np.stack([s * np.cos(a), s * np.sin(a)], 1),
        "labrum": np.stack([k * np.cos(b), -k * np.sin(b)], 1),
        "head_c": np.stack([xc, yc], 1),
        "head_r": r,
        "gap": g,
        "alpha_img": alpha_img,
    }


def draw_us_nuisance(geom, rng, *, mirror=False):
    """Label-invariant acquisition parameters, one row per image.

    The probe is placed so that the femoral head lies below the skin and inside the field of
    view (a sonographer centres the joint); the rest is random.
    """
    n = len(geom["head_r"])
    fov = rng.uniform(38.0, 52.0, n)
    r, xc, yc = geom["head_r"], geom["head_c"][:, 0], geom["head_c"][:, 1]
    depth = np.maximum(rng.uniform(8.0, 14.0, n), r - yc + rng.uniform(4.0, 6.0, n))
    col = rng.uniform(0.25, 0.42, n) * fov
    col = np.minimum(col, 0.97 * fov - xc - 1.3 * r)
    return pd.DataFrame(
        {
            "fov_mm": fov,
            "rim_col_frac": np.maximum(col, 0.12 * fov) / fov,
            "iliac_depth_mm": depth,
            "tilt_deg": rng.uniform(-10.0, 10.0, n),
            "shift_x_mm": rng.uniform(-0.03, 0.03, n) * fov,
            "mirror": np.full(n, bool(mirror)) if isinstance(mirror, bool) else mirror,
            "gain_db": rng.uniform(-6.0, 6.0, n),
            "tgc_slope_db": rng.uniform(-6.0, 6.0, n),
            "dynamic_range_db": rng.uniform(45.0, 70.0, n),
            "gamma": rng.uniform(0.8, 1.3, n),
            "noise_sd": rng.uniform(0.005, 0.03, n),
            "blur_px": rng.uniform(0.0, 1.0, n),
            "psf_axial_mm": rng.uniform(0.15, 0.3, n),
            "psf_lateral_mm": rng.uniform(0.3, 0.6, n),
            "nakagami_m": rng.uniform(0.7, 1.5, n),
            "bone_echo": rng.uniform(3.0, 5.0, n),
        }
    )


def us_to_image(points, nuis, size):
    """Map anatomical points (n, 2) mm to pixel coordinates (n, 2) (x = column, y = row)."""
    px = nuis["fov_mm"].to_numpy() / size
    th = np.deg2rad(nuis["tilt_deg"].to_numpy())
    tx = nuis["rim_col_frac"].to_numpy() * nuis["fov_mm"].to_numpy() + nuis["shift_x_mm"].to_numpy()
    ty = nuis["iliac_depth_mm"].to_numpy()
    x = np.cos(th) * points[:, 0] - np.sin(th) * points[:, 1] + tx
    y = np.sin(th) * points[:, 0] + np.cos(th) * points[:, 1] + ty
    mirror = nuis["mirror"].to_numpy(bool)
    x = np.where(mirror, nuis["fov_mm"].to_numpy() - x, x)
    return np.stack([x / px - 0.5, y / px - 0.5], 1)


def us_landmarks_px(geom, nuis, size) -> pd.DataFrame:
    """Landmarks of :data:`US_LANDMARKS` in pixel coordinates."""
    out = {}
    for name, key in [
        ("iliac", "iliac"),
        ("rim", "rim"),
        ("lower_limb", "lower_limb"),
        ("labrum", "labrum"),
    ]:
        p = us_to_image(geom[key], nuis, size)
        out[f"{name}_x"], out[f"{name}_y"] = p[:, 0], p[:, 1]
    c = us_to_image(geom["head_c"], nuis, size)
    out["head_cx"], out["head_cy"] = c[:, 0], c[:, 1]
    out["head_r"] = geom["head_r"] * size / nuis["fov_mm"].to_numpy()
    return pd.DataFrame(out)[list(US_LANDMARKS)]


def render_us(geom, nuis, size, rng, *, plane_offset=None, ossified=None):
    """Render a chunk of B-mode images (n, size, size) uint8 from geometry and nuisances."""
    n = len(nuis)
    f32 = np.float32
    fov = nuis["fov_mm"].to_numpy()
    px = fov / size
    offset = np.zeros(n) if plane_offset is None else np.asarray(plane_offset, float)
    nonstd = np.clip((np.abs(offset) - 0.7) / 0.3, 0.0, 1.0)  # 0 on a standard plane

    # pixel centres in image mm, then in the anatomical frame (inverse of us_to_image)
    grid = (np.arange(size, dtype=f32) + 0.5)[None, :]
    xi = grid[:, None, :] * _col(px)  # (n, 1, W)
    zi = grid[:, :, None] * _col(px)  # (n, H, 1): depth below the transducer
    xi = np.where(_col(nuis["mirror"].to_numpy(bool)), _col(fov) - xi, xi)
    th = _col(np.deg2rad(nuis["tilt_deg"].to_numpy()))
    tx = _col(nuis["rim_col_frac"].to_numpy() * fov + nuis["shift_x_mm"].to_numpy())
    ty = _col(nuis["iliac_depth_mm"].to_numpy())
    dx, dy = xi - tx, zi - ty
    x = (np.cos(th) * dx + np.sin(th) * dy).astype(f32)
    y = (-np.sin(th) * dx + np.cos(th) * dy).astype(f32)
    zi = np.broadcast_to(zi, x.shape)

    r, cx, cy = _col(geom["head_r"]), _col(geom["head_c"][:, 0]), _col(geom["head_c"][:, 1])
    a = np.deg2rad(geom["alpha_img"])

    # ---- diffuse echogenicity (intensity) -------------------------------------------
    subcutis = _col(rng.uniform(1.5, 3.0, n))
    e = np.where(zi < subcutis, _col(rng.uniform(0.15, 0.25, n)), _col(rng.uniform(0.3, 0.4, n)))
    e = e.astype(f32)
    # fascial septa in the gluteal muscles: 2-4 gently curved bright lines above the ilium
    n_septa = rng.integers(2, 5, n)
    for k in range(4):
        depth = subcutis + 1.0 + _col(rng.uniform(0, 1, n)) * (ty - subcutis - 2.5)
        curve = _col(rng.uniform(-0.02, 0.02, n)) * (xi - _col(fov) / 2) ** 2 / _col(fov)
        slope = _col(rng.uniform(-0.08, 0.08, n)) * (xi - _col(fov) / 2)
        on = _col((k < n_septa).astype(f32) * rng.uniform(0.7, 0.9, n))
        band = np.exp(-(((zi - depth - curve - slope) / 0.2) ** 2))
        e = np.maximum(e, on * band)

    dxh, dyh = x - cx, y - cy
    dist_c = np.sqrt(dxh * dxh + dyh * dyh)
    # deep to the joint: pelvic floor muscle and fat, darker than the gluteals
    deep = np.clip((y - cy - 0.6 * r) / 3.0, 0.0, 1.0)
    e = e * (1 - deep) + deep * _col(rng.uniform(0.12, 0.2, n))
    head = dist_c < r
    e = np.where(head, _col(rng.uniform(0.10, 0.15, n)), e)
    # sparse bright "vascular" dots in the cartilaginous head, ~0.5 per mm^2
    dots = (rng.random(x.shape, dtype=f32) < _col(0.5 * px**2)) & head
    e = np.where(dots, f32(0.4), e)

    # greater trochanter: hypoechoic cartilage lateral (superficial) to the neck
    gtx, gty = (x - cx - 1.35 * r) / (0.55 * r), (y - cy + 0.45 * r) / (0.45 * r)
    e = np.where(gtx * gtx + gty * gty < 1, _col(rng.uniform(0.1, 0.16, n)), e)

    # hyaline cartilage roof: hugs the head between the rim and the labrum
    lab_x, lab_y = _col(geom["labrum"][:, 0]), _col(geom["labrum"][:, 1])
    wedge = _in_wedge(dxh, dyh, -cx, -cy, lab_x - cx, lab_y - cy)
    gap = _col(geom["gap"])
    e = np.where(
        wedge & (dist_c >= r) & (dist_c < r + gap + 0.6), _col(rng.uniform(0.06, 0.1, n)), e
    )

    # labrum: echogenic triangle at the centroid, pointing away from the rim
    lab_len = np.hypot(geom["labrum"][:, 0], geom["labrum"][:, 1])
    ux, uy = _col(geom["labrum"][:, 0] / lab_len), _col(geom["labrum"][:, 1] / lab_len)
    vx, vy = -uy, ux
    tri = [
        (lab_x + 2.0 * ux, lab_y + 2.0 * uy),
        (lab_x - 1.0 * ux + 1.4 * vx, lab_y - 1.0 * uy + 1.4 * vy),
        (lab_x - 1.0 * ux - 1.4 * vx, lab_y - 1.0 * uy - 1.4 * vy),
    ]
    signs = []
    for (ax_, ay_), (bx_, by_) in zip(tri, tri[1:] + tri[:1]):
        signs.append((bx_ - ax_) * (y - ay_) - (by_ - ay_) * (x - ax_) >= 0)
    in_tri = (signs[0] == signs[1]) & (signs[1] == signs[2])
    e = np.where(in_tri, _col(rng.uniform(2.5, 3.5, n)), e)

    # ischium and triradiate gap deep to the lower limb
    llx, lly = _col(geom["lower_limb"][:, 0]), _col(geom["lower_limb"][:, 1])
    tri_gap = ((x - llx - 1.5) / 1.6) ** 2 + ((y - lly - 1.2) / 1.3) ** 2 < 1
    e = np.where(tri_gap, f32(0.08), e)

    e = ndimage.gaussian_filter(e, sigma=(0, 0.7, 0.7))

    # ---- specular echoes (amplitude) and the bone mask that casts shadows -----------
    rho = 0.2 + 1.0 * np.clip((60.0 - geom["alpha_img"]) / 20.0, 0.0, 1.0)  # rounded rim
    kappa = nonstd * rng.choice([-1.0, 1.0], n) * 0.006
    s_draw = np.hypot(geom["lower_limb"][:, 0], geom["lower_limb"][:, 1])
    s_draw = s_draw * np.where(nonstd > 0, 0.55, 1.0)  # non-standard plane: no lower limb
    xs = np.stack([-90.0 * np.ones(n), -25.0 * np.ones(n), -rho], 1)
    ilium = np.stack([xs, kappa[:, None] * xs**2], 2)
    tt = np.array([0.5])[None, :, None]
    p0 = np.stack([-rho, np.zeros(n)], 1)[:, None, :]
    p2 = np.stack([rho * np.cos(a), rho * np.sin(a)], 1)[:, None, :]
    corner = (1 - tt) ** 2 * p0 + (tt**2) * p2  # quadratic Bezier with its control at R
    roof_end = np.stack([s_draw * np.cos(a), s_draw * np.sin(a)], 1)[:, None, :]
    pts = np.concatenate([ilium, corner, p2, roof_end], 1)
    thick = _col(rng.uniform(0.6, 1.0, n))
    bone_profile = _quartic_bump(_dist_to_polyline(x, y, pts), 0.5 * thick)
    # ischium echo, deeper beyond the triradiate gap
    isch = np.concatenate(
        [geom["lower_limb"][:, None] + [[3.0, 2.6]], geom["lower_limb"][:, None] + [[6.5, 3.6]]], 1
    )
    bone_profile = np.maximum(
        bone_profile, 0.25 * _quartic_bump(_dist_to_polyline(x, y, isch), 0.35)
    )
    # chondro-osseous border of the femoral neck: bright arc below-right of the head
    nx, ny = cx + 0.35 * r, cy + 0.2 * r  # the metaphysis is not concentric with the head
    dist_n = np.sqrt((x - nx) ** 2 + (y - ny) ** 2)
    neck_dir = _in_wedge(dxh, dyh, 0.853, 0.522, 0.315, 0.949)  # 0.55 to 1.25 rad below-right
    neck = _quartic_bump(dist_n - 0.95 * r, 0.35) * neck_dir
    bone_profile = np.maximum(bone_profile, 0.7 * neck)
    if ossified is not None and np.any(ossified):
        nuc_r = _col(np.where(ossified, rng.uniform(1.0, 3.0, n), 0.0))
        bone_profile = np.maximum(bone_profile, np.where(dist_c < nuc_r, f32(0.8), f32(0)))
    # e is a relative amplitude; bone and capsule echoes are ~30 dB above muscle
    bone_echo = _col(nuis["bone_echo"].to_numpy()) * 4.0
    spec = bone_profile * bone_echo
    # capsule / perichondrium: bright arc over the lateral head, from the labrum towards the neck
    cap = np.exp(-(((dist_c - r - 1.3) / 0.25) ** 2))
    cap_wedge = _in_wedge(dxh, dyh, lab_x - cx, lab_y - cy, 0.989, -0.149)
    spec = np.maximum(spec, cap * cap_wedge * _col(rng.uniform(1.0, 2.0, n)))
    spec = np.maximum(spec, np.exp(-((zi / 0.25) ** 2)) * 1.5)  # skin line

    # acoustic shadow: cumulative bone along each beam (rows, top to bottom), exclusive
    cum = np.cumsum(bone_profile, axis=1) - bone_profile
    floor = _col(rng.uniform(0.03, 0.1, n))
    shadow = floor + (1 - floor) * np.exp(-cum * _col(px) / 0.3)
    # reverberation: a faint copy of the first bone echo at twice its depth
    rows = np.arange(size, dtype=f32)[None, :, None]
    first = np.argmax(bone_profile > 0.5, axis=1).astype(f32)[:, None, :]
    has_bone = np.any(bone_profile > 0.5, axis=1)[:, None, :]
    reverb = has_bone * np.exp(-(((rows - 2 * first) * _col(px) / 0.4) ** 2)) * 0.25

    # ---- speckle ---------------------------------------------------------------------
    noise = rng.standard_normal(x.shape, dtype=f32) + 1j * rng.standard_normal(x.shape, dtype=f32)
    sig_ax = np.maximum(nuis["psf_axial_mm"].to_numpy() / px, 0.5)
    sig_lat = np.maximum(nuis["psf_lateral_mm"].to_numpy() / px, 0.8)
    speck = sfft.ifft2(
        sfft.fft2(noise, workers=1) * _gaussian_transfer((size, size), sig_ax, sig_lat), workers=1
    )
    speck /= np.sqrt(np.mean(np.abs(speck) ** 2, axis=(1, 2), keepdims=True))
    # Nakagami-like texture: a Gamma(m, 1/m) intensity field with ~1 mm correlation
    cells = max(2, int(round(size * float(np.mean(px)) / 1.0)))
    m = nuis["nakagami_m"].to_numpy()
    coarse = rng.gamma(m[:, None, None], 1 / m[:, None, None], (n, cells, cells)).astype(f32)
    texture = upsample(coarse, size)

    env = np.abs(e * np.sqrt(texture) * speck + spec) * shadow + reverb * bone_echo * 0.04
    depth_frac = zi / _col(fov)
    gain_db = _col(nuis["gain_db"].to_numpy()) + _col(nuis["tgc_slope_db"].to_numpy()) * depth_frac
    env = env * np.exp(gain_db * np.float32(np.log(10) / 20))

    # ---- log compression, grey map, noise, blur, quantisation -------------------------
    dr = _col(nuis["dynamic_range_db"].to_numpy())
    db = 20 * np.log10(env / (0.7 * bone_echo) + 1e-6)
    img = np.clip((db + dr) / dr, 0, 1) ** _col(nuis["gamma"].to_numpy())
    img = img + rng.standard_normal(img.shape, dtype=f32) * _col(nuis["noise_sd"].to_numpy())
    blur = nuis["blur_px"].to_numpy()
    img = sfft.irfft2(
        sfft.rfft2(img, workers=1) * _gaussian_transfer((size, size), blur, blur, real=True),
        s=(size, size),
        workers=1,
    )
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
