"""One-sided conformal lower bounds: the finite-sample quantile and the estimators around it.

The statistics are small pure functions on arrays (:func:`one_sided_quantile`,
:func:`lower_bound`, :func:`fit_affine`); :class:`OneSidedConformalRegressor` is a thin
scikit-learn shell around them.

Guarantee (Vovk et al.; the DDH paper, arXiv 2511.18457): if the calibration cases and a new
case are exchangeable, and the bias correction was fitted on data disjoint from the
calibration scores (``bias_correction="affine-split"`` or ``None``), then for each target
``P(y >= LB) >= 1 - delta``, marginally over the calibration draw and the new case, and
``P(y >= LB) <= 1 - delta + 1 / (n + 1)`` when scores have no ties. With the paper's
``bias_correction="affine"`` (correction fitted on the same calibration cases) the guarantee
holds only approximately: the scores are no longer exchangeable with a new case's score.
"""

from skddh.conformal._quantile import fit_affine, lower_bound, one_sided_quantile, smallest_delta
from skddh.conformal._split import OneSidedConformalRegressor

__all__ = [
    "OneSidedConformalRegressor",
    "fit_affine",
    "lower_bound",
    "one_sided_quantile",
    "smallest_delta",
]
