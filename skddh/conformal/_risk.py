"""Policy-level risk control: pure functions on a matrix of losses over a grid of policies.

A family of policies is indexed by a scalar ``lam`` on an increasing grid, larger ``lam`` more
conservative (fewer hips passed): e.g. a margin ``m``, pass a hip when ``prediction - m >=
threshold``. Each calibration unit ``i`` has a loss ``L_i(lam)`` in ``[0, B]``, non-increasing
in ``lam``; the missed finding (:func:`missed_finding_losses`) is 1 when the policy at ``lam``
passes the hip while its true value lies below the threshold. The risk of a policy is
``R(lam) = E[L(lam)]`` for a new unit. Two guarantees, for a new unit from the calibration
population (same population and acquisition, no selection between them):

- :func:`conformal_risk_control` (Angelopoulos, Bates, Fisch, Lei and Schuster, arXiv
  2208.02814): ``E[L_{n+1}(lam_hat)] <= alpha`` *on average over the calibration draw*, for
  exchangeable units, losses in ``[0, B]`` non-increasing in ``lam``, and
  ``L(lambdas[-1]) <= alpha`` (a last policy that refers every hip has loss 0).
- :func:`learn_then_test` (Angelopoulos, Bates, Candes, Jordan and Lei, arXiv 2110.01052):
  ``P(R(lam_hat) <= alpha) >= 1 - epsilon`` over the calibration draw, for i.i.d. units and
  losses in ``[0, 1]``: the chosen policy itself has risk at most ``alpha``, except on a share
  ``epsilon`` of calibration sets. Fixed-sequence testing needs ``R`` non-increasing in
  ``lam``; Bonferroni does not.

Neither is the naive plug-in ``inf{lam : Rhat(lam) <= alpha}``: that one has expected risk
above ``alpha`` at small ``n`` and ``R(lam_hat) > alpha`` about half the time.

Subjects, not images, are the exchangeable units (see :mod:`skddh.conformal`). With
``groups``, each function first makes one loss per calibration subject
(:func:`subject_losses`), and ``n`` counts subjects: ``aggregate="max"`` (1 when any of the
subject's images is a missed finding) controls ``P(a new subject has a missed finding)``;
``aggregate="mean"`` (the share of its images missed) controls the expected share of a new
subject's images that are missed findings, i.e. a uniformly chosen image of a new subject.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from scipy.special import bdtr  # the binomial CDF (scipy.stats.binom.cdf), as a ufunc

AGGREGATES = ("max", "mean")
LTT_METHODS = ("fixed_sequence", "bonferroni")
P_VALUES = ("auto", "binomial", "hoeffding_bentkus")

# Relative slack on sums of losses compared to alpha (n + 1): sums of 0/1 losses are integers,
# alpha (n + 1) is often an integer in exact terms but not in floating point (0.1 * 30 =
# 3.0000000000000004), and a strict float comparison would lose an order statistic.
_TOL = 1e-9


class LearnThenTestResult(NamedTuple):
    """What :func:`learn_then_test` returns.

    Attributes
    ----------
    lambda_hat : float
        The least conservative certified ``lam``; ``lambdas[-1]`` (with a warning) when none is.
    valid_lambdas : ndarray
        Every certified ``lam``: ``R(lam) <= alpha`` for all of them at once, with probability
        at least ``1 - epsilon``.
    p_values : ndarray of shape (n_lambdas,)
        P-values of ``H_lam: R(lam) > alpha``, in the order of ``lambdas``.
    """

    lambda_hat: float
    valid_lambdas: np.ndarray
    p_values: np.ndarray


def missed_finding_losses(predictions, y_true, *, threshold: float, margins) -> np.ndarray:
    """Missed-finding losses of the margin policies: 1 when passed while truly abnormal.

    The policy at margin ``m`` passes a hip when ``prediction - m >= threshold`` (the
    single-measurement rule of :func:`skddh.policy.apply_rule` with ``LB = prediction - m``);
    a non-finite prediction is never passed. The hip is abnormal when ``y_true < threshold``.
    Losses are non-increasing in ``m``; a margin of ``+inf`` refers every hip (loss 0), the
    natural last point of a grid.

    Parameters
    ----------
    predictions : array-like of shape (n,)
        What the policy compares to the threshold: bias-corrected predictions, or lower bounds.
    y_true : array-like of shape (n,)
        True measurements (NaN-free).
    threshold : float
        Clinical threshold (e.g. 60 deg for the alpha angle).
    margins : array-like of shape (n_margins,)
        Strictly increasing margins (conservative last).

    Returns
    -------
    ndarray of shape (n, n_margins)
        0/1 losses (float).

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import missed_finding_losses
    >>> missed_finding_losses([61.0, 63.0, 58.0], [59.0, 64.0, 57.0], threshold=60.0,
    ...                       margins=[0.0, 2.0, np.inf])
    array([[1., 0., 0.],
           [0., 0., 0.],
           [0., 0., 0.]])
    """
    pred = np.asarray(predictions, dtype=float).ravel()
    y = np.asarray(y_true, dtype=float).ravel()
    if pred.shape != y.shape:
        raise ValueError(f"predictions and y_true differ in length: {len(pred)} != {len(y)}.")
    if np.isnan(y).any():
        raise ValueError("y_true contains NaN.")
    m = _check_lambdas(margins, "margins")
    with np.errstate(invalid="ignore"):  # inf - inf for an infinite prediction
        passed = np.isfinite(pred)[:, None] & (pred[:, None] - m[None, :] >= threshold)
    return (passed & (y < threshold)[:, None]).astype(float)


def subject_losses(losses, groups, *, aggregate: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """One loss per subject: the maximum or the mean over the subject's images.

    ``"max"``: 1 when any image of the subject is a missed finding; conformalising these
    controls ``P(a new subject has a missed finding)`` (expectation of the maximum).
    ``"mean"``: the share of the subject's images that are missed findings; controls the
    expected share of a new subject's images missed. Both stay non-increasing in ``lam``.

    Parameters
    ----------
    losses : array-like of shape (n_images, n_lambdas)
    groups : array-like of shape (n_images,)
        Subject id of each image.
    aggregate : {"max", "mean"}, default="max"

    Returns
    -------
    subject_losses : ndarray of shape (n_subjects, n_lambdas)
    subjects : ndarray of shape (n_subjects,)
        The subject ids, sorted (``np.unique`` order).

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import subject_losses
    >>> L = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    >>> subject_losses(L, ["a", "a", "b"])[0]
    array([[1., 0.],
           [1., 1.]])
    >>> subject_losses(L, ["a", "a", "b"], aggregate="mean")[0]
    array([[0.5, 0. ],
           [1. , 1. ]])
    """
    L = np.asarray(losses, dtype=float)
    if L.ndim != 2:
        raise ValueError(f"losses must be 2-D (n_images, n_lambdas), got shape {L.shape}.")
    g = np.asarray(groups)
    if g.shape != (L.shape[0],):
        raise ValueError(f"groups must have shape ({L.shape[0]},), got {g.shape}.")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}.")
    subjects, codes = np.unique(g, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if aggregate == "max":
        out = np.maximum.reduceat(L[order], starts, axis=0)
    else:
        out = np.add.reduceat(L[order], starts, axis=0) / counts[:, None]
    return out, subjects


def conformal_risk_control(
    losses,
    lambdas,
    *,
    alpha: float,
    B: float = 1.0,
    groups=None,
    aggregate: str = "max",
) -> float:
    """Conformal risk control: the least conservative ``lam`` with ``E[L(lam_hat)] <= alpha``.

    ``lam_hat = inf{lam : n / (n + 1) * Rhat_n(lam) + B / (n + 1) <= alpha}``, with
    ``Rhat_n`` the mean calibration loss (Angelopoulos et al., arXiv 2208.02814, Theorem 1).

    Guarantee: ``E[L_{n+1}(lam_hat)] <= alpha``, the expectation over the calibration units
    *and* the new unit (not conditional on the calibration set), when the ``n + 1`` units are
    exchangeable, each ``L_i`` is non-increasing in ``lam`` with values in ``[0, B]``, and
    ``L_i(lambdas[-1]) <= alpha`` (e.g. a last margin of ``+inf`` that refers every hip).
    Nearly tight: for losses continuous in ``lam`` (a fine grid, no ties) the paper also
    gives ``E[L_{n+1}(lam_hat)] >= alpha - 2 B / (n + 1)``.
    With ``groups`` the units are subjects and ``n`` counts them (:func:`subject_losses`).

    Parameters
    ----------
    losses : array-like of shape (n, n_lambdas)
        ``L_i(lam_j)`` per calibration unit (image, or subject with ``groups``).
    lambdas : array-like of shape (n_lambdas,)
        Strictly increasing grid (conservative last).
    alpha : float
        Target risk, in ``(0, B)``.
    B : float, default=1.0
        Upper bound of the losses.
    groups : array-like of shape (n,), default=None
        Subject ids: one loss per subject (``aggregate``) before calibrating.
    aggregate : {"max", "mean"}, default="max"
        How a subject's image losses combine (see :func:`subject_losses`).

    Returns
    -------
    float
        ``lam_hat``. When no ``lam`` on the grid qualifies (``n < B / alpha - 1``, or too many
        losses even at the most conservative policy), ``lambdas[-1]`` with a warning: the
        risk cannot be controlled on this grid, and the policy must refer every hip.

    References
    ----------
    Angelopoulos, Bates, Fisch, Lei and Schuster, "Conformal Risk Control", ICLR 2024,
    arXiv 2208.02814.

    Examples
    --------
    Twenty calibration hips, one policy per margin; at ``alpha = 0.1`` the sum of losses plus
    ``B`` may not exceed ``alpha (n + 1) = 2.1``, so at most one missed finding:

    >>> import numpy as np
    >>> from skddh.conformal import conformal_risk_control, missed_finding_losses
    >>> rng = np.random.default_rng(0)
    >>> y = rng.normal(62.0, 3.0, 20)
    >>> pred = y + 1.0 + rng.normal(0.0, 2.0, 20)  # biased upwards: passes too many
    >>> margins = np.r_[np.linspace(-2.0, 8.0, 21), np.inf]
    >>> L = missed_finding_losses(pred, y, threshold=60.0, margins=margins)
    >>> lam = conformal_risk_control(L, margins, alpha=0.1)
    >>> float(lam), float(L[:, margins == lam].sum())
    (0.0, 1.0)
    """
    L, lam = _check_losses(losses, lambdas, B, groups, aggregate)
    if not 0 < alpha < B:
        raise ValueError(f"alpha must lie in (0, B) = (0, {B}), got {alpha!r}.")
    if (np.diff(L, axis=1) > 0).any():
        raise ValueError(
            "losses must be non-increasing in lambda (along each row): conformal risk control "
            "is valid for monotone losses only."
        )
    n = L.shape[0]
    # n/(n+1) Rhat + B/(n+1) <= alpha  <=>  sum_i L_i + B <= alpha (n + 1)
    bound = alpha * (n + 1)
    ok = L.sum(axis=0) + B <= bound * (1 + _TOL)
    if not ok.any():
        warnings.warn(
            f"Conformal risk control: no lambda on the grid controls the risk at alpha={alpha} "
            f"with n={n} calibration units (needs n >= B/alpha - 1 = {B / alpha - 1:g}, and "
            f"few enough losses at the most conservative lambda). Returning lambdas[-1] = "
            f"{lam[-1]!r}: the risk cannot be controlled, refer every hip.",
            UserWarning,
            stacklevel=2,
        )
        return float(lam[-1])
    return float(lam[np.argmax(ok)])


def risk_p_values(losses, *, alpha: float, p_value: str = "auto") -> np.ndarray:
    """P-values of ``H_lam: R(lam) > alpha`` per column of a loss matrix (Learn-then-Test).

    - ``"binomial"`` (0/1 losses only): ``P(Binom(n, alpha) <= k)`` with ``k`` the number of
      losses, exact: ``k ~ Binom(n, R)`` is stochastically smaller under ``R > alpha``.
    - ``"hoeffding_bentkus"`` (losses in ``[0, 1]``): ``min(exp(-n h1(min(Rhat, alpha),
      alpha)), e * P(Binom(n, alpha) <= ceil(n Rhat)))``, ``h1(a, b) = a log(a/b) + (1 - a)
      log((1 - a)/(1 - b))`` (arXiv 2110.01052, Section 3.1).
    - ``"auto"``: binomial when every loss is 0 or 1, else Hoeffding-Bentkus.

    Each p-value is valid (``P(p <= u) <= u`` under ``H_lam``) for i.i.d. units.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import risk_p_values
    >>> L = np.zeros((30, 2))
    >>> L[:3, 0] = 1.0  # 3 of 30 losses, then none
    >>> risk_p_values(L, alpha=0.2).round(4)  # binomial: P(Binom(30, 0.2) <= k)
    array([0.1227, 0.0012])
    """
    L = np.asarray(losses, dtype=float)
    if L.ndim != 2 or L.shape[0] == 0:
        raise ValueError(f"losses must be 2-D with at least one row, got shape {L.shape}.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}.")
    if np.isnan(L).any() or (L < 0).any() or (L > 1).any():
        raise ValueError("Learn-then-Test p-values need losses in [0, 1] (NaN-free).")
    if p_value not in P_VALUES:
        raise ValueError(f"p_value must be one of {P_VALUES}, got {p_value!r}.")
    binary = bool(np.isin(L, (0.0, 1.0)).all())
    if p_value == "auto":
        p_value = "binomial" if binary else "hoeffding_bentkus"
    n = L.shape[0]
    total = L.sum(axis=0)
    if p_value == "binomial":
        if not binary:
            raise ValueError(
                "p_value='binomial' is exact for 0/1 losses only; use 'hoeffding_bentkus' for "
                "losses in [0, 1] (e.g. aggregate='mean')."
            )
        return bdtr(np.rint(total), n, alpha)
    r = np.minimum(total / n, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        h1 = np.where(r > 0, r * np.log(r / alpha), 0.0) + (1 - r) * np.log((1 - r) / (1 - alpha))
    hoeffding = np.exp(-n * h1)
    bentkus = np.e * bdtr(np.ceil(total - _TOL * n), n, alpha)
    return np.minimum(hoeffding, bentkus)


def learn_then_test(
    losses,
    lambdas,
    *,
    alpha: float,
    epsilon: float,
    method: str = "fixed_sequence",
    p_value: str = "auto",
    groups=None,
    aggregate: str = "max",
) -> LearnThenTestResult:
    """Learn-then-Test: policies whose own risk is at most ``alpha`` with high probability.

    Tests ``H_lam: R(lam) > alpha`` for every ``lam`` on the grid (:func:`risk_p_values`) and
    corrects for multiplicity to control the family-wise error rate at ``epsilon``:

    - ``"fixed_sequence"`` (fixed-sequence testing): test at level ``epsilon`` from the most
      conservative ``lam`` downwards and stop at the first non-rejection. Valid when ``R`` is
      non-increasing in ``lam`` (the hypotheses are then nested), and no power is spent on a
      multiplicity correction.
    - ``"bonferroni"`` (Bonferroni correction): reject where ``p <= epsilon / n_lambdas``.
      Valid for any risk curve.

    Guarantee: ``P(R(lam) <= alpha for every certified lam) >= 1 - epsilon``, hence
    ``P(R(lam_hat) <= alpha) >= 1 - epsilon``, over the draw of the calibration units, where
    ``R(lam) = E[L(lam)]`` is the risk of the fixed policy on a new unit. Assumes i.i.d. units
    (subjects with ``groups``) and losses in ``[0, 1]``; ``"binomial"`` p-values need 0/1
    losses. When nothing is certified, ``lam_hat = lambdas[-1]`` (with a warning), which keeps
    the guarantee only if ``R(lambdas[-1]) <= alpha``, e.g. a last margin of ``+inf``.

    Parameters
    ----------
    losses : array-like of shape (n, n_lambdas)
        ``L_i(lam_j)`` per calibration unit (image, or subject with ``groups``), in ``[0, 1]``.
    lambdas : array-like of shape (n_lambdas,)
        Strictly increasing grid (conservative last).
    alpha : float in (0, 1)
        Target risk.
    epsilon : float in (0, 1)
        Allowed probability that the chosen policy's risk exceeds ``alpha``.
    method : {"fixed_sequence", "bonferroni"}, default="fixed_sequence"
        Family-wise error correction.
    p_value : {"auto", "binomial", "hoeffding_bentkus"}, default="auto"
        See :func:`risk_p_values`.
    groups : array-like of shape (n,), default=None
        Subject ids: one loss per subject (``aggregate``) before testing; ``n`` counts subjects.
    aggregate : {"max", "mean"}, default="max"
        ``"max"`` keeps 0/1 losses (binomial p-values); ``"mean"`` gives losses in ``[0, 1]``
        (Hoeffding-Bentkus under ``"auto"``).

    Returns
    -------
    LearnThenTestResult
        ``(lambda_hat, valid_lambdas, p_values)``.

    References
    ----------
    Angelopoulos, Bates, Candes, Jordan and Lei, "Learn then Test: Calibrating Predictive
    Algorithms to Achieve Risk Control", arXiv 2110.01052.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.conformal import learn_then_test, missed_finding_losses
    >>> rng = np.random.default_rng(0)
    >>> y = rng.normal(62.0, 3.0, 400)
    >>> pred = y + 1.0 + rng.normal(0.0, 2.0, 400)
    >>> margins = np.r_[np.linspace(-2.0, 8.0, 21), np.inf]
    >>> L = missed_finding_losses(pred, y, threshold=60.0, margins=margins)
    >>> res = learn_then_test(L, margins, alpha=0.1, epsilon=0.1)
    >>> float(res.lambda_hat), float(L[:, margins == res.lambda_hat].mean())
    (0.5, 0.0775)

    The plug-in (empirical risk <= alpha) would pick margin 0.0, empirical risk 0.0925, and
    exceed alpha in truth about half the time; Learn-then-Test keeps a margin of safety.
    """
    if method not in LTT_METHODS:
        raise ValueError(f"method must be one of {LTT_METHODS}, got {method!r}.")
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must lie in (0, 1), got {epsilon!r}.")
    L, lam = _check_losses(losses, lambdas, 1.0, groups, aggregate)
    p = risk_p_values(L, alpha=alpha, p_value=p_value)
    if method == "fixed_sequence":
        # reject from the conservative end while p <= epsilon; the run of rejections from the end
        reject = np.cumprod((p <= epsilon)[::-1])[::-1].astype(bool)
    else:
        reject = p <= epsilon / len(lam)
    valid = lam[reject]
    if len(valid) == 0:
        warnings.warn(
            f"Learn-then-Test: no lambda on the grid is certified at alpha={alpha}, "
            f"epsilon={epsilon} with n={L.shape[0]} calibration units. Returning lambdas[-1] = "
            f"{lam[-1]!r}: the risk cannot be controlled, refer every hip.",
            UserWarning,
            stacklevel=2,
        )
        return LearnThenTestResult(float(lam[-1]), valid, p)
    return LearnThenTestResult(float(valid[0]), valid, p)


def _check_lambdas(lambdas, name: str = "lambdas") -> np.ndarray:
    lam = np.asarray(lambdas, dtype=float)
    if lam.ndim != 1 or len(lam) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D grid, got shape {lam.shape}.")
    if np.isnan(lam).any() or (np.diff(lam) <= 0).any():
        raise ValueError(f"{name} must be strictly increasing (conservative last), NaN-free.")
    return lam


def _check_losses(losses, lambdas, B, groups, aggregate) -> tuple[np.ndarray, np.ndarray]:
    """Validated (unit losses, lambdas); one row per subject when ``groups`` are given."""
    lam = _check_lambdas(lambdas)
    L = np.asarray(losses, dtype=float)
    if L.ndim != 2 or L.shape[1] != len(lam) or L.shape[0] == 0:
        raise ValueError(
            f"losses must have shape (n, {len(lam)}) with n >= 1 (one column per lambda), "
            f"got {L.shape}."
        )
    if np.isnan(L).any() or (L < 0).any() or (L > B).any():
        raise ValueError(f"losses must lie in [0, B] = [0, {B}] (NaN-free).")
    if groups is not None:
        L, _ = subject_losses(L, groups, aggregate=aggregate)
    return L, lam
