"""
Your own registry: a folder of images and a CSV
===============================================

``load_image_table`` reads a long manifest, one row per image and hip: ``image_path``,
``subject_id``, ``side``, ``modality`` and the measurements (``alpha``, ``beta``, ``fhc`` for
ultrasound; ``ai``, ``ce``, ``ihdi`` for X-ray), optionally ``split``. PNG, JPEG and DICOM
are read; images are letterboxed, never stretched, so angles are preserved. Here we write the
synthetic cohort out in that format and read it back, as you would your own.

Every column, its unit (degrees for the angles, percent for ``fhc``) and what is allowed in
it is listed in :doc:`/data_format`.
"""

# %%
# The manifest
# ------------
# ``save_image_table`` writes the images as PNG files under ``images/`` and one CSV row per
# image and hip (``age_days``: age at the image, in days). An ultrasound row carries
# ``alpha`` and ``beta`` (degrees) and ``fhc`` (femoral head coverage, percent); its X-ray
# columns ``ai``, ``ce`` (degrees) and ``ihdi`` (grade 1-4) are blank, and the other way
# round for an X-ray row. We print the column names, then the columns that matter per
# modality.
import tempfile
from pathlib import Path

import pandas as pd

from skddh import load_image_table, make_hip_cohort, save_image_table

# sphinx_gallery_thumbnail_path = "images/cohort_examples.png"

workdir = Path(tempfile.mkdtemp())
cohort = make_hip_cohort(n_subjects=12, image_size=32, n_registry_us=8, random_state=2)
manifest = save_image_table(cohort, workdir / "registry")
table = pd.read_csv(manifest)
print(list(table.columns))
shown = [
    "image_path",
    "subject_id",
    "side",
    "modality",
    "split",
    "age_days",
    "alpha",
    "beta",
    "fhc",
]
print(table[shown].head().round(1).to_string())
print(
    table.loc[table["modality"] == "XR", ["image_path", "side", "ai", "ce", "ihdi"]]
    .head(3)
    .round(1)
)

required = {"image_path", "subject_id", "side", "modality"}
assert required <= set(table.columns)
us_rows = table["modality"] == "US"
assert table.loc[us_rows, ["ai", "ce", "ihdi"]].isna().all().all()
assert table.loc[~us_rows, ["alpha", "beta", "fhc"]].isna().all().all()
assert table.loc[us_rows, "fhc"].between(1, 100).all()  # percent, not a fraction

# %%
# Load it back
# ------------
# Loading merges raters, reads the images into ``(n, size, size)`` arrays and renames one
# measurement: the CSV's ``fhc`` becomes the target ``coverage``, in the same percent,
# because the estimators, the policy and its thresholds call it so
# (``thresholds={"alpha": 60.0, "coverage": 50.0}``). The full list of renames is in
# :doc:`/data_format`. A saved cohort loads back unchanged.
data = load_image_table(manifest, image_size=32)
print(data.us.images.shape, list(data.us.targets.columns))
print(data.us.targets.head().round(1))

assert list(data.us.targets.columns) == ["alpha", "beta", "coverage"]
assert data.us.images.shape == (len(cohort.us.targets), 32, 32)
pd.testing.assert_frame_equal(
    data.us.targets.reset_index(drop=True),
    cohort.us.targets.reset_index(drop=True),
    check_exact=False,
    atol=1e-6,
)

# %%
# Bad rows are named
# ------------------
# A missing file, an unknown side or a measurement that is not a number raises an error
# that names the row and the column, rather than a silently wrong table.
table.loc[3, "side"] = "left?"
try:
    load_image_table(table, image_root=manifest.parent, image_size=32)
except ValueError as exc:
    print(exc)
    assert "row 3" in str(exc) and "'side'" in str(exc)
else:
    raise AssertionError("an unknown side was expected to be refused")

# %%
# Without Python
# --------------
# The same in a shell, with the :doc:`command-line interface </cli>`:
#
# .. code-block:: bash
#
#     skddh fit registry/manifest.csv --model policy.skddh --rule or \
#         --delta-alpha 0.35 --delta-coverage 0.35
#     skddh predict new_scans.csv --model policy.skddh --out decisions.csv
