"""Reading and writing adult hip-morphology manifests: AP pelvis radiographs plus a CSV.

One row per hip (two per radiograph, ``R`` and ``L``): ``image_path, image_id, subject_id,
side {R, L}, split {train, calibration, test}, age_days, sex {F, M}, pixel_spacing_mm``, the
hip box ``x0, y0, x1, y1`` (pixels of the image file, inclusive-exclusive floats, pixel
centres at ``i + 0.5``, as :func:`skddh.datasets.make_hip_morphology_cohort` draws them), the
labels ``ischial_spine, cam, dysplasia, any_abnormality`` (0/1, blank where unread) and the
per-rater labels ``<label>_rater<k>`` (blank where that rater did not read the hip). The
auxiliary ``sex`` target (1 = female) is the ``sex`` column. Only ``image_path, subject_id,
side, x0, y0, x1, y1`` are required: a table to predict on needs no labels.

:func:`load_morphology_table` refuses what it cannot read unambiguously with an error naming
the row (the 1-based data row of a CSV, the index label of a DataFrame) and the column.
"""

from __future__ import annotations

import hashlib
import os
import re
from numbers import Integral
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.utils import Bunch

from skddh._atomic import atomic_to_csv, atomic_write
from skddh.datasets._io import (
    _DICOM_SUFFIXES,
    _blank,
    _bombs_refused,
    _column_key,
    _file_name,
    _ImageError,
    _letterbox,
    _read_image,
)
from skddh.datasets._morphology import TARGET_NAMES

__all__ = ["load_morphology_table", "save_morphology_table"]

#: Columns every row needs.
REQUIRED = ("image_path", "subject_id", "side", "x0", "y0", "x1", "y1")
#: Per-radiograph columns that may be absent or blank.
OPTIONAL = ("image_id", "split", "age_days", "sex", "pixel_spacing_mm")
BOX_COLUMNS = ("x0", "y0", "x1", "y1")
#: The 0/1 labels written as columns; the fifth target, ``sex``, is the ``sex`` column.
LABELS = tuple(t for t in TARGET_NAMES if t != "sex")
SIDES = ("R", "L")
SPLITS = ("train", "calibration", "test")
#: How a cohort's split is written (the expert-read hold-out is the test set).
_SPLIT_WRITTEN = {"train": "train", "calibration": "calibration", "test": "test", "holdout": "test"}
_RATER = re.compile(rf"^({'|'.join(LABELS)})_rater(\d+)$")
_TEXT = ("image_path", "image_id", "subject_id", "side", "split", "sex")
_DAYS_PER_YEAR = 365.25
MANIFEST = "manifest.csv"


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _safe_names(ids: list[str]) -> list[str]:
    """File names for image ids (``_file_name``), distinct on case-insensitive file systems."""
    names = [_file_name(i) for i in ids]
    lowered = pd.Series(names).str.lower()
    clash = lowered.duplicated(keep=False).to_numpy()
    return [
        f"{n}_{hashlib.sha1(i.encode()).hexdigest()[:12]}" if c else n
        for n, i, c in zip(names, ids, clash)
    ]


def _rater_columns(columns) -> list[str]:
    """The ``<label>_rater<k>`` columns, by rater then label (the cohort's order)."""
    found = [(c, _RATER.match(c)) for c in columns if isinstance(c, str)]
    found = [(c, m) for c, m in found if m]
    return [c for c, m in sorted(found, key=lambda cm: (int(cm[1][2]), LABELS.index(cm[1][1])))]


