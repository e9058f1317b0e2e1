"""Tests of load_image_table / save_image_table, DICOM included.

The second half replays a hostile user's broken copies of a saved registry (issue 10): every
one is refused with an error naming the row and column, or read as documented.
"""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skddh.datasets import load_image_table, save_image_table

pydicom = pytest.importorskip("pydicom")


def _ramp(n=32):
    """An n x n horizontal grey ramp (not constant, so never flagged)."""
    return np.tile(np.linspace(0, 255, n).astype(np.uint8), (n, 1))


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
            "ce": [25.0, np.nan],
            "ihdi": [1, np.nan],
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
                "beta": [55.0],
                "fhc": [np.nan],
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
    Image.fromarray(_ramp(50)[:30]).save(tmp_path / "u.png")
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
        "beta": [50.0],
        "fhc": [55.0],
    }
    base.update(over)
    return pd.DataFrame(base)


def test_bad_inputs(tmp_path):
    Image.fromarray(_ramp(8)).save(tmp_path / "u.png")
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


# ---------------------------------------------------------------------------------------------
# A hostile user's broken copies of a saved registry (issue 10, items 3 and 4)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small synthetic registry saved once; tests load broken copies of its manifest."""
    from skddh.datasets import make_hip_cohort

    cohort = make_hip_cohort(n_subjects=6, image_size=32, random_state=3)
    root = tmp_path_factory.mktemp("registry")
    manifest = save_image_table(cohort, root)
    return pd.read_csv(manifest), root


def _load(table, root, **kw):
    return load_image_table(table, root, image_size=32, **kw)


def test_saved_copy_loads_without_warnings(saved):
    table, root = saved
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _load(table, root)
    assert not out.us.flagged.any() and out.us.flagged.dtype == bool
    assert set(out.us.split) <= {"train", "calibration", "test"}


def test_split_is_case_normalised_and_restricted(saved):
    table, root = saved
    us = table["modality"] == "US"
    test_rows = table["split"] == "test"
    out = _load(table.assign(split=table["split"].where(~test_rows, " Test ")), root)
    np.testing.assert_array_equal(out.us.split, _load(table, root).us.split)
    assert (out.us.split == "test").sum() == (test_rows & us).sum()  # never trained on
    bad = table.copy()
    bad.loc[4, "split"] = "validation"
    with pytest.raises(ValueError, match=r"row 4 column 'split': 'validation' is not one of"):
        _load(bad, root)
    blank = table.copy()
    blank.loc[blank["subject_id"] == blank.loc[0, "subject_id"], "split"] = np.nan
    out = _load(blank, root)  # unassigned rows: pretraining only, read as ""
    assert (out.us.split[out.us.subject == str(table.loc[0, "subject_id"])] == "").all()


@pytest.mark.parametrize("name", ["Alpha", "ALPHA", " alpha "])
def test_measurement_columns_in_any_case(saved, name):
    table, root = saved
    out = _load(table.rename(columns={"alpha": name}), root)
    pd.testing.assert_frame_equal(out.us.targets, _load(table, root).us.targets)


def test_coverage_is_read_as_fhc_and_two_spellings_are_refused(saved):
    table, root = saved
    out = _load(table.rename(columns={"fhc": "Coverage"}), root)
    pd.testing.assert_frame_equal(out.us.targets, _load(table, root).us.targets)
    with pytest.raises(ValueError, match="columns 'alpha' and 'Alpha' both read as 'alpha'"):
        _load(table.assign(Alpha=table["alpha"]), root)


def test_missing_measurement_columns_are_named(saved):
    table, root = saved
    # a split column assigning train/calibration rows: they must carry their measurements
    with pytest.raises(ValueError, match=r"US rows need the measurement column\(s\) \['alpha'\]"):
        _load(table.drop(columns="alpha"), root)
    bare = table.drop(columns=["alpha", "beta", "fhc"])
    with pytest.raises(ValueError, match="expected alpha, beta, fhc"):
        _load(bare, root)
    with pytest.raises(ValueError, match="expected alpha, beta, fhc"):
        _load(bare.drop(columns="split"), root, labels="required")
    # an unlabelled registry, or a table to predict on, may have none
    out = _load(bare.drop(columns="split"), root)
    assert out.us.targets.isna().all().all()
    assert "split" not in out.us and "split" not in out.xr  # no column: no split to honour
    with pytest.warns(UserWarning, match=r"no column \['alpha'\]"):
        _load(table.drop(columns=["alpha", "split"]), root, labels="optional")
    with pytest.raises(ValueError, match="labels must be"):
        _load(table, root, labels="maybe")


