"""Self-training for regression with any regressor: :class:`SelfTrainingRegressor`.

scikit-learn has :class:`~sklearn.semi_supervised.SelfTrainingClassifier` but no regressor
(scikit-learn issue #12752): a regressor has no ``predict_proba`` whose maximum could say
which pseudo-label to trust. Here trust comes from agreement instead.

The criterion. The rows (subjects, when ``groups`` are given) are cut into ``n_folds``
folds, ``n_repeats`` times (:func:`crossfit_folds`). Each round, for every fold, a clone of
the base estimator is fitted on the labelled and currently trusted pseudo-labelled rows
*outside* the fold and predicts the unlabelled rows *inside* it. Every unlabelled row so
gets ``n_repeats`` predictions from models that never saw it or its subject; its
pseudo-target is their mean and its *disagreement* their standard deviation, in units of
the labelled targets' standard deviation, the largest over targets
(:func:`ensemble_agreement`). The ``trust_fraction`` of unlabelled rows with the smallest
disagreement (and at most ``max_disagreement``) are trusted for the next round
(:func:`trusted_mask`). All pseudo-targets are revised every round, trusted or not; the
rounds stop after ``max_iter`` or when the trusted set no longer changes.

Why disagreement: where models fitted on different parts of the data agree, the prediction
is stable to the sample it was learnt from, and in co-training the disagreement between
regressors is the usual proxy for the error of a pseudo-label (COREG, Zhou and Li 2005).
Why held-out members: a member fitted on a trusted row predicts that row's own pseudo-target
back (a nearest-neighbour model finds the row itself), so its disagreement collapses and the
row stays trusted, right or wrong: the confirmation bias of self-training (Arazo et al.
2020). On a spiral with 30 labelled and 600 unlabelled points and a 3-nearest-neighbour
base, in-fold members made self-training worse than the labelled rows alone (mean test MAE
about 0.108 against 0.095 over 20-25 draws) and held-out members made it better (about
0.071); the naive variant that trusts every first-round pseudo-label and never revises it
(``trust_fraction=1.0, max_iter=1``) was worse than the labelled rows alone (0.11).
Disagreement remains a proxy: far outside the labelled range members can agree on one wrong
extrapolation, and in dense pseudo-labelled regions it can become small everywhere.

References: Z.-H. Zhou and M. Li, "Semi-supervised regression with co-training", IJCAI 2005.
E. Arazo et al., "Pseudo-labeling and confirmation bias in deep semi-supervised learning",
IJCNN 2020. D. Yarowsky, ACL 1995 (self-training).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator, MetaEstimatorMixin, RegressorMixin, clone
from sklearn.utils import check_random_state, get_tags

# Private helpers, stable since scikit-learn 1.3 (we require >= 1.6).
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.metadata_routing import (
    MetadataRouter,
    MethodMapping,
    _routing_enabled,
    process_routing,
)
from sklearn.utils.validation import _num_samples, check_is_fitted
from sklearn_compat.base import _fit_context

from skddh.conformal._base import check_groups, subset_fit_params, take

#: Columns of ``history_``, one row per round.
HISTORY_COLUMNS = (
    "n_fit",
    "n_trusted",
    "n_added",
    "n_dropped",
    "disagreement_mean",
    "disagreement_trusted",
    "pseudo_change",
)


def crossfit_folds(units, labeled, n_folds, n_repeats, random_state=None) -> list:
    """Held-out folds over units, ``n_repeats`` times, labelled units spread evenly.

    Parameters
    ----------
    units : array-like of shape (n_samples,)
        Subject id per row (or row numbers): a unit is never split between folds.
    labeled : array-like of bool of shape (n_samples,)
        A unit with any labelled row counts as labelled; labelled and unlabelled units are
        each dealt round-robin over the folds in a random order, so every training part
        holds ``(n_folds - 1) / n_folds`` of the labelled units (up to one).
    n_folds, n_repeats : int
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    list of (train, test) row-index arrays
        ``n_folds * n_repeats`` pairs, repeat by repeat; within a repeat, every row is in
        exactly one ``test``.

    Examples
    --------
    >>> import numpy as np
    >>> folds = crossfit_folds([0, 0, 1, 2, 3, 3], [1, 0, 1, 0, 0, 0], 2, 1, 0)
    >>> sorted(np.concatenate([test for _, test in folds]).tolist())
    [0, 1, 2, 3, 4, 5]
    """
    uniq, inverse = np.unique(np.asarray(units), return_inverse=True)
    unit_labeled = np.zeros(len(uniq), dtype=bool)
    unit_labeled[inverse[np.asarray(labeled, dtype=bool)]] = True
    rng = check_random_state(random_state)
    folds = []
    for _ in range(n_repeats):
        fold_of_unit = np.empty(len(uniq), dtype=int)
        for part in (unit_labeled, ~unit_labeled):
            members = rng.permutation(np.flatnonzero(part))
            fold_of_unit[members] = (np.arange(len(members)) + rng.randint(n_folds)) % n_folds
        fold = fold_of_unit[inverse]
        folds.extend((np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(n_folds))
    return folds


def ensemble_agreement(predictions, scale) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-targets and disagreement from several predictions of the same rows.

    Parameters
    ----------
    predictions : array-like of shape (n_predictions, n_samples, n_targets)
        At least two predictions per row, from models that did not see the row.
    scale : array-like of shape (n_targets,)
        Positive spread per target (the labelled targets' standard deviation), so that
        targets in different units compare.

    Returns
    -------
    pseudo : ndarray of shape (n_samples, n_targets)
        The mean prediction.
    disagreement : ndarray of shape (n_samples,)
        The predictions' standard deviation (``ddof=1``) divided by ``scale``, the largest
        over targets: a row counts as agreed on only when every target is.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[[1.0, 10.0], [0.0, 0.0]], [[3.0, 10.0], [0.0, 40.0]]])
    >>> pseudo, d = ensemble_agreement(p, scale=[np.sqrt(2), 10 * np.sqrt(2)])
    >>> pseudo.tolist(), d.round(12).tolist()
    ([[2.0, 10.0], [0.0, 20.0]], [1.0, 2.0])
    """
    p = np.asarray(predictions, dtype=float)
    if p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(
            "predictions must have shape (n_predictions >= 2, n_samples, n_targets), "
            f"got {p.shape}."
        )
    s = np.asarray(scale, dtype=float)
    if s.shape != (p.shape[2],) or not (s > 0).all():
        raise ValueError(f"scale must hold {p.shape[2]} positive values, got {s!r}.")
    return p.mean(0), (p.std(0, ddof=1) / s).max(1)


