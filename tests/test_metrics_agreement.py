"""Tests of skddh.metrics._regression_agreement: Bland-Altman, regression agreement, Lin's CCC."""

import numpy as np
import pytest
from scipy import stats

import skddh.metrics
from skddh.metrics import (
    BlandAltmanResult,
    bland_altman,
    concordance_correlation_coefficient,
    regression_agreement,
)

Y_TRUE = np.array([1.0, 2.0, 3.0, 4.0])
Y_PRED = np.array([1.5, 2.0, 2.5, 5.0])  # differences 0.5, 0, -0.5, 1


def test_exported():
    for name in (
        "BlandAltmanResult",
        "bland_altman",
        "concordance_correlation_coefficient",
        "regression_agreement",
    ):
        assert name in skddh.metrics.__all__


def test_bland_altman_matches_hand_computation():
    res = bland_altman(Y_TRUE, Y_PRED)
    assert isinstance(res, BlandAltmanResult)
    n, bias, sd = 4, 0.25, np.sqrt(1.25 / 3)  # squared deviations sum to 1.25, ddof=1
    z, t = 1.959963984540054, 3.182446305284263  # norm.ppf(0.975), t.ppf(0.975, 3)
    assert res.n == n
    assert res.bias == pytest.approx(bias)
    assert res.sd == pytest.approx(sd)
    assert res.multiplier == pytest.approx(z) == pytest.approx(stats.norm.ppf(0.975))
    assert (res.loa_low, res.loa_high) == pytest.approx((bias - z * sd, bias + z * sd))
    assert res.bias_ci == pytest.approx((bias - t * sd / 2, bias + t * sd / 2))
    # The bias interval is the one-sample t interval of the differences.
    ci = stats.ttest_1samp(Y_PRED - Y_TRUE, 0.0).confidence_interval(0.95)
    assert res.bias_ci == pytest.approx((ci.low, ci.high))
    se = sd * np.sqrt(1 / 4 + z**2 / 6)
    assert res.loa_low_ci == pytest.approx((bias - z * sd - t * se, bias - z * sd + t * se))
    assert res.loa_high_ci == pytest.approx((bias + z * sd - t * se, bias + z * sd + t * se))
    fit = stats.linregress((Y_TRUE + Y_PRED) / 2, Y_PRED - Y_TRUE)
    assert (res.slope, res.intercept, res.slope_pvalue) == pytest.approx(
        (fit.slope, fit.intercept, fit.pvalue)
    )
    assert (res.agreement_level, res.confidence_level, res.ci_method) == (
        0.95,
        0.95,
        "approximate",
    )


def test_result_is_frozen():
    res = bland_altman(Y_TRUE, Y_PRED)
    with pytest.raises(AttributeError):
        res.bias = 0.0


def test_bias_sign_is_prediction_minus_reference():
    rng = np.random.default_rng(0)
    dexa = rng.normal(0.95, 0.12, 40)
    predicted = dexa + 0.05 + rng.normal(0, 0.01, 40)  # reads high
    res = bland_altman(dexa, predicted)
    assert res.bias > 0 and res.bias_ci[0] > 0
    swapped = bland_altman(predicted, dexa)
    assert swapped.bias == pytest.approx(-res.bias)
    assert (swapped.loa_low, swapped.loa_high) == pytest.approx((-res.loa_high, -res.loa_low))
    row = regression_agreement(dexa, predicted)
    assert row["bias"] == pytest.approx(res.bias) and row["bias"] > 0


def test_levels_set_the_multipliers():
    res = bland_altman(Y_TRUE, Y_PRED, agreement_level=0.90, confidence_level=0.99)
    assert res.multiplier == pytest.approx(stats.norm.ppf(0.95))
    t99 = stats.t.ppf(0.995, 3)
    assert res.bias_ci[1] - res.bias == pytest.approx(t99 * res.sd / 2)


def test_approximate_limit_se_is_bland_altmans_sqrt_3_sd2_over_n_at_large_n():
    rng = np.random.default_rng(1)
    n = 2000
    res = bland_altman(np.zeros(n), rng.normal(0.0, 1.0, n))
    t = stats.t.ppf(0.975, n - 1)
    z = stats.norm.ppf(0.975)
    se = (res.loa_high_ci[1] - res.loa_high_ci[0]) / 2 / t
    assert se == pytest.approx(res.sd * np.sqrt(1 / n + z**2 / (2 * (n - 1))))
    # Bland & Altman round 1 + 1.96^2 / 2 = 2.92 to 3.
    assert se == pytest.approx(np.sqrt(3 * res.sd**2 / n), rel=0.015)
    # The exact interval agrees with the approximation when n is large.
    exact = bland_altman(np.zeros(n), rng.normal(0.0, 1.0, n), ci_method="exact")
    exact_se = (exact.loa_high_ci[1] - exact.loa_high_ci[0]) / 2 / t
    assert exact_se == pytest.approx(exact.sd * np.sqrt(1 / n + z**2 / (2 * n)), rel=0.01)