@pytest.mark.parametrize(
    "column, value",
    [
        ("alpha", 500.0),
        ("alpha", -1.0),
        ("beta", -1e6),
        ("fhc", 250.0),
        ("ai", 95.0),
        ("ce", -120.0),
        ("ihdi", 5.0),
        ("ihdi", 2.5),
        ("alpha", np.inf),
        ("age_days", -3.0),
        ("pixel_spacing_mm", 0.0),
    ],
)
def test_impossible_measurements_are_named(saved, column, value):
    table, root = saved
    modality = "XR" if column in ("ai", "ce", "ihdi") else "US"
    row = int(np.flatnonzero((table["modality"] == modality) & (table["split"] == "train"))[1])
    bad = table.copy()
    bad[column] = bad[column].astype(float)
    bad.loc[row, column] = value
    with pytest.raises(ValueError, match=rf"row {row} column '{column}'"):
        _load(bad, root)


def test_conflicting_duplicates_need_a_rater_id(saved):
    table, root = saved
    dup = pd.concat([table, table.iloc[[0]].assign(alpha=56.0)], ignore_index=True)
    dup.loc[0, "alpha"] = 40.0
    last = len(dup) - 1
    with pytest.raises(ValueError, match=rf"rows 0 and {last} column 'alpha'.*no rater_id column"):
        _load(dup, root)
    out = _load(dup.assign(rater_id=[1] * (len(dup) - 1) + [2]), root)
    k = int(np.flatnonzero(out.us.image_id == table.loc[0, "image_id"])[0])
    assert out.us.targets["alpha"].iloc[k] == 48.0  # two raters: averaged
    assert len(out.us.images) == (table["modality"] == "US").sum()
    with pytest.raises(ValueError, match="both from rater_id '1'"):
        _load(dup.assign(rater_id=1), root)
    same = pd.concat([table, table.iloc[[0]]], ignore_index=True)  # an exact copy is harmless
    pd.testing.assert_frame_equal(_load(same, root).us.targets, _load(table, root).us.targets)


def test_one_subject_in_two_splits_is_refused(saved):
    table, root = saved
    cal = table.index[table["split"] == "calibration"][0]
    subject = table.loc[cal, "subject_id"]
    test_row = table.index[table["split"] == "test"][0]
    bad = table.copy()
    bad.loc[test_row, "subject_id"] = subject
    with pytest.raises(ValueError, match=rf"subject '{subject}' is in several splits"):
        _load(bad, root)


def test_one_image_under_two_ids_is_refused(saved, tmp_path):
    table, root = saved
    test_row = table.index[(table["split"] == "test") & (table["modality"] == "US")][0]
    twin = table.loc[[test_row]].assign(image_id="copy", split="train", subject_id="other")
    with pytest.raises(ValueError, match=r"same file .* under two image ids.*'copy'"):
        _load(pd.concat([table, twin], ignore_index=True), root)
    # the same pixels under another file name
    src = root / table.loc[test_row, "image_path"]
    (tmp_path / "copy.png").write_bytes(src.read_bytes())
    twin = twin.assign(image_path=str(tmp_path / "copy.png"))
    with pytest.raises(ValueError, match="image ids .* and 'copy' hold identical pixels"):
        _load(pd.concat([table, twin], ignore_index=True), root)
    # one id for two files
    other = table.loc[[test_row + 1]].assign(image_id=table.loc[test_row, "image_id"])
    with pytest.raises(ValueError, match="names two different files"):
        _load(pd.concat([table.drop(index=test_row + 1), other], ignore_index=True), root)


def test_two_hips_of_one_image_may_share_it(tmp_path):
    Image.fromarray(_ramp()).save(tmp_path / "pelvis.png")
    table = pd.DataFrame(
        {
            "image_path": ["pelvis.png", "pelvis.png"],
            "subject_id": ["s", "s"],
            "side": ["L", "R"],
            "modality": ["XR", "XR"],
            "ai": [20.0, 30.0],
            "ce": [25.0, 20.0],
            "ihdi": [1, 2],
        }
    )
    out = load_image_table(table, tmp_path, image_size=32).xr
    assert out.image_id.tolist() == ["pelvis.png:L", "pelvis.png:R"]
    assert out.targets["ai"].tolist() == [20.0, 30.0]


