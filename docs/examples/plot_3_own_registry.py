"""
Your own registry: a folder of images and a CSV
===============================================

``load_image_table`` reads a long manifest, one row per image and hip: ``image_path``,
``subject_id``, ``side``, ``modality`` and the measurements (``alpha``, ``beta``, ``fhc`` for
ultrasound; ``ai``, ``ce``, ``ihdi`` for X-ray), optionally ``split``. PNG, JPEG and DICOM
are read; images are letterboxed, never stretched, so angles are preserved. Here we write the
synthetic cohort out in that format and read it back, as you would your own.
"""

# %%
import tempfile
from pathlib import Path

import pandas as pd

from skddh import load_image_table, make_hip_cohort, save_image_table

# sphinx_gallery_thumbnail_path = "images/cohort_examples.png"

workdir = Path(tempfile.mkdtemp())
cohort = make_hip_cohort(n_subjects=12, image_size=32, n_registry_us=8, random_state=2)
manifest = save_image_table(cohort, workdir / "registry")
print(pd.read_csv(manifest).head())

# %%
# Load it back
# ------------
data = load_image_table(manifest, image_size=32)
print(data.us.images.shape, list(data.us.targets.columns))

# %%
# Bad rows are named
# ------------------
# A missing file, an unknown side or a measurement that is not a number raises an error
# that names the row and the column, rather than a silently wrong table.
table = pd.read_csv(manifest)
table.loc[3, "side"] = "left?"
try:
    load_image_table(table, image_root=manifest.parent, image_size=32)
except ValueError as exc:
    print(exc)

# %%
# Without Python
# --------------
# The same in a shell::
#
#     skddh fit registry/manifest.csv --model policy.skddh --rule or \
#         --delta-alpha 0.35 --delta-coverage 0.35
#     skddh predict new_scans.csv --model policy.skddh --out decisions.csv
