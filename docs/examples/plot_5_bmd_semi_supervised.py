"""
Bone mineral density with few DEXA labels: self-training and the adaptive triplet loss
=======================================================================================

skddh's third system follows Zheng et al. (MICCAI 2021): estimate femoral-neck bone mineral
density (BMD) from a hip radiograph, when only some radiographs have a DEXA value. A
regressor is trained on the labelled images, with an adaptive triplet loss that orders its
hidden representation by BMD, and then self-trained on the unlabelled images with
pseudo-labels that are revised round after round.

This tutorial runs the four variants on a small synthetic cohort, reads the agreement with
DEXA as a clinician would (Pearson r, Bland-Altman) and the osteoporosis screening it gives
(T-score <= -2.5). It is small so that it runs on a laptop CPU in about a minute; the
full study is ``skddh reproduce bmd`` (three seeds, three labelled fractions).

.. note::
   A patent application covers the method of Zheng et al. (US 2022/0309651 A1); check it
   before commercial use of the triplet loss.
"""

# %%
# A cohort with a quarter of the DEXA values
# ------------------------------------------
# ``make_bmd_cohort`` draws patients (age, sex, body size) with femoral-neck BMD from
# published reference data, renders hip radiograph crops whose cortex and trabeculae follow
# BMD (exposure, soft tissue, rotation and noise vary apart from it), and keeps the DEXA read
# of a ``labelled_fraction`` of the training patients. The others' targets are NaN: that is
# how :class:`~skddh.SelfTrainingRegressor` knows a row is unlabelled.
import numpy as np

from skddh import make_bmd_cohort

cohort = make_bmd_cohort(200, image_size=32, labelled_fraction=0.25, random_state=0)
train, test = cohort.split == "train", cohort.split == "test"
y = cohort.targets["bmd"].to_numpy()
print(f"{train.sum()} training images, {np.isnan(y[train]).sum()} of them without DEXA")
share = cohort.truth["osteoporosis"][test].mean()
print(f"{test.sum()} test images; osteoporosis (T <= -2.5) in {share:.0%} of them")

# %%
# Inputs
# ------
# On a CPU the regressor is the MLP head on the images average-pooled to 16 x 16 pixels
# (:func:`skddh.studies.bmd.pooled_pixels`); on a GPU, ``skddh reproduce bmd --scale paper``
# fine-tunes a CNN on the images instead (:class:`~skddh.FineTuningRegressor`), with the same
# ``triplet_weight`` option.
from skddh.studies.bmd import pooled_pixels

X = pooled_pixels(cohort.images, 16)
labelled = train & ~np.isnan(y)

# %%
# Four variants
# -------------
# ``triplet_weight`` adds the adaptive triplet loss to the head's L1 loss.
# :class:`~skddh.SelfTrainingRegressor` wraps any regressor; it takes the patients as
# ``groups``, so that the models that pseudo-label an image never saw its patient.
from skddh import MeasurementRegressor, SelfTrainingRegressor, regression_agreement


def head(triplet_weight=0.0):
    return MeasurementRegressor(
        hidden=64, epochs=60, triplet_weight=triplet_weight, device="cpu", random_state=0
    )


def self_trained(base):
    return SelfTrainingRegressor(base, n_folds=3, n_repeats=2, max_iter=2, random_state=0)


models = {
    "supervised": head().fit(X[labelled], y[labelled]),
    "triplet": head(2.0).fit(X[labelled], y[labelled]),
    "self_training": self_trained(head()).fit(X[train], y[train], groups=cohort.subject[train]),
    "both": self_trained(head(2.0)).fit(X[train], y[train], groups=cohort.subject[train]),
}

import pandas as pd

rows = {name: regression_agreement(y[test], m.predict(X[test])) for name, m in models.items()}
table = pd.DataFrame(rows).T[["pearson_r", "pearson_r_low", "pearson_r_high", "mae", "bias"]]
print(table.round(3))

# %%
# One draw of 200 patients is noisy: the 95 % interval of each r is wide, and the study
# reports the methods over three seeds for that reason. On this draw:
gain = table.loc["both", "pearson_r"] - table.loc["supervised", "pearson_r"]
print(f"self-training + triplet loss vs supervised-only: r {gain:+.3f}")

# %%
# What self-training did
# ----------------------
# Each round pseudo-labels every unlabelled image from models that did not see its patient,
# and trusts the half whose models agree best. In this synthetic cohort the hidden DEXA of
# the unlabelled images is known, so the pseudo-labels can be checked.
st = models["both"]
print(st.history_)
hidden = make_bmd_cohort(200, image_size=32, labelled_fraction=1.0, random_state=0)
truth = hidden.targets["bmd"].to_numpy()[train]
unl = np.isnan(y[train])
err = np.abs(st.pseudo_targets_[unl, 0] - truth[unl])
trusted = st.trusted_[unl]
print(f"pseudo-label MAE: trusted {err[trusted].mean():.4f}, left out {err[~trusted].mean():.4f}")

# %%
# Agreement with DEXA: Bland-Altman
# ---------------------------------
# The differences against their means, the bias and the 95 % limits of agreement with their
# confidence intervals (Bland and Altman 1999).
import matplotlib.pyplot as plt

from skddh import BlandAltmanDisplay

fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
for ax, name in zip(axes, ["supervised", "both"]):
    BlandAltmanDisplay.from_estimator(
        models[name], X[test], y[test], ax=ax, name=name, reference_name="DEXA", units="g/cm$^2$"
    )
    ax.set_title(name)
fig.tight_layout()

# %%
# Osteoporosis screening
# ----------------------
# The T-score of the predicted BMD against the DEXA T-score, at the WHO threshold T <= -2.5.
from skddh.studies.bmd import screening

print(pd.DataFrame({n: screening(y[test], m.predict(X[test])) for n, m in models.items()}).T)
