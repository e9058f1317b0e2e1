"""Pixels in, never garbage: how image files are decoded and how image arrays are checked.

Regressions of issue 10 (items 3 and 4): float images in [0, 255], 16-bit files clipped to
{0, 255}, NaN pixels and decompression bombs each reach an error naming the row or the file,
or are read with their range kept.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skddh import SimSiamFeaturizer
from skddh.datasets import load_image_table
from skddh.datasets._io import _read_image, _window_to_uint8
from skddh.models._images import ImageSource


def _ramp(lo, hi, dtype, n=32):
    return np.tile(np.linspace(lo, hi, n), (n, 1)).astype(dtype)


def _one_row(path, **extra):
    return pd.DataFrame(
        {
            "image_path": [str(path)],
            "subject_id": ["s"],
            "side": ["L"],
            "modality": ["US"],
            "alpha": [60.0],
            "beta": [55.0],
            "fhc": [50.0],
            **extra,
        }
    )


# --- arrays given to the featurizer ----------------------------------------------------------
def test_float_images_outside_unit_range_name_the_row():
    X = np.random.default_rng(0).random((5, 32, 32)).astype(np.float32)
    ImageSource(X, 32)  # [0, 1]: fine
    X255 = X.copy()
    X255[3] *= 255.0
    X255[3, 0, 0] = 255.0
    match = r"float images must lie in \[0, 1\]; row 3 has max 255\.0: divide by 255 or pass uint8"
    with pytest.raises(ValueError, match=match):
        ImageSource(X255, 32)
    with pytest.raises(ValueError, match=match):  # before any training
        SimSiamFeaturizer(image_size=32, epochs=1, device="cpu").fit(X255)
    neg = X.copy()
    neg[1, 2, 2] = -0.5
    with pytest.raises(ValueError, match=r"row 1 has min -0\.5"):
        ImageSource(neg, 32)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_name_the_row(bad):
    X = np.zeros((4, 1, 8, 8))
    X[2, 0, 3, 3] = bad
    with pytest.raises(ValueError, match=r"NaN or infinite pixels in image 2 \(row 2 of X\)"):
        ImageSource(X, 8)


class _Lazy:
    """A lazy float array-like: checked per batch, errors still name the row of X."""

    def __init__(self, arr):
        self._arr, self.shape, self.dtype = arr, arr.shape, arr.dtype

    def __len__(self):
        return len(self._arr)

    def __getitem__(self, i):
        return self._arr[i]


def test_lazy_float_images_are_checked_per_batch():
    arr = np.full((6, 8, 8), 0.5, np.float32)
    arr[4] = 200.0
    src = ImageSource(_Lazy(arr), 8)
    assert src.read(slice(0, 3)).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="row 4 has max 200.0"):
        src.read(np.array([1, 4]))
    with pytest.raises(ValueError, match="row 4 has max 200.0"):
        src.read(slice(3, 6))
    with pytest.raises(ValueError, match="row 4 has max 200.0"):
        src.materialize()


# --- files: range kept, never clipped --------------------------------------------------------
def test_16_bit_png_is_windowed_not_clipped(tmp_path):
    img = _ramp(1000, 3000, np.uint16)
    Image.fromarray(img).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        clipped = np.asarray(im.convert("L"))  # what Pillow alone does
    assert np.isin(clipped, [0, 255]).mean() > 0.95
    got, _ = _read_image(tmp_path / "a.png", 0)
    np.testing.assert_array_equal(got, _window_to_uint8(img))
    assert got.min() == 0 and got.max() == 255
    assert (np.diff(got[0].astype(int)) >= 0).all() and len(np.unique(got)) == 32
    out = load_image_table(_one_row("a.png"), tmp_path, image_size=32).us
    np.testing.assert_array_equal(out.images[0], got)
    assert not out.flagged[0]


def test_8_bit_images_are_read_as_they_are(tmp_path):
    img = _ramp(40, 90, np.uint8)  # low contrast, not stretched
    Image.fromarray(img).save(tmp_path / "a.png")
    np.testing.assert_array_equal(_read_image(tmp_path / "a.png", 0)[0], img)


def test_float_tiff_is_windowed_and_nan_is_refused(tmp_path):
    img = _ramp(-3.0, 250.0, np.float32)
    Image.fromarray(img).save(tmp_path / "f.tif")
    got, _ = _read_image(tmp_path / "f.tif", 0)
    np.testing.assert_array_equal(got, _window_to_uint8(img))
    img[5, 5] = np.nan
    Image.fromarray(img).save(tmp_path / "n.tif")
    with pytest.raises(ValueError, match=r"row 0 column 'image_path': image .*n\.tif.* NaN"):
        load_image_table(_one_row("n.tif"), tmp_path, image_size=32)
    with pytest.raises(ValueError, match=r"X\[1\]: image .*n\.tif.* NaN"):
        ImageSource([str(tmp_path / "f.tif"), str(tmp_path / "n.tif")], 32).read(slice(0, 2))


def _write_dicom(path, pixels, **tags):
    pydicom = pytest.importorskip("pydicom")
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
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_window_and_rescale_tags_are_used(tmp_path):
    stored = _ramp(0, 4000, np.uint16, n=64)
    _write_dicom(tmp_path / "w.dcm", stored, RescaleSlope="2", RescaleIntercept="-1000",
                 WindowCenter="3000", WindowWidth="2001")  # fmt: skip
    got, _ = _read_image(tmp_path / "w.dcm", 0)
    hu = stored * 2.0 - 1000.0  # modality values 2000 .. 4000 fill the window
    expected = np.clip((hu - 2999.5) / 2000.0 + 0.5, 0, 1)
    np.testing.assert_array_equal(got, (expected * 255 + 0.5).astype(np.uint8))
    assert (got[:, :20] == 0).all() and (got[:, -16:] == 255).all()  # outside: the window ends
    _write_dicom(tmp_path / "m.dcm", stored)  # no tags: min-max of the data
    np.testing.assert_array_equal(_read_image(tmp_path / "m.dcm", 0)[0], _window_to_uint8(stored))


# --- decompression bombs ---------------------------------------------------------------------
@pytest.mark.parametrize("limit", [600, 100])  # Pillow warns above 600, raises above 2 x 100
def test_decompression_bombs_are_refused_naming_the_file(tmp_path, monkeypatch, limit):
    Image.fromarray(_ramp(0, 255, np.uint8)).save(tmp_path / "big.png")  # 1,024 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an error, not a warning
        with pytest.raises(ValueError, match=r"row 0 column 'image_path': image .*big\.png"):
            load_image_table(_one_row("big.png"), tmp_path, image_size=32)
        with pytest.raises(ValueError, match="decompression bomb"):
            ImageSource([str(tmp_path / "big.png")] * 2, 32).read(slice(0, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="decompression bomb"):  # whatever the filters say
            _read_image(tmp_path / "big.png", 0)


def test_dicom_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    _write_dicom(tmp_path / "big.dcm", _ramp(0, 4000, np.uint16))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"big\.dcm.* 1,024 pixels.*decompression bomb"):
        _read_image(tmp_path / "big.dcm", 0)
