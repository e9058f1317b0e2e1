"""Policy-level risk control: conformal risk control and Learn-then-Test, by simulation.

A DDH-shaped population: alpha angles around the 60 deg threshold (a quarter abnormal, many
borderline), a biased (shrunk, shifted upwards) noisy predictor that passes too many hips at
margin 0, and margin policies ``pass when prediction - m >= 60`` on a grid ending in ``+inf``.
The loss is the missed finding (passed while truly below 60). The predictor is fixed, so the
true risk ``R(m)`` of each policy is a property of the population: computed analytically for
independent hips, and on 200,000 subjects for the subject-level variant. Each draw calibrates
on fresh units and looks up ``R(lam_hat)``, so the mean over draws is the expected missed-finding
rate on a new unit, ``E[L_{n+1}(lam_hat)] = E[R(lam_hat)]``, with a smaller Monte Carlo error
than drawing one new unit per draw.

Controls that must fail: the plug-in ``inf{m : Rhat(m) <= alpha}`` (no correction) exceeds
``alpha`` on expectation at small ``n`` and has ``R(lam_hat) > alpha`` about half the time; the
image-level calibration (images as units) does not control a new *subject*'s risk.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

from skddh.conformal import (
    conformal_risk_control,
    learn_then_test,
    missed_finding_losses,
    risk_p_values,
    subject_losses,
)

THRESHOLD = 60.0
ALPHA = 0.10
EPSILON = 0.10
MARGINS = np.r_[np.linspace(-4.0, 12.0, 81), np.inf]  # step 0.2, conservative last

# Hips: y ~ N(MU, SD); prediction = MU + SLOPE (y - MU) + BIAS + N(0, NOISE).
MU, SD, SLOPE, BIAS, NOISE = 62.0, 3.0, 0.7, 1.5, 2.0


def draw_hips(rng, shape):
    y = rng.normal(MU, SD, shape)
    pred = MU + SLOPE * (y - MU) + BIAS + rng.normal(0.0, NOISE, shape)
    return pred, y


def hip_risk(margins):
    """R(m) = P(pred - m >= 60, y < 60) and the share passed P(pred - m >= 60), analytic."""
    mean = [MU, MU + BIAS]
    cov = [[SD**2, SLOPE * SD**2], [SLOPE * SD**2, (SLOPE * SD) ** 2 + NOISE**2]]
    sd_pred = np.sqrt(cov[1][1])
    risk, passed = [], []
    for m in margins:
        if np.isinf(m):
            risk.append(0.0)
            passed.append(0.0)
            continue
        c = THRESHOLD + m
        both_below = multivariate_normal(mean, cov).cdf([THRESHOLD, c])
        risk.append(norm.cdf(THRESHOLD, MU, SD) - both_below)
        passed.append(norm.sf(c, MU + BIAS, sd_pred))
    return np.array(risk), np.array(passed)


HIP_RISK, HIP_PASSED = hip_risk(MARGINS)


def draw_subjects(rng, n_subjects):
    """Subjects with 1-4 images: shared truth and shared prediction error (corr ~0.9)."""
    sizes = rng.integers(1, 5, n_subjects)
    subject = np.repeat(np.arange(n_subjects), sizes)
    u = rng.normal(MU, SD, n_subjects)
    y = u[subject] + rng.normal(0.0, 1.0, len(subject))
    err = rng.normal(0.0, 1.5, n_subjects)[subject] + rng.normal(0.0, 1.3, len(subject))
    pred = MU + SLOPE * (y - MU) + BIAS + err
    return pred, y, subject


def subject_population(n_subjects=200_000, seed=12345):
    """True subject-level risks (max and mean aggregate) and the image pass share per margin."""
    pred, y, subject = draw_subjects(np.random.default_rng(seed), n_subjects)
    s = np.where(y < THRESHOLD, pred - THRESHOLD, -np.inf)  # missed at margin m iff s >= m
    s_max = np.full(n_subjects, -np.inf)
    np.maximum.at(s_max, subject, s)
    w = 1.0 / np.bincount(subject)[subject]
    gap = pred - THRESHOLD
    r_max = 1 - np.searchsorted(np.sort(s_max), MARGINS, side="left") / n_subjects
    order = np.argsort(s)
    tail = np.r_[np.cumsum(w[order][::-1])[::-1], 0.0]  # weight of s >= s_sorted[j]
    r_mean = tail[np.searchsorted(s[order], MARGINS, side="left")] / n_subjects
    passed = 1 - np.searchsorted(np.sort(gap), MARGINS, side="left") / len(gap)
    return {"max": r_max, "mean": r_mean}, passed


SUBJECT_RISK, SUBJECT_PASSED = subject_population()


def plug_in(losses, lambdas, alpha):
    """The naive choice: the least conservative lambda whose empirical risk is <= alpha."""
    ok = losses.mean(axis=0) <= alpha + 1e-12
    return lambdas[np.argmax(ok)] if ok.any() else lambdas[-1]


def index(lam):
    return int(np.searchsorted(MARGINS, lam))


def summary(idx, risk, passed):
    r = risk[idx]
    return dict(
        risk=r.mean(),
        risk_se=r.std() / np.sqrt(len(r)),
        violation=(r > ALPHA).mean(),
        passed=passed[idx].mean(),
    )


def simulate_hips(n, reps, seed, methods):
    """Per method: lam_hat index per draw, n independent calibration hips per draw."""
    pred, y = draw_hips(np.random.default_rng(seed), (reps, n))
    out = {name: np.empty(reps, dtype=int) for name in methods}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for r in range(reps):
            L = missed_finding_losses(pred[r], y[r], threshold=THRESHOLD, margins=MARGINS)
            for name, choose in methods.items():
                out[name][r] = index(choose(L, None))
    return out


def simulate_subjects(n, reps, seed, methods):
    """As :func:`simulate_hips`, with n calibration subjects of 1-4 images per draw."""
    pred, y, subject = draw_subjects(np.random.default_rng(seed), n * reps)
    cuts = np.searchsorted(subject, np.arange(0, n * reps + 1, n))
    out = {name: np.empty(reps, dtype=int) for name in methods}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for r in range(reps):
            sl = slice(cuts[r], cuts[r + 1])
            L = missed_finding_losses(pred[sl], y[sl], threshold=THRESHOLD, margins=MARGINS)
            for name, choose in methods.items():
                out[name][r] = index(choose(L, subject[sl]))
    return out


def crc(**kw):
    return lambda L, g: conformal_risk_control(L, MARGINS, alpha=ALPHA, **kw)


def crc_groups(aggregate):
    return lambda L, g: conformal_risk_control(
        L, MARGINS, alpha=ALPHA, groups=g, aggregate=aggregate
    )


def ltt(**kw):
    return lambda L, g: learn_then_test(L, MARGINS, alpha=ALPHA, epsilon=EPSILON, **kw).lambda_hat


def ltt_groups(aggregate, **kw):
    return lambda L, g: (
        learn_then_test(
            L, MARGINS, alpha=ALPHA, epsilon=EPSILON, groups=g, aggregate=aggregate, **kw
        ).lambda_hat
    )


def plug_in_groups(aggregate):
    return lambda L, g: plug_in(subject_losses(L, g, aggregate=aggregate)[0], MARGINS, ALPHA)


# ---- the population is DDH-shaped ------------------------------------------------------------
def test_population_is_borderline_and_the_predictor_passes_too_many():
    assert 0.2 < norm.cdf(THRESHOLD, MU, SD) < 0.3  # a quarter abnormal
    assert HIP_RISK[index(0.0)] > 1.5 * ALPHA  # margin 0: the biased predictor misses many
    assert np.all(np.diff(HIP_RISK) <= 1e-12) and HIP_RISK[-1] == 0.0
    assert SUBJECT_RISK["max"][index(0.0)] > 1.5 * ALPHA
    assert np.all(SUBJECT_RISK["max"] >= SUBJECT_RISK["mean"] - 1e-12)


# ---- conformal risk control: E[L_{n+1}(lam_hat)] <= alpha ------------------------------------
@pytest.mark.parametrize("n", [10, 19, 50])
def test_crc_controls_expected_missed_findings_per_hip(n):
    reps = 2000
    idx = simulate_hips(n, reps, seed=n, methods={"crc": crc()})["crc"]
    s = summary(idx, HIP_RISK, HIP_PASSED)
    assert s["risk"] <= ALPHA + 3 * s["risk_se"], s
    # Not vacuous: close to the target (tight for 0/1 losses, up to the grid and 1/(n+1)).
    assert s["risk"] >= ALPHA - 2 / (n + 1) - 0.02, s
    assert s["passed"] > 0.2, s


def test_plug_in_fails_crc_expectation_at_small_n():
    """Control: at n = 10, Rhat <= 0.1 allows one miss; the new hip's risk is about 2/11."""
    reps = 2000
    out = simulate_hips(
        10, reps, seed=101, methods={"crc": crc(), "plug": lambda L, g: plug_in(L, MARGINS, ALPHA)}
    )
    plug = summary(out["plug"], HIP_RISK, HIP_PASSED)
    ok = summary(out["crc"], HIP_RISK, HIP_PASSED)
    assert plug["risk"] > ALPHA + 5 * plug["risk_se"], plug
    assert ok["risk"] <= ALPHA + 3 * ok["risk_se"], ok
    assert plug["passed"] > ok["passed"]  # what the missing correction buys


