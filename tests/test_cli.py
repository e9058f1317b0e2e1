"""Tests of skddh.cli: help on every command, bad arguments, fit -> predict on a registry."""

import re

import pandas as pd
import pytest

from skddh import cli
from skddh.datasets import save_image_table
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
