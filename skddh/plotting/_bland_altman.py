"""The Bland-Altman plot: differences against means, with bias and limits of agreement.

:class:`BlandAltmanDisplay` draws each pair at ``x = (y_true + y_pred) / 2`` and
``y = y_pred - y_true`` (the sign convention of :func:`skddh.metrics.bland_altman`), the bias
as a solid line, the limits of agreement as dashed lines and, optionally, their confidence
intervals as shaded bands.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from skddh.metrics import BlandAltmanResult, bland_altman

__all__ = ["BlandAltmanDisplay"]


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    return ax


def _with_units(label: str, units: str | None) -> str:
    return f"{label} ({units})" if units else label


class BlandAltmanDisplay:
    """Bland-Altman plot of a prediction against its reference.

    Create it with :meth:`from_predictions` or :meth:`from_estimator`; the constructor takes
    the numbers already computed.

    Parameters
    ----------
    means : ndarray of shape (n,)
        ``(y_true + y_pred) / 2``.
    differences : ndarray of shape (n,)
        ``y_pred - y_true``.
    result : BlandAltmanResult
        The statistics from :func:`skddh.metrics.bland_altman`.
    name : str, default=None
        What the prediction is called on the axes and in the legend (default "prediction").
    reference_name : str, default="reference"
        What the reference is called on the axes (e.g. "DEXA").
    units : str, default=None
        Units appended to both axis labels, e.g. ``"g/cm$^2$"``.

    Attributes
    ----------
    scatter_ : matplotlib PathCollection
        The points.
    bias_line_ : matplotlib Line2D
    loa_lines_ : list of Line2D
        Lower and upper limits of agreement.
    ci_bands_ : list of Polygon
        Confidence bands of the bias, lower and upper limit (empty when not drawn).
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    References
    ----------
    .. [1] Bland JM, Altman DG. Measuring agreement in method comparison studies. Statistical
       Methods in Medical Research 1999; 8: 135-160.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from skddh.plotting import BlandAltmanDisplay
    >>> dexa = [0.91, 1.02, 0.85, 1.10, 0.97, 0.88]
    >>> predicted = [0.95, 1.00, 0.90, 1.12, 1.01, 0.87]
    >>> disp = BlandAltmanDisplay.from_predictions(
    ...     dexa, predicted, name="predicted BMD", reference_name="DEXA", units="g/cm$^2$")
    >>> disp.ax_.get_ylabel()
    'predicted BMD - DEXA (g/cm$^2$)'
    >>> round(disp.result.bias, 3)
    0.02
    """

    def __init__(
        self,
        *,
        means: np.ndarray,
        differences: np.ndarray,
        result: BlandAltmanResult,
        name: str | None = None,
        reference_name: str = "reference",
        units: str | None = None,
    ):
        self.means = means
        self.differences = differences
        self.result = result
        self.name = name
        self.reference_name = reference_name
        self.units = units

    def plot(
        self,
        ax=None,
        *,
        name: str | None = None,
        show_ci: bool = True,
        **kwargs,
    ) -> BlandAltmanDisplay:
        """Draw the points, the bias, the limits of agreement and (optionally) their CIs.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            New axes when None.
        name : str, default=None
            Overrides the name given at construction.
        show_ci : bool, default=True
            Shade the confidence intervals of the bias and of both limits.
        **kwargs : dict
            Passed to ``ax.scatter`` for the points.

        Returns
        -------
        self
        """
        ax = _axes(ax)
        res = self.result
        label = name if name is not None else (self.name or "prediction")
        ref = self.reference_name
        kwargs.setdefault("alpha", 0.7)
        kwargs.setdefault("label", f"{label} (n = {res.n})")
        self.scatter_ = ax.scatter(self.means, self.differences, **kwargs)
        pct = f"{100 * res.agreement_level:g} %"
        self.bias_line_ = ax.axhline(res.bias, color="C3", lw=1.5, label=f"bias {res.bias:.3g}")
        self.loa_lines_ = [
            ax.axhline(
                value, color="C3", lw=1, ls="--", label=f"{pct} limits of agreement" if i else None
            )
            for i, value in enumerate((res.loa_low, res.loa_high))
        ]
        self.ci_bands_ = []
        if show_ci:
            ci_label = f"{100 * res.confidence_level:g} % CI"
            for i, (low, high) in enumerate((res.bias_ci, res.loa_low_ci, res.loa_high_ci)):
                self.ci_bands_.append(
                    ax.axhspan(
                        low, high, color="C3", alpha=0.12, lw=0, label=ci_label if i == 0 else None
                    )
                )
        ax.set_xlabel(_with_units(f"mean of {label} and {ref}", self.units))
        ax.set_ylabel(_with_units(f"{label} - {ref}", self.units))
        ax.legend(loc="best")
        self.ax_, self.figure_ = ax, ax.figure
        return self

    @classmethod
    def from_predictions(
        cls,
        y_true: ArrayLike,
        y_pred: ArrayLike,
        *,
        ax=None,
        name: str | None = None,
        reference_name: str = "reference",
        units: str | None = None,
        agreement_level: float = 0.95,
        confidence_level: float = 0.95,
        ci_method: str = "approximate",
        show_ci: bool = True,
        **kwargs,
    ) -> BlandAltmanDisplay:
        """Bland-Altman plot from reference values and predictions.

        Parameters
        ----------
        y_true : array-like of shape (n,)
            Reference (e.g. DEXA BMD).
        y_pred : array-like of shape (n,)
            Predictions.
        ax : matplotlib Axes, default=None
        name, reference_name, units
            See the class.
        agreement_level, confidence_level, ci_method
            Passed to :func:`skddh.metrics.bland_altman`, which also validates the input.
        show_ci, **kwargs
            See :meth:`plot`.

        Returns
        -------
        BlandAltmanDisplay
        """
        result = bland_altman(
            y_true,
            y_pred,
            agreement_level=agreement_level,
            confidence_level=confidence_level,
            ci_method=ci_method,
        )
        t = np.asarray(y_true, dtype=float).reshape(-1)
        p = np.asarray(y_pred, dtype=float).reshape(-1)
        disp = cls(
            means=(t + p) / 2.0,
            differences=p - t,
            result=result,
            name=name,
            reference_name=reference_name,
            units=units,
        )
        return disp.plot(ax=ax, show_ci=show_ci, **kwargs)

    @classmethod
    def from_estimator(
        cls,
        estimator,
        X,
        y: ArrayLike,
        *,
        ax=None,
        name: str | None = None,
        reference_name: str = "reference",
        units: str | None = None,
        agreement_level: float = 0.95,
        confidence_level: float = 0.95,
        ci_method: str = "approximate",
        show_ci: bool = True,
        **kwargs,
    ) -> BlandAltmanDisplay:
        """Bland-Altman plot of a fitted single-target regressor on held-out ``(X, y)``.

        Parameters
        ----------
        estimator : fitted regressor
            Its ``predict(X)`` must give one value per sample (shape ``(n,)`` or ``(n, 1)``).
        X : array-like
            Held-out inputs.
        y : array-like of shape (n,) or (n, 1)
            Reference values for ``X``.
        name : str, default=None
            Defaults to the estimator's class name.
        ax, reference_name, units, agreement_level, confidence_level, ci_method, show_ci,
        **kwargs
            See :meth:`from_predictions`.

        Returns
        -------
        BlandAltmanDisplay
        """
        y_pred = np.asarray(estimator.predict(X), dtype=float)
        if y_pred.ndim == 2 and y_pred.shape[1] == 1:
            y_pred = y_pred[:, 0]
        if y_pred.ndim != 1:
            raise ValueError(
                f"estimator.predict(X) has shape {y_pred.shape}; a Bland-Altman plot takes one "
                "target: use from_predictions with one column of y and of the predictions."
            )
        return cls.from_predictions(
            y,
            y_pred,
            ax=ax,
            name=type(estimator).__name__ if name is None else name,
            reference_name=reference_name,
            units=units,
            agreement_level=agreement_level,
            confidence_level=confidence_level,
            ci_method=ci_method,
            show_ci=show_ci,
            **kwargs,
        )
