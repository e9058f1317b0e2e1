"""Tests of skddh.cli: help on every command, bad arguments, fit -> predict on a registry;
errors as one line, Ctrl-C, atomic outputs and the INCOMPLETE marker of reproduce."""

import errno
import json
import os
import pickle
import re
import tempfile
import warnings
import zipfile

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from skddh import (
    GrafAlphaThreshold,
    MeasurementRegressor,
    SelectiveImagingPolicy,
    SimSiamFeaturizer,
    cli,
)
from skddh.datasets import load_image_table, make_hip_cohort, save_image_table
from skddh.model_file import load_policy, save_policy
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
        (["predict", "README.md", "--model", "nope.skddh"], "does not exist"),
        (["predict", "README.md", "--device", "tpu"], "invalid choice: 'tpu'"),
        (["fit", "README.md", "--calibration-unit", "hip"], "invalid choice: 'hip'"),
        (["fit", "README.md", "--calibration-size", "1.5"], r"share of subjects .* \(0, 1\)"),
        (["fit", "README.md", "--calibration-size", "0"], "must be >= 1"),
        (["frobnicate"], "invalid choice"),
        (["fit", "README.md", "--device", "gpu"], "invalid choice: 'gpu'"),
        (["reproduce", "--device", "cuda:x"], "invalid choice: 'cuda:x'"),
        (["fit", "README.md", "--image-size", "4"], "must be >= 16, got 4: the encoder"),
        (["fit", "README.md", "--seed", "-5"], r"seed must lie in \[0, "),
        (["reproduce", "--seed", "-5"], r"seed must lie in \[0, "),
        (["reproduce", "--seeds", "0", "x"], "'x' is not an integer"),
        (["reproduce", "--seeds"], "expected at least one argument"),
        (["cohort", "--seed", "2147483648"], r"seed must lie in \[0, "),
        (["cohort", "--n-jobs", "0"], "must not be 0"),
        (["fit", "README.md", "--batch-size", "1"], "must be >= 2"),
        (["fit", "README.md", "--delta-coverage", "0"], r"must lie in \(0, 1\)"),
        (["fit", "README.md", "--image-root", "no_such_dir"], "does not exist"),
        (["fit", "README.md", "--model", "no_such_dir/m.skddh"], "'no_such_dir' .* not exist"),
        (["fit", "README.md", "--model", "README.md/m.skddh"], "is not a directory"),
        (["fit", "README.md", "--model", "skddh"], "is a directory"),
        (["predict", "README.md", "--model", "README.md", "--out", "nodir/p.csv"], "not exist"),
        (["reproduce", "--out", "README.md/out"], "cannot create output directory"),
        (["cohort", "--out", "README.md"], "cannot create output directory"),
    ],
)
def test_bad_arguments_exit_nonzero_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err.splitlines()[-1]) and "Traceback" not in err
    assert err.splitlines()[-1].startswith("skddh")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["reproduce"], ["fit", "README.md"], ["predict", "README.md"]])
def test_cuda_is_refused_where_it_is_not_available(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, "--device", "cuda:0"])
    assert exc.value.code == 2
    assert "CUDA is not available here" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["fit", "README.md", "--model", "{d}/m.skddh"],
        ["predict", "README.md", "--model", "README.md", "--out", "{d}/p.csv"],
        ["reproduce", "--out", "{d}"],
        ["cohort", "--out", "{d}/sub"],
    ],
)
@pytest.mark.parametrize("how", ["permissions", "read-only mount"])
def test_a_read_only_output_directory_is_refused_before_any_work(
    argv, how, tmp_path, monkeypatch, capsys
):
    # Tests run as root, where chmod does not stop writes: make os.access say no, or (a
    # read-only mount, which os.access may not see) make creating a file fail.
    ro = tmp_path / "ro"
    ro.mkdir()
    access, temporary_file = os.access, tempfile.TemporaryFile

    def no_access(path, mode, **kwargs):
        return False if str(path).startswith(str(ro)) else access(path, mode, **kwargs)

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(ro)):
            raise OSError(errno.EROFS, "Read-only file system")
        return temporary_file(*args, dir=dir, **kwargs)

    if how == "permissions":
        monkeypatch.setattr(os, "access", no_access)
    else:
        monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(SystemExit) as exc:
        cli.main([a.format(d=ro) for a in argv])
    assert exc.value.code == 2
    assert "not writable" in capsys.readouterr().err.splitlines()[-1]