def save_morphology_table(cohort: Bunch, directory) -> Path:
    """Write a morphology cohort as PNG radiographs plus ``manifest.csv``; return its path.

    Each radiograph is written once, as ``images/xr/<image id>.png`` (the id made a safe file
    name first: characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_`` and
    a short hash of the id is appended), and the manifest has one row per hip (see the module
    docstring for the columns). The split ``"holdout"`` is written as ``"test"``, the age in
    years as ``age_days`` (x 365.25), the ``sex`` target as the ``sex`` column (``F``/``M``);
    boxes are in pixels of the written images. Numbers are written at full precision, and
    every file is written atomically (complete or not at all).

    Parameters
    ----------
    cohort : Bunch
        As returned by :func:`make_hip_morphology_cohort` (or :func:`load_morphology_table`):
        ``images`` (n, H, W) uint8, ``radiographs`` (``image_id``, ``patient``, and optionally
        ``split``, ``age``, ``sex``, ``pixel_spacing_mm``) and ``hips`` (``image_index``,
        ``side``, ``x0, y0, x1, y1``, and whichever labels and ``<label>_rater<k>`` columns it
        has).
    directory : str or path
        Created if needed.

    Returns
    -------
    pathlib.Path
        The manifest's path.

    Raises
    ------
    ValueError
        A missing part of the cohort, an empty image id, one that appears twice, or a split
        other than train, holdout, calibration or test; nothing is written then.

    Examples
    --------
    >>> import tempfile
    >>> import pandas as pd
    >>> from skddh.datasets import make_hip_morphology_cohort
    >>> from skddh.datasets import save_morphology_table
    >>> cohort = make_hip_morphology_cohort(2, image_size=64, n_holdout=1, random_state=0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     table = pd.read_csv(save_morphology_table(cohort, d))
    >>> list(table["side"]), list(table["split"]), list(table["sex"])
    (['R', 'L', 'R', 'L'], ['test', 'test', 'train', 'train'], ['M', 'M', 'F', 'F'])
    """
    missing = [k for k in ("images", "radiographs", "hips") if k not in cohort]
    if missing:
        raise ValueError(
            f"cohort has no {missing}: expected a Bunch like make_hip_morphology_cohort's."
        )
    images = np.asarray(cohort["images"])
    radiographs = cohort["radiographs"].reset_index(drop=True)
    hips = cohort["hips"].reset_index(drop=True)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"cohort.images must be an (n, H, W) uint8 array, got shape {images.shape} and dtype "
            f"{images.dtype}."
        )
    if len(radiographs) != len(images):
        raise ValueError(
            f"cohort has {len(images)} images but {len(radiographs)} radiographs rows."
        )
    absent = [c for c in ("image_id", "patient") if c not in radiographs.columns]
    absent += [c for c in ("image_index", "side", *BOX_COLUMNS) if c not in hips.columns]
    if absent:
        raise ValueError(f"cohort.radiographs / cohort.hips lack the column(s) {absent}.")
    empty = _blank(radiographs["image_id"])
    if empty.any():
        raise ValueError(f"radiograph {int(np.argmax(empty))}: its image id is empty.")
    ids = radiographs["image_id"].astype(str)
    if ids.duplicated().any():
        raise ValueError(
            f"image id {ids[ids.duplicated()].iloc[0]!r} appears twice; the two radiographs "
            "would be one file."
        )
    split = None
    if "split" in radiographs.columns:
        raw = radiographs["split"].where(~_blank(radiographs["split"]), "").astype(str)
        key = raw.str.strip().str.lower()
        unknown = ~key.isin([*_SPLIT_WRITTEN, ""])
        if unknown.any():
            raise ValueError(
                f"radiograph {int(np.argmax(unknown))}: split {raw[unknown].iloc[0]!r} is not "
                f"one of {sorted(_SPLIT_WRITTEN)}."
            )
        split = key.map({**_SPLIT_WRITTEN, "": ""}).to_numpy()
    index = pd.to_numeric(hips["image_index"], errors="coerce").to_numpy(float)
    if not (np.isfinite(index) & (index == np.round(index))).all() or (
        len(index) and (index.min() < 0 or index.max() >= len(images))
    ):
        raise ValueError(f"cohort.hips image_index must be rows of images (0-{len(images) - 1}).")
    index = index.astype(int)

    sub = Path("images") / "xr"
    paths = np.array([(sub / f"{n}.png").as_posix() for n in _safe_names(list(ids))], object)
    table = pd.DataFrame(
        {
            "image_path": paths[index],
            "image_id": ids.to_numpy()[index],
            "subject_id": radiographs["patient"].astype(str).to_numpy()[index],
            "side": hips["side"].to_numpy(),
            "split": "" if split is None else split[index],
        }
    )
    if split is None:
        del table["split"]
    if "age" in radiographs.columns:
        table["age_days"] = radiographs["age"].to_numpy(float)[index] * _DAYS_PER_YEAR
    if "sex" in radiographs.columns:
        table["sex"] = radiographs["sex"].to_numpy()[index]
    if "pixel_spacing_mm" in radiographs.columns:
        table["pixel_spacing_mm"] = radiographs["pixel_spacing_mm"].to_numpy(float)[index]
    for c in BOX_COLUMNS:
        table[c] = hips[c].to_numpy(float)
    for c in (*(t for t in LABELS if t in hips.columns), *_rater_columns(hips.columns)):
        table[c] = hips[c].to_numpy()  # Int8 <NA> and NaN are written blank

    directory = Path(directory)
    (directory / sub).mkdir(parents=True, exist_ok=True)
    for rel, img in zip(paths, images):
        with atomic_write(directory / rel, "wb") as f:
            Image.fromarray(img).save(f, format="PNG")
    manifest = directory / MANIFEST
    atomic_to_csv(table, manifest, index=False, float_format="%.17g")
    return manifest


