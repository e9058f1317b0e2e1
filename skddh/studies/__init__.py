"""The studies, one module per system, and the report writer: the engines of ``skddh reproduce``."""

from skddh.studies.ddh import PAPER, SCALES, StudyResult, run_study
from skddh.studies.over_seeds import aggregate_results, write_over_seeds_report
from skddh.studies.report import write_report

__all__ = [
    "PAPER",
    "SCALES",
    "StudyResult",
    "aggregate_results",
    "run_study",
    "write_over_seeds_report",
    "write_report",
]
