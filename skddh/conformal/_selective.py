"""Selective classification: accept a classifier's call only when it is sure enough, refer the rest.

For one binary label with score ``p`` and decision threshold ``t`` (the call is ``p >= t``),
the confidence of a case is ``c = |p - t|`` and the rule at ``lam`` accepts the call when
``c >= lam``, otherwise it refers the case to an expert. Its **selective risk** is the error
rate among the accepted cases, ``r(lam) = P(call wrong | accepted)``.

:func:`selective_threshold` picks ``lam`` by Learn-then-Test (Angelopoulos et al., arXiv
2110.01052, their selective-classification example) so that, over the draw of the calibration
units, ``P(r(lam_hat) <= alpha) >= 1 - delta``. Each ``lam`` on a fixed grid is tested for
``H_lam: r(lam) > alpha`` with the exact binomial p-value on the accepted calibration units
(conditionally on how many are accepted, they are i.i.d. draws of accepted cases, so their
errors are binomial with rate ``r(lam)``), and the family is corrected:

- ``"bonferroni"`` (default): reject where ``p <= delta / n_lambdas``; valid for any risk
  curve.
- ``"fixed_sequence"``: from the most conservative ``lam`` down, stop at the first
  non-rejection. Also valid for any ordering fixed in advance, but where few cases are
  accepted (the conservative end) no test can reject, so it rarely gets past the first
  steps; kept for comparison.

Units: with ``groups`` (patients), one unit per patient: it is *accepted* when any of its cases
is, and *wrong* when any accepted case is wrong; the guarantee then reads "for a new patient
with an accepted call, the probability that some accepted call is wrong is at most
``alpha``". Without ``groups`` every case is a unit, valid only when cases are independent
(hips of one patient are not).
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import bdtr
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, _fit_context, clone
from sklearn.exceptions import DataConversionWarning
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.multioutput import MultiOutputClassifier
from sklearn.utils import get_tags
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import (
    _num_samples,
    check_is_fitted,
    check_random_state,
    has_fit_parameter,
)

__all__ = ["SelectiveClassifier", "SelectiveThreshold", "selective_threshold"]

SELECTIVE_METHODS = ("bonferroni", "fixed_sequence")


class SelectiveThreshold(NamedTuple):
    """What :func:`selective_threshold` returns.

    Attributes
    ----------
    lambda_hat : float
        The smallest certified confidence threshold (``inf``: nothing certified, refer all).
    lambdas : ndarray
        The grid tested (increasing; conservative last).
    p_values : ndarray
        Binomial p-value of ``r(lam) > alpha`` per grid point (1 where nothing is accepted).
    certified : ndarray of bool
        Grid points whose null was rejected.
    n_accepted : ndarray of int
        Calibration units accepted per grid point.
    n_errors : ndarray of int
        Accepted calibration units with an error, per grid point.
    """

    lambda_hat: float
    lambdas: np.ndarray
    p_values: np.ndarray
    certified: np.ndarray
    n_accepted: np.ndarray
    n_errors: np.ndarray


def _unit_counts(confidence, wrong, lambdas, groups):
    """(accepted, wrong-and-accepted) 0/1 per unit and grid point."""
    acc = confidence[:, None] >= lambdas[None, :]
    err = acc & wrong[:, None]
    if groups is not None:
        codes = pd.factorize(np.asarray(groups))[0]
        n_units = codes.max() + 1
        a = np.zeros((n_units, len(lambdas)), bool)
        e = np.zeros((n_units, len(lambdas)), bool)
        np.logical_or.at(a, codes, acc)
        np.logical_or.at(e, codes, err)
        return a, e
    return acc, err


def selective_threshold(
    y_true,
    y_score,
    *,
    alpha: float,
    delta: float,
    threshold: float = 0.5,
    lambdas=None,
    method: str = "bonferroni",
    groups=None,
) -> SelectiveThreshold:
    """Confidence threshold with the error among accepted cases at most ``alpha`` (LTT).

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 truth of the calibration cases.
    y_score : array-like of shape (n,)
        Scores (probabilities) of the label; the call is ``y_score >= threshold``.
    alpha : float in (0, 1)
        Largest acceptable error rate among accepted cases (units).
    delta : float in (0, 1)
        Allowed probability, over the calibration draw, that the chosen rule's selective
        risk exceeds ``alpha``.
    threshold : float, default=0.5
        The classifier's decision threshold.
    lambdas : array-like, default=None
        Increasing grid of confidence thresholds; default 20 points from 0 to the largest
        possible confidence ``max(threshold, 1 - threshold)``.
    method : {"bonferroni", "fixed_sequence"}, default="bonferroni"
        Family-wise correction over the grid (see the module docstring).
    groups : array-like of shape (n,), default=None
        Patient ids: one unit per patient (see the module docstring).

    Returns
    -------
    SelectiveThreshold

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import selective_threshold
    >>> rng = np.random.default_rng(0)
    >>> score = rng.uniform(size=2000)
    >>> y = (rng.uniform(size=2000) < score).astype(int)  # calibrated scores
    >>> res = selective_threshold(y, score, alpha=0.1, delta=0.1)
    >>> round(res.lambda_hat, 3), int(res.n_accepted[res.lambdas == res.lambda_hat][0])
    (0.368, 530)

    A case is accepted when its score is below 0.132 or above 0.868 (530 of 2000); 5.1 % of
    those calls are wrong here, and the rule's error rate among accepted cases is at most
    10 % with probability 0.9 or more over calibration draws.
    """
    for name, v in (("alpha", alpha), ("delta", delta)):
        if not isinstance(v, Real) or not 0 < v < 1:
            raise ValueError(f"{name} must lie in (0, 1), got {v!r}.")
    if method not in SELECTIVE_METHODS:
        raise ValueError(f"method must be one of {SELECTIVE_METHODS}, got {method!r}.")
    if not isinstance(threshold, Real) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}.")
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=float)
    if y.ndim != 1 or s.shape != y.shape or len(y) == 0:
        raise ValueError(
            f"y_true and y_score must be 1-D of one length >= 1, got {y.shape} and {s.shape}."
        )
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0/1 labels only.")
    if not np.isfinite(s).all():
        raise ValueError("y_score must be finite.")
    if groups is not None:
        if len(groups) != len(y):
            raise ValueError(f"groups has {len(groups)} entries for {len(y)} cases.")
        if pd.isna(pd.Series(np.asarray(groups, dtype=object))).any():
            raise ValueError("groups has missing patient ids (NaN/None); give every row one.")
    top = max(threshold, 1 - threshold)
    lam = np.linspace(0.0, top, 20) if lambdas is None else np.asarray(lambdas, dtype=float)
    if lam.ndim != 1 or len(lam) == 0 or np.isnan(lam).any() or (np.diff(lam) <= 0).any():
        raise ValueError("lambdas must be a non-empty, strictly increasing, NaN-free grid.")
    wrong = (s >= threshold).astype(int) != y.astype(int)
    acc, err = _unit_counts(np.abs(s - threshold), wrong, lam, groups)
    n_acc, n_err = acc.sum(0), err.sum(0)
    # P(Bin(n_acc, alpha) <= n_err): small when the accepted error rate is clearly below alpha
    p = np.where(n_acc > 0, bdtr(n_err, np.maximum(n_acc, 1), alpha), 1.0)
    if method == "bonferroni":
        certified = p <= delta / len(lam)
    else:
        certified = np.cumprod((p <= delta)[::-1])[::-1].astype(bool)
    lam_hat = float(lam[certified][0]) if certified.any() else np.inf
    return SelectiveThreshold(lam_hat, lam, p, certified, n_acc, n_err)


class SelectiveClassifier(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Refer to an expert when unsure: per label, the error among accepted calls is controlled.

    Fits a clone of ``estimator`` on training subjects, then, per label, chooses the
    confidence threshold of :func:`selective_threshold` on disjoint calibration subjects:
    with probability at least ``1 - delta`` over the calibration draw, a new patient's
    accepted calls on that label are wrong with probability at most ``alpha`` (given that
    the patient has an accepted call), for patients exchangeable with the calibration ones.
    The guarantee is per label; for all labels at once, divide ``delta`` by their number.

    A multi-label base trained with auxiliary targets (:class:`~skddh.MorphologyClassifier`
    with ``auxiliary``, ``y`` a DataFrame) selects on the labels it predicts
    (``classes_``). A base whose ``fit`` takes ``groups`` gets the training patients' ids.

    Parameters
    ----------
    estimator : classifier, default=None
        A binary classifier (``y`` 1-D, ``predict_proba`` of shape (n, 2)) or a multi-label
        one (``y`` 2-D, ``predict_proba`` of shape (n, n_labels), as
        :class:`~skddh.MorphologyClassifier`, or a list of (n, 2) arrays, as
        :class:`~sklearn.multioutput.MultiOutputClassifier`); ``None`` means
        ``LogisticRegression()`` (in a ``MultiOutputClassifier`` for a 2-D ``y``). Its
        ``thresholds_`` are the decision thresholds when it has them, else 0.5. Wrapped in
        :class:`~sklearn.frozen.FrozenEstimator`, it is not refitted and every case given
        to ``fit`` calibrates: those cases must not have been used to fit or tune it (its
        ``thresholds_`` included), or the guarantee is lost.
    alpha : float in (0, 1), default=0.1
        Largest acceptable error rate among accepted patients, per label.
    delta : float in (0, 1), default=0.1
        Allowed probability that the chosen rule exceeds ``alpha``.
    calibration_size : float or int, default=0.3
        Share or number of subjects held out to calibrate (ignored when frozen).
    calibration_unit : {"subject", "case"}, default="subject"
        ``"subject"`` needs ``groups`` (see :func:`selective_threshold`); ``"case"`` treats
        every row as independent (explicit opt-in).
    n_lambdas : int, default=20
        Grid points tested per label.
    method : {"bonferroni", "fixed_sequence"}, default="bonferroni"
    random_state : int, RandomState instance or None, default=None
        Controls the training / calibration split.

    Attributes
    ----------
    estimator_ : classifier
        The fitted (or frozen) base classifier.
    label_names_ : ndarray of str
        One per label (``y``'s columns; ``"y"`` for a 1-D ``y``).
    decision_thresholds_ : ndarray of shape (n_labels,)
    lambdas_ : pandas Series
        Confidence threshold per label (``inf``: every case referred).
    selection_ : dict of str to SelectiveThreshold
        The test results per label.
    calibration_accepted_share_ : pandas Series
        Share of calibration units accepted per label at ``lambdas_``.
    n_calibration_ : int
        Calibration units (subjects, or cases).
    classes_ : ndarray
        The base classifier's ``classes_``.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import SelectiveClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(1000, 3))
    >>> y = (X[:, 0] + rng.normal(0, 0.5, 1000) > 0).astype(int)
    >>> groups = np.repeat(np.arange(500), 2)  # two cases per patient
    >>> model = SelectiveClassifier(alpha=0.1, delta=0.1, random_state=0)
    >>> model.fit(X, y, groups=groups).predict(X[:8]).tolist()
    [-1, -1, 1, 0, 0, -1, -1, 1]
    >>> round(float(model.calibration_accepted_share_["y"]), 2)
    0.71

    ``-1`` is "refer": the classifier is not sure enough to be trusted on that case.
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict_proba"]), None],
        "alpha": [Interval(Real, 0, 1, closed="neither")],
        "delta": [Interval(Real, 0, 1, closed="neither")],
        "calibration_size": [
            Interval(Real, 0, 1, closed="neither"),
            Interval(Integral, 1, None, closed="left"),
        ],
        "calibration_unit": [StrOptions({"subject", "case"})],
        "n_lambdas": [Interval(Integral, 2, None, closed="left")],
        "method": [StrOptions(set(SELECTIVE_METHODS))],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        estimator=None,
        *,
        alpha=0.1,
        delta=0.1,
        calibration_size=0.3,
        calibration_unit="subject",
        n_lambdas=20,
        method="bonferroni",
        random_state=None,
    ):
        self.estimator = estimator
        self.alpha = alpha
        self.delta = delta
        self.calibration_size = calibration_size
        self.calibration_unit = calibration_unit
        self.n_lambdas = n_lambdas
        self.method = method
        self.random_state = random_state

    def _positive_proba(self, X) -> np.ndarray:
        """(n, n_labels) probability of each label being 1."""
        proba = self.estimator_.predict_proba(X)
        if isinstance(proba, list):  # MultiOutputClassifier: one (n, 2) array per label
            if any(np.asarray(p).ndim != 2 or np.asarray(p).shape[1] != 2 for p in proba):
                raise ValueError(
                    "every label of the estimator's predict_proba needs two classes (n, 2); "
                    "a label had one class in the training part."
                )
            return np.column_stack([np.asarray(p)[:, 1] for p in proba]).astype(float)
        proba = np.asarray(proba, dtype=float)
        if not self._multilabel:
            if proba.ndim != 2 or proba.shape[1] != 2:
                raise ValueError(
                    f"estimator's predict_proba gave shape {proba.shape}; a binary y needs (n, 2)."
                )
            return proba[:, 1:]
        if proba.ndim != 2 or proba.shape[1] != len(self.label_names_):
            raise ValueError(
                f"estimator's predict_proba gave shape {proba.shape} for "
                f"{len(self.label_names_)} labels."
            )
        return proba

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, groups=None):
        """Fit the base classifier on training subjects and calibrate on the others.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Passed to the base classifier as is.
        y : array-like of shape (n_samples,) or (n_samples, n_labels), or DataFrame
            1-D: one binary label (two classes; the positive one is the estimator's
            ``classes_[1]``); 2-D: several 0/1 labels.
        groups : array-like of shape (n_samples,), default=None
            Patient ids; required unless ``calibration_unit="case"``.

        Returns
        -------
        self
        """
        from skddh.conformal._base import take
        from skddh.conformal._split import _split

        if y is None:
            raise ValueError(
                "SelectiveClassifier requires y to be passed, but the target y is None."
            )
        if sp.issparse(X):
            X = X.tocsr()  # row-indexable (a DIA or COO matrix is not)
        y_frame = y if isinstance(y, pd.DataFrame) else None
        y_arr = np.asarray(y)
        if y_arr.ndim == 2 and y_arr.shape[1] == 1 and y_frame is None:
            warnings.warn(
                "A column-vector y was passed when a 1d array was expected; it is read as one "
                "binary label (ravel it to silence this).",
                DataConversionWarning,
                stacklevel=2,
            )
            y_arr = y_arr.ravel()
        if len(y_arr) != _num_samples(X):
            raise ValueError(f"y has {len(y_arr)} rows for {_num_samples(X)} samples of X.")
        kind = type_of_target(y_arr, input_name="y")
        self._multilabel = y_arr.ndim == 2
        if kind not in ("binary", "multilabel-indicator") and not (
            self._multilabel and kind == "multiclass-multioutput"
        ):
            raise ValueError(
                f"Unknown label type: {kind!r}. Only binary classification is supported. "
                "SelectiveClassifier takes one binary label (1-D y with two classes) or "
                "several 0/1 labels (2-D y)."
            )
        if self._multilabel and not np.isin(y_arr, (0, 1)).all():
            raise ValueError("a 2-D y must hold 0/1 labels only (no missing values).")
        names = (
            list(map(str, y_frame.columns))
            if y_frame is not None
            else ([f"y{j}" for j in range(y_arr.shape[1])] if self._multilabel else ["y"])
        )
        self.label_names_ = np.asarray(names, dtype=object)
        if groups is None:
            if self.calibration_unit == "subject":
                raise ValueError(
                    "groups (patient ids) are required with calibration_unit='subject'; pass "
                    "them, or set calibration_unit='case' if every row is independent."
                )
            groups_arr = np.arange(len(y_arr))
        else:
            groups_arr = np.asarray(groups)
            if len(groups_arr) != len(y_arr):
                raise ValueError(f"groups has {len(groups_arr)} entries for {len(y_arr)} rows.")
            if pd.isna(pd.Series(groups_arr, dtype=object)).any():
                raise ValueError("groups has missing patient ids (NaN/None); give every row one.")
        if self.estimator is not None:
            base = self.estimator
        else:
            base = (
                MultiOutputClassifier(LogisticRegression())
                if self._multilabel
                else LogisticRegression()
            )
        rng = check_random_state(self.random_state)
        if isinstance(base, FrozenEstimator):
            self.estimator_ = base
            cal = np.arange(len(y_arr))
        else:
            train, cal = _split(groups_arr, self.calibration_size, rng, "calibration_size")
            y_train = y_frame.iloc[train] if y_frame is not None else y_arr[train]
            # a base that splits by patient itself (MorphologyClassifier's validation split)
            extra = {"groups": groups_arr[train]} if has_fit_parameter(base, "groups") else {}
            self.estimator_ = clone(base).fit(take(X, train), y_train, **extra)
        self.classes_ = getattr(self.estimator_, "classes_", np.array([0, 1]))
        named_classes = (
            isinstance(self.classes_, np.ndarray)
            and self.classes_.ndim == 1
            and self.classes_.dtype.kind in "OUS"
        )
        if self._multilabel and y_frame is not None and named_classes:
            named = [str(c) for c in self.classes_]
            if len(set(named)) == len(named) and set(named) <= set(map(str, y_frame.columns)):
                # the base predicts (some of) y's columns by name, in its own order (the
                # others are auxiliary targets, e.g. MorphologyClassifier's sex)
                self.label_names_ = np.asarray(named, dtype=object)
                y_arr = y_frame.set_axis(list(map(str, y_frame.columns)), axis=1)[named]
                y_arr = y_arr.to_numpy()
        if not self._multilabel:
            if len(self.classes_) != 2:
                raise ValueError(
                    f"y must have two classes in the training part, got {list(self.classes_)}."
                )
            unknown = sorted(
                set(np.unique(y_arr).tolist()) - set(np.asarray(self.classes_).tolist()), key=str
            )
            if unknown:
                raise ValueError(
                    f"y has label(s) {unknown} that are not classes of the estimator "
                    f"({list(self.classes_)}): the positive class would be misread."
                )
            if -1 in set(np.asarray(self.classes_).tolist()):
                raise ValueError(
                    "-1 is one of the classes, but predict marks a referred case with -1; "
                    "encode the classes otherwise (e.g. 0/1)."
                )
            y_arr = (y_arr == self.classes_[1]).astype(int)  # 1: the estimator's positive class
        thr = getattr(self.estimator_, "thresholds_", None)
        n_labels = len(self.label_names_)
        self.decision_thresholds_ = (
            np.full(n_labels, 0.5) if thr is None else np.broadcast_to(thr, (n_labels,)).copy()
        )
        proba = self._positive_proba(take(X, cal))
        y_cal = y_arr[cal].reshape(len(cal), -1)
        g_cal = None if self.calibration_unit == "case" else groups_arr[cal]
        self.n_calibration_ = len(cal) if g_cal is None else len(np.unique(g_cal))
        self.selection_, lam, share = {}, [], []
        for j, name in enumerate(self.label_names_):
            t = float(self.decision_thresholds_[j])
            grid = np.linspace(0.0, max(t, 1 - t), self.n_lambdas)
            res = selective_threshold(
                y_cal[:, j],
                proba[:, j],
                alpha=self.alpha,
                delta=self.delta,
                threshold=t,
                lambdas=grid,
                method=self.method,
                groups=g_cal,
            )
            self.selection_[str(name)] = res
            lam.append(res.lambda_hat)
            at = res.lambdas == res.lambda_hat
            share.append(res.n_accepted[at][0] / self.n_calibration_ if at.any() else 0.0)
            if not np.isfinite(res.lambda_hat):
                warnings.warn(
                    f"label {name!r}: no confidence threshold is certified at alpha="
                    f"{self.alpha}, delta={self.delta} with {self.n_calibration_} calibration "
                    "units; every case is referred.",
                    UserWarning,
                    stacklevel=2,
                )
        self.lambdas_ = pd.Series(lam, index=self.label_names_, name="lambda")
        self.calibration_accepted_share_ = pd.Series(
            share, index=self.label_names_, name="accepted_share"
        )
        return self

    @property
    def n_features_in_(self):
        """Number of features seen by the base classifier (when it records them)."""
        return self.estimator_.n_features_in_

    def predict_proba(self, X):
        """The base classifier's ``predict_proba``, unchanged."""
        check_is_fitted(self)
        return self.estimator_.predict_proba(X)

    def accept(self, X) -> np.ndarray:
        """Whether each call is trusted: (n, n_labels) bool, or (n,) for a binary ``y``."""
        check_is_fitted(self)
        p = self._positive_proba(X)
        ok = np.abs(p - self.decision_thresholds_) >= self.lambdas_.to_numpy()
        return ok if self._multilabel else ok[:, 0]

    def predict(self, X):
        """The call where it is accepted, ``-1`` (refer to an expert) elsewhere.

        Returns
        -------
        ndarray of shape (n,) for a binary ``y`` (a class of ``classes_`` or -1; object dtype
        for non-numeric classes), else (n, n_labels) of 0, 1 or -1
        """
        check_is_fitted(self)
        p = self._positive_proba(X)
        calls = (p >= self.decision_thresholds_).astype(np.int64)
        ok = np.abs(p - self.decision_thresholds_) >= self.lambdas_.to_numpy()
        if self._multilabel:
            return np.where(ok, calls, -1)
        labels = np.asarray(self.classes_)[calls[:, 0]]
        out = labels.astype(object) if labels.dtype.kind not in "iuf" else labels
        return np.where(ok[:, 0], out, -1)

    def score(self, X, y, sample_weight=None):
        """Accuracy among the accepted calls (NaN when none is accepted)."""
        pred = self.predict(X)
        if isinstance(y, pd.DataFrame) and self._multilabel:
            y = y.set_axis(list(map(str, y.columns)), axis=1)[list(self.label_names_)]
        y = np.asarray(y).reshape(pred.shape)
        ok = pred != -1
        if sample_weight is not None:
            w = np.broadcast_to(np.asarray(sample_weight, float).reshape(len(y), -1), pred.shape)
        else:
            w = np.ones(pred.shape)
        return float((w * ok * (pred == y)).sum() / (w * ok).sum()) if ok.any() else np.nan

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = (
            self.estimator is None or get_tags(self.estimator).input_tags.sparse
        )
        tags.target_tags.multi_output = True
        tags.classifier_tags.multi_label = True
        tags.classifier_tags.multi_class = False
        return tags
