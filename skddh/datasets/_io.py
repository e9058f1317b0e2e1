"""Reading and writing image registries in the long manifest format (the docs' data formats).

One row per (image, hip): ``image_path, subject_id, side {L, R, B}, modality {US, XR},
age_days`` and the measurements ``alpha, beta, fhc`` (ultrasound; ``fhc`` in percent) and
``ai, ce, ihdi`` (X-ray), NaN where absent; optional ``pixel_spacing_mm``, ``rater_id``,
``image_id``, ``split``. A femoral-neck BMD manifest (:func:`make_bmd_cohort`) is XR rows with
a ``bmd`` column (g/cm^2, DEXA), blank where unlabelled, and no ``ai, ce, ihdi``. Several rows
for the same image and side with different ``rater_id`` are averaged into a consensus (IHDI:
rounded-up median).

A hip is never passed on garbage: :func:`load_image_table` refuses what it cannot read
unambiguously (an impossible measurement, an unknown split, a subject in two splits, one
image under two ids, disagreeing rows without a ``rater_id``, a decompression bomb) with a
``ValueError`` naming the row and column, and flags blank images rather than hiding them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.utils import Bunch

REQUIRED = ("image_path", "subject_id", "side", "modality")
US_COLUMNS = ("alpha", "beta", "fhc")
XR_COLUMNS = ("ai", "ce", "ihdi")
#: Femoral-neck BMD (g/cm^2) of XR rows: the label of a BMD manifest (make_bmd_cohort).
BMD_COLUMNS = ("bmd",)
OPTIONAL = ("age_days", "pixel_spacing_mm", "rater_id", "image_id", "split")
SPLITS = ("train", "calibration", "test")
#: Other names a column is read under (the loaded US targets call ``fhc`` "coverage").
ALIASES = {"coverage": "fhc"}
#: Physiologically possible values, bounds included (``fhc`` in percent; ``ihdi`` an integer).
RANGES = {
    "alpha": (0.0, 90.0),
    "beta": (0.0, 180.0),
    "fhc": (0.0, 100.0),
    "ai": (0.0, 90.0),
    "ce": (-90.0, 90.0),
    "ihdi": (1.0, 4.0),
    "bmd": (0.0, 3.0),
}
_UNITS = {"bmd": "g/cm^2"}
_DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
_WINDOWED_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}  # 16/32-bit and float
_N_NAMED = 10  # ids listed in a warning before "and N more"


# ---------------------------------------------------------------------------------------------
# Images: decoding to uint8
# ---------------------------------------------------------------------------------------------
class _ImageError(ValueError):
    """An image that decodes but is refused (too many pixels, NaN or infinite pixels)."""


def _check_pixel_count(path, n_pixels: int) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and n_pixels > limit:
        raise _ImageError(
            f"image {str(path)!r} has {n_pixels:,} pixels, over PIL.Image.MAX_IMAGE_PIXELS = "
            f"{limit:,}: refused as a possible decompression bomb (raise that limit if the image "
            "is genuine)."
        )


def _window_to_uint8(arr, center=None, width=None) -> np.ndarray:
    """Map an image of any range to uint8 by a linear window, never by clipping to 0-255.

    The window is DICOM's ``(center, width)`` (the linear VOI LUT of PS3.3 C.11.2.1.2) when
    both are given, else the image's own minimum to maximum. A constant image (no window
    exists) becomes black; the loader flags it.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.datasets._io import _window_to_uint8
    >>> _window_to_uint8(np.array([[1000, 2000, 3000]], np.uint16))
    array([[  0, 128, 255]], dtype=uint8)
    >>> _window_to_uint8(np.array([[0.0, 40.0, 80.0]]), center=40.5, width=41)
    array([[  0, 128, 255]], dtype=uint8)
    """
    arr = np.asarray(arr, np.float64)
    if not np.isfinite(arr).all():
        raise _ImageError("it has NaN or infinite pixels")
    if center is not None and width is not None:
        img = (arr - (center - 0.5)) / max(width - 1.0, 1e-12) + 0.5
    else:
        lo, hi = (arr.min(), arr.max()) if arr.size else (0.0, 0.0)
        if hi == lo:
            return np.zeros(arr.shape, np.uint8)
        img = (arr - lo) / (hi - lo)
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _first(value):
    """A DICOM tag's value as a float, the first of a multi-valued one; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[0]) if len(value) else None
    return float(value)


