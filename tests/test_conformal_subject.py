"""The guarantee for a new subject, by simulation, the way users call the estimators.

Cohorts of subjects with 1-6 images each (unequal), intra-subject correlation about 0.9,
skewed noise and a biased (shrunk) predictor. Each draw fits the estimators with ``groups``
and scores a *new* subject's images:

- ``worst``: every image of the new subject is covered (what "subject-max" and CV+ promise);
- ``image``: the share of its images covered (a uniformly chosen image: what
  "subject-subsample" promises).

The image-level variant (``calibration_unit="image"``) is the control that shows the test
can fail: its scores are per image, ``n`` counts images, and it under-covers a new subject.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import config_context
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, GroupKFold

from skddh.conformal import OneSidedConformalRegressor, OneSidedCrossConformalRegressor

DELTAS = (0.1, 0.2)
ALPHA = 30.0  # strong shrinkage: a biased predictor, as after a poorly trained head


class ShrunkLinear(RegressorMixin, BaseEstimator):
    """Ridge in closed form without input validation: the simulation fits it 30,000 times."""

    def __init__(self, alpha=ALPHA):
        self.alpha = alpha

    def fit(self, X, y):
        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
        self.mean_x_, self.mean_y_ = X.mean(0), y.mean(0)
        Xc = X - self.mean_x_
        gram = Xc.T @ Xc + self.alpha * np.eye(X.shape[1])
        self.coef_ = np.linalg.solve(gram, Xc.T @ (y - self.mean_y_))
        return self

    def predict(self, X):
        return (np.asarray(X, dtype=float) - self.mean_x_) @ self.coef_ + self.mean_y_


N_TRAIN = 14  # training subjects of the split methods


def draw_cohort(rng, n_subjects, rho=0.9):
    """Subjects with 1-6 images, y = f(x) + u_subject + e_image, corr(images) = rho."""
    sizes = rng.integers(1, 7, n_subjects)
    subject = np.repeat(np.arange(n_subjects), sizes)
    n = len(subject)
    x = rng.normal(size=(n, 2)) + rng.normal(size=(n_subjects, 2))[subject]
    # skewed, mean-zero effects: the subject's (Gumbel) and the image's (exponential)
    u = np.sqrt(rho) * 4 * (rng.gumbel(size=n_subjects) - 0.5772) / 1.2825
    e = np.sqrt(1 - rho) * 4 * (rng.exponential(size=n) - 1)
    y = 60 + 3 * x[:, 0] - 2 * x[:, 1] + 0.8 * x[:, 0] ** 2 + u[subject] + e
    return x, y, subject


def _scores(lb, y):
    covered = y >= lb
    return covered.all(), covered.mean()


def simulate(n_cal, reps, seed=0, methods=None):
    """Coverage of a new subject per method and delta over ``reps`` fresh cohorts."""
    methods = methods or {
        "image": lambda: OneSidedConformalRegressor(
            ShrunkLinear(), calibration_size=n_cal, calibration_unit="image"
        ),
        "subject-max": lambda: OneSidedConformalRegressor(ShrunkLinear(), calibration_size=n_cal),
        "subject-subsample (B=1)": lambda: OneSidedConformalRegressor(
            ShrunkLinear(),
            calibration_size=n_cal,
            calibration_unit="subject-subsample",
            n_resamples=1,
        ),
        "subject-subsample (B=51)": lambda: OneSidedConformalRegressor(
            ShrunkLinear(), calibration_size=n_cal, calibration_unit="subject-subsample"
        ),
        "cv+ (all subjects)": lambda: OneSidedCrossConformalRegressor(ShrunkLinear(), cv=5),
    }
    rng = np.random.default_rng(seed)
    out = {(m, d): np.empty((reps, 2)) for m in methods for d in DELTAS}
    n_units = {}
    for r in range(reps):
        x, y, subject = draw_cohort(rng, N_TRAIN + n_cal + 1)
        new = subject == subject.max()
        for name, make in methods.items():
            model = make().set_params(random_state=r)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # delta too small: LB = -inf
                model.fit(x[~new], y[~new], groups=subject[~new])
                comp = model.predict_components(x[new])
                for d in DELTAS:
                    lb = model.lower_from_components(comp, d)[:, 0]
                    out[name, d][r] = _scores(lb, y[new])
            n_units[name] = model.n_calibration_
    rows = []
    for (name, d), v in out.items():
        mean, se = v.mean(0), v.std(0) / np.sqrt(reps)
        rows.append(
            dict(
                method=name,
                delta=d,
                n=n_units[name],
                worst=mean[0],
                worst_se=se[0],
                image=mean[1],
                image_se=se[1],
            )
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module", params=[7, 28], ids=["n7", "n28"])
def table(request):
    return request.param, simulate(request.param, reps=2000, seed=request.param)


def _row(tab, method, delta):
    return tab[(tab.method == method) & (tab.delta == delta)].iloc[0]


@pytest.mark.slow
@pytest.mark.parametrize("delta", DELTAS)
def test_subject_max_covers_the_new_subjects_worst_image_within_the_band(table, delta):
    n, tab = table
    r = _row(tab, "subject-max", delta)
    assert r.n == n  # n counts subjects
    lo, hi = 1 - delta, 1 - delta + 1 / (n + 1)
    assert lo - 3 * r.worst_se <= r.worst <= hi + 3 * r.worst_se, r.to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("delta", DELTAS)
def test_one_subsample_covers_a_random_image_within_the_band(table, delta):
    n, tab = table
    r = _row(tab, "subject-subsample (B=1)", delta)
    lo, hi = 1 - delta, 1 - delta + 1 / (n + 1)
    assert lo - 3 * r.image_se <= r.image <= hi + 3 * r.image_se, r.to_dict()
    # the majority vote over 51 subsamples: worst case 1 - 2 delta, near 1 - delta here
    r51 = _row(tab, "subject-subsample (B=51)", delta)
    assert r51.image >= 1 - 2 * delta
    assert r51.image >= lo - 0.03, r51.to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("delta", DELTAS)
def test_cv_plus_never_below_one_minus_two_delta(table, delta):
    _, tab = table
    r = _row(tab, "cv+ (all subjects)", delta)
    assert r.worst >= 1 - 2 * delta, r.to_dict()
    assert r.n == N_TRAIN + _row(tab, "subject-max", delta).n  # every subject calibrates


@pytest.mark.slow
def test_image_level_control_under_covers_a_new_subject(table):
    """The naive variant fails the same test: the test can fail."""
    n, tab = table
    for delta in DELTAS:
        r = _row(tab, "image", delta)
        assert r.worst < 1 - delta - 3 * r.worst_se, r.to_dict()


@pytest.mark.slow
def test_coverage_through_gridsearchcv_with_routed_groups():
    """Tuned by GridSearchCV with routed groups, the refitted model still covers a new subject;
    image-level calibration tuned the same way (the control) does not."""
    rng = np.random.default_rng(1)
    reps, delta = 400, 0.2
    hits = {"subject-max": [], "image": []}
    with config_context(enable_metadata_routing=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for r in range(reps):
            x, y, subject = draw_cohort(rng, N_TRAIN + 12 + 1)
            new = subject == subject.max()
            for unit in hits:
                model = OneSidedConformalRegressor(
                    Ridge(), delta=delta, calibration_size=7, calibration_unit=unit, random_state=r
                ).set_fit_request(groups=True)
                search = GridSearchCV(
                    model, {"estimator__alpha": [1.0, 30.0]}, cv=GroupKFold(3)
                ).fit(x[~new], y[~new], groups=subject[~new])
                if unit != "image":
                    assert search.best_estimator_.n_calibration_ == 7  # subjects
                lb = search.best_estimator_.predict_lower(x[new])
                hits[unit].append(np.all(y[new] >= lb))
    sub, img = np.mean(hits["subject-max"]), np.mean(hits["image"])
    se = np.sqrt(0.8 * 0.2 / reps)
    assert 1 - delta - 3 * se <= sub <= 1 - delta + 1 / 8 + 3 * se, sub
    assert img < 1 - delta - 3 * se, img
