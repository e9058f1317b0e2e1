"""Tests of load_image_table / save_image_table, DICOM included."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skddh.datasets import load_image_table, save_image_table

pydicom = pytest.importorskip("pydicom")


def test_round_trip(small_cohort, tmp_path):
    manifest = save_image_table(small_cohort, tmp_path)
    loaded = load_image_table(manifest, image_size=32)
    for key in ("us", "xr"):
        a, b = small_cohort[key], loaded[key]
        np.testing.assert_array_equal(a.images, b.images)
        pd.testing.assert_frame_equal(a.targets, b.targets, check_dtype=False)
        np.testing.assert_array_equal(a.subject, b.subject)
        np.testing.assert_array_equal(a.side, b.side)
        np.testing.assert_array_equal(a.image_id, b.image_id)
        np.testing.assert_array_equal(a.split, b.split)
    np.testing.assert_allclose(loaded.us.age_weeks, small_cohort.us.age_weeks)
    np.testing.assert_allclose(
        loaded.us.pixel_spacing_mm, small_cohort.us.acquisition["pixel_spacing_mm"]
    )


def _write_dicom(path, pixels, photometric="MONOCHROME2", spacing=(0.2, 0.2)):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [str(spacing[0]), str(spacing[1])]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_monochrome1_inverted_and_spacing(tmp_path):
    ramp = np.tile(np.linspace(0, 4000, 40), (40, 1))
    _write_dicom(tmp_path / "a.dcm", ramp, "MONOCHROME2")
    _write_dicom(tmp_path / "b.dcm", ramp, "MONOCHROME1")
    table = pd.DataFrame(
        {
            "image_path": ["a.dcm", "b.dcm"],
            "subject_id": ["s1", "s1"],
            "side": ["B", "B"],
            "modality": ["XR", "XR"],
            "ai": [20.0, 21.0],
        }
    )
    out = load_image_table(table, tmp_path, image_size=40).xr
    a, b = out.images.astype(int)
    assert a[:, 0].mean() < a[:, -1].mean()  # MONOCHROME2: high values bright
    np.testing.assert_array_equal(a, 255 - b)  # MONOCHROME1 is the inverse
    np.testing.assert_allclose(out.pixel_spacing_mm, [0.2, 0.2])


def test_anisotropic_dicom_made_square_then_letterboxed(tmp_path):
    img = np.zeros((20, 40))
    img[5:15, 10:30] = 3000
    _write_dicom(tmp_path / "c.dcm", img, spacing=(0.4, 0.2))  # rows twice as tall
    out = load_image_table(
        pd.DataFrame(
            {
                "image_path": ["c.dcm"],
                "subject_id": ["s"],
                "side": ["L"],
                "modality": ["US"],
                "alpha": [60.0],
            }
        ),
        tmp_path,
        image_size=40,
    ).us
    bright = out.images[0] > 128
    rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
    # a 4 mm x 4 mm square stays square: 20 x 20 px of 0.2 mm on a 40 px canvas
    assert abs(len(rows) - len(cols)) <= 1
    assert out.pixel_spacing_mm[0] == pytest.approx(0.2)


def test_png_and_raters_consensus(tmp_path):
    Image.fromarray(np.full((30, 50), 100, np.uint8)).save(tmp_path / "u.png")
    table = pd.DataFrame(
        {
            "image_path": ["u.png", "u.png"],
            "subject_id": ["s", "s"],
            "side": ["R", "R"],
            "modality": ["US", "US"],
            "alpha": [58.0, 62.0],
            "beta": [50.0, 54.0],
            "fhc": [48.0, 52.0],
            "rater_id": [1, 2],
            "age_days": [70, 70],
        }
    )
    out = load_image_table(table, tmp_path, image_size=25).us
    assert out.images.shape == (1, 25, 25)
    assert out.targets.iloc[0].tolist() == [60.0, 52.0, 50.0]
    assert out.age_weeks[0] == 10.0
    assert load_image_table(table, tmp_path, image_size=25).xr.images.shape == (0, 25, 25)


def _table(**over):
    base = {
        "image_path": ["u.png"],
        "subject_id": ["s"],
        "side": ["R"],
        "modality": ["US"],
        "alpha": [60.0],
        "fhc": [55.0],
    }
    base.update(over)
    return pd.DataFrame(base)


def test_bad_inputs(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "u.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"missing the required column\(s\) \['side'\]"):
        load_image_table(_table().drop(columns="side"), tmp_path)
    with pytest.raises(ValueError, match="row 0 column 'image_path'.*not found"):
        load_image_table(_table(image_path=["nope.png"]), tmp_path)
    with pytest.raises(ValueError, match="row 0 column 'image_path'.*cannot read"):
        load_image_table(_table(image_path=["junk.png"]), tmp_path)
    with pytest.raises(ValueError, match="row 0 column 'alpha'.*'sixty' is not a number"):
        load_image_table(_table(alpha=["sixty"]), tmp_path)
    with pytest.raises(ValueError, match="row 0 column 'modality'"):
        load_image_table(_table(modality=["CT"]), tmp_path)
    with pytest.raises(ValueError, match="column 'fhc'.*fraction"):
        load_image_table(_table(fhc=[0.55]), tmp_path)
    ok = load_image_table(_table(fhc=[0.55]), tmp_path, fhc_unit="fraction")
    assert ok.us.targets["coverage"].iloc[0] == pytest.approx(55.0)
    with pytest.raises(ValueError, match="manifest file"):
        load_image_table(tmp_path / "missing.csv")
    with pytest.raises(TypeError, match="table must be"):
        load_image_table(42)
