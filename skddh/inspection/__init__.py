"""Explanations of fitted estimators (scikit-learn keeps these in ``inspection``): Grad-CAM."""

from skddh.inspection._gradcam import grad_cam

__all__ = ["grad_cam"]