# ---- Learn-then-Test: P(R(lam_hat) > alpha) <= epsilon ---------------------------------------
def test_ltt_controls_risk_with_high_probability_and_plug_in_does_not():
    reps, n = 2000, 100
    methods = {
        "fixed_sequence": ltt(),
        "bonferroni": ltt(method="bonferroni"),
        "hoeffding_bentkus": ltt(p_value="hoeffding_bentkus"),
        "plug": lambda L, g: plug_in(L, MARGINS, ALPHA),
        "crc": crc(),
    }
    out = simulate_hips(n, reps, seed=7, methods=methods)
    res = {k: summary(v, HIP_RISK, HIP_PASSED) for k, v in out.items()}
    se = np.sqrt(EPSILON * (1 - EPSILON) / reps)
    for name in ("fixed_sequence", "bonferroni", "hoeffding_bentkus"):
        assert res[name]["violation"] <= EPSILON + 3 * se, (name, res[name])
        assert res[name]["passed"] > 0.15, (name, res[name])
    # Control: the plug-in sits at the boundary and exceeds alpha about half the time.
    assert res["plug"]["violation"] > 0.3, res["plug"]
    # CRC bounds the expectation only: its R(lam_hat) exceeds alpha far more often than epsilon.
    assert res["crc"]["violation"] > EPSILON + 3 * se, res["crc"]
    # Fixed sequence spends no power on multiplicity: it passes at least as many as Bonferroni.
    assert res["fixed_sequence"]["passed"] >= res["bonferroni"]["passed"]
    assert res["fixed_sequence"]["passed"] >= res["hoeffding_bentkus"]["passed"]


