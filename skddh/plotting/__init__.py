"""Displays in scikit-learn's convention: ``from_estimator``, ``from_predictions``, ``plot``."""

from skddh.plotting._bland_altman import BlandAltmanDisplay
from skddh.plotting._gradcam import GradCAMDisplay
from skddh.plotting._policy import CoverageDisplay, DecisionCurveDisplay

__all__ = [
    "BlandAltmanDisplay",
    "CoverageDisplay",
    "DecisionCurveDisplay",
    "GradCAMDisplay",
]
