"""The ``skddh`` command line."""

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


def _demo(args) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skddh",
        description="Ultrasound-first, radiation-preserving selective imaging for DDH.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="make the synthetic study cohort, print its summary and write a figure"
    )
    demo.add_argument(
        "--out",
        type=_writable_dir,
        default=Path("skddh_out"),
        help="output directory (created if needed; default: skddh_out)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--n-jobs", type=int, default=None, help="parallel workers (joblib)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``skddh`` console script and ``python -m skddh``."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
