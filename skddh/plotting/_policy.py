"""Displays in scikit-learn's convention: ``from_estimator``, ``from_predictions``, ``plot``.

:class:`DecisionCurveDisplay` draws a policy's decision utility against the radiation cost per
X-ray, beside the "X-ray everyone" and "ultrasound only" references. :class:`CoverageDisplay`
draws the empirical coverage of the lower bounds against the nominal ``1 - delta`` with the
finite-sample band ``[1 - delta, 1 - delta + 1 / (n + 1)]``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from skddh.metrics import coverage as _coverage
from skddh.metrics import decision_curve

__all__ = ["CoverageDisplay", "DecisionCurveDisplay"]


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    return ax


class DecisionCurveDisplay:
    """Decision curve: utility per hip against the radiation cost ``lambda``.

    Utility is ``-lambda * xray_rate - mu * missed_rate`` (:func:`skddh.metrics.utility`);
    higher is better. Create it with :meth:`from_estimator` or :meth:`from_predictions`.

    Parameters
    ----------
    radiation_cost : ndarray
        The ``lambda`` grid.
    utility : ndarray
        The policy's utility at each ``lambda``.
    xray_everyone, ultrasound_only : ndarray
        Utilities of the two reference strategies.
    miss_penalty : float
        ``mu``.
    name : str, default=None
        Legend label of the policy.

    Attributes
    ----------
    line_ : matplotlib Line2D
    references_ : list of Line2D
        The reference lines (empty when not drawn).
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from skddh.plotting import DecisionCurveDisplay
    >>> disp = DecisionCurveDisplay.from_predictions([1, 1, 0, 0], [0, 1, 1, 0], name="policy")
    >>> disp.ax_.get_xlabel()
    'radiation cost per X-ray (lambda)'
    """

    def __init__(
        self, *, radiation_cost, utility, xray_everyone, ultrasound_only, miss_penalty, name=None
    ):
        self.radiation_cost = radiation_cost
        self.utility = utility
        self.xray_everyone = xray_everyone
        self.ultrasound_only = ultrasound_only
        self.miss_penalty = miss_penalty
        self.name = name

    def plot(self, ax=None, *, name=None, references=True, **kwargs):
        """Draw the curve (and the references) on ``ax``.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            New axes when None; pass the same ``ax`` to compare several policies.
        name : str, default=None
            Overrides the label given at construction.
        references : bool, default=True
            Draw "X-ray everyone" and "ultrasound only".
        **kwargs : dict
            Passed to ``ax.plot`` for the policy's line.

        Returns
        -------
        self
        """
        ax = _axes(ax)
        label = name if name is not None else (self.name or "policy")
        (self.line_,) = ax.plot(self.radiation_cost, self.utility, label=label, **kwargs)
        self.references_ = []
        if references:
            self.references_ = [
                ax.plot(
                    self.radiation_cost, self.xray_everyone, "k--", lw=1, label="X-ray everyone"
                )[0],
                ax.plot(
                    self.radiation_cost, self.ultrasound_only, "k:", lw=1, label="ultrasound only"
                )[0],
            ]
        ax.set_xlabel("radiation cost per X-ray (lambda)")
        ax.set_ylabel(f"utility per hip (miss penalty mu = {self.miss_penalty:g})")
        ax.legend(loc="best")
        self.ax_, self.figure_ = ax, ax.figure
        return self

    @classmethod
    def from_predictions(
        cls,
        passed,
        abnormal,
        *,
        radiation_costs=None,
        miss_penalty=1.0,
        name=None,
        ax=None,
        references=True,
        **kwargs,
    ):
        """Decision curve from 0/1 pass decisions and true findings.

        Parameters
        ----------
        passed, abnormal : array-like of 0/1
        radiation_costs : array-like, default=None
            ``lambda`` grid; default 51 points in ``[0, miss_penalty]``.
        miss_penalty : float, default=1.0
        name, ax, references, **kwargs
            See :meth:`plot`.
        """
        curve = decision_curve(passed, abnormal, radiation_costs, miss_penalty=miss_penalty)
        disp = cls(
            radiation_cost=curve["radiation_cost"].to_numpy(),
            utility=curve["policy"].to_numpy(),
            xray_everyone=curve["xray_everyone"].to_numpy(),
            ultrasound_only=curve["ultrasound_only"].to_numpy(),
            miss_penalty=miss_penalty,
            name=name,
        )
        return disp.plot(ax=ax, references=references, **kwargs)

    @classmethod
    def from_estimator(
        cls,
        estimator,
        X,
        y,
        *,
        radiation_costs=None,
        miss_penalty=None,
        name=None,
        ax=None,
        references=True,
        **kwargs,
    ):
        """Decision curve of a fitted :class:`~skddh.SelectiveImagingPolicy` on ``(X, y)``.

        ``miss_penalty`` defaults to the policy's; ``name`` to its rule and delta.
        """
        mu = estimator.miss_penalty if miss_penalty is None else miss_penalty
        if name is None:
            rule = getattr(estimator, "rule", getattr(estimator, "best_rule_", None))
            delta = getattr(estimator, "delta", getattr(estimator, "best_delta_", None))
            name = f"{rule}, delta={delta}"
        return cls.from_predictions(
            estimator.predict(X),
            estimator.abnormal(y),
            radiation_costs=radiation_costs,
            miss_penalty=mu,
            name=name,
            ax=ax,
            references=references,
            **kwargs,
        )


class CoverageDisplay:
    """Empirical coverage of the lower bounds against nominal ``1 - delta``, per target.

    The shaded band is ``[1 - delta, 1 - delta + 1 / (n + 1)]``: where split-conformal
    coverage lies *in expectation over calibration draws* (exact without ties and with a
    bias correction not fitted on the scored cases). One test set scatters around it by
    binomial error.

    Parameters
    ----------
    nominal : ndarray
        ``1 - delta`` for each delta.
    coverage : DataFrame
        Empirical coverage, one row per delta and one column per target.
    n_calibration : int, default=None
        Calibration size for the band; no band when None.
    name : str, default=None

    Attributes
    ----------
    lines_ : list of Line2D
    band_ : PolyCollection or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from skddh.plotting import CoverageDisplay
    >>> y = np.array([60.0, 62.0, 58.0, 65.0])
    >>> disp = CoverageDisplay.from_predictions(
    ...     y, {0.1: y - 5, 0.5: y + 0.5 * (y < 61)}, n_calibration=28)
    >>> disp.coverage.round(2).to_numpy().ravel().tolist()
    [1.0, 0.5]
    """

    def __init__(self, *, nominal, coverage, n_calibration=None, name=None):
        self.nominal = nominal
        self.coverage = coverage
        self.n_calibration = n_calibration
        self.name = name

    def plot(self, ax=None, *, name=None, **kwargs):
        """Draw one line per target, the identity and the finite-sample band.

        Returns
        -------
        self
        """
        ax = _axes(ax)
        nominal = np.asarray(self.nominal, dtype=float)
        order = np.argsort(nominal)
        prefix = name if name is not None else self.name
        self.band_ = None
        if self.n_calibration is not None:
            self.band_ = ax.fill_between(
                nominal[order],
                nominal[order],
                np.minimum(1.0, nominal[order] + 1.0 / (self.n_calibration + 1)),
                color="0.85",
                label=f"finite-sample band (n = {self.n_calibration})",
            )
        ax.plot([nominal.min(), 1.0], [nominal.min(), 1.0], "k--", lw=1, label="nominal")
        self.lines_ = []
        for col in self.coverage.columns:
            label = f"{prefix}: {col}" if prefix else str(col)
            (line,) = ax.plot(
                nominal[order], self.coverage[col].to_numpy()[order], "o-", label=label, **kwargs
            )
            self.lines_.append(line)
        ax.set_xlabel("nominal coverage 1 - delta")
        ax.set_ylabel("empirical coverage P(y >= LB)")
        ax.legend(loc="best")
        self.ax_, self.figure_ = ax, ax.figure
        return self

    @classmethod
    def from_predictions(
        cls,
        y_true,
        lower_bounds,
        *,
        n_calibration=None,
        name=None,
        ax=None,
        groups=None,
        per_subject="all",
    ):
        """Coverage display from true values and lower bounds at several deltas.

        Parameters
        ----------
        y_true : array-like of shape (n,) or (n, n_targets), or DataFrame
        lower_bounds : dict
            ``delta -> lower bounds`` shaped like ``y_true``.
        n_calibration : int, default=None
        groups, per_subject
            Count coverage per subject (see :func:`skddh.metrics.coverage`).
        name, ax
            See :meth:`plot`.
        """
        if not lower_bounds:
            raise ValueError("lower_bounds must map at least one delta to bounds.")
        deltas = list(lower_bounds)
        rows = []
        for d in deltas:
            if not 0 < d < 1:
                raise ValueError(f"lower_bounds keys must be deltas in (0, 1), got {d!r}.")
            cov = _coverage(y_true, lower_bounds[d], groups=groups, per_subject=per_subject)
            rows.append(cov if isinstance(cov, pd.Series) else pd.Series({"y": cov}))
        table = pd.DataFrame(rows, index=pd.Index(deltas, name="delta"))
        disp = cls(
            nominal=1 - np.asarray(deltas, dtype=float),
            coverage=table,
            n_calibration=n_calibration,
            name=name,
        )
        return disp.plot(ax=ax)

    @classmethod
    def from_estimator(cls, estimator, X, y, *, groups=None, deltas=None, name=None, ax=None):
        """Coverage of a fitted conformal regressor (or policy) on held-out ``(X, y)``.

        Parameters
        ----------
        estimator : OneSidedConformalRegressor, OneSidedCrossConformalRegressor or policy
            Fitted; a policy contributes its regressor.
        X, y : held-out data (``y`` holds the regressor's targets; other columns are ignored)
        groups : array-like of shape (n_samples,), default=None
            Subject ids of the held-out images. Coverage is then counted per subject, as the
            regressor's ``calibration_unit`` promises it (every image of the subject for
            ``"subject-max"`` and CV+, a random image for ``"subject-subsample"``), and the
            band's ``n`` counts calibration subjects. Without groups, per image.
        deltas : array-like, default=None
            Default ``0.05, 0.10, ..., 0.50``.
        """
        model = getattr(estimator, "estimator_", None)
        model = model if hasattr(model, "predict_lower") else estimator
        deltas = np.round(np.arange(0.05, 0.501, 0.05), 2) if deltas is None else deltas
        names = [str(t) for t in model.target_names_]
        if isinstance(y, pd.DataFrame):
            y_true = y.rename(columns=str)[names]
        else:
            y_true = pd.DataFrame(np.asarray(y, dtype=float).reshape(len(y), -1), columns=names)
        bounds = {}
        for d in deltas:
            lb = np.asarray(model.predict_lower(X, delta=float(d)), dtype=float)
            bounds[float(d)] = lb.reshape(len(lb), -1)
        per_subject = (
            "mean" if getattr(model, "calibration_unit", "") == "subject-subsample" else "all"
        )
        # The exact band belongs to split conformal; CV+ promises only 1 - 2 delta (no band).
        n_band = None if hasattr(model, "estimators_") else model.n_calibration_
        return cls.from_predictions(
            y_true,
            bounds,
            n_calibration=n_band,
            name=name,
            ax=ax,
            groups=groups,
            per_subject=per_subject,
        )
