"""Synthetic paired hip cohort, real-registry loading and the measurement definitions."""

from skddh.datasets._cohort import make_hip_cohort
from skddh.datasets._io import load_image_table, save_image_table
from skddh.datasets._measure import measure_us, measure_xr
from skddh.datasets._registry import SyntheticImageRegistry

__all__ = [
    "SyntheticImageRegistry",
    "load_image_table",
    "make_hip_cohort",
    "measure_us",
    "measure_xr",
    "save_image_table",
]
