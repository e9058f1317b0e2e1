"""Tests of make_bmd_cohort: layout, seeding, the semi-supervised split, T-scores, manifests."""

import numpy as np
import pandas as pd
import pytest
from joblib import parallel_config
from scipy.stats import pearsonr
from sklearn.linear_model import Ridge

from skddh.datasets import load_image_table, make_bmd_cohort, save_image_table
from skddh.datasets._bmd import (
    BMD_YOUNG_ADULT_MEAN,
    BMD_YOUNG_ADULT_SD,
    DESCR,
    OSTEOPOROSIS_T_SCORE,
    t_score,
)

SMALL = dict(n_patients=40, image_size=32)


@pytest.fixture(scope="module")
def cohort():
    return make_bmd_cohort(**SMALL, random_state=0)


@pytest.fixture(scope="module")
def medium():
    return make_bmd_cohort(n_patients=300, image_size=32, random_state=1)


def test_layout(cohort):
    n = int(cohort.patients["n_images"].sum())
    assert cohort.images.shape == (n, 32, 32) and cohort.images.dtype == np.uint8
    assert list(cohort.targets.columns) == ["bmd"] and cohort.targets["bmd"].dtype == float
    assert cohort.labelled.dtype == bool
    for key in ("labelled", "subject", "image_id", "side", "split", "age", "sex"):
        assert len(cohort[key]) == n, key
    assert len(set(cohort.image_id)) == n
    assert set(cohort.split) <= {"train", "test"} and set(cohort.sex) <= {"F", "M"}
    assert list(cohort.truth.columns) == ["bmd", "t_score", "osteoporosis", "age", "sex", "bmi"]
    assert len(cohort.truth) == len(cohort.acquisition) == n
    assert len(cohort.patients) == len(cohort.anatomy) == 40
    assert cohort.DESCR == DESCR and "NOT FOR CLINICAL USE" in DESCR
    assert ((cohort.age >= 50) & (cohort.age <= 90)).all()
    assert cohort.images.std() > 10  # not blank


def test_same_seed_same_cohort_whatever_n_jobs(cohort):
    again = make_bmd_cohort(**SMALL, random_state=0)
    with parallel_config(backend="threading"):
        parallel = make_bmd_cohort(**SMALL, n_jobs=2, random_state=0)
    for other in (again, parallel):
        np.testing.assert_array_equal(other.images, cohort.images)
        pd.testing.assert_frame_equal(other.targets, cohort.targets)
        pd.testing.assert_frame_equal(other.acquisition, cohort.acquisition)
        np.testing.assert_array_equal(other.split, cohort.split)
    different = make_bmd_cohort(**SMALL, random_state=1)
    assert not np.array_equal(different.truth["bmd"][:5], cohort.truth["bmd"][:5])


def test_nan_exactly_on_unlabelled_train_patients(cohort):
    missing = np.isnan(cohort.targets["bmd"].to_numpy())
    np.testing.assert_array_equal(missing, ~cohort.labelled)
    assert (cohort.split[missing] == "train").all()
    assert cohort.labelled[cohort.split == "test"].all()
    assert missing.any() and (~missing & (cohort.split == "train")).any()


def test_split_is_at_patient_level(cohort):
    frame = pd.DataFrame(
        {
            "subject": cohort.subject,
            "split": cohort.split,
            "labelled": cohort.labelled,
            "bmd": cohort.targets["bmd"].fillna(-1.0),
            "true": cohort.truth["bmd"],
        }
    )
    assert (frame.groupby("subject").nunique() == 1).all().all()
    assert (cohort.patients["split"] == "train").sum() == 32  # 0.8 of 40
    dexa = cohort.patients.set_index("subject")["dexa_bmd"]
    lab = cohort.labelled
    np.testing.assert_array_equal(cohort.targets["bmd"][lab], dexa.loc[cohort.subject[lab]])


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 1.0])
def test_labelled_fraction_is_honoured(fraction):
    c = make_bmd_cohort(n_patients=50, image_size=16, labelled_fraction=fraction, random_state=2)
    train = c.patients[c.patients["split"] == "train"]
    assert train["labelled"].sum() == int(np.floor(fraction * len(train) + 0.5))
    assert c.patients.loc[c.patients["split"] == "test", "labelled"].all()
    # who is labelled changes; the DEXA reads and the images do not
    base = make_bmd_cohort(n_patients=50, image_size=16, random_state=2)
    np.testing.assert_array_equal(c.patients["dexa_bmd"], base.patients["dexa_bmd"])
    np.testing.assert_array_equal(c.images, base.images)