@pytest.mark.parametrize("value", [np.nan, "", "  "])
def test_empty_subject_id_is_named(saved, value):
    table, root = saved
    bad = table.astype({"subject_id": object})
    bad.loc[5, "subject_id"] = value
    with pytest.raises(ValueError, match="row 5 column 'subject_id' is empty"):
        _load(bad, root)


def test_empty_subject_id_in_a_csv_is_named(saved, tmp_path):
    table, root = saved
    bad = table.copy()
    bad.loc[2, "subject_id"] = None
    bad.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match="row 2 column 'subject_id' is empty"):
        load_image_table(tmp_path / "m.csv", root, image_size=32)


def test_constant_images_are_flagged_and_named(saved, tmp_path):
    table, root = saved
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "white.png")
    row = table.index[table["modality"] == "US"][2]
    bad = table.copy()
    bad.loc[row, "image_path"] = str(tmp_path / "white.png")
    image_id = bad.loc[row, "image_id"]
    with pytest.warns(UserWarning, match=rf"1 image\(s\) are constant.*'{image_id}'"):
        out = _load(bad, root)
    assert out.us.flagged.tolist() == (out.us.image_id == image_id).tolist()


def test_save_never_writes_outside_its_directory(small_cohort, tmp_path):
    from sklearn.utils import Bunch

    target = tmp_path / "a" / "b" / "out"
    evil = ["../../../x", "/tmp/skddh_evil_abs", "sub/dir", "..\\..\\win", "..", "."]
    us = small_cohort.us
    part = Bunch(**{**us, "image_id": np.array(evil + list(us.image_id[len(evil) :]))})
    manifest = save_image_table(Bunch(us=part, xr=small_cohort.xr), target)
    written = {p.resolve() for p in tmp_path.rglob("*") if p.is_file()}
    assert all(target.resolve() in p.parents for p in written)
    assert not Path("/tmp/skddh_evil_abs.png").exists()
    assert len(list((target / "images" / "us").iterdir())) == len(us.images)
    loaded = load_image_table(manifest, image_size=32).us
    np.testing.assert_array_equal(loaded.image_id, part.image_id)  # ids kept as they were
    np.testing.assert_array_equal(loaded.images, us.images)


