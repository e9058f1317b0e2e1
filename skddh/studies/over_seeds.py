"""The study over several seeds: every report table's mean and spread, and their report.

``skddh reproduce --seeds 0 1 2`` runs :func:`~skddh.studies.run_study` once per seed, writes
each run's own report into ``OUT/seed_S/`` and then, at ``OUT/``, what this module makes of
the runs together:

- ``<table>_over_seeds.csv`` for every table of the report (``headline``, ``mae``, ``radii``,
  ``radii_by_delta``, ``coverage``, ``policy``, ``calibration_methods``, ``timings``), in long
  (tidy) format: the table's key columns (which row: ``rule``, ``delta_alpha``, ...), then
  ``quantity`` (which column of the per-seed table), ``mean``, ``std`` (sample standard
  deviation, ddof = 1: NaN for a single seed), ``min``, ``max`` and ``n_seeds`` (the seeds with
  a value: a rate among passed hips has none in a run that passes nothing). Columns that do
  not vary with the seed (the paper's figures, a nominal coverage, a rule's target) are key
  columns, not quantities; text columns other than keys are left out.
- ``headline.png``: the headline's bars at their means, error bars from min to max.
- ``report.md`` (written last): every table as mean (min-max) per cell, naming the seeds, the
  scale, the device and the machine.

The aggregation (:func:`aggregate_results`) is pure: StudyResults in, DataFrames out.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from skddh._atomic import atomic_to_csv, atomic_write_text
from skddh.studies.ddh import METHODS_DELTA, StudyResult
from skddh.studies.report import HEADLINE_NOTES, _md, _write_headline_figure

__all__ = [
    "TABLES",
    "aggregate_results",
    "aggregate_tables",
    "machine_description",
    "study_tables",
    "wide_summary",
    "write_over_seeds_report",
]

#: The report's tables, in its order: name -> (title, key columns, number format).
TABLES = {
    "headline": (
        "Hips passed with a guarantee",
        ["policy", "rule", "delta_alpha", "delta_coverage", "target_miss_bound"],
        ".3f",
    ),
    "mae": (
        "Mean absolute error on the test subjects",
        ["modality", "measurement", "paper_mae"],
        ".2f",
    ),
    "ihdi": ("IHDI grade accuracy (X-ray head)", ["measurement"], ".3f"),
    "calibration_methods": (
        f"Calibration methods at delta = {METHODS_DELTA:.2f}",
        ["method", "guarantee"],
        ".3f",
    ),
    "radii": (
        f"Calibration radii at delta = {METHODS_DELTA:.2f}",
        ["measurement", "paper_q_plus"],
        ".2f",
    ),
    "radii_by_delta": ("Radii q+ per delta", ["delta"], ".2f"),
    "coverage": ("Empirical coverage on the test images, per delta", ["delta", "nominal"], ".3f"),
    "policy": (
        "Selective imaging policy on the matched pairs",
        ["rule", "delta_alpha", "delta_coverage", "paper_us_pass_rate"],
        ".3f",
    ),
    "timings": ("Timings (s)", ["stage"], ".1f"),
}

STATS = ["mean", "std", "min", "max", "n_seeds"]


def study_tables(result: StudyResult) -> dict[str, pd.DataFrame]:
    """A run's report tables as flat frames, every row key a column (see :data:`TABLES`).

    Parameters
    ----------
    result : StudyResult
        One run (anything with the same table attributes). A table that is None is left out.

    Returns
    -------
    dict of str to DataFrame
        Keyed by table name, in :data:`TABLES` order. ``ihdi`` holds the IHDI grade
        accuracy the report gives below the MAE table (``mae.attrs``), when the run has one.
    """
    tables = {}
    if result.headline is not None:
        tables["headline"] = result.headline.reset_index()
    tables["mae"] = result.mae
    if "ihdi_accuracy" in result.mae.attrs:
        accuracy = float(result.mae.attrs["ihdi_accuracy"])
        tables["ihdi"] = pd.DataFrame({"measurement": ["ihdi"], "accuracy": [accuracy]})
    if result.calibration_methods is not None:
        tables["calibration_methods"] = result.calibration_methods.reset_index()
    tables["radii"] = result.radii.rename_axis("measurement").reset_index()
    tables["radii_by_delta"] = result.radii_by_delta.reset_index()
    tables["coverage"] = result.coverage.reset_index()
    tables["policy"] = result.policy
    tables["timings"] = pd.DataFrame(
        {"stage": list(result.timings), "seconds": [float(v) for v in result.timings.values()]}
    )
    return tables


def _numeric_or_none(column: pd.Series) -> pd.Series | None:
    """The column as floats, or None when it holds text (which is not aggregated)."""
    values = pd.to_numeric(column, errors="coerce")
    if values.isna().sum() > column.isna().sum():
        return None
    return values.astype(float)


def _long(table: pd.DataFrame, keys: Sequence[str], seed, name: str) -> pd.DataFrame:
    """One run's table as (keys, quantity, value) rows."""
    keys = list(keys)
    if keys and table.duplicated(keys).any():
        raise ValueError(f"seed {seed}: the rows of table {name!r} are not unique by {keys}")
    values = {}
    for col in table.columns:
        if col in keys:
            continue
        numeric = _numeric_or_none(table[col])
        if numeric is not None:
            values[col] = numeric
    frame = pd.concat([table[keys].reset_index(drop=True), pd.DataFrame(values)], axis=1)
    frame["_row"] = np.arange(len(frame))
    long = frame.melt(id_vars=[*keys, "_row"], var_name="quantity", value_name="value")
    long["seed"] = seed
    return long