# ---- subject level: subjects with 1-4 correlated images ---------------------------------------
@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_crc_subject_level(aggregate):
    """One loss per subject controls the subject's risk; the plug-in fails at n = 10 subjects."""
    reps = 2000
    risk = SUBJECT_RISK[aggregate]
    methods = {"crc": crc_groups(aggregate), "plug": plug_in_groups(aggregate)}
    out = simulate_subjects(10, reps, seed=10, methods=methods)
    ok = summary(out["crc"], risk, SUBJECT_PASSED)
    plug = summary(out["plug"], risk, SUBJECT_PASSED)
    assert ok["risk"] <= ALPHA + 3 * ok["risk_se"], ok
    assert ok["risk"] >= ALPHA - 2 / 11 - 0.03, ok
    assert plug["risk"] > ALPHA + 5 * plug["risk_se"], plug


def test_image_level_crc_does_not_control_a_new_subject():
    """Control: images as units (n = images) do not bound P(new subject has a missed finding)."""
    reps, n = 2000, 19
    out = simulate_subjects(n, reps, seed=4, methods={"image": crc(), "subject": crc_groups("max")})
    image = summary(out["image"], SUBJECT_RISK["max"], SUBJECT_PASSED)
    subject = summary(out["subject"], SUBJECT_RISK["max"], SUBJECT_PASSED)
    assert image["risk"] > ALPHA + 5 * image["risk_se"], image
    assert subject["risk"] <= ALPHA + 3 * subject["risk_se"], subject


