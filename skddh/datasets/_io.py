"""Reading and writing image registries in the long manifest format (DOMAIN.md section 4).

One row per (image, hip): ``image_path, subject_id, side {L, R, B}, modality {US, XR},
age_days`` and the measurements ``alpha, beta, fhc`` (ultrasound; ``fhc`` in percent) and
``ai, ce, ihdi`` (X-ray), NaN where absent; optional ``pixel_spacing_mm``, ``rater_id``,
``image_id``, ``split``. Several rows for the same image and side with different ``rater_id``
are averaged into a consensus (IHDI: rounded-up median).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.utils import Bunch

REQUIRED = ("image_path", "subject_id", "side", "modality")
US_COLUMNS = ("alpha", "beta", "fhc")
XR_COLUMNS = ("ai", "ce", "ihdi")
_DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}


def _read_dicom(path: Path, frame: int) -> tuple[np.ndarray, float | None]:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("Reading DICOM needs pydicom: pip install 'skddh[dicom]'.") from exc
    ds = pydicom.dcmread(path)
    arr = np.asarray(ds.pixel_array)
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if n_frames > 1:
        arr = arr[frame]
    if arr.ndim == 3:  # colour ultrasound: luminance
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114])
    arr = arr.astype(np.float64)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = arr.max() - arr  # MONOCHROME1 stores bright as low values
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
    lo, hi = np.percentile(arr, [0.0, 100.0])
    img = np.clip((arr - lo) / (hi - lo + 1e-12), 0, 1)
    img = (img * 255 + 0.5).astype(np.uint8)
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


def _read_image(path: Path, frame: int) -> tuple[np.ndarray, float | None]:
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return _read_dicom(path, frame)
    with Image.open(path) as im:
        return np.asarray(im.convert("L")), None


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


def _numeric(table: pd.DataFrame, col: str) -> pd.Series:
    values = pd.to_numeric(table[col], errors="coerce")
    bad = values.isna() & table[col].notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"row {table.index[i]} column {col!r}: {table[col].iloc[i]!r} is not a number."
        )
    return values


def load_image_table(
    table,
    image_root=None,
    *,
    image_size: int = 128,
    fhc_unit: str = "percent",
    frame: int = 0,
) -> Bunch:
    """Load a registry of hip images from a long manifest (CSV path or DataFrame).

    Parameters
    ----------
    table : str, path or DataFrame
        The manifest, one row per image and hip (and rater). See the module docstring for the
        columns.
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

    Returns
    -------
    Bunch
        ``us`` and ``xr`` Bunches (a modality absent from the table gives an empty one) with
        ``images`` (n, image_size, image_size) uint8, ``targets`` (US: ``alpha``, ``beta``,
        ``coverage`` in percent; XR: ``ai``, ``ce``, ``ihdi``), ``subject``, ``side``,
        ``image_id``, ``age_weeks`` (US) / ``age_months`` (XR), ``pixel_spacing_mm`` (after
        resizing; NaN if unknown), ``split`` (if the table has one), and ``frame`` (the rows).

    Raises
    ------
    ValueError
        A missing column, a file that does not exist or cannot be read, a non-numeric
        measurement, an unknown modality or side; the message names the row and column.

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
    if isinstance(table, (str, os.PathLike)):
        path = Path(table)
        if not path.is_file():
            raise ValueError(f"table: manifest file {str(path)!r} does not exist.")
        root = Path(image_root) if image_root is not None else path.parent
        table = pd.read_csv(path)
    elif isinstance(table, pd.DataFrame):
        root = Path(image_root) if image_root is not None else Path.cwd()
        table = table.copy()
    else:
        raise TypeError(f"table must be a CSV path or a DataFrame, got {type(table).__name__}.")
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"table is missing the required column(s) {missing}.")
    table = table.reset_index(drop=True)
    table["modality"] = table["modality"].astype(str).str.upper()
    table["side"] = table["side"].astype(str).str.upper()
    for col, allowed in (("modality", {"US", "XR"}), ("side", {"L", "R", "B"})):
        bad = ~table[col].isin(allowed)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"row {i} column {col!r}: {table[col].iloc[i]!r} is not one of {sorted(allowed)}."
            )
    for col in (*US_COLUMNS, *XR_COLUMNS, "age_days", "pixel_spacing_mm"):
        table[col] = _numeric(table, col) if col in table.columns else np.nan
    if fhc_unit == "fraction":
        table["fhc"] = 100.0 * table["fhc"]
    elif table["fhc"].notna().any() and table["fhc"].max() <= 1.0:
        raise ValueError(
            "column 'fhc': every value is <= 1, which looks like a fraction; fhc is read in "
            "percent. Pass fhc_unit='fraction' if that is what the table holds."
        )
    if "image_id" not in table.columns:
        table["image_id"] = table["image_path"].astype(str) + ":" + table["side"]
    return Bunch(
        us=_load_modality(table[table["modality"] == "US"], root, image_size, frame, "US"),
        xr=_load_modality(table[table["modality"] == "XR"], root, image_size, frame, "XR"),
        frame=table,
    )


