"""
Hip morphology on AP pelvis radiographs: localise, classify, report
===================================================================

skddh's second system follows Khosravi et al. (Mayo Clinic): on an adult AP pelvis
radiograph, find both hip joints, then classify each with one multitask network: ischial
spine sign, cam deformity, dysplasia and "any abnormality", with the patient's sex as an
auxiliary output. The study reports the raters' agreement (Gwet's AC1), a clinical table
per label (accuracy, sensitivity, specificity, PPV, NPV, F1, AUROC), ROC curves and
Grad-CAM maps.

This tutorial runs the whole pipeline on a small synthetic cohort, on a laptop CPU in one to
two minutes, and says what each output shows (the script checks its words against its
numbers). The full study is ``skddh reproduce morphology``
(500 patients, three seeds).
"""

# %%
# A cohort with two raters and an expert
# --------------------------------------
# ``make_hip_morphology_cohort`` draws each hip's measurements (alpha angle, centre-edge and
# Tonnis angles, ischial spine projection, joint space, osteophytes), renders the radiograph
# from them, and lets two simulated raters read the training radiographs with noise; the
# hold-out is read by one "expert". Each radiograph comes with a box per hip.
import matplotlib.pyplot as plt
import numpy as np

from skddh import make_hip_morphology_cohort

cohort = make_hip_morphology_cohort(160, image_size=128, n_holdout=50, random_state=0)
hips = cohort.hips
train, holdout = (hips["split"] == s for s in ("train", "holdout"))
print(f"{len(cohort.images)} radiographs, {len(hips)} hips; {holdout.sum()} hips in the hold-out")

fig, ax = plt.subplots(figsize=(4, 4))
ax.imshow(cohort.images[0], cmap="gray")
for b in cohort.boxes[cohort.boxes["image_index"] == 0].itertuples():
    ax.add_patch(plt.Rectangle((b.x0, b.y0), b.x1 - b.x0, b.y1 - b.y0, fill=False, ec="y"))
ax.set_title("One synthetic AP pelvis and its hip boxes")
ax.set_axis_off()

# %%
# How much do the raters agree?
# -----------------------------
# :func:`~skddh.gwet_ac1` on the two raters' labels of the training hips, beside the study's
# values. The simulated raters' noise was tuned to them, so the cohort is as ambiguous as the
# real one: cam is the label the raters disagree on most.
import pandas as pd

from skddh import gwet_ac1

labels = ["ischial_spine", "cam", "dysplasia", "any_abnormality"]
study_ac1 = {"ischial_spine": 0.75, "cam": 0.61, "dysplasia": 0.83, "any_abnormality": 0.88}
ac1 = pd.DataFrame(
    {
        label: {
            "AC1": gwet_ac1(
                hips.loc[train, [f"{label}_rater1", f"{label}_rater2"]].astype(float),
                categories=[0, 1],
            ).coefficient,
            "study": study_ac1[label],
        }
        for label in labels
    }
).T
print(ac1.round(2))

# %%
# Joint localisation
# ------------------
# :class:`~skddh.HipJointLocalizer` learns where the hips are from the training radiographs
# and their boxes (a heatmap per hip on a small CNN); ``predict`` returns one right and one
# left box per radiograph, ``transform`` the crops (the left hip mirrored).
from skddh import HipJointLocalizer
from skddh.models._localize import box_iou

rows_tr = np.flatnonzero(cohort.radiographs["split"] == "train")
rows_ho = np.flatnonzero(cohort.radiographs["split"] == "holdout")
boxes_tr = cohort.boxes[cohort.boxes["image_index"].isin(rows_tr)]
boxes_tr = boxes_tr.assign(
    image_index=boxes_tr["image_index"].map(dict(zip(rows_tr, range(len(rows_tr)))))
)
localizer = HipJointLocalizer(image_size=64, epochs=6, batch_size=8, device="cpu", random_state=0)
localizer.fit(cohort.images[rows_tr], boxes_tr)  # boxes index the rows of the images passed
found = localizer.predict(cohort.images[rows_ho])
true = cohort.boxes[cohort.boxes["image_index"].isin(rows_ho)]
iou = box_iou(found[["x0", "y0", "x1", "y1"]], true[["x0", "y0", "x1", "y1"]])
print(f"hold-out boxes: mean IoU {iou.mean():.2f}, worst {iou.min():.2f}")

# %%
# The multitask classifier
# ------------------------
# :class:`~skddh.MorphologyClassifier` fine-tunes one timm network (ConvNeXt-Tiny by
# default; a ResNet-10t here, for the CPU) with a sigmoid output per label and the patient's
# sex as an auxiliary output. It trains on crops of the annotated boxes; the labels are the
# raters' adjudicated readings. Thresholds come from a patient-level validation split
# (Youden's J). Crops of 32 px (the hips' own resolution on these 128 px radiographs) keep
# the training to about a minute on a CPU.
from skddh import MorphologyClassifier
from skddh.datasets import crop_hips

