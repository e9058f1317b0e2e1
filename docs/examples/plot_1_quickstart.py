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
# training subjects and calibrates on a subject-level split of the data it is given.
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import make_pipeline

from skddh import MeasurementRegressor, OneSidedConformalRegressor, SelectiveImagingPolicy

model = OneSidedConformalRegressor(
    make_pipeline(FrozenEstimator(encoder), MeasurementRegressor(device="cpu", random_state=0)),
    calibration_size=0.25,
    random_state=0,
)
policy = SelectiveImagingPolicy(model, rule="alpha", delta=0.2)
fit_rows = us.split != "test"
policy.fit(us.images[fit_rows], us.targets[fit_rows], groups=us.subject[fit_rows])

# %%
# Decide on new subjects
# ----------------------
# ``predict_lower`` gives the calibrated bounds, ``predict`` the decision (1 = ultrasound
# suffices). A hip whose bounds cannot be computed is referred.
#
# Two epochs on 32 px images teach the encoder little, so the head predicts close to the
# average hip and the bounds are wide: the policy then passes few hips. That is the
# fail-safe working, not a bug. ``skddh reproduce --scale paper`` on a GPU trains at the
# paper's sizes.
test = us.split == "test"
bounds = policy.predict_lower(us.images[test])
decision = policy.predict(us.images[test])
print(bounds.head().round(1))
print(f"passed on ultrasound: {decision.mean():.2f}; referred to X-ray: {1 - decision.mean():.2f}")
abnormal = policy.abnormal(us.targets[test])
print(f"missed findings (passed yet truly below a threshold): {np.mean(decision & abnormal):.3f}")
