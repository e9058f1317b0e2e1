"""Tests of skddh.studies.morphology and its report: the morphology study at a tiny scale."""

import numpy as np
import pandas as pd
import pytest

from skddh import cli
from skddh.datasets import crop_hips, make_hip_morphology_cohort
from skddh.datasets._morphology import MEASUREMENTS
from skddh.datasets._morphology_phantom import _pelvis_chunk
from skddh.studies import morphology
from skddh.studies.morphology import (
    MORPHOLOGY_LABELS,
    MORPHOLOGY_SCALES,
    SEED_TABLE,
    label_region_masks,
    run_morphology_study,
)
from skddh.studies.morphology_report import ac1_table, table_one, write_morphology_report

TINY = dict(
    MORPHOLOGY_SCALES["small"],
    n_patients=30,
    n_holdout=10,
    image_size=64,
    localizer_size=64,
    localizer_epochs=1,
    localizer_batch_size=8,
    crop_size=32,
    epochs=1,
    batch_size=16,
    n_bootstraps=20,
    n_latency=2,
)


@pytest.fixture(scope="module")
def tiny_result():
    return run_morphology_study(TINY, seeds=(0,), device="cpu")


def test_every_table_is_there(tiny_result):
    r = tiny_result
    assert set(r.report["label"]) == set(MORPHOLOGY_LABELS)
    assert set(r.report["metric"]) == set(SEED_TABLE.columns)
    assert len(r.ac1) == 4 and r.ac1["ac1"].between(-1, 1).all()
    assert len(r.predictions) == 2 * TINY["n_holdout"]
    for label in MORPHOLOGY_LABELS:  # the expert's labels of the hold-out hips
        assert set(r.predictions[f"true_{label}"]) <= {0, 1}
        assert r.predictions[f"p_{label}"].between(0, 1).all()
    assert r.localization["mean_iou"].between(0, 1).all()
    assert (r.latency["ms_median"] > 0).all()
    assert set(r.gradcam["label"]) <= {"cam", "dysplasia"}
    assert (r.gradcam["concentration"] >= 0).all()
    assert list(r.selective["label"]) == list(MORPHOLOGY_LABELS)
    assert r.selective["holdout_accepted_share"].between(0, 1).all()


def test_table_one_puts_the_seed_beside_ours(tiny_result):
    t = table_one(tiny_result)
    assert len(t) == 8 and list(t.columns[2:]) == list(SEED_TABLE.columns)
    assert t.loc[0, "accuracy"] == "87.2%" and t.loc[0, "auroc"] == "0.890"
    assert t["source"].tolist()[:2] == [
        "seed (Mayo, 100 radiographs)",
        "skddh (synthetic hold-out)",
    ]
    a = ac1_table(tiny_result)
    assert a["seed AC1"].tolist() == ["0.75", "0.61", "0.83", "0.88"]


def test_report_files(tiny_result, tmp_path):
    path = write_morphology_report(tiny_result, tmp_path, command="skddh reproduce morphology")
    text = path.read_text()
    for piece in ("Table 1", "Gwet's AC1", "roc.png", "Latency", "832 ms", "Selective"):
        assert piece in text
    for name in ("roc.png", "clinical_report.csv", "ac1.csv", "latency.csv", "predictions.csv"):
        assert (tmp_path / name).exists()
    rep = pd.read_csv(tmp_path / "clinical_report.csv")
    assert {"label", "metric", "value", "low", "high"} <= set(rep.columns)


def test_region_masks_sit_where_the_label_is_drawn():
    """The same radiographs drawn with a cam (alpha 72 deg, not 45) or a shallow socket
    (LCEA 12 deg, not 35): the pixels that change lie in the label's region."""
    c = make_hip_morphology_cohort(6, image_size=64, n_holdout=1, random_state=1)
    hips, patients = c.hips[["side", *MEASUREMENTS]], c.radiographs
    for label, column, normal, abnormal in (
        ("cam", "alpha", 45.0, 72.0),
        ("dysplasia", "lcea", 35.0, 12.0),
    ):
        # one chunk seed: the same anatomy, acquisition and noise; only the measurement differs
        a, boxes, _ = _pelvis_chunk(7, hips.assign(**{column: normal}), patients, 160)
        b, _, _ = _pelvis_chunk(7, hips.assign(**{column: abnormal}), patients, 160)
        boxes = boxes.assign(
            side=np.tile(["R", "L"], len(patients)),
            image_index=np.repeat(np.arange(len(patients)), 2),
        )
        diff = np.abs(crop_hips(a, boxes, 48).astype(float) - crop_hips(b, boxes, 48))
        region = label_region_masks(boxes, 48)[label]
        assert 0.03 < region.mean() < 0.2
        assert diff[region].mean() > 5 * diff[~region].mean(), label


def test_bad_scales_are_named():
    with pytest.raises(ValueError, match="lacks"):
        run_morphology_study({"n_patients": 10}, device="cpu")
    with pytest.raises(ValueError, match="seeds"):
        run_morphology_study(TINY, seeds=(), device="cpu")


def test_cli_reproduce_morphology_writes_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(morphology.MORPHOLOGY_SCALES, "small", dict(TINY, n_patients=20))
    argv = ["reproduce", "morphology", "--device", "cpu", "--out", str(tmp_path), "--seed", "0"]
    assert cli.main(argv) == 0
    assert (tmp_path / "report.md").exists() and not (tmp_path / "INCOMPLETE").exists()
    assert "Hip morphology" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reproduce", "morphology", "--us-model", "head"], "--us-model is for the ddh study"),
        (["reproduce", "morphology", "--fractions", "0.5"], "--fractions is for the bmd study"),
        (["reproduce", "morphology", "--seed", "1", "--seeds", "2"], "--seed or --seeds"),
        (["reproduce", "morphology", "--seeds", "1", "1"], "repeats 1"),
    ],
)
def test_cli_morphology_usage_errors_are_one_line(argv, message, tmp_path, capsys):
    assert cli.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
