"""Tests of skddh.study: the end-to-end study at a tiny scale, and its report."""

import numpy as np
import pandas as pd
import pytest

from skddh.studies import run_study, write_report
from skddh.studies.ddh import POLICY_GRID
from skddh.studies.headline import headline_table

# The study's default ultrasound model (fine-tuning), one epoch; the CLI tests' tiny scale
# leaves ``us_model`` out and so runs the frozen-head path.
TINY = dict(
    image_size=32,
    n_registry_us=96,
    n_registry_xr=64,
    epochs=1,
    batch_size=32,
    head_epochs=30,
    us_model="finetune",
    finetune_epochs=1,
)


@pytest.fixture(scope="module")
def tiny_study():
    return run_study(TINY, device="cpu", seed=0, verbose=0, log=lambda *_: None)


def test_every_table_is_there(tiny_study):
    r = tiny_study
    assert list(r.mae["measurement"]) == ["alpha", "beta", "coverage", "ai", "ce"]
    assert {"q_plus", "paper_q_plus"} <= set(r.radii.columns)
    assert r.n_calibration == 22  # the 7 calibration subjects' ultrasound images
    assert r.n_pairs == 76
    assert len(r.policy) == len(POLICY_GRID)
    assert set(r.timings) >= {"cohort", "pretrain ultrasound encoder", "evaluation"}
    assert r.us_model == "FineTuningRegressor"


def test_unknown_ultrasound_model_is_named():
    with pytest.raises(ValueError, match="us_model must be one of"):
        run_study({**TINY, "us_model": "resnet"}, device="cpu", verbose=0, log=lambda *_: None)


def test_qualitative_shape_of_the_paper(tiny_study):
    """Properties that hold whatever the head: they come from the conformal construction."""
    r = tiny_study
    cov = r.coverage[["alpha", "beta", "coverage"]]
    # Coverage rises with 1 - delta (delta ascending in the index).
    assert (np.diff(cov.to_numpy(), axis=0) <= 1e-12).all()
    pol = r.policy
    same = pol[pol["delta_alpha"] == pol["delta_coverage"]].set_index(["rule", "delta_alpha"])
    for d in (0.10, 0.20, 0.35, 0.40):
        assert same.loc[("and", d), "us_pass_rate"] <= same.loc[("alpha", d), "us_pass_rate"]
        assert same.loc[("alpha", d), "us_pass_rate"] <= same.loc[("or", d), "us_pass_rate"]
    for rule in ("alpha", "or", "and"):
        rates = [same.loc[(rule, d), "us_pass_rate"] for d in (0.10, 0.20, 0.35, 0.40)]
        assert rates == sorted(rates)
    np.testing.assert_allclose(pol["us_pass_rate"] + pol["xray_rate"], 1.0)
    # Radii shrink as delta grows.
    assert (np.diff(r.radii_by_delta.to_numpy(), axis=0) <= 1e-12).all()


def test_report_files(tiny_study, tmp_path):
    path = write_report(tiny_study, tmp_path)
    text = path.read_text()
    for heading in ["Mean absolute error", "Calibration radii", "Empirical coverage", "policy"]:
        assert heading in text
    for name in ["mae.csv", "radii.csv", "coverage.csv", "policy.csv", "decision_curve.png"]:
        assert (tmp_path / name).stat().st_size > 0


def test_calibration_methods_table(tiny_study, tmp_path):
    """The paper's calibration beside the exact split and CV+, at delta = 0.10."""
    m = tiny_study.calibration_methods
    assert len(m) == 3
    paper, split, cv = (m.iloc[i] for i in range(3))
    assert "paper" in m.index[0] and "split" in m.index[1] and "CV+" in m.index[2]
    assert list(m["n_units"]) == [22, 7, 37]  # images; subjects; every non-test subject
    assert tiny_study.n_calibration_subjects == 7
    # The paper row is the configuration the other tables use.
    np.testing.assert_allclose(
        [paper["q_plus_alpha"], paper["q_plus_coverage"]],
        tiny_study.radii.loc[["alpha", "coverage"], "q_plus"],
    )
    # 7 subjects cannot support delta = 0.10 (1/(n+1) = 0.125): -inf bounds, nothing passes.
    assert np.isinf(split["q_plus_alpha"]) and split["coverage_alpha"] == 1.0
    assert split["alpha_pass_rate"] == 0.0
    assert np.isfinite(cv["q_plus_alpha"]) and np.isfinite(cv["q_plus_coverage"])
    rates = m.drop(columns=["calibration_units", "n_units", "guarantee"])
    rates = rates.drop(columns=["q_plus_alpha", "q_plus_coverage"]).to_numpy(float)
    assert ((rates >= 0) & (rates <= 1)).all()
    assert (m["missed_alpha_below_60"] <= m["alpha_pass_rate"]).all()
    assert m["oracle_pass_rate"].nunique() == 1
    text = write_report(tiny_study, tmp_path).read_text()
    assert "## Calibration methods at delta = 0.10" in text
    assert all(name in text for name in m.index)
    assert (tmp_path / "calibration_methods.csv").stat().st_size > 0


