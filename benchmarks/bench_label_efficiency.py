"""How many labelled subjects does each method need? MAE against the labelled-subject budget.

Question: at the paper's label budget (30 labelled subjects) and around it, which way of
training the measurement model predicts Graf alpha, beta and femoral head coverage best on
held-out subjects, and how far is each from the median predictor and from a model trained
on every labelled subject?
Baseline: the median predictor (the training labels' median), in the same run; every MAE is
also given as a ratio to it.

Methods (each on the same nested training subjects, the same test subjects, per seed):

- ``median``: the training labels' median;
- ``scratch+aug``: :class:`~skddh.FineTuningRegressor` from a fresh backbone, with
  label-preserving augmentation;
- ``scratch+aug+views``: the same fitted model, predicting the mean over
  ``--test-time-views`` fixed rotations, zooms and shifts of each image
  (``test_time_views``; no extra training);
- ``scratch+ensemble``: the mean prediction of ``--ensemble`` such models (with views) that
  differ only in ``random_state`` (initialisation, batches, augmentation draws); the first is
  the ``scratch+aug`` model, so it costs ``--ensemble - 1`` more fits;
- ``simsiam+head``: the paper's recipe, frozen :class:`~skddh.SimSiamFeaturizer` features and a
  :class:`~skddh.MeasurementRegressor` head;
- ``simsiam+selftrain``: :class:`~skddh.SelfTrainingRegressor` around that head, on the
  labelled images plus the unlabelled registry (NaN targets), pseudo-labels refined over 3
  rounds (3 folds, 2 repeats: 19 head fits);
- ``simsiam+finetune``: :class:`~skddh.FineTuningRegressor` initialised from that encoder;
- ``scratch+student``: noisy student on the registry: the ``scratch+aug`` model (teacher)
  labels the unlabelled registry, and a fresh ``scratch+aug`` model (student, augmented, the
  same number of steps) trains on the labelled images plus the pseudo-labelled registry. The
  student sees augmented views the teacher labelled unaugmented, which is what the BMD
  diagnostics (``bench_bmd_pseudo_labels.py``) say pseudo-labels need to carry new
  information;
- ``scratch+meanteacher``: ``scratch+aug`` trained with the registry as unlabelled images
  (``consistency_weight=--consistency-weight``, ``ema_decay=--ema-decay``): at every step
  the weight average predicts a batch of registry images as they are and the network is
  pulled towards those predictions on augmented views (mean teacher); the same epochs over
  the labelled images, at 1.3-1.8x the time per fit on the CPU (measured: 366-533 s against
  255-293 s, ``benchmarks/README.md``); predicts with the views;
- ``all-labels``: ``scratch+aug`` on every non-test subject (the reference the registry has
  to buy back).

The SimSiam encoder is pretrained once per seed on the unlabelled registry. Training sets
are nested (the first k subjects of one random order), so the curves compare like with like.
Results: mean and spread over seeds, a CSV (``--out``) and a PNG plot.

    python benchmarks/bench_label_efficiency.py [--size 64] [--subjects 10 30 100 300]
        [--seeds 0 1 2] [--methods ...] [--device auto] [--out bench_out/label_efficiency]

The full grid costs hours on a CPU, so it is run in pieces (a method set per run);
``--merge RUN/raw.csv ...`` writes one table, CSV and plot from the runs' raw rows instead of
training (a row repeated across runs, such as the median's, is kept from the last file).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.frozen import FrozenEstimator

from skddh import (
    FineTuningRegressor,
    MeasurementRegressor,
    SelfTrainingRegressor,
    SimSiamFeaturizer,
    make_hip_cohort,
)

TARGETS = ["alpha", "beta", "coverage"]
#: SimSiam's augmentation: the paper's recipe, or one that keeps every angle (no aspect-ratio
#: change, no flip; a larger rotation instead), for the question of which views serve
#: measurement.
SIMSIAM_AUG = {
    "paper": {},
    "angles": dict(crop_ratio=(1.0, 1.0), flip_p=0.0, crop_scale=(0.5, 1.0), rotation=15.0),
}
METHODS = [
    "median",
    "scratch+aug",
    "scratch+aug+views",
    "scratch+ensemble",
    "simsiam+head",
    "simsiam+selftrain",
    "scratch+student",
    "scratch+meanteacher",
    "simsiam+finetune",
    "all-labels",
]


def _steps_epochs(n_images, batch, steps, max_epochs):
    """Epochs that give about ``steps`` optimiser steps (small sets need many epochs)."""
    per_epoch = max(1, int(np.ceil(n_images / batch)))
    return int(np.clip(round(steps / per_epoch), 1, max_epochs))


def _finetune(args, seed, n_images, encoder=None):
    return FineTuningRegressor(
        encoder=None if encoder is None else FrozenEstimator(encoder),
        backbone=args.backbone,
        image_size=args.size,
        epochs=_steps_epochs(n_images, args.batch_size, args.steps, args.max_epochs),
        batch_size=args.batch_size,
        lr=args.lr,
        encoder_lr=args.encoder_lr,
        device=args.device,
        random_state=seed,
        **args.finetune_params,
    )


def _json_params(text):
    """``--finetune-params``: a JSON object; its lists become tuples (``scale=(0.8, 1.2)``)."""
    params = json.loads(text)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


def _with_views(model, args):
    """A copy of a fitted model that predicts the mean over ``--test-time-views`` views."""
    views = copy.deepcopy(model)
    return views.set_params(test_time_views=args.test_time_views)


def run_seed(args, seed):
    """One seed: cohort, SimSiam, then every method at every budget. Long-format rows."""
    n_subjects = max(args.subjects) + args.test_subjects
    t = time.perf_counter()
    cohort = make_hip_cohort(
        n_subjects=n_subjects,
        image_size=args.size,
        n_registry_us=args.n_registry,
        n_registry_xr=2,
        n_jobs=-1,
        random_state=seed,
    )
    us = cohort.us
    images, y = us.images, us.targets[TARGETS].reset_index(drop=True)
    subject = np.asarray(us.subject)
    order = np.random.default_rng(seed).permutation(np.unique(subject))
    test = np.isin(subject, order[: args.test_subjects])
    pool = order[args.test_subjects :]
    print(f"seed {seed}: cohort {time.perf_counter() - t:.0f} s", flush=True)
    rows = []

    def score(method, k, pred, secs, n_img):
        mae = np.abs(np.asarray(pred, float) - y[test].to_numpy()).mean(0)
        for j, name in enumerate(TARGETS):
            rows.append(
                dict(
                    seed=seed,
                    method=method,
                    subjects=k,
                    images=n_img,
                    measurement=name,
                    mae=mae[j],
                    seconds=secs,
                )
            )

    sim = None
    if {"simsiam+head", "simsiam+selftrain", "simsiam+finetune"} & set(args.methods):
        t = time.perf_counter()
        sim = SimSiamFeaturizer(
            args.backbone,
            image_size=args.size,
            epochs=args.simsiam_epochs,
            batch_size=64,
            lr=0.2,
            device=args.device,
            random_state=seed,
            **SIMSIAM_AUG[args.simsiam_aug],
        ).fit(cohort.registry_us)
        feats = sim.transform(images)
        if "simsiam+selftrain" in args.methods:
            reg_feats = sim.transform(cohort.registry_us)
        print(f"seed {seed}: SimSiam {time.perf_counter() - t:.0f} s", flush=True)
    teachers, reg_images = {}, None  # scratch+aug models per budget, for scratch+student

    def teacher(k, tr, n_img):
        """The ``scratch+aug`` model of budget ``k``, fitted once whichever method asks first."""
        if k not in teachers:
            teachers[k] = _finetune(args, seed, n_img).fit(images[tr], y[tr])
        return teachers[k]

    budgets = [(k, pool[:k]) for k in args.subjects]
    if "all-labels" in args.methods:
        budgets.append((len(pool), pool))
    for k, chosen in budgets:
        tr = np.isin(subject, chosen)
        n_img = int(tr.sum())
        is_ref = k == len(pool) and k not in args.subjects
        todo = ["all-labels"] if is_ref else [m for m in args.methods if m != "all-labels"]
        for method in todo:
            t = time.perf_counter()
            if method == "median":
                pred = np.tile(y[tr].median().to_numpy(), (int(test.sum()), 1))
            elif method in ("scratch+aug", "all-labels"):
                pred = teacher(k, tr, n_img).predict(images[test])
            elif method == "scratch+aug+views":
                pred = _with_views(teacher(k, tr, n_img), args).predict(images[test])
            elif method == "scratch+ensemble":
                members = [teacher(k, tr, n_img)] + [
                    _finetune(args, seed + 1000 * m, n_img).fit(images[tr], y[tr])
                    for m in range(1, args.ensemble)
                ]
                pred = np.mean([_with_views(m, args).predict(images[test]) for m in members], 0)
            elif method == "scratch+student":
                if reg_images is None:
                    reg_images = np.asarray(cohort.registry_us)
                pseudo = pd.DataFrame(teacher(k, tr, n_img).predict(reg_images), columns=TARGETS)
                X_st = np.concatenate([images[tr], reg_images])
                y_st = pd.concat([y[tr], pseudo], ignore_index=True)
                student = _finetune(args, seed + 1, len(X_st)).fit(X_st, y_st)
                pred = student.predict(images[test])
            elif method == "scratch+meanteacher":
                if reg_images is None:
                    reg_images = np.asarray(cohort.registry_us)
                X_mt = np.concatenate([images[tr], reg_images])
                y_mt = pd.concat(  # NaN rows: the unlabelled registry
                    [y[tr], pd.DataFrame(np.nan, index=range(len(reg_images)), columns=TARGETS)],
                    ignore_index=True,
                )
                model = _finetune(args, seed, n_img).set_params(
                    consistency_weight=args.consistency_weight,
                    ema_decay=args.ema_decay,
                    test_time_views=args.test_time_views,
                )
                pred = model.fit(X_mt, y_mt).predict(images[test])
            elif method == "simsiam+head":
                head = MeasurementRegressor(device=args.device, random_state=seed)
                pred = head.fit(feats[tr], y[tr]).predict(feats[test])
            elif method == "simsiam+selftrain":
                # labelled training images + the unlabelled registry (NaN targets); registry
                # images are their own groups (one scan each)
                X_st = np.vstack([feats[tr], reg_feats])
                y_st = pd.concat(
                    [y[tr], pd.DataFrame(np.nan, index=range(len(reg_feats)), columns=TARGETS)],
                    ignore_index=True,
                )
                groups = np.concatenate(
                    [subject[tr].astype(str), [f"registry{i}" for i in range(len(reg_feats))]]
                )
                head = MeasurementRegressor(device=args.device, random_state=seed)
                model = SelfTrainingRegressor(
                    head, n_folds=3, n_repeats=2, max_iter=3, random_state=seed
                )
                pred = model.fit(X_st, y_st, groups=groups).predict(feats[test])
            elif method == "simsiam+finetune":
                model = _finetune(args, seed, n_img, encoder=sim)
                pred = model.fit(images[tr], y[tr]).predict(images[test])
            else:
                raise ValueError(f"unknown method {method!r}")
            secs = time.perf_counter() - t
            score(method, k, pred, secs, n_img)
            last = rows[-3:]
            print(
                f"seed {seed} {method:>17} {k:>4} subjects ({n_img:>4} images): "
                + " ".join(f"{r['measurement']} {r['mae']:.2f}" for r in last)
                + f"  [{secs:.0f} s]",
                flush=True,
            )
    return rows


def summarise(raw: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, min and max over seeds, with each seed's ratio to its own median MAE."""
    med = raw[raw.method == "median"].set_index(["seed", "subjects", "measurement"]).mae
    ref = raw.set_index(["seed", "subjects", "measurement"]).index
    raw = raw.assign(ratio=raw.mae.to_numpy() / med.reindex(ref).to_numpy())
    g = raw.groupby(["measurement", "method", "subjects"], sort=False)
    out = g.mae.agg(["mean", "std", "min", "max", "count"]).add_prefix("mae_")
    out["ratio_mean"] = g.ratio.mean()
    out["seconds_mean"] = g.seconds.mean()
    return out.reset_index()