def test_save_refuses_a_repeated_image_id(small_cohort, tmp_path):
    from sklearn.utils import Bunch

    us = small_cohort.us
    ids = us.image_id.copy()
    ids[1] = ids[0]
    with pytest.raises(ValueError, match=f"image id '{ids[0]}' appears twice"):
        save_image_table(Bunch(us=Bunch(**{**us, "image_id": ids}), xr=small_cohort.xr), tmp_path)
    ids[1] = " "
    with pytest.raises(ValueError, match="us: image id 1 is empty"):
        save_image_table(Bunch(us=Bunch(**{**us, "image_id": ids}), xr=small_cohort.xr), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


# ---------------------------------------------------------------------------------------------
# Property: a malformed table loads consistently or is refused with ValueError / TypeError
# ---------------------------------------------------------------------------------------------
_GARBAGE = [None, "", " ", "nan", "x", -1e9, 1e9, np.inf, -np.inf, np.nan, 0, True, "1e400"]
_PLAUSIBLE = {
    "image_path": ["a.png", "b.png", "c.png", "blank.png", "./a.png", "missing.png"],
    "subject_id": ["s1", "s2", "s3", 7],
    "side": ["L", "R", "b", " r"],
    "modality": ["US", "XR", "us", " xr"],
    "split": ["train", "Test", "calibration", "CALIBRATION ", "val"],
    "image_id": ["i1", "i2", "i3"],
    "rater_id": [1, 2, "r3"],
}
_NAMES = {
    "image_path": ["image_path", "Image Path", "IMAGE_PATH"],
    "subject_id": ["subject_id", "Subject_ID", "subject id"],
    "side": ["side", "Side"],
    "modality": ["modality", "MODALITY"],
    "alpha": ["alpha", "Alpha", " ALPHA"],
    "beta": ["beta", "Beta"],
    "fhc": ["fhc", "FHC", "coverage"],
    "ai": ["ai", "AI"],
    "ce": ["ce", "CE"],
    "ihdi": ["ihdi", "IHDI"],
    "age_days": ["age_days", "Age Days"],
    "pixel_spacing_mm": ["pixel_spacing_mm"],
    "split": ["split", "Split"],
    "image_id": ["image_id", "Image_ID"],
    "rater_id": ["rater_id", "Rater_Id"],
    "notes": ["notes", "alfa"],
}


def _cell_strategy(st, key, rate):
    """Plausible cells for a column, garbage one time in ``rate`` (never when 0)."""
    from skddh.datasets._io import RANGES

    if key in RANGES:
        lo, hi = RANGES[key]
        plausible = st.floats(lo - 5, hi + 5) | st.sampled_from([lo, hi, 60.0, None])
    elif key in ("age_days", "pixel_spacing_mm"):
        plausible = st.floats(-1, 400) | st.none()
    else:
        plausible = st.sampled_from(_PLAUSIBLE.get(key, ["", "n"]))
    garbage = st.sampled_from(_GARBAGE) | st.text(max_size=3)
    if rate == 0:
        return plausible
    return st.integers(1, rate).flatmap(lambda k: garbage if k == 1 else plausible)


def _check_consistent(out, original, caught):
    """What a loaded table must satisfy: every label traced to a cell, nothing impossible."""
    from skddh.datasets._io import RANGES, _column_key

    frame = out.frame
    for col in original.columns:  # each recognised column's cells are read as they are
        key = _column_key(col)
        if key in RANGES:
            blank = [v is None or (isinstance(v, str) and not v.strip()) for v in original[col]]
            given = pd.to_numeric(original[col].mask(blank), errors="coerce").astype(float)
            np.testing.assert_array_equal(frame[key].to_numpy(), given.to_numpy())
    seen = {}
    for name, part, cols in (("US", out.us, ("alpha", "beta", "fhc")), ("XR", out.xr, None)):
        n = len(part.images)
        assert part.images.dtype == np.uint8 and part.images.shape == (n, 8, 8)
        assert part.flagged.dtype == bool and len(part.flagged) == n == len(part.targets)
        assert all(isinstance(s, str) and s.strip() for s in part.subject)
        cols = cols or ("ai", "ce", "ihdi")
        rows = frame[frame["modality"] == name]
        for k in range(n):
            hip = rows[(rows["image_id"] == part.image_id[k]) & (rows["side"] == part.side[k])]
            for col, target in zip(cols, part.targets.columns):
                value = part.targets[target].iloc[k]
                assert np.isnan(value) == hip[col].isna().all()  # never a silent NaN label
                lo, hi = RANGES[col]
                assert np.isnan(value) or lo <= value <= hi
        given_split = any(_column_key(c) == "split" for c in original.columns)
        assert ("split" in part) == given_split
        if given_split:
            assert set(part.split) <= {"train", "calibration", "test", ""}
            for subject, split in zip(part.subject, part.split):
                if split:
                    assert seen.setdefault(subject, split) == split
        absent = [c for c in cols if _column_key(c) not in map(_column_key, original.columns)]
        if n and 0 < len(absent) < len(cols):  # partly unlabelled: said so
            assert any(f"{name} rows: no column" in str(w.message) for w in caught)


def _tables(st):
    """Manifests with plausible columns and cells, and now and then a broken one."""

    @st.composite
    def tables(draw):
        required = ["image_path", "subject_id", "side", "modality"]
        if draw(st.integers(0, 9)) == 0:  # now and then a required column is missing
            required.remove(draw(st.sampled_from(required)))
        optional = sorted(set(_NAMES) - set(required))
        keys = required + draw(st.lists(st.sampled_from(optional), unique=True, max_size=8))
        names = [draw(st.sampled_from(_NAMES[k])) for k in keys]
        if draw(st.integers(0, 9)) == 0:  # now and then one column under two spellings
            k = draw(st.sampled_from(keys))
            keys, names = [*keys, k], [*names, draw(st.sampled_from(_NAMES[k]))]
        n = draw(st.integers(1, 6))
        rate = draw(st.sampled_from([0, 0, 40, 8]))
        data = {}
        for key, name in zip(keys, names):
            data.setdefault(name, [draw(_cell_strategy(st, key, rate)) for _ in range(n)])
        return pd.DataFrame(data, dtype=object)

    return tables()


def test_malformed_tables_load_consistently_or_are_refused(tmp_path_factory):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    root = tmp_path_factory.mktemp("malformed")
    for i, name in enumerate(("a", "b", "c")):
        Image.fromarray(np.roll(_ramp(8), 2 * i, axis=1)).save(root / f"{name}.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(root / "blank.png")

    @hypothesis.settings(
        max_examples=100, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )  # fmt: skip
    @hypothesis.given(_tables(st), st.sampled_from(["auto", "required", "optional"]))
    def check(table, labels):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out = load_image_table(table, root, image_size=8, labels=labels)
            except (ValueError, TypeError):
                return
        _check_consistent(out, table, caught)

    check()
