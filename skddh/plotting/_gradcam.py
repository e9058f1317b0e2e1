"""The Grad-CAM overlay: a label's map drawn over each image (seed 001's Figure 2)."""

from __future__ import annotations

import numpy as np

__all__ = ["GradCAMDisplay"]


def _gray(images) -> np.ndarray:
    """Images (n, H, W) or (n, C, H, W), any supported dtype -> float (n, H, W) in [0, 1]."""
    arr = np.asarray(images)
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(arr.dtype, 1.0)
    arr = arr.astype(np.float32) / scale
    return arr.mean(axis=1) if arr.ndim == 4 else arr


class GradCAMDisplay:
    """Grad-CAM maps of one label overlaid on their images, one panel per image.

    Create it with :meth:`from_estimator`; the constructor takes maps already computed by
    :func:`skddh.inspection.grad_cam`.

    Parameters
    ----------
    images : ndarray of shape (n, H, W) or (n, C, H, W)
        The images (channels are averaged for display).
    maps : ndarray of shape (n, H, W)
        Grad-CAM maps in [0, 1] at the images' size.
    label : str, default=None
        The label the maps explain (panel titles).
    probabilities : ndarray of shape (n,), default=None
        The model's probability of the label per image (added to the titles).

    Attributes
    ----------
    axes_ : ndarray of matplotlib Axes
        One per image.
    ax_ : matplotlib Axes
        The first panel.
    figure_ : matplotlib Figure
    image_artists_ : list of AxesImage
    overlay_artists_ : list of AxesImage

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np, pandas as pd
    >>> from skddh.models import MorphologyClassifier
    >>> from skddh.plotting import GradCAMDisplay
    >>> images = np.random.default_rng(0).integers(0, 255, (8, 64, 64), dtype=np.uint8)
    >>> model = MorphologyClassifier(backbone="resnet10t", epochs=1, batch_size=8,
    ...                              device="cpu", random_state=0)
    >>> model = model.fit(images, pd.DataFrame({"cam": [0, 1] * 4}))
    >>> disp = GradCAMDisplay.from_estimator(model, images[:2], label="cam")
    >>> disp.axes_.shape, disp.maps.shape
    ((2,), (2, 64, 64))
    """

    def __init__(self, *, images, maps, label=None, probabilities=None):
        self.images = images
        self.maps = maps
        self.label = label
        self.probabilities = probabilities

    @classmethod
    def from_estimator(
        cls,
        estimator,
        X,
        *,
        label,
        target_layer=None,
        ax=None,
        alpha: float = 0.45,
        cmap: str = "jet",
    ) -> GradCAMDisplay:
        """Compute the maps of ``label`` for images ``X`` and plot them.

        Parameters
        ----------
        estimator : fitted MorphologyClassifier
        X : ndarray of shape (n, H, W) or (n, C, H, W)
            Images (a few: one panel each).
        label : str or int
            As in :func:`skddh.inspection.grad_cam`.
        target_layer : torch.nn.Module, str or None, default=None
            As in :func:`skddh.inspection.grad_cam`.
        ax : matplotlib Axes or array of Axes, default=None
            One Axes per image; a new row of panels when None.
        alpha : float, default=0.45
            Opacity of the map.
        cmap : str, default="jet"

        Returns
        -------
        GradCAMDisplay
        """
        from skddh.inspection import grad_cam
        from skddh.inspection._gradcam import _output_index

        maps = grad_cam(estimator, X, label=label, target_layer=target_layer)
        j = _output_index(estimator, label)
        n_lab = len(estimator.label_names_)
        if j < n_lab:
            proba = estimator.predict_proba(X)[:, j]
        else:
            proba = estimator.predict_auxiliary_proba(X)[:, j - n_lab]
        name = (
            label
            if isinstance(label, str)
            else str((list(estimator.label_names_) + list(estimator.auxiliary_names_))[j])
        )
        disp = cls(images=np.asarray(X), maps=maps, label=name, probabilities=proba)
        return disp.plot(ax=ax, alpha=alpha, cmap=cmap)

    def plot(self, ax=None, *, alpha: float = 0.45, cmap: str = "jet") -> GradCAMDisplay:
        """Draw each image in gray with its map on top.

        Parameters
        ----------
        ax : matplotlib Axes or array of Axes, default=None
            One Axes per image; a new row of panels when None.
        alpha : float, default=0.45
        cmap : str, default="jet"

        Returns
        -------
        self
        """
        images, maps = _gray(self.images), np.asarray(self.maps)
        if images.shape != maps.shape:
            raise ValueError(f"images {images.shape} and maps {maps.shape} differ in shape.")
        n = len(maps)
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(1, n, figsize=(2.5 * n, 2.7), squeeze=False)
        axes = np.asarray(ax, dtype=object).ravel()
        if len(axes) != n:
            raise ValueError(f"{n} image(s) need {n} Axes, got {len(axes)}.")
        self.image_artists_, self.overlay_artists_ = [], []
        for i, a in enumerate(axes):
            self.image_artists_.append(a.imshow(images[i], cmap="gray", vmin=0, vmax=1))
            self.overlay_artists_.append(a.imshow(maps[i], cmap=cmap, alpha=alpha, vmin=0, vmax=1))
            title = "" if self.label is None else str(self.label)
            if self.probabilities is not None:
                title = f"{title} p={float(self.probabilities[i]):.2f}".strip()
            a.set_title(title, fontsize=9)
            a.set_axis_off()
        self.axes_ = axes
        self.ax_ = axes[0]
        self.figure_ = axes[0].figure
        return self