def _one_error_line(capsys, command):
    """The command's stderr: exactly one line, ``skddh <command>: error: ...``."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"skddh {command}: error: "), err
    return lines[0]


def test_reproduce_writes_the_report(tmp_path, monkeypatch, capsys):
    tiny = dict(
        image_size=32, n_registry_us=64, n_registry_xr=64, epochs=1, batch_size=32, head_epochs=20
    )
    monkeypatch.setitem(study.SCALES, "small", tiny)
    assert cli.main(["reproduce", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").exists() and (tmp_path / "decision_curve.png").exists()
    assert not (tmp_path / "INCOMPLETE").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    assert "Selective imaging policy" in capsys.readouterr().out


def test_fit_then_predict_on_an_image_folder(small_cohort, tmp_path, capsys):
    manifest = save_image_table(small_cohort, tmp_path / "registry")
    model = tmp_path / "policy.skddh"
    argv = ["fit", str(manifest), "--model", str(model), "--image-size", "32", "--epochs", "1"]
    # One calibration subject (the cohort's default split): 1/(1+1) is the smallest delta.
    argv += ["--batch-size", "16", "--device", "cpu", "--rule", "or", "--delta-alpha", "0.5"]
    assert cli.main([*argv, "--delta-coverage", "0.5"]) == 0
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(manifest), "--model", str(model), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert {"lower_alpha", "lower_coverage", "decision"} <= set(table.columns)
    assert len(table) == len(small_cohort.us.images)
    assert set(table["decision"]) <= {"ultrasound suffices", "refer to X-ray"}
    assert "referred to X-ray" in capsys.readouterr().out


def test_fit_fine_tuned_then_predict(small_cohort, tmp_path, capsys):
    manifest = save_image_table(small_cohort, tmp_path / "registry")
    model = tmp_path / "tuned.skddh"
    argv = ["fit", str(manifest), "--model", str(model), "--image-size", "32", "--epochs", "1"]
    argv += ["--batch-size", "16", "--device", "cpu", "--delta-alpha", "0.5"]
    argv += ["--delta-coverage", "0.5", "--us-model", "finetune", "--finetune-epochs", "1"]
    assert cli.main(argv) == 0
    assert "fine-tuning encoder and head" in capsys.readouterr().out
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(manifest), "--model", str(model), "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == len(small_cohort.us.images)


def test_fit_scratch_skips_pretraining_then_predicts(small_cohort, tmp_path, capsys, monkeypatch):
    """``--us-model scratch`` trains a fresh encoder: SimSiam never runs, the saved model
    carries the test-time views and loads for ``predict``."""

    def no_pretraining(self, X, y=None):
        raise AssertionError("SimSiam pretrained for --us-model scratch")

    monkeypatch.setattr(SimSiamFeaturizer, "fit", no_pretraining)
    manifest = save_image_table(small_cohort, tmp_path / "registry")
    model = tmp_path / "scratch.skddh"
    argv = ["fit", str(manifest), "--model", str(model), "--image-size", "32", "--device", "cpu"]
    argv += ["--delta-alpha", "0.5", "--delta-coverage", "0.5", "--us-model", "scratch"]
    assert cli.main([*argv, "--finetune-epochs", "1", "--test-time-views", "3"]) == 0
    assert "training a fresh encoder and head" in capsys.readouterr().out
    tuned = load_policy(model).estimator_.estimator.estimator
    assert tuned.encoder is None and tuned.test_time_views == 3 and tuned.image_size == 32
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(manifest), "--model", str(model), "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == len(small_cohort.us.images)


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
# Supported by 4 calibration subjects (1/(4+1) = 0.2); the default 0.10 needs 9.
DELTAS = ["--delta-alpha", "0.35", "--delta-coverage", "0.35"]


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
    model = tmp_path / "policy.skddh"
    argv = ["fit", str(manifest), "--model", str(model), *FAST]
    argv += ["--delta-alpha", "0.35", "--delta-coverage", "0.35"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="delta is too small")
        assert cli.main(argv) == 0
    us = load_image_table(manifest, image_size=32).us
    split = np.asarray(us.split)
    # Pretraining saw exactly the training rows: no calibration or test image.
    np.testing.assert_array_equal(seen["pretrain"], us.images[split == "train"])
    policy, metadata = load_policy(model, return_metadata=True)
    assert metadata["extra"] == {
        "image_size": 32,
        "rule": "alpha",
        "delta_alpha": 0.35,
        "delta_coverage": 0.35,
        "calibration_unit": "subject-max",
        "age_thresholds": "fixed",
    }
    fitted = policy.estimator_
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


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if pretraining starts: the error must come before any compute."""

    def fit(*args, **kwargs):
        raise AssertionError("pretraining started")

    monkeypatch.setattr(SimSiamFeaturizer, "fit", fit)


