"""Calibration scores at subject level: pure functions on arrays of over-prediction scores.

Images of one subject are correlated, so image-level scores are not exchangeable with a new
subject's; the subject is the unit the guarantee speaks of. Two ways to make one score per
subject (Dunn, Wasserman and Ramdas, arXiv 1809.07441):

- :func:`subject_max_scores`: the subject's largest over-prediction. Conformalising these
  bounds the subject's *worst* image: ``P(every image of a new subject has y >= LB) >=
  1 - delta``. Conservative per image.
- :func:`subsample_indices` + :func:`subsampled_quantile`: one random image per subject,
  repeated ``B`` times, the ``B`` radii aggregated by a majority vote. With ``B = 1`` the
  bound covers a uniformly chosen image of a new subject with probability in
  ``[1 - delta, 1 - delta + 1/(n + 1)]``; with ``B > 1`` the majority vote keeps at least
  ``1 - 2 delta`` in the worst case (Markov's inequality on the share of the ``B`` bounds
  that miss), and is close to ``1 - delta`` in practice.
"""

from __future__ import annotations

import numpy as np

from skddh.conformal._quantile import one_sided_quantile


def subject_max_scores(scores, groups) -> tuple[np.ndarray, np.ndarray]:
    """Each subject's largest over-prediction score, per target.

    Parameters
    ----------
    scores : array-like of shape (n_images,) or (n_images, n_targets)
        Over-prediction scores ``s = y_tilde - y``.
    groups : array-like of shape (n_images,)
        Subject id of each image.

    Returns
    -------
    subject_scores : ndarray of shape (n_subjects,) or (n_subjects, n_targets)
    subjects : ndarray of shape (n_subjects,)
        The subject ids, sorted (``np.unique`` order).

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import subject_max_scores
    >>> s, ids = subject_max_scores(np.array([1.0, 5.0, -2.0, 3.0]), ["a", "b", "a", "a"])
    >>> s, ids
    (array([3., 5.]), array(['a', 'b'], dtype='<U1'))
    """
    s = np.asarray(scores, dtype=float)
    subjects, codes = np.unique(np.asarray(groups), return_inverse=True)
    out = np.full((len(subjects),) + s.shape[1:], -np.inf)
    np.maximum.at(out, codes, s)
    return out, subjects


def subsample_indices(groups, n_resamples: int, random_state=None) -> np.ndarray:
    """Row indices of one uniformly drawn image per subject, ``n_resamples`` times.

    Returns
    -------
    ndarray of shape (n_resamples, n_subjects)
        Row ``b`` holds one image index per subject (subjects in ``np.unique`` order).

    Examples
    --------
    >>> from skddh.conformal import subsample_indices
    >>> subsample_indices(["a", "b", "a"], 2, random_state=0).shape
    (2, 2)
    """
    rng = np.random.default_rng(random_state)
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # One uniform draw per subject and resample, vectorised: offset within the subject's run.
    offsets = np.floor(rng.random((n_resamples, len(counts))) * counts).astype(int)
    return order[starts + offsets]


def subsampled_quantile(scores, indices, delta: float) -> np.ndarray:
    """Majority-vote radius over subsamples of one image per subject.

    Each subsample ``b`` gives ``q_b = one_sided_quantile(scores[indices[b]], delta)``; the
    lower bounds ``y_tilde - q_b`` are merged by a majority vote, whose lower end is
    ``y_tilde - q`` with ``q`` the ``(B - floor(B/2))``-th smallest ``q_b`` (the median for
    odd ``B``). With one subsample this is that subsample's exact radius.

    Parameters
    ----------
    scores : array-like of shape (n_images,) or (n_images, n_targets)
    indices : ndarray of shape (B, n_subjects)
        From :func:`subsample_indices`.
    delta : float in (0, 1)

    Returns
    -------
    ndarray of shape () or (n_targets,)

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import subsampled_quantile
    >>> scores = np.array([1.0, 2.0, 3.0, 4.0])
    >>> float(subsampled_quantile(scores, np.array([[0, 2], [1, 3], [1, 2]]), 0.34))
    3.0
    """
    s = np.asarray(scores, dtype=float)
    idx = np.asarray(indices)
    # All subsamples at once: the quantile over subjects (axis 0) of every subsample.
    q = one_sided_quantile(np.swapaxes(s[idx], 0, 1), delta)  # (B,) or (B, n_targets)
    b = len(idx)
    return np.sort(q, axis=0)[b - b // 2 - 1]
