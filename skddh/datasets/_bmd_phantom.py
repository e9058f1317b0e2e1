"""Proximal-femur radiograph phantom whose appearance follows bone mineral density (BMD).

Femur-local frame, millimetres: origin ``J`` on the shaft axis at the neck-shaft junction,
x medial (towards the pelvis), y inferior. The shaft is a hollow tube along +y, the neck a
hollow tube from ``J`` to the head centre at the neck-shaft angle, the head a sphere with a
thin shell, the greater trochanter an ellipsoid lateral and superior to ``J``, and the
acetabular roof a bony crescent above the head. Every crop shows a hip with lateral on the
image left (left hips are mirrored, as in the per-hip X-ray views of the hip cohort).

What follows BMD (drawn per patient, shared by all of a patient's images):

* cortical thickness of the neck and the shaft, ``~ (bmd / 0.75) ** 0.9`` and ``** 0.8``;
* trabecular density of the medullary regions, ``~ (bmd / 0.75) ** 1.3``;
* trabecular texture: line frequency ``~ (bmd / 0.75) ** 0.5`` and contrast ``~ bmd``.

Each carries a patient-level log-normal factor independent of BMD (anatomy differs between
people of equal BMD), so even a perfect reader of the image cannot recover BMD exactly.

What does not follow BMD (drawn per image, independently of it): exposure (detector counts,
window, gain, offset, gamma), in-plane rotation, femoral rotation about the shaft axis (the
neck's medial component is foreshortened by ``cos(anteversion + rotation)``), position shift,
magnification, scatter, detector blur and photon noise. Soft-tissue thickness comes from the
patient's body size (BMI) and adds a scatter haze that lowers bone contrast; since BMI also
raises BMD, it is a realistic confounder, not an independent nuisance.

The image is a projection: analytic path lengths through tubes and ellipsoids, Poisson photon
counts, a uniform scatter veil, ``-log`` transmission (bone bright), Gaussian detector blur,
a percentile window and an exposure map. Trabecular gratings are attenuated by a pixel MTF
(``exp(-2 (pi f p sigma)^2)``) instead of being aliased at small image sizes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from scipy import ndimage

_F32 = np.float32
#: Excess linear attenuation over soft tissue (1/mm): cortical bone, trabecular bone at the
#: reference density, soft tissue itself.
MU_CORTICAL, MU_TRABECULAR, MU_SOFT = 0.045, 0.012, 0.02
#: Field of view of a crop (mm) before magnification, and the crop centre (femur frame).
FOV_MM, CENTRE_MM = 120.0, (12.0, -5.0)
_BMD_REF = 0.75  # g/cm^2, where the BMD-following factors equal 1


def chunk_size(image_size: int) -> int:
    """Images rendered in one vectorised call; a function of ``image_size`` only."""
    return int(max(2, min(32, 32 * (128 / image_size) ** 2)))


def draw_femur_anatomy(bmd, sex, rng: np.random.Generator) -> pd.DataFrame:
    """Patient-level femur geometry (mm, degrees); the BMD-following parts as documented."""
    bmd = np.asarray(bmd, float)
    n = len(bmd)
    male = np.asarray(sex) == "M"
    rel = np.clip(bmd, 0.2, None) / _BMD_REF
    head_r = np.where(male, rng.normal(25.0, 1.3, n), rng.normal(22.0, 1.2, n))
    lognorm = lambda s: np.exp(rng.normal(0.0, s, n))  # noqa: E731
    neck_r = 0.65 * head_r * rng.uniform(0.95, 1.05, n)
    shaft_r = 0.62 * head_r * rng.uniform(0.95, 1.05, n)
    return pd.DataFrame(
        {
            "head_r": head_r,
            "neck_r": neck_r,
            "shaft_r": shaft_r,
            "neck_len": rng.uniform(45.0, 55.0, n) * head_r / 23.0,
            "nsa_deg": np.clip(rng.normal(129.0, 5.0, n), 115.0, 145.0),
            "anteversion_deg": np.clip(rng.normal(12.0, 6.0, n), -5.0, 30.0),
            "cortex_neck": 0.14 * neck_r * rel**0.9 * lognorm(0.12),
            "cortex_shaft": 0.30 * shaft_r * rel**0.8 * lognorm(0.12),
            "trabecular": rel**1.3 * lognorm(0.10),
            "texture_freq": 0.16 * rel**0.5 * lognorm(0.06),
            "texture_contrast": 0.25 * rel * lognorm(0.15),
        }
    )


def draw_bmd_nuisance(soft_mm, rng: np.random.Generator) -> pd.DataFrame:
    """Per-image acquisition: all independent of BMD, except soft tissue (body size)."""
    soft_mm = np.asarray(soft_mm, float)
    n = len(soft_mm)
    soft = soft_mm * rng.uniform(0.95, 1.05, n)
    return pd.DataFrame(
        {
            "rotation_deg": rng.uniform(-8.0, 8.0, n),
            "femoral_rotation_deg": np.clip(rng.normal(5.0, 10.0, n), -20.0, 30.0),
            "shift_x_mm": rng.uniform(-6.0, 6.0, n),
            "shift_y_mm": rng.uniform(-6.0, 6.0, n),
            "magnification": rng.uniform(0.9, 1.12, n),
            "soft_tissue_mm": soft,
            "soft_gradient": rng.uniform(-0.08, 0.08, n),
            "scatter_to_primary": soft / 200.0 * rng.uniform(0.3, 0.9, n),
            "detector_counts": np.exp(rng.uniform(np.log(300.0), np.log(3000.0), n)),
            "detector_blur_px": rng.uniform(0.4, 1.0, n),
            "gain": rng.uniform(0.75, 1.0, n),
            "offset": rng.uniform(0.0, 0.15, n),
            "gamma": np.exp(rng.uniform(np.log(0.7), np.log(1.4), n)),
        }
    )


def _col(a):
    return np.asarray(a, dtype=_F32)[:, None, None]


def _tube(x, y, ax, ay, bx, by, r_out, r_in, clamp_end=True):
    """Chord lengths through a hollow tube around segment a-b -> (cortical, medullary) mm."""
    dx, dy = bx - ax, by - ay
    t = ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy)
    t = np.clip(t, 0.0, 1.0) if clamp_end else np.maximum(t, 0.0)
    d2 = (x - ax - t * dx) ** 2 + (y - ay - t * dy) ** 2
    outer = 2.0 * np.sqrt(np.maximum(r_out**2 - d2, 0.0))
    inner = 2.0 * np.sqrt(np.maximum(r_in**2 - d2, 0.0))
    return outer - inner, inner


def _texture(x, y, anat, nuis, px_mm, neck_angle, rng):
    """Sum of oriented gratings (compressive and tensile trabecular systems), MTF-damped."""
    n = x.shape[0]
    freq = anat["texture_freq"].to_numpy()
    tex = np.zeros(x.shape, _F32)
    k_total = 6
    for k in range(k_total):
        # compressive lines run near-vertically (wave vector ~horizontal), tensile ones along
        # the neck (wave vector perpendicular to the neck axis)
        base = np.where(k < 3, np.deg2rad(10.0), neck_angle + np.pi / 2)
        ang = base + np.deg2rad(rng.uniform(-12.0, 12.0, n))
        f = freq * rng.uniform(0.85, 1.15, n)
        mtf = np.exp(-2.0 * (np.pi * f * px_mm * 0.6) ** 2)
        phase = rng.uniform(0.0, 2 * np.pi, n)
        wave = 2 * np.pi * _col(f) * (x * _col(np.cos(ang)) + y * _col(np.sin(ang)))
        tex += _col(mtf) * np.cos(wave + _col(phase))
    return tex / np.sqrt(k_total / 2.0)


def render_bmd(anat: pd.DataFrame, nuis: pd.DataFrame, size: int, rng) -> np.ndarray:
    """Render proximal-femur crops (n, size, size) uint8 from anatomy and acquisition rows."""
    n = len(nuis)
    g = {c: anat[c].to_numpy() for c in anat.columns}
    mag = nuis["magnification"].to_numpy()
    fov = FOV_MM / mag  # anatomical mm across the crop
    px_mm = fov / size
    theta = np.deg2rad(nuis["rotation_deg"].to_numpy())
    grid = (np.arange(size, dtype=_F32) + 0.5) / size - 0.5
    u = grid[None, None, :] * _col(fov)
    v = grid[None, :, None] * _col(fov)
    c, s = _col(np.cos(theta)), _col(np.sin(theta))
    x = c * u - s * v + _col(CENTRE_MM[0] + nuis["shift_x_mm"].to_numpy())
    y = s * u + c * v + _col(CENTRE_MM[1] + nuis["shift_y_mm"].to_numpy())

    # neck axis after femoral rotation: the medial component is foreshortened
    eff = np.deg2rad(g["anteversion_deg"] + nuis["femoral_rotation_deg"].to_numpy())
    nsa = np.deg2rad(g["nsa_deg"])
    hx = g["neck_len"] * np.sin(nsa) * np.cos(eff)
    hy = g["neck_len"] * np.cos(nsa)
    neck_angle = np.arctan2(hy, hx)
    zero = np.zeros(n)

    mu_t = MU_TRABECULAR * g["trabecular"]
    tex = 1.0 + _col(g["texture_contrast"]) * _texture(x, y, anat, nuis, px_mm, neck_angle, rng)

    cort, med = _tube(
        x, y, _col(zero), _col(zero), _col(hx), _col(hy), _col(g["neck_r"]),
        _col(g["neck_r"] - g["cortex_neck"]),
    )  # fmt: skip
    neck = MU_CORTICAL * cort + _col(mu_t) * med * tex
    # shaft: a vertical tube that flares into the metaphysis (thinner cortex) above the
    # lesser trochanter, with a rounded top
    sr, top = _col(g["shaft_r"]), _col(-0.5 * g["head_r"])
    flare = 1.0 / (1.0 + np.exp((y - 12.0) / 7.0))
    r_out = sr * (1.0 + 0.55 * flare)
    r_in = r_out - _col(g["cortex_shaft"]) * (1.0 - 0.65 * flare)
    d2 = (x + 0.15 * sr * flare) ** 2 + np.maximum(top - y, 0.0) ** 2
    outer = 2.0 * np.sqrt(np.maximum(r_out**2 - d2, 0.0))
    med = 2.0 * np.sqrt(np.maximum(r_in**2 - d2, 0.0))
    marrow = 0.25 + 0.75 / (1.0 + np.exp((y - 35.0) / 10.0))  # trabecular bone ends in the canal
    shaft = MU_CORTICAL * (outer - med) + _col(mu_t) * med * tex * marrow
    # head: a sphere with a thin subchondral shell
    r2 = (x - _col(hx)) ** 2 + (y - _col(hy)) ** 2
    hr = _col(g["head_r"])
    outer = 2.0 * np.sqrt(np.maximum(hr**2 - r2, 0.0))
    inner = 2.0 * np.sqrt(np.maximum((hr - 0.35 * _col(g["cortex_neck"])) ** 2 - r2, 0.0))
    head = MU_CORTICAL * (outer - inner) + _col(mu_t) * inner * tex
    # greater trochanter: an ellipsoid of trabecular bone with a thin shell; it overlaps the
    # neck more under external rotation
    tx = -0.75 * g["shaft_r"] + 6.0 * np.sin(eff)
    ta, tb = 0.5 * g["head_r"], 0.7 * g["head_r"]
    q = ((x - _col(tx)) / _col(ta)) ** 2 + ((y - _col(-0.45 * g["head_r"])) / _col(tb)) ** 2
    depth = 2.0 * _col(ta) * np.sqrt(np.maximum(1.0 - q, 0.0))
    troch = _col(mu_t) * depth * tex + MU_CORTICAL * 6.0 * np.exp(-(((q - 0.92) / 0.08) ** 2))
    bone = np.maximum(np.maximum(neck, shaft), np.maximum(head, troch))
    # lesser trochanter: medial, more prominent under external rotation
    lt = 7.0 * np.clip(0.5 + np.sin(eff + np.deg2rad(20.0)), 0.3, 1.5)
    ql = ((x - _col(g["shaft_r"] + 0.3 * lt)) ** 2 + (y - 30.0) ** 2) / _col(lt) ** 2
    bone = bone + _col(mu_t) * 2.0 * _col(lt) * np.sqrt(np.maximum(1.0 - ql, 0.0))
    # acetabular roof: a crescent of pelvic bone over the head, density tied to the patient's
    rim = np.sqrt(r2) - hr
    above = 1.0 / (1.0 + np.exp((y - _col(hy) + 0.2 * hr) / 2.0))
    medial = 1.0 / (1.0 + np.exp(-(x - _col(hx) + 1.2 * hr) / 2.0))
    roof = np.exp(-(((rim - 5.0) / 3.5) ** 2)) + 0.6 / (1.0 + np.exp(-(rim - 8.0) / 2.0))
    bone = bone + (0.5 * MU_CORTICAL * 8.0) * (0.5 + 0.5 * _col(g["trabecular"])) * (
        roof * above * medial
    )

    # ---- soft tissue, photons, scatter, log transmission --------------------------------
    soft = _col(nuis["soft_tissue_mm"].to_numpy())
    ramp = _col(nuis["soft_gradient"].to_numpy()) * (u / _col(fov))
    atten = MU_SOFT * soft * ramp + bone
    n_bg = nuis["detector_counts"].to_numpy() * (200.0 / nuis["soft_tissue_mm"].to_numpy()) ** 2
    n_bg = _col(n_bg * (64.0 / size) ** 2)  # counts per pixel shrink with the pixel
    primary = n_bg * np.exp(-atten)
    spr = _col(nuis["scatter_to_primary"].to_numpy())
    veil = spr * primary.mean(axis=(1, 2), keepdims=True)
    counts = rng.poisson(primary + veil).astype(_F32)
    img = -np.log(np.maximum(counts, 0.5) / (n_bg * (1.0 + spr)))
    blur = nuis["detector_blur_px"].to_numpy() * size / 64.0
    for i in range(n):  # one small filter per image, so each keeps its own blur
        img[i] = ndimage.gaussian_filter(img[i], blur[i], mode="nearest")
    lo = np.percentile(img, 1.0, axis=(1, 2), keepdims=True)
    hi = np.percentile(img, 99.5, axis=(1, 2), keepdims=True)
    img = np.clip((img - lo) / (hi - lo + 1e-6), 0.0, 1.0) ** _col(nuis["gamma"].to_numpy())
    img = _col(nuis["offset"].to_numpy()) + _col(nuis["gain"].to_numpy()) * img
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _bmd_chunk(seed, anat: pd.DataFrame, soft_mm, size: int):
    rng = np.random.default_rng(seed)
    nuis = draw_bmd_nuisance(soft_mm, rng)
    images = render_bmd(anat.reset_index(drop=True), nuis, size, rng)
    return images, nuis.assign(pixel_spacing_mm=FOV_MM / nuis["magnification"] / size)


def render_bmd_images(anat: pd.DataFrame, soft_mm, size: int, seeds, n_jobs=None):
    """Render one image per row of ``anat`` in chunks of :func:`chunk_size` -> images, nuisances.

    ``seeds`` holds one seed per chunk; a chunk's output depends only on its seed and rows,
    so results do not depend on ``n_jobs``.
    """
    step = chunk_size(size)
    soft_mm = np.asarray(soft_mm, float)
    parts = Parallel(n_jobs=n_jobs)(
        delayed(_bmd_chunk)(seeds[i], anat.iloc[s : s + step], soft_mm[s : s + step], size)
        for i, s in enumerate(range(0, len(anat), step))
    )
    if not parts:
        return np.zeros((0, size, size), np.uint8), draw_bmd_nuisance([], np.random.default_rng(0))
    images = np.concatenate([p[0] for p in parts])
    return images, pd.concat([p[1] for p in parts], ignore_index=True)
