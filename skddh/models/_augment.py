"""Batched, per-sample augmentation for grayscale ultrasound and X-ray, on the training device.

Every parameter is drawn per sample from a local generator, and applied to the whole batch
in a few tensor ops: one ``affine_grid`` + ``grid_sample`` does the random resized crop,
flip, small rotation and resize together; intensity changes broadcast per-sample scalars;
blur is one grouped convolution with a per-sample kernel; speckle is multiplicative noise.
We write this ourselves because torchvision's v2 transforms draw one set of parameters per
call (per batch when given a batch) and kornia's defaults take slow per-sample paths for
some ops (their issue trackers document both); per-sample draws in batched ops are what a
fast SimSiam loop needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation strengths (the SimSiam recipe, tuned for grayscale medical images)."""

    crop_scale: tuple[float, float] = (0.4, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    rotation: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2
    gamma: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    speckle_p: float = 0.5
    speckle: float = 0.15


def _uniform(n, lo, hi, gen, device):
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _intensity(v, brightness, contrast, gamma, gen):
    """Per-sample brightness shift, contrast gain about the image mean and gamma."""
    n, dev, shape = v.shape[0], v.device, (v.shape[0], 1, 1, 1)
    bright = _uniform(n, -brightness, brightness, gen, dev).view(shape)
    gain = _uniform(n, 1 - contrast, 1 + contrast, gen, dev).view(shape)
    log_g = math.log1p(gamma)
    g = torch.exp(_uniform(n, -log_g, log_g, gen, dev)).view(shape)
    mean = v.mean(dim=(1, 2, 3), keepdim=True)
    return ((v - mean) * gain + mean + bright).clamp(1e-6, 1.0) ** g


def _crop_grid(n, size, p: AugmentParams, gen, device):
    """Sampling grids for per-sample random resized crop, flip and rotation."""
    area = _uniform(n, *p.crop_scale, gen, device)
    log_r = _uniform(n, math.log(p.crop_ratio[0]), math.log(p.crop_ratio[1]), gen, device)
    ratio = torch.exp(log_r)
    sx = torch.sqrt(area * ratio).clamp(max=1.0)  # half-widths in normalised coordinates
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (1 - sx) * _uniform(n, -1.0, 1.0, gen, device)
    ty = (1 - sy) * _uniform(n, -1.0, 1.0, gen, device)
    angle = torch.deg2rad(_uniform(n, -p.rotation, p.rotation, gen, device))
    flip = torch.where(torch.rand(n, generator=gen, device=device) < p.flip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([sx * cos * flip, -sy * sin, tx], dim=1),
            torch.stack([sx * sin * flip, sy * cos, ty], dim=1),
        ],
        dim=1,
    )
    return F.affine_grid(theta, (n, 1, size, size), align_corners=False)


def _blur(x, sigma, max_sigma):
    """Separable Gaussian blur with one sigma per sample (grouped convolution).

    The kernel radius comes from the largest sigma that can be drawn, not from the drawn
    ones: reading those back would synchronise the GPU on every step.
    """
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * max_sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].to(x.dtype)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (n * c, K)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(
        F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c
    )
    y = F.conv2d(
        F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=n * c
    )
    return y.reshape(n, c, h, w)