def test_t_score_and_osteoporosis_follow_the_constants(cohort):
    assert BMD_YOUNG_ADULT_MEAN == 0.858 and BMD_YOUNG_ADULT_SD == 0.120
    assert OSTEOPOROSIS_T_SCORE == -2.5
    assert t_score(0.558) == pytest.approx(-2.5)
    truth = cohort.truth
    expected = (truth["bmd"] - BMD_YOUNG_ADULT_MEAN) / BMD_YOUNG_ADULT_SD
    np.testing.assert_allclose(truth["t_score"], expected)
    np.testing.assert_allclose(t_score(truth["bmd"]), expected)
    np.testing.assert_array_equal(truth["osteoporosis"], expected <= OSTEOPOROSIS_T_SCORE)


def test_prevalence_and_dexa_at_default_size():
    c = make_bmd_cohort(image_size=16, random_state=0)
    p = c.patients
    assert 1000 <= len(c.images) <= 1180  # the paper's 1,090 images of 819 patients
    assert 0.15 <= p["osteoporosis"].mean() <= 0.35
    assert p.loc[p["sex"] == "F", "bmd"].mean() < p.loc[p["sex"] == "M", "bmd"].mean()
    assert pearsonr(p["dexa_bmd"], p["bmd"])[0] > 0.98
    cv = np.std(p["dexa_bmd"] / p["bmd"] - 1.0)
    assert 0.015 < cv < 0.025  # dexa_precision=0.02
    assert pearsonr(p["bmi"], p["bmd"])[0] > 0.1  # heavier patients, denser bone


def test_images_carry_the_signal_and_nuisances_do_not(medium):
    x = medium.images.astype(float).reshape(len(medium.images), 16, 2, 16, 2).mean((2, 4))
    x = (x.reshape(len(x), -1) - x.mean()) / x.std()
    y = medium.truth["bmd"].to_numpy()
    tr, te = medium.split == "train", medium.split == "test"
    r = pearsonr(Ridge(alpha=100.0).fit(x[tr], y[tr]).predict(x[te]), y[te])[0]
    assert 0.4 < r < 0.95  # learnable, not trivial
    for col in ("rotation_deg", "femoral_rotation_deg", "shift_x_mm", "gamma", "magnification"):
        assert abs(pearsonr(medium.acquisition[col], y)[0]) < 0.15, col


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_patients=0), "n_patients"),
        (dict(labelled_fraction=0.0), "labelled_fraction"),
        (dict(labelled_fraction=1.5), "labelled_fraction"),
        (dict(image_size=8), "image_size"),
        (dict(images_per_patient=4), "images_per_patient"),
        (dict(dexa_precision=-0.01), "dexa_precision"),
        (dict(split=(0.5, 0.3, 0.2)), "two non-negative sizes"),
        (dict(split=(-1, 2)), "two non-negative sizes"),
        (dict(split=(0, 0)), "two non-negative sizes"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_bmd_cohort(**{"n_patients": 5, "image_size": 16, **kwargs})


def test_manifest_round_trip(cohort, tmp_path):
    manifest = save_image_table(cohort, tmp_path)
    raw = pd.read_csv(manifest)
    assert set(raw["modality"]) == {"XR"} and "ai" not in raw.columns
    np.testing.assert_array_equal(raw["bmd"].isna(), ~cohort.labelled)  # blank if unlabelled
    loaded = load_image_table(manifest, image_size=32)
    assert len(loaded.us.images) == 0
    xr = loaded.xr
    np.testing.assert_array_equal(xr.images, cohort.images)
    pd.testing.assert_frame_equal(xr.targets, cohort.targets, check_dtype=False)
    for key in ("subject", "side", "image_id", "split"):
        np.testing.assert_array_equal(xr[key], cohort[key], err_msg=key)
    np.testing.assert_allclose(xr.age_months * 30.4375 / 365.25, cohort.age)
    np.testing.assert_allclose(xr.pixel_spacing_mm, cohort.acquisition["pixel_spacing_mm"])


def test_manifest_refuses_impossible_bmd(cohort, tmp_path):
    manifest = save_image_table(cohort, tmp_path)
    table = pd.read_csv(manifest)
    table.loc[3, "bmd"] = 5.0
    with pytest.raises(ValueError, match=r"row 3 column 'bmd'.*g/cm\^2"):
        load_image_table(table, tmp_path, image_size=32)
