"""Mondrian (per-stratum) one-sided lower bounds: coverage within each stratum, by simulation.

Three age bands whose residual spread differs strongly (young infants much noisier, as
poorer cooperation and smaller hips would make them), with skewed noise and unequal, random
stratum sizes. Within every stratum the Mondrian bound must cover ``1 - delta`` within
Monte-Carlo error; the pooled (ordinary split) bound is the control: it covers the
population on average but under-covers the noisy band clearly.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from skddh.conformal import (
    lower_bound,
    mondrian_lower_bound,
    one_sided_quantile,
    subject_max_scores,
)

BANDS = np.array(["0-6 wk", "6-12 wk", "12+ wk"])
SPREAD = np.array([9.0, 3.0, 1.5])  # residual scale per band
P_BAND = np.array([0.25, 0.35, 0.40])
DELTAS = (0.1, 0.2)
REPS, N_CAL, N_TEST = 1500, 120, 30  # N_TEST test hips per band and draw


def skewed_noise(rng, shape):
    """Mean-zero, unit-variance, right-skewed (a negated Gumbel: long left tail of y)."""
    return -(rng.gumbel(size=shape) - 0.5772) / 1.2825


@pytest.fixture(scope="module")
def coverage():
    """Per band and delta: mean coverage over draws (and its SE), Mondrian vs pooled."""
    rng = np.random.default_rng(7)
    band_cal = rng.choice(3, size=(REPS, N_CAL), p=P_BAND)
    r_cal = SPREAD[band_cal] * skewed_noise(rng, (REPS, N_CAL))  # y - y_tilde
    band_test = np.tile(np.repeat(np.arange(3), N_TEST), (REPS, 1))
    pred = rng.normal(62, 5, band_test.shape)
    y_test = pred + SPREAD[band_test] * skewed_noise(rng, band_test.shape)
    out = {}
    for delta in DELTAS:
        mond = np.empty(band_test.shape)
        pooled = np.empty(band_test.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a rare tiny band: LB = -inf
            for r in range(REPS):
                mond[r] = mondrian_lower_bound(
                    r_cal[r], BANDS[band_cal[r]], pred[r], BANDS[band_test[r]], delta=delta
                )
                pooled[r] = lower_bound(pred[r], -r_cal[r], delta)
        for name, lb in (("mondrian", mond), ("pooled", pooled)):
            covered = y_test >= lb
            for b in range(3):
                per_draw = covered[:, band_test[0] == b].mean(1)
                out[name, delta, BANDS[b]] = (per_draw.mean(), per_draw.std() / np.sqrt(REPS))
    print(f"\nper-band coverage over {REPS} draws, n_cal={N_CAL} (bands {P_BAND.tolist()})")
    for (name, delta, band), (m, se) in out.items():
        print(f"  {name:8s} delta={delta}: {band:8s} {m:.4f} +- {se:.4f} (nominal {1 - delta})")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("delta", DELTAS)
@pytest.mark.parametrize("band", BANDS)
def test_mondrian_covers_every_band(coverage, delta, band):
    m, se = coverage["mondrian", delta, band]
    assert m >= 1 - delta - 3 * se, (m, se)
    # and not trivially: at most 1 - delta + 1/(n_s + 1) on average, n_s >= ~20 here
    assert m <= 1 - delta + 0.06 + 3 * se, (m, se)


@pytest.mark.slow
@pytest.mark.parametrize("delta", DELTAS)
def test_pooled_control_under_covers_the_noisy_band(coverage, delta):
    m, se = coverage["pooled", delta, "0-6 wk"]
    assert m < 1 - delta - 0.05, (m, se)  # clearly: by more than five points
    assert m < 1 - delta - 10 * se


@pytest.mark.slow
@pytest.mark.parametrize("delta", DELTAS)
def test_subject_level_mondrian_covers_each_sides_worst_image(delta):
    """Infants with a left and a right hip (1-3 images each), the left side much noisier;
    the stratum is the side, so every subject spans both strata."""
    rng = np.random.default_rng(int(100 * delta))
    reps, n_subj = 1000, 40
    hits = np.empty((reps, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for r in range(reps):
            sizes = rng.integers(1, 4, size=(n_subj + 1, 2))
            subj = np.concatenate([np.repeat(np.arange(n_subj + 1), sizes[:, s]) for s in (0, 1)])
            side = np.concatenate([np.repeat(["L", "R"][s], sizes[:, s].sum()) for s in (0, 1)])
            scale = np.where(side == "L", 8.0, 2.0)
            u = rng.standard_normal(n_subj + 1)[subj]  # subject effect, shared by images
            resid = scale * (0.9 * u + 0.44 * skewed_noise(rng, len(subj)))
            new = subj == n_subj
            pred = rng.normal(62, 5, new.sum())
            lb = mondrian_lower_bound(
                resid[~new], side[~new], pred, side[new], delta=delta, groups=subj[~new]
            )
            y = pred + resid[new]
            hits[r] = [(y >= lb)[side[new] == s].all() for s in ("L", "R")]
    m, se = hits.mean(0), hits.std(0) / np.sqrt(reps)
    print(f"\nsubject-level, side strata, delta={delta}: worst-image coverage L/R {m.round(4)}")
    assert (m >= 1 - delta - 3 * se).all(), (m, se)


# ---- exact values and warnings -------------------------------------------------------------


@pytest.mark.parametrize("n, delta", [(9, 0.1), (19, 0.05), (20, 0.05), (59, 0.05), (200, 0.35)])
def test_single_stratum_equals_the_pooled_bound_exactly(n, delta):
    rng = np.random.default_rng(n)
    r = rng.exponential(size=n) - 1
    pred = rng.normal(60, 5, 7)
    got = mondrian_lower_bound(r, np.zeros(n, int), pred, np.zeros(7, int), delta=delta)
    np.testing.assert_array_equal(got, lower_bound(pred, -r, delta))
    g = rng.integers(0, max(2, n // 3), n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # few subjects: -inf on both sides
        got = mondrian_lower_bound(r, ["a"] * n, pred, ["a"] * 7, delta=delta, groups=g)
    np.testing.assert_array_equal(got, lower_bound(pred, subject_max_scores(-r, g)[0], delta))


def test_each_stratum_uses_only_its_own_units():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(60, 2))
    strata = rng.choice(["L", "R"], 60)
    pred = rng.normal(size=(5, 2))
    test_strata = np.array(["R", "L", "R", "R", "L"])
    got = mondrian_lower_bound(r, strata, pred, test_strata, delta=0.1)
    for s in ("L", "R"):
        q = one_sided_quantile(-r[strata == s], 0.1)
        np.testing.assert_array_equal(got[test_strata == s], pred[test_strata == s] - q)


def test_tiny_stratum_gives_minus_inf_with_a_warning_naming_it():
    r = np.arange(-12.0, 0.0)  # 12 units
    strata = ["big"] * 10 + ["tiny"] * 2
    with pytest.warns(UserWarning, match=r"'tiny' \(n=2 rows; needs delta >= 0.3333\)"):
        lb = mondrian_lower_bound(r, strata, [60.0, 60.0], ["big", "tiny"], delta=0.1)
    assert np.isfinite(lb[0]) and lb[1] == -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # n = 9 at delta = 0.1: exactly supported
        mondrian_lower_bound(r[:9], ["a"] * 9, [60.0], ["a"], delta=0.1)


def test_unseen_test_stratum_gives_minus_inf_with_a_warning():
    with pytest.warns(UserWarning, match=r"test stratum \['machine B'\] has no calibration"):
        lb = mondrian_lower_bound(
            -np.arange(20.0),
            ["machine A"] * 20,
            [60.0, 61.0],
            ["machine A", "machine B"],
            delta=0.2,
        )
    assert np.isfinite(lb[0]) and lb[1] == -np.inf


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(delta=0.0), "delta"),
        (dict(delta=1.5), "delta"),
        (dict(calibration_residuals=[1.0, np.nan, 0.0]), "NaN"),
        (dict(calibration_strata=["a", "b"]), "shape"),
        (dict(test_strata=["a", None]), "missing"),
        (dict(calibration_strata=[1, "1", "a"]), "mixes"),
        (dict(test_predictions=[[1.0], [2.0]]), "1-D"),
        (dict(groups=[1, 2]), "shape"),
    ],
)
def test_errors(kwargs, match):
    args = dict(
        calibration_residuals=[1.0, 2.0, 3.0],
        calibration_strata=["a", "a", "b"],
        test_predictions=[1.0, 2.0],
        test_strata=["a", "b"],
        delta=0.5,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mondrian_lower_bound(**args)