def test_fit_refuses_a_delta_too_small_before_pretraining(
    split_cohort, tmp_path, capsys, no_compute
):
    manifest = save_image_table(split_cohort, tmp_path / "registry")
    model = tmp_path / "p.skddh"
    argv = ["fit", str(manifest), "--model", str(model), *FAST]
    # 6 calibration subjects: 1/7 is the smallest delta (the old CLI fitted a policy with an
    # infinite radius, which referred every hip at predict).
    assert cli.main([*argv, "--delta-alpha", "0.35", "--delta-coverage", "0.05"]) == 2
    err = _one_error_line(capsys, "fit")
    assert "--delta-coverage 0.05 is too small for 6 calibration subjects" in err
    assert "smallest supported delta is 1/(n+1) = 0.1429" in err
    assert "needs at least 19 calibration subjects" in err
    assert cli.main([*argv, "--delta-alpha", "0.01", "--delta-coverage", "0.5"]) == 2
    assert "--delta-alpha 0.01 is too small" in _one_error_line(capsys, "fit")
    # Per image, n counts the calibration images.
    us = load_image_table(manifest, image_size=32).us
    n_images = int((np.asarray(us.split) == "calibration").sum())
    per_image = [*argv, "--calibration-unit", "image", "--delta-coverage", "0.5"]
    assert cli.main([*per_image, "--delta-alpha", "0.01"]) == 2
    assert f"too small for {n_images} calibration images" in _one_error_line(capsys, "fit")
    assert not model.exists()


def test_fit_without_a_split_column_splits_by_subject(split_cohort, tmp_path, capsys, seen):
    manifest = save_image_table(split_cohort, tmp_path / "registry")
    table = pd.read_csv(manifest).drop(columns="split")
    table.to_csv(manifest, index=False)
    model = tmp_path / "policy.skddh"
    argv = ["fit", str(manifest), "--model", str(model), *FAST, *DELTAS, "--calibration-size", "4"]
    assert cli.main([*argv, "--calibration-unit", "subject-subsample"]) == 0
    fitted = load_policy(model).estimator_
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
    argv = ["fit", str(manifest), "--model", str(tmp_path / "p.skddh"), *FAST, *DELTAS]
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
def _torch_parts(policy):
    """The SimSiamFeaturizer and MeasurementRegressor inside a fitted policy."""
    pipeline = policy.estimator_.estimator_.estimator
    return [pipeline[0].estimator, pipeline[-1]]


def _saved_devices(model):
    """The ``device`` parameter of every torch part, as the model file says it."""
    with zipfile.ZipFile(model) as zf:
        nodes = json.loads(zf.read("metadata.json"))["model"]["estimators"]
    names = {"SimSiamFeaturizer", "MeasurementRegressor"}
    return {n["class"]: n["params"]["device"] for n in nodes if n["class"] in names}


@pytest.fixture(scope="module")
def fitted_on_gpu(split_cohort, tmp_path_factory):
    """A model as `skddh fit --device cuda` leaves it, without needing a GPU: fitted on the
    CPU, then every torch part's device set to cuda (the file holds CPU weights either way)."""
    d = tmp_path_factory.mktemp("gpu")
    manifest = save_image_table(split_cohort, d / "registry")
    model = d / "policy.skddh"
    argv = ["fit", str(manifest), "--model", str(model), *FAST, "--delta-alpha", "0.35"]
    assert cli.main([*argv, "--delta-coverage", "0.35"]) == 0
    policy, metadata = load_policy(model, return_metadata=True)
    parts = _torch_parts(policy)
    assert [type(p) for p in parts] == [SimSiamFeaturizer, MeasurementRegressor]
    for part in parts:
        part.set_params(device="cuda")
        part.device_ = "cuda"
    save_policy(policy, model, extra=metadata["extra"])
    return manifest, model


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_model_fitted_on_a_gpu_predicts_on_the_cpu(fitted_on_gpu, tmp_path, capsys):
    manifest, model = fitted_on_gpu
    images = load_image_table(manifest, image_size=32).us.images
    # The file asks for CUDA ...
    assert _saved_devices(model) == {"SimSiamFeaturizer": "cuda", "MeasurementRegressor": "cuda"}
    for device in (["--device", "cpu"], []):  # ... and runs here (auto is the default)
        out = tmp_path / "pred.csv"
        assert (
            cli.main(["predict", str(manifest), "--model", str(model), "--out", str(out), *device])
            == 0
        )
        assert len(pd.read_csv(out)) == len(images)
    argv = ["predict", str(manifest), "--model", str(model), "--device", "cuda"]
    with pytest.raises(SystemExit) as exc:  # refused while parsing, before loading anything
        cli.main([*argv, "--out", str(tmp_path / "x.csv")])
    assert exc.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