@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_ltt_subject_level(aggregate):
    reps, n = 1000, 100
    out = simulate_subjects(
        n,
        reps,
        seed=5,
        methods={"ltt": ltt_groups(aggregate), "plug": plug_in_groups(aggregate)},
    )
    risk = SUBJECT_RISK[aggregate]
    se = np.sqrt(EPSILON * (1 - EPSILON) / reps)
    ok = summary(out["ltt"], risk, SUBJECT_PASSED)
    plug = summary(out["plug"], risk, SUBJECT_PASSED)
    assert ok["violation"] <= EPSILON + 3 * se, ok
    assert ok["passed"] > 0.1, ok
    assert plug["violation"] > 0.3, plug


# ---- unit tests -------------------------------------------------------------------------------
def test_crc_formula_and_exact_boundary():
    # n = 19, alpha = 0.1: sum + 1 <= 2 exactly (a float comparison of the mean form would
    # lose it: 19/20 * 1/19 + 1/20 is 0.1 only up to rounding).
    L = np.zeros((19, 3))
    L[:2, 0] = 1.0
    L[:1, 1] = 1.0
    assert conformal_risk_control(L, [0.0, 1.0, 2.0], alpha=0.1) == 1.0
    # n = 29, alpha = 0.1: alpha (n + 1) = 3.0000000000000004 in floating point; two losses ok.
    L = np.zeros((29, 2))
    L[:2, 0] = 1.0
    assert conformal_risk_control(L, [0.0, 1.0], alpha=0.1) == 0.0
    # B scales the correction: losses in [0, 2].
    L = np.zeros((19, 2))
    L[0, 0] = 1.0
    assert conformal_risk_control(L, [0.0, 1.0], alpha=0.1, B=2.0) == 1.0
    assert conformal_risk_control(L, [0.0, 1.0], alpha=0.16, B=2.0) == 0.0


def test_crc_warns_and_refers_when_uncontrollable():
    with pytest.warns(UserWarning, match="refer every hip"):
        lam = conformal_risk_control(np.zeros((5, 2)), [0.0, np.inf], alpha=0.1)  # n < 9
    assert lam == np.inf
    with pytest.warns(UserWarning, match="refer every hip"):
        res = learn_then_test(np.ones((50, 2)), [0.0, 1.0], alpha=0.1, epsilon=0.1)
    assert res.lambda_hat == 1.0 and len(res.valid_lambdas) == 0


def test_input_checks():
    with pytest.raises(ValueError, match="non-increasing"):
        conformal_risk_control([[0.0, 1.0]] * 20, [0.0, 1.0], alpha=0.1)
    with pytest.raises(ValueError, match="strictly increasing"):
        conformal_risk_control(np.zeros((20, 2)), [1.0, 0.0], alpha=0.1)
    with pytest.raises(ValueError, match=r"\[0, B\]"):
        learn_then_test(np.full((20, 2), 2.0), [0.0, 1.0], alpha=0.1, epsilon=0.1)
    with pytest.raises(ValueError, match="0/1 losses only"):
        risk_p_values(np.full((20, 2), 0.5), alpha=0.1, p_value="binomial")
    with pytest.raises(ValueError, match="method"):
        learn_then_test(np.zeros((20, 2)), [0.0, 1.0], alpha=0.1, epsilon=0.1, method="holm")


