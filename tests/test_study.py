"""Tests of skddh.study: the end-to-end study at a tiny scale, and its report."""

import numpy as np
import pytest

from skddh.studies import run_study, write_report
from skddh.studies.ddh import POLICY_GRID

TINY = dict(
    image_size=32, n_registry_us=96, n_registry_xr=64, epochs=1, batch_size=32, head_epochs=30
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