# ---- outputs that are inputs -----------------------------------------------------------------
def test_predict_refuses_to_overwrite_its_manifest_or_model(tmp_path, monkeypatch, capsys):
    manifest, model = tmp_path / "m.csv", tmp_path / "model.skddh"
    manifest.write_text("image_path,subject_id,side,modality\n")
    model.write_bytes(b"a model")
    (tmp_path / "link.csv").symlink_to(manifest)
    monkeypatch.chdir(tmp_path)
    argv = ["predict", str(manifest), "--model", str(model)]
    for out, what in [
        (str(manifest), "is the manifest"),
        ("./m.csv", "is the manifest"),  # the same file, another spelling
        ("link.csv", "is the manifest"),  # a link to it
        ("../" + tmp_path.name + "/model.skddh", "is --model"),
    ]:
        assert cli.main([*argv, "--out", out]) == 2
        assert what in _one_error_line(capsys, "predict")
    assert manifest.read_text() == "image_path,subject_id,side,modality\n"
    assert model.read_bytes() == b"a model"


def test_fit_refuses_to_overwrite_its_manifest_or_registry(tmp_path, capsys, no_compute):
    manifest, registry = tmp_path / "m.csv", tmp_path / "r.csv"
    for path in (manifest, registry):
        path.write_text("image_path,subject_id,side,modality\n")
    argv = ["fit", str(manifest), "--registry", str(registry)]
    assert cli.main([*argv, "--model", str(manifest)]) == 2
    assert "is the manifest" in _one_error_line(capsys, "fit")
    assert cli.main([*argv, "--model", str(registry)]) == 2
    assert "is --registry" in _one_error_line(capsys, "fit")