def test_fixed_sequence_stops_at_first_non_rejection():
    # Empirical risk: 0.3, 0.05, 0.2, 0.0 (non-monotone in the middle): fixed sequence from the
    # end rejects 0.0, keeps 0.2 (stop), never reaches 0.05; Bonferroni certifies 0.05 as well.
    n = 200
    L = np.zeros((n, 4))
    for j, k in enumerate([60, 10, 40, 0]):
        L[:k, j] = 1.0
    fs = learn_then_test(L, [0.0, 1.0, 2.0, 3.0], alpha=0.15, epsilon=0.1)
    bf = learn_then_test(L, [0.0, 1.0, 2.0, 3.0], alpha=0.15, epsilon=0.1, method="bonferroni")
    assert fs.valid_lambdas.tolist() == [3.0] and fs.lambda_hat == 3.0
    assert bf.valid_lambdas.tolist() == [1.0, 3.0] and bf.lambda_hat == 1.0


def test_missed_finding_losses_match_the_policy_rule():
    from skddh.policy import apply_rule

    rng = np.random.default_rng(0)
    pred, y = draw_hips(rng, 300)
    L = missed_finding_losses(pred, y, threshold=THRESHOLD, margins=MARGINS[:-1])
    for j, m in enumerate(MARGINS[:-1]):
        passed = apply_rule({"alpha": pred - m}, {"alpha": THRESHOLD}, "alpha")
        np.testing.assert_array_equal(L[:, j], (passed & (y < THRESHOLD)).astype(float))
    # never passed: NaN predictions and the +inf margin
    L = missed_finding_losses([np.nan, 70.0], [50.0, 50.0], threshold=60.0, margins=[0.0, np.inf])
    np.testing.assert_array_equal(L, [[0.0, 0.0], [1.0, 0.0]])


def test_subject_aggregates_are_monotone_and_bounded():
    pred, y, subject = draw_subjects(np.random.default_rng(1), 50)
    L = missed_finding_losses(pred, y, threshold=THRESHOLD, margins=MARGINS)
    for aggregate in ("max", "mean"):
        S, ids = subject_losses(L, subject, aggregate=aggregate)
        assert S.shape == (50, len(MARGINS)) and np.array_equal(ids, np.arange(50))
        assert (np.diff(S, axis=1) <= 0).all() and S.min() >= 0 and S.max() <= 1
    S_max, _ = subject_losses(L, subject, aggregate="max")
    S_mean, _ = subject_losses(L, subject, aggregate="mean")
    assert (S_max >= S_mean).all()


# ---- cross-check with mapie -------------------------------------------------------------------
def _mapie_controller(pred, fwer_method, margins, epsilon):
    rc = pytest.importorskip("mapie.risk_control")
    missed = rc.BinaryRisk(
        risk_occurrence=lambda y_true, y_pred: (y_pred == 1) & (y_true == 1),
        risk_condition=lambda y_true, y_pred: np.repeat(True, len(y_true)),
        higher_is_better=False,
    )
    referred = rc.BinaryRisk(  # secondary objective: refer as few as possible
        risk_occurrence=lambda y_true, y_pred: y_pred == 0,
        risk_condition=lambda y_true, y_pred: np.repeat(True, len(y_true)),
        higher_is_better=False,
    )

    # mapie thresholds column 1 of predict_function(X): passed iff pred - 60 >= m.
    def predict_function(X):
        gap = np.asarray(X, dtype=float)[:, 0] - THRESHOLD
        return np.column_stack([-gap, gap])

    return rc.BinaryClassificationController(
        predict_function=predict_function,
        risk=missed,
        target_level=ALPHA,
        confidence_level=1 - epsilon,
        best_predict_param_choice=referred,
        list_predict_params=margins,
        fwer_method=fwer_method,
    )