def _load_modality(rows: pd.DataFrame, root: Path, size: int, frame: int, modality: str):
    cols = US_COLUMNS if modality == "US" else XR_COLUMNS
    keys = ["image_id", "image_path", "subject_id", "side"]
    extra = [c for c in ("split",) if c in rows.columns]
    agg = {c: "mean" for c in (*cols, "age_days", "pixel_spacing_mm")}
    if "ihdi" in cols:
        agg["ihdi"] = lambda s: np.ceil(s.median()) if s.notna().any() else np.nan
    for c in extra:
        agg[c] = "first"
    grouped = (
        rows.assign(_row=rows.index)
        .groupby(keys, sort=False, dropna=False)
        .agg({**agg, "_row": "first"})
        .reset_index()
    )
    images = np.zeros((len(grouped), size, size), np.uint8)
    spacing = np.full(len(grouped), np.nan)
    for i, (path_str, row_id) in enumerate(zip(grouped["image_path"], grouped["_row"])):
        path = root / str(path_str)
        if not path.is_file():
            raise ValueError(f"row {row_id} column 'image_path': file {str(path)!r} not found.")
        try:
            img, native = _read_image(path, frame)
        except Exception as exc:
            raise ValueError(
                f"row {row_id} column 'image_path': cannot read {str(path)!r} as an image "
                f"({type(exc).__name__}: {exc})."
            ) from exc
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
        targets = grouped[list(XR_COLUMNS)].reset_index(drop=True)
    age_days = grouped["age_days"].to_numpy()
    out = Bunch(
        images=images,
        targets=targets,
        subject=grouped["subject_id"].astype(str).to_numpy(),
        side=grouped["side"].to_numpy(),
        image_id=grouped["image_id"].astype(str).to_numpy(),
        pixel_spacing_mm=spacing,
    )
    if modality == "US":
        out["age_weeks"] = age_days / 7.0
    else:
        out["age_months"] = age_days / 30.4375
    if extra:
        out["split"] = grouped["split"].to_numpy()
    return out


def save_image_table(cohort: Bunch, directory) -> Path:
    """Write a cohort as PNG images plus ``manifest.csv`` in the long format; return its path.

    ``load_image_table`` on the returned path gives back the same images, targets, subjects,
    sides, image ids and splits (measurements are written at full precision).

    Parameters
    ----------
    cohort : Bunch
        As returned by :func:`make_hip_cohort` (its ``us`` and ``xr`` parts are written).
    directory : str or path
        Created if needed; images go to ``images/us`` and ``images/xr``.

    Returns
    -------
    pathlib.Path
        The manifest's path.

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
    frames = []
    for key, modality in (("us", "US"), ("xr", "XR")):
        part = cohort[key]
        sub = Path("images") / key
        (directory / sub).mkdir(parents=True, exist_ok=True)
        paths = []
        for image_id, img in zip(part.image_id, part.images):
            rel = sub / f"{image_id}.png"
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
        else:
            frame["age_days"] = np.asarray(part.age_months) * 30.4375
            for c in XR_COLUMNS:
                frame[c] = part.targets[c].to_numpy()
        spacing = part.get("acquisition", {}).get("pixel_spacing_mm") if modality == "US" else None
        if spacing is not None:
            frame["pixel_spacing_mm"] = np.asarray(spacing)
        if "split" in part:
            frame["split"] = part.split
        frames.append(frame)
    manifest = directory / "manifest.csv"
    table = pd.concat(frames, ignore_index=True)
    for c in (*US_COLUMNS, *XR_COLUMNS):
        if c not in table.columns:
            table[c] = np.nan
    table.to_csv(manifest, index=False, float_format="%.17g")
    return manifest
