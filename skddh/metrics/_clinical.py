"""A clinical report for a multi-label classifier, with patient-level bootstrap intervals.

Written for the hip morphology study (one column per finding: cam deformity, dysplasia, ischial
spine sign, any abnormality), whose Table 1 reports accuracy, sensitivity, specificity, PPV,
NPV, F1 and AUROC per finding. :func:`clinical_report` gives the same numbers in a tidy
table, each with a percentile bootstrap confidence interval.

Patients, not images, are the independent units: with several images per patient (both hips,
follow-up films) the images of one patient are correlated, and a bootstrap over images gives
intervals that are too narrow. Pass ``groups`` (patient ids) and whole patients are resampled,
all their images together. The point estimates come from ``sklearn.metrics``
(``multilabel_confusion_matrix``, ``f1_score``, ``roc_auc_score``); the resamples are computed
at once as weighted counts (a resample is a vector of how often each patient was drawn), the
same numbers ``sklearn.metrics`` gives with those counts as ``sample_weight``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral, Real

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.metrics import f1_score, multilabel_confusion_matrix, roc_auc_score
from sklearn.utils import check_random_state

__all__ = ["clinical_report"]

# The metrics of clinical_report, in the order of its rows.
_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auroc")

# Bootstrap work is done in chunks of resamples so that a (resamples, images) weight matrix
# stays near this many entries (16 MB of float64).
_CHUNK_ENTRIES = 2_000_000


def _level(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}.")
    return float(value)


def _table(values, name: str, names: list[str] | None):
    """``(array of shape (n, L), column names or None)`` from a DataFrame, Series or array."""
    if isinstance(values, pd.DataFrame):
        return values.to_numpy(dtype=object), [str(c) for c in values.columns]
    if isinstance(values, pd.Series):
        col = [str(values.name)] if values.name is not None else None
        return values.to_numpy(dtype=object)[:, None], col
    arr = np.asarray(values, dtype=object)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D, got shape {arr.shape}.")
    return arr, names


def _finite(arr: np.ndarray, name: str, names: list[str]) -> np.ndarray:
    missing = np.asarray(pd.isna(arr), dtype=bool)
    if missing.any():
        row, col = np.argwhere(missing)[0]
        raise ValueError(
            f"{name} holds a missing value (NaN / None) for label {names[col]!r} at row {row} "
            f"({int(missing.sum())} in all)."
        )
    try:
        out = arr.astype(float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric: {exc}") from None
    bad = ~np.isfinite(out)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{name} must be finite, got {out[row, col]!r} for label {names[col]!r} at row {row}."
        )
    return out


def _labels(y_true, y_score, labels):
    """Label names, ``y`` as a bool ``(n, L)`` array and scores as a float ``(n, L)`` array."""
    if labels is not None:
        labels = [str(v) for v in labels]
    t, t_names = _table(y_true, "y_true", labels)
    s, s_names = _table(y_score, "y_score", labels)
    if t.shape != s.shape:
        raise ValueError(f"y_true has shape {t.shape} but y_score has shape {s.shape}.")
    names = t_names if t_names is not None else s_names
    if names is None:
        names = [f"label{j}" for j in range(t.shape[1])]
    if len(names) != t.shape[1]:
        raise ValueError(f"labels has {len(names)} names for {t.shape[1]} label columns.")
    if len(set(names)) != len(names):
        raise ValueError(f"label names must be distinct, got {names!r}.")
    if isinstance(y_score, pd.DataFrame) and s_names != names:
        if set(s_names) != set(names):
            raise ValueError(f"y_score has columns {s_names!r} but y_true has labels {names!r}.")
        s = y_score.set_axis(s_names, axis=1)[names].to_numpy(dtype=object)
    if t.shape[0] == 0:
        raise ValueError("y_true is empty.")
    y = _finite(t, "y_true", names)
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"y_true must hold only 0/1, got {y[row, col]!r} for label {names[col]!r} at row {row}."
        )
    score = _finite(s, "y_score", names)
    out = (score < 0) | (score > 1)
    if out.any():
        row, col = np.argwhere(out)[0]
        raise ValueError(
            f"y_score must be probabilities in [0, 1], got {score[row, col]!r} for label "
            f"{names[col]!r} at row {row}; map decision scores first (e.g. "
            "scipy.special.expit) and give the threshold on the same scale."
        )
    y = y.astype(bool)
    for j, name in enumerate(names):
        if y[:, j].all() or not y[:, j].any():
            raise ValueError(
                f"label {name!r} has only one class in y_true ({int(y[0, j])}): its AUROC, "
                "and its sensitivity or specificity, are undefined."
            )
    return names, y, score


def _thresholds(threshold, names: list[str]) -> np.ndarray:
    if isinstance(threshold, Mapping):
        keys = {str(k): v for k, v in threshold.items()}
        unknown = sorted(set(keys) - set(names))
        missing = [n for n in names if n not in keys]
        if unknown or missing:
            raise ValueError(
                f"threshold must give one value per label {names!r}; unknown: {unknown!r}, "
                f"missing: {missing!r}."
            )
        values = [keys[n] for n in names]
    else:
        values = [threshold] * len(names)
    for name, v in zip(names, values):
        if isinstance(v, bool) or not isinstance(v, Real) or not 0 <= v <= 1:
            raise ValueError(f"threshold for label {name!r} must be a number in [0, 1], got {v!r}.")
    return np.asarray(values, dtype=float)


def _group_codes(groups, n: int) -> tuple[np.ndarray, int]:
    if groups is None:
        return np.arange(n), n
    g = np.asarray(groups, dtype=object)
    if g.shape != (n,):
        raise ValueError(f"groups has shape {g.shape}; y_true has {n} rows.")
    codes, uniques = pd.factorize(g)
    if (codes < 0).any():
        raise ValueError(f"groups holds a missing value at row {int(np.argmax(codes < 0))}.")
    return codes, len(uniques)


def _rates(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """The six threshold metrics from (weighted) counts, NaN where a denominator is 0."""

    def ratio(num, den):
        num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
        return np.divide(num, den, out=np.full(np.shape(den), np.nan), where=den > 0)

    return {
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def _weighted_auroc(weights: np.ndarray, y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """AUROC with each column of ``weights`` (n, b) as sample weights; ties count one half.

    ``sum_{pos i, neg j} w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (W_pos W_neg)``, what
    ``roc_auc_score(y, score, sample_weight=w)`` gives; NaN where a class has weight 0. For
    a positive ``i`` the negatives below and at its score are a cumulative sum of the sorted
    negatives' weights, read at two ``searchsorted`` positions: O(n b) for all columns.
    """
    neg = ~y
    order = np.argsort(score[neg], kind="mergesort")
    neg_scores = score[neg][order]
    cum = np.zeros((len(neg_scores) + 1, weights.shape[1]))
    np.cumsum(weights[neg][order], axis=0, out=cum[1:])
    pos_scores = score[y]
    below = cum[np.searchsorted(neg_scores, pos_scores, side="left")]
    upto = cum[np.searchsorted(neg_scores, pos_scores, side="right")]
    w_pos = weights[y]
    num = 0.5 * (w_pos * (below + upto)).sum(axis=0)
    den = w_pos.sum(axis=0) * cum[-1]
    return np.divide(num, den, out=np.full(len(den), np.nan), where=den > 0)


def _point_estimates(y, pred, score) -> tuple[dict, dict]:
    """Each metric on all the data, and its denominator, as arrays of shape (L,).

    One ``sklearn.metrics`` call per quantity for all labels at once (their input checks,
    not the arithmetic, are what costs at these sizes).
    """
    n_rows, n_labels = y.shape
    if n_labels == 1:  # a single column is "binary" to sklearn, not "multilabel-indicator"
        cm = multilabel_confusion_matrix(y[:, 0], pred[:, 0], labels=[True])
        f1 = [f1_score(y[:, 0], pred[:, 0], zero_division=np.nan)]
        auroc = [roc_auc_score(y[:, 0], score[:, 0])]
    else:
        cm = multilabel_confusion_matrix(y, pred)
        f1 = f1_score(y, pred, average=None, zero_division=np.nan)
        auroc = roc_auc_score(y, score, average=None)
    (tn, fp), (fn, tp) = np.moveaxis(cm, 0, 2)  # cm[j] = [[tn, fp], [fn, tp]]
    value = _rates(tp, fp, fn, tn)
    value["f1"] = np.asarray(f1, dtype=float)
    value["auroc"] = np.asarray(auroc, dtype=float)
    everyone = np.full(n_labels, n_rows)
    n = {
        "accuracy": everyone,
        "sensitivity": tp + fn,
        "specificity": tn + fp,
        "ppv": tp + fp,
        "npv": tn + fn,
        "f1": everyone,
        "auroc": everyone,
    }
    return value, n


def _bootstrap(y, pred, score, codes, n_groups, n_bootstraps, rng) -> dict[str, np.ndarray]:
    """Each metric on ``n_bootstraps`` patient resamples: arrays of shape (B, L)."""
    n, n_labels = y.shape
    # Per-patient counts of tp, fp, fn, tn for each label: a resample's counts are then its
    # patient draw counts times these (one matrix product for all resamples).
    cells = np.stack([y & pred, ~y & pred, y & ~pred, ~y & ~pred], axis=2).astype(float)
    per_group = np.zeros((n_groups, n_labels, 4))
    np.add.at(per_group, codes, cells)
    draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_bootstraps)
    counts = (draws @ per_group.reshape(n_groups, -1)).reshape(n_bootstraps, n_labels, 4)
    out = _rates(*np.moveaxis(counts, 2, 0))
    auroc = np.empty((n_bootstraps, n_labels))
    chunk = max(1, _CHUNK_ENTRIES // n)
    for start in range(0, n_bootstraps, chunk):
        # (n_images, chunk): each image's weight is its patient's draw count.
        w = np.ascontiguousarray(draws[start : start + chunk].T, dtype=float)[codes]
        for j in range(n_labels):
            auroc[start : start + chunk, j] = _weighted_auroc(w, y[:, j], score[:, j])
    out["auroc"] = auroc
    return out


def _percentile_interval(draws: np.ndarray, confidence_level: float):
    """Per column of ``draws`` (B, L): the percentile interval over its non-NaN resamples,
    and how many were NaN. ``(nan, nan)`` where every resample is NaN."""
    a = (1 - confidence_level) / 2
    undefined = np.isnan(draws).sum(axis=0)
    low = np.full(draws.shape[1], np.nan)
    high = np.full(draws.shape[1], np.nan)
    full = undefined == 0
    if full.any():  # the common case, at once
        low[full], high[full] = np.quantile(draws[:, full], [a, 1 - a], axis=0)
    for j in np.flatnonzero(~full & (undefined < len(draws))):
        col = draws[:, j]
        low[j], high[j] = np.quantile(col[~np.isnan(col)], [a, 1 - a])
    return low, high, undefined


def clinical_report(
    y_true: ArrayLike | pd.DataFrame,
    y_score: ArrayLike | pd.DataFrame,
    *,
    threshold: float | Mapping[str, float] = 0.5,
    groups: ArrayLike | None = None,
    labels: Sequence[str] | None = None,
    n_bootstraps: int = 1000,
    confidence_level: float = 0.95,
    random_state: int | np.random.RandomState | None = None,
) -> pd.DataFrame:
    """Accuracy, sensitivity, specificity, PPV, NPV, F1 and AUROC per label, with bootstrap CIs.

    An image is called positive for a label when its score is at or above the label's
    threshold (``y_score >= threshold``, scikit-learn's convention). With counts ``TP``,
    ``FP``, ``FN``, ``TN`` of that call against ``y_true``: accuracy ``(TP + TN) / n``,
    sensitivity ``TP / (TP + FN)``, specificity ``TN / (TN + FP)``, PPV ``TP / (TP + FP)``,
    NPV ``TN / (TN + FN)``, F1 ``2 TP / (2 TP + FP + FN)``; AUROC uses the scores themselves
    (ties count one half).

    Confidence intervals are percentile bootstrap intervals over patients: each of the
    ``n_bootstraps`` resamples draws as many patients as there are, with replacement, and
    keeps all the images of each patient drawn (every label sees the same resample). A
    resample can leave a metric undefined (no positive image: sensitivity and AUROC; no
    image called positive: PPV; ...): that metric is NaN for that resample, the interval is
    taken over the other resamples, and the column ``n_undefined`` says how many there were.
    Many undefined resamples mean a rare class and an interval to distrust.

    Parameters
    ----------
    y_true : DataFrame or array-like of shape (n_images, n_labels) or (n_images,)
        0/1 (or boolean) truth, one column per label (e.g. ``cam``, ``dysplasia``).
    y_score : DataFrame or array-like of the same shape
        Predicted probabilities in ``[0, 1]``. A DataFrame's columns are matched to
        ``y_true``'s by name. For decision scores, map them to ``[0, 1]`` first (e.g.
        ``scipy.special.expit``) and give the threshold on that scale.
    threshold : float or mapping of label to float, default=0.5
        Decision threshold in ``[0, 1]``, one for all labels or one per label (a mapping
        must name every label and no other).
    groups : array-like of shape (n_images,), default=None
        Patient ids. ``None`` treats every image as its own patient (an image-level
        bootstrap, too narrow when patients have several correlated images).
    labels : sequence of str, default=None
        Label names for array input; default the DataFrame's (or Series') columns, else
        ``label0``, ``label1``, ...
    n_bootstraps : int, default=1000
        Number of resamples; 0 skips the intervals (``low`` and ``high`` are NaN).
    confidence_level : float, default=0.95
        Level of the percentile intervals.
    random_state : int, RandomState or None, default=None
        Seeds the resampling.

    Returns
    -------
    DataFrame
        One row per label and metric (accuracy, sensitivity, specificity, ppv, npv,
        f1, auroc), columns ``label``,
        ``metric``, ``value`` (point estimate on all the data), ``low``, ``high``
        (interval), ``n`` (images in the metric's denominator: all for accuracy, F1 and
        AUROC, the positives for sensitivity, the images called positive for PPV, ...) and
        ``n_undefined`` (resamples where the metric was undefined). A point estimate with
        a zero denominator (no image called positive: PPV) is NaN.

    Raises
    ------
    ValueError
        When ``y_true`` and ``y_score`` (or ``groups``) do not match in shape or names; when
        either holds a missing or non-finite value, ``y_true`` a value other than 0/1, or
        ``y_score`` a value outside ``[0, 1]``; when a label has a single class in
        ``y_true`` (its AUROC is undefined: the message names the label); for a bad
        threshold, ``n_bootstraps`` or ``confidence_level``.

    Notes
    -----
    The percentile bootstrap is first-order accurate; with few patients (a few tens) or a
    metric near 0 or 1 it tends to under-cover a little. Resampling patients keeps the
    within-patient correlation; it does not remove other dependence (e.g. between sites).

    References
    ----------
    .. [1] Efron B, Tibshirani RJ. An Introduction to the Bootstrap. Chapman & Hall, 1993
       (chapter 13, the percentile interval).
    .. [2] Field CA, Welsh AH. Bootstrapping clustered data. Journal of the Royal Statistical
       Society B 2007; 69: 369-390.

    Examples
    --------
    >>> import pandas as pd
    >>> from skddh.metrics import clinical_report
    >>> truth = pd.DataFrame({"cam": [1, 1, 0, 0, 1, 0], "dysplasia": [0, 1, 0, 0, 1, 1]})
    >>> scores = pd.DataFrame({"cam": [0.9, 0.4, 0.2, 0.6, 0.8, 0.1],
    ...                        "dysplasia": [0.3, 0.7, 0.1, 0.2, 0.9, 0.6]})
    >>> report = clinical_report(truth, scores, groups=[1, 1, 2, 2, 3, 3],
    ...                          n_bootstraps=200, random_state=0)
    >>> report.columns.tolist()
    ['label', 'metric', 'value', 'low', 'high', 'n', 'n_undefined']
    >>> print(report[report.label == "cam"].round(3).to_string(index=False))
    label      metric  value   low  high  n  n_undefined
      cam    accuracy  0.667 0.500   1.0  6            0
      cam sensitivity  0.667 0.500   1.0  3            4
      cam specificity  0.667 0.500   1.0  3            3
      cam         ppv  0.667 0.333   1.0  3            0
      cam         npv  0.667 0.333   1.0  3            0
      cam          f1  0.667 0.400   1.0  6            0
      cam       auroc  0.889 0.750   1.0  6            7

    With 3 patients, 4 of the 200 resamples drew no patient with a cam-positive image:
    sensitivity is undefined there and its interval comes from the other 196.
    """
    confidence_level = _level(confidence_level, "confidence_level")
    if isinstance(n_bootstraps, bool) or not isinstance(n_bootstraps, Integral):
        raise ValueError(f"n_bootstraps must be an integer >= 0, got {n_bootstraps!r}.")
    if n_bootstraps < 0:
        raise ValueError(f"n_bootstraps must be an integer >= 0, got {n_bootstraps!r}.")
    names, y, score = _labels(y_true, y_score, labels)
    cut = _thresholds(threshold, names)
    codes, n_groups = _group_codes(groups, len(y))
    pred = score >= cut

    value, n = _point_estimates(y, pred, score)
    if n_bootstraps > 0:
        rng = check_random_state(random_state)
        boot = _bootstrap(y, pred, score, codes, n_groups, int(n_bootstraps), rng)
        intervals = {m: _percentile_interval(boot[m], confidence_level) for m in _METRICS}
    else:
        nan = np.full(len(names), np.nan)
        intervals = {m: (nan, nan, np.zeros(len(names), dtype=int)) for m in _METRICS}
    rows = [
        (
            name,
            metric,
            float(value[metric][j]),
            float(intervals[metric][0][j]),
            float(intervals[metric][1][j]),
            int(n[metric][j]),
            int(intervals[metric][2][j]),
        )
        for j, name in enumerate(names)
        for metric in _METRICS
    ]
    return pd.DataFrame(
        rows, columns=["label", "metric", "value", "low", "high", "n", "n_undefined"]
    )