def test_exact_limit_ci_is_the_noncentral_t_interval():
    res = bland_altman(Y_TRUE, Y_PRED, ci_method="exact")
    n, z = 4, stats.norm.ppf(0.975)
    k = stats.nct.ppf([0.025, 0.975], n - 1, z * np.sqrt(n)) / np.sqrt(n)
    assert res.loa_high_ci == pytest.approx(tuple(res.bias + k * res.sd))
    assert res.loa_low_ci == pytest.approx(tuple(res.bias - k[::-1] * res.sd))
    # Same point estimates and bias interval as the approximate method.
    approx = bland_altman(Y_TRUE, Y_PRED)
    assert (res.bias, res.loa_low, res.bias_ci) == (approx.bias, approx.loa_low, approx.bias_ci)


def test_constant_differences_collapse_and_constant_means_give_nan_slope():
    res = bland_altman([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert res.sd == 0.0 and res.loa_low == res.loa_high == res.bias == pytest.approx(0.5)
    assert res.loa_high_ci == pytest.approx((0.5, 0.5))
    flat = bland_altman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])  # every mean is 2
    assert np.isnan(flat.slope) and np.isnan(flat.slope_pvalue)


@pytest.mark.parametrize("n", [3, 4, 25, 200])
def test_proportional_bias_line_is_scipys_linregress(n):
    rng = np.random.default_rng(n)
    dexa = rng.uniform(0.6, 1.3, n)
    predicted = dexa + 0.2 * (dexa - 1) + rng.normal(0, 0.05, n)
    res = bland_altman(dexa, predicted)
    fit = stats.linregress((dexa + predicted) / 2, predicted - dexa)
    assert (res.slope, res.intercept) == pytest.approx((fit.slope, fit.intercept))
    assert res.slope_pvalue == pytest.approx(fit.pvalue, rel=1e-9, abs=1e-12)


def test_proportional_bias_is_detected():
    rng = np.random.default_rng(2)
    dexa = rng.uniform(0.6, 1.3, 80)
    predicted = 1.3 * dexa - 0.3 + rng.normal(0, 0.01, 80)  # differences grow with BMD
    res = bland_altman(dexa, predicted)
    assert res.slope > 0.2 and res.slope_pvalue < 1e-6
    none = bland_altman(dexa, dexa + rng.normal(0, 0.01, 80))
    assert abs(none.slope) < 0.05


# Simulation: 2,000 draws of n = 10 normal differences (mean 0.3, sd 2), one fit per draw.
N_DRAWS, N, MU, SIGMA = 2000, 10, 0.3, 2.0


@pytest.fixture(scope="module")
def draws():
    rng = np.random.default_rng(12345)
    diffs = rng.normal(MU, SIGMA, (N_DRAWS, N))
    truth = rng.normal(0.9, 0.1, N)  # the reference values do not matter
    results = [bland_altman(truth, truth + d, ci_method="exact") for d in diffs]
    return diffs, results, rng


def _share(inside):
    return float(np.mean(inside))


def test_limits_contain_the_expected_share_of_new_differences(draws):
    diffs, results, rng = draws
    low = np.array([r.loa_low for r in results])[:, None]
    high = np.array([r.loa_high for r in results])[:, None]
    new = rng.normal(MU, SIGMA, (N_DRAWS, 50))
    share = _share((new >= low) & (new <= high))
    # Estimated limits hold P(|T_{n-1}| <= z / sqrt(1 + 1/n)) of new differences on average:
    # 0.906 at n = 10, tending to 0.95 as n grows.
    expected = 1 - 2 * stats.t.sf(stats.norm.ppf(0.975) / np.sqrt(1 + 1 / N), N - 1)
    assert share == pytest.approx(expected, abs=0.01)
    # With the population's mean and sd, exactly 95 % of new differences fall inside.
    z = stats.norm.ppf(0.975)
    assert _share(np.abs(new - MU) <= z * SIGMA) == pytest.approx(0.95, abs=0.005)


def test_bias_ci_covers_the_true_bias_95_percent_with_failing_controls(draws):
    diffs, results, _ = draws
    lo = np.array([r.bias_ci[0] for r in results])
    hi = np.array([r.bias_ci[1] for r in results])
    covered = _share((lo <= MU) & (hi >= MU))
    se = 0.005  # binomial sd of the coverage at 2,000 draws
    assert abs(covered - 0.95) < 3 * se
    bias = np.array([r.bias for r in results])
    sd = np.array([r.sd for r in results])
    z = stats.norm.ppf(0.975)
    # Control 1: sd where sd / sqrt(n) belongs over-covers, to nearly every draw.
    assert _share(np.abs(bias - MU) <= z * sd) > 0.99
    # Control 2: the z quantile where t(n - 1) belongs under-covers at n = 10 (~0.92).
    assert _share(np.abs(bias - MU) <= z * sd / np.sqrt(N)) < 0.95 - 3 * se


