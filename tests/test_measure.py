"""Tests of the measurement definitions on hand-made landmarks."""

import numpy as np
import pandas as pd
import pytest

from skddh.datasets import measure_us, measure_xr


def _us(alpha, beta, fhc, r=10.0, rot=0.0, scale=1.0):
    a, b, t = np.deg2rad(alpha), np.deg2rad(beta), np.deg2rad(rot)
    yc = (fhc - 0.5) * 2 * r
    pts = {
        "iliac": (-15.0, 0.0),
        "rim": (0.0, 0.0),
        "lower_limb": (8 * np.cos(a), 8 * np.sin(a)),
        "labrum": (11 * np.cos(b), -11 * np.sin(b)),
        "head_c": ((r + 1 + yc * np.cos(a)) / np.sin(a), yc),
    }
    out = {}
    for name, (x, y) in pts.items():
        xr, yr = np.cos(t) * x - np.sin(t) * y, np.sin(t) * x + np.cos(t) * y
        stem = ("head_cx", "head_cy") if name == "head_c" else (f"{name}_x", f"{name}_y")
        out[stem[0]], out[stem[1]] = [50 + scale * xr], [40 + scale * yr]
    out["head_r"] = [scale * r]
    return pd.DataFrame(out)


@pytest.mark.parametrize("alpha, beta, fhc", [(66, 52, 0.60), (55, 70, 0.45), (38, 95, 0.25)])
@pytest.mark.parametrize("rot, scale", [(0, 1), (25, 2.5), (-170, 0.7)])
def test_measure_us_recovers_geometry(alpha, beta, fhc, rot, scale):
    got = measure_us(_us(alpha, beta, fhc, rot=rot, scale=scale)).iloc[0]
    assert got["alpha"] == pytest.approx(alpha, abs=1e-9)
    assert got["beta"] == pytest.approx(beta, abs=1e-9)
    assert got["coverage"] == pytest.approx(100 * fhc, abs=1e-9)


def test_measure_us_mirror_invariant():
    lm = _us(60, 55, 0.55)
    mirrored = lm.copy()
    for c in lm.columns:
        if c.endswith("_x") or c == "head_cx":
            mirrored[c] = 200 - lm[c]
    pd.testing.assert_frame_equal(measure_us(lm), measure_us(mirrored))


def _xr(ai, ce, grade_point=None, lateral=-1):
    tcc = np.array([100.0 + lateral * 20, 60.0])
    other = np.array([100.0 - lateral * 20, 60.0])
    a, c = np.deg2rad(ai), np.deg2rad(ce)
    asm = tcc + 14 * np.array([lateral * np.cos(a), -np.sin(a)])
    rho = 12 / np.cos(a + c)
    head = asm + rho * np.array([-lateral * np.sin(c), np.cos(c)])
    mofm = (
        head + np.array([0, 12.0])
        if grade_point is None
        else asm * [1, 0] + [0, 60] + grade_point * [lateral, 1]
    )
    return pd.DataFrame(
        {
            "tcc_x": [tcc[0]],
            "tcc_y": [tcc[1]],
            "tcc_other_x": [other[0]],
            "tcc_other_y": [other[1]],
            "asm_x": [asm[0]],
            "asm_y": [asm[1]],
            "head_cx": [head[0]],
            "head_cy": [head[1]],
            "head_r": [9.0],
            "mofm_x": [mofm[0]],
            "mofm_y": [mofm[1]],
        }
    )


@pytest.mark.parametrize("lateral", [-1, 1])
@pytest.mark.parametrize("ai, ce", [(22, 25), (35, -10), (12, 40)])
def test_measure_xr_recovers_ai_and_signed_ce(ai, ce, lateral):
    got = measure_xr(_xr(ai, ce, lateral=lateral)).iloc[0]
    assert got["ai"] == pytest.approx(ai, abs=1e-9)
    assert got["ce"] == pytest.approx(ce, abs=1e-9)


@pytest.mark.parametrize(
    "point, grade", [((-3.0, 5.0), 1), ((2.0, 6.0), 2), ((6.0, 2.0), 3), ((5.0, -2.0), 4)]
)
def test_measure_xr_ihdi_regions(point, grade):
    # point = (lateral of Perkin, below Hilgenreiner) in mm
    assert measure_xr(_xr(22, 20, grade_point=np.array(point))).iloc[0]["ihdi"] == grade


def test_measure_xr_clips_ce_of_dislocated_head():
    lm = _xr(25, 20)
    lm["head_cy"] = lm["asm_y"] - 10.0
    lm["head_cx"] = lm["asm_x"] - 5.0  # lateral (lateral = -x) and above the margin
    assert measure_xr(lm).iloc[0]["ce"] == -90.0


def test_measure_bad_input():
    with pytest.raises(TypeError, match="DataFrame"):
        measure_us(np.zeros((2, 11)))
    with pytest.raises(ValueError, match="labrum_x"):
        measure_us(_us(60, 55, 0.5).drop(columns="labrum_x"))
    with pytest.raises(ValueError, match="mofm_y"):
        measure_xr(_xr(20, 20).drop(columns="mofm_y"))