# ---- loader errors: one line, exit status 2, before pretraining --------------------------------
def _break_first_image(manifest, how):
    table = pd.read_csv(manifest)
    image = manifest.parent / table["image_path"].iloc[0]
    if how == "truncated":
        data = image.read_bytes()
        image.write_bytes(data[: len(data) // 2])
    elif how == "zero-byte":
        image.write_bytes(b"")
    elif how == "not an image":
        image.write_bytes(b"this is not a PNG")
    elif how == "missing column":
        table.drop(columns="subject_id").to_csv(manifest, index=False)
    elif how == "abc in alpha":
        table["alpha"] = table["alpha"].astype(object)
        table.loc[table["modality"] == "US", "alpha"] = "abc"
        table.to_csv(manifest, index=False)
    elif how == "empty CSV":
        manifest.write_text("")


@pytest.mark.parametrize(
    "how",
    ["truncated", "zero-byte", "not an image", "missing column", "abc in alpha", "empty CSV"],
)
def test_a_loader_error_is_one_line_before_any_compute(
    how, split_cohort, tmp_path, capsys, no_compute
):
    manifest = save_image_table(split_cohort, tmp_path / "registry")
    _break_first_image(manifest, how)
    argv = ["fit", str(manifest), "--model", str(tmp_path / "p.skddh"), *FAST]
    assert cli.main(argv) == 2
    _one_error_line(capsys, "fit")
    assert not (tmp_path / "p.skddh").exists()


class _Payload:
    """Unpickling it creates ``path``: what a malicious pickle would do (os.system, ...)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_predict_with_a_file_that_is_not_a_model_runs_no_code(tmp_path, capsys):
    manifest, model = tmp_path / "m.csv", tmp_path / "model.joblib"
    manifest.write_text("image_path,subject_id,side,modality\n")
    marker = tmp_path / "pwned"
    payload = {"policy": _Payload(marker), "image_size": 32}
    writers = [
        lambda: model.write_bytes(b""),
        lambda: model.write_bytes(b"not a pickle"),
        lambda: joblib.dump(["a list"], model),
        lambda: joblib.dump(payload, model),  # a model file of the old CLI, with a payload
        lambda: model.write_bytes(pickle.dumps(payload)),
    ]
    for write in writers:
        write()
        argv = ["predict", str(manifest), "--model", str(model), "--out", str(tmp_path / "p.csv")]
        assert cli.main(argv) == 2
        line = _one_error_line(capsys, "predict")
        assert line.startswith(f"skddh predict: error: --model {str(model)!r}: not a skddh model")
        assert "joblib or pickle file runs code" in line
        assert not marker.exists()  # nothing in the file ran
    assert not (tmp_path / "p.csv").exists()


def test_predict_with_a_corrupted_model_file(fitted, tmp_path, capsys):
    manifest, good = fitted
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        start = zf.getinfo("arrays.safetensors").header_offset
        members = {name: zf.read(name) for name in zf.namelist()}
    assert start < len(data) // 2  # the middle of the file is a weight
    data[len(data) // 2] ^= 0x01
    flipped = tmp_path / "flipped.skddh"
    flipped.write_bytes(bytes(data))
    # The same flip, zipped again with a valid CRC-32: the SHA-256 checksum catches it.
    weights = bytearray(members["arrays.safetensors"])
    weights[len(weights) // 2] ^= 0x01
    rezipped = tmp_path / "rezipped.skddh"
    with zipfile.ZipFile(rezipped, "w") as zf:
        zf.writestr("metadata.json", members["metadata.json"])
        zf.writestr("arrays.safetensors", bytes(weights))
    for model, message in [
        (flipped, "member 'arrays.safetensors' is corrupted (zip checksum CRC-32"),
        (rezipped, "member 'arrays.safetensors' fails its SHA-256 checksum"),
    ]:
        argv = ["predict", str(manifest), "--model", str(model), "--out", str(tmp_path / "p.csv")]
        assert cli.main(argv) == 2
        line = _one_error_line(capsys, "predict")
        assert line.startswith(f"skddh predict: error: --model {str(model)!r}: {message}"), line
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where, tmp_path):
    manifest, model = tmp_path / "m.csv", tmp_path / "model.skddh"
    manifest.write_text("image_path,subject_id,side,modality\n")
    model.write_bytes(b"not a pickle")
    argv = ["predict", str(manifest), "--model", str(model), "--out", str(tmp_path / "p.csv")]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(cli.CommandError, match="not a skddh model file"):
        cli.main(argv)


# ---- a full disk, Ctrl-C: the old file stays, byte for byte ------------------------------------
@pytest.fixture(scope="module")
def fitted(split_cohort, tmp_path_factory):
    """A manifest and a policy fitted on it (deltas 0.35, supported by 6 subjects)."""
    d = tmp_path_factory.mktemp("fitted")
    manifest = save_image_table(split_cohort, d / "registry")
    model = d / "policy.skddh"
    argv = ["fit", str(manifest), "--model", str(model), *FAST, "--delta-alpha", "0.35"]
    assert cli.main([*argv, "--delta-coverage", "0.35"]) == 0
    return manifest, model


@pytest.mark.filterwarnings("ignore:1 image\\(s\\) are constant")
def test_predict_decides_as_the_policy_does_in_one_pass(fitted, tmp_path, monkeypatch):
    manifest, model = fitted
    # A blank image among the rows: the policy refers it whatever its bounds.
    table = pd.read_csv(manifest)
    blank = table.index[table["modality"] == "US"][0]
    first = Image.open(manifest.parent / table.loc[blank, "image_path"])
    Image.new(first.mode, first.size, 0).save(tmp_path / "blank.png")
    table.loc[blank, "image_path"] = str(tmp_path / "blank.png")
    for i in table.index.drop(blank):
        table.loc[i, "image_path"] = str(manifest.parent / table.loc[i, "image_path"])
    table.to_csv(tmp_path / "m.csv", index=False)
    calls = []
    transform = SimSiamFeaturizer.transform

    def counted(self, X):
        calls.append(len(X))
        return transform(self, X)

    monkeypatch.setattr(SimSiamFeaturizer, "transform", counted)
    out = tmp_path / "pred.csv"
    argv = ["predict", str(tmp_path / "m.csv"), "--model", str(model), "--out", str(out)]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    images = load_image_table(tmp_path / "m.csv", image_size=32).us.images
    assert calls == [len(images)]  # one pass: the decision comes from the printed bounds
    policy = load_policy(model)
    predictions = pd.read_csv(out)
    np.testing.assert_array_equal(predictions["ultrasound_suffices"], policy.predict(images))
    lower = policy.predict_lower(images)
    for t in lower.columns:
        np.testing.assert_allclose(predictions[f"lower_{t}"], lower[t], rtol=1e-6)
    assert predictions["ultrasound_suffices"].iloc[0] == 0  # the blank image: referred


def _half_then(error):
    """A writer that writes part of its output, then fails (a full disk, a Ctrl-C)."""

    def write(self_or_value, f, *args, **kwargs):
        f.write(b"partial" if "b" in getattr(f, "mode", "b") else "partial")
        raise error

    return write


def _disk_full():
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("error, rc", [(_disk_full(), 2), (KeyboardInterrupt(), 130)])
def test_fit_failing_while_saving_keeps_the_old_model(
    error, rc, fitted, tmp_path, monkeypatch, capsys
):
    manifest, good = fitted
    model = tmp_path / "good.skddh"
    model.write_bytes(good.read_bytes())
    writestr = zipfile.ZipFile.writestr

    def half_then(self, name, data, *args, **kwargs):  # save_policy writes its zip through it
        writestr(self, name, data[: len(data) // 2], *args, **kwargs)
        raise error

    monkeypatch.setattr(zipfile.ZipFile, "writestr", half_then)
    argv = ["fit", str(manifest), "--model", str(model), *FAST, "--delta-alpha", "0.35"]
    assert cli.main([*argv, "--delta-coverage", "0.35"]) == rc
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "skddh fit: interrupted"
        if rc == 130
        else "skddh fit: error: [Errno 28] No space left on device"
    )
    assert "Traceback" not in err
    assert model.read_bytes() == good.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["good.skddh"]  # no temp file behind


@pytest.mark.parametrize("error, rc", [(_disk_full(), 2), (KeyboardInterrupt(), 130)])
def test_predict_failing_while_writing_keeps_the_old_csv(
    error, rc, fitted, tmp_path, monkeypatch, capsys
):
    manifest, model = fitted
    out = tmp_path / "pred.csv"
    out.write_text("the old predictions\n")
    monkeypatch.setattr(pd.DataFrame, "to_csv", _half_then(error))
    assert cli.main(["predict", str(manifest), "--model", str(model), "--out", str(out)]) == rc
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert out.read_text() == "the old predictions\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pred.csv"]


def test_ctrl_c_during_fit_is_one_line_and_leaves_no_file(
    split_cohort, tmp_path, monkeypatch, capsys
):
    manifest = save_image_table(split_cohort, tmp_path / "registry")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SimSiamFeaturizer, "fit", interrupted)
    model = tmp_path / "p.skddh"
    argv = ["fit", str(manifest), "--model", str(model), *FAST, "--delta-alpha", "0.35"]
    assert cli.main([*argv, "--delta-coverage", "0.35"]) == 130
    assert capsys.readouterr().err == "skddh fit: interrupted\n"
    assert not model.exists()
    with pytest.raises(KeyboardInterrupt):  # --debug: the traceback
        cli.main(["--debug", *argv, "--delta-coverage", "0.35"])


# ---- reproduce: the INCOMPLETE marker --------------------------------------------------------
@pytest.fixture
def old_report(tmp_path):
    """An output folder holding an earlier run's report."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("# the earlier run's report\n")
    return out


def _stage_raises(monkeypatch, name, error):
    import skddh.studies

    def stage(*args, **kwargs):
        raise error

    monkeypatch.setattr(skddh.studies, name, stage)


def test_ctrl_c_during_reproduce_leaves_the_marker(old_report, monkeypatch, capsys):
    _stage_raises(monkeypatch, "run_study", KeyboardInterrupt())
    argv = ["reproduce", "--device", "cpu", "--out", str(old_report)]
    assert cli.main(argv) == 130
    assert capsys.readouterr().err == "skddh reproduce: interrupted\n"
    marker = (old_report / "INCOMPLETE").read_text()
    assert "from an EARLIER run" in marker
    assert f"command: skddh reproduce --device cpu --out {old_report}" in marker
    assert re.search(r"started: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", marker)
    assert (old_report / "report.md").read_text() == "# the earlier run's report\n"
    # A rerun replaces the marker (here: interrupted again, with another seed).
    assert cli.main([*argv, "--seed", "3"]) == 130
    marker = (old_report / "INCOMPLETE").read_text()
    assert marker.count("command:") == 1 and "--seed 3" in marker
    assert sorted(p.name for p in old_report.iterdir()) == ["INCOMPLETE", "report.md"]


def test_a_failed_report_write_leaves_the_marker(old_report, monkeypatch, capsys):
    import skddh.studies

    monkeypatch.setattr(skddh.studies, "run_study", lambda *args, **kwargs: "a result")
    _stage_raises(monkeypatch, "write_report", _disk_full())
    assert cli.main(["reproduce", "--out", str(old_report)]) == 2
    assert "No space left on device" in _one_error_line(capsys, "reproduce")
    assert (old_report / "INCOMPLETE").exists()


def test_a_finished_reproduce_removes_the_marker(old_report, monkeypatch, capsys):
    import skddh.studies

    def write_report(result, out):
        assert (out / "INCOMPLETE").exists()  # written before the run, there until the end
        (out / "report.md").write_text("# this run's report\n")
        return out / "report.md"

    monkeypatch.setattr(skddh.studies, "run_study", lambda *args, **kwargs: "a result")
    monkeypatch.setattr(skddh.studies, "write_report", write_report)
    (old_report / "INCOMPLETE").write_text("an interrupted run's marker")
    assert cli.main(["reproduce", "--out", str(old_report)]) == 0
    assert sorted(p.name for p in old_report.iterdir()) == ["report.md"]
    assert "# this run's report" in capsys.readouterr().out


# ---- reproduce --seeds: one run per seed, then the aggregate --------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seed", "1", "--seeds", "0", "1"], "give --seed or --seeds, not both"),
        (["--seeds", "0", "1", "--seed", "0"], "give --seed or --seeds, not both"),
        (["--seeds", "3", "1", "3"], "--seeds repeats 3: give each seed once"),
    ],
)
def test_reproduce_seeds_usage_errors_are_one_line(flags, message, tmp_path, monkeypatch, capsys):
    _stage_raises(monkeypatch, "run_study", AssertionError("no run before the check"))
    assert cli.main(["reproduce", "--out", str(tmp_path), *flags]) == 2
    assert message in _one_error_line(capsys, "reproduce")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the marker