crops_tr = crop_hips(cohort.images, cohort.boxes, size=32)[train.to_numpy()]
classifier = MorphologyClassifier(
    backbone="resnet10t",
    auxiliary=("sex",),
    pos_weight="balanced",
    threshold="youden",
    validation_size=0.2,
    epochs=30,
    batch_size=16,
    lr=2e-3,
    device="cpu",
    random_state=0,
)
classifier.fit(crops_tr, hips.loc[train, [*labels, "sex"]], groups=hips.loc[train, "patient"])

# %%
# The whole pipeline on the hold-out
# ----------------------------------
# :func:`~skddh.predict_hip_morphology` localises, crops and classifies; the hold-out's
# labels are the expert's. :func:`~skddh.clinical_report` gives the study's table with
# patient-level bootstrap intervals.
from skddh import clinical_report, predict_hip_morphology

pred = predict_hip_morphology(localizer, classifier, cohort.images[rows_ho])
y_ho = hips.loc[holdout, labels].reset_index(drop=True)
scores = pred[[f"p_{label}" for label in labels]].set_axis(labels, axis=1)
report = clinical_report(
    y_ho,
    scores,
    threshold=dict(zip(classifier.classes_, classifier.thresholds_)),
    groups=hips.loc[holdout, "patient"].to_numpy(),
    n_bootstraps=500,
    random_state=0,
)
table = report.pivot(index="label", columns="metric", values="value").loc[labels]
print(table.round(2))

# %%
# What the table shows: on this small draw (100 hold-out hips of 50 patients, so wide
# intervals), every label is found better than chance. Dysplasia, drawn largest (the
# acetabular roof over the head), is found best; the ischial spine sign and "any abnormality"
# clearly better than chance; cam least well: its bump is a few pixels of contour at the
# head-neck junction of a 32 px crop, and the raters agree on it least (AC1 above). The
# study's report (``skddh reproduce morphology``, 500 patients, three seeds) gives the same
# order.
auroc = table["auroc"]
print(auroc.round(3).to_dict())
assert auroc["dysplasia"] > 0.85 and auroc["dysplasia"] == auroc.max()
assert auroc["ischial_spine"] > 0.65 and auroc["any_abnormality"] > 0.6
assert 0.55 < auroc["cam"] < auroc["dysplasia"]

# %%
# ROC curves, through scikit-learn's display:
from sklearn.metrics import RocCurveDisplay

fig, ax = plt.subplots(figsize=(4.5, 4.5))
for label in labels:
    RocCurveDisplay.from_predictions(y_ho[label], scores[label], name=label, ax=ax)
ax.plot([0, 1], [0, 1], ls=":", c="0.5")

# %%
# Where does the network look?
# ----------------------------
# :class:`~skddh.GradCAMDisplay` overlays the Grad-CAM map of one label on its crops (any
# label of a multi-label model, not the argmax). On 32 px crops the last stage of the
# ResNet is a single cell, so the maps come from the stage before it (``target_layer``,
# 4 x 4 cells). For dysplasia the weight should sit on the lateral edge of the acetabular
# roof, above and lateral to the head (lateral is on the left of every crop); the white
# outline is that region (:func:`skddh.studies.morphology.label_region_masks`).
from skddh import GradCAMDisplay
from skddh.studies.morphology import label_region_masks

crops_ho = crop_hips(cohort.images, cohort.boxes, size=32)[holdout.to_numpy()]
region = label_region_masks(hips[holdout], 32)["dysplasia"]
positive = np.flatnonzero(y_ho["dysplasia"] == 1)
disp = GradCAMDisplay.from_estimator(
    classifier, crops_ho[positive[:4]], label="dysplasia", target_layer="0.layer2"
)
for ax, mask in zip(disp.axes_, region[positive[:4]]):
    ax.contour(mask, levels=[0.5], colors="white", linewidths=1)

# %%
# Over every dysplastic hold-out hip, the map's mean weight inside that region against
# outside it:
from skddh.inspection import grad_cam

maps = grad_cam(classifier, crops_ho[positive], label="dysplasia", target_layer="0.layer2")
inside = np.mean([m[r].mean() for m, r in zip(maps, region[positive])])
outside = np.mean([m[~r].mean() for m, r in zip(maps, region[positive])])
print(f"dysplasia map: {inside / outside:.1f} times as much weight per pixel in the region")
assert inside > outside