def _read_dicom(path: Path, frame: int) -> tuple[np.ndarray, float | None]:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("Reading DICOM needs pydicom: pip install 'skddh[dicom]'.") from exc
    ds = pydicom.dcmread(path)
    _check_pixel_count(path, int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0))
    arr = np.asarray(ds.pixel_array)
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if n_frames > 1:
        arr = arr[frame]
    center = width = None
    if arr.ndim == 3:  # colour ultrasound: luminance
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114])
    else:  # stored values -> modality values -> the VOI window the tags ask for
        slope, intercept = _first(ds.get("RescaleSlope")), _first(ds.get("RescaleIntercept"))
        arr = arr * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    img = _window_to_uint8(arr, center, width)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        img = 255 - img  # MONOCHROME1 stores bright as low values
    spacing = None
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        if tag in ds:
            row, col = (float(v) for v in ds[tag].value)
            spacing = (row, col)
            break
    if spacing is None and "SequenceOfUltrasoundRegions" in ds:
        region = ds.SequenceOfUltrasoundRegions[0]
        # PhysicalDeltaX/Y are in cm for the usual units code 3
        spacing = (10.0 * float(region.PhysicalDeltaY), 10.0 * float(region.PhysicalDeltaX))
    if spacing is not None and not np.isclose(spacing[0], spacing[1]):
        # make pixels square before anything else, or angles would be distorted
        h, w = img.shape
        scale_r = spacing[0] / min(spacing)
        scale_c = spacing[1] / min(spacing)
        img = np.asarray(
            Image.fromarray(img).resize(
                (round(w * scale_c), round(h * scale_r)), Image.Resampling.BILINEAR
            )
        )
    return img, (None if spacing is None else min(spacing))


def _read_pil(path: Path) -> np.ndarray:
    try:
        im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _ImageError(
            f"image {str(path)!r} refused as a possible decompression bomb ({exc}); raise "
            "PIL.Image.MAX_IMAGE_PIXELS if the image is genuine."
        ) from None
    with im:
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse there too
        _check_pixel_count(path, im.size[0] * im.size[1])
        if im.mode in _WINDOWED_MODES:
            return _window_to_uint8(np.asarray(im))
        return np.asarray(im.convert("L"))


def _read_image(path: Path, frame: int) -> tuple[np.ndarray, float | None]:
    """Decode one file to a 2-D uint8 image and its native pixel spacing (None if unknown).

    8-bit images are kept as they are; 16-bit, 32-bit and float images (and every DICOM) are
    windowed into uint8 (``_window_to_uint8``), never clipped. Images over
    ``PIL.Image.MAX_IMAGE_PIXELS`` and images with NaN or infinite pixels are refused.
    """
    try:
        if path.suffix.lower() in _DICOM_SUFFIXES:
            return _read_dicom(path, frame)
        return _read_pil(path), None
    except _ImageError as exc:
        if str(path) in str(exc):
            raise
        raise _ImageError(f"image {str(path)!r} is refused: {exc}.") from None


def _letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Pad to a square (centred, black) then resize: keeps the aspect ratio, hence angles."""
    h, w = img.shape
    side = max(h, w)
    canvas = np.zeros((side, side), np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top : top + h, left : left + w] = img
    if side != size:
        canvas = np.asarray(Image.fromarray(canvas).resize((size, size), Image.Resampling.BILINEAR))
    return canvas, side / size


@contextlib.contextmanager
def _bombs_refused():
    """Pillow's decompression-bomb warning raised as an error while decoding (see _read_pil).

    Enter it in the calling thread around any worker threads: warning filters are global.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


# ---------------------------------------------------------------------------------------------
# Manifests: columns, values and identities
# ---------------------------------------------------------------------------------------------
def _column_key(name) -> str:
    """Columns are recognised whatever their case, surrounding spaces, or spaces for '_'."""
    key = re.sub(r"[\s\-]+", "_", name.strip().lower()) if isinstance(name, str) else name
    return ALIASES.get(key, key)


def _normalise_columns(table: pd.DataFrame) -> pd.DataFrame:
    known = (*REQUIRED, *US_COLUMNS, *XR_COLUMNS, *BMD_COLUMNS, *OPTIONAL)
    renames, seen = {}, {}
    for col in table.columns:
        key = _column_key(col)
        if key not in known:
            continue
        if key in seen:
            raise ValueError(
                f"columns {seen[key]!r} and {col!r} both read as {key!r}; keep one of them."
            )
        seen[key] = col
        renames[col] = key
    return table.rename(columns=renames)


def _blank(values: pd.Series) -> np.ndarray:
    """NaN, None or empty/whitespace strings."""
    return (values.isna() | values.astype(str).str.strip().eq("")).to_numpy()


