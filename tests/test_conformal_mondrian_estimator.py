"""Mondrian calibration inside :class:`OneSidedConformalRegressor` (``mondrian=``).

The pure function :func:`skddh.conformal.mondrian_lower_bound` is tested in
``test_conformal_mondrian.py``; here: the estimator agrees with it, reduces to the pooled
estimator with one stratum, covers within every stratum of a clustered population where the
pooled control does not, and handles bad covariates, unseen and tiny strata, clone, pickle
and metadata routing.
"""

from __future__ import annotations

import pickle
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import config_context
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV, GroupKFold

from skddh.conformal import (
    OneSidedConformalRegressor,
    OneSidedCrossConformalRegressor,
    mondrian_lower_bound,
)


def age_band(c):
    """Young infants (< 12 weeks) vs older: a module-level function, so it pickles."""
    return np.where(c["age_weeks"] < 12, "<12w", ">=12w")


def _cohort(n_subjects=80, seed=0, wide=3.0, ages=None):
    """Subjects with 2-4 correlated images; residuals ``wide`` times wider before 12 weeks.

    ``ages``: the subjects' ages in weeks (default uniform on 2-30, about 36 % young).
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 5, n_subjects)
    subject = np.repeat(np.arange(n_subjects), sizes)
    ages = rng.uniform(2, 30, n_subjects) if ages is None else np.asarray(ages, dtype=float)
    age = ages[subject]
    side = rng.choice(["L", "R"], len(subject))
    x = rng.normal(size=(len(subject), 2))
    scale = np.where(age < 12, wide, 1.0)
    u = rng.standard_normal(n_subjects)[subject]  # shared by a subject's images
    noise = -(rng.gumbel(size=len(subject)) - 0.5772) / 1.2825  # skewed, unit variance
    y = 60 + 3 * x[:, 0] - x[:, 1] + scale * 2 * (0.8 * u + 0.6 * noise)
    cov = pd.DataFrame({"age_weeks": age, "side": side, "machine": rng.integers(0, 2, len(y))})
    return x, y, subject, cov


# ---- exact agreement ------------------------------------------------------------------------
@pytest.mark.parametrize("unit", ["subject-max", "image"])
@pytest.mark.parametrize("bias", [None, "affine", "affine-split"])
def test_one_stratum_equals_the_pooled_estimator_exactly(unit, bias):
    X, y, g, cov = _cohort(seed=1)
    kw = dict(calibration_unit=unit, bias_correction=bias, calibration_size=0.4, random_state=3)
    pooled = OneSidedConformalRegressor(LinearRegression(), **kw).fit(X, y, groups=g)
    cov = cov.assign(site="one")
    mond = OneSidedConformalRegressor(LinearRegression(), mondrian="site", **kw)
    mond.fit(X, y, groups=g, covariates=cov)
    for delta in (None, 0.05, 0.1, 0.35):
        np.testing.assert_array_equal(
            mond.predict_lower(X, delta=delta, covariates=cov), pooled.predict_lower(X, delta)
        )
    np.testing.assert_array_equal(mond.stratum_quantiles_.loc["one"], pooled.quantile_)
    assert mond.stratum_counts_["one"] == pooled.n_calibration_
    # without mondrian, covariates are accepted and ignored
    ignored = OneSidedConformalRegressor(LinearRegression(), **kw).fit(
        X, y, groups=g, covariates=cov
    )
    np.testing.assert_array_equal(
        ignored.predict_lower(X, covariates=cov.iloc[:0]), pooled.predict_lower(X)
    )


@pytest.mark.parametrize("unit", ["subject-max", "image"])
def test_agrees_with_mondrian_lower_bound_on_its_residuals(unit):
    X, y, g, cov = _cohort(n_subjects=120, seed=2)
    yy = pd.DataFrame({"alpha": y, "coverage": 50 - y / 2})
    model = OneSidedConformalRegressor(
        LinearRegression(),
        delta={"alpha": 0.1, "coverage": 0.2},
        calibration_unit=unit,
        calibration_size=0.5,
        mondrian=age_band,
        random_state=0,
    ).fit(X, yy, groups=g, covariates=cov)
    cal = model.calibration_indices_
    strata = age_band(cov)
    np.testing.assert_array_equal(model.calibration_strata_, strata[cal])
    comp = model.predict_components(X)
    got = model.lower_from_components(comp, covariates=cov)
    groups = None if unit == "image" else g[cal]
    for j, d in enumerate((0.1, 0.2)):
        by_hand = mondrian_lower_bound(
            model.residuals_[:, j], strata[cal], comp[:, j], strata, delta=d, groups=groups
        )
        np.testing.assert_array_equal(got[:, j], by_hand)
    # another delta, the DataFrame y and predict_lower
    lb = model.predict_lower(X, delta=0.3, covariates=cov)
    by_hand = mondrian_lower_bound(
        model.residuals_, strata[cal], comp, strata, delta=0.3, groups=groups
    )
    np.testing.assert_array_equal(lb, by_hand)
    counts = [len(np.unique(g[cal][strata[cal] == s])) for s in ("<12w", ">=12w")]
    if unit == "image":
        counts = [int(np.sum(strata[cal] == s)) for s in ("<12w", ">=12w")]
    assert model.stratum_counts_.to_dict() == dict(zip(["<12w", ">=12w"], counts))
    assert model.strata_.tolist() == ["<12w", ">=12w"]


# ---- the guarantee, by simulation -----------------------------------------------------------
DRAWS, N_SUBJECTS, N_NEW, DELTA = 300, 80, 20, 0.1


@pytest.fixture(scope="module")
def stratum_coverage():
    """Per stratum: coverage of every image of a new subject, Mondrian vs the pooled control.

    Each draw: a fresh cohort of 80 subjects (2-4 correlated images, about 36 % under 12
    weeks with residuals 3x wider), half of the subjects calibrating; then ``N_NEW`` new
    subjects per stratum. Coverage per draw is the share of new subjects all of whose images
    are covered; its mean and SE are over draws.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(11)
    hits = {(m, s): np.empty(DRAWS) for m in ("mondrian", "pooled") for s in ("<12w", ">=12w")}
    young = np.arange(2 * N_NEW) < N_NEW
    for r in range(DRAWS):
        seed = int(rng.integers(2**32))
        # the last 2 * N_NEW subjects are new: N_NEW of 6 weeks, N_NEW of 20 weeks
        ages = np.concatenate([rng.uniform(2, 30, N_SUBJECTS), np.repeat([6.0, 20.0], N_NEW)])
        X, y, g, cov = _cohort(N_SUBJECTS + 2 * N_NEW, seed=seed, ages=ages)
        old = g < N_SUBJECTS
        kw = dict(calibration_size=0.5, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a rare tiny stratum: -inf
            for name, mondrian in (("mondrian", age_band), ("pooled", None)):
                model = OneSidedConformalRegressor(LinearRegression(), mondrian=mondrian, **kw)
                model.fit(X[old], y[old], groups=g[old], covariates=cov[old])
                lb = model.predict_lower(X[~old], covariates=cov[~old])
                starts = np.flatnonzero(np.diff(g[~old], prepend=-1))  # g sorted by subject
                covered = np.logical_and.reduceat(y[~old] >= lb, starts)
                hits[name, "<12w"][r] = covered[young].mean()
                hits[name, ">=12w"][r] = covered[~young].mean()
    out = {k: (v.mean(), v.std() / np.sqrt(DRAWS)) for k, v in hits.items()}
    print(
        f"\nnew-subject coverage per stratum, {DRAWS} draws, delta={DELTA} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    for (name, s), (m, se) in out.items():
        print(f"  {name:8s} {s:6s} {m:.4f} +- {se:.4f}")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stratum", ["<12w", ">=12w"])
def test_mondrian_covers_a_new_subject_in_every_stratum(stratum_coverage, stratum):
    m, se = stratum_coverage["mondrian", stratum]
    assert m >= 1 - DELTA - 3 * se, (m, se)
    # not trivially (LB = -inf everywhere covers 1.0): at most 1 - delta + 1/(n_s + 1) without
    # ties, n_s about 14 young and 26 older calibration subjects here
    assert m <= 1 - DELTA + 1 / 10 + 3 * se, (m, se)


@pytest.mark.slow
def test_pooled_control_under_covers_the_wide_stratum(stratum_coverage):
    m, se = stratum_coverage["pooled", "<12w"]
    assert m < 1 - DELTA - 3 * se, (m, se)  # fails the check the Mondrian bound passes
    assert m < 1 - DELTA - 0.1, (m, se)  # and clearly
    m_old, _ = stratum_coverage["pooled", ">=12w"]
    assert m_old > 1 - DELTA  # over-covers the narrow one: marginal, not conditional


# ---- bad input ------------------------------------------------------------------------------
def _fit(mondrian="side", **fit_kw):
    X, y, g, cov = _cohort(seed=4)
    kw = dict(groups=g, covariates=cov)
    kw.update(fit_kw)
    model = OneSidedConformalRegressor(LinearRegression(), mondrian=mondrian, random_state=0)
    return model.fit(X, y, **kw), X, cov


@pytest.mark.parametrize(
    "mondrian, covariates, match",
    [
        ("side", None, r"mondrian='side' needs covariates="),
        (age_band, None, r"mondrian=age_band needs covariates="),
        ("side", lambda c: c.iloc[:-3], r"covariates has \d+ rows but there are \d+ samples"),
        ("side", lambda c: c.to_numpy(), "covariates must be a pandas DataFrame"),
        ("sex", lambda c: c, r"covariates has no column 'sex' \(mondrian='sex'\)"),
        (lambda c: c["age"] < 12, lambda c: c, r"looked up column 'age'.*columns are"),
        ("side", lambda c: c.assign(side=c["side"].where(c.index != 5)), "missing .* row 5"),
        (
            "side",
            lambda c: c.assign(side=[1 if i % 2 else "L" for i in range(len(c))]),
            "mixes label types",
        ),
        (lambda c: "young", lambda c: c, r"one stratum label per row"),
        (lambda c: np.zeros(3), lambda c: c, r"must have shape"),
    ],
)
def test_bad_covariates_in_fit_are_clear_errors(mondrian, covariates, match):
    X, y, g, cov = _cohort(n_subjects=20, seed=4)
    model = OneSidedConformalRegressor(LinearRegression(), mondrian=mondrian, random_state=0)
    cov = None if covariates is None else covariates(cov)
    with pytest.raises(ValueError, match=match):
        model.fit(X, y, groups=g, covariates=cov)


def test_bad_covariates_at_predict_are_clear_errors():
    model, X, cov = _fit()
    with pytest.raises(ValueError, match="needs covariates="):
        model.predict_lower(X)
    with pytest.raises(ValueError, match="covariates has 3 rows"):
        model.predict_lower(X, covariates=cov.iloc[:3])
    with pytest.raises(ValueError, match="no column 'side'"):
        model.lower_from_components(model.predict_components(X), covariates=cov[["age_weeks"]])
    bad = cov.assign(side=cov["side"].where(np.arange(len(cov)) != 7))
    with pytest.raises(ValueError, match="missing stratum label at row 7"):
        model.predict_lower(X, delta=0.2, covariates=bad)


def test_bad_parameters():
    X, y, g, cov = _cohort(n_subjects=20, seed=4)
    with pytest.raises(ValueError, match="mondrian"):  # InvalidParameterError
        OneSidedConformalRegressor(mondrian=3).fit(X, y, groups=g, covariates=cov)
    with pytest.raises(ValueError, match="not available with calibration_unit='subject-subs"):
        OneSidedConformalRegressor(mondrian="side", calibration_unit="subject-subsample").fit(
            X, y, groups=g, covariates=cov
        )


# ---- unseen and tiny strata -----------------------------------------------------------------
def test_unseen_stratum_refers_with_a_warning_naming_it():
    model, X, cov = _fit(mondrian="machine")
    assert model.strata_.tolist() == [0, 1]
    new = cov.assign(machine=np.where(np.arange(len(cov)) % 3 == 0, 2, cov["machine"]))
    with pytest.warns(UserWarning, match=r"stratum \[2\] has no calibration subjects"):
        lb = model.predict_lower(X, covariates=new)
    unseen = new["machine"].to_numpy() == 2
    assert np.all(lb[unseen] == -np.inf) and np.isfinite(lb[~unseen]).all()
    np.testing.assert_array_equal(lb[~unseen], model.predict_lower(X, covariates=cov)[~unseen])


def test_tiny_stratum_refers_with_a_warning_naming_it():
    X, y, g, cov = _cohort(n_subjects=120, seed=5)
    # 5 subjects from a rare machine: too few calibration subjects for delta = 0.1
    cov = cov.assign(machine=np.where(g < 5, "rare", "common"))
    model = OneSidedConformalRegressor(
        LinearRegression(), mondrian="machine", calibration_size=0.5, random_state=0
    )
    with pytest.warns(UserWarning, match=r"too small for delta=0.1: 'rare' \(n=\d subjects"):
        model.fit(X, y, groups=g, covariates=cov)
    assert model.stratum_counts_["rare"] < 9
    assert model.stratum_quantiles_.loc["rare", "y0"] == np.inf
    rare = cov["machine"].to_numpy() == "rare"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fitted delta: warned once, at fit
        lb = model.predict_lower(X, covariates=cov)
    assert np.all(lb[rare] == -np.inf) and np.isfinite(lb[~rare]).all()
    with pytest.warns(UserWarning, match="'rare'"):
        lb = model.predict_lower(X, delta=0.05, covariates=cov)
    assert np.all(lb[rare] == -np.inf)
    # a delta the rare machine supports: finite
    n_rare = model.stratum_counts_["rare"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lb = model.predict_lower(X, delta=1 / (n_rare + 1) + 1e-9, covariates=cov)
    assert np.isfinite(lb).all()


# ---- the estimator contract -----------------------------------------------------------------
def test_clone_get_params_pickle():
    model = OneSidedConformalRegressor(LinearRegression(), mondrian=age_band, delta=0.2)
    assert model.get_params()["mondrian"] is age_band
    assert clone(model).get_params()["mondrian"] is age_band
    assert clone(model.set_params(mondrian="side")).mondrian == "side"
    fitted, X, cov = _fit(mondrian=age_band)
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(
        again.predict_lower(X, covariates=cov), fitted.predict_lower(X, covariates=cov)
    )
    pd.testing.assert_frame_equal(again.stratum_quantiles_, fitted.stratum_quantiles_)
    pooled = OneSidedConformalRegressor(LinearRegression(), random_state=0)
    assert pooled.get_params()["mondrian"] is None
    X, y, g, _ = _cohort(seed=4)
    pooled.fit(X, y, groups=g)
    assert pooled.strata_ is None and pooled.stratum_counts_ is None


def test_grid_search_routes_covariates_and_groups():
    X, y, g, cov = _cohort(n_subjects=150, seed=6)
    with config_context(enable_metadata_routing=True):
        model = OneSidedConformalRegressor(
            LinearRegression(), mondrian=age_band, calibration_size=0.5, random_state=0
        ).set_fit_request(groups=True, covariates=True)
        search = GridSearchCV(model, {"delta": [0.2, 0.3]}, cv=GroupKFold(3))
        search.fit(X, y, groups=g, covariates=cov)  # scored by R^2 of predict: no covariates
        best = search.best_estimator_
        assert best.strata_.tolist() == ["<12w", ">=12w"]
        assert np.isfinite(best.predict_lower(X, covariates=cov)).all()


def test_frozen_base_calibrates_every_row_per_stratum():
    X, y, g, cov = _cohort(n_subjects=60, seed=7)
    base = LinearRegression().fit(X, y)
    model = OneSidedConformalRegressor(FrozenEstimator(base), mondrian="side").fit(
        X, y, groups=g, covariates=cov
    )
    for s in ("L", "R"):  # a subject with both sides counts once in each
        assert model.stratum_counts_[s] == len(np.unique(g[cov["side"] == s]))


def test_cross_conformal_accepts_and_ignores_covariates():
    X, y, g, cov = _cohort(n_subjects=40, seed=8)
    ref = OneSidedCrossConformalRegressor(LinearRegression(), cv=4, random_state=0)
    ref.fit(X, y, groups=g)
    got = clone(ref).fit(X, y, groups=g, covariates=cov)
    np.testing.assert_array_equal(got.predict_lower(X, covariates=cov), ref.predict_lower(X))
