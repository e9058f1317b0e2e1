"""Tests of skddh.studies.over_seeds: every report table's mean and spread over seeds, and the
report over seeds (on synthetic StudyResults: a real run takes minutes)."""

import numpy as np
import pandas as pd
import pytest

from skddh.studies import PAPER, aggregate_results, write_over_seeds_report
from skddh.studies.over_seeds import TABLES, aggregate_tables, study_tables, wide_summary


def test_aggregate_tables_is_exact():
    runs = [
        {"t": pd.DataFrame({"rule": ["b", "a"], "x": [1.0, 10.0], "y": [np.nan, 2.0]})},
        {"t": pd.DataFrame({"rule": ["a", "b"], "x": [20.0, 2.0], "y": [4.0, np.nan]})},
        {"t": pd.DataFrame({"rule": ["b", "a"], "x": [6.0, np.inf], "y": [3.0, 9.0]})},
    ]
    agg = aggregate_tables(runs, keys={"t": ["rule"]})["t"]
    assert list(agg.columns) == ["rule", "quantity", "mean", "std", "min", "max", "n_seeds"]
    # The first run's row and column order, whatever the later runs' order.
    assert list(zip(agg["rule"], agg["quantity"])) == [
        ("b", "x"),
        ("b", "y"),
        ("a", "x"),
        ("a", "y"),
    ]
    cell = agg.set_index(["rule", "quantity"])
    assert cell.loc[("b", "x"), ["mean", "min", "max", "n_seeds"]].tolist() == [3.0, 1.0, 6.0, 3]
    assert cell.loc[("b", "x"), "std"] == pytest.approx(np.std([1, 2, 6], ddof=1))
    # NaN is no value: it is not counted; one value has no sample std.
    assert cell.loc[("b", "y"), ["mean", "min", "max", "n_seeds"]].tolist() == [3.0, 3.0, 3.0, 1]
    assert np.isnan(cell.loc[("b", "y"), "std"])
    assert cell.loc[("a", "y"), ["mean", "min", "max", "n_seeds"]].tolist() == [5.0, 2.0, 9.0, 3]
    # inf is a value: the mean and max are inf, the std undefined.
    a_x = cell.loc[("a", "x")]
    assert np.isinf(a_x["mean"]) and np.isinf(a_x["max"]) and a_x["min"] == 10.0
    assert np.isnan(a_x["std"]) and a_x["n_seeds"] == 3


def test_aggregate_tables_keeps_keys_and_drops_text():
    runs = [
        {"t": pd.DataFrame({"k": ["a"], "paper": [None], "note": ["x"], "v": [1], "w": [None]})},
        {"t": pd.DataFrame({"k": ["a"], "paper": [None], "note": ["y"], "v": [3], "w": [None]})},
    ]
    agg = aggregate_tables(runs, keys={"t": ["k", "paper"]})["t"]
    assert list(agg.columns[:3]) == ["k", "paper", "quantity"]
    assert list(agg["quantity"]) == ["v", "w"]  # "note" is text; an all-None column is numbers
    assert agg["mean"].iloc[0] == 2.0 and agg["n_seeds"].tolist() == [2, 0]


def test_rows_not_unique_by_their_keys_are_refused():
    runs = [{"t": pd.DataFrame({"k": ["a", "a"], "v": [1.0, 2.0]})}]
    with pytest.raises(ValueError, match="not unique by"):
        aggregate_tables(runs, seeds=[7], keys={"t": ["k"]})


@pytest.fixture
def three_seeds(fake_study_result):
    return [fake_study_result(seed, shift=0.1 * seed) for seed in (0, 1, 2)]


def test_aggregate_results_covers_every_table_of_the_report(three_seeds):
    agg = aggregate_results(three_seeds)
    assert list(agg) == list(TABLES)  # the report's tables, headline first
    mae = agg["mae"].set_index(["measurement", "quantity"])
    np.testing.assert_allclose(mae.loc[("alpha", "mae"), ["mean", "min", "max"]], [1.1, 1.0, 1.2])
    assert mae.loc[("alpha", "mae"), "n_seeds"] == 3
    assert (agg["mae"]["paper_mae"] == agg["mae"]["measurement"].map(PAPER["mae"])).all()
    np.testing.assert_allclose(agg["ihdi"][["mean", "min", "max"]].iloc[0], [0.6, 0.5, 0.7])
    # Every policy cell is the mean, min and max of the per-seed cells.
    for table, keys in [("policy", ["rule", "delta_alpha", "delta_coverage"]), ("headline", [])]:
        per_seed = [study_tables(r)[table] for r in three_seeds]
        agg_t = agg[table]
        for q in ["us_pass_rate", "missed_us_truth"] if table == "policy" else ["passed", "oracle"]:
            values = np.stack([t[q].to_numpy(float) for t in per_seed])
            got = agg_t[agg_t["quantity"] == q]
            np.testing.assert_allclose(got["mean"], values.mean(axis=0))
            np.testing.assert_allclose(got["min"], values.min(axis=0))
            np.testing.assert_allclose(got["max"], values.max(axis=0))
        assert set(keys) <= set(agg_t.columns)
    methods = agg["calibration_methods"]
    assert "calibration_units" not in set(methods["quantity"])  # text: left out
    q = methods.set_index(["method", "quantity"]).loc[("exact", "q_plus_alpha")]
    assert np.isinf(q["mean"]) and q["n_seeds"] == 3
    timings = agg["timings"].set_index("stage")
    assert timings.loc["cohort", ["mean", "min", "max"]].tolist() == [2.0, 1.0, 3.0]


def test_wide_summary_is_mean_min_max_per_cell(three_seeds):
    wide = wide_summary(aggregate_results(three_seeds)["mae"], ".2f")
    keys = ["modality", "measurement", "paper_mae"]
    assert list(wide.columns) == [*keys, "mae", "mae_median_predictor", "n"]
    assert wide.loc[0, "mae"] == "1.10 (1.00-1.20)"
    runs = [{"t": pd.DataFrame({"k": ["a"], "v": [v]})} for v in (np.nan, 0.5)]
    long = aggregate_tables(runs, keys={"t": ["k"]})["t"]
    assert wide_summary(long, n_seeds=2)["v"].iloc[0] == ("0.500 (0.500-0.500) [n=1]")


def test_write_over_seeds_report(three_seeds, tmp_path):
    dirs = [tmp_path / f"seed_{r.seed}" for r in three_seeds]
    path = write_over_seeds_report(three_seeds, tmp_path, seed_dirs=dirs)
    assert path == tmp_path / "report.md"
    for name in TABLES:
        table = pd.read_csv(tmp_path / f"{name}_over_seeds.csv")
        assert {"quantity", "mean", "std", "min", "max", "n_seeds"} <= set(table.columns)
    assert (tmp_path / "headline.png").stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    text = path.read_text()
    assert "- seeds: 0, 1, 2" in text and "- scale: `tiny`" in text and "- device: `cpu`" in text
    assert "- machine: " in text and "CPUs)" in text
    assert "[seed 1](seed_1/report.md)" in text
    first = text.index("## ")
    assert text[first:].startswith("## Hips passed with a guarantee")
    assert "| ultrasound | alpha | 9.69 | 1.10 (1.00-1.20) |" in text
    assert text.index("## Mean absolute error") < text.index("## Selective imaging policy")
