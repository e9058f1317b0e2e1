"""Tests of skddh.metrics: the rates, utility, net benefit (against dcurves), decision curves."""

import numpy as np
import pandas as pd
import pytest

from skddh.metrics import (
    coverage,
    decision_curve,
    make_policy_scorer,
    missed_rate,
    net_benefit,
    pass_rate,
    utility,
    xray_rate,
)


def _cases(n=500, seed=0):
    rng = np.random.default_rng(seed)
    abnormal = rng.random(n) < 0.2
    passed = np.where(abnormal, rng.random(n) < 0.15, rng.random(n) < 0.6)
    return passed.astype(int), abnormal.astype(int)


def test_rates_add_up_and_match_hand_counts():
    passed, abnormal = _cases()
    assert pass_rate(passed) + xray_rate(passed) == pytest.approx(1.0)
    assert missed_rate(passed, abnormal) == np.mean((passed == 1) & (abnormal == 1))
    u = utility(passed, abnormal, radiation_cost=2.0, miss_penalty=30.0)
    assert u == pytest.approx(-2.0 * xray_rate(passed) - 30.0 * missed_rate(passed, abnormal))


def test_sample_weight_is_a_weighted_mean():
    passed = np.array([1, 0, 0, 1])
    w = np.array([3.0, 1.0, 1.0, 1.0])
    assert pass_rate(passed, sample_weight=w) == pytest.approx(4 / 6)
    assert pass_rate(np.repeat(passed, [3, 1, 1, 1])) == pytest.approx(4 / 6)


def test_coverage_per_target_and_infinite_bounds():
    y = pd.DataFrame({"alpha": [60.0, 55.0, 70.0], "coverage": [40.0, 50.0, 60.0]})
    lb = np.array([[59.0, -np.inf], [56.0, 51.0], [70.0, 61.0]])
    cov = coverage(y, lb)
    assert list(cov.index) == ["alpha", "coverage"]
    np.testing.assert_allclose(cov, [2 / 3, 1 / 3])


def test_net_benefit_identities_with_utility():
    """NB (mu - lambda) = U(policy) - U(ultrasound for all); see the module docstring."""
    passed, abnormal = _cases(seed=1)
    lam, mu = 1.0, 12.0
    nb = net_benefit(passed, abnormal, radiation_cost=lam, miss_penalty=mu)
    ones = np.ones_like(passed)
    u_us_all = utility(ones, abnormal, radiation_cost=lam, miss_penalty=mu)
    u_policy = utility(passed, abnormal, radiation_cost=lam, miss_penalty=mu)
    assert nb * (mu - lam) == pytest.approx(u_policy - u_us_all)


@pytest.mark.parametrize("pt", [0.05, 0.1, 0.25, 0.5])
def test_net_benefit_matches_dcurves(pt):
    """dcurves' net benefit of the 0/1 'refer' decision equals ours at pt = lambda / mu."""
    dcurves = pytest.importorskip("dcurves")
    passed, abnormal = _cases(n=400, seed=2)
    df = pd.DataFrame({"abnormal": abnormal, "refer": 1 - passed})
    out = dcurves.dca(data=df, outcome="abnormal", modelnames=["refer"], thresholds=[pt], harm=None)
    theirs = float(out.loc[out["model"] == "refer", "net_benefit"].iloc[0])
    ours = net_benefit(passed, abnormal, radiation_cost=pt, miss_penalty=1.0)
    assert ours == pytest.approx(theirs, abs=1e-12)
    # "treat all" in dcurves is X-ray everyone.
    all_theirs = float(out.loc[out["model"] == "all", "net_benefit"].iloc[0])
    ones = np.zeros_like(passed)
    assert net_benefit(ones, abnormal, radiation_cost=pt, miss_penalty=1.0) == pytest.approx(
        all_theirs, abs=1e-12
    )


def test_decision_curve_references():
    passed, abnormal = _cases(seed=3)
    curve = decision_curve(passed, abnormal, [0.0, 0.1, 0.5], miss_penalty=2.0)
    np.testing.assert_allclose(curve["xray_everyone"], [0.0, -0.1, -0.5])
    np.testing.assert_allclose(curve["ultrasound_only"], -2.0 * np.mean(abnormal))
    for lam, u in zip(curve["radiation_cost"], curve["policy"]):
        assert u == pytest.approx(utility(passed, abnormal, radiation_cost=lam, miss_penalty=2.0))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pass_rate([1, 2, 0]), "passed must hold only 0/1, got 2 at row 1"),
        (lambda: pass_rate(["a", "b"]), "passed must hold 0/1"),
        (lambda: missed_rate([1, 0], [1]), "passed has 2 cases but abnormal has 1"),
        (lambda: pass_rate([]), "empty"),
        (lambda: utility([1], [0], radiation_cost=-1.0), "radiation_cost"),
        (lambda: net_benefit([1], [0], radiation_cost=2.0, miss_penalty=1.0), "miss_penalty"),
        (lambda: coverage([1.0, np.nan], [0.0, 0.0]), "NaN"),
        (lambda: make_policy_scorer(kind="auc"), "kind"),
        (lambda: decision_curve([1], [0], [-1.0]), "radiation_costs"),
    ],
)
def test_bad_input_is_named(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_coverage_per_subject():
    from skddh.metrics import coverage

    y = np.array([60.0, 55.0, 70.0, 64.0, 50.0])
    lb = np.array([58.0, 57.0, 61.0, -np.inf, 49.0])
    g = ["a", "a", "b", "b", "c"]
    assert coverage(y, lb) == 0.8
    assert coverage(y, lb, groups=g) == 2 / 3  # subject a has an uncovered image
    assert coverage(y, lb, groups=g, per_subject="mean") == (0.5 + 1 + 1) / 3
    two = coverage(np.c_[y, y], np.c_[lb, lb - 10], groups=g)
    assert two.tolist() == [2 / 3, 1.0]
    with pytest.raises(ValueError, match="per_subject"):
        coverage(y, lb, groups=g, per_subject="max")
    with pytest.raises(ValueError, match="sample_weight and groups"):
        coverage(y, lb, np.ones(5), groups=g)
    with pytest.raises(ValueError, match="groups has shape"):
        coverage(y, lb, groups=g[:3])
