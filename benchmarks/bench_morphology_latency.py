"""Milliseconds per AP pelvis radiograph: localise both hips, crop, classify, against the seed.

The seed (Khosravi et al., Mayo Clinic) reports 832 ms per radiograph for its whole pipeline
(an object detector, then ConvNeXt-Tiny per joint). We time ours in the seed's configuration:
:class:`~skddh.HipJointLocalizer` (ResNet-10t heatmaps at ``--localizer-size`` px) on a
``--image-size`` px radiograph, then :class:`~skddh.MorphologyClassifier` (ConvNeXt-Tiny,
224 px crops) on both hips, through :func:`~skddh.predict_hip_morphology`:

- latency: one radiograph at a time (``predict_hip_morphology`` on a batch of one), split
  into localisation and classification, median and mean over ``--n`` radiographs, each
  repeat with freshly initialised networks (``--repeats``, seeds 0, 1, ...); the ratio is
  against the seed's 832 ms;
- throughput: radiographs per second in batches of ``--batch`` radiographs.

The networks are trained for one epoch only (their weights do not change the time).

    python benchmarks/bench_morphology_latency.py                     # 2 CPU cores
    python benchmarks/bench_morphology_latency.py --device cuda --batch 64
"""

import argparse
import os
import platform
import time

import pandas as pd
import torch

from skddh import (
    HipJointLocalizer,
    MorphologyClassifier,
    make_hip_morphology_cohort,
    predict_hip_morphology,
)
from skddh.datasets import crop_hips
from skddh.studies.morphology import MORPHOLOGY_LABELS, SEED_LATENCY_MS


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _models(cohort, args, seed):
    n_fit = 8
    loc = HipJointLocalizer(
        backbone="resnet10t",
        image_size=args.localizer_size,
        epochs=1,
        batch_size=4,
        device=args.device,
        random_state=seed,
    ).fit(cohort.images[:n_fit], cohort.boxes[cohort.boxes.image_index < n_fit])
    crops = crop_hips(cohort.images[:n_fit], cohort.boxes[cohort.boxes.image_index < n_fit], 224)
    y = cohort.targets.iloc[: 2 * n_fit][[*MORPHOLOGY_LABELS, "sex"]]
    clf = MorphologyClassifier(
        backbone=args.backbone,
        image_size=224,
        auxiliary=("sex",),
        epochs=1,
        batch_size=8,
        device=args.device,
        random_state=seed,
    ).fit(crops, y)
    return loc, clf


def _latency(loc, clf, images, device):
    rows = []
    predict_hip_morphology(loc, clf, images[:1])  # warm-up (allocator, kernels)
    for i in range(len(images)):
        x = images[i : i + 1]
        _sync(device)
        t0 = time.perf_counter()
        boxes = loc.predict(x)
        _sync(device)
        t1 = time.perf_counter()
        clf.predict_proba(crop_hips(x, boxes, 224))
        _sync(device)
        t2 = time.perf_counter()
        predict_hip_morphology(loc, clf, x)
        _sync(device)
        t3 = time.perf_counter()
        rows.append(
            {
                "localise_ms": 1000 * (t1 - t0),
                "classify_ms": 1000 * (t2 - t1),
                "pipeline_ms": 1000 * (t3 - t2),
            }
        )
    return pd.DataFrame(rows)


def _throughput(loc, clf, images, batch, device):
    loc.set_params(batch_size=batch)
    clf.set_params(batch_size=2 * batch)
    x = images[:batch]
    predict_hip_morphology(loc, clf, x)  # warm-up at this batch size
    _sync(device)
    t = time.perf_counter()
    reps = max(1, 2 * len(images) // batch)
    for _ in range(reps):
        predict_hip_morphology(loc, clf, x)
    _sync(device)
    return reps * batch / (time.perf_counter() - t)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="convnext_tiny")
    p.add_argument("--image-size", type=int, default=512, help="radiograph side, px")
    p.add_argument("--localizer-size", type=int, default=256)
    p.add_argument("--n", type=int, default=20, help="radiographs timed one at a time")
    p.add_argument("--batch", type=int, default=8, help="radiographs per batch (throughput)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    cohort = make_hip_morphology_cohort(
        max(args.n, args.batch, 8), image_size=args.image_size, n_holdout=1, random_state=0
    )
    images = cohort.images
    rows = []
    for seed in range(args.repeats):
        loc, clf = _models(cohort, args, seed)
        lat = _latency(loc, clf, images[: args.n], args.device)
        rows.append(
            {
                "repeat": seed,
                "localise_ms": lat["localise_ms"].median(),
                "classify_2_hips_ms": lat["classify_ms"].median(),
                "pipeline_ms_median": lat["pipeline_ms"].median(),
                "pipeline_ms_mean": lat["pipeline_ms"].mean(),
                "pipeline_ms_p90": lat["pipeline_ms"].quantile(0.9),
                "batched_radiographs_per_s": _throughput(loc, clf, images, args.batch, args.device),
            }
        )
    table = pd.DataFrame(rows)
    table["ratio_to_seed_832ms"] = table["pipeline_ms_median"] / SEED_LATENCY_MS
    print(
        f"# machine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPU(s), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
    )
    print(
        f"# {args.backbone} at 224 px on both hips of {args.image_size} px radiographs, "
        f"localiser at {args.localizer_size} px; {args.n} radiographs timed one at a time, "
        f"throughput in batches of {args.batch}"
    )
    print(table.round(3).to_string(index=False))
    summary = table.drop(columns="repeat").agg(["mean", "std"]).T
    print("\nover repeats (mean, std):")
    print(summary.round(3).to_string())
    verdict = "under" if table["pipeline_ms_median"].mean() < SEED_LATENCY_MS else "NOT under"
    print(
        f"\npipeline {table['pipeline_ms_median'].mean():.0f} ms per radiograph: {verdict} the "
        f"seed's {SEED_LATENCY_MS:.0f} ms (ratio {table['ratio_to_seed_832ms'].mean():.2f})"
    )
    return table


if __name__ == "__main__":
    main()