def aggregate_tables(
    per_seed: Sequence[Mapping[str, pd.DataFrame]],
    *,
    seeds: Sequence | None = None,
    keys: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, pd.DataFrame]:
    """Mean, std, min, max and count over runs of every cell of every table.

    Parameters
    ----------
    per_seed : sequence of mapping of str to DataFrame
        One mapping of flat tables per run (:func:`study_tables`).
    seeds : sequence, default=None
        The runs' seeds, for error messages; ``0, 1, ...`` when None.
    keys : mapping of str to sequence of str, default=None
        Per table, the columns that say which row a cell is in (and do not vary over runs);
        from :data:`TABLES` when None. Every other column that holds numbers is a quantity.

    Returns
    -------
    dict of str to DataFrame
        Per table (those in any run), a long frame: the key columns, ``quantity``, then
        ``mean``, ``std`` (ddof = 1), ``min``, ``max`` and ``n_seeds``, which count only the
        runs with a value (NaN is no value; ``inf`` is one). Rows and quantities keep the
        first run's order.

    Examples
    --------
    >>> import pandas as pd
    >>> from skddh.studies.over_seeds import aggregate_tables
    >>> runs = [{"t": pd.DataFrame({"rule": ["a", "b"], "rate": [0.1, 0.5]})},
    ...         {"t": pd.DataFrame({"rule": ["a", "b"], "rate": [0.3, 0.5]})}]
    >>> aggregate_tables(runs, keys={"t": ["rule"]})["t"]
      rule quantity  mean       std  min  max  n_seeds
    0    a     rate   0.2  0.141421  0.1  0.3        2
    1    b     rate   0.5  0.000000  0.5  0.5        2
    """
    seeds = list(range(len(per_seed))) if seeds is None else list(seeds)
    keys = {name: spec[1] for name, spec in TABLES.items()} if keys is None else keys
    names = list(dict.fromkeys(name for tables in per_seed for name in tables))
    out = {}
    for name in names:
        table_keys = list(keys.get(name, []))
        runs = [(s, t[name]) for s, t in zip(seeds, per_seed) if name in t]
        present = [k for k in table_keys if all(k in t.columns for _, t in runs)]
        long = pd.concat([_long(t, present, s, name) for s, t in runs], ignore_index=True)
        group = [*present, "quantity"]
        # Rows and quantities keep the first run's order (one first seen later goes last).
        if present:
            long["_row"] = long.groupby(present, sort=False, dropna=False).ngroup()
        long["_col"] = long.groupby("quantity", sort=False).ngroup()
        grouped = long.groupby(["_row", "_col", *group], sort=True, dropna=False)["value"]
        stats = grouped.agg(
            mean="mean",
            std=_std,
            min="min",
            max="max",
            n_seeds="count",
        )
        stats = stats.reset_index().drop(columns=["_row", "_col"])
        stats["n_seeds"] = stats["n_seeds"].astype(int)
        out[name] = stats[[*group, *STATS]]
    return out


def _std(values: pd.Series) -> float:
    """Sample standard deviation (ddof = 1) of the values there are; NaN with an infinite one
    (or fewer than two)."""
    v = values.dropna().to_numpy(float)
    if len(v) < 2 or not np.isfinite(v).all():
        return np.nan
    return float(np.std(v, ddof=1))


def aggregate_results(results: Sequence[StudyResult]) -> dict[str, pd.DataFrame]:
    """Every report table's cells over seeds: :func:`aggregate_tables` of the runs.

    Parameters
    ----------
    results : sequence of StudyResult
        One run per seed (the same scale, different seeds).

    Returns
    -------
    dict of str to DataFrame
        Keyed by table name (:data:`TABLES`), each a long frame of key columns,
        ``quantity``, ``mean``, ``std``, ``min``, ``max`` and ``n_seeds``.
    """
    return aggregate_tables([study_tables(r) for r in results], seeds=[r.seed for r in results])


def _fmt(value: float, floatfmt: str) -> str:
    if np.isnan(value):
        return ""
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, floatfmt)