@pytest.fixture
def fake_runs(tmp_path, monkeypatch, fake_study_result):
    """``run_study`` at the tiny scale, made instant: a synthetic result per seed (a real tiny
    run takes minutes here). It records its calls and checks, during each, the markers of a
    run whose ``--out`` is ``tmp_path``."""
    import skddh.studies

    tiny = dict(
        image_size=32, n_registry_us=64, n_registry_xr=64, epochs=1, batch_size=32, head_epochs=20
    )
    monkeypatch.setitem(study.SCALES, "small", tiny)
    calls = []

    def run_study(scale, *, device, seed, verbose, us_model=None):
        calls.append((scale, device, seed))
        marker = tmp_path / f"seed_{seed}" / "INCOMPLETE"
        assert (tmp_path / "INCOMPLETE").exists() and marker.exists()
        assert study.SCALES[scale] == tiny
        return fake_study_result(seed, shift=0.1 * seed, scale=scale, device=device)

    monkeypatch.setattr(skddh.studies, "run_study", run_study)
    return calls


def test_reproduce_over_seeds_writes_each_run_and_the_aggregate(tmp_path, fake_runs, capsys):
    argv = ["reproduce", "--device", "cpu", "--out", str(tmp_path), "--seeds", "0", "1"]
    assert cli.main(argv) == 0
    assert fake_runs == [("small", "cpu", 0), ("small", "cpu", 1)]
    for seed in (0, 1):  # each seed's folder: what a single run writes
        d = tmp_path / f"seed_{seed}"
        for name in ["report.md", "policy.csv", "headline.csv", "headline.png", "mae.csv"]:
            assert (d / name).stat().st_size > 0, name
        assert (d / "decision_curve.png").exists() and not (d / "INCOMPLETE").exists()
        assert f"seed {seed}." in (d / "report.md").read_text()
    for name in ["headline", "mae", "radii", "radii_by_delta", "coverage", "policy"]:
        table = pd.read_csv(tmp_path / f"{name}_over_seeds.csv")
        assert (table["n_seeds"] <= 2).all() and {"mean", "std", "min", "max"} <= set(table)
    policy = pd.read_csv(tmp_path / "policy_over_seeds.csv")
    per_seed = [pd.read_csv(tmp_path / f"seed_{s}" / "policy.csv") for s in (0, 1)]
    rates = np.stack([p["us_pass_rate"] for p in per_seed])
    got = policy[policy["quantity"] == "us_pass_rate"]
    np.testing.assert_allclose(got["mean"], rates.mean(axis=0))
    np.testing.assert_allclose(got["min"], rates.min(axis=0))
    np.testing.assert_allclose(got["max"], rates.max(axis=0))
    report = (tmp_path / "report.md").read_text()
    assert "# skddh reproduce over 2 seeds" in report and "- seeds: 0, 1" in report
    assert "- scale: `small`" in report and "- device: `cpu`" in report
    assert (tmp_path / "headline.png").stat().st_size > 0
    assert not (tmp_path / "INCOMPLETE").exists()
    assert not [p for p in tmp_path.rglob(".*")]  # no temp file left
    out = capsys.readouterr().out
    assert "[skddh] seed 1 (2 of 2)" in out and "Hips passed with a guarantee" in out