def augment(x: torch.Tensor, size: int, p: AugmentParams, gen: torch.Generator) -> torch.Tensor:
    """One random view per image.

    Parameters
    ----------
    x : Tensor of shape (n, C, H, W), float in [0, 1], on the training device
    size : int
        Output side in pixels.
    p : AugmentParams
    gen : torch.Generator on ``x.device``

    Returns
    -------
    Tensor of shape (n, C, size, size), float in [0, 1]
    """
    n, dev = x.shape[0], x.device
    grid = _crop_grid(n, size, p, gen, dev).to(x.dtype)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    shape = (n, 1, 1, 1)
    v = _intensity(v, p.brightness, p.contrast, p.gamma, gen)
    if p.blur_p > 0:
        sigma = _uniform(n, *p.blur_sigma, gen, dev)
        off = torch.rand(n, generator=gen, device=dev) >= p.blur_p
        sigma = torch.where(off, torch.full_like(sigma, 1e-3), sigma)  # ~ identity kernel
        v = _blur(v, sigma, p.blur_sigma[1])
    if p.speckle_p > 0:
        amp = _uniform(n, 0.0, p.speckle, gen, dev)
        amp = torch.where(torch.rand(n, generator=gen, device=dev) < p.speckle_p, amp, 0.0)
        noise = torch.randn(v.shape, generator=gen, device=dev, dtype=v.dtype)
        v = v * (1 + amp.view(shape) * noise)
    return v.clamp(0.0, 1.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Fixed standardisation of [0, 1] images (no data-dependent state to fit)."""
    return (x - 0.5) / 0.25


@dataclass(frozen=True)
class MeasureAugmentParams:
    """Label-preserving augmentation for measurement training.

    Graf's alpha and beta are angles between lines drawn in the image, and femoral head
    coverage is a ratio of lengths along one line: a rotation, an isotropic zoom and a shift
    of the whole image keep all three, and so do intensity changes (gain, brightness, gamma)
    and mild noise. A crop with a random aspect ratio does not (it shears angles), so it is
    not drawn. A flip keeps the labels, but the cohort presents every hip in one orientation
    (left hips are mirrored), so it would only add views no test image has; not drawn either.
    """

    rotation: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    shift: float = 0.08
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.2
    noise: float = 0.03


def _measure_theta(n, p: MeasureAugmentParams, gen, device):
    """Affine matrices (n, 2, 3) of random rotations, isotropic zooms and shifts."""
    angle = torch.deg2rad(_uniform(n, -p.rotation, p.rotation, gen, device))
    log_s = _uniform(n, math.log(p.scale[0]), math.log(p.scale[1]), gen, device)
    inv = torch.exp(-log_s)  # the grid maps output to input coordinates: zoom s -> 1 / s
    tx = _uniform(n, -p.shift, p.shift, gen, device) * 2  # normalised coordinates span 2
    ty = _uniform(n, -p.shift, p.shift, gen, device) * 2
    cos, sin = torch.cos(angle) * inv, torch.sin(angle) * inv
    return torch.stack(
        [torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1
    )


def _warp(x, theta):
    """Resample every image of ``x`` by its affine matrix; black where nothing maps."""
    grid = F.affine_grid(theta.to(x.dtype), tuple(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def measurement_views(x: torch.Tensor, p: MeasureAugmentParams, n_views: int):
    """The same ``n_views`` label-preserving geometric views of every image, for averaging.

    Test-time augmentation: view 0 is the image itself; the others are rotations, isotropic
    zooms and shifts within ``p``'s training ranges (no intensity change, no noise), drawn
    once from a fixed seed. Every image gets the same transforms, so a prediction depends on
    its image only, not on the batch it arrives in, the device or the call.

    Parameters
    ----------
    x : Tensor of shape (n, C, H, W), float in [0, 1]
    p : MeasureAugmentParams
    n_views : int >= 1

    Yields
    ------
    Tensor of the shape of ``x``, one view of every image at a time.
    """
    gen = torch.Generator().manual_seed(0)  # on the CPU: the same views on every device
    theta = _measure_theta(n_views, p, gen, torch.device("cpu")).to(x.device)
    theta[0] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    n = x.shape[0]
    for k in range(n_views):
        yield x if k == 0 else _warp(x, theta[k].expand(n, 2, 3))


def augment_measurement(
    x: torch.Tensor, p: MeasureAugmentParams, gen: torch.Generator
) -> torch.Tensor:
    """One label-preserving random view per image, drawn per sample.

    Parameters
    ----------
    x : Tensor of shape (n, C, H, W), float in [0, 1], on the training device
    p : MeasureAugmentParams
    gen : torch.Generator on ``x.device``

    Returns
    -------
    Tensor of the shape of ``x``, float in [0, 1]. Pixels moved in from outside the image
    are black (the ultrasound sector's surroundings), never mirrored copies of anatomy.
    """
    n, dev = x.shape[0], x.device
    v = _warp(x, _measure_theta(n, p, gen, dev))
    v = _intensity(v, p.brightness, p.contrast, p.gamma, gen)
    if p.noise > 0:
        amp = _uniform(n, 0.0, p.noise, gen, dev).view(n, 1, 1, 1)
        v = v + amp * torch.randn(v.shape, generator=gen, device=dev, dtype=v.dtype)
    return v.clamp(0.0, 1.0)


def measure_augment_params(estimator) -> MeasureAugmentParams:
    """The label-preserving augmentation of an estimator's parameters (``rotation``,
    ``scale``, ``shift``, ``brightness``, ``contrast``, ``gamma``, ``noise``), validated."""
    try:
        lo, hi = (float(v) for v in estimator.scale)
    except (TypeError, ValueError):
        raise ValueError(f"scale must be a pair (low, high), got {estimator.scale!r}.") from None
    if not 0 < lo <= hi:
        raise ValueError(f"scale must satisfy 0 < low <= high, got {estimator.scale!r}.")
    return MeasureAugmentParams(
        rotation=float(estimator.rotation),
        scale=(lo, hi),
        shift=float(estimator.shift),
        brightness=float(estimator.brightness),
        contrast=float(estimator.contrast),
        gamma=float(estimator.gamma),
        noise=float(estimator.noise),
    )