def _first_row(mask) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


def _numeric(table: pd.DataFrame, col: str) -> pd.Series:
    values = pd.to_numeric(table[col], errors="coerce")
    bad = values.isna() & ~_blank(table[col])
    if bad.any():
        i = _first_row(bad)
        raise ValueError(
            f"row {table.index[i]} column {col!r}: {table[col].iloc[i]!r} is not a number."
        )
    return values.astype(np.float64)


def _check_ranges(table: pd.DataFrame, fhc_unit: str) -> None:
    """Physiologically impossible values are errors naming the row and the column."""
    for col, (lo, hi) in RANGES.items():
        values = table[col].to_numpy()
        if col == "fhc" and fhc_unit == "fraction":
            lo, hi = lo / 100.0, hi / 100.0
        bad = ~np.isnan(values) & ((values < lo) | (values > hi))
        if col == "ihdi":
            bad |= ~np.isnan(values) & (values != np.round(values))
        if bad.any():
            i = _first_row(bad)
            if col == "ihdi":
                allowed = "one of 1, 2, 3, 4"
            else:
                unit = fhc_unit if col == "fhc" else _UNITS.get(col, "degrees")
                allowed = f"within [{lo:g}, {hi:g}] ({unit})"
            raise ValueError(
                f"row {i} column {col!r}: {values[i]:g} is not a possible value; {col} must be "
                f"{allowed}."
            )
    for col, what in (("age_days", "negative"), ("pixel_spacing_mm", "not positive")):
        values = table[col].to_numpy()
        bad = ~np.isnan(values) & ((values < 0) if col == "age_days" else ~(values > 0))
        bad |= np.isinf(values)
        if bad.any():
            i = _first_row(bad)
            raise ValueError(f"row {i} column {col!r}: {values[i]:g} is {what} or infinite.")


def _check_labels(table: pd.DataFrame, labels: str, present: set) -> None:
    """Measurement columns a modality's rows need: all of them when the rows are labelled."""
    for modality, cols in (("US", US_COLUMNS), ("XR", XR_COLUMNS)):
        rows = (table["modality"] == modality).to_numpy()
        if not rows.any():
            continue
        absent = [c for c in cols if c not in present]
        if not absent or (modality == "XR" and "bmd" in present and len(absent) == len(cols)):
            continue  # a BMD manifest: its XR rows are labelled by ``bmd`` alone
        required = labels == "required" or (
            labels == "auto"
            and table["split"].isin(["train", "calibration"]).to_numpy()[rows].any()
        )
        i = _first_row(rows)
        expected = ", ".join(cols)
        if required:
            why = "labels='required'"
            if labels == "auto":
                why = "the split column assigns them to train or calibration"
            raise ValueError(
                f"row {i}: {modality} rows need the measurement column(s) {absent} ({why}); "
                f"expected {expected} (any case; NaN where a reading is absent). Pass "
                "labels='optional' for an unlabelled registry or a table to predict on."
            )
        if len(absent) < len(cols):
            warnings.warn(
                f"{modality} rows: no column {absent} (expected {expected}); read as NaN for "
                "every row, so those targets are unlabelled.",
                UserWarning,
                stacklevel=3,
            )


def _check_subjects_and_splits(table: pd.DataFrame) -> None:
    """A subject belongs to one split: its correlated images must not straddle two."""
    assigned = table[table["split"] != ""]
    splits = assigned.groupby("subject_id", sort=False)["split"].unique()
    several = splits[splits.map(len) > 1]
    if len(several):
        who, names = several.index[0], several.iloc[0]
        rows = [
            int(assigned.index[(assigned["subject_id"] == who) & (assigned["split"] == s)][0])
            for s in names
        ]
        raise ValueError(
            f"subject {who!r} is in several splits ({', '.join(names)}; rows "
            f"{', '.join(map(str, rows))}): split by subject, or its correlated images leak "
            "between training, calibration and test."
        )


def _same_image_conflict(ids, subjects, sides) -> bool:
    """Several image ids may share one image only as the two hips of one subject's X-ray."""
    if len(set(subjects)) > 1:
        return True
    by_id = dict(zip(ids, sides))
    one_side_each = len(set(zip(ids, sides))) == len(by_id)
    return not one_side_each or len(set(by_id.values())) < len(by_id)


