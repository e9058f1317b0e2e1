"""Conformal selection (Jin and Candès 2023): FDR among passed hips, by simulation.

A DDH-shaped population: Graf alpha from the registry mixture of DOMAIN.md (0.78 N(64, 3.6)
+ 0.15 N(54.5, 2.8) + 0.07 N(44, 5.5), clipped to [25, 80]), so many hips sit near the
threshold 60; a biased, shrunk, noisy predictor (over-predicts near the threshold, as a poorly
trained head). Each draw is a fresh calibration and test set; the mean false discovery
proportion (FDP) among passed hips must stay below ``q`` within Monte-Carlo error, while two
controls that do not control the FDR must exceed it clearly: the naive rule "pass if the
prediction is >= 60" and "pass if the unadjusted conformal p-value is <= q" (no BH).
The lower-bound rule at ``delta = q`` is reported alongside (share passed).

The subject-level variant draws infants with 1-4 correlated images (one latent alpha, image
measurement noise and a subject-level prediction error) and controls the FDR over subjects.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from skddh.conformal import (
    conformal_pvalues,
    conformal_selection,
    lower_bound,
    subject_max_scores,
)

QS = (0.05, 0.1, 0.2)
THRESHOLD = 60.0
REPS = 1000
N_CAL, N_TEST = 150, 100  # hips (image level)
N_CAL_SUBJ, N_TEST_SUBJ = 80, 60  # infants (subject level)


def draw_alpha(rng, shape):
    """The registry alpha mixture of DOMAIN.md, clipped to [25, 80]."""
    comp = rng.choice(3, size=shape, p=[0.78, 0.15, 0.07])
    mean = np.array([64.0, 54.5, 44.0])[comp]
    sd = np.array([3.6, 2.8, 5.5])[comp]
    return np.clip(rng.normal(mean, sd), 25, 80)


def predict(rng, y, extra=0.0):
    """Shrunk to 62 by 0.6, biased +6 deg, skewed noise (sd ~4 deg) plus ``extra``."""
    noise = 4.0 * (rng.gumbel(size=y.shape) - 0.5772) / 1.2825
    return 62.0 + 0.6 * (y - 62.0) + 6.0 + noise + extra


def _fdp(passed, null):
    """False discovery proportion per draw: nulls among passed / max(1, passed)."""
    return (passed & null).sum(-1) / np.maximum(1, passed.sum(-1))


def _power(passed, null):
    return (passed & ~null).sum(-1) / np.maximum(1, (~null).sum(-1))


def _summary(values):
    return values.mean(), values.std() / np.sqrt(len(values))


@pytest.fixture(scope="module")
def image_level():
    """FDP, power and share passed per rule and q over REPS draws (one image per subject)."""
    rng = np.random.default_rng(2023)
    y = draw_alpha(rng, (REPS, N_CAL + N_TEST))
    mu = predict(rng, y)
    y_cal, y_test = y[:, :N_CAL], y[:, N_CAL:]
    mu_cal, mu_test = mu[:, :N_CAL], mu[:, N_CAL:]
    null = y_test < THRESHOLD
    rules = {}
    for q in QS:
        sel = np.empty((REPS, N_TEST), dtype=bool)
        unadjusted = np.empty((REPS, N_TEST), dtype=bool)
        lb_rule = np.empty((REPS, N_TEST), dtype=bool)
        for r in range(REPS):
            res = conformal_selection(
                mu_cal[r], y_cal[r], mu_test[r], threshold=THRESHOLD, q=q, random_state=r
            )
            sel[r] = res.selected
            unadjusted[r] = res.pvalues <= q
            lb = lower_bound(mu_test[r], mu_cal[r] - y_cal[r], q)
            lb_rule[r] = lb >= THRESHOLD
        rules["selection", q] = sel
        rules["unadjusted p <= q", q] = unadjusted
        rules["lower bound (delta=q)", q] = lb_rule
    naive = mu_test >= THRESHOLD
    rows = {}
    for (name, q), passed in rules.items():
        rows[name, q] = dict(
            fdp=_summary(_fdp(passed, null)),
            power=_power(passed, null).mean(),
            share=passed.mean(),
        )
    rows["naive (prediction >= 60)", None] = dict(
        fdp=_summary(_fdp(naive, null)), power=_power(naive, null).mean(), share=naive.mean()
    )
    print(f"\nimage level: {REPS} draws, n_cal={N_CAL}, n_test={N_TEST}, P(null)={null.mean():.3f}")
    for (name, q), row in rows.items():
        print(
            f"  {name:24s} q={q}: FDP {row['fdp'][0]:.4f} +- {row['fdp'][1]:.4f}, "
            f"power {row['power']:.3f}, share passed {row['share']:.3f}"
        )
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("q", QS)
def test_selection_controls_fdr_among_passed_hips(image_level, q):
    row = image_level["selection", q]
    mean, se = row["fdp"]
    assert mean <= q + 3 * se, row
    assert row["power"] > 0.05, row  # not vacuous: it passes normal hips


@pytest.mark.slow
@pytest.mark.parametrize("q", QS)
def test_controls_without_fdr_control_exceed_q(image_level, q):
    naive_mean, naive_se = image_level["naive (prediction >= 60)", None]["fdp"]
    assert naive_mean > q + 5 * naive_se, naive_mean
    mean, se = image_level["unadjusted p <= q", q]["fdp"]
    assert mean > q + 5 * se, (mean, se)


@pytest.mark.slow
@pytest.mark.parametrize("q", QS)
def test_share_passed_against_the_lower_bound_rule(image_level, q):
    sel = image_level["selection", q]
    lb = image_level["lower bound (delta=q)", q]
    # sanity only: both pass something, neither passes every hip
    assert 0 < sel["share"] < 1 and 0 < lb["share"] < 1, (sel, lb)


def draw_subjects(rng, n_subjects):
    """Per draw: infants with 1-4 images of one hip; image measurements correlated."""
    sizes = rng.integers(1, 5, (REPS, n_subjects))
    latent = draw_alpha(rng, (REPS, n_subjects))
    subj_err = 3.0 * rng.standard_normal((REPS, n_subjects))  # shared by a subject's images
    out = []
    for r in range(REPS):
        subject = np.repeat(np.arange(n_subjects), sizes[r])
        y = latent[r, subject] + 1.5 * rng.standard_normal(len(subject))  # re-measurement
        mu = predict(rng, y, extra=subj_err[r, subject])
        out.append((subject, y, mu))
    return out


@pytest.fixture(scope="module")
def subject_level():
    rng = np.random.default_rng(14)
    cal = draw_subjects(rng, N_CAL_SUBJ)
    test = draw_subjects(rng, N_TEST_SUBJ)
    stats = {q: np.empty((REPS, 5)) for q in QS}  # fdp, power, share, lb share, naive fdp
    for r in range(REPS):
        (g_cal, y_cal, mu_cal), (g_test, y_test, mu_test) = cal[r], test[r]
        worst_y = -subject_max_scores(-y_test, g_test)[0]
        null = worst_y < THRESHOLD  # a subject is null when any image is below 60
        naive = -subject_max_scores(-mu_test, g_test)[0] >= THRESHOLD
        s_subj, _ = subject_max_scores(mu_cal - y_cal, g_cal)
        for q in QS:
            res = conformal_selection(
                mu_cal,
                y_cal,
                mu_test,
                threshold=THRESHOLD,
                q=q,
                groups=g_cal,
                test_groups=g_test,
                random_state=r,
            )
            assert res.n_calibration == N_CAL_SUBJ
            passed = res.unit_selected
            # the subject-level lower-bound rule: every image of the subject has LB >= 60
            lb_passed = -subject_max_scores(-lower_bound(mu_test, s_subj, q), g_test)[0]
            stats[q][r] = (
                _fdp(passed, null),
                _power(passed, null),
                passed.mean(),
                (lb_passed >= THRESHOLD).mean(),
                _fdp(naive, null),
            )
    rows = {
        q: dict(
            fdp=_summary(v[:, 0]),
            power=v[:, 1].mean(),
            share=v[:, 2].mean(),
            lb_share=v[:, 3].mean(),
            naive_fdp=_summary(v[:, 4]),
        )
        for q, v in stats.items()
    }
    print(f"\nsubject level: {REPS} draws, {N_CAL_SUBJ} calibration / {N_TEST_SUBJ} test infants")
    for q, row in rows.items():
        print(
            f"  q={q}: FDP {row['fdp'][0]:.4f} +- {row['fdp'][1]:.4f}, power {row['power']:.3f}, "
            f"share passed {row['share']:.3f} vs lower-bound rule {row['lb_share']:.3f}; "
            f"naive FDP {row['naive_fdp'][0]:.4f}"
        )
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("q", QS)
def test_subject_level_selection_controls_fdr_over_subjects(subject_level, q):
    row = subject_level[q]
    mean, se = row["fdp"]
    assert mean <= q + 3 * se, row
    assert row["power"] > 0.05, row
    naive_mean, naive_se = row["naive_fdp"]
    assert naive_mean > q + 5 * naive_se, row


# ---- exact values and errors ---------------------------------------------------------------


def test_pvalues_count_ties_and_randomize_within_them():
    cal = np.array([1.0, 2.0, 2.0, 3.0])
    p = conformal_pvalues(cal, np.array([2.0, 0.0, 5.0]), randomized=False)
    np.testing.assert_allclose(p, [4 / 5, 1 / 5, 5 / 5])
    u = np.random.default_rng(3).random(3)
    p = conformal_pvalues(cal, np.array([2.0, 0.0, 5.0]), random_state=3)
    np.testing.assert_allclose(p, [(1 + 3 * u[0]) / 5, u[1] / 5, (4 + u[2]) / 5])


def test_pvalues_are_uniform_for_exchangeable_scores():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(4000, 20))
    p = np.array(
        [conformal_pvalues(row[1:], row[:1], random_state=i)[0] for i, row in enumerate(v)]
    )
    for t in (0.05, 0.1, 0.5):
        assert abs((p <= t).mean() - t) < 3 * np.sqrt(t * (1 - t) / len(p))


def test_non_null_calibration_units_never_count():
    # a calibration unit that truly clears the threshold cannot raise a test p-value
    mu_cal = np.array([70.0, 50.0, 65.0])
    y_cal = np.array([61.0, 55.0, 58.0])  # only the third is null (58 < 60)
    res = conformal_selection(
        mu_cal, y_cal, np.array([66.0, 64.0]), threshold=60, q=0.5, randomized=False
    )
    np.testing.assert_allclose(res.pvalues, [1 / 4, 2 / 4])  # 64 < 65: the null counts
    np.testing.assert_array_equal(res.selected, [True, True])  # BH: 2/4 <= 0.5 * 2/2
    assert res.cutoff == 0.5 and res.n_calibration == 3


def test_bh_matches_a_hand_written_step_up():
    rng = np.random.default_rng(5)
    for _ in range(50):
        y = rng.normal(60, 5, 120)
        mu = y + rng.normal(0, 3, 120)
        res = conformal_selection(mu[:60], y[:60], mu[60:], threshold=60, q=0.2, random_state=1)
        p = np.sort(res.pvalues)
        ok = np.flatnonzero(p <= 0.2 * np.arange(1, len(p) + 1) / len(p))
        k = ok[-1] + 1 if len(ok) else 0
        assert res.unit_selected.sum() == k
        np.testing.assert_array_equal(res.unit_selected, res.pvalues <= res.cutoff)


def test_subject_decisions_are_shared_by_all_rows():
    mu_cal = np.array([70.0, 50.0, 65.0, 59.0])
    y_cal = np.array([61.0, 55.0, 58.0, 70.0])
    g_test = np.array(["b", "a", "b", "c"])
    res = conformal_selection(
        mu_cal,
        y_cal,
        np.array([80.0, 75.0, 62.0, 90.0]),
        threshold=60,
        q=0.5,
        groups=[1, 1, 2, 3],
        test_groups=g_test,
        random_state=0,
    )
    assert res.n_calibration == 3
    np.testing.assert_array_equal(res.units, ["a", "b", "c"])
    np.testing.assert_array_equal(res.selected, res.unit_selected[[1, 0, 1, 2]])


def test_too_small_calibration_set_warns_and_passes_none():
    with pytest.warns(UserWarning, match="cannot support q=0.1"):
        res = conformal_selection(
            np.full(8, 70.0), np.full(8, 50.0), np.full(5, 99.0), threshold=60, q=0.1
        )
    assert not res.selected.any() and res.cutoff == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # n + 1 = 10 = 1/q: supported
        conformal_selection(np.full(9, 70.0), np.full(9, 50.0), [99.0], threshold=60, q=0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(q=0.0), "q"),
        (dict(q=1.0), "q"),
        (dict(q=True), "q"),
        (dict(calibration_y=[1.0, 2.0]), "rows"),
        (dict(calibration_y=[1.0, np.nan, 3.0]), "NaN"),
        (dict(test_predictions=[np.nan]), "NaN"),
        (dict(threshold=np.nan), "threshold"),
        (dict(groups=[1, 2, 3]), "both"),
        (dict(groups=[1, 2], test_groups=[1]), "shape"),
        (dict(groups=[1, "1", 2], test_groups=[1]), "mixes"),
    ],
)
def test_errors(kwargs, match):
    args = dict(
        calibration_predictions=[1.0, 2.0, 3.0],
        calibration_y=[1.0, 2.0, 3.0],
        test_predictions=[2.0],
        threshold=2.0,
        q=0.5,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        conformal_selection(**args)