def trusted_mask(disagreement, trust_fraction, max_disagreement=None) -> np.ndarray:
    """The rows to trust: the ``ceil(trust_fraction * n)`` least disputed, capped by a level.

    Parameters
    ----------
    disagreement : array-like of shape (n_samples,)
        From :func:`ensemble_agreement`; NaN counts as the worst.
    trust_fraction : float in (0, 1]
        Share of the rows to trust, those with the smallest disagreement (ties broken by
        row order, so the selection is deterministic).
    max_disagreement : float, default=None
        Also require ``disagreement <= max_disagreement``.

    Returns
    -------
    ndarray of bool of shape (n_samples,)

    Examples
    --------
    >>> trusted_mask([0.3, 0.1, 0.2, 0.9], 0.5).tolist()
    [False, True, True, False]
    >>> trusted_mask([0.3, 0.1, 0.2, 0.9], 0.5, max_disagreement=0.15).tolist()
    [False, True, False, False]
    """
    d = np.asarray(disagreement, dtype=float)
    d = np.where(np.isnan(d), np.inf, d)
    n_trust = min(len(d), math.ceil(trust_fraction * len(d) - 1e-9))
    mask = np.zeros(len(d), dtype=bool)
    mask[np.argsort(d, kind="stable")[:n_trust]] = True
    if max_disagreement is not None:
        mask &= d <= max_disagreement
    return mask


