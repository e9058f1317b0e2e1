"""make_hip_morphology_cohort: shapes, determinism, prevalences, boxes, rater agreement."""

import joblib
import numpy as np
import pandas as pd
import pytest

from skddh.datasets import crop_hips, make_hip_morphology_cohort
from skddh.datasets._morphology import gwet_ac1_binary, hip_labels

LABELS = ["ischial_spine", "cam", "dysplasia", "any_abnormality"]
#: Gwet's AC1 between the two raters in Khosravi et al.
SEED_AC1 = {"dysplasia": 0.83, "any_abnormality": 0.88, "ischial_spine": 0.75, "cam": 0.61}


@pytest.fixture(scope="module")
def cohort():
    # the study shape; labels and readings do not depend on image_size (own streams)
    return make_hip_morphology_cohort(random_state=0, image_size=64)


def test_shapes_and_dtypes(cohort):
    assert cohort.images.shape == (500, 64, 64) and cohort.images.dtype == np.uint8
    assert len(cohort.radiographs) == 500 and len(cohort.hips) == 1000
    assert (cohort.radiographs["split"] == "holdout").sum() == 100
    assert list(cohort.targets.columns) == cohort.target_names
    assert all(cohort.targets[c].dtype == np.int8 for c in cohort.target_names)
    assert set(cohort.targets.stack().unique()) <= {0, 1}
    assert list(cohort.hips["side"][:2]) == ["R", "L"]
    assert set(cohort.ratings["rater"]) == {"rater_1", "rater_2", "expert"}
    hold = cohort.hips["split"] == "holdout"
    assert cohort.hips.loc[hold, "cam_rater1"].isna().all()
    assert cohort.hips.loc[~hold, "cam_rater1"].notna().all()
    assert "NOT FOR CLINICAL USE" in cohort.DESCR
    ages = cohort.radiographs["age"]
    assert 43 < ages.mean() < 51 and 0.43 < (cohort.radiographs["sex"] == "F").mean() < 0.55


def test_determinism_n_jobs_and_image_size():
    a = make_hip_morphology_cohort(24, image_size=64, n_holdout=6, random_state=3)
    with joblib.parallel_config(backend="threading"):  # no worker start-up in the test
        b = make_hip_morphology_cohort(24, image_size=64, n_holdout=6, random_state=3, n_jobs=2)
    c = make_hip_morphology_cohort(24, image_size=96, n_holdout=6, random_state=3)
    np.testing.assert_array_equal(a.images, b.images)
    pd.testing.assert_frame_equal(a.hips, b.hips)
    pd.testing.assert_frame_equal(a.targets, c.targets)
    pd.testing.assert_frame_equal(a.ratings, c.ratings)
    d = make_hip_morphology_cohort(24, image_size=64, n_holdout=6, random_state=4)
    assert not np.array_equal(a.images, d.images)


def test_prevalences(cohort):
    hold = (cohort.hips["split"] == "holdout").to_numpy()
    prev = cohort.targets[hold].mean()
    ranges = {
        "ischial_spine": (0.18, 0.42),
        "cam": (0.55, 0.80),
        "dysplasia": (0.16, 0.40),
        "any_abnormality": (0.64, 0.88),
    }
    for name, (lo, hi) in ranges.items():
        assert lo < prev[name] < hi, (name, prev[name])
    truth = cohort.truth.mean()
    for name, target in {"ischial_spine": 0.3, "cam": 0.67, "dysplasia": 0.28}.items():
        assert abs(truth[name] - target) < 0.06, (name, truth[name])


