"""Tests of skddh.cli: help on every command, bad arguments, fit -> predict on a registry."""

import re
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from skddh import SelectiveImagingPolicy, SimSiamFeaturizer, cli
from skddh.datasets import load_image_table, make_hip_cohort, save_image_table
from skddh.studies import ddh as study


@pytest.mark.parametrize("command", [[], ["reproduce"], ["fit"], ["predict"], ["cohort"]])
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: skddh" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reproduce", "--scale", "huge"], "invalid choice: 'huge'"),
        (["reproduce", "--out", "/proc/skddh_cannot"], "cannot create output directory"),
        (["fit", "no_such_manifest.csv"], "does not exist"),
        (["fit", "README.md", "--delta-alpha", "1.5"], r"must lie in \(0, 1\)"),
        (["predict", "README.md", "--model", "nope.joblib"], "does not exist"),
        (["predict", "README.md", "--device", "tpu"], "invalid choice: 'tpu'"),
        (["fit", "README.md", "--calibration-unit", "hip"], "invalid choice: 'hip'"),
        (["fit", "README.md", "--calibration-size", "1.5"], r"share of subjects .* \(0, 1\)"),
        (["fit", "README.md", "--calibration-size", "0"], "must be >= 1"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_nonzero_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_reproduce_writes_the_report(tmp_path, monkeypatch, capsys):
    tiny = dict(
        image_size=32, n_registry_us=64, n_registry_xr=64, epochs=1, batch_size=32, head_epochs=20
    )
    monkeypatch.setitem(study.SCALES, "small", tiny)
    assert cli.main(["reproduce", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").exists() and (tmp_path / "decision_curve.png").exists()
    assert "Selective imaging policy" in capsys.readouterr().out


def test_fit_then_predict_on_an_image_folder(small_cohort, tmp_path, capsys):
    manifest = save_image_table(small_cohort, tmp_path / "registry")
    model = tmp_path / "policy.joblib"
    argv = ["fit", str(manifest), "--model", str(model), "--image-size", "32", "--epochs", "1"]
    argv += ["--batch-size", "16", "--device", "cpu", "--rule", "or", "--delta-alpha", "0.3"]
    assert cli.main(argv) == 0
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(manifest), "--model", str(model), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert {"lower_alpha", "lower_coverage", "decision"} <= set(table.columns)
    assert len(table) == len(small_cohort.us.images)
    assert set(table["decision"]) <= {"ultrasound suffices", "refer to X-ray"}
    assert "referred to X-ray" in capsys.readouterr().out


# ---- fit: which rows pretrain, train and calibrate; radii at the user's deltas ---------------
@pytest.fixture(scope="module")
def split_cohort():
    """14 subjects split 5 / 6 / 3 (train / calibration / test): enough calibration subjects
    for a finite radius at delta = 0.35."""
    return make_hip_cohort(
        n_subjects=14,
        image_size=32,
        n_registry_us=48,
        n_registry_xr=16,
        split=(5, 6, 3),
        pelvis_images=False,
        random_state=2,
    )


FAST = ["--image-size", "32", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]


@pytest.fixture
def seen(monkeypatch):
    """What SimSiam pretrained on, what the head trained on, what calibrated."""
    record = {}
    fit_encoder, fit_policy = SimSiamFeaturizer.fit, SelectiveImagingPolicy.fit

    def encoder(self, X, y=None):
        record["pretrain"] = np.asarray(X)
        return fit_encoder(self, X, y)

    def policy(self, X, y, groups=None, **kw):
        record["calibration_groups"] = np.asarray(groups)
        return fit_policy(self, X, y, groups=groups, **kw)

    monkeypatch.setattr(SimSiamFeaturizer, "fit", encoder)
    monkeypatch.setattr(SelectiveImagingPolicy, "fit", policy)
    return record


def test_fit_honours_the_split_column_and_prints_radii_at_the_users_deltas(
    split_cohort, tmp_path, capsys, seen
):
    manifest = save_image_table(split_cohort, tmp_path / "registry")
    model = tmp_path / "policy.joblib"
    argv = ["fit", str(manifest), "--model", str(model), *FAST]
    argv += ["--delta-alpha", "0.35", "--delta-coverage", "0.35"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="delta is too small")
        assert cli.main(argv) == 0
    us = load_image_table(manifest, image_size=32).us
    split = np.asarray(us.split)
    # Pretraining saw exactly the training rows: no calibration or test image.
    np.testing.assert_array_equal(seen["pretrain"], us.images[split == "train"])
    fitted = joblib.load(model)["policy"].estimator_
    cal_subjects = np.unique(us.subject[split == "calibration"])
    np.testing.assert_array_equal(np.unique(seen["calibration_groups"]), cal_subjects)
    np.testing.assert_array_equal(fitted.calibration_groups_, cal_subjects)
    assert fitted.calibration_unit == "subject-max" and fitted.bias_correction is None
    out = capsys.readouterr().out
    assert f"{len(cal_subjects)} calibration subjects" in out
    # Radii at 0.35, finite with 6 subjects (the old CLI printed them at 0.10: inf).
    match = re.search(r"alpha (\S+) \(delta 0.35\), coverage (\S+) \(delta 0.35\)", out)
    assert match and all(np.isfinite(float(v)) for v in match.groups())
    np.testing.assert_allclose(float(match[1]), fitted.quantile_["alpha"], atol=0.01)


def test_fit_says_which_delta_is_too_small(split_cohort, tmp_path, capsys):
    manifest = save_image_table(split_cohort, tmp_path / "registry")
    argv = ["fit", str(manifest), "--model", str(tmp_path / "p.joblib"), *FAST]
    assert cli.main([*argv, "--delta-alpha", "0.35", "--delta-coverage", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "coverage inf (delta 0.05 needs at least 19 calibration subjects" in out
    assert "alpha inf" not in out


def test_fit_without_a_split_column_splits_by_subject(split_cohort, tmp_path, capsys, seen):
    manifest = save_image_table(split_cohort, tmp_path / "registry")
    table = pd.read_csv(manifest).drop(columns="split")
    table.to_csv(manifest, index=False)
    model = tmp_path / "policy.joblib"
    argv = ["fit", str(manifest), "--model", str(model), *FAST, "--calibration-size", "4"]
    assert cli.main([*argv, "--calibration-unit", "subject-subsample"]) == 0
    fitted = joblib.load(model)["policy"].estimator_
    assert fitted.calibration_unit == "subject-subsample"
    assert fitted.n_calibration_ == 4  # an integer --calibration-size counts subjects
    assert "4 calibration subjects" in capsys.readouterr().out
    us = load_image_table(manifest, image_size=32).us
    held_out = np.isin(us.subject, fitted.calibration_groups_)
    np.testing.assert_array_equal(seen["pretrain"], us.images[~held_out])


def test_fit_pretrains_on_a_registry_without_held_out_subjects(
    split_cohort, tmp_path, capsys, seen
):
    manifest = save_image_table(split_cohort, tmp_path / "labelled")
    us = load_image_table(manifest, image_size=32).us
    test_subject = us.subject[np.asarray(us.split) == "test"][0]
    images = split_cohort.registry_us.to_numpy()[:20]
    (tmp_path / "reg").mkdir()
    rows = []
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / "reg" / f"r{i}.png")
        subject = test_subject if i == 0 else f"R{i}"  # one image of a test subject
        rows.append({"image_path": f"r{i}.png", "subject_id": subject, "side": "L"})
    registry = tmp_path / "reg" / "registry.csv"
    pd.DataFrame(rows).assign(modality="US").to_csv(registry, index=False)
    argv = ["fit", str(manifest), "--model", str(tmp_path / "p.joblib"), *FAST]
    assert cli.main([*argv, "--registry", str(registry)]) == 0
    np.testing.assert_array_equal(seen["pretrain"], images[1:])
    assert "1 registry images of calibration or test subjects left out" in capsys.readouterr().out


def test_calibration_size_larger_than_the_cohort_fails_before_pretraining(
    split_cohort, tmp_path, capsys, monkeypatch
):
    manifest = save_image_table(split_cohort, tmp_path / "registry")
    pd.read_csv(manifest).drop(columns="split").to_csv(manifest, index=False)

    def no_compute(*args, **kwargs):
        raise AssertionError("pretraining started")

    monkeypatch.setattr(SimSiamFeaturizer, "fit", no_compute)
    argv = ["fit", str(manifest), *FAST, "--calibration-size", "14"]
    assert cli.main(argv) == 2
    assert "asks for 14 calibration subjects" in capsys.readouterr().err


@pytest.mark.parametrize(
    "value, expected",
    [("3", 3), ("0.25", 0.25), ("0", None), ("1.0", None), ("1.5", None), ("two", None)],
)
def test_calibration_size_is_a_count_or_a_share(value, expected, capsys):
    argv = ["fit", "README.md", "--calibration-size", value]
    if expected is None:
        with pytest.raises(SystemExit) as exc:
            cli.build_parser().parse_args(argv)
        assert exc.value.code == 2 and "--calibration-size" in capsys.readouterr().err
    else:
        parsed = cli.build_parser().parse_args(argv).calibration_size
        assert parsed == expected and type(parsed) is type(expected)


# ---- predict on another device -------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted_on_gpu(split_cohort, tmp_path_factory):
    """A policy as `skddh fit --device cuda` leaves it, without needing a GPU: fitted on the
    CPU, then every torch part's device set to cuda (the pickles hold CPU weights either way)."""
    d = tmp_path_factory.mktemp("gpu")
    manifest = save_image_table(split_cohort, d / "registry")
    model = d / "policy.joblib"
    argv = ["fit", str(manifest), "--model", str(model), *FAST, "--delta-alpha", "0.35"]
    assert cli.main([*argv, "--delta-coverage", "0.35"]) == 0
    saved = joblib.load(model)
    parts = cli._torch_parts(saved["policy"])
    assert {type(p).__name__ for p in parts} == {"SimSiamFeaturizer", "MeasurementRegressor"}
    for part in parts:
        part.set_params(device="cuda")
        part.device_ = "cuda"
    joblib.dump(saved, model)
    return manifest, model


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_model_fitted_on_a_gpu_predicts_on_the_cpu(fitted_on_gpu, tmp_path, capsys):
    manifest, model = fitted_on_gpu
    images = load_image_table(manifest, image_size=32).us.images
    with pytest.raises(ValueError, match="CUDA is not available"):
        joblib.load(model)["policy"].predict(images)  # as loaded, it asks for CUDA
    for device in (["--device", "cpu"], []):  # auto is the default
        out = tmp_path / "pred.csv"
        assert (
            cli.main(["predict", str(manifest), "--model", str(model), "--out", str(out), *device])
            == 0
        )
        assert len(pd.read_csv(out)) == len(images)
    argv = ["predict", str(manifest), "--model", str(model), "--device", "cuda"]
    assert cli.main([*argv, "--out", str(tmp_path / "x.csv")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