def plot(summary: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TARGETS), figsize=(4.2 * len(TARGETS), 3.6), sharex=True)
    for ax, name in zip(axes, TARGETS):
        sub = summary[summary.measurement == name]
        for method in METHODS:
            m = sub[sub.method == method].sort_values("subjects")
            if m.empty:
                continue
            x, mean = m.subjects.to_numpy(), m.mae_mean.to_numpy()
            err = [mean - m.mae_min.to_numpy(), m.mae_max.to_numpy() - mean]
            style = dict(marker="o", capsize=3)
            if method == "all-labels":
                style = dict(marker="*", markersize=10, linestyle="none", capsize=3)
            ax.errorbar(x, mean, yerr=err, label=method, **style)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training subjects")
        ax.set_title(name)
    axes[0].set_ylabel("test MAE (mean, min-max over seeds)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--subjects", type=int, nargs="+", default=[10, 30, 100, 300])
    ap.add_argument("--test-subjects", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--n-registry", type=int, default=2000, help="unlabelled US images")
    ap.add_argument("--simsiam-epochs", type=int, default=10)
    ap.add_argument("--simsiam-aug", choices=sorted(SIMSIAM_AUG), default="paper")
    ap.add_argument("--steps", type=int, default=600, help="fine-tuning optimiser steps")
    ap.add_argument("--max-epochs", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--encoder-lr", type=float, default=3e-4)
    ap.add_argument("--test-time-views", type=int, default=16, help="for scratch+aug+views")
    ap.add_argument("--ensemble", type=int, default=2, help="members of scratch+ensemble")
    ap.add_argument("--consistency-weight", type=float, default=1.0, help="for scratch+meanteacher")
    ap.add_argument("--ema-decay", type=float, default=0.99, help="for scratch+meanteacher")
    ap.add_argument(
        "--finetune-params",
        type=_json_params,
        default={},
        help='more FineTuningRegressor parameters, as JSON: \'{"loss_weights": {"beta": 0.3}}\'',
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("bench_out/label_efficiency"))
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="RAW_CSV",
        help="train nothing: summarise and plot the raw.csv files of earlier runs together",
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.merge:
        missing = [str(p) for p in args.merge if not p.is_file()]
        if missing:
            ap.error(f"--merge: no such file: {', '.join(missing)}")
        raw = pd.concat([pd.read_csv(p) for p in args.merge], ignore_index=True)
        key = ["seed", "method", "subjects", "measurement"]
        raw = raw.drop_duplicates(key, keep="last")
        raw = raw.sort_values("method", key=lambda m: m.map(METHODS.index), kind="stable")
        report(raw, args.out, "merged: " + ", ".join(str(p.parent) for p in args.merge), t0)
        return
    warnings.filterwarnings("ignore", category=UserWarning)
    machine = f"{platform.machine()} {platform.node()}, {os.cpu_count()} CPUs, device {args.device}"
    title = (
        f"{machine}; {args.size} px, {args.backbone}; fine-tuning ~{args.steps} steps; "
        f"SimSiam {args.simsiam_epochs} epochs on {args.n_registry} images "
        f"({args.simsiam_aug} augmentation); "
        f"seeds {args.seeds}; {args.test_subjects} test subjects"
        + (f"; fine-tuning {json.dumps(args.finetune_params)}" if args.finetune_params else "")
    )
    print(title, flush=True)
    raw = pd.DataFrame([r for s in args.seeds for r in run_seed(args, s)])
    report(raw, args.out, title, t0)


def report(raw: pd.DataFrame, out: Path, title: str, t0: float) -> None:
    """Write raw.csv, summary.csv and the plot under ``out``; print the table."""
    summary = summarise(raw)
    out.mkdir(parents=True, exist_ok=True)
    raw.to_csv(out / "raw.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    plot(summary, out / "label_efficiency.png", title)
    cell = summary.assign(
        cell=[
            f"{r.mae_mean:.2f} ({r.mae_min:.2f}-{r.mae_max:.2f}) x{r.ratio_mean:.2f}"
            for r in summary.itertuples()
        ]
    )
    wide = cell.pivot_table(
        index=["measurement", "method"],
        columns="subjects",
        values="cell",
        aggfunc="first",
        sort=False,
    )
    print("\nMAE on the test subjects: mean (min-max) over seeds, x ratio to the median's")
    print(wide.to_string())
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