def test_headline_table_on_known_decisions():
    passed = {"alpha 0.10/0.10": [1, 1, 1, 0, 0], "and 0.10/0.10": [1, 0, 0, 0, 0]}
    alpha = [70, 65, 55, 61, 50]
    cov = [60, 40, 60, 60, 60]
    table = headline_table(passed, alpha, cov)
    assert list(table.index) == ["alpha-only, delta 0.10", "AND, delta 0.10/0.10"]
    alpha_rule, and_rule = table.iloc[0], table.iloc[1]
    assert alpha_rule["passed"] == 0.6 and alpha_rule["oracle"] == 0.6
    assert alpha_rule["missed_of_all"] == 0.2  # the third hip: passed, true alpha 55
    assert alpha_rule["missed_of_passed"] == pytest.approx(1 / 3)
    assert and_rule["oracle"] == 0.4  # the second hip has coverage 40
    assert and_rule["missed_of_all"] == 0.0 and and_rule["missed_of_passed"] == 0.0
    assert table["target_miss_bound"].tolist() == [0.10, 0.20]
    nothing = headline_table({k: [0] * 5 for k in passed}, alpha, cov)
    assert nothing["missed_of_passed"].isna().all() and (nothing["passed"] == 0).all()


def test_headline_agrees_with_the_policy_table(tiny_study, tmp_path):
    """The headline's rules are rows of the policy table, on the same decisions."""
    head = tiny_study.headline
    pol = tiny_study.policy.set_index(["rule", "delta_alpha", "delta_coverage"])
    for _, row in head.iterrows():
        same = pol.loc[(row["rule"], row["delta_alpha"], row["delta_coverage"])]
        assert row["passed"] == same["us_pass_rate"]
        assert row["n_hips"] == tiny_study.n_pairs
        assert 0 <= row["missed_of_all"] <= row["passed"] and 0 < row["oracle"] < 1
    # AND's truth criterion is the policy table's missed_us_truth (alpha < 60 or coverage < 50).
    and_row = head[head["rule"] == "and"].iloc[0]
    assert and_row["missed_of_all"] == pol.loc[("and", 0.10, 0.10), "missed_us_truth"]
    assert and_row["oracle"] <= head[head["rule"] == "alpha"].iloc[0]["oracle"]
    text = write_report(tiny_study, tmp_path).read_text()
    assert text[text.index("## ") :].startswith("## Hips passed with a guarantee")
    assert (tmp_path / "headline.png").stat().st_size > 0
    written = pd.read_csv(tmp_path / "headline.csv", index_col="policy")
    pd.testing.assert_frame_equal(written, head, check_dtype=False)


def test_guarantees_table(tiny_study, tmp_path):
    g = tiny_study.guarantees
    assert len(g) == 8 and g.attrs["level"] == 0.10
    assert {"guarantee", "us_pass_rate", "missed", "abnormal_among_passed"} <= set(g.columns)
    assert g["us_pass_rate"].between(0, 1).all() and (g["missed"] <= g["us_pass_rate"]).all()
    # 7 calibration subjects: the exact subject-level lower bound cannot certify 0.10 and
    # refers every hip (fail-safe), as does Learn-then-Test, which needs 22 subjects.
    assert g.loc["lower bound, subject-level split", "us_pass_rate"] == 0
    assert g.loc["risk control, Learn-then-Test (eps 0.10)", "us_pass_rate"] == 0
    write_report(tiny_study, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "## Guarantees compared at level 0.10" in text
    assert (tmp_path / "guarantees.csv").stat().st_size > 0


def test_scratch_recipe_and_memoised_predictions():
    """The small scale's ``us_model="scratch"`` is a FineTuningRegressor with no encoder; the
    study's memo returns the inner model's predictions, computing each distinct input once."""
    from sklearn.dummy import DummyRegressor

    from skddh.studies.ddh import SCALES, _Memoized, _us_model

    small = SCALES["small"]
    model, reads = _us_model({**small}, "cpu", 0, encoder=None)
    assert reads == "images" and model.encoder is None
    assert model.test_time_views == small["test_time_views"] == 16
    assert model.image_size == 64 and small["encoder_image_size"] == 32
    assert model.loss_weights == small["us_loss_weights"]
    assert model.epochs == small["finetune_epochs"]
    # the CV+ fold models read their own epochs, and fall back to the main model's
    assert _us_model(small, "cpu", 0, None, "cv_finetune_epochs")[0].epochs == 150
    cfg = {k: v for k, v in small.items() if k != "cv_finetune_epochs"}
    assert _us_model(cfg, "cpu", 0, None, "cv_finetune_epochs")[0].epochs == model.epochs

    calls = []

    class Counting(DummyRegressor):
        def predict(self, X):
            calls.append(len(X))
            return super().predict(X) + np.asarray(X)[:, 0]

    X = np.arange(12.0).reshape(6, 2)
    inner = Counting().fit(X, np.ones(6))
    memo = _Memoized(inner)
    first = memo.predict(X)
    first[:] = -1  # a copy: the memo is not edited through the caller's array
    np.testing.assert_array_equal(memo.predict(X.copy()), inner.predict(X))
    np.testing.assert_array_equal(memo.predict(X[:3]), inner.predict(X[:3]))
    assert calls == [6, 6, 3, 3]  # X twice through the memo: one call; X[:3]: one more
    assert memo.n_features_in_ == 2  # fitted attributes are the inner model's