def _check_identities(table: pd.DataFrame, root: Path) -> None:
    """One image id names one file of one subject; one file is not under two ids."""
    resolved = pd.Series([str((root / p).resolve()) for p in table["image_path"]], table.index)
    for values, what in ((resolved, "file"), (table["subject_id"], "subject")):
        n = values.groupby(table["image_id"], sort=False).nunique()
        if (n > 1).any():
            image_id = n.index[n > 1][0]
            rows = np.flatnonzero((table["image_id"] == image_id).to_numpy())
            first = values.iloc[rows[0]]
            j = next(r for r in rows if values.iloc[r] != first)
            raise ValueError(
                f"rows {rows[0]} and {j} column 'image_id': image id {image_id!r} names two "
                f"different {what}s ({first!r} and {values.iloc[j]!r}); give each image its own id."
            )
    # Several ids may share a file only as the hips of one subject's image, one id per side.
    by_file = table.groupby(resolved, sort=False)
    shared = by_file["image_id"].nunique() > 1
    sides_per_id = table.groupby([resolved, table["image_id"]], sort=False)["side"].nunique()
    ids_per_side = table.groupby([resolved, table["side"]], sort=False)["image_id"].nunique()
    conflict = shared & (
        (by_file["subject_id"].nunique() > 1)
        | (sides_per_id > 1).groupby(level=0, sort=False).any()
        | (ids_per_side > 1).groupby(level=0, sort=False).any()
    )
    if conflict.any():
        path = conflict.index[conflict.to_numpy()][0]
        rows = np.flatnonzero((resolved == path).to_numpy())
        ids = table["image_id"].to_numpy()
        j = next(r for r in rows if ids[r] != ids[rows[0]])
        raise ValueError(
            f"rows {rows[0]} and {j} column 'image_path': the same file {path!r} is under two "
            f"image ids, {ids[rows[0]]!r} and {ids[j]!r}; one image under two ids can land in "
            "two splits (or be counted twice): give it one id."
        )


def _check_disagreements(table: pd.DataFrame) -> None:
    """Two readings of one hip average only as two raters' (a ``rater_id`` per row)."""
    has_rater = "rater_id" in table.columns
    rater = table["rater_id"].astype(str).where(~_blank(table["rater_id"]), "") if has_rater else ""
    keyed = table.assign(_rater=rater)
    for modality, cols in (("US", US_COLUMNS), ("XR", (*XR_COLUMNS, *BMD_COLUMNS))):
        rows = keyed[keyed["modality"] == modality]
        if len(rows) == 0:
            continue
        groups = rows.groupby(["image_id", "side", "_rater"], sort=False)
        n = groups[list(cols)].nunique()
        bad = n[(n > 1).any(axis=1)]
        if len(bad) == 0:
            continue
        (image_id, side, who), counts = bad.index[0], bad.iloc[0]
        col = counts.index[counts.to_numpy() > 1][0]
        part = rows[(rows["image_id"] == image_id) & (rows["side"] == side)]
        part = part[part["_rater"] == who]
        values = part[col].dropna()
        i, j = values.index[0], values.index[values != values.iloc[0]][0]
        how = (
            f"both from rater_id {who!r}"
            if who != ""
            else ("no rater_id on these rows" if has_rater else "the table has no rater_id column")
        )
        raise ValueError(
            f"rows {i} and {j} column {col!r}: image {image_id!r} side {side!r} has two readings "
            f"({values[i]:g} and {values[j]:g}), {how}; give each rater's reading a rater_id "
            "(they are then averaged) or keep one row."
        )


def _check_same_pixels(parts: list[Bunch], rows: list[np.ndarray]) -> None:
    """The same (non-constant) picture under two image ids: a copied file is one image."""
    seen: dict[str, tuple] = {}
    for part, row_ids in zip(parts, rows):
        for k, digest in enumerate(part.pop("_digest")):
            if part.flagged[k]:
                continue  # blank images are alike without being one image
            entry = (part.image_id[k], part.subject[k], part.side[k], int(row_ids[k]))
            if digest not in seen:
                seen[digest] = entry
                continue
            first = seen[digest]
            if first[0] != entry[0] and _same_image_conflict(
                [first[0], entry[0]], [first[1], entry[1]], [first[2], entry[2]]
            ):
                raise ValueError(
                    f"rows {first[3]} and {entry[3]} column 'image_path': image ids "
                    f"{first[0]!r} and {entry[0]!r} hold identical pixels; one image under two "
                    "ids can land in two splits (or be counted twice): keep one."
                )


