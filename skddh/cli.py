"""The ``skddh`` command line: ``reproduce`` (the paper's study), ``fit`` / ``predict`` (your
own registry, no Python needed) and ``cohort`` (the synthetic cohort's summary and figure).

How it fails:

- Every argument and output path is checked before any compute: an output directory must
  exist or be creatable and be writable, an output file's directory must exist and be
  writable, an output may not be one of the inputs, ``fit``'s deltas must be supported by the
  number of calibration subjects.
- An error is one line, ``skddh <command>: error: ...``, on stderr, exit status 2 (argparse's
  usage errors too); ``skddh --debug ...`` shows the traceback instead.
- Ctrl-C prints ``skddh <command>: interrupted`` and exits with status 130.
- Every file is written to a temporary file beside it and renamed into place when complete
  (:mod:`skddh._atomic`, :func:`skddh.model_file.save_policy`), so an interrupted or failed
  write leaves the old file untouched.
- ``fit`` writes a skddh model file (:mod:`skddh.model_file`: JSON and safetensors in a zip)
  and ``predict`` reads only those: loading one runs no code from it, and a joblib or pickle
  file, or a corrupted model file, is refused with a one-line error.
- ``reproduce --out X`` writes ``X/INCOMPLETE`` first and removes it when the report is
  written: while it is there, the report and tables in X are from an earlier run (or a mix),
  not from the command it names. With ``--seeds``, ``X/INCOMPLETE`` stays until every
  ``X/seed_S/`` and the aggregate report are written (each ``X/seed_S/`` has its own marker).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import re
import shlex
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from skddh._atomic import atomic_savefig, atomic_to_csv, atomic_write_text
from skddh.conformal import CALIBRATION_UNITS

#: Smallest ``--image-size``: the ResNet-18 encoder downsamples 32-fold (4-fold in its stem
#: alone), so a smaller image is a single pixel, or less, after its first layers.
MIN_IMAGE_SIZE = 16
#: numpy seeds are 32-bit; ``reproduce`` also uses ``seed + 1``.
MAX_SEED = 2**31 - 1
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
#: Exit status of a usage or data error (argparse's too).
EXIT_ERROR = 2


class CommandError(Exception):
    """A user error a command found (bad data, an unsupported delta): one line, status 2."""


# Exceptions reported as one line (unless --debug): the user's data or the machine, not a bug
# in skddh. ImportError: an optional dependency (pydicom) the data needs.
_USER_ERRORS = (CommandError, ValueError, TypeError, OSError, ImportError)


# ---- argument types: each checks one value, at parse time, before any compute ----------------
def _check_writable(directory: Path) -> str | None:
    """Why files cannot be created in ``directory``, or None when they can."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return "is not writable"
    try:  # os.access does not see a read-only mount or an ACL; creating a file does
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        return f"is not writable ({exc.strerror or exc})"
    return None


def _writable_dir(value: str) -> Path:
    """An output directory: created if missing (with its parents), and writable."""
    path = Path(value)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"cannot create output directory {value!r}: {exc.strerror or exc}"
        ) from None
    problem = _check_writable(path)
    if problem:
        raise argparse.ArgumentTypeError(f"output directory {value!r} {problem}")
    return path


