"""Does SimSiam pretraining help? Frozen SimSiam features vs a frozen random encoder.

Question: on the synthetic cohort, do frozen SimSiam features + ``MeasurementRegressor``
predict the measurements better than a frozen randomly initialised encoder + the same head?
Baseline: the same backbone with random weights (its batch-norm statistics taken from one
pass over the registry, so its features are not degenerate), the same head, same run.
Also shown: the median predictor and ridge regression on the same features.

Each modality's encoder is pretrained on its unlabelled registry; heads are trained on the
training subjects and scored (MAE) on the test subjects.

    python benchmarks/bench_learning.py [--size 64] [--epochs 20] [--n-us 2000] [--n-xr 1000]
        [--n-subjects 75] [--crop-min 0.4]
"""

import argparse
import os
import platform
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV

from skddh import MeasurementRegressor, SimSiamFeaturizer, make_hip_cohort


def _features(registry, images, args, seed):
    common = dict(
        image_size=args.size, batch_size=args.batch_size, device=args.device, random_state=seed
    )
    t = time.perf_counter()
    sim = SimSiamFeaturizer(
        epochs=args.epochs, lr=args.lr, crop_scale=(args.crop_min, 1.0), **common
    ).fit(registry)
    secs = time.perf_counter() - t
    rand = SimSiamFeaturizer(epochs=1, lr=1e-12, **common).fit(registry)  # BN stats only
    return sim.transform(images), rand.transform(images), sim.history_, secs


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-us", type=int, default=2000)
    ap.add_argument("--n-xr", type=int, default=1000)
    ap.add_argument("--n-subjects", type=int, default=75, help="labelled cohort (paper: 75)")
    ap.add_argument("--crop-min", type=float, default=0.4, help="smallest crop area share")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    cohort = make_hip_cohort(
        n_subjects=args.n_subjects,
        image_size=args.size,
        n_registry_us=args.n_us,
        n_registry_xr=args.n_xr,
        n_jobs=-1,
        random_state=args.seed,
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{args.size} px; SimSiam {args.epochs} epochs on {args.n_us} US / {args.n_xr} XR "
        f"registry images; lr {args.lr}, batch {args.batch_size}, crop area >= {args.crop_min}; "
        f"{args.n_subjects} labelled subjects"
    )
    rows = []
    for modality, registry, data, cols in [
        ("ultrasound", cohort.registry_us, cohort.us, ["alpha", "beta", "coverage"]),
        ("x-ray", cohort.registry_xr, cohort.xr, ["ai", "ce"]),
    ]:
        sim, rand, hist, secs = _features(registry, data.images, args, args.seed)
        print(
            f"{modality}: pretraining {secs:.0f} s, loss "
            + " -> ".join(f"{v:.3f}" for v in hist["loss"].iloc[[0, -1]])
        )
        split = np.asarray(data.split)
        tr, te = split == "train", split == "test"
        y = data.targets[cols]
        med = np.abs(y[te] - y[tr].median()).mean()
        for name, F in [("SimSiam (frozen)", sim), ("random init (frozen)", rand)]:
            head = MeasurementRegressor(device=args.device, random_state=args.seed)
            mae = np.abs(head.fit(F[tr], y[tr]).predict(F[te]) - y[te]).mean()
            ridge = RidgeCV(alphas=np.logspace(-2, 4, 20)).fit(F[tr], y[tr])
            mae_r = np.abs(ridge.predict(F[te]) - y[te]).mean()
            for c in cols:
                rows.append((modality, c, name, mae[c], mae_r[c], med[c]))
    table = pd.DataFrame(
        rows, columns=["modality", "measurement", "encoder", "head MAE", "ridge MAE", "median MAE"]
    )
    wide = table.pivot_table(
        index=["modality", "measurement"], columns="encoder", values="head MAE", sort=False
    )
    wide["ratio random/SimSiam"] = wide["random init (frozen)"] / wide["SimSiam (frozen)"]
    wide["median MAE"] = table.groupby(["modality", "measurement"], sort=False)[
        "median MAE"
    ].first()
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print("\n" + wide.to_string(float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
