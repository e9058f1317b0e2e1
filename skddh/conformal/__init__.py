"""One-sided conformal lower bounds: pure quantile functions and the estimators around them.

The statistics are small pure functions on arrays (:func:`one_sided_quantile`,
:func:`lower_bound`, :func:`fit_affine`, :func:`subject_max_scores`,
:func:`subsampled_quantile`, :func:`cv_plus_lower_bound`, :func:`mondrian_lower_bound`,
:func:`conformal_pvalues`, :func:`conformal_selection`); the estimators are thin
scikit-learn shells around them: :class:`OneSidedConformalRegressor` (split conformal) and
:class:`OneSidedCrossConformalRegressor` (CV+).

Subjects, not images, are the exchangeable units: an infant has several correlated images,
and a guarantee for a *new infant* needs calibration scores that are exchangeable with that
infant's. Every estimator here therefore calibrates by subject unless told
``calibration_unit="image"``, and ``n`` counts subjects. What each choice guarantees, for a
new subject exchangeable with the calibration subjects (same population and acquisition, no
selection between them), marginally over the calibration draw and the new subject, per
target (the DDH paper, arXiv 2511.18457; Vovk et al. 2005; Dunn, Wasserman and Ramdas,
arXiv 1809.07441):

- ``"subject-max"`` (default): ``1 - delta <= P(every image of the subject has y >= LB) <=
  1 - delta + 1/(n+1)`` (upper side without ties). Each of its images is then covered with
  probability at least ``1 - delta``, usually more: the bound speaks of the worst image.
- ``"subject-subsample"``: one image per subject, drawn ``n_resamples`` times, radii merged
  by majority vote. For a uniformly chosen image of the new subject, ``P(y >= LB) >= 1 - 2
  delta`` in the worst case and, with ``n_resamples=1``, in ``[1 - delta, 1 - delta +
  1/(n+1)]``. In simulation the majority vote sits near ``1 - delta``, with narrower bounds
  than the maximum.
- ``"image"``: one score per image, ``n`` counts images. Exact only when images are
  exchangeable, e.g. one image per subject; with correlated images it under-covers a new
  subject (0.876 at nominal 0.90 with 7 subjects of 2-6 images in our simulation).
- CV+ (:class:`OneSidedCrossConformalRegressor`): every subject fits and calibrates;
  at least ``1 - 2 delta`` (less a small K-fold term) for every image of the new subject,
  close to ``1 - delta`` in practice.

The bias correction: ``None`` (the default) and ``"affine-split"`` keep these statements
exact; the paper's ``"affine"`` (fitted on the scored cases) makes them approximate.
Not promised by these: coverage within a subgroup (age band, side), conditional on the
prediction, or after a shift in population, machine or operator. Coverage within a stratum
fixed before the outcome is what :func:`mondrian_lower_bound` adds (each stratum calibrated
on its own units). None of the bounds controls the share of abnormal hips among the hips
passed; :func:`conformal_selection` (Jin and Candès, arXiv 2210.01408) does, as a false
discovery rate ``<= q`` over i.i.d. test units (or subjects).
"""

from skddh.conformal._base import CALIBRATION_UNITS
from skddh.conformal._cross import OneSidedCrossConformalRegressor, cv_plus_lower_bound
from skddh.conformal._mondrian import mondrian_lower_bound
from skddh.conformal._quantile import fit_affine, lower_bound, one_sided_quantile, smallest_delta
from skddh.conformal._risk import (
    LearnThenTestResult,
    conformal_risk_control,
    learn_then_test,
    missed_finding_losses,
    risk_p_values,
    subject_losses,
)
from skddh.conformal._scores import subject_max_scores, subsample_indices, subsampled_quantile
from skddh.conformal._selection import (
    ConformalSelection,
    conformal_pvalues,
    conformal_selection,
)
from skddh.conformal._selective import (
    SelectiveClassifier,
    SelectiveThreshold,
    selective_threshold,
)
from skddh.conformal._split import OneSidedConformalRegressor

__all__ = [
    "CALIBRATION_UNITS",
    "ConformalSelection",
    "LearnThenTestResult",
    "OneSidedConformalRegressor",
    "OneSidedCrossConformalRegressor",
    "SelectiveClassifier",
    "SelectiveThreshold",
    "conformal_pvalues",
    "conformal_risk_control",
    "conformal_selection",
    "cv_plus_lower_bound",
    "fit_affine",
    "learn_then_test",
    "lower_bound",
    "missed_finding_losses",
    "mondrian_lower_bound",
    "one_sided_quantile",
    "risk_p_values",
    "selective_threshold",
    "smallest_delta",
    "subject_losses",
    "subject_max_scores",
    "subsample_indices",
    "subsampled_quantile",
]