def test_reproduce_over_seeds_failing_late_leaves_the_markers(
    tmp_path, fake_runs, monkeypatch, capsys
):
    """INCOMPLETE covers the whole run: a failure in the second seed, or in the aggregate,
    leaves it, and the failing seed's own marker."""
    import skddh.studies

    real_write = skddh.studies.write_report

    def write_report(result, out):
        if result.seed == 1:
            raise _disk_full()
        return real_write(result, out)

    monkeypatch.setattr(skddh.studies, "write_report", write_report)
    argv = ["reproduce", "--out", str(tmp_path), "--seeds", "0", "1"]
    assert cli.main(argv) == 2
    assert "No space left on device" in _one_error_line(capsys, "reproduce")
    marker = (tmp_path / "INCOMPLETE").read_text()
    assert "every seed's" in marker and "command: skddh reproduce" in marker
    assert not (tmp_path / "seed_0" / "INCOMPLETE").exists()  # seed 0 finished
    assert "seed: 1" in (tmp_path / "seed_1" / "INCOMPLETE").read_text()
    assert not (tmp_path / "report.md").exists()

    monkeypatch.setattr(skddh.studies, "write_report", real_write)
    _stage_raises(monkeypatch, "write_over_seeds_report", _disk_full())
    assert cli.main(argv) == 2
    assert (tmp_path / "INCOMPLETE").exists()
    assert not any((tmp_path / f"seed_{s}" / "INCOMPLETE").exists() for s in (0, 1))


