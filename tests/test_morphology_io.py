"""save_morphology_table / load_morphology_table: the round trip, letterboxing, and every
refusal naming its row (1-based CSV data row, or DataFrame index label) and column."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.utils import Bunch

from skddh.datasets import make_hip_morphology_cohort
from skddh.datasets._morphology_io import load_morphology_table, save_morphology_table

BOX = ["x0", "y0", "x1", "y1"]
LABELS = ["ischial_spine", "cam", "dysplasia", "any_abnormality"]


@pytest.fixture(scope="module")
def cohort():
    return make_hip_morphology_cohort(6, image_size=64, n_holdout=2, random_state=0)


@pytest.fixture(scope="module")
def saved(cohort, tmp_path_factory):
    return save_morphology_table(cohort, tmp_path_factory.mktemp("saved"))


def _text_table(manifest) -> pd.DataFrame:
    """The manifest as strings, blanks as "", to break cell by cell."""
    return pd.read_csv(manifest, dtype=str, keep_default_na=False)


def _load_broken(saved, tmp_path, change, **kwargs):
    table = _text_table(saved)
    change(table)
    path = tmp_path / "broken.csv"
    table.to_csv(path, index=False)
    return load_morphology_table(path, saved.parent, **kwargs)


def _set(col, value, rows=(2,)):
    """Set ``col`` on 0-based table rows (row 2 is CSV data row 3)."""

    def change(t):
        for r in rows:
            t.loc[r, col] = value

    return change


# ---- the round trip ---------------------------------------------------------------------------
def test_round_trip(cohort, saved):
    loaded = load_morphology_table(saved)
    np.testing.assert_array_equal(loaded.images, cohort.images)
    assert loaded.images.dtype == np.uint8
    np.testing.assert_array_equal(loaded.boxes[BOX].to_numpy(), cohort.boxes[BOX].to_numpy())
    for c in ("image_index", "image_id", "side"):
        assert list(loaded.boxes[c]) == list(cohort.boxes[c])
    assert loaded.target_names == cohort.target_names
    pd.testing.assert_frame_equal(loaded.targets, cohort.targets, check_dtype=False)
    raters = [c for c in cohort.hips.columns if "_rater" in c]
    assert len(raters) == 8
    pd.testing.assert_frame_equal(loaded.hips[raters], cohort.hips[raters])
    for c in ("hip_id", "image_id", "patient", "side"):
        assert list(loaded.hips[c]) == list(cohort.hips[c])
    mapped = cohort.radiographs["split"].replace({"holdout": "test"})
    assert list(loaded.radiographs["split"]) == list(mapped)
    assert list(loaded.hips["split"]) == list(cohort.hips["split"].replace({"holdout": "test"}))
    r, c = loaded.radiographs, cohort.radiographs
    assert list(r["image_id"]) == list(c["image_id"]) and list(r["patient"]) == list(c["patient"])
    assert list(r["sex"]) == list(c["sex"])
    np.testing.assert_allclose(r["age"], c["age"], rtol=1e-13)
    np.testing.assert_array_equal(r["pixel_spacing_mm"], c["pixel_spacing_mm"])


def test_manifest_has_one_row_per_hip(cohort, saved):
    table = pd.read_csv(saved, dtype={"split": str})
    assert len(table) == 2 * len(cohort.images) == len(cohort.hips)
    assert list(table.columns[:12]) == [
        "image_path",
        "image_id",
        "subject_id",
        "side",
        "split",
        "age_days",
        "sex",
        "pixel_spacing_mm",
        *BOX,
    ]
    assert [c for c in LABELS if c in table.columns] == LABELS
    assert set(table["sex"]) == {"F", "M"}  # the sex target only as F/M
    assert set(table["split"]) == {"train", "test"}
    assert table["image_path"].nunique() == len(cohort.images)
    assert all((saved.parent / p).is_file() for p in table["image_path"])
    ages = np.repeat(cohort.radiographs["age"].to_numpy(), 2) * 365.25
    np.testing.assert_allclose(table["age_days"], ages, rtol=1e-15)
    hold = table["split"] == "test"
    assert table.loc[hold, "cam_rater1"].isna().all()
    assert table.loc[~hold, "cam_rater1"].notna().all()


def test_image_size_scales_boxes(cohort, saved):
    loaded = load_morphology_table(saved, image_size=96)
    assert loaded.images.shape == (6, 96, 96)
    np.testing.assert_allclose(
        loaded.boxes[BOX].to_numpy(), 1.5 * cohort.boxes[BOX].to_numpy(), rtol=1e-14
    )
    np.testing.assert_allclose(
        loaded.radiographs["pixel_spacing_mm"], cohort.radiographs["pixel_spacing_mm"] / 1.5
    )


def _two_image_table(tmp_path, shapes):
    rows = []
    for k, shape in enumerate(shapes):
        img = np.zeros(shape, np.uint8)
        img[::2] = 200
        Image.fromarray(img).save(tmp_path / f"im{k}.png")
        for side, x0 in (("R", 4.0), ("L", 44.0)):
            rows.append({"image_path": f"im{k}.png", "subject_id": f"s{k}", "side": side, "x0": x0})
    table = pd.DataFrame(rows).assign(y0=6.0, x1=lambda t: t["x0"] + 20.0, y1=30.0)
    table.to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def test_letterbox_shifts_boxes_of_a_wide_image(tmp_path):
    manifest = _two_image_table(tmp_path, [(40, 80), (40, 80)])
    kept = load_morphology_table(manifest)
    assert kept.images.shape == (2, 40, 80)
    assert list(kept.radiographs["image_id"]) == ["im0.png", "im1.png"]  # id: the path
    assert kept.target_names == [] and kept.targets.shape == (4, 0)
    boxed = load_morphology_table(manifest, image_size=40)  # 80 x 80 canvas, 20 px on top
    assert boxed.images.shape == (2, 40, 40)
    expected = (kept.boxes[BOX].to_numpy() + [0, 20, 0, 20]) * 0.5
    np.testing.assert_allclose(boxed.boxes[BOX].to_numpy(), expected)


def test_different_shapes_need_image_size(tmp_path):
    manifest = _two_image_table(tmp_path, [(64, 64), (40, 80)])
    with pytest.raises(
        ValueError, match=r"rows 1 and 3 column 'image_path'.*im0.png.*im1.png.*pass image_size"
    ):
        load_morphology_table(manifest)
    assert load_morphology_table(manifest, image_size=32).images.shape == (2, 32, 32)


def test_dataframe_rows_any_order_and_named_by_index(saved):
    table = _text_table(saved)
    in_order = load_morphology_table(table, saved.parent)
    shuffled = table.iloc[[1, 0, 3, 2, *range(4, 12)]]
    shuffled.index = range(10, 22)
    loaded = load_morphology_table(shuffled, saved.parent)
    pd.testing.assert_frame_equal(loaded.hips, in_order.hips)
    np.testing.assert_array_equal(loaded.images, in_order.images)
    broken = shuffled.copy()
    broken.loc[14, "side"] = "B"
    with pytest.raises(ValueError, match=r"row 14 column 'side': 'B' is not one of"):
        load_morphology_table(broken, saved.parent)


def test_column_names_any_case_and_spaces(saved):
    table = _text_table(saved).rename(
        columns={"image_path": "Image Path", "x0": " X0 ", "side": "SIDE", "cam": "Cam"}
    )
    loaded = load_morphology_table(table, saved.parent)
    assert "cam" in loaded.target_names and len(loaded.hips) == 12
    table["x0"] = table[" X0 "]
    with pytest.raises(ValueError, match=r"both read as 'x0'"):
        load_morphology_table(table, saved.parent)


def test_a_table_to_predict_on_needs_no_labels(saved):
    table = _text_table(saved)
    table = table[[c for c in table.columns if c not in LABELS and "_rater" not in c]]
    loaded = load_morphology_table(table.drop(columns="sex"), saved.parent)
    assert loaded.target_names == [] and loaded.targets.shape == (12, 0)
    only_sex = load_morphology_table(table, saved.parent)
    assert only_sex.target_names == ["sex"]


def test_a_loaded_table_saves_to_the_same_manifest(saved, tmp_path):
    again = save_morphology_table(load_morphology_table(saved), tmp_path)
    pd.testing.assert_frame_equal(_text_table(again), _text_table(saved))


def test_blank_labels_are_missing(saved, tmp_path):
    loaded = _load_broken(saved, tmp_path, _set("cam", ""))
    assert loaded.targets["cam"].isna().sum() == 1 and loaded.targets["cam"].dtype == "Int8"


def test_wrong_argument_types(saved):
    with pytest.raises(TypeError, match="CSV path or a DataFrame"):
        load_morphology_table([1, 2])
    with pytest.raises(TypeError, match="image_size"):
        load_morphology_table(saved, image_size=96.0)
    with pytest.raises(ValueError, match="does not exist"):
        load_morphology_table(saved.parent / "nope.csv")


@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda t: t.drop(columns="x1", inplace=True),
            r"missing the required column\(s\) \['x1'\]",
        ),
        (_set("side", "X"), r"row 3 column 'side': 'X' is not one of \['R', 'L'\]"),
        (_set("side", "R", rows=(1,)), r"rows 1 and 2 column 'side'.*two 'R' rows"),
        (lambda t: t.drop(index=1, inplace=True), r"row 1 column 'side'.*no 'L' row"),
        (lambda t: t.loc.__setitem__((2, "x1"), t.loc[2, "x0"]), r"row 3 column 'x1'.*than x0"),
        (_set("y1", "0"), r"row 3 column 'y1'.*not greater than y0"),
        (_set("x0", "inf"), r"row 3 column 'x0'.*finite"),
        (_set("y0", ""), r"row 3 column 'y0'.*finite"),
        (_set("x0", "left"), r"row 3 column 'x0': 'left' is not a number"),
        (
            lambda t: t.loc.__setitem__((2, ["x0", "x1"]), ["100", "120"]),
            r"row 3 columns x0, y0, x1, y1.*entirely outside the 64 x 64",
        ),
        (_set("cam", "2"), r"row 3 column 'cam': 2 is not a label \(0, 1 or blank\)"),
        (_set("dysplasia", "yes"), r"row 3 column 'dysplasia'.*not a label"),
        (_set("cam_rater1", "-1"), r"row 3 column 'cam_rater1'.*not a label"),
        (_set("split", "holdout"), r"row 3 column 'split': 'holdout' is not one of"),
        (
            _set("split", "calibration", rows=(1,)),
            r"rows 1 and 2 column 'split': subject 'M00000' is in two splits",
        ),
        (
            lambda t: t.loc.__setitem__((1, "image_path"), t.loc[2, "image_path"]),
            r"rows 1 and 2 column 'image_id': image id 'AP00000' names two different files",
        ),
        (
            _set("subject_id", "M99999", rows=(1,)),
            r"rows 1 and 2 column 'image_id': image id 'AP00000' names two different subjects",
        ),
        (
            _set("image_path", "images/xr/AP00000.png", rows=(2, 3)),
            r"rows 1 and 3 column 'image_path': the same file is under two image ids",
        ),
        (
            _set("age_days", "1", rows=(1,)),
            r"rows 1 and 2 column 'age_days': the two hips of image 'AP00000' disagree \(\d",
        ),
        (_set("split", "", rows=(1,)), r"rows 1 and 2 column 'split'.*disagree \('train' and ''"),
        (_set("sex", "F", rows=(1,)), r"rows 1 and 2 column 'sex'.*disagree"),
        (_set("sex", "X"), r"row 3 column 'sex': 'X' is not one of \['F', 'M'\]"),
        (_set("age_days", "-1"), r"row 3 column 'age_days'.*negative"),
        (_set("pixel_spacing_mm", "0"), r"row 3 column 'pixel_spacing_mm'.*not positive"),
        (_set("subject_id", " "), r"row 3 column 'subject_id' is empty"),
        (_set("image_id", ""), r"row 3 column 'image_id' is empty"),
        (
            _set("image_path", "images/xr/gone.png", rows=(2, 3)),
            r"row 3 column 'image_path'.*gone.png' not found",
        ),
    ],
)
def test_refusals_name_row_and_column(saved, tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        _load_broken(saved, tmp_path, change)


def test_an_unreadable_image_names_its_row(saved, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"row 3 column 'image_path': cannot read .*bad.png"):
        _load_broken(saved, tmp_path, _set("image_path", str(bad), rows=(2, 3)))


@pytest.mark.parametrize("bad_id", ["AP00000", " "])
def test_save_refuses_duplicate_or_empty_ids_and_writes_nothing(cohort, tmp_path, bad_id):
    broken = Bunch(**cohort)
    broken["radiographs"] = cohort.radiographs.copy()
    broken.radiographs.loc[1, "image_id"] = bad_id
    match = "appears twice" if bad_id.strip() else "radiograph 1: its image id is empty"
    with pytest.raises(ValueError, match=match):
        save_morphology_table(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_safe_file_names_keep_the_ids(cohort, tmp_path):
    odd = Bunch(**cohort)
    odd["radiographs"] = cohort.radiographs.assign(
        image_id=["../up", "a/b", "Same", "same", "AP 4", "ok"]
    )
    manifest = save_morphology_table(odd, tmp_path)
    paths = pd.read_csv(manifest)["image_path"].unique()
    assert len(set(p.lower() for p in paths)) == 6
    assert all(p.startswith("images/xr/") and ".." not in p for p in paths)
    loaded = load_morphology_table(manifest)
    assert list(loaded.radiographs["image_id"]) == ["../up", "a/b", "Same", "same", "AP 4", "ok"]
    np.testing.assert_array_equal(loaded.images, cohort.images)


def _write_dicom(path, pixels, spacing):
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
    ds.PixelSpacing = [str(spacing[0]), str(spacing[1])]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_with_non_square_pixels_moves_its_boxes(tmp_path):
    img = np.tile(np.linspace(0, 4000, 40), (20, 1))
    _write_dicom(tmp_path / "a.dcm", img, spacing=(0.4, 0.2))  # rows twice as tall
    table = pd.DataFrame(
        {
            "image_path": ["a.dcm", "a.dcm"],
            "subject_id": ["s", "s"],
            "side": ["R", "L"],
            "x0": [2.0, 22.0],
            "y0": [5.0, 5.0],
            "x1": [18.0, 38.0],
            "y1": [15.0, 15.0],
        }
    )
    loaded = load_morphology_table(table, tmp_path)
    assert loaded.images.shape == (1, 40, 40)  # made square: 40 x 40 px of 0.2 mm
    assert loaded.boxes[BOX].to_numpy().tolist() == [[2, 10, 18, 30], [22, 10, 38, 30]]
    assert loaded.radiographs["pixel_spacing_mm"][0] == pytest.approx(0.2)
