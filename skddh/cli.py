"""The ``skddh`` command line: ``reproduce`` (the paper's study), ``fit`` / ``predict`` (your
own registry, no Python needed) and ``cohort`` (the synthetic cohort's summary and figure)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from skddh.conformal import CALIBRATION_UNITS


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


def _calibration_size(value: str) -> int | float:
    """A whole number of calibration subjects, or a share of the subjects in (0, 1)."""
    try:
        n = int(value)
    except ValueError:
        pass
    else:
        if n < 1:
            raise argparse.ArgumentTypeError(f"a number of subjects must be >= 1, got {value}")
        return n
    try:
        share = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a number of subjects nor a share in (0, 1)"
        ) from None
    if not 0 < share < 1:
        raise argparse.ArgumentTypeError(
            f"a share of subjects must lie in (0, 1), got {value} (a whole number counts subjects)"
        )
    return share


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


def _fit_error(message: str) -> int:
    print(f"skddh fit: error: {message}", file=sys.stderr)
    return 2


def _manifest_split(data, labelled, args):
    """Training and calibration rows and the held-out subjects, or an error message.

    With a ``split`` column: its ``train`` rows train the head, its ``calibration`` rows
    calibrate, its ``test`` rows are never used (blank: pretraining only). Without one: a
    subject-level split of the labelled rows by ``--calibration-size``.
    """
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import GroupShuffleSplit

    subject = np.asarray(data.subject)
    if "split" in data:
        split = pd.Series(data.split, dtype=object).fillna("").astype(str).str.strip().str.lower()
        unknown = sorted(set(split) - {"train", "calibration", "test", ""})
        if unknown:
            return f"the manifest's split column holds {unknown}; use train, calibration or test"
        assigned = pd.DataFrame({"subject": subject, "split": split})[split != ""]
        several = assigned.groupby("subject")["split"].nunique()
        if (several > 1).any():
            who = several.index[several > 1][0]
            return (
                f"subject {who!r} has rows in several splits; split by subject, or a "
                "subject's correlated images leak between training and calibration"
            )
        if args.calibration_size is not None:
            print(
                "[skddh] the manifest's split column assigns calibration: --calibration-size "
                "is not used"
            )
        train = labelled & (split == "train").to_numpy()
        cal = labelled & (split == "calibration").to_numpy()
        held_out = np.isin(subject, subject[(split.isin(["calibration", "test"])).to_numpy()])
        return train, cal, held_out
    size = 0.2 if args.calibration_size is None else args.calibration_size
    subjects = np.unique(subject[labelled])
    if len(subjects) < 2:
        return f"{len(subjects)} labelled subject(s); need at least 2 to split by subject"
    if isinstance(size, int) and size >= len(subjects):
        return (
            f"--calibration-size {size} asks for {size} calibration subjects, but the manifest "
            f"has {len(subjects)} labelled subjects"
        )
    rows = np.flatnonzero(labelled)
    splitter = GroupShuffleSplit(n_splits=1, test_size=size, random_state=args.seed)
    _, cal_rows = next(splitter.split(rows, groups=subject[rows]))
    held_out = np.isin(subject, subject[rows[cal_rows]])
    return labelled & ~held_out, labelled & held_out, held_out


def _pretraining_images(data, held_out, args):
    """The images SimSiam pretrains on: never a calibration or test subject's."""
    import numpy as np

    from skddh import load_image_table

    if args.registry is None:
        return data.images[~held_out], "manifest rows outside calibration and test"
    reg = load_image_table(args.registry, image_size=args.image_size).us
    keep = ~np.isin(np.asarray(reg.subject), np.asarray(data.subject)[held_out])
    if not keep.all():
        print(
            f"[skddh] {int((~keep).sum())} registry images of calibration or test subjects "
            "left out of pretraining"
        )
    return reg.images[keep], f"registry {args.registry}"