# ---------------------------------------------------------------------------------------------
# Reading: columns, values, identities
# ---------------------------------------------------------------------------------------------
def _known(key) -> bool:
    return isinstance(key, str) and (
        key in (*REQUIRED, *OPTIONAL, *LABELS) or _RATER.match(key) is not None
    )


def _normalise(table: pd.DataFrame) -> pd.DataFrame:
    """Columns named as they are read (any case, spaces or '-' for '_'); two alike: an error."""
    renames, seen = {}, {}
    for col in table.columns:
        key = _column_key(col)
        if not _known(key):
            continue
        if key in seen:
            raise ValueError(
                f"columns {seen[key]!r} and {col!r} both read as {key!r}; keep one of them."
            )
        seen[key] = col
        renames[col] = key
    return table.rename(columns=renames)


def _read(table, image_root) -> tuple[pd.DataFrame, Path, np.ndarray]:
    """The table, the image root and each row's name in messages (CSV: 1-based data row)."""
    if isinstance(table, (str, os.PathLike)):
        path = Path(table)
        if not path.is_file():
            raise ValueError(f"table: manifest file {str(path)!r} does not exist.")
        root = Path(image_root) if image_root is not None else path.parent
        header = pd.read_csv(path, nrows=0).columns
        text = {c: str for c in header if _column_key(c) in _TEXT}  # "007" is not 7
        frame = pd.read_csv(path, dtype=text, float_precision="round_trip")  # exact floats
        return frame, root, np.arange(1, len(frame) + 1)
    if isinstance(table, pd.DataFrame):
        root = Path(image_root) if image_root is not None else Path.cwd()
        return table.copy(), root, table.index.to_numpy()
    raise TypeError(f"table must be a CSV path or a DataFrame, got {type(table).__name__}.")


class _Rows:
    """Names rows in messages: ``row 3 column 'x1'``."""

    def __init__(self, names: np.ndarray):
        self.names = names

    def __call__(self, i, col=None) -> str:
        where = f"row {self.names[int(i)]}"
        return where if col is None else f"{where} column {col!r}"

    def two(self, i, j, col) -> str:
        return f"rows {self.names[int(i)]} and {self.names[int(j)]} column {col!r}"