def test_boxes_contain_the_head(cohort):
    h = cohort.hips
    size = cohort.images.shape[1]
    assert (h[["x0", "y0"]] >= 0).all().all() and (h[["x1", "y1"]] <= size).all().all()
    assert ((h["head_x"] - h["head_r"] > h["x0"]) & (h["head_x"] + h["head_r"] < h["x1"])).all()
    assert ((h["head_y"] - h["head_r"] > h["y0"]) & (h["head_y"] + h["head_r"] < h["y1"])).all()
    cx, w = (h["x0"] + h["x1"]) / 2, h["x1"] - h["x0"]
    assert ((h["head_x"] - cx).abs() < 0.25 * w).all()
    # right hips on the image left
    assert (h.loc[h["side"] == "R", "head_x"].to_numpy() < size / 2).all()
    # the femoral head is brighter than the soft tissue just lateral to the box
    img = cohort.images.astype(float)
    i, r = h["image_index"].to_numpy(), h["head_r"].to_numpy()
    hx, hy = np.round(h["head_x"]).astype(int), np.round(h["head_y"]).astype(int)
    assert (img[i, hy, hx] > 0).mean() > 0.95 and r.min() > 2


def test_rater_agreement_matches_the_study(cohort):
    train = cohort.hips[cohort.hips["split"] == "train"]
    for name, target in SEED_AC1.items():
        ac1 = gwet_ac1_binary(train[f"{name}_rater1"], train[f"{name}_rater2"])
        assert abs(ac1 - target) < 0.1, (name, ac1)


def test_labels_follow_the_measurements(cohort):
    t = cohort.truth
    np.testing.assert_array_equal(t["cam"], (t["alpha"] > 55).astype(int))
    dys = (t["lcea"] < 20) | ((t["lcea"] < 25) & (t["tonnis"] > 10))
    np.testing.assert_array_equal(t["dysplasia"], dys.astype(int))
    np.testing.assert_array_equal(t["ischial_spine"], (t["spine_mm"] > 0).astype(int))
    assert (t["any_abnormality"] >= t[["ischial_spine", "cam", "dysplasia"]].max(axis=1)).all()
    # hold-out targets are the expert's reading thresholded; train targets the raters' mean
    wide = cohort.ratings.pivot_table(
        index=["hip_id", "rater"], columns="measurement", values="value"
    )
    expert = wide.xs("expert", level="rater")
    hips = cohort.hips.set_index("hip_id")
    np.testing.assert_array_equal(
        hip_labels(expert)["cam"].to_numpy(), hips.loc[expert.index, "cam"].to_numpy()
    )
    mean = (wide.xs("rater_1", level="rater") + wide.xs("rater_2", level="rater")) / 2
    np.testing.assert_array_equal(
        hip_labels(mean)["dysplasia"].to_numpy(), hips.loc[mean.index, "dysplasia"].to_numpy()
    )
    # the expert agrees with the truth far more than the raters do with each other
    hold = cohort.hips["split"] == "holdout"
    assert (cohort.targets.loc[hold, "cam"] == t.loc[hold, "cam"]).mean() > 0.9
    np.testing.assert_array_equal(
        cohort.targets["sex"],
        (cohort.hips["patient"].map(cohort.radiographs.set_index("patient")["sex"]) == "F").astype(
            int
        ),
    )


def test_crop_hips_mirrors_left(cohort):
    crops = crop_hips(cohort.images, cohort.boxes.iloc[:4], size=32)
    assert crops.shape == (4, 32, 32) and crops.dtype == np.uint8
    flipped = crop_hips(cohort.images, cohort.boxes.iloc[:4], size=32, mirror_left=False)
    np.testing.assert_array_equal(crops[0], flipped[0])
    np.testing.assert_array_equal(crops[1], flipped[1][:, ::-1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_patients": 10, "n_holdout": 10}, "n_holdout must be smaller"),
        ({"image_size": 32}, "image_size"),
        ({"image_size": 2048}, "image_size"),
        ({"n_raters": 0}, "n_raters"),
        ({"rater_noise": "loud"}, "rater_noise"),
        ({"n_patients": 1}, "n_patients"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_hip_morphology_cohort(**{"n_patients": 10, "n_holdout": 2, **kwargs})