def _warn_flagged(parts: list[Bunch]) -> None:
    ids = [i for part in parts for i in part.image_id[part.flagged]]
    if ids:
        more = f" and {len(ids) - _N_NAMED} more" if len(ids) > _N_NAMED else ""
        warnings.warn(
            f"{len(ids)} image(s) are constant (blank or saturated, no anatomy): "
            f"{', '.join(map(repr, ids[:_N_NAMED]))}{more}. They are kept and marked in the "
            "loaded `flagged` column; a SelectiveImagingPolicy refers them to X-ray.",
            UserWarning,
            stacklevel=3,
        )


def _read_table(table, image_root) -> tuple[pd.DataFrame, Path]:
    if isinstance(table, (str, os.PathLike)):
        path = Path(table)
        if not path.is_file():
            raise ValueError(f"table: manifest file {str(path)!r} does not exist.")
        root = Path(image_root) if image_root is not None else path.parent
        # ids stay strings: "007" is not 7, and an empty cell stays empty (not "nan")
        header = pd.read_csv(path, nrows=0).columns
        ids = {c: str for c in header if _column_key(c) in ("subject_id", "image_id", "split")}
        return pd.read_csv(path, dtype=ids), root
    if isinstance(table, pd.DataFrame):
        root = Path(image_root) if image_root is not None else Path.cwd()
        return table.copy(), root
    raise TypeError(f"table must be a CSV path or a DataFrame, got {type(table).__name__}.")


def _clean_table(table: pd.DataFrame, fhc_unit: str, labels: str) -> tuple[pd.DataFrame, set]:
    """Columns named as the loader reads them, values typed and checked row by row."""
    table = _normalise_columns(table)
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(
            f"table is missing the required column(s) {missing} (columns are read in any case; "
            f"the table has {[str(c) for c in table.columns]})."
        )
    present = set(table.columns)  # as given, before the loader fills any in
    table = table.reset_index(drop=True)
    for col in (*REQUIRED, *(("image_id",) if "image_id" in table else ())):
        empty = _blank(table[col])
        if empty.any():
            raise ValueError(f"row {_first_row(empty)} column {col!r} is empty.")
        table[col] = table[col].astype(str)
    table["subject_id"] = table["subject_id"].str.strip()  # " s1" is the subject "s1"
    table["modality"] = table["modality"].astype(str).str.strip().str.upper()
    table["side"] = table["side"].astype(str).str.strip().str.upper()
    table["split"] = (
        table["split"].where(~_blank(table["split"]), "").astype(str).str.strip().str.lower()
        if "split" in table.columns
        else ""
    )
    for col, allowed in (
        ("modality", {"US", "XR"}),
        ("side", {"L", "R", "B"}),
        ("split", {*SPLITS, ""}),
    ):
        bad = ~table[col].isin(allowed)
        if bad.any():
            i = _first_row(bad)
            raise ValueError(
                f"row {i} column {col!r}: {table[col].iloc[i]!r} is not one of "
                f"{sorted(allowed - {''})}" + (" (or empty)." if col == "split" else ".")
            )
    for col in (*US_COLUMNS, *XR_COLUMNS, *BMD_COLUMNS, "age_days", "pixel_spacing_mm"):
        table[col] = _numeric(table, col) if col in present else np.nan
    _check_labels(table, labels, present)
    _check_ranges(table, fhc_unit)
    if fhc_unit == "fraction":
        table["fhc"] = 100.0 * table["fhc"]
    elif table["fhc"].notna().any() and table["fhc"].max() <= 1.0:
        raise ValueError(
            "column 'fhc': every value is <= 1, which looks like a fraction; fhc is read in "
            "percent. Pass fhc_unit='fraction' if that is what the table holds."
        )
    return table, present