def _output_file(value: str) -> Path:
    """An output file: not a directory; its directory exists and is writable."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist (create it first)"
        raise argparse.ArgumentTypeError(f"the directory {str(parent)!r} of {value!r} {what}")
    problem = _check_writable(parent)
    if problem:
        raise argparse.ArgumentTypeError(f"the directory {str(parent)!r} of {value!r} {problem}")
    return path


def _device(value: str) -> str:
    """auto, cpu, cuda or cuda:N; a CUDA device only where CUDA is available."""
    if value in ("auto", "cpu"):
        return value
    match = re.fullmatch(r"cuda(?::(\d+))?", value)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {value!r} (choose from 'auto', 'cpu', 'cuda', 'cuda:N')"
        )
    import torch

    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{value!r}, but CUDA is not available here (use auto or cpu)"
        )
    count = torch.cuda.device_count()
    if match[1] is not None and int(match[1]) >= count:
        raise argparse.ArgumentTypeError(
            f"{value!r}, but this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
        )
    return value


def _seed(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if not 0 <= n <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must lie in [0, {MAX_SEED}], got {value}")
    return n


def _image_size(value: str) -> int:
    n = _positive_int(value)
    if n < MIN_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be >= {MIN_IMAGE_SIZE}, got {value}: the encoder (ResNet-18) downsamples "
            "32-fold, so a smaller image is a single pixel after its first layers"
        )
    return n


def _batch_size(value: str) -> int:
    n = _positive_int(value)
    if n < 2:
        raise argparse.ArgumentTypeError(
            f"must be >= 2, got {value}: batch normalisation needs two images per batch"
        )
    return n


def _n_jobs(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n == 0:
        raise argparse.ArgumentTypeError("must not be 0 (1: no parallelism; -1: every core)")
    return n


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
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a directory, not a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file {value!r} does not exist")
    return path


def _existing_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{value!r} {what}")
    return path


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (a link, a hard link, ``./x`` and ``x`` included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return a.resolve() == b.resolve()


def _check_outputs_are_not_inputs(args) -> None:
    """Refuse an output path that is one of the command's inputs, before any compute."""
    pairs = {
        "fit": [("--model", "manifest", "the manifest"), ("--model", "registry", "--registry")],
        "predict": [("--out", "manifest", "the manifest"), ("--out", "model", "--model")],
    }.get(args.command, [])
    for out_flag, input_dest, input_name in pairs:
        out = getattr(args, out_flag.lstrip("-"))
        source = getattr(args, input_dest)
        if source is not None and _same_file(out, source):
            raise CommandError(
                f"{out_flag} {str(out)!r} is {input_name}: writing it would destroy an input; "
                "choose another path"
            )


