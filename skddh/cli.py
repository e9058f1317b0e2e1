"""The ``skddh`` command line: ``reproduce`` (the paper's study), ``fit`` / ``predict`` (your
own registry, no Python needed) and ``cohort`` (the synthetic cohort's summary and figure)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _writable_dir(value: str) -> Path:
    path = Path(value)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"cannot create output directory {value!r}: {exc}"
        ) from exc
    if not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"output directory {value!r} is not writable")
    return path


def _delta(value: str) -> float:
    try:
        d = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 < d < 1:
        raise argparse.ArgumentTypeError(f"a miscoverage must lie in (0, 1), got {value}")
    return d


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return n


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file {value!r} does not exist")
    return path


# ---- commands ----------------------------------------------------------------------------------
def _cohort(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from skddh.datasets import make_hip_cohort, plot_cohort_examples, summarize_cohort

    start = time.perf_counter()
    cohort = make_hip_cohort(random_state=args.seed, n_jobs=args.n_jobs)
    table = summarize_cohort(cohort)
    print("Synthetic paired hip cohort (SYNTHETIC; not for clinical use)")
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    table.to_csv(args.out / "cohort_summary.csv")
    fig = plot_cohort_examples(cohort, n=4)
    fig.savefig(args.out / "cohort_examples.png", dpi=110)
    print(
        f"wrote {args.out / 'cohort_summary.csv'} and {args.out / 'cohort_examples.png'} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _reproduce(args) -> int:
    from skddh.studies import run_study, write_report

    start = time.perf_counter()
    try:
        result = run_study(args.scale, device=args.device, seed=args.seed, verbose=1)
    except ValueError as exc:  # e.g. --device cuda on a machine without CUDA
        print(f"skddh reproduce: error: {exc}", file=sys.stderr)
        return 2
    path = write_report(result, args.out)
    print(path.read_text())
    print(f"wrote {path} and its tables and figure in {time.perf_counter() - start:.1f} s")
    return 0


def _fit(args) -> int:
    import joblib
    import numpy as np
    from sklearn.frozen import FrozenEstimator
    from sklearn.pipeline import make_pipeline

    from skddh import (
        MeasurementRegressor,
        OneSidedConformalRegressor,
        SelectiveImagingPolicy,
        SimSiamFeaturizer,
        load_image_table,
    )

    data = load_image_table(args.manifest, args.image_root, image_size=args.image_size).us
    if len(data.images) == 0:
        print("skddh fit: error: the manifest holds no ultrasound (US) rows", file=sys.stderr)
        return 2
    print(f"[skddh] {len(data.images)} ultrasound images; pretraining SimSiam ...")
    encoder = SimSiamFeaturizer(
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        random_state=args.seed,
        verbose=1,
    ).fit(data.images)
    labelled = data.targets.notna().all(axis=1).to_numpy()
    if "split" in data:
        labelled &= np.asarray(data.split) != "test"
    if labelled.sum() < 4:
        print(
            f"skddh fit: error: {int(labelled.sum())} labelled non-test images; need at least 4",
            file=sys.stderr,
        )
        return 2
    model = OneSidedConformalRegressor(
        make_pipeline(
            FrozenEstimator(encoder),
            MeasurementRegressor(device=args.device, random_state=args.seed),
        ),
        calibration_size=args.calibration_size,
        random_state=args.seed,
    )
    policy = SelectiveImagingPolicy(
        model,
        rule=args.rule,
        delta={"alpha": args.delta_alpha, "coverage": args.delta_coverage},
    )
    print(f"[skddh] training the head and calibrating on {int(labelled.sum())} images ...")
    try:
        policy.fit(
            data.images[labelled],
            data.targets[labelled].reset_index(drop=True),
            groups=np.asarray(data.subject)[labelled],
        )
    except ValueError as exc:
        print(f"skddh fit: error: {exc}", file=sys.stderr)
        return 2
    joblib.dump({"policy": policy, "image_size": args.image_size}, args.model)
    q = policy.estimator_.quantile_
    print(
        f"wrote {args.model}: rule={args.rule}, delta alpha={args.delta_alpha}, "
        f"coverage={args.delta_coverage}; {policy.estimator_.n_calibration_} calibration "
        f"images; radii at the fitted delta: " + ", ".join(f"{k} {v:.2f}" for k, v in q.items())
    )
    return 0


def _predict(args) -> int:
    import joblib
    import pandas as pd

    from skddh import load_image_table

    saved = joblib.load(args.model)
    policy = saved["policy"]
    data = load_image_table(args.manifest, args.image_root, image_size=saved["image_size"]).us
    if len(data.images) == 0:
        print("skddh predict: error: the manifest holds no ultrasound (US) rows", file=sys.stderr)
        return 2
    lower = policy.predict_lower(data.images).add_prefix("lower_")
    decision = policy.predict(data.images)
    table = pd.concat(
        [
            pd.DataFrame(
                {"image_id": data.image_id, "subject_id": data.subject, "side": data.side}
            ),
            lower,
            pd.DataFrame(
                {
                    "ultrasound_suffices": decision,
                    "decision": [
                        "ultrasound suffices" if d else "refer to X-ray" for d in decision
                    ],
                }
            ),
        ],
        axis=1,
    )
    table.to_csv(args.out, index=False)
    print(
        f"wrote {args.out}: {len(table)} images, {int(decision.sum())} pass on ultrasound, "
        f"{int((decision == 0).sum())} referred to X-ray"
    )
    return 0


# ---- the parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``skddh`` argument parser (every command has ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="skddh",
        description="Ultrasound-first, radiation-preserving selective imaging for DDH.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser(
        "reproduce",
        help="run the paper's whole study on the synthetic cohort and write a report",
        description=(
            "Make the study cohort, pretrain a SimSiam encoder per modality, train the "
            "ultrasound and X-ray heads, calibrate one-sided conformal lower bounds, and "
            "evaluate the selective imaging policy on the matched test pairs. Writes "
            "report.md, CSV tables and decision_curve.png to --out."
        ),
    )
    rep.add_argument(
        "--scale",
        choices=["small", "paper"],
        default="small",
        help="small: minutes on 2 CPU cores; paper: the paper's sizes, for a GPU",
    )
    rep.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    rep.add_argument("--out", type=_writable_dir, default=Path("skddh_out"))
    rep.add_argument("--seed", type=int, default=0)
    rep.set_defaults(func=_reproduce)

    fit = sub.add_parser(
        "fit",
        help="fit a selective imaging policy on your own registry (load_image_table manifest)",
        description=(
            "Pretrain SimSiam on the manifest's ultrasound images, train the measurement head "
            "and calibrate lower bounds on its labelled non-test rows (subject-level split), "
            "and save the policy with joblib."
        ),
    )
    fit.add_argument("manifest", type=_existing_file, help="CSV manifest (see load_image_table)")
    fit.add_argument("--image-root", default=None, help="directory image_path is relative to")
    fit.add_argument("--model", type=Path, default=Path("skddh_policy.joblib"))
    fit.add_argument("--image-size", type=_positive_int, default=128)
    fit.add_argument("--epochs", type=_positive_int, default=10)
    fit.add_argument("--batch-size", type=_positive_int, default=256)
    fit.add_argument("--rule", choices=["alpha", "or", "and"], default="alpha")
    fit.add_argument("--delta-alpha", type=_delta, default=0.10)
    fit.add_argument("--delta-coverage", type=_delta, default=0.10)
    fit.add_argument("--calibration-size", type=float, default=0.2)
    fit.add_argument("--device", default="auto")
    fit.add_argument("--seed", type=int, default=0)
    fit.set_defaults(func=_fit)

    pred = sub.add_parser(
        "predict",
        help="apply a saved policy to a manifest's ultrasound images",
        description="Write lower bounds and the decision per ultrasound image to a CSV.",
    )
    pred.add_argument("manifest", type=_existing_file)
    pred.add_argument("--model", type=_existing_file, default=Path("skddh_policy.joblib"))
    pred.add_argument("--image-root", default=None)
    pred.add_argument("--out", type=Path, default=Path("skddh_predictions.csv"))
    pred.set_defaults(func=_predict)

    coh = sub.add_parser(
        "cohort", help="make the synthetic study cohort, print its summary and write a figure"
    )
    coh.add_argument("--out", type=_writable_dir, default=Path("skddh_out"))
    coh.add_argument("--seed", type=int, default=0)
    coh.add_argument("--n-jobs", type=int, default=None, help="parallel workers (joblib)")
    coh.set_defaults(func=_cohort)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``skddh`` console script and ``python -m skddh``."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