def load_image_table(
    table,
    image_root=None,
    *,
    image_size: int = 128,
    fhc_unit: str = "percent",
    frame: int = 0,
    labels: str = "auto",
) -> Bunch:
    """Load a registry of hip images from a long manifest (CSV path or DataFrame).

    Parameters
    ----------
    table : str, path or DataFrame
        The manifest, one row per image and hip (and rater). See the module docstring for the
        columns. Column names are recognised whatever their case and surrounding spaces
        (``Alpha``, ``" FHC "``, ``Image Path``), and ``coverage`` is read as ``fhc``; two
        columns that read as one name are an error.
    image_root : str or path, default=None
        Directory that ``image_path`` is relative to. Default: the CSV's directory, or the
        working directory for a DataFrame.
    image_size : int, default=128
        Images are made grayscale, padded to a square (keeping the aspect ratio, so angles
        are preserved) and resized to ``image_size`` x ``image_size``.
    fhc_unit : {"percent", "fraction"}, default="percent"
        Unit of the ``fhc`` column. Values all in [0, 1] with ``"percent"`` raise an error
        rather than being silently read as percent.
    frame : int, default=0
        Frame taken from multi-frame (cine) DICOM files.
    labels : {"auto", "required", "optional"}, default="auto"
        Whether rows must carry measurement columns. ``"required"``: every modality in the
        table needs all of its columns (US ``alpha, beta, fhc``; XR ``ai, ce, ihdi``; a cell
        may be empty). ``"optional"``: an unlabelled registry, or a table to predict on,
        may have none (a warning names the absent ones when only some are there).
        ``"auto"``: required for a modality whose rows the ``split`` column assigns to train
        or calibration, optional otherwise.

    Returns
    -------
    Bunch
        ``us`` and ``xr`` Bunches (a modality absent from the table gives an empty one) with
        ``images`` (n, image_size, image_size) uint8, ``targets`` (US: ``alpha``, ``beta``,
        ``coverage`` in percent; XR: ``ai``, ``ce``, ``ihdi``, and ``bmd`` when the table has
        that column; a BMD manifest, with no ``ai, ce, ihdi``, gives ``bmd`` alone, NaN where
        unlabelled), ``subject``, ``side``,
        ``image_id``, ``age_weeks`` (US) / ``age_months`` (XR), ``pixel_spacing_mm`` (after
        resizing; NaN if unknown), ``flagged`` (bool: a constant image, blank or saturated),
        ``split`` (if the table has one: ``train``, ``calibration``, ``test``, or ``""``
        where unassigned), and ``frame`` (the rows, columns renamed as read).

    Raises
    ------
    ValueError
        Anything the loader cannot read unambiguously; the message names the row and the
        column. See Notes.

    Warns
    -----
    UserWarning
        Constant images (named by id; kept, and marked in ``flagged``), and measurement
        columns absent where ``labels`` lets them be.

    Notes
    -----
    Images. 8-bit images are read as they are. 16-bit, 32-bit and float images are windowed
    into uint8, never clipped: DICOM by its ``WindowCenter``/``WindowWidth`` (after
    ``RescaleSlope``/``RescaleIntercept``) where the tags are there, everything else by the
    image's own minimum and maximum. MONOCHROME1 is inverted. An image over
    ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb, Pillow only warns) or with NaN or
    infinite pixels is an error naming the file.

    Rows. An error names the row (counted from 0, the first data row of a CSV) and the
    column for: a missing required column; an empty ``image_path``, ``subject_id``,
    ``side``, ``modality`` or ``image_id``; a file that is absent or unreadable; an unknown
    ``modality`` or ``side``; a ``split`` other than ``train``, ``calibration``, ``test``
    (any case) or empty; a non-numeric measurement; an impossible one (alpha outside
    [0, 90], beta [0, 180], fhc [0, 100] %, ai [0, 90], ce [-90, 90], ihdi not one of 1-4,
    age_days < 0, pixel_spacing_mm <= 0); a subject in two splits; an image id naming two
    files or two subjects; one file (or identical pixels) under two image ids, unless they
    are the two hips of one subject's image; two rows for one image and side whose readings
    differ with no ``rater_id`` telling them apart (with one, they are averaged).

    Examples
    --------
    >>> import tempfile
    >>> from skddh.datasets import load_image_table, make_hip_cohort, save_image_table
    >>> cohort = make_hip_cohort(n_subjects=3, image_size=32, random_state=0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     manifest = save_image_table(cohort, d)
    ...     loaded = load_image_table(manifest, image_size=32)
    >>> bool((loaded.us.images == cohort.us.images).all())
    True
    """
    if fhc_unit not in ("percent", "fraction"):
        raise ValueError(f"fhc_unit must be 'percent' or 'fraction', got {fhc_unit!r}.")
    if labels not in ("auto", "required", "optional"):
        raise ValueError(f"labels must be 'auto', 'required' or 'optional', got {labels!r}.")
    table, root = _read_table(table, image_root)
    table, present = _clean_table(table, fhc_unit, labels)
    if "image_id" not in table.columns:
        table["image_id"] = table["image_path"] + ":" + table["side"]
    _check_subjects_and_splits(table)
    _check_identities(table, root)
    _check_disagreements(table)
    parts, rows = [], []
    with _bombs_refused():
        for modality in ("US", "XR"):
            part, row_ids = _load_modality(
                table[table["modality"] == modality], root, image_size, frame, modality, present
            )
            parts.append(part)
            rows.append(row_ids)
    _check_same_pixels(parts, rows)
    _warn_flagged(parts)
    if "split" not in present:
        for part in parts:
            del part["split"]
    return Bunch(us=parts[0], xr=parts[1], frame=table)