def _cell(value) -> str:
    """A cell as a message shows it: ``2``, ``'yes'`` (not ``np.int64(2)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _text(table: pd.DataFrame, col: str, where: _Rows, required: bool) -> pd.Series:
    empty = _blank(table[col])
    if required and empty.any():
        raise ValueError(f"{where(np.argmax(empty), col)} is empty.")
    return table[col].where(~empty, "").astype(str).str.strip()


def _choice(values: pd.Series, col: str, allowed, where: _Rows, blank_ok: bool) -> None:
    bad = ~values.isin([*allowed, *([""] if blank_ok else [])])
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise ValueError(
            f"{where(i, col)}: {values.iloc[i]!r} is not one of {list(allowed)}"
            + (" (any case; or blank)." if blank_ok else " (any case).")
        )


def _numbers(table: pd.DataFrame, col: str, where: _Rows) -> np.ndarray:
    values = pd.to_numeric(table[col], errors="coerce").astype(np.float64)
    bad = values.isna().to_numpy() & ~_blank(table[col])
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{where(i, col)}: {_cell(table[col].iloc[i])} is not a number.")
    return values.to_numpy()


def _binary(table: pd.DataFrame, col: str, where: _Rows) -> pd.Series:
    values = pd.to_numeric(table[col], errors="coerce").astype(np.float64)
    bad = ~_blank(table[col]) & ~values.isin([0.0, 1.0]).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{where(i, col)}: {_cell(table[col].iloc[i])} is not a label (0, 1 or blank)."
        )
    return values.astype("Int8").reset_index(drop=True)


def _clean(table: pd.DataFrame, where: _Rows) -> tuple[pd.DataFrame, list[str], set]:
    """Columns typed and checked row by row; also returns the label columns and the columns
    the table has (named as read)."""
    table = _normalise(table)
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(
            f"table is missing the required column(s) {missing} (columns are read in any case; "
            f"the table has {[str(c) for c in table.columns]})."
        )
    if len(table) == 0:
        raise ValueError("table has no rows: expected one row per hip.")
    table = table.reset_index(drop=True)
    present = set(table.columns)
    out = pd.DataFrame(index=table.index)
    for col in ("image_path", "subject_id", "side"):
        out[col] = _text(table, col, where, required=True)
    out["image_id"] = (
        _text(table, "image_id", where, required=True)
        if "image_id" in table.columns
        else out["image_path"]  # one radiograph per file
    )
    out["side"] = out["side"].str.upper()
    _choice(out["side"], "side", SIDES, where, blank_ok=False)
    out["split"] = ""
    if "split" in table.columns:
        out["split"] = _text(table, "split", where, required=False).str.lower()
        _choice(out["split"], "split", SPLITS, where, blank_ok=True)
    out["sex"] = ""
    if "sex" in table.columns:
        out["sex"] = _text(table, "sex", where, required=False).str.upper()
        _choice(out["sex"], "sex", ("F", "M"), where, blank_ok=True)
    for col in ("age_days", "pixel_spacing_mm"):
        values = _numbers(table, col, where) if col in table.columns else np.full(len(out), np.nan)
        bad = ~np.isnan(values) & (
            np.isinf(values) | (values < 0 if col == "age_days" else values <= 0)
        )
        if bad.any():
            i = int(np.argmax(bad))
            what = "negative" if col == "age_days" else "not positive"
            raise ValueError(f"{where(i, col)}: {values[i]:g} is {what} or infinite.")
        out[col] = values
    for col in BOX_COLUMNS:
        values = _numbers(table, col, where)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{where(i, col)}: a box coordinate must be a finite number of pixels, got "
                f"{_cell(table[col].iloc[i])}."
            )
        out[col] = values
    for hi, lo in (("x1", "x0"), ("y1", "y0")):
        bad = (out[hi] <= out[lo]).to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{where(i, hi)}: {out[hi].iloc[i]:g} is not greater than {lo} = "
                f"{out[lo].iloc[i]:g}; a box needs x0 < x1 and y0 < y1."
            )
    labels = [c for c in LABELS if c in table.columns] + _rater_columns(table.columns)
    for col in labels:
        out[col] = _binary(table, col, where)
    return out, labels, present


def _check_splits(table: pd.DataFrame, where: _Rows) -> None:
    """A subject belongs to one split: its correlated radiographs must not straddle two."""
    assigned = table[table["split"] != ""]
    for who, rows in assigned.groupby("subject_id", sort=False).groups.items():
        splits = assigned.loc[rows, "split"]
        if splits.nunique() > 1:
            i = rows[0]
            j = splits.index[splits != splits.iloc[0]][0]
            raise ValueError(
                f"{where.two(i, j, 'split')}: subject {who!r} is in two splits "
                f"({splits[i]!r} and {splits[j]!r}); split by subject, or its correlated images "
                "leak between training, calibration and test."
            )


def _check_identities(table: pd.DataFrame, root: Path, where: _Rows) -> None:
    """One image id is one file of one subject, read once; one file is not under two ids."""
    resolved = pd.Series([str((root / p).resolve()) for p in table["image_path"]], table.index)
    checks = (
        (table["image_id"], resolved, "image_id", "image id {key!r} names two different files"),
        (
            table["image_id"],
            table["subject_id"],
            "image_id",
            "image id {key!r} names two different subjects",
        ),
        (resolved, table["image_id"], "image_path", "the same file is under two image ids"),
    )
    for key_values, values, col, what in checks:
        for key, rows in table.groupby(key_values, sort=False).groups.items():
            part = values[rows]
            if part.nunique() > 1:
                i = rows[0]
                j = part.index[part != part.iloc[0]][0]
                raise ValueError(
                    f"{where.two(i, j, col)}: {what.format(key=key)} ({part[i]!r} and "
                    f"{part[j]!r}); give each radiograph one file and one id."
                )
    # what describes the radiograph, not the hip, must agree between its two rows (a blank
    # cell is read as the other row's value, except a split: half a radiograph unassigned)
    for col in ("split", "age_days", "sex", "pixel_spacing_mm"):
        values = table[col]
        if col == "split":
            given = values
        else:
            given = values[values != ""] if values.dtype == object else values.dropna()
        by_image = given.groupby(table["image_id"][given.index], sort=False)
        for _, rows in by_image.groups.items():
            part = given[rows]
            if part.nunique() > 1:
                i, j = rows[0], part.index[part != part.iloc[0]][0]
                raise ValueError(
                    f"{where.two(i, j, col)}: the two hips of image {table['image_id'][i]!r} "
                    f"disagree ({_cell(part[i])} and {_cell(part[j])}); it describes the "
                    "radiograph."
                )


def _check_sides(table: pd.DataFrame, where: _Rows) -> None:
    """Exactly one R and one L row per radiograph."""
    for image_id, rows in table.groupby("image_id", sort=False).groups.items():
        sides = table.loc[rows, "side"]
        for side in SIDES:
            hits = sides.index[sides == side]
            if len(hits) > 1:
                raise ValueError(
                    f"{where.two(hits[0], hits[1], 'side')}: radiograph {image_id!r} has two "
                    f"{side!r} rows; each radiograph needs exactly one 'R' and one 'L' row."
                )
            if len(hits) == 0:
                raise ValueError(
                    f"{where(rows[0], 'side')}: radiograph {image_id!r} has no {side!r} row; "
                    "each radiograph needs exactly one 'R' and one 'L' row."
                )


def _stored_shape(path: Path, decoded: tuple[int, int]) -> tuple[int, int]:
    """The file's own rows x columns: a DICOM with non-square pixels is decoded resampled."""
    if path.suffix.lower() not in _DICOM_SUFFIXES:
        return decoded
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return int(ds.Rows), int(ds.Columns)


