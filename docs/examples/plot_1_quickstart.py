"""
Quickstart: from images to a selective imaging decision
=======================================================

The whole pipeline on a small synthetic cohort: pretrain an encoder on unlabelled
ultrasound, train a measurement head on the training subjects, calibrate lower bounds on
held-out subjects, and let the policy decide "ultrasound suffices" or "refer to X-ray".
Images are 32 px and training is short so that this runs on a laptop CPU in seconds.
"""

# %%
# A paired cohort
# ---------------
# ``make_hip_cohort`` draws a synthetic study shaped like the paper's: subjects split into
# training, calibration and test, ultrasound images with Graf alpha, beta and femoral head
# coverage, and an unlabelled registry for self-supervised pretraining.
import numpy as np
import pandas as pd

from skddh import make_hip_cohort

# sphinx_gallery_thumbnail_path = "images/cohort_examples.png"

cohort = make_hip_cohort(image_size=32, n_registry_us=256, n_registry_xr=16, random_state=0)
us = cohort.us
print(us.targets.head())
print(np.unique(us.split, return_counts=True))

# %%
# Pretrain an encoder on the unlabelled registry
# ----------------------------------------------
# SimSiam needs no labels. ``device="auto"`` would use a GPU when there is one.
from skddh import SimSiamFeaturizer

encoder = SimSiamFeaturizer(
    image_size=32, epochs=2, batch_size=64, device="cpu", random_state=0
).fit(cohort.registry_us)
print(encoder.history_)

# %%
# Head, bounds and policy
# -----------------------
# The frozen encoder and the head form one pipeline; the conformal regressor fits it on the
# training subjects and calibrates on a subject-level split of the data it is given (here 10
# of the 37 subjects outside the test split).
#
# The policy reads two lower bounds, Graf alpha and femoral head coverage, and passes a hip
# on ultrasound alone only when *both* clear their thresholds (``rule="and"``: alpha >= 60
# deg, coverage >= 50 %). The same two thresholds define a hip as *abnormal*: true alpha
# below 60 or true coverage below 50. A passed abnormal hip, a *missed finding*, then needs
# at least one bound above its true value, so for a new subject's hip
# ``P(missed finding) <= delta_alpha + delta_coverage = 0.2`` (a union bound; see the
# :doc:`/user_guide`). The ``"alpha"`` rule reads alpha only: it would pass hips whose
# coverage is below 50 %, and nothing bounds those misses.
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import make_pipeline

from skddh import MeasurementRegressor, OneSidedConformalRegressor, SelectiveImagingPolicy

model = OneSidedConformalRegressor(
    make_pipeline(FrozenEstimator(encoder), MeasurementRegressor(device="cpu", random_state=0)),
    calibration_size=0.25,
    random_state=0,
)
policy = SelectiveImagingPolicy(
    model,
    rule="and",
    delta={"alpha": 0.1, "coverage": 0.1},
    thresholds={"alpha": 60.0, "coverage": 50.0},
)
fit_rows = us.split != "test"
policy.fit(us.images[fit_rows], us.targets[fit_rows], groups=us.subject[fit_rows])
n_calibration = policy.estimator_.n_calibration_
print(f"calibration subjects: {n_calibration} of {len(np.unique(us.subject[fit_rows]))}")
assert n_calibration == 10 and len(np.unique(us.subject[fit_rows])) == 37

# %%
# Decide on new subjects
# ----------------------
# ``predict_lower`` gives the calibrated bounds, ``predict`` the decision (1 = ultrasound
# suffices). A hip whose bounds cannot be computed is referred. We also compare the head's
# error with that of predicting the training mean for every hip, and count how often each
# bound lies at or below the true value.
test = us.split == "test"
truth = us.targets[test]
bounds = policy.predict_lower(us.images[test])
decision = policy.predict(us.images[test]).astype(bool)
abnormal = policy.abnormal(truth)
print(bounds[["alpha", "coverage"]].head().round(1))

prediction = pd.DataFrame(
    policy.estimator_.predict(us.images[test]), columns=policy.estimator_.target_names_
)
report = pd.DataFrame(
    {
        "head MAE": (prediction - truth.to_numpy()).abs().mean(),
        "training-mean MAE": (us.targets[fit_rows].mean() - truth).abs().mean(),
        "bound covers truth": (truth.to_numpy() >= bounds.to_numpy()).mean(axis=0),
    }
).loc[["alpha", "coverage"]]
print(report.round(3))
missed = np.mean(decision & abnormal)
print(f"abnormal test hips: {abnormal.mean():.2f}")
print(f"passed on ultrasound: {decision.mean():.2f}; referred to X-ray: {1 - decision.mean():.2f}")
print(f"missed findings (passed yet truly below a threshold): {missed:.3f}")

# %%
# What the output shows
# ---------------------
# Two epochs on 32 px images teach the encoder almost nothing: the head's error is larger
# than that of predicting the training mean for every hip (it fits noise in features that
# carry almost no signal). The conformal bounds are
# honest about it: they are wide (nearly every alpha bound is below 60 deg, most well below),
# and on these test hips both bounds lie at or below the true value at least as often as
# the nominal 90 %. So the policy passes none of the test hips and refers all of them,
# abnormal or not (about 29 % are abnormal), and it misses no finding. That is the fail-safe
# working, not a bug: a model that cannot tell hips apart passes nothing. A better model
# gives tighter bounds and passes more hips under the same guarantee; the tutorial
# :ref:`sphx_glr_auto_examples_plot_2_tuning_policy.py` shows one, and
# ``skddh reproduce --scale paper`` on a GPU trains at the paper's sizes.
assert (report["head MAE"] > 0.9 * report["training-mean MAE"]).all(), report
assert (bounds["alpha"] < 60).mean() > 0.95 and bounds["alpha"].median() < 55, bounds["alpha"]
assert (report["bound covers truth"] >= 0.9).all(), report
assert 0.2 < abnormal.mean() < 0.4, abnormal.mean()
assert decision.sum() == 0 and missed == 0, (decision.mean(), missed)