def _load_modality(
    rows: pd.DataFrame, root: Path, size: int, frame: int, modality: str, present: set
):
    cols = US_COLUMNS if modality == "US" else (*XR_COLUMNS, *BMD_COLUMNS)
    keys = ["image_id", "image_path", "subject_id", "side"]
    agg = {c: "mean" for c in (*cols, "age_days", "pixel_spacing_mm")}
    if "ihdi" in cols:
        agg["ihdi"] = "median"  # rounded up below: the consensus grade
    agg["split"] = "first"  # one per subject (checked); "first" skips the unassigned
    grouped = (
        rows.assign(_row=rows.index, split=rows["split"].mask(rows["split"] == ""))
        .groupby(keys, sort=False, dropna=False)
        .agg({**agg, "_row": "first"})
        .reset_index()
    )
    grouped["split"] = grouped["split"].fillna("")
    if "ihdi" in cols:
        grouped["ihdi"] = np.ceil(grouped["ihdi"])
    images = np.zeros((len(grouped), size, size), np.uint8)
    spacing = np.full(len(grouped), np.nan)
    flagged = np.zeros(len(grouped), bool)
    digests = []
    for i, (path_str, row_id) in enumerate(zip(grouped["image_path"], grouped["_row"])):
        path = root / str(path_str)
        if not path.is_file():
            raise ValueError(f"row {row_id} column 'image_path': file {str(path)!r} not found.")
        try:
            img, native = _read_image(path, frame)
        except _ImageError as exc:
            raise ValueError(f"row {row_id} column 'image_path': {exc}") from exc
        except Exception as exc:
            raise ValueError(
                f"row {row_id} column 'image_path': cannot read {str(path)!r} as an image "
                f"({type(exc).__name__}: {exc})."
            ) from exc
        flagged[i] = img.size == 0 or img.min() == img.max()
        digests.append(hashlib.sha1(repr(img.shape).encode() + img.tobytes()).hexdigest())
        images[i], factor = _letterbox(img, size)
        given = grouped["pixel_spacing_mm"].iloc[i]
        native = given if np.isfinite(given) else native
        spacing[i] = np.nan if native is None else native * factor
    if modality == "US":
        targets = pd.DataFrame(
            {
                "alpha": grouped["alpha"].to_numpy(),
                "beta": grouped["beta"].to_numpy(),
                "coverage": grouped["fhc"].to_numpy(),
            }
        )
    else:
        # a table with ``bmd`` adds it; a BMD-only manifest gives ``bmd`` alone
        names = list(XR_COLUMNS)
        if "bmd" in present:
            names = [c for c in XR_COLUMNS if c in present] + ["bmd"]
        targets = grouped[names].reset_index(drop=True)
    age_days = grouped["age_days"].to_numpy()
    out = Bunch(
        images=images,
        targets=targets,
        subject=grouped["subject_id"].astype(str).to_numpy(),
        side=grouped["side"].to_numpy(),
        image_id=grouped["image_id"].astype(str).to_numpy(),
        pixel_spacing_mm=spacing,
        flagged=flagged,
        split=grouped["split"].to_numpy(),
        _digest=digests,
    )
    if modality == "US":
        out["age_weeks"] = age_days / 7.0
    else:
        out["age_months"] = age_days / 30.4375
    return out, grouped["_row"].to_numpy()


def _file_name(image_id) -> str:
    """A file name for an image id that cannot leave its directory: characters other than
    letters, digits, ``.``, ``_`` and ``-`` become ``_``, leading dots are dropped, and a
    short hash of the id is appended whenever that changed it (so names stay distinct)."""
    text = str(image_id)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".")[:100]
    if name != text or not name:
        name = f"{name}_{hashlib.sha1(text.encode()).hexdigest()[:12]}"
    return name


def _bmd_as_xr(cohort: Bunch) -> Bunch:
    """A :func:`make_bmd_cohort` Bunch as the ``xr`` part of a manifest."""
    xr = Bunch(
        images=cohort.images,
        targets=cohort.targets[["bmd"]],
        image_id=cohort.image_id,
        subject=cohort.subject,
        side=cohort.side,
        split=cohort.split,
        age_years=cohort.age,
        acquisition=cohort.acquisition,
    )
    return Bunch(xr=xr)