def _radii_line(model, deltas) -> str:
    """The calibrated radii at the user's deltas, and what an infinite one means."""
    import math

    unit = "images" if model.calibration_unit == "image" else "subjects"
    parts = []
    for target in ("alpha", "coverage"):
        q, d = float(model.quantile_[target]), deltas[target]
        if math.isfinite(q):
            parts.append(f"{target} {q:.2f} (delta {d:g})")
        else:
            need = math.ceil(1 / d - 1 - 1e-9)
            parts.append(
                f"{target} inf (delta {d:g} needs at least {need} calibration "
                f"{unit}: every hip is referred)"
            )
    return "radii q+ at your deltas: " + ", ".join(parts)


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
        return _fit_error("the manifest holds no ultrasound (US) rows")
    labelled = data.targets.notna().all(axis=1).to_numpy()
    parts = _manifest_split(data, labelled, args)
    if isinstance(parts, str):
        return _fit_error(parts)
    train, cal, held_out = parts
    subject = np.asarray(data.subject)
    if train.sum() < 2:
        return _fit_error(f"{int(train.sum())} labelled training images; need at least 2")
    if cal.sum() == 0:
        return _fit_error("no labelled calibration images")
    pool, source = _pretraining_images(data, held_out, args)
    if len(pool) == 0:
        return _fit_error(f"no images to pretrain on ({source})")
    print(f"[skddh] pretraining SimSiam on {len(pool)} ultrasound images ({source}) ...")
    encoder = SimSiamFeaturizer(
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        random_state=args.seed,
        verbose=1,
    ).fit(pool)
    n_train_subjects = len(np.unique(subject[train]))
    print(f"[skddh] training the head on {int(train.sum())} images of {n_train_subjects} subjects")
    head = make_pipeline(
        FrozenEstimator(encoder),
        MeasurementRegressor(device=args.device, random_state=args.seed),
    ).fit(data.images[train], data.targets[train].reset_index(drop=True))
    # Beta is not thresholded; it gets delta_alpha, so that no delta the user did not set
    # decides anything (or warns).
    deltas = {"alpha": args.delta_alpha, "beta": args.delta_alpha, "coverage": args.delta_coverage}
    model = OneSidedConformalRegressor(
        FrozenEstimator(head),
        delta=deltas,
        calibration_unit=args.calibration_unit,
        random_state=args.seed,
    )
    policy = SelectiveImagingPolicy(
        model,
        rule=args.rule,
        delta={"alpha": args.delta_alpha, "coverage": args.delta_coverage},
    )
    n_cal_subjects = len(np.unique(subject[cal]))
    print(
        f"[skddh] calibrating on {int(cal.sum())} images of {n_cal_subjects} subjects "
        f"({args.calibration_unit}) ..."
    )
    try:
        with warnings.catch_warnings():  # an infinite radius is reported below, plainly
            warnings.filterwarnings("ignore", message="delta is too small", category=UserWarning)
            policy.fit(
                data.images[cal],
                data.targets[cal].reset_index(drop=True),
                groups=subject[cal],
            )
    except ValueError as exc:
        return _fit_error(str(exc))
    joblib.dump({"policy": policy, "image_size": args.image_size}, args.model)
    fitted = policy.estimator_
    print(
        f"wrote {args.model}: rule={args.rule}, delta alpha={args.delta_alpha}, "
        f"coverage={args.delta_coverage}; {len(fitted.calibration_groups_)} calibration "
        f"subjects ({fitted.n_calibration_images_} images, {args.calibration_unit}); "
        + _radii_line(fitted, deltas)
    )
    return 0


def _torch_parts(obj, seen=None):
    """The torch estimators (SimSiamFeaturizer, MeasurementRegressor) inside a fitted model."""
    from sklearn.base import BaseEstimator

    from skddh.models import MeasurementRegressor, SimSiamFeaturizer

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, (SimSiamFeaturizer, MeasurementRegressor)):
        return [obj]
    if isinstance(obj, dict):
        children = obj.values()
    elif isinstance(obj, (list, tuple)):
        children = obj
    elif isinstance(obj, BaseEstimator):  # a Pipeline's steps, a FrozenEstimator's estimator
        children = vars(obj).values()
    else:
        return []
    return [part for child in children for part in _torch_parts(child, seen)]


def _predict(args) -> int:
    import joblib
    import pandas as pd
    import torch

    from skddh import load_image_table

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "skddh predict: error: --device cuda, but CUDA is not available here", file=sys.stderr
        )
        return 2
    saved = joblib.load(args.model)
    policy = saved["policy"]
    # Torch parts load on the CPU (their pickles hold CPU weights) and run where their
    # ``device`` says: a model fitted with --device cuda would ask for CUDA here. Point them
    # at this machine's device instead; what they learnt does not change.
    for part in _torch_parts(policy):
        part.set_params(device=args.device)
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
            "Pretrain SimSiam on ultrasound images that are neither calibration nor test "
            "(or on --registry), train the measurement head on the training rows, calibrate "
            "lower bounds on the calibration rows, and save the policy with joblib. A "
            "'split' column (train / calibration / test) is honoured; without one the "
            "labelled rows are split by subject (--calibration-size). Test rows are never "
            "used."
        ),
    )
    fit.add_argument("manifest", type=_existing_file, help="CSV manifest (see load_image_table)")
    fit.add_argument("--image-root", default=None, help="directory image_path is relative to")
    fit.add_argument(
        "--registry",
        type=_existing_file,
        default=None,
        help="an unlabelled manifest whose US rows SimSiam pretrains on instead (image paths "
        "relative to its directory); rows of calibration or test subjects are left out",
    )
    fit.add_argument("--model", type=Path, default=Path("skddh_policy.joblib"))
    fit.add_argument("--image-size", type=_positive_int, default=128)
    fit.add_argument("--epochs", type=_positive_int, default=10)
    fit.add_argument("--batch-size", type=_positive_int, default=256)
    fit.add_argument("--rule", choices=["alpha", "or", "and"], default="alpha")
    fit.add_argument(
        "--delta-alpha",
        type=_delta,
        default=0.10,
        help="miscoverage of alpha's bound (also beta's, which no rule reads)",
    )
    fit.add_argument("--delta-coverage", type=_delta, default=0.10)
    fit.add_argument(
        "--calibration-size",
        type=_calibration_size,
        default=None,
        help="calibration subjects without a split column: a whole number (a count) or a "
        "share in (0, 1); default 0.2",
    )
    fit.add_argument(
        "--calibration-unit",
        choices=list(CALIBRATION_UNITS),
        default="subject-max",
        help="one score per subject (subject-max, subject-subsample) or, assuming independent "
        "images, per image",
    )
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
    pred.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where to run the model, whatever device it was fitted on",
    )
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