class SelfTrainingRegressor(MetaEstimatorMixin, RegressorMixin, BaseEstimator):
    """Self-training meta-regressor: rows whose target is NaN are unlabelled.

    The regression counterpart of :class:`~sklearn.semi_supervised.SelfTrainingClassifier`
    (NaN plays the part of its ``-1``). Each round cross-fits clones of ``estimator`` on the
    labelled and trusted pseudo-labelled rows, predicts every unlabelled row from the
    ``n_repeats`` models that held it out, revises all pseudo-targets to the mean of those
    predictions and trusts the rows they agree on most (why: see Notes). It stops after
    ``max_iter`` rounds or when the trusted set no longer changes; a final clone is then
    fitted on the labelled and trusted rows. With no unlabelled row, ``fit`` is exactly
    ``clone(estimator).fit(X, y, **fit_params)``. A round costs ``n_folds * n_repeats``
    fits of the base estimator.

    Works with any regressor: scikit-learn ones, :class:`~skddh.MeasurementRegressor` on
    features, :class:`~skddh.FineTuningRegressor` on images the same way (``X`` reaches the
    base estimator as is, only row-indexed; ``y`` keeps its type, a DataFrame its column
    names). Pseudo-targets are means, so classification targets (class labels such as an
    IHDI grade) are not meaningful here.

    Parameters
    ----------
    estimator : regressor
        Any regressor with ``fit`` and ``predict`` (multi-output for several targets).
    n_folds : int, default=5
        Folds of the cross-fit (at least 2), over subjects when ``groups`` are given (a
        subject is never split), else over rows; at least this many labelled units needed.
    n_repeats : int, default=3
        Times the folds are redrawn: the number of held-out predictions per unlabelled row
        whose standard deviation is its disagreement (at least 2).
    trust_fraction : float in (0, 1], default=0.5
        Each round, trust the ``ceil(trust_fraction * n_unlabeled)`` unlabelled rows with the
        smallest disagreement. ``1.0`` with ``max_iter=1`` is naive self-training: every
        pseudo-label trusted from the first round and never revised.
    max_disagreement : float, default=None
        Also require disagreement ``<=`` this (in labelled standard deviations).
    max_iter : int, default=10
        Largest number of rounds.
    pseudo_weight : float in (0, 1], default=1.0
        Sample weight of a trusted pseudo-labelled row relative to a labelled one. Below 1,
        ``sample_weight`` is passed to the base estimator's ``fit`` (which must accept it).
    random_state : int, RandomState instance or None, default=None
        Draws the folds (the base estimator keeps its own ``random_state``).

    Attributes
    ----------
    estimator_ : regressor
        The final fit, on the labelled and trusted rows; ``predict`` delegates to it.
    n_iter_ : int
        Rounds run (0 when every row is labelled).
    termination_condition_ : {"no_change", "max_iter", "all_labeled"}
        Why the rounds stopped.
    history_ : DataFrame
        One row per round (index ``iteration``): ``n_fit`` (labelled and trusted rows the
        members were fitted on, each member without its fold),
        ``n_trusted``, ``n_added`` and ``n_dropped`` (versus the previous round),
        ``disagreement_mean`` (over all unlabelled rows), ``disagreement_trusted``,
        ``pseudo_change`` (mean absolute change of the pseudo-targets in labelled standard
        deviations; NaN in round 1).
    labeled_mask_ : ndarray of bool of shape (n_samples,)
        Rows of the training data with a target.
    trusted_ : ndarray of bool of shape (n_samples,)
        Unlabelled rows trusted in the final fit (False on labelled rows).
    pseudo_targets_ : ndarray of shape (n_samples, n_targets)
        The last round's pseudo-targets of the unlabelled rows; NaN on labelled rows.
    disagreement_ : ndarray of shape (n_samples,)
        The last round's disagreement of the unlabelled rows; NaN on labelled rows.
    target_names_ : ndarray of str
        DataFrame or Series names of ``y``, else ``y0``, ``y1``, ...
    n_features_in_ : int
        Delegated to ``estimator_`` (when it has one).
    feature_names_in_ : ndarray of str
        Delegated to ``estimator_`` (when it has one).

    See Also
    --------
    sklearn.semi_supervised.SelfTrainingClassifier : The classification counterpart.

    Notes
    -----
    The criterion: disagreement between models fitted on different parts of the data is
    the usual proxy for the error of a pseudo-label in co-training (COREG, Zhou and Li
    2005). The models that score a row never saw it: fitted on a trusted row, a member would
    predict its pseudo-target back, its disagreement would collapse and it would stay
    trusted, right or wrong (confirmation bias, Arazo et al. 2020). In our simulation that
    in-fold variant did worse than the labelled rows alone, the held-out one better (see
    the module :mod:`skddh.models._selftraining` for the numbers).

    ``groups`` (subject ids) make the folds subject-level; without them every row is its own
    unit. Inside :class:`~sklearn.model_selection.GridSearchCV` or a
    :class:`~sklearn.pipeline.Pipeline`, ``groups`` reach ``fit`` only through metadata
    routing (``sklearn.set_config(enable_metadata_routing=True)`` and
    ``set_fit_request(groups=True)``); otherwise the folds silently become row-level.
    :meth:`score` leaves unlabelled rows out, so the default scoring of a search works on
    folds that hold them; a string scorer does not (it would compare with NaN).

    For conformal bounds around a self-trained model, fit it on the training subjects and
    their unlabelled pool, then calibrate ``OneSidedConformalRegressor(FrozenEstimator(st))``
    on labelled subjects it never saw, not even unlabelled: calibration data must play no
    part in fitting. ``OneSidedConformalRegressor(SelfTrainingRegressor(...))`` does not
    compose yet: it refuses NaN targets and keeps ``groups`` to itself.

    References
    ----------
    Z.-H. Zhou and M. Li, "Semi-supervised regression with co-training", IJCAI 2005.
    E. Arazo et al., "Pseudo-labeling and confirmation bias in deep semi-supervised
    learning", IJCNN 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.neighbors import KNeighborsRegressor
    >>> from skddh import SelfTrainingRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(0, 1, size=(300, 1))
    >>> y = np.sin(2 * np.pi * X[:, 0]) + rng.normal(0, 0.1, 300)
    >>> y[20:] = np.nan  # 20 labelled rows, 280 unlabelled
    >>> model = SelfTrainingRegressor(KNeighborsRegressor(5), random_state=0).fit(X, y)
    >>> int(model.labeled_mask_.sum()), int(model.trusted_.sum())
    (20, 140)
    >>> model.predict(X[:3]).shape
    (3,)
    >>> list(model.history_.columns[:3])
    ['n_fit', 'n_trusted', 'n_added']
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict"])],
        "n_folds": [Interval(Integral, 2, None, closed="left")],
        "n_repeats": [Interval(Integral, 2, None, closed="left")],
        "trust_fraction": [Interval(Real, 0, 1, closed="right")],
        "max_disagreement": [Interval(Real, 0, None, closed="left"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "pseudo_weight": [Interval(Real, 0, 1, closed="right")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        estimator,
        *,
        n_folds=5,
        n_repeats=3,
        trust_fraction=0.5,
        max_disagreement=None,
        max_iter=10,
        pseudo_weight=1.0,
        random_state=None,
    ):
        self.estimator = estimator
        self.n_folds = n_folds
        self.n_repeats = n_repeats
        self.trust_fraction = trust_fraction
        self.max_disagreement = max_disagreement
        self.max_iter = max_iter
        self.pseudo_weight = pseudo_weight
        self.random_state = random_state

    # ---- fitting ---------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=False)  # the base estimator is not validated
    def fit(self, X, y, groups=None, **fit_params) -> SelfTrainingRegressor:
        """Self-train on the labelled rows and the unlabelled (all-NaN target) rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Passed to the base estimator row-indexed, as is (features or images). A numeric
            2-D array or DataFrame must be finite unless the base estimator allows NaN.
        y : array-like of shape (n_samples,) or (n_samples, n_targets), or DataFrame
            Numeric targets; a row whose targets are all NaN is unlabelled. A row with only
            some targets NaN is an error (no per-target masking).
        groups : array-like of shape (n_samples,), default=None
            Subject ids for the folds of the agreement ensemble; ``None``: every row is its
            own subject.
        **fit_params : dict
            Passed to the base estimator's ``fit`` (through metadata routing when enabled);
            per-sample ones, such as ``sample_weight``, are sliced to the rows of each fit.

        Returns
        -------
        self : SelfTrainingRegressor
        """
        y_arr, labeled = self._check_y(y)
        n = len(y_arr)
        if sp.issparse(X):
            X = X.tocsr()  # row indexing; the base estimator decides whether it accepts sparse
        if _num_samples(X) != n:
            raise ValueError(f"X has {_num_samples(X)} samples but y has {n}.")
        groups_arr = self._check_groups(groups, n)
        if not get_tags(self.estimator).input_tags.allow_nan:
            _check_finite_features(X)
        if _routing_enabled():
            params = process_routing(self, "fit", groups=groups, **fit_params).estimator.fit
        else:
            params = fit_params
        self.labeled_mask_ = labeled
        self.trusted_ = np.zeros(n, dtype=bool)
        self.pseudo_targets_ = np.full_like(y_arr, np.nan)
        self.disagreement_ = np.full(n, np.nan)
        self.n_iter_ = 0
        if labeled.all():
            self.termination_condition_ = "all_labeled"
            self.history_ = _history([])
            self.estimator_ = clone(self.estimator).fit(X, y, **params)
            return self

        unl = np.flatnonzero(~labeled)
        units = np.arange(n) if groups_arr is None else groups_arr
        n_labeled_units = len(np.unique(units[labeled]))
        if n_labeled_units < self.n_folds:
            unit = "rows" if groups_arr is None else "subjects (groups)"
            raise ValueError(
                f"n_folds={self.n_folds} needs at least {self.n_folds} labelled {unit}, "
                f"got {n_labeled_units}."
            )
        folds = crossfit_folds(units, labeled, self.n_folds, self.n_repeats, self.random_state)
        scale = y_arr[labeled].std(0)
        scale = np.where(scale > 1e-12 * (1 + np.abs(y_arr[labeled]).max(0)), scale, 1.0)
        work = y_arr.copy()  # labelled targets, pseudo-targets filled in on unlabelled rows
        trusted = np.zeros(n, dtype=bool)  # over all rows; only unlabelled ones become True
        pseudo = np.full((len(unl), y_arr.shape[1]), np.nan)
        records = []
        self.termination_condition_ = "max_iter"
        for _ in range(self.max_iter):
            self.n_iter_ += 1
            preds = self._held_out_predictions(X, y, work, labeled | trusted, folds, params)
            new_pseudo, disagreement = ensemble_agreement(preds[:, unl], scale)
            new_trusted = _scatter(
                trusted_mask(disagreement, self.trust_fraction, self.max_disagreement), unl, n
            )
            n_trusted = int(new_trusted.sum())
            records.append(
                (
                    int((labeled | trusted).sum()),
                    n_trusted,
                    int((new_trusted & ~trusted).sum()),
                    int((trusted & ~new_trusted).sum()),
                    float(disagreement.mean()),
                    float(disagreement[new_trusted[unl]].mean()) if n_trusted else np.nan,
                    float(np.mean(np.abs(new_pseudo - pseudo) / scale)),
                )
            )
            unchanged = np.array_equal(new_trusted, trusted)
            pseudo, trusted = new_pseudo, new_trusted
            work[unl] = pseudo
            if unchanged:
                self.termination_condition_ = "no_change"
                break
        self.history_ = _history(records)
        self.trusted_ = trusted
        self.pseudo_targets_[unl] = pseudo
        self.disagreement_[unl] = disagreement
        self.estimator_ = self._fit_one(X, y, work, np.flatnonzero(labeled | trusted), params)
        return self

    def _held_out_predictions(self, X, y, work, fit_mask, folds, params):
        """Each repeat's held-out predictions of the unlabelled rows, (n_repeats, n, k).

        A member is fitted on the ``fit_mask`` rows outside its fold and predicts only the
        unlabelled rows inside it, so no row's prediction comes from a model that saw it
        (or its subject). NaN on labelled rows.
        """
        labeled = self.labeled_mask_
        out = np.full((self.n_repeats, len(labeled), work.shape[1]), np.nan)
        for j, (train, test) in enumerate(folds):
            test = test[~labeled[test]]
            if len(test):
                member = self._fit_one(X, y, work, train[fit_mask[train]], params)
                out[j // self.n_folds, test] = _as_2d(member.predict(take(X, test)))
        return out

    def _fit_one(self, X, y, work, rows, params):
        """A clone fitted on ``rows``: targets in the caller's type, pseudo rows weighted."""
        params = subset_fit_params(X, params, rows)
        if self.pseudo_weight != 1:
            w = np.asarray(params.get("sample_weight", np.ones(len(rows))), dtype=float)
            params["sample_weight"] = np.where(self.labeled_mask_[rows], w, w * self.pseudo_weight)
        return clone(self.estimator).fit(take(X, rows), _targets_like(y, work, rows), **params)

    # ---- checks -----------------------------------------------------------------------
    def _check_y(self, y):
        """Targets as a float (n, k) array and the labelled mask; names the bad row."""
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        if isinstance(y, pd.DataFrame):
            names = np.asarray(y.columns.astype(str))
            for name, col in zip(names, y.columns):
                dtype = y[col].dtype
                if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
                    raise TypeError(
                        f"y: target {name!r} has dtype {dtype}, not numeric; "
                        "SelfTrainingRegressor regresses numbers (NaN marks unlabelled rows)."
                    )
            arr = y.to_numpy(dtype=float)
        else:
            raw = np.asarray(y)
            if raw.dtype.kind == "c":
                raise ValueError("y: Complex data not supported; targets must be real numbers.")
            if raw.dtype.kind not in "biuf":
                try:
                    raw = raw.astype(float)
                except (TypeError, ValueError):
                    raise TypeError(
                        f"y must be numeric (NaN marks unlabelled rows), got dtype {raw.dtype}."
                    ) from None
            if raw.dtype.kind == "b":
                raise TypeError("y must be numeric, got booleans.")
            if raw.ndim not in (1, 2):
                raise ValueError(f"y must be 1-D or 2-D, got {raw.ndim} dimensions.")
            arr = raw.astype(float).reshape(len(raw), -1)
            one_name = isinstance(y, pd.Series) and y.name is not None
            names = np.asarray(
                [str(y.name)] if one_name else [f"y{j}" for j in range(arr.shape[1])]
            )
        if arr.shape[0] == 0:
            raise ValueError("y is empty: 0 samples.")
        self.target_names_ = names
        if np.isinf(arr).any():
            row, col = np.argwhere(np.isinf(arr))[0]
            raise ValueError(f"y has an infinite value at row {row}, target {names[col]!r}.")
        missing = np.isnan(arr)
        partial = missing.any(1) & ~missing.all(1)
        if partial.any():
            row = int(np.flatnonzero(partial)[0])
            col = int(np.flatnonzero(missing[row])[0])
            raise ValueError(
                f"y row {row} has target {names[col]!r} missing but not all its targets: a "
                "row is unlabelled only when every target is NaN (no per-target masking)."
            )
        labeled = ~missing.all(1)
        if not labeled.any():
            raise ValueError(
                f"y has no labelled row: all {len(arr)} rows are NaN (unlabelled). "
                "Self-training needs some labelled rows."
            )
        return arr, labeled

    @staticmethod
    def _check_groups(groups, n):
        if groups is None:
            return None
        arr = check_groups(groups)
        if arr.ndim != 1 or len(arr) != n:
            raise ValueError(f"groups must have shape ({n},), got {arr.shape}.")
        if pd.isna(arr).any():
            raise ValueError(
                f"groups has a missing subject id at row {int(np.flatnonzero(pd.isna(arr))[0])}."
            )
        return arr

    # ---- prediction, scoring ---------------------------------------------------------------
    def predict(self, X):
        """Predictions of the final fit ``estimator_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_targets)
        """
        check_is_fitted(self)
        return self.estimator_.predict(X)

    def score(self, X, y, sample_weight=None) -> float:
        """R^2 on the labelled rows of ``(X, y)``; unlabelled (all-NaN) rows are left out.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
        y : array-like of shape (n_samples,) or (n_samples, n_targets), or DataFrame
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        float
        """
        check_is_fitted(self)
        arr = np.asarray(y, dtype=float).reshape(_num_samples(X), -1)
        missing = np.isnan(arr)
        if (missing.any(1) & ~missing.all(1)).any():
            raise ValueError("score: y has rows with only some targets NaN.")
        rows = np.flatnonzero(~missing.all(1))
        if len(rows) == 0:
            raise ValueError("score: y has no labelled row to score.")
        if sp.issparse(X):
            X = X.tocsr()
        y_rows = y.iloc[rows] if isinstance(y, (pd.DataFrame, pd.Series)) else np.asarray(y)[rows]
        w = None if sample_weight is None else np.asarray(sample_weight)[rows]
        return super().score(take(X, rows), y_rows, sample_weight=w)

    # ---- delegation ------------------------------------------------------------------------
    @property
    def n_features_in_(self):
        """Number of features seen by the final fit (delegated)."""
        check_is_fitted(self)
        return self.estimator_.n_features_in_

    @property
    def feature_names_in_(self):
        """Feature names seen by the final fit (delegated)."""
        check_is_fitted(self)
        return self.estimator_.feature_names_in_

    def get_metadata_routing(self):
        """Metadata routing: ``groups`` for this estimator, fit parameters to the base one.

        Returns
        -------
        MetadataRouter
        """
        return (
            MetadataRouter(owner=self)
            .add_self_request(self)
            .add(
                estimator=self.estimator,
                method_mapping=MethodMapping().add(caller="fit", callee="fit"),
            )
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        base = get_tags(self.estimator)
        for field in (
            "sparse",
            "allow_nan",
            "two_d_array",
            "three_d_array",
            "categorical",
            "string",
            "dict",
            "positive_only",
        ):
            setattr(tags.input_tags, field, getattr(base.input_tags, field))
        tags.target_tags.multi_output = base.target_tags.multi_output
        tags.target_tags.single_output = base.target_tags.single_output
        tags.non_deterministic = base.non_deterministic
        return tags


def _scatter(mask, idx, n):
    out = np.zeros(n, dtype=bool)
    out[idx] = mask
    return out


def _as_2d(pred):
    pred = np.asarray(pred, dtype=float)
    return pred.reshape(pred.shape[0], -1)


def _targets_like(y, work, rows):
    """Rows ``rows`` of the working targets, in the type and shape the caller passed."""
    values = work[rows]
    if isinstance(y, pd.DataFrame):
        return pd.DataFrame(values, columns=y.columns, index=y.index[rows])
    if isinstance(y, pd.Series):
        return pd.Series(values[:, 0], name=y.name, index=y.index[rows])
    return values[:, 0] if np.ndim(y) == 1 else values


def _check_finite_features(X):
    """NaN or inf in a numeric 2-D array or DataFrame of features: a ValueError naming it."""
    if isinstance(X, pd.DataFrame):
        numeric = X.select_dtypes("number")
        values, columns = numeric.to_numpy(dtype=float), numeric.columns
    elif isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind in "fc":
        values, columns = X, range(X.shape[1])
    else:
        return  # images, paths, sparse, lists: the base estimator checks
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"X has a NaN or infinite value at row {row}, column {list(columns)[col]!r} "
            "(unlabelled rows are predicted too, so they need finite features)."
        )


def _history(records):
    return pd.DataFrame(
        records,
        columns=list(HISTORY_COLUMNS),
        index=pd.RangeIndex(1, len(records) + 1, name="iteration"),
    )