def save_image_table(cohort: Bunch, directory) -> Path:
    """Write a cohort as PNG images plus ``manifest.csv`` in the long format; return its path.

    ``load_image_table`` on the returned path gives back the same images, targets, subjects,
    sides, image ids and splits (measurements are written at full precision).

    Image files are named after their image id, made safe first: an id that would leave
    ``directory`` (``..``, an absolute path, a path separator) or is not a plain file name
    gets its other characters replaced by ``_`` and a short hash of the id appended. The
    manifest's ``image_id`` column keeps every id as it is, so the round trip is exact.

    Parameters
    ----------
    cohort : Bunch
        As returned by :func:`make_hip_cohort` (its ``us`` and ``xr`` parts are written) or
        by :func:`make_bmd_cohort` (its radiographs are written as XR rows with ``bmd``,
        blank where unlabelled, ``age_days`` from ``age`` in years; they load back as ``xr``).
    directory : str or path
        Created if needed; images go to ``images/us`` and ``images/xr``.

    Returns
    -------
    pathlib.Path
        The manifest's path.

    Raises
    ------
    ValueError
        An empty image id, or one that appears twice within a modality (the two images would
        be one file); nothing is written then.

    Examples
    --------
    >>> import tempfile
    >>> from skddh.datasets import make_hip_cohort, save_image_table
    >>> cohort = make_hip_cohort(n_subjects=2, image_size=32, random_state=0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     print(save_image_table(cohort, d).name)
    manifest.csv
    """
    directory = Path(directory)
    if "us" not in cohort and "xr" not in cohort and "bmd" in cohort.get("targets", {}):
        cohort = _bmd_as_xr(cohort)
    names = {}
    for key in ("us", "xr"):
        if key not in cohort:
            continue
        ids = [str(i) for i in cohort[key].image_id]
        if any(not i.strip() for i in ids):
            raise ValueError(
                f"{key}: image id {ids.index(next(i for i in ids if not i.strip()))} is empty."
            )
        repeated = pd.Series(ids)[pd.Series(ids).duplicated()]
        if len(repeated):
            raise ValueError(f"{key}: image id {repeated.iloc[0]!r} appears twice.")
        names[key] = [_file_name(i) for i in ids]
        lowered = pd.Series(names[key]).str.lower()
        if lowered.duplicated().any():  # case-insensitive file systems
            clash = lowered.duplicated(keep=False).to_numpy()
            names[key] = [
                f"{n}_{hashlib.sha1(i.encode()).hexdigest()[:12]}" if c else n
                for n, i, c in zip(names[key], ids, clash)
            ]
    frames = []
    for key, modality in (("us", "US"), ("xr", "XR")):
        if key not in cohort:
            continue
        part = cohort[key]
        sub = Path("images") / key
        (directory / sub).mkdir(parents=True, exist_ok=True)
        paths = []
        for name, img in zip(names[key], part.images):
            rel = sub / f"{name}.png"
            Image.fromarray(img).save(directory / rel)
            paths.append(rel.as_posix())
        frame = pd.DataFrame(
            {
                "image_path": paths,
                "image_id": part.image_id,
                "subject_id": part.subject,
                "side": part.side,
                "modality": modality,
            }
        )
        if modality == "US":
            frame["age_days"] = np.asarray(part.age_weeks) * 7.0
            frame["alpha"] = part.targets["alpha"].to_numpy()
            frame["beta"] = part.targets["beta"].to_numpy()
            frame["fhc"] = part.targets["coverage"].to_numpy()
        elif "age_months" in part:
            frame["age_days"] = np.asarray(part.age_months) * 30.4375
            for c in XR_COLUMNS:
                frame[c] = part.targets[c].to_numpy()
        else:  # a BMD cohort: age in years, the DEXA read as the only label
            frame["age_days"] = np.asarray(part.age_years) * 365.25
            frame["bmd"] = part.targets["bmd"].to_numpy()
        has_spacing = modality == "US" or "age_years" in part  # hip X-ray views have none
        spacing = part.get("acquisition", {}).get("pixel_spacing_mm") if has_spacing else None
        if spacing is not None:
            frame["pixel_spacing_mm"] = np.asarray(spacing)
        if "split" in part:
            frame["split"] = part.split
        frames.append(frame)
    manifest = directory / "manifest.csv"
    table = pd.concat(frames, ignore_index=True)
    if "bmd" not in table.columns:  # a hip manifest keeps its columns as they were
        for c in (*US_COLUMNS, *XR_COLUMNS):
            if c not in table.columns:
                table[c] = np.nan
    table.to_csv(manifest, index=False, float_format="%.17g")
    return manifest
