"""Grad-CAM maps for the torch image classifiers, one label at a time.

Grad-CAM (Selvaraju et al., ICCV 2017) weights a convolutional layer's activations by the
spatially averaged gradient of one output logit and keeps the positive part: where in the
image the evidence for that output lies. Seed 001 shows such maps for its morphology model.

We build on captum (``captum.attr.LayerGradCam``; BSD-3, maintained with PyTorch) rather
than pytorch-grad-cam (``grad-cam``, MIT): captum needs nothing beyond torch, numpy and
matplotlib, which we already depend on, while ``grad-cam`` pulls in opencv and ttach; captum's
attribution takes an explicit target per call and removes its hooks in a ``finally`` block.

The traps handled here, each tested:

- the target layer: the last stage's output of the backbone (timm's ``feature_info[-1]``:
  ``stages.3`` for ConvNeXt, ``layer4`` for ResNet), never the pooled, LayerNorm'd head,
  whose maps carry no location;
- multi-label outputs: the target is the asked label's logit, never the arg-max output (the
  default of CAM libraries written for single-label classification);
- networks returning tuples: the first element is taken as the logits;
- module state: the network is run in eval mode; its train/eval flags, ``requires_grad``
  flags and hooks are restored afterwards, whatever the library does (gradients reach the
  layer through the input, so no parameter's flag needs to change).
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
from sklearn.utils.validation import check_is_fitted


def _output_index(estimator, label) -> int:
    """Position of ``label`` (a label or auxiliary name, or an output index) in the logits."""
    labels = [str(v) for v in getattr(estimator, "label_names_", [])]
    aux = [str(v) for v in getattr(estimator, "auxiliary_names_", [])]
    n_out = len(labels) + len(aux)
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if not 0 <= label < n_out:
            raise ValueError(f"label index {label} is out of range for {n_out} outputs.")
        return int(label)
    if str(label) in labels:
        return labels.index(str(label))
    if str(label) in aux:
        return len(labels) + aux.index(str(label))
    raise ValueError(f"label {label!r} is not an output; labels {labels}, auxiliary {aux}.")


def default_target_layer(module):
    """The last feature stage of a timm backbone inside ``module`` (``Sequential(backbone, head)``).

    timm's ``feature_info`` names it (``stages.3`` for ConvNeXt, ``layer4`` for ResNet): the
    last spatial map before global pooling and the head's norm.
    """
    backbone = module[0] if hasattr(module, "__getitem__") else module
    info = getattr(backbone, "feature_info", None)
    if info is None:
        raise ValueError(
            f"cannot pick a Grad-CAM layer in a {type(backbone).__name__}: pass target_layer "
            "(a module, or its name in estimator.module_)."
        )
    last = info[-1] if isinstance(info, list) else info.info[-1]
    return backbone.get_submodule(last["module"])


@contextlib.contextmanager
def _state_kept(module):
    """Restore train/eval flags, ``requires_grad`` and hooks of every submodule afterwards."""
    modes = {m: m.training for m in module.modules()}
    grads = {p: p.requires_grad for p in module.parameters()}
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    hooks = {(m, k): set(getattr(m, k, {})) for m in module.modules() for k in kinds}
    try:
        yield
    finally:
        for (m, k), before in hooks.items():
            d = getattr(m, k, None)
            for h in [h for h in (d or {}) if h not in before]:
                del d[h]
        for p, g in grads.items():
            p.requires_grad_(g)
        for m, t in modes.items():
            m.training = t


def _undo_letterbox(maps, shape):
    """Maps (n, S, S) on the network's square input -> (n, H, W) on the original images."""
    import torch.nn.functional as F

    h, w = shape
    side = max(h, w)
    if maps.shape[-1] != side:
        maps = F.interpolate(maps[:, None], size=(side, side), mode="bilinear")[:, 0]
    top, left = (side - h) // 2, (side - w) // 2
    return maps[:, top : top + h, left : left + w]


def grad_cam(estimator, X, *, label, target_layer=None, batch_size=None):
    """Grad-CAM map of one label for each image, at the input size, scaled to [0, 1].

    Parameters
    ----------
    estimator : fitted MorphologyClassifier
        Any estimator with ``module_`` (``Sequential(backbone, head)`` giving logits), and
        the image plumbing of :class:`~skddh.models.MorphologyClassifier`.
    X : images as the estimator's ``predict`` takes them
    label : str or int
        A label name (``estimator.classes_``), an auxiliary name, or an output index.
    target_layer : torch.nn.Module, str or None, default=None
        The layer whose activations are weighted, or its name in ``estimator.module_``
        (e.g. ``"0.layer3"``). None: the backbone's last stage (:func:`default_target_layer`).
    batch_size : int or None, default=None
        Images per backward pass; the estimator's ``batch_size`` by default.

    Returns
    -------
    ndarray of shape (n, H, W), float32 in [0, 1]
        Per image, the positive part of the map, min-max scaled (all 0 where the map is
        flat). (H, W) is the input's size (``image_size_`` for files).

    Warns
    -----
    UserWarning
        When the target layer's map is 1x1 at this image size: it carries no location.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from skddh.inspection import grad_cam
    >>> from skddh.models import MorphologyClassifier
    >>> images = np.random.default_rng(0).integers(0, 255, (8, 64, 64), dtype=np.uint8)
    >>> y = pd.DataFrame({"cam": [0, 1] * 4})
    >>> model = MorphologyClassifier(backbone="resnet10t", epochs=1, batch_size=8,
    ...                              device="cpu", random_state=0).fit(images, y)
    >>> maps = grad_cam(model, images[:2], label="cam")
    >>> maps.shape, bool(maps.min() >= 0 and maps.max() <= 1)
    ((2, 64, 64), True)
    """
    import torch
    from captum.attr import LayerAttribution, LayerGradCam

    from skddh.models import _torch as T

    check_is_fitted(estimator, "module_")
    j = _output_index(estimator, label)
    src = estimator._source(X)
    module = estimator.module_
    if target_layer is None:
        layer = default_target_layer(module)
    elif isinstance(target_layer, str):
        layer = module.get_submodule(target_layer)
    else:
        layer = target_layer
    device = T.resolve_device(estimator.device)
    size = estimator.image_size_
    shape = tuple(src.shape[-2:]) if src.paths is None else (size, size)
    step = batch_size or estimator.batch_size

    def forward(x):
        out = module(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    maps = []
    with _state_kept(module):
        module.to(device).eval()
        cam = LayerGradCam(forward, layer)
        for start in range(0, src.n, step):
            sl = slice(start, min(src.n, start + step))
            x = estimator._inputs(src, sl, device).float().requires_grad_(True)
            with torch.enable_grad():
                attr = cam.attribute(x, target=j, relu_attributions=True)
            if attr.shape[-2:].numel() == 1 and start == 0:
                warnings.warn(
                    f"the Grad-CAM layer's map is 1x1 at image_size={size}: it carries no "
                    "location. Use larger images or an earlier layer (target_layer).",
                    UserWarning,
                    stacklevel=2,
                )
            up = LayerAttribution.interpolate(attr.detach(), (size, size), "bilinear")[:, 0]
            maps.append(_undo_letterbox(up, shape).float().cpu().numpy())
    out = np.concatenate(maps)
    lo = out.min(axis=(1, 2), keepdims=True)
    span = out.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (out - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)