# ---- commands ----------------------------------------------------------------------------------
def _cohort(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skddh.datasets import make_hip_cohort, plot_cohort_examples, summarize_cohort

    start = time.perf_counter()
    cohort = make_hip_cohort(random_state=args.seed, n_jobs=args.n_jobs)
    table = summarize_cohort(cohort)
    print("Synthetic paired hip cohort (SYNTHETIC; not for clinical use)")
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    atomic_to_csv(table, args.out / "cohort_summary.csv")
    fig = plot_cohort_examples(cohort, n=4)
    try:
        atomic_savefig(fig, args.out / "cohort_examples.png", dpi=110)
    finally:
        plt.close(fig)
    print(
        f"wrote {args.out / 'cohort_summary.csv'} and {args.out / 'cohort_examples.png'} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


INCOMPLETE = "INCOMPLETE"


def _incomplete_note(args, *, seed: int | None = None, over_seeds: bool = False) -> str:
    """The text of ``--out/INCOMPLETE``: which run, when, and what the folder's files are.

    ``seed``: the marker of one seed's folder of a run over seeds; ``over_seeds``: the marker
    of the whole run's folder.
    """
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    written = "report.md,\nthe CSV tables and the figures are all written."
    if over_seeds:
        written = (
            "every seed's\nfolder (seed_S/) and the aggregate report.md, *_over_seeds.csv "
            "and headline.png\nare all written."
        )
    of_seed = "" if seed is None else f"seed: {seed} (one seed of the command's --seeds)\n"
    return f"""This folder does not hold a finished run of the command below.

skddh reproduce writes this file before it starts and removes it only once {written}
If you can read it, the run was interrupted or failed (or is still running): report.md and
the other files here, if any, are from an EARLIER run, or a mix of an earlier run and this
one. Do not use them; rerun.

command: {shlex.join(["skddh", *args.argv])}
{of_seed}started: {started}
"""


def _fraction(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < f <= 1:
        raise argparse.ArgumentTypeError(f"a labelled fraction lies in (0, 1], got {value}")
    return f


def _reproduce_bmd(args) -> int:
    """``reproduce bmd``: the semi-supervised BMD study over seeds (three by default)."""
    from skddh.studies.bmd import run_bmd_study
    from skddh.studies.bmd_report import write_bmd_report

    seeds = _study_seeds(args)
    if args.fractions is not None and len(set(args.fractions)) != len(args.fractions):
        raise CommandError("--fractions repeats a fraction: give each once")
    start = time.perf_counter()
    marker = args.out / INCOMPLETE
    atomic_write_text(marker, _incomplete_note(args))
    result = run_bmd_study(
        args.scale, seeds=seeds, fractions=args.fractions, device=args.device, verbose=1
    )
    path = write_bmd_report(result, args.out, command=shlex.join(["skddh", *args.argv]))
    marker.unlink(missing_ok=True)
    print(path.read_text())
    print(f"wrote {path} and its tables and figures in {time.perf_counter() - start:.1f} s")
    return 0


def _study_seeds(args) -> list[int]:
    """``--seed`` or ``--seeds`` of the bmd and morphology studies (default 0 1 2)."""
    if args.us_model is not None:
        raise CommandError(f"--us-model is for the ddh study, not {args.system}")
    if args.seed is not None and args.seeds is not None:
        raise CommandError("give --seed or --seeds, not both")
    seeds = [args.seed] if args.seed is not None else list(args.seeds or (0, 1, 2))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise CommandError(f"--seeds repeats {', '.join(map(str, repeated))}: give each seed once")
    return seeds


def _reproduce_morphology(args) -> int:
    """``reproduce morphology``: the hip morphology study over seeds (three by default)."""
    from skddh.studies.morphology import run_morphology_study
    from skddh.studies.morphology_report import write_morphology_report

    if args.fractions is not None:
        raise CommandError("--fractions is for the bmd study")
    seeds = _study_seeds(args)
    start = time.perf_counter()
    marker = args.out / INCOMPLETE
    atomic_write_text(marker, _incomplete_note(args))
    result = run_morphology_study(args.scale, seeds=seeds, device=args.device, verbose=1)
    path = write_morphology_report(result, args.out, command=shlex.join(["skddh", *args.argv]))
    marker.unlink(missing_ok=True)
    print(path.read_text())
    print(f"wrote {path} and its tables and figures in {time.perf_counter() - start:.1f} s")
    return 0


def _reproduce(args) -> int:
    from skddh.studies import run_study, write_report

    if args.system == "bmd":
        return _reproduce_bmd(args)
    if args.system == "morphology":
        return _reproduce_morphology(args)
    if args.fractions is not None:
        raise CommandError("--fractions is for the bmd study")
    if args.seeds is not None:
        if args.seed is not None:
            raise CommandError("give --seed or --seeds, not both")
        return _reproduce_over_seeds(args)
    seed = 0 if args.seed is None else args.seed
    start = time.perf_counter()
    marker = args.out / INCOMPLETE
    atomic_write_text(marker, _incomplete_note(args))  # a rerun replaces an old marker
    result = run_study(args.scale, device=args.device, seed=seed, verbose=1, us_model=args.us_model)
    path = write_report(result, args.out)
    marker.unlink(missing_ok=True)  # the very end: every file above is complete
    print(path.read_text())
    print(f"wrote {path} and its tables and figure in {time.perf_counter() - start:.1f} s")
    return 0


def _reproduce_over_seeds(args) -> int:
    """``reproduce --seeds``: one run per seed into ``--out/seed_S``, then the aggregate.

    ``--out/INCOMPLETE`` covers the whole run: written before the first seed, removed after
    the aggregate ``report.md``. Each seed's folder has its own marker, as a single run's.
    """
    from skddh.studies import run_study, write_over_seeds_report, write_report

    seeds = list(args.seeds)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise CommandError(f"--seeds repeats {', '.join(map(str, repeated))}: give each seed once")
    start = time.perf_counter()
    dirs = [args.out / f"seed_{s}" for s in seeds]
    for d in dirs:  # before any compute: a file in the way fails now, as one line
        d.mkdir(exist_ok=True)
    marker = args.out / INCOMPLETE
    atomic_write_text(marker, _incomplete_note(args, over_seeds=True))
    results = []
    for i, (seed, d) in enumerate(zip(seeds, dirs), start=1):
        print(f"[skddh] seed {seed} ({i} of {len(seeds)}) -> {d}")
        seed_marker = d / INCOMPLETE
        atomic_write_text(seed_marker, _incomplete_note(args, seed=seed))
        result = run_study(
            args.scale, device=args.device, seed=seed, verbose=1, us_model=args.us_model
        )
        write_report(result, d)
        seed_marker.unlink(missing_ok=True)
        results.append(result)
    path = write_over_seeds_report(results, args.out, seed_dirs=dirs)
    marker.unlink(missing_ok=True)  # the very end: every seed's folder and the aggregate
    print(path.read_text())
    print(
        f"wrote {path}, its tables over {len(seeds)} seeds and each seed's report "
        f"({', '.join(str(d) for d in dirs)}) in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _manifest_split(data, labelled, args):
    """Training and calibration rows and the held-out subjects, or an error message.

    With a ``split`` column: its ``train`` rows train the head, its ``calibration`` rows
    calibrate, its ``test`` rows are never used (blank: pretraining only). Without one (or
    with one left blank): a subject-level split of the labelled rows by ``--calibration-size``.
    """
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import GroupShuffleSplit

    subject = np.asarray(data.subject)
    split = None
    if "split" in data:  # the loader may give a blank split column to a table without one
        split = pd.Series(data.split, dtype=object).fillna("").astype(str).str.strip().str.lower()
    if split is not None and (split != "").any():
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
    reg = load_image_table(args.registry, image_size=args.image_size, labels="optional").us
    keep = ~np.isin(np.asarray(reg.subject), np.asarray(data.subject)[held_out])
    if not keep.all():
        print(
            f"[skddh] {int((~keep).sum())} registry images of calibration or test subjects "
            "left out of pretraining"
        )
    return reg.images[keep], f"registry {args.registry}"


def _check_deltas(args, n_units: int) -> None:
    """Refuse a delta the calibration set cannot support (an infinite radius: every hip
    referred), before any compute. Finite exactly when ``delta >= 1/(n+1)``."""
    from skddh.conformal import one_sided_quantile

    unit = "image" if args.calibration_unit == "image" else "subject"
    units = unit if n_units == 1 else f"{unit}s"
    for flag, delta in (
        ("--delta-alpha", args.delta_alpha),
        ("--delta-coverage", args.delta_coverage),
    ):
        if math.isfinite(one_sided_quantile([0.0] * n_units, delta)):
            continue
        # Shown rounded up, so that the value printed is itself supported.
        smallest = math.ceil(10**4 / (n_units + 1)) / 10**4
        need = math.ceil(1 / Fraction(delta).limit_denominator(10**9) - 1)
        raise CommandError(
            f"{flag} {delta:g} is too small for {n_units} calibration {units}: the bound "
            f"would be -inf and every hip referred. The smallest supported delta is 1/(n+1) "
            f"= {smallest:g}; delta {delta:g} needs at least {need} calibration {unit}s"
        )


def _radii_line(model, deltas) -> str:
    """The calibrated radii at the user's deltas (finite: :func:`_check_deltas`)."""
    parts = [
        f"{t} {float(model.quantile_[t]):.2f} (delta {deltas[t]:g})" for t in ("alpha", "coverage")
    ]
    return "radii q+ at your deltas: " + ", ".join(parts)


def _fit(args) -> int:
    import numpy as np
    from sklearn.frozen import FrozenEstimator
    from sklearn.pipeline import make_pipeline

    from skddh import (
        FineTuningRegressor,
        GrafAlphaThreshold,
        MeasurementRegressor,
        OneSidedConformalRegressor,
        SelectiveImagingPolicy,
        SimSiamFeaturizer,
        load_image_table,
    )
    from skddh.model_file import save_policy
    from skddh.policy import DEFAULT_THRESHOLDS

    data = load_image_table(args.manifest, args.image_root, image_size=args.image_size).us
    if len(data.images) == 0:
        raise CommandError("the manifest holds no ultrasound (US) rows")
    labelled = data.targets.notna().all(axis=1).to_numpy()
    parts = _manifest_split(data, labelled, args)
    if isinstance(parts, str):
        raise CommandError(parts)
    train, cal, held_out = parts
    subject = np.asarray(data.subject)
    if train.sum() < 2:
        raise CommandError(
            f"{int(train.sum())} labelled training images; need at least 2 (ultrasound rows "
            "with alpha, beta and fhc all given)"
        )
    if cal.sum() == 0:
        raise CommandError("no labelled calibration images")
    n_cal_subjects = len(np.unique(subject[cal]))
    _check_deltas(args, int(cal.sum()) if args.calibration_unit == "image" else n_cal_subjects)
    encoder = None
    if args.us_model != "scratch":  # a fresh encoder needs no pretraining
        pool, source = _pretraining_images(data, held_out, args)
        if len(pool) == 0:
            raise CommandError(f"no images to pretrain on ({source})")
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
    what = {
        "head": "training the head",
        "finetune": "fine-tuning encoder and head",
        "scratch": "training a fresh encoder and head",
    }[args.us_model]
    print(f"[skddh] {what} on {int(train.sum())} images of {n_train_subjects} subjects")
    if args.us_model in ("finetune", "scratch"):
        head = FineTuningRegressor(
            None if encoder is None else FrozenEstimator(encoder),
            image_size=args.image_size,
            epochs=args.finetune_epochs,
            # a fresh encoder has nothing to keep: the head's rate (benchmarks/README.md)
            encoder_lr=1e-3 if encoder is None else 3e-4,
            test_time_views=args.test_time_views,
            device=args.device,
            random_state=args.seed,
        )
    else:
        head = make_pipeline(
            FrozenEstimator(encoder),
            MeasurementRegressor(device=args.device, random_state=args.seed),
        )
    head.fit(data.images[train], data.targets[train].reset_index(drop=True))
    # Beta is not thresholded; it gets delta_alpha, so that no delta the user did not set
    # decides anything (or warns).
    deltas = {"alpha": args.delta_alpha, "beta": args.delta_alpha, "coverage": args.delta_coverage}
    model = OneSidedConformalRegressor(
        FrozenEstimator(head),
        delta=deltas,
        calibration_unit=args.calibration_unit,
        random_state=args.seed,
    )
    thresholds = dict(DEFAULT_THRESHOLDS)
    if args.age_thresholds == "graf":
        thresholds["alpha"] = GrafAlphaThreshold()
    policy = SelectiveImagingPolicy(
        model,
        rule=args.rule,
        delta={"alpha": args.delta_alpha, "coverage": args.delta_coverage},
        thresholds=thresholds,
    )
    print(
        f"[skddh] calibrating on {int(cal.sum())} images of {n_cal_subjects} subjects "
        f"({args.calibration_unit}) ..."
    )
    policy.fit(data.images[cal], data.targets[cal].reset_index(drop=True), groups=subject[cal])
    # Atomic: a failed or interrupted write leaves an old model intact.
    save_policy(
        policy,
        args.model,
        extra={
            "image_size": args.image_size,
            "rule": args.rule,
            "delta_alpha": args.delta_alpha,
            "delta_coverage": args.delta_coverage,
            "calibration_unit": args.calibration_unit,
            "age_thresholds": args.age_thresholds,
        },
    )
    fitted = policy.estimator_
    print(
        f"wrote {args.model}: rule={args.rule}, delta alpha={args.delta_alpha}, "
        f"coverage={args.delta_coverage}; {len(fitted.calibration_groups_)} calibration "
        f"subjects ({fitted.n_calibration_images_} images, {args.calibration_unit}); "
        + _radii_line(fitted, deltas)
    )
    return 0


def _load_model(path: Path, device: str):
    """The policy ``skddh fit`` saved and its image size, or a one-line error for any other
    file. Loading a model file runs no code from it (:func:`skddh.model_file.load_policy`);
    its torch parts are moved to ``device``, whatever device they were fitted on."""
    from skddh.model_file import load_policy

    try:
        policy, metadata = load_policy(path, device=device, return_metadata=True)
    except (ValueError, TypeError) as exc:
        message = _one_line(exc)
        prefix = f"{path}: "  # load_policy names the file; --model names it already
        if message.startswith(prefix):
            message = message[len(prefix) :]
        raise CommandError(f"--model {str(path)!r}: {message}") from exc
    extra = metadata.get("extra")
    size = extra.get("image_size") if isinstance(extra, dict) else None
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_IMAGE_SIZE:
        raise CommandError(
            f"--model {str(path)!r}: its metadata gives no image size (extra.image_size, an "
            f"integer >= {MIN_IMAGE_SIZE}, got {size!r}); save_policy(policy, path, "
            'extra={"image_size": N}) records the size the images were resized to'
        )
    return policy, size


def _predict(args) -> int:
    import numpy as np
    import pandas as pd

    from skddh import load_image_table
    from skddh.policy import resolve_thresholds, rule_margin
    from skddh.policy._policy import untrustworthy_rows
    from skddh.policy._thresholds import depends_on_covariates

    policy, image_size = _load_model(args.model, args.device)
    data = load_image_table(
        args.manifest, args.image_root, image_size=image_size, labels="optional"
    ).us
    if len(data.images) == 0:
        raise CommandError("the manifest holds no ultrasound (US) rows")
    # The encoder runs once: the decision is policy.predict's, from these bounds
    # (SelectiveImagingPolicy.decision_function: the rule's margin, -inf for a flagged row).
    covariates = None
    if depends_on_covariates(policy.thresholds_):
        age = np.asarray(data.age_weeks, dtype=float)
        missing = ~np.isfinite(age)
        if missing.any():
            raise CommandError(
                f"ultrasound image {data.image_id[np.flatnonzero(missing)[0]]!r} has no "
                f"age_days ({int(missing.sum())} such row(s)): the model's age-aware "
                "thresholds (fit --age-thresholds graf) need every ultrasound row's age"
            )
        covariates = pd.DataFrame({"age_weeks": age})
    bounds = policy.predict_lower(data.images)
    thresholds = resolve_thresholds(policy.thresholds_, covariates, len(bounds))
    margin = rule_margin(bounds, thresholds, policy.rule)
    margin = np.where(untrustworthy_rows(data.images), -np.inf, margin)
    decision = (margin >= 0).astype(int)
    lower = bounds.add_prefix("lower_")
    table = pd.concat(
        [
            pd.DataFrame(
                {"image_id": data.image_id, "subject_id": data.subject, "side": data.side}
            ),
            lower,
            pd.DataFrame(
                {
                    f"threshold_{name}": np.broadcast_to(value, len(bounds))
                    for name, value in thresholds.items()
                }
            ),
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
    atomic_to_csv(table, args.out, index=False)
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
    debug_help = "show the full traceback of an error instead of its one-line message"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # Also accepted after the command; SUPPRESS: absent there, it leaves the global value be.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    device_help = "auto (CUDA when available), cpu, cuda or cuda:N"
    seed_help = f"random seed, 0 to {MAX_SEED}"
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser(
        "reproduce",
        parents=[common],
        help="run a study (ddh: the paper's; morphology: adult hip morphology; bmd: "
        "semi-supervised BMD) and write a report",
        description=(
            "ddh (default): make the study cohort, pretrain a SimSiam encoder per modality, "
            "train the "
            "ultrasound and X-ray heads, calibrate one-sided conformal lower bounds, and "
            "evaluate the selective imaging policy on the matched test pairs. Writes "
            "report.md, CSV tables, headline.png and decision_curve.png to --out. With "
            "--seeds, one such run per seed into --out/seed_S, then at --out the tables' "
            "mean, std, min and max over the seeds (<table>_over_seeds.csv), headline.png "
            "and a report.md of mean (min-max). --out/INCOMPLETE is written first and "
            "removed at the end: while it is there, the files in --out are not (all) from "
            "this run. bmd: the semi-supervised BMD study (Zheng et al. 2021) on the synthetic "
            "hip radiograph cohort, supervised, + adaptive triplet loss, + self-training and "
            "both, at --fractions of labelled patients over --seeds (default 0 1 2); writes "
            "report.md (Pearson r, MAE, Bland-Altman, osteoporosis screening), CSV tables "
            "and figures. morphology: the adult hip morphology study (Khosravi et al.) on "
            "synthetic AP pelvis radiographs, joint localisation then a multitask classifier, "
            "over --seeds (default 0 1 2); writes report.md (the seed's Table 1 beside ours, "
            "Gwet's AC1, ROC curves, Grad-CAM, latency per radiograph), CSV tables and figures."
        ),
    )
    rep.add_argument(
        "system",
        nargs="?",
        choices=["ddh", "morphology", "bmd"],
        default="ddh",
        help="ddh: the selective imaging study (default); morphology: hip morphology on "
        "adult AP pelvis radiographs; bmd: semi-supervised bone mineral density from hip "
        "radiographs; morphology and bmd run over seeds 0 1 2 unless --seed/--seeds",
    )
    rep.add_argument(
        "--fractions",
        type=_fraction,
        nargs="+",
        default=None,
        metavar="F",
        help="bmd only: labelled fractions of the training patients (default 0.1 0.25 0.5)",
    )
    rep.add_argument(
        "--scale",
        choices=["small", "paper"],
        default="small",
        help="small: about 15 minutes a seed on 2 CPU cores; paper: the paper's sizes, for a GPU",
    )
    rep.add_argument("--device", type=_device, default="auto", help=device_help)
    rep.add_argument(
        "--us-model",
        choices=["scratch", "finetune", "head"],
        default=None,
        help="ultrasound model: head (frozen SimSiam + MLP head, the paper's recipe), "
        "finetune (encoder and head trained end to end with label-preserving augmentation "
        "from the SimSiam encoder; the paper scale's) or scratch (the same from a fresh "
        "encoder; the small scale's); the two fine-tuning models train six times a study "
        "(once, and once per CV+ fold)",
    )
    rep.add_argument("--out", type=_writable_dir, default="skddh_out", help="output directory")
    rep.add_argument("--seed", type=_seed, default=None, help=f"{seed_help}; default 0")
    rep.add_argument(
        "--seeds",
        type=_seed,
        nargs="+",
        default=None,
        metavar="SEED",
        help="run once per seed (each into --out/seed_S) and aggregate over the seeds; "
        "not with --seed",
    )
    rep.set_defaults(func=_reproduce)

    fit = sub.add_parser(
        "fit",
        parents=[common],
        help="fit a selective imaging policy on your own registry (load_image_table manifest)",
        description=(
            "Pretrain SimSiam on ultrasound images that are neither calibration nor test "
            "(or on --registry), train the measurement head on the training rows, calibrate "
            "lower bounds on the calibration rows, and save the policy to a skddh model file "
            "(JSON and safetensors in a zip: loading it runs no code). A 'split' column "
            "(train / calibration / test) is honoured; without one the labelled rows are "
            "split by subject (--calibration-size). Test rows are never used."
        ),
    )
    fit.add_argument("manifest", type=_existing_file, help="CSV manifest (see load_image_table)")
    fit.add_argument(
        "--image-root", type=_existing_dir, default=None, help="directory image_path is relative to"
    )
    fit.add_argument(
        "--registry",
        type=_existing_file,
        default=None,
        help="an unlabelled manifest whose US rows SimSiam pretrains on instead (image paths "
        "relative to its directory); rows of calibration or test subjects are left out",
    )
    fit.add_argument(
        "--model",
        type=_output_file,
        default="skddh_policy.skddh",
        help="the model file to write: a skddh model file (JSON and safetensors), whose "
        "loading runs no code",
    )
    fit.add_argument(
        "--image-size", type=_image_size, default=128, help=f"pixels, >= {MIN_IMAGE_SIZE}"
    )
    fit.add_argument("--epochs", type=_positive_int, default=10, help="SimSiam pretraining")
    fit.add_argument("--batch-size", type=_batch_size, default=256)
    fit.add_argument(
        "--us-model",
        choices=["head", "finetune", "scratch"],
        default="head",
        help="head: frozen SimSiam encoder + MLP head (the paper's); finetune: encoder and "
        "head trained end to end on the labelled images with label-preserving augmentation "
        "(better at small label budgets, slower); scratch: the same from a fresh encoder, "
        "with no SimSiam pretraining (the small study's)",
    )
    fit.add_argument(
        "--finetune-epochs",
        type=_positive_int,
        default=60,
        help="with --us-model finetune or scratch",
    )
    fit.add_argument(
        "--test-time-views",
        type=_positive_int,
        default=1,
        help="with --us-model finetune or scratch: predict the mean over the image and N-1 "
        "fixed rotations, zooms and shifts of it (the small study uses 16)",
    )
    fit.add_argument("--rule", choices=["alpha", "or", "and"], default="alpha")
    fit.add_argument(
        "--age-thresholds",
        choices=["fixed", "graf"],
        default="fixed",
        help="fixed: alpha >= 60 deg at every age; graf: alpha >= 50 deg before 12 weeks "
        "(Graf IIa, physiologically immature) and 60 after. With graf, predict needs every "
        "ultrasound row's age_days",
    )
    fit.add_argument(
        "--delta-alpha",
        type=_delta,
        default=0.10,
        help="miscoverage of alpha's bound (also beta's, which no rule reads), in (0, 1) and "
        "at least 1/(n+1) for n calibration subjects",
    )
    fit.add_argument(
        "--delta-coverage",
        type=_delta,
        default=0.10,
        help="miscoverage of coverage's bound, as --delta-alpha",
    )
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
    fit.add_argument("--device", type=_device, default="auto", help=device_help)
    fit.add_argument("--seed", type=_seed, default=0, help=seed_help)
    fit.set_defaults(func=_fit)

    pred = sub.add_parser(
        "predict",
        parents=[common],
        help="apply a saved policy to a manifest's ultrasound images",
        description="Write lower bounds and the decision per ultrasound image to a CSV.",
    )
    pred.add_argument("manifest", type=_existing_file)
    pred.add_argument(
        "--model",
        type=_existing_file,
        default="skddh_policy.skddh",
        help="a model file written by skddh fit (JSON and safetensors; loading it runs no "
        "code; joblib and pickle files are refused)",
    )
    pred.add_argument("--image-root", type=_existing_dir, default=None)
    pred.add_argument(
        "--out",
        type=_output_file,
        default="skddh_predictions.csv",
        help="CSV to write (not the manifest or the model)",
    )
    pred.add_argument(
        "--device",
        type=_device,
        default="auto",
        help=f"where to run the model, whatever device it was fitted on: {device_help}",
    )
    pred.set_defaults(func=_predict)

    coh = sub.add_parser(
        "cohort",
        parents=[common],
        help="make the synthetic study cohort, print its summary and write a figure",
    )
    coh.add_argument("--out", type=_writable_dir, default="skddh_out", help="output directory")
    coh.add_argument("--seed", type=_seed, default=0, help=seed_help)
    coh.add_argument(
        "--n-jobs", type=_n_jobs, default=None, help="parallel workers (joblib; -1: every core)"
    )
    coh.set_defaults(func=_cohort)
    return parser


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv=None) -> int:
    """Entry point of the ``skddh`` console script and ``python -m skddh``.

    Returns the exit status: 0, 2 for an error (one line on stderr; argparse's usage errors
    exit 2 themselves), 130 after Ctrl-C. ``--debug`` re-raises instead.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)  # --device cuda imports torch: it takes a while
    except KeyboardInterrupt:
        print("skddh: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    args.argv = argv
    name = f"skddh {args.command}"
    try:
        _check_outputs_are_not_inputs(args)
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