# ---- property-based: any value of any fit option is refused in one line, or accepted sanely --
class _ComputeStarted(Exception):
    """Raised by the patched pretraining: validation let the arguments through."""


_NUMBERS = ["0", "1", "-1", "0.5", "1e-9", "1e9", "nan", "inf", "-inf", "", " ", "abc", "3.7"]


def test_fit_options_are_refused_in_one_line_or_accepted_with_sane_values(
    split_cohort, tmp_path_factory, capsys
):
    """Hypothesis drives every fit option with garbage; the outcome is exit 2 with one
    ``skddh fit: error:`` line (or argparse's usage error) before any compute, or values
    that make sense reach pretraining. Never a traceback, never a silent NaN delta."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    manifest = save_image_table(split_cohort, tmp_path_factory.mktemp("fuzz") / "registry")
    model = manifest.parent / "p.skddh"
    value = st.one_of(st.sampled_from(_NUMBERS), st.integers(-5, 400).map(str))
    options = {
        "--delta-alpha": value,
        "--delta-coverage": value,
        "--image-size": value,
        "--seed": value,
        "--epochs": value,
        "--batch-size": value,
        "--calibration-size": value,
        "--finetune-epochs": value,
        "--device": st.sampled_from(["cpu", "auto", "gpu", "cuda", "cuda:7", "", "mps", "cpu:0"]),
        "--rule": st.sampled_from(["alpha", "and", "or", "AND", "xor"]),
        "--calibration-unit": st.sampled_from(["image", "subject-max", "subject", ""]),
    }
    seen = {}

    def started(self, X, y=None):
        raise _ComputeStarted

    flags = st.lists(st.sampled_from(sorted(options)), max_size=4, unique=True)
    drawn = flags.flatmap(lambda keys: st.fixed_dictionaries({k: options[k] for k in keys}))

    @hypothesis.settings(
        max_examples=60, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )  # fmt: skip
    @hypothesis.given(drawn)
    def check(chosen):
        argv = ["fit", str(manifest), "--model", str(model)]
        for flag, v in chosen.items():
            argv += [f"{flag}={v}"]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(SimSiamFeaturizer, "fit", started)
            try:
                rc = cli.main(argv)
            except SystemExit as exc:  # argparse's usage errors
                rc = exc.code
                err = capsys.readouterr().err
                assert rc == 2 and "Traceback" not in err, err
                assert err.strip().splitlines()[-1].startswith("skddh fit: error: "), err
                return
            except _ComputeStarted:
                args = cli.build_parser().parse_args(argv)
                for d in (args.delta_alpha, args.delta_coverage):
                    assert 0 < d < 1, argv
                assert args.image_size >= cli.MIN_IMAGE_SIZE and args.seed >= 0, argv
                seen["compute"] = seen.get("compute", 0) + 1
                capsys.readouterr()
                return
        assert rc == 2, (argv, rc)
        _one_error_line(capsys, "fit")
        seen["refused"] = seen.get("refused", 0) + 1

    check()
    assert seen.get("compute") and seen.get("refused"), seen  # both outcomes were exercised


def test_fit_with_graf_age_thresholds_then_predict(split_cohort, tmp_path, capsys):
    """The age-aware thresholds travel in the model file; predict reads each row's age."""
    manifest = save_image_table(split_cohort, tmp_path / "registry")
    model = tmp_path / "graf.skddh"
    argv = ["fit", str(manifest), "--model", str(model), *FAST, *DELTAS]
    assert cli.main([*argv, "--age-thresholds", "graf"]) == 0
    policy = load_policy(model)
    assert policy.thresholds_["alpha"] == GrafAlphaThreshold()
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(manifest), "--model", str(model), "--out", str(out)]) == 0
    pred = pd.read_csv(out)
    us = load_image_table(manifest, image_size=32).us
    expected = np.where(np.asarray(us.age_weeks) < 12, 50.0, 60.0)
    np.testing.assert_array_equal(pred["threshold_alpha"], expected)
    covariates = pd.DataFrame({"age_weeks": us.age_weeks})
    np.testing.assert_array_equal(
        pred["ultrasound_suffices"], policy.predict(us.images, covariates=covariates)
    )
    # A row without its age cannot be decided: one line, exit 2, the image named.
    table = pd.read_csv(manifest)
    first_us = table.index[table["modality"] == "US"][0]
    table.loc[first_us, "age_days"] = np.nan
    table.to_csv(manifest, index=False)
    capsys.readouterr()  # the fit's progress bars
    assert cli.main(["predict", str(manifest), "--model", str(model), "--out", str(out)]) == 2
    err = _one_error_line(capsys, "predict")
    assert "has no age_days" in err and str(table.loc[first_us, "image_id"]) in err
