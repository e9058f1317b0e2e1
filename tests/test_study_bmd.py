"""Tests of skddh.studies.bmd and its report: the BMD study end to end at a tiny scale."""

import numpy as np
import pandas as pd
import pytest

from skddh import cli
from skddh.studies import bmd
from skddh.studies.bmd import BMD_METHODS, BMD_SCALES, _comparison, run_bmd_study, screening
from skddh.studies.bmd_report import write_bmd_report

TINY = dict(
    BMD_SCALES["small"],
    n_patients=20,
    image_size=32,
    epochs=1,
    batch_size=32,
    head_epochs=5,
    max_iter=1,
    fractions=(0.5,),
)


@pytest.fixture(scope="module")
def tiny_result():
    return run_bmd_study(TINY, seeds=(0, 1), device="cpu")


def test_every_run_is_there_and_labels_stay_hidden(tiny_result):
    runs = tiny_result.runs
    assert len(runs) == 2 * len(BMD_METHODS)
    assert set(runs["method"]) == set(BMD_METHODS)
    assert {"pearson_r", "mae", "ccc", "auroc", "sensitivity", "seconds"} <= set(runs.columns)
    # the learners have unlabelled images (self-training uses them); the reference has none
    learners = runs[runs["method"] != "all_labels"]
    ref = runs[runs["method"] == "all_labels"]
    assert (learners["n_unlabelled_images"] > 0).all() and (ref["n_unlabelled_images"] == 0).all()
    for seed, block in runs.groupby("seed"):
        n_train = block["n_labelled_images"] + block["n_unlabelled_images"]
        assert n_train.nunique() == 1, seed  # every method of a seed: the same training images
    st = runs[runs["method"].isin(["self_training", "both"])]
    assert st["pseudo_mae_trusted"].notna().any() and st["supervised_mae_unlabelled"].notna().all()
    assert st["disagreement_error_spearman"].between(-1, 1).all()
    s = tiny_result.summary
    assert set(s["n_seeds"]) == {2} and len(s) == len(BMD_METHODS)
    assert set(tiny_result.comparison["method"]) == {
        "triplet",
        "self_training",
        "both",
        "all_labels",
    }
    pred = tiny_result.predictions
    assert len(pred) == runs["n_test_images"].sum()
    assert np.isfinite(pred["predicted"]).all()


def test_same_seed_same_numbers():
    cfg = dict(TINY, n_patients=16)
    a = run_bmd_study(cfg, seeds=(3,), methods=("supervised",), device="cpu")
    b = run_bmd_study(cfg, seeds=(3,), methods=("supervised",), device="cpu")
    pd.testing.assert_frame_equal(a.predictions, b.predictions)


def test_report_files_and_verdict(tiny_result, tmp_path):
    path = write_bmd_report(tiny_result, tmp_path, command="skddh reproduce bmd")
    text = path.read_text()
    for name in (
        "bmd_runs.csv",
        "bmd_summary.csv",
        "bmd_comparison.csv",
        "bland_altman.png",
        "pearson_r.png",
        "bmd_predictions.csv",
    ):
        assert (tmp_path / name).exists(), name
    assert "0.8805" in text and "Verdict" in text and "US 2022/0309651 A1" in text
    assert "self-training + triplet loss" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_comparison_says_beats_only_beyond_the_spread():
    rows = []
    for seed, (sup, both) in enumerate([(0.60, 0.70), (0.62, 0.71), (0.58, 0.69)]):
        rows += [
            {"fraction": 0.25, "seed": seed, "method": "supervised", "pearson_r": sup},
            {"fraction": 0.25, "seed": seed, "method": "both", "pearson_r": both},
        ]
    comp = _comparison(pd.DataFrame(rows))
    assert comp["r_gain_mean"].iloc[0] == pytest.approx(0.1, abs=1e-12)
    assert comp["beats_by_more_than_spread"].iloc[0]
    # the same mean gain with one seed far off: the spread swallows it
    rows[5]["pearson_r"] = 0.40
    rows[4]["pearson_r"] = 0.95
    assert not _comparison(pd.DataFrame(rows))["beats_by_more_than_spread"].iloc[0]


