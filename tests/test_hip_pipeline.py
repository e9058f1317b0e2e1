"""Tests of skddh.models._hip_pipeline: predict_hip_morphology (tiny CPU models)."""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from skddh.datasets import crop_hips, make_hip_morphology_cohort
from skddh.models import HipJointLocalizer, MorphologyClassifier, predict_hip_morphology


@pytest.fixture(scope="module")
def fitted():
    cohort = make_hip_morphology_cohort(10, image_size=64, n_holdout=2, random_state=0)
    loc = HipJointLocalizer(image_size=64, epochs=1, batch_size=4, device="cpu", random_state=0)
    loc.fit(cohort.images, cohort.boxes)
    crops = crop_hips(cohort.images, cohort.boxes, size=32)
    y = cohort.targets[["cam", "dysplasia"]]
    clf = MorphologyClassifier(
        backbone="resnet10t", epochs=1, batch_size=8, device="cpu", random_state=0
    ).fit(crops, y)
    return cohort, loc, clf


def test_one_row_per_hip_and_the_classifier_scores_the_localizers_crops(fitted):
    cohort, loc, clf = fitted
    out = predict_hip_morphology(loc, clf, cohort.images[:3])
    assert out["side"].tolist() == ["R", "L"] * 3
    assert out["image_index"].tolist() == [0, 0, 1, 1, 2, 2]
    expected = clf.predict_proba(loc.crop(cohort.images[:3], 32))
    np.testing.assert_allclose(out[["p_cam", "p_dysplasia"]], expected, rtol=1e-6)
    np.testing.assert_array_equal(out[["cam", "dysplasia"]], expected >= clf.thresholds_)
    # uint16 radiographs are rescaled to the same crops
    wide = cohort.images[:3].astype(np.uint16) * 257
    np.testing.assert_allclose(predict_hip_morphology(loc, clf, wide)["p_cam"], out["p_cam"])


def test_unfitted_models_and_bad_radiographs_are_named(fitted):
    cohort, loc, clf = fitted
    with pytest.raises(NotFittedError):
        predict_hip_morphology(HipJointLocalizer(), clf, cohort.images[:1])
    with pytest.raises(NotFittedError):
        predict_hip_morphology(loc, MorphologyClassifier(), cohort.images[:1])
    with pytest.raises(ValueError, match="shape"):
        predict_hip_morphology(loc, clf, cohort.images[0])
