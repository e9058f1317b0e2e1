"""How fast is synthetic image generation? Vectorised chunks vs a per-image loop.

Baseline: the same renderer called one image at a time (the "straightforward per-image numpy
version" of DOMAIN.md 7.5), timed in the same run. Prints a table of images/s and the ratio.

    python benchmarks/bench_cohort.py [--n-us 10000] [--n-baseline 500] [--n-jobs 2]
"""

import argparse
import os
import platform
import time

import numpy as np

from skddh.datasets._latent import DEFAULT_CORRELATION, draw_hips, draw_subjects
from skddh.datasets._render import render_us_images, render_xr_images, us_drawn_values
from skddh.datasets._xr_phantom import draw_xr_geometry


def _us_inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    subjects = draw_subjects(n, "registry", rng)
    hips = draw_hips(subjects, "registry", rng, correlation=DEFAULT_CORRELATION, lr_correlation=0.5)
    drawn = us_drawn_values(hips.iloc[::2].reset_index(drop=True), rng)
    return drawn, subjects["age_us_weeks"].to_numpy()


def _xr_inputs(n_films, seed=0):
    rng = np.random.default_rng(seed)
    subjects = draw_subjects(n_films, "registry", rng)
    hips = draw_hips(subjects, "registry", rng, correlation=DEFAULT_CORRELATION, lr_correlation=0.5)
    return draw_xr_geometry(hips, subjects["age_xr_months"].to_numpy(), rng)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-us", type=int, default=10_000)
    ap.add_argument("--n-xr-films", type=int, default=1_000)
    ap.add_argument("--n-baseline", type=int, default=500)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n-jobs", type=int, default=2)
    args = ap.parse_args()
    size = args.size
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"n_jobs={args.n_jobs}; {size} px"
    )
    rows = []

    drawn, age = _us_inputs(args.n_us)
    seeds = np.random.SeedSequence(0).spawn(len(drawn))
    t = time.perf_counter()
    render_us_images(drawn, age, size, seeds, n_jobs=args.n_jobs)
    fast = args.n_us / (time.perf_counter() - t)
    nb = args.n_baseline
    t = time.perf_counter()
    for i in range(nb):  # one image per call: the per-image baseline
        render_us_images(drawn.iloc[i : i + 1], age[i : i + 1], size, [seeds[i]], n_jobs=None)
    base = nb / (time.perf_counter() - t)
    rows.append(("ultrasound", args.n_us, fast, base))

    geom = _xr_inputs(args.n_xr_films)
    n_views = 2 * args.n_xr_films
    xseeds = np.random.SeedSequence(1).spawn(args.n_xr_films)
    t = time.perf_counter()
    render_xr_images(geom, size, xseeds, n_jobs=args.n_jobs)
    fast_xr = n_views / (time.perf_counter() - t)
    nbx = max(1, nb // 4)
    t = time.perf_counter()
    for i in range(nbx):
        one = {k: np.asarray(v)[i : i + 1] for k, v in geom.items()}
        render_xr_images(one, size, [xseeds[i]], n_jobs=None)
    base_xr = 2 * nbx / (time.perf_counter() - t)
    rows.append(("x-ray hip views", n_views, fast_xr, base_xr))

    print(
        f"{'modality':<16}{'images':>8}{'chunked img/s':>15}{'per-image img/s':>17}"
        f"{'ratio':>7}{'10k images (s)':>16}"
    )
    for name, n, f, b in rows:
        print(f"{name:<16}{n:>8}{f:>15.0f}{b:>17.0f}{f / b:>7.1f}{10_000 / f:>16.1f}")


if __name__ == "__main__":
    main()
