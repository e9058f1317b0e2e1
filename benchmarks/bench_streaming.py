"""Registries larger than memory: peak memory and images/s, streamed against in memory.

One registry of ``--n`` uint8 images (default 100,000, 64 px) is written to disk twice: as
PNG files (a manifest of paths) and as one ``.npy`` file. Each mode runs in a fresh
subprocess, so its peak resident memory (``ru_maxrss``) is its own:

- in memory (the baseline): the ``.npy`` loaded whole, as a user with enough RAM would;
- memory-mapped: ``np.load(mmap_mode="r")``, read batch by batch (chunk-aligned slices);
- file paths: decoded and letterboxed batch by batch by one decode pool, the next batch read
  ahead on a background thread while the current one runs.

Per mode and registry size: ``SimSiamFeaturizer.transform`` over all ``--n`` images, and
``fit`` for one epoch on the first ``--fit-n``. The table gives images/s, peak RSS and the
peak heap the data added (anonymous RSS sampled in the child, less its value before any image
was read), each as a ratio to the in-memory baseline of the same size; over ``--repeat``
runs, mean and spread. Bounded memory shows as a heap that does not grow with ``--n`` beyond
the returned features.

    python benchmarks/bench_streaming.py [--n 25000 100000] [--fit-n 4000] [--size 64] \
        [--image-size 32] [--repeat 2] [--dir /tmp/skddh_stream]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, threading, time
import numpy as np
from skddh import SimSiamFeaturizer


def anon_mib():
    # RssAnon: the process's own heap. File-backed pages of a memory map count in ru_maxrss
    # but are page cache the kernel reclaims, so the bound is on this one.
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


peak = [0.0]
def sample():
    while True:
        peak[0] = max(peak[0], anon_mib())
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()

mode, root, n, n_fit, image_size = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
enc = SimSiamFeaturizer(backbone="resnet10t", image_size=image_size, epochs=1, batch_size=256,
                        projection_dim=256, prediction_dim=64, device="cpu", random_state=0,
                        verbose=0)
time.sleep(0.1)
base = anon_mib()  # torch and the process, before any image
if mode == "in memory":
    X = np.array(np.load(f"{root}/images.npy", mmap_mode="r")[:n])
elif mode == "memory-mapped":
    X = np.load(f"{root}/images.npy", mmap_mode="r")[:n]
else:
    X = [line for line in open(f"{root}/paths.txt").read().splitlines() if line][:n]
t = time.perf_counter()
enc.fit(X[:n_fit])
fit_s = time.perf_counter() - t
t = time.perf_counter()
features = enc.transform(X)
transform_s = time.perf_counter() - t
time.sleep(0.05)
print(json.dumps({"fit_img_s": n_fit / fit_s, "transform_img_s": len(features) / transform_s,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "peak_anon_mib": peak[0], "data_anon_mib": peak[0] - base,
                  "features_mib": features.nbytes / 2**20, "n": len(features)}))
"""


def write_registry(root: Path, n: int, size: int) -> None:
    """Blobs on noise, uint8: as PNG files and as one .npy (reused when present)."""
    from PIL import Image

    if (root / "images.npy").exists() and (root / "paths.txt").exists():
        arr = np.load(root / "images.npy", mmap_mode="r")
        if arr.shape == (n, size, size):
            return
    root.mkdir(parents=True, exist_ok=True)
    (root / "png").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    out = np.lib.format.open_memmap(
        root / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size)
    )
    paths = []
    for start in range(0, n, 1000):
        k = min(1000, n - start)
        cx, cy = rng.uniform(0.3 * size, 0.7 * size, (2, k, 1, 1))
        r = rng.uniform(0.15 * size, 0.35 * size, (k, 1, 1))
        blob = ((xx - cx) ** 2 + (yy - cy) ** 2) < r**2
        img = (blob * 160 + rng.normal(40, 20, (k, size, size))).clip(0, 255).astype(np.uint8)
        out[start : start + k] = img
        for j in range(k):
            path = root / "png" / f"{start + j:06d}.png"
            Image.fromarray(img[j]).save(path)
            paths.append(str(path))
    out.flush()
    (root / "paths.txt").write_text("\n".join(paths))


def run_mode(mode, root, n, args):
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())}
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            mode,
            str(root),
            str(n),
            str(args.fit_n),
            str(args.image_size),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--n", type=int, nargs="+", default=[25_000, 100_000], help="registry sizes to compare"
    )
    parser.add_argument("--fit-n", type=int, default=4000)
    parser.add_argument("--size", type=int, default=64, help="stored image side (px)")
    parser.add_argument("--image-size", type=int, default=32, help="the encoder's input (px)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/skddh_stream"))
    args = parser.parse_args()
    t = time.perf_counter()
    n_max = max(args.n)
    write_registry(args.dir, n_max, args.size)
    du = sum(p.stat().st_size for p in (args.dir / "png").iterdir()) / 2**20
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs; up to {n_max} images of {args.size} px "
        f"({du:.0f} MiB of PNG, {n_max * args.size**2 / 2**20:.0f} MiB as uint8), written or "
        f"found in {time.perf_counter() - t:.0f} s; encoder resnet10t at {args.image_size} px; "
        f"fit: 1 epoch on {args.fit_n}; {args.repeat} repeats; mean ± std over repeats"
    )
    modes = ["in memory", "memory-mapped", "file paths"]
    runs = {(n, m): [] for n in args.n for m in modes}
    for _ in range(args.repeat):
        for n in args.n:
            for m in modes:
                runs[n, m].append(run_mode(m, args.dir, n, args))
    keys = ["transform_img_s", "fit_img_s", "peak_rss_mib", "data_anon_mib"]

    def cell(v, base):
        return f"{v.mean():.0f} ± {v.std():.0f} ({v.mean() / base:.2f}x)"

    print(
        "| images | mode | transform img/s | fit img/s | peak RSS (MiB) "
        "| peak heap for data (MiB) | of which features out (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in args.n:
        base = {k: np.mean([r[k] for r in runs[n, "in memory"]]) for k in keys}
        for m in modes:
            cells = [cell(np.array([r[k] for r in runs[n, m]]), base[k]) for k in keys]
            feats = runs[n, m][0]["features_mib"]
            print(f"| {n} | {m} | " + " | ".join(cells) + f" | {feats:.0f} |")
    print(
        "# ratios: to the in-memory baseline of the same size. Peak heap for data: the largest "
        "anonymous RSS (sampled every 20 ms) less the process's before any image was read; it "
        "includes the returned features. Peak RSS also counts the memory map's page cache."
    )


if __name__ == "__main__":
    main()
