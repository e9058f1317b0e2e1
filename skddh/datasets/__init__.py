"""Synthetic hip cohorts (infant US / X-ray; adult morphology; adult BMD), registries, measures."""

from skddh.datasets._bmd import make_bmd_cohort
from skddh.datasets._cohort import make_hip_cohort
from skddh.datasets._io import load_image_table, save_image_table
from skddh.datasets._measure import measure_us, measure_xr
from skddh.datasets._morphology import crop_hips, make_hip_morphology_cohort
from skddh.datasets._morphology_io import load_morphology_table, save_morphology_table
from skddh.datasets._registry import SyntheticImageRegistry
from skddh.datasets._summary import plot_cohort_examples, summarize_cohort

__all__ = [
    "SyntheticImageRegistry",
    "crop_hips",
    "load_image_table",
    "load_morphology_table",
    "make_bmd_cohort",
    "make_hip_cohort",
    "make_hip_morphology_cohort",
    "measure_us",
    "measure_xr",
    "plot_cohort_examples",
    "save_image_table",
    "save_morphology_table",
    "summarize_cohort",
]
