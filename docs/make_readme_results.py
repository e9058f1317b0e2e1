"""The README's demo tables, from ``skddh reproduce`` output over seeds (no number typed by hand).

Run ``python docs/make_readme_results.py --seeds 0 1 2`` to run ``skddh reproduce --scale
small --seeds 0 1 2 --out skddh_out/readme`` (one run per seed, in ``seed_S/``), aggregate the
tables (mean and spread over seeds), write ``docs/results/readme_demo.csv``, copy the
headline figure to ``docs/images/readme_headline.png`` and rewrite the block between the
``demo-table`` markers in ``README.md``. ``--reuse`` aggregates an existing run.
``tests/test_readme.py`` checks that the README's block is exactly what
:func:`render` makes of the committed CSV.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "readme_demo.csv"
START, END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"

#: README row -> (rule, delta_alpha, delta_coverage) in the study's policy table.
ROWS = {
    "AND 0.10/0.10": ("and", 0.10, 0.10),
    "AND 0.20/0.20": ("and", 0.20, 0.20),
    "alpha-only 0.10": ("alpha", 0.10, 0.10),
    "alpha-only 0.35": ("alpha", 0.35, 0.35),
    "OR 0.35/0.35": ("or", 0.35, 0.35),
    "OR 0.40/0.40": ("or", 0.40, 0.40),
}
HEADLINE_COLUMNS = {
    "passed": "passed on ultrasound",
    "missed_of_all": "missed (of all hips)",
    "oracle": "truly normal (oracle, for scale)",
}
COLUMNS = {
    "us_pass_rate": "ultrasound pass rate",
    "missed_xray_finding": "missed X-ray findings",
    "missed_us_truth": "missed (true alpha < 60 or coverage < 50)",
}


def collect(out_dirs: list[Path]) -> pd.DataFrame:
    """One row per (seed, README row, column) from each run's ``policy.csv`` and ``mae.csv``."""
    records = []
    for seed, d in enumerate(out_dirs):
        policy = pd.read_csv(d / "policy.csv")
        for row, (rule, da, dc) in ROWS.items():
            hit = policy[
                (policy.rule == rule)
                & (policy.delta_alpha.round(2) == da)
                & (policy.delta_coverage.round(2) == dc)
            ]
            if hit.empty:
                raise ValueError(f"{d / 'policy.csv'} has no row for {rule} {da}/{dc}")
            for col in COLUMNS:
                records.append(
                    dict(
                        run=d.name,
                        table="policy",
                        row=row,
                        column=col,
                        value=float(hit[col].iloc[0]),
                    )
                )
        head = pd.read_csv(d / "headline.csv")
        for _, r in head.iterrows():
            for col in HEADLINE_COLUMNS:
                records.append(
                    dict(run=d.name, table="headline", row=r.policy, column=col, value=r[col])
                )
        mae = pd.read_csv(d / "mae.csv")
        for _, r in mae.iterrows():
            records.append(
                dict(run=d.name, table="mae", row=r.measurement, column="mae", value=float(r.mae))
            )
            records.append(
                dict(
                    run=d.name,
                    table="mae",
                    row=r.measurement,
                    column="mae_median_predictor",
                    value=float(r.mae_median_predictor),
                )
            )
        del seed
    return pd.DataFrame(records)


def render(results: pd.DataFrame, machine: str, command: str) -> str:
    """The README block: mean (min-max) over runs, for the policy rows and the models' MAE."""
    n_runs = results.run.nunique()

    def cell(sub):
        v = sub.value
        return f"{v.mean():.2f} ({v.min():.2f}-{v.max():.2f})"

    pol = results[results.table == "policy"]
    head = results[results.table == "headline"]
    lines = [
        f"Mean (min-max) over {n_runs} seeds of `{command}`, on {machine}.",
        "",
        "| hips passed with a guarantee (test hips) | "
        + " | ".join(HEADLINE_COLUMNS.values())
        + " |",
        "|---|" + "---:|" * len(HEADLINE_COLUMNS),
    ]
    for row in head.row.unique():
        cells = [cell(head[(head.row == row) & (head.column == c)]) for c in HEADLINE_COLUMNS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "![hips passed with a guarantee](docs/images/readme_headline.png)",
        "",
        "| policy on the 76 matched test pairs | " + " | ".join(COLUMNS.values()) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for row in ROWS:
        cells = [cell(pol[(pol.row == row) & (pol.column == c)]) for c in COLUMNS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    mae = results[results.table == "mae"]
    lines += [
        "",
        "| MAE on the test subjects | ours | median predictor | seeds where ours is lower |",
        "|---|---:|---:|---:|",
    ]
    for m in mae.row.unique():
        rows = mae[mae.row == m]
        ours, base = (rows[rows.column == c] for c in ("mae", "mae_median_predictor"))
        lower = (ours.set_index("run").value < base.set_index("run").value).sum()
        lines.append(f"| {m} | {cell(ours)} | {cell(base)} | {lower} of {n_runs} |")
    return "\n".join(lines)


def read_committed() -> tuple[pd.DataFrame, str, str]:
    """The committed results with their machine and command (kept as CSV comment lines)."""
    head = [line for line in RESULTS.read_text().splitlines() if line.startswith("#")]
    meta = dict(line[1:].strip().split(": ", 1) for line in head)
    return pd.read_csv(RESULTS, comment="#"), meta["machine"], meta["command"]


def readme_block(readme: str) -> str:
    """The text between the markers (what :func:`render` wrote)."""
    start, end = readme.index(START) + len(START), readme.index(END)
    return readme[start:end].strip("\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reuse", action="store_true", help="aggregate existing outputs")
    parser.add_argument("--machine", default=f"{platform.machine()}, {platform.node()}")
    args = parser.parse_args(argv)
    out = ROOT / "skddh_out" / "readme"
    dirs = [out / f"seed_{s}" for s in args.seeds]
    if not (args.reuse and (out / "report.md").exists() and not (out / "INCOMPLETE").exists()):
        t = time.perf_counter()
        seeds = [str(s) for s in args.seeds]
        cmd = [sys.executable, "-m", "skddh", "reproduce", "--scale", "small", "--seeds", *seeds]
        subprocess.run([*cmd, "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
        print(f"{len(seeds)} seeds: {time.perf_counter() - t:.0f} s", flush=True)
    shutil.copyfile(out / "headline.png", ROOT / "docs" / "images" / "readme_headline.png")
    results = collect(dirs)
    command = "skddh reproduce --scale small --seeds " + " ".join(map(str, args.seeds))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("w") as f:
        f.write(f"# machine: {args.machine}\n# command: {command}\n")
        results.to_csv(f, index=False)
    block = render(results, args.machine, command)
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    start, end = readme.index(START) + len(START), readme.index(END)
    readme_path.write_text(readme[:start] + "\n" + block + "\n" + readme[end:])
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