def wide_summary(long: pd.DataFrame, floatfmt: str = ".3f", n_seeds: int | None = None):
    """One row per table row, one column per quantity, each cell ``mean (min-max)``.

    A cell with fewer values than ``n_seeds`` says how many it has: ``0.500 (0.500-0.500)
    [n=1]``. A cell without any value is empty.

    Parameters
    ----------
    long : DataFrame
        One table of :func:`aggregate_tables`.
    floatfmt : str, default=".3f"
    n_seeds : int, default=None
        The number of runs; the largest ``n_seeds`` of the table when None.

    Returns
    -------
    DataFrame of str
    """
    keys = list(long.columns[: list(long.columns).index("quantity")])
    n_seeds = int(long["n_seeds"].max()) if n_seeds is None else n_seeds

    def cell(row) -> str:
        if row["n_seeds"] == 0:
            return ""
        text = f"{_fmt(row['mean'], floatfmt)} ({_fmt(row['min'], floatfmt)}-"
        text += f"{_fmt(row['max'], floatfmt)})"
        return text if row["n_seeds"] == n_seeds else f"{text} [n={row['n_seeds']}]"

    cells = long.assign(cell=long.apply(cell, axis=1))
    order = list(dict.fromkeys(long["quantity"]))
    rows = cells.assign(_row=cells.groupby(keys, sort=False, dropna=False).ngroup() if keys else 0)
    wide = rows.pivot(index="_row", columns="quantity", values="cell")[order]
    first = rows.drop_duplicates("_row").set_index("_row")[keys]
    return pd.concat([first, wide], axis=1).reset_index(drop=True).rename_axis(columns=None)


def machine_description() -> str:
    """The machine this runs on: node name, architecture and CPU count (:mod:`platform`)."""
    node, arch = platform.node() or "unknown host", platform.machine() or "unknown"
    return f"{node} ({arch}, {os.cpu_count()} CPUs)"


def write_over_seeds_report(
    results: Sequence[StudyResult],
    out: str | Path,
    *,
    seed_dirs: Sequence[str | Path] | None = None,
    aggregate: Mapping[str, pd.DataFrame] | None = None,
) -> Path:
    """Write the tables over seeds, ``headline.png`` and ``report.md`` (last) into ``out``.

    Parameters
    ----------
    results : sequence of StudyResult
        One run per seed.
    out : str or Path
        The output folder (created if missing).
    seed_dirs : sequence of str or Path, default=None
        Each run's own output folder, linked from the report (relative to ``out`` when
        inside it); no links when None.
    aggregate : mapping of str to DataFrame, default=None
        :func:`aggregate_results` of ``results``, computed when None.

    Returns
    -------
    Path of ``report.md``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    aggregate = aggregate_results(results) if aggregate is None else aggregate
    n = len(results)
    for name, table in aggregate.items():
        atomic_to_csv(table, out / f"{name}_over_seeds.csv", index=False)
    if "headline" in aggregate:
        stat = {s: _headline_stat(aggregate["headline"], s) for s in ("mean", "min", "max")}
        _write_headline_figure(
            stat["mean"],
            out / "headline.png",
            passed_range=(stat["min"]["passed"], stat["max"]["passed"]),
            oracle_range=(stat["min"]["oracle"], stat["max"]["oracle"]),
            title=f"Hips passed on ultrasound: mean over {n} seeds, bars min-max",
        )

    seeds = [r.seed for r in results]
    scales = sorted({str(r.scale) for r in results})
    devices = sorted({str(r.device) for r in results})
    pairs = sorted({int(r.n_pairs) for r in results})
    runs = ""
    if seed_dirs is not None:
        links = []
        for seed, d in zip(seeds, seed_dirs):
            d = Path(d)
            rel = d.relative_to(out) if d.is_relative_to(out) else d
            links.append(f"[seed {seed}]({(rel / 'report.md').as_posix()})")
        runs = "- each run's own report: " + ", ".join(links) + "\n"
    sections = []
    for name, (title, _, floatfmt) in TABLES.items():
        if name not in aggregate:
            continue
        body = _md(wide_summary(aggregate[name], floatfmt, n_seeds=n), floatfmt, index=False)
        if name == "headline":
            body += f"\n\n{HEADLINE_NOTES}\n![hips passed with a guarantee](headline.png)"
        sections.append(f"## {title}\n\nFile: `{name}_over_seeds.csv`.\n\n{body}\n")
    text = f"""# skddh reproduce over {n} seeds: report

- seeds: {", ".join(str(s) for s in seeds)}
- scale: `{", ".join(scales)}`
- device: `{", ".join(devices)}`
- machine: {machine_description()}
- matched test pairs per run: {", ".join(map(str, pairs))}
{runs}
Every cell is the mean (min-max) over the seeds (`[n=k]`: only k seeds have a value, e.g. a
rate among passed hips where a run passes none). The `*_over_seeds.csv` files hold, per
cell, `mean`, `std` (ddof = 1), `min`, `max` and `n_seeds`, in long format: the table's key
columns, then `quantity` (the per-seed table's column). Synthetic cohort (`make_hip_cohort`):
"paper" columns are the DDH paper's figures on its real data (arXiv 2511.18457).

{chr(10).join(sections)}"""
    path = out / "report.md"
    atomic_write_text(path, text)  # last: the tables above are all from these runs
    return path


def _headline_stat(long: pd.DataFrame, stat: str) -> pd.DataFrame:
    """The headline over seeds as a wide frame of one statistic, indexed by policy."""
    order = list(dict.fromkeys(long["policy"]))
    return long.pivot(index="policy", columns="quantity", values=stat).reindex(order)