@pytest.mark.parametrize("fwer_method", ["fixed_sequence", "bonferroni"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learn_then_test_matches_mapie(fwer_method, seed):
    """Our ``learn_then_test`` against mapie's ``BinaryClassificationController`` (LTT).

    Same thing computed: independent hips, 0/1 missed-finding losses, margins ``m`` on a
    finite grid; mapie passes a hip when ``pred - 60 >= m`` (its ``predict_proba`` column 1
    thresholded by ``list_predict_params``), the risk ``P(passed and abnormal)`` (a
    ``BinaryRisk`` whose condition is every hip), FWER ``fixed_sequence`` (mapie reverses the
    order for a decreasing empirical risk, so it too starts at the conservative end) or
    ``bonferroni``, and the best parameter the valid one that refers fewest hips (= our least
    conservative valid margin). Compared: the p-values (rtol 1e-12), the certified margins
    (exactly) and the chosen margin (exactly).

    Why the p-values coincide: mapie's binary Hoeffding-Bentkus p-value is
    ``min(exp(-n h1(min(Rhat, alpha), alpha)), P(Binom(n, alpha) <= ceil(n Rhat)))``; the
    exact binomial tail is never above its Chernoff bound, so for 0/1 losses the minimum is our
    exact binomial p-value. Two floating-point details fix the case: mapie computes
    ``ceil(n * (k / n))``, which is ``k + 1`` for some ``k`` unless ``n`` is a power of two
    (n = 100: ``k`` in {7, 14, 28, 55, 56}, making mapie's p-value conservative there), so
    ``n = 128``; and it tests at ``1 - confidence_level``, so ``epsilon = 0.125``, which
    round-trips exactly.
    """
    n, epsilon = 128, 0.125
    margins = MARGINS[:-1]  # finite grid: mapie thresholds probabilities
    pred, y = draw_hips(np.random.default_rng(seed), n)
    abnormal = (y < THRESHOLD).astype(int)
    ctrl = _mapie_controller(pred, fwer_method, margins, epsilon)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "predictions are not probabilities"
        ctrl.calibrate(pred[:, None], abnormal)
    L = missed_finding_losses(pred, y, threshold=THRESHOLD, margins=margins)
    ours = learn_then_test(L, margins, alpha=ALPHA, epsilon=epsilon, method=fwer_method)
    np.testing.assert_allclose(ours.p_values, np.asarray(ctrl.p_values)[:, 0], rtol=1e-12)
    np.testing.assert_array_equal(ours.valid_lambdas, np.sort(ctrl.valid_predict_params))
    assert len(ours.valid_lambdas) > 0
    assert ours.lambda_hat == ctrl.best_predict_param


def test_hoeffding_bentkus_p_values_match_mapie():
    """Our ``hoeffding_bentkus`` p-values against mapie's ``compute_hoeffding_bentkus_p_value``
    (``binary=False``, the general ``e * binomial`` Bentkus term) on subject-mean losses in
    [0, 1], to rtol 1e-12, on the columns where both round ``n Rhat`` up to the same integer
    (mapie's ``ceil(n * (total / n))`` can exceed ``total`` by one when ``total`` is an
    integer that the division does not round-trip; we take ``ceil(total)`` with a 1e-9 slack).
    """
    methods = pytest.importorskip("mapie.risk_control.methods")
    pred, y, subject = draw_subjects(np.random.default_rng(8), 64)
    L = missed_finding_losses(pred, y, threshold=THRESHOLD, margins=MARGINS)
    S, _ = subject_losses(L, subject, aggregate="mean")
    assert not np.isin(S, (0.0, 1.0)).all()  # truly non-binary
    n, total = S.shape[0], S.sum(axis=0)
    r_hat = S.mean(axis=0)
    theirs = methods.compute_hoeffding_bentkus_p_value(r_hat, n, ALPHA, binary=False)[:, 0]
    ours = risk_p_values(S, alpha=ALPHA)  # "auto" -> Hoeffding-Bentkus for these losses
    same = np.ceil(n * r_hat) == np.ceil(total - 1e-9 * n)
    assert same.mean() > 0.9
    np.testing.assert_allclose(ours[same], theirs[same], rtol=1e-12)
    assert (ours <= theirs + 1e-15).all()  # elsewhere ours is the less conservative