def _decode(path: Path, where: str) -> tuple[np.ndarray, float | None, tuple[int, int]]:
    if not path.is_file():
        raise ValueError(f"{where}: file {str(path)!r} not found.")
    try:
        img, native = _read_image(path, 0)
        stored = _stored_shape(path, img.shape)
    except _ImageError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    except Exception as exc:
        raise ValueError(
            f"{where}: cannot read {str(path)!r} as an image ({type(exc).__name__}: {exc})."
        ) from exc
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"{where}: {str(path)!r} is not a 2-D image (shape {img.shape}).")
    return img, native, stored


def load_morphology_table(table, image_root=None, *, image_size: int | None = None) -> Bunch:
    """Load AP pelvis radiographs and their hip boxes and labels from a morphology manifest.

    Parameters
    ----------
    table : str, path or DataFrame
        The manifest, one row per hip (see the module docstring; :func:`save_morphology_table`
        writes one). Column names are recognised whatever their case, surrounding spaces, or
        spaces for ``_`` (``Image Path``, ``" X0 "``, ``Cam_Rater1``); two columns that read
        as one name are an error. Only ``image_path, subject_id, side, x0, y0, x1, y1`` are
        required.
    image_root : str or path, default=None
        Directory that ``image_path`` is relative to. Default: the CSV's directory, or the
        working directory for a DataFrame.
    image_size : int, default=None
        None: radiographs are kept at their own size, which must then be the same for all.
        An int: each radiograph is padded to a square (centred, black; the aspect ratio, hence
        angles, kept) and resized to ``image_size`` x ``image_size``, and its boxes and pixel
        spacing are shifted and scaled with it.

    Returns
    -------
    Bunch
        Shaped like :func:`make_hip_morphology_cohort`'s:

        - ``images``: (n, H, W) uint8, one per distinct radiograph, in order of first
          appearance in the table.
        - ``radiographs``: DataFrame per image: ``image_id``, ``patient``, ``split``
          (``train``, ``calibration``, ``test``, or ``""`` where unassigned), ``age`` (years;
          NaN where unknown), ``sex`` (``F``, ``M`` or ``""``), ``pixel_spacing_mm`` (of the
          loaded image; from the table, else the DICOM header, else NaN).
        - ``hips``: DataFrame per hip, R then L for each radiograph: ``hip_id``,
          ``image_index`` (row of ``images``), ``image_id``, ``patient``, ``side``, ``split``,
          ``x0, y0, x1, y1`` (pixels of the loaded image), the targets and the
          ``<label>_rater<k>`` columns the table has (nullable Int8, <NA> where blank).
        - ``boxes``: ``image_index``, ``image_id``, ``side``, ``x0, y0, x1, y1``.
        - ``targets``: the targets present, rows as ``hips``: the labels among
          ``ischial_spine, cam, dysplasia, any_abnormality`` the table has, and ``sex``
          (1 = female) when it has a ``sex`` column (nullable Int8, <NA> where blank).
        - ``target_names``: their names (empty for a table to predict on).

    Raises
    ------
    TypeError
        ``table`` neither a path nor a DataFrame, or ``image_size`` not an int.
    ValueError
        Anything the loader cannot read unambiguously; the message names the row (the
        1-based data row of a CSV, the index label of a DataFrame) and the column. See Notes.

    Notes
    -----
    Refused, naming the row and the column: a missing required column or an empty cell in
    one; a ``side`` other than R/L; a radiograph without exactly one R and one L row; a box
    coordinate that is blank, non-numeric or infinite, with ``x1 <= x0`` or ``y1 <= y0``, or
    entirely outside its image; a label other than 0, 1 or blank; a ``split`` other than
    train, calibration, test (any case) or blank; a ``sex`` other than F/M or blank; a
    negative ``age_days`` or a ``pixel_spacing_mm`` <= 0; a subject in two splits; an
    ``image_id`` naming two files or two subjects, or one file under two ids; the two rows of
    one radiograph disagreeing on ``split``, or on ``age_days``, ``sex`` or
    ``pixel_spacing_mm`` (where one row leaves these blank, the other's is used); a file that
    is absent or unreadable (images are decoded as :func:`load_image_table` does: 16-bit and
    DICOM windowed into uint8, decompression bombs refused). Without ``image_size``, two
    radiographs of different shapes are an error naming both files.

    A box partly outside its image is kept as it is (:func:`crop_hips` pads with black);
    the boxes of a DICOM with non-square pixels are given in its stored pixels and follow the
    resampling that makes them square.

    Examples
    --------
    >>> import tempfile
    >>> from skddh.datasets import make_hip_morphology_cohort
    >>> from skddh.datasets import load_morphology_table, save_morphology_table
    >>> cohort = make_hip_morphology_cohort(2, image_size=64, n_holdout=1, random_state=0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     loaded = load_morphology_table(save_morphology_table(cohort, d), image_size=96)
    >>> loaded.images.shape, bool((loaded.boxes["x1"] == 1.5 * cohort.boxes["x1"]).all())
    ((2, 96, 96), True)
    >>> loaded.target_names
    ['ischial_spine', 'cam', 'dysplasia', 'any_abnormality', 'sex']
    """
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, Integral):
            raise TypeError(f"image_size must be an int or None, got {image_size!r}.")
        if image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {image_size}.")
    raw, root, names = _read(table, image_root)
    where = _Rows(names)
    rows, labels, present = _clean(raw, where)
    _check_splits(rows, where)
    _check_identities(rows, root, where)
    _check_sides(rows, where)

    rows["image_index"] = pd.factorize(rows["image_id"], sort=False)[0]
    first = rows.groupby("image_index", sort=True).head(1)  # one row per radiograph
    images = []
    spacing = _per_image(rows, "pixel_spacing_mm", len(first))
    box = rows[list(BOX_COLUMNS)].to_numpy(float).copy()
    shapes: list[tuple[int, int]] = []
    with _bombs_refused():
        for k, (i, rel) in enumerate(zip(first.index, first["image_path"])):
            path = root / rel
            img, native, (h0, w0) = _decode(path, where(i, "image_path"))
            mine = (rows["image_index"] == k).to_numpy()
            b = box[mine]
            outside = (b[:, 2] <= 0) | (b[:, 0] >= w0) | (b[:, 3] <= 0) | (b[:, 1] >= h0)
            if outside.any():
                j = rows.index[mine][np.argmax(outside)]
                raise ValueError(
                    f"{where(j)} columns x0, y0, x1, y1: the box {box[j].tolist()} lies "
                    f"entirely outside the {w0} x {h0} (width x height) image {str(path)!r}."
                )
            h, w = img.shape
            b = b * [w / w0, h / h0, w / w0, h / h0]  # a DICOM made square moves its boxes
            if np.isnan(spacing[k]) and native is not None:
                spacing[k] = native  # from the DICOM header
            if image_size is not None:
                side = max(h, w)
                top, left = (side - h) // 2, (side - w) // 2
                img, factor = _letterbox(img, image_size)
                b = (b + [left, top, left, top]) * (image_size / side)
                spacing[k] *= factor
            box[mine] = b
            images.append(img)
            shapes.append(img.shape)
            if shapes[k] != shapes[0]:
                p0 = root / first["image_path"].iloc[0]
                raise ValueError(
                    f"{where.two(first.index[0], i, 'image_path')}: {str(p0)!r} is "
                    f"{shapes[0][0]} x {shapes[0][1]} px but {str(path)!r} is {h} x {w} "
                    "(height x width); pass image_size to letterbox every radiograph to one "
                    "square size."
                )
    rows[list(BOX_COLUMNS)] = box

    order = np.lexsort(((rows["side"] == "L").to_numpy(), rows["image_index"].to_numpy()))
    rows = rows.iloc[order].reset_index(drop=True)
    hips = pd.DataFrame(
        {
            "hip_id": rows["image_id"] + rows["side"],
            "image_index": rows["image_index"].to_numpy(),
            "image_id": rows["image_id"],
            "patient": rows["subject_id"],
            "side": rows["side"],
            "split": rows["split"],
        }
    )
    for c in BOX_COLUMNS:
        hips[c] = rows[c].to_numpy(float)
    target_names = [c for c in LABELS if c in labels]
    for c in target_names:
        hips[c] = rows[c]
    if "sex" in present:
        hips["sex"] = rows["sex"].map({"F": 1.0, "M": 0.0}).astype("Int8")  # "" -> <NA>
        target_names.append("sex")
    for c in labels:
        if c not in target_names:
            hips[c] = rows[c]
    first = first.reset_index(drop=True)
    radiographs = pd.DataFrame(
        {
            "image_id": first["image_id"],
            "patient": first["subject_id"],
            "split": first["split"],
            "age": _per_image(rows, "age_days", len(first)) / _DAYS_PER_YEAR,
            "sex": _per_image_text(rows, "sex", len(first)),
            "pixel_spacing_mm": spacing,
        }
    )
    return Bunch(
        images=np.stack(images),
        radiographs=radiographs,
        hips=hips,
        boxes=hips[["image_index", "image_id", "side", *BOX_COLUMNS]].copy(),
        targets=hips[target_names].reset_index(drop=True),
        target_names=target_names,
    )


def _per_image(rows: pd.DataFrame, col: str, n: int) -> np.ndarray:
    """A radiograph's value: the first of its rows that has one (they agree, checked)."""
    values = rows.groupby("image_index")[col].first()  # skips NaN
    return values.reindex(range(n)).to_numpy(float)


def _per_image_text(rows: pd.DataFrame, col: str, n: int) -> np.ndarray:
    given = rows[rows[col] != ""]
    values = given.groupby("image_index")[col].first()
    return values.reindex(range(n)).fillna("").to_numpy(object)