def test_screening_read_out_on_known_values():
    # T <= -2.5 <=> BMD <= 0.858 - 2.5 * 0.120 = 0.558
    dexa = np.array([0.50, 0.55, 0.60, 0.80])
    pred = np.array([0.54, 0.60, 0.50, 0.90])
    s = screening(dexa, pred)
    assert s["prevalence"] == 0.5
    assert s["sensitivity"] == 0.5 and s["specificity"] == 0.5
    assert s["auroc"] == pytest.approx(0.5)  # positives -0.54, -0.60 vs -0.50, -0.90: 2 of 4
    assert np.isnan(screening([0.8, 0.9], [0.8, 0.9])["auroc"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(methods=("ridge",)), "unknown method"),
        (dict(fractions=(0.0,)), "fractions"),
        (dict(seeds=()), "seeds"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_bmd_study(TINY, device="cpu", **kwargs)


def test_cli_reproduce_bmd_writes_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bmd.BMD_SCALES, "small", dict(TINY, n_patients=16))
    argv = ["reproduce", "bmd", "--device", "cpu", "--out", str(tmp_path), "--seeds", "0", "1"]
    assert cli.main(argv) == 0
    assert (tmp_path / "report.md").exists() and not (tmp_path / "INCOMPLETE").exists()
    out = capsys.readouterr().out
    assert "Semi-supervised BMD" in out
    runs = pd.read_csv(tmp_path / "bmd_runs.csv")
    assert sorted(runs["seed"].unique()) == [0, 1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reproduce", "bmd", "--us-model", "head"], "--us-model is for the ddh study"),
        (["reproduce", "--fractions", "0.5"], "--fractions is for the bmd study"),
        (["reproduce", "bmd", "--seed", "1", "--seeds", "2"], "--seed or --seeds"),
        (["reproduce", "bmd", "--seeds", "1", "1"], "repeats 1"),
        (["reproduce", "bmd", "--fractions", "0.5", "0.5"], "repeats a fraction"),
    ],
)
def test_cli_bmd_usage_errors_are_one_line(argv, message, tmp_path, capsys):
    assert cli.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_bad_fraction_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", "bmd", "--fractions", "1.5", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "(0, 1]" in capsys.readouterr().err


def test_the_paper_scale_fine_tunes_a_cnn():
    """The ``paper`` scale's regressor is a CNN on the images; one epoch shows the path."""
    cfg = dict(
        BMD_SCALES["paper"],
        backbone="resnet10t",
        n_patients=12,
        image_size=32,
        epochs=1,
        batch_size=8,
        n_folds=2,
        n_repeats=2,
        max_iter=1,
        fractions=(0.5,),
    )
    result = run_bmd_study(cfg, seeds=(0,), methods=("supervised", "both"), device="cpu")
    assert set(result.runs["method"]) == {"supervised", "both"}
    assert np.isfinite(result.predictions["predicted"]).all()


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="model must be one of"):
        run_bmd_study(dict(TINY, model="ridge"), seeds=(0,), device="cpu")


def test_results_concatenate_over_seeds(tiny_result):
    one = run_bmd_study(TINY, seeds=(5,), methods=("supervised", "both"), device="cpu")
    two = run_bmd_study(TINY, seeds=(6,), methods=("supervised", "both"), device="cpu")
    both = bmd.BMDStudyResult.concat([one, two])
    assert both.seeds == (5, 6) and set(both.summary["n_seeds"]) == {2}
    assert len(both.predictions) == len(one.predictions) + len(two.predictions)
    with pytest.raises(ValueError, match="repeat"):
        bmd.BMDStudyResult.concat([one, one])
