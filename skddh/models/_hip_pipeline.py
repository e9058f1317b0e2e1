"""Radiographs in, per-hip morphology out: a fitted localizer and classifier, chained."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from skddh.datasets._morphology import crop_hips
from skddh.models._localize import as_uint8

__all__ = ["predict_hip_morphology"]


def predict_hip_morphology(
    localizer, classifier, radiographs, *, crop_size: int | None = None
) -> pd.DataFrame:
    """Locate both hips of each AP pelvis radiograph and classify their morphology.

    The whole pipeline of Khosravi et al.: :class:`~skddh.HipJointLocalizer` finds the right
    and left hip, each is cropped (the left one mirrored, as in training), and
    :class:`~skddh.MorphologyClassifier` scores every label of every crop.

    Parameters
    ----------
    localizer : HipJointLocalizer
        Fitted.
    classifier : MorphologyClassifier
        Fitted on crops made the same way (``crop_hips`` of the training boxes, or
        ``localizer.crop``).
    radiographs : ndarray of shape (n, H, W)
        Grayscale AP pelvis radiographs (uint8, uint16 or floats in [0, 1]).
    crop_size : int, default=None
        Side of the crops; None: the classifier's input side (``image_size_``), so crops
        are cut once at the size the network reads.

    Returns
    -------
    DataFrame
        Two rows per radiograph (R then L): ``image_index``, ``side``, the box ``x0, y0,
        x1, y1`` and its ``score`` (from the localizer), then per label ``p_<label>`` (the
        probability) and ``<label>`` (0/1 at the classifier's ``thresholds_``).

    Examples
    --------
    >>> from skddh.datasets import crop_hips, make_hip_morphology_cohort
    >>> from skddh.models import HipJointLocalizer, MorphologyClassifier
    >>> from skddh.models import predict_hip_morphology
    >>> cohort = make_hip_morphology_cohort(8, image_size=64, n_holdout=2, random_state=0)
    >>> loc = HipJointLocalizer(image_size=64, epochs=1, batch_size=4, device="cpu",
    ...                         random_state=0).fit(cohort.images, cohort.boxes)
    >>> crops = crop_hips(cohort.images, cohort.boxes, size=32)
    >>> clf = MorphologyClassifier(backbone="resnet10t", epochs=1, batch_size=8, device="cpu",
    ...                            random_state=0).fit(crops, cohort.targets[["cam", "dysplasia"]])
    >>> predict_hip_morphology(loc, clf, cohort.images[:2]).columns.tolist()[-4:]
    ['p_cam', 'cam', 'p_dysplasia', 'dysplasia']
    """
    check_is_fitted(localizer)
    check_is_fitted(classifier)
    size = crop_size if crop_size is not None else getattr(classifier, "image_size_", None)
    if size is None:  # pragma: no cover - every fitted MorphologyClassifier has image_size_
        raise ValueError("crop_size is needed: the classifier has no image_size_.")
    boxes = localizer.predict(radiographs)  # validates the radiographs
    crops = crop_hips(as_uint8(radiographs), boxes, int(size))  # R, then L mirrored
    proba = classifier.predict_proba(crops)
    called = (proba >= classifier.thresholds_).astype(np.int64)
    out = boxes.copy()
    for j, name in enumerate(classifier.classes_):
        out[f"p_{name}"] = proba[:, j]
        out[str(name)] = called[:, j]
    return out
