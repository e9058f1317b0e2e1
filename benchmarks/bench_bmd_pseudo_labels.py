"""Why self-training barely helps BMD at the small scale: what pseudo-labels can buy back.

The BMD study (``skddh reproduce bmd``) finds self-training + triplet loss within the spread
of supervised-only at 25 % labelled, and its trust criterion (out-of-fold disagreement) does
not rank pseudo-label errors. This asks whether a better criterion would help. On the
study's small-scale regressor (``MeasurementRegressor`` on 16 x 16 pooled pixels, no triplet
term) and the same cohorts, each variant adds rows of the unlabelled training patients to the
labelled ones and refits once; the baseline, in the same run, is supervised-only on the
labelled rows, and every row of the table is a paired gain in Pearson r on the test patients:

- ``pseudo, all``: the supervised model's predictions as labels, every unlabelled row;
- ``pseudo, oracle-trusted half``: the half whose pseudo-label is truly closest to the hidden
  DEXA (a trust criterion no method can beat at ranking);
- ``true labels, that half``: the same rows with their DEXA (what labelling them would buy);
- ``true labels, random half`` / ``true labels, all``: what labelling would buy in general;
- ``truth + shuffled errors, all``: DEXA plus the pseudo-labels' own errors, shuffled across
  rows (the same error sizes, independent of the image).

Over ``--seeds`` cohorts and ``--model-seeds`` initialisations: mean, std and min of the gain.

    python benchmarks/bench_bmd_pseudo_labels.py [--seeds 0 1 2] [--model-seeds 0 1 2 3] \
        [--fraction 0.25]
"""

import argparse
import os
import platform
import time

import numpy as np
import pandas as pd
from scipy.stats import pearsonr

from skddh.datasets import make_bmd_cohort
from skddh.studies.bmd import BMD_SCALES, _regressor, pooled_pixels

VARIANTS = (
    "pseudo, all",
    "pseudo, oracle-trusted half",
    "true labels, that half",
    "true labels, random half",
    "true labels, all",
    "truth + shuffled errors, all",
)


def one_run(cfg, X, truth, train, y, seed, model_seed):
    """Pearson r of supervised-only and of every variant, on one cohort and initialisation."""
    test = ~train
    lab = ~np.isnan(y)
    Xl, Xu, Xte = X[train][lab], X[train][~lab], X[test]
    truth_u = truth[train][~lab]
    rng = np.random.default_rng(100 * seed + model_seed)

    def r(Xf, yf):
        model = _regressor(cfg, "cpu", 1000 * seed + model_seed, triplet=False).fit(Xf, yf)
        return pearsonr(np.ravel(model.predict(Xte)), truth[test])[0], model

    row = {"seed": seed, "model_seed": model_seed}
    row["supervised"], sup = r(Xl, y[lab])
    pseudo = np.ravel(sup.predict(Xu))
    err = pseudo - truth_u
    k = len(err) // 2
    easy = np.argsort(np.abs(err))[:k]
    half = rng.permutation(len(err))[:k]
    y_l = y[lab]
    fits = {
        "pseudo, all": (Xu, pseudo),
        "pseudo, oracle-trusted half": (Xu[easy], pseudo[easy]),
        "true labels, that half": (Xu[easy], truth_u[easy]),
        "true labels, random half": (Xu[half], truth_u[half]),
        "true labels, all": (Xu, truth_u),
        "truth + shuffled errors, all": (Xu, truth_u + rng.permutation(err)),
    }
    for name, (Xa, ya) in fits.items():
        row[name] = r(np.r_[Xl, Xa], np.r_[y_l, ya])[0]
    row["pseudo_mae"] = float(np.abs(err).mean())
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model-seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--fraction", type=float, default=0.25)
    args = parser.parse_args()
    cfg = BMD_SCALES["small"]
    t0 = time.perf_counter()
    rows = []
    for seed in args.seeds:
        kw = dict(image_size=cfg["image_size"], random_state=seed)
        full = make_bmd_cohort(cfg["n_patients"], labelled_fraction=1.0, **kw)
        part = make_bmd_cohort(cfg["n_patients"], labelled_fraction=args.fraction, **kw)
        X = pooled_pixels(full.images, cfg["pool_size"])
        truth = full.targets["bmd"].to_numpy()
        train = full.split == "train"
        y = part.targets["bmd"].to_numpy()[train]
        for model_seed in args.model_seeds:
            rows.append(one_run(cfg, X, truth, train, y, seed, model_seed))
    df = pd.DataFrame(rows)
    gain = df[list(VARIANTS)].sub(df["supervised"], axis=0)
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs; {args.fraction:.0%} labelled; cohort "
        f"seeds {args.seeds} x model seeds {args.model_seeds} = {len(df)} paired runs; "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print(
        f"# baseline, supervised-only: r = {df['supervised'].mean():.3f} ± "
        f"{df['supervised'].std():.3f}; pseudo-label MAE {df['pseudo_mae'].mean():.4f} g/cm2"
    )
    print("| variant | r | gain over supervised (mean ± std) | min gain |")
    print("|---|---|---|---|")
    for name in VARIANTS:
        g = gain[name]
        print(
            f"| {name} | {df[name].mean():.3f} | {g.mean():+.3f} ± {g.std():.3f} | {g.min():+.3f} |"
        )


if __name__ == "__main__":
    main()