def test_exact_limit_cis_cover_the_population_limits(draws):
    _, results, _ = draws
    z = stats.norm.ppf(0.975)
    for attr, limit in (("loa_low_ci", MU - z * SIGMA), ("loa_high_ci", MU + z * SIGMA)):
        ci = np.array([getattr(r, attr) for r in results])
        covered = _share((ci[:, 0] <= limit) & (limit <= ci[:, 1]))
        assert abs(covered - 0.95) < 0.015, attr


def test_regression_agreement_matches_scipy_and_hand_values():
    row = regression_agreement(Y_TRUE, Y_PRED)
    assert list(row) == [
        "n",
        "pearson_r",
        "pearson_r_low",
        "pearson_r_high",
        "mae",
        "rmse",
        "bias",
        "loa_low",
        "loa_high",
        "ccc",
    ]
    res = stats.pearsonr(Y_TRUE, Y_PRED)
    ci = res.confidence_interval(confidence_level=0.95)
    assert row["n"] == 4
    assert row["pearson_r"] == pytest.approx(res.statistic)
    assert (row["pearson_r_low"], row["pearson_r_high"]) == pytest.approx((ci.low, ci.high))
    assert row["mae"] == pytest.approx(0.5)
    assert row["rmse"] == pytest.approx(np.sqrt(1.5 / 4))
    ba = bland_altman(Y_TRUE, Y_PRED)
    assert (row["bias"], row["loa_low"], row["loa_high"]) == (ba.bias, ba.loa_low, ba.loa_high)
    # Lin (1989) with 1/n moments: means 2.5 and 2.75, variances 1.25 and 1.8125,
    # covariance 1.375 -> 2 * 1.375 / (1.25 + 1.8125 + 0.25**2) = 0.88.
    assert row["ccc"] == pytest.approx(0.88)


def test_regression_agreement_confidence_level_widens_r_interval():
    narrow = regression_agreement(Y_TRUE * [1, 1, 1, 1.1], Y_PRED, confidence_level=0.5)
    wide = regression_agreement(Y_TRUE * [1, 1, 1, 1.1], Y_PRED, confidence_level=0.99)
    assert wide["pearson_r_low"] < narrow["pearson_r_low"] < narrow["pearson_r"]


def test_ccc_is_one_for_identical_vectors_and_below_r_when_biased():
    rng = np.random.default_rng(3)
    y = rng.normal(1.0, 0.15, 50)
    assert concordance_correlation_coefficient(y, y) == pytest.approx(1.0)
    assert regression_agreement(y, y)["ccc"] == pytest.approx(1.0)
    noisy = y + rng.normal(0, 0.05, 50)
    for biased in (noisy + 0.1, 1.5 * noisy):  # a location shift, a scale shift
        row = regression_agreement(y, biased)
        assert 0 < row["ccc"] < row["pearson_r"] - 0.01
    # Same mean and variance: the bias-correction factor is 1 and CCC equals r.
    same = (noisy - noisy.mean()) / noisy.std() * y.std() + y.mean()
    row = regression_agreement(y, same)
    assert row["ccc"] == pytest.approx(row["pearson_r"])


def test_constant_input_gives_nan_r_with_a_warning():
    with pytest.warns(UserWarning, match="y_pred is constant"):
        row = regression_agreement([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert np.isnan(row["pearson_r"]) and np.isnan(row["pearson_r_low"])
    assert row["ccc"] == 0.0 and row["mae"] == pytest.approx(2 / 3)
    with pytest.warns(UserWarning, match="y_true and y_pred are constant"):
        row = regression_agreement([2.0, 2.0, 2.0], [2.0, 2.0, 2.0])
    assert np.isnan(row["ccc"]) and row["rmse"] == 0.0


@pytest.mark.parametrize("func", [bland_altman, regression_agreement])
@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0], "y_true has 4 values but y_pred has 3"),
        ([1.0, 2.0, 3.0], [1.0, np.nan, 3.0], r"y_pred must be finite, got nan at row 1"),
        ([1.0, np.inf, 3.0], [1.0, 2.0, 3.0], r"y_true must be finite, got inf at row 1"),
        ([1.0, 2.0], [1.0, 2.5], "at least 3 pairs"),
        (np.ones((3, 2)), np.ones((3, 2)), r"y_true must be 1-D, got shape \(3, 2\)"),
    ],
)
def test_bad_input_names_the_argument(func, y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        func(y_true, y_pred)
    if func is bland_altman:
        with pytest.raises(ValueError, match=match):
            concordance_correlation_coefficient(y_true, y_pred)


def test_a_single_column_is_accepted():
    res = bland_altman(Y_TRUE[:, None], Y_PRED[:, None])
    assert res.bias == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"agreement_level": 1.0}, "agreement_level must be a number in"),
        ({"confidence_level": 0}, "confidence_level must be a number in"),
        ({"confidence_level": True}, "confidence_level must be a number in"),
        ({"ci_method": "bootstrap"}, "ci_method must be"),
    ],
)
def test_bad_levels(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bland_altman(Y_TRUE, Y_PRED, **kwargs)
