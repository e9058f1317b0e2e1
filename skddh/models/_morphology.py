"""MorphologyClassifier: multi-label hip morphology from radiograph crops, fine-tuned end to end.

The recipe of seed 001 (Khosravi et al., Mayo Clinic): a ConvNeXt-Tiny trained on hip crops of
AP pelvis radiographs predicts several binary findings at once (ischial spine sign, cam
deformity, dysplasia, any abnormality), with the patient's sex as an auxiliary target that
stabilises training. Here: any timm backbone (never pretrained; nothing downloads), one logit
per label and per auxiliary target, a weighted binary cross-entropy, label-preserving
augmentation on the training device, and decision thresholds per label chosen on a held-out,
subject-level validation split.

The pure pieces are small functions on arrays: :func:`youden_threshold`,
:func:`sensitivity_threshold` and :func:`balanced_pos_weight`.
"""

from __future__ import annotations

import time
import warnings
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted
from sklearn_compat.base import _fit_context

from skddh.models import _batches as B
from skddh.models._images import ImageSource
from skddh.models._pickle import CPUStateMixin

# ---- pure functions on arrays ----------------------------------------------------------------


def youden_threshold(y_true, score) -> float:
    """The score threshold maximising Youden's J = sensitivity + specificity - 1.

    A sample is positive when ``score >= threshold``.

    >>> youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.8
    >>> youden_threshold([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.7])
    0.6
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(
        np.asarray(y_true), np.asarray(score, dtype=float), drop_intermediate=False
    )
    j = int(np.argmax(tpr - fpr))
    return float(min(thr[j], 1.0))


def sensitivity_threshold(y_true, score, sensitivity: float) -> float:
    """The largest threshold whose sensitivity (``score >= threshold``) is at least the target.

    >>> sensitivity_threshold([0, 1, 1, 1, 1], [0.9, 0.2, 0.5, 0.6, 0.8], 0.75)
    0.5
    """
    from sklearn.metrics import roc_curve

    _, tpr, thr = roc_curve(
        np.asarray(y_true), np.asarray(score, dtype=float), drop_intermediate=False
    )
    j = int(np.argmax(tpr >= sensitivity - 1e-12))
    return float(min(thr[j], 1.0))


def balanced_pos_weight(y) -> np.ndarray:
    """Per column, negatives over positives: BCE's ``pos_weight`` that balances each label.

    >>> balanced_pos_weight(np.array([[1, 0], [0, 0], [0, 1], [0, 1]]))
    array([3., 1.])
    """
    y = np.asarray(y, dtype=float)
    pos = y.sum(0)
    return (len(y) - pos) / np.maximum(pos, 1.0)


# ---- the estimator ---------------------------------------------------------------------------


def _build_network(backbone, in_chans, n_out):
    """timm backbone (never pretrained) + one linear logit per output, as one module."""
    import timm
    from torch import nn

    encoder = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans)
    return nn.Sequential(encoder, nn.Linear(encoder.num_features, n_out))


def _labels_frame(y) -> pd.DataFrame:
    if isinstance(y, pd.Series):
        return y.to_frame(name="y0" if y.name is None else y.name).reset_index(drop=True)
    if isinstance(y, pd.DataFrame):
        return y.rename(columns=str).reset_index(drop=True)
    arr = np.asarray(y)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"y must be a DataFrame or a 2-D array of 0/1 labels, got {arr.ndim}-D.")
    return pd.DataFrame(arr, columns=[f"y{j}" for j in range(arr.shape[1])])


class MorphologyClassifier(CPUStateMixin, ClassifierMixin, BaseEstimator):
    """Images -> several binary findings (multi-label), a timm backbone trained end to end.

    Parameters
    ----------
    backbone : str, default="convnext_tiny"
        timm model name, created with ``pretrained=False`` (nothing downloads).
    auxiliary : tuple of str or int, default=()
        Columns of ``y`` that are auxiliary binary targets (e.g. ``("sex",)``): trained with
        the labels, not part of :meth:`predict`; see :meth:`predict_auxiliary_proba`.
    label_weights : dict or array-like, default=None
        Loss weight per column of ``y`` (labels and auxiliaries, by name or in ``y``'s
        column order); 1 for every column by default.
    pos_weight : {"balanced"} or None, default=None
        ``"balanced"``: each column's positive term weighted by negatives / positives of the
        training images (BCE's ``pos_weight``); None: unweighted.
    threshold : {"0.5", "youden"} or dict, default="0.5"
        How ``thresholds_`` are set on the validation split: 0.5, Youden's J, or
        ``{"target_sensitivity": s}`` (the largest threshold reaching sensitivity s). Anything
        but ``"0.5"`` needs ``validation_size``.
    validation_size : float or None, default=None
        Share of subjects (``groups`` passed to :meth:`fit`) held out of training to set the
        thresholds, split by :class:`~sklearn.model_selection.GroupShuffleSplit`. None: every
        image trains and the thresholds are 0.5.
    image_size : int or None, default=None
        Side of the square images the network sees (arrays and files are letterboxed to it).
        None: the fit arrays' larger side (224 for files); images of another size are then an
        error at predict time, since the network would see a different scale than it learned.
    epochs : int, default=30
    batch_size : int, default=32
        Halved, with a warning, on a device out-of-memory error.
    lr : float, default=3e-4
        AdamW learning rate, cosine-decayed to 0 over the training steps.
    weight_decay : float, default=0.05
    rotation : float, default=10.0
        Maximum rotation of the label-preserving augmentation, degrees (0 turns it off).
    scale : tuple of float, default=(0.9, 1.1)
        Isotropic zoom range.
    shift : float, default=0.05
        Maximum shift, as a fraction of the image side.
    brightness : float, default=0.1
    contrast : float, default=0.2
    gamma : float, default=0.2
    noise : float, default=0.02
        No flip is drawn: hip crops come in one orientation (left hips mirrored).
    device : str, default="auto"
        ``"auto"``: CUDA when available, else CPU (resolved in :meth:`fit`).
    precision : {"auto", "fp32", "bf16"}, default="auto"
        Training precision (``"auto"``: bf16 autocast on CUDA). Predictions are float32 unless
        ``"bf16"`` is asked for.
    random_state : int, RandomState instance or None, default=None
        Seeds the validation split, initialisation, shuffling and augmentation (local
        generators only).
    verbose : int, default=0

    Attributes
    ----------
    module_ : torch.nn.Module
        ``Sequential(timm backbone, Linear)``, eval mode, gradients off. Outputs are logits:
        the labels, then the auxiliaries.
    classes_ : ndarray of str
        The label names, one per column of :meth:`predict_proba` (as
        :class:`~sklearn.multiclass.OneVsRestClassifier` names its multi-label columns).
    label_names_ : ndarray of str
    auxiliary_names_ : ndarray of str
    thresholds_ : ndarray of shape (n_labels,)
        Decision threshold per label: ``predict = predict_proba >= thresholds_``.
    validation_indices_ : ndarray of int or None
        Rows of the fit's ``X`` held out as the validation split (None without one). The
        network never trains on them; with ``threshold="0.5"`` nothing is tuned on them
        either, so they can calibrate a selective rule (:class:`~skddh.SelectiveClassifier`
        with a :class:`~sklearn.frozen.FrozenEstimator`).
    validation_auroc_ : ndarray of shape (n_labels,) or None
        AUROC per label on the validation split (NaN where it has one class), None without one.
    history_ : DataFrame
        Per epoch: ``loss`` (training, augmented), ``val_loss`` (when validating), ``lr``,
        ``images_per_s``, ``seconds``.
    pos_weight_ : ndarray of shape (n_labels + n_auxiliary,)
    n_channels_in_ : int
    image_size_ : int
    input_shape_ : tuple of int or None
        (H, W) of the fit arrays when ``image_size`` is None, else None.
    precision_ : {"fp32", "bf16"}
    n_steps_ : int
    device_ : str

    Notes
    -----
    :meth:`predict_proba` returns one (n, n_labels) array of positive-class probabilities,
    not scikit-learn's list of (n, 2) arrays (``MultiOutputClassifier``'s layout). The labels
    are not independent models but outputs of one network, and the (n, n_labels) layout is the
    one :class:`~sklearn.multiclass.OneVsRestClassifier` and
    :class:`~sklearn.neural_network.MLPClassifier` return for multi-label targets, the one
    ``roc_auc_score(y, proba)`` (per label with ``average=None``) and the multi-label scorers
    read directly.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from skddh.models import MorphologyClassifier
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 255, (16, 32, 32), dtype=np.uint8)
    >>> y = pd.DataFrame({"cam": [0, 1] * 8, "dysplasia": [0, 0, 1, 1] * 4, "sex": [1, 0] * 8})
    >>> model = MorphologyClassifier(backbone="resnet10t", auxiliary=("sex",), epochs=1,
    ...                              batch_size=8, device="cpu", random_state=0)
    >>> model.fit(images, y).predict_proba(images[:3]).shape
    (3, 2)
    >>> list(model.classes_), model.predict_auxiliary_proba(images[:3]).shape
    (['cam', 'dysplasia'], (3, 1))
    """

    _parameter_constraints: dict = {
        "backbone": [str],
        "auxiliary": [tuple, list],
        "label_weights": [dict, "array-like", None],
        "pos_weight": [StrOptions({"balanced"}), None],
        "threshold": [StrOptions({"0.5", "youden"}), dict],
        "validation_size": [Interval(Real, 0, 1, closed="neither"), None],
        "image_size": [Interval(Integral, 8, None, closed="left"), None],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "rotation": [Interval(Real, 0, 180, closed="both")],
        "scale": [tuple],
        "shift": [Interval(Real, 0, 0.5, closed="both")],
        "brightness": [Interval(Real, 0, 1, closed="both")],
        "contrast": [Interval(Real, 0, 1, closed="both")],
        "gamma": [Interval(Real, 0, None, closed="left")],
        "noise": [Interval(Real, 0, None, closed="left")],
        "device": [str],
        "precision": [StrOptions({"auto", "fp32", "bf16"})],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        backbone="convnext_tiny",
        auxiliary=(),
        label_weights=None,
        pos_weight=None,
        threshold="0.5",
        validation_size=None,
        image_size=None,
        epochs=30,
        batch_size=32,
        lr=3e-4,
        weight_decay=0.05,
        rotation=10.0,
        scale=(0.9, 1.1),
        shift=0.05,
        brightness=0.1,
        contrast=0.2,
        gamma=0.2,
        noise=0.02,
        device="auto",
        precision="auto",
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.auxiliary = auxiliary
        self.label_weights = label_weights
        self.pos_weight = pos_weight
        self.threshold = threshold
        self.validation_size = validation_size
        self.image_size = image_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.rotation = rotation
        self.scale = scale
        self.shift = shift
        self.brightness = brightness
        self.contrast = contrast
        self.gamma = gamma
        self.noise = noise
        self.device = device
        self.precision = precision
        self.random_state = random_state
        self.verbose = verbose

    # ---- validation of y and parameters ----------------------------------------------------
    def _augment_params(self):
        from skddh.models._augment import measure_augment_params

        return measure_augment_params(self)

    def _threshold_rule(self):
        """("0.5" | "youden" | "sensitivity", s), checked against ``validation_size``."""
        if isinstance(self.threshold, dict):
            if set(self.threshold) != {"target_sensitivity"}:
                raise ValueError(
                    "threshold as a dict must be {'target_sensitivity': s}, got "
                    f"keys {sorted(self.threshold)}."
                )
            s = self.threshold["target_sensitivity"]
            if not isinstance(s, Real) or not 0 < s <= 1:
                raise ValueError(f"target_sensitivity must be in (0, 1], got {s!r}.")
            rule = ("sensitivity", float(s))
        else:
            rule = (self.threshold, None)
        if rule[0] != "0.5" and self.validation_size is None:
            raise ValueError(
                f"threshold={self.threshold!r} is chosen on a validation split: set "
                "validation_size (and pass groups to fit for a subject-level split)."
            )
        return rule

    def _encode_labels(self, y, n):
        """0/1 float32 targets (n, n_labels + n_aux): labels first; sets the name attributes."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but y is None.")
        ydf = _labels_frame(y)
        if len(ydf) != n:
            raise ValueError(f"X has {n} samples but y has {len(ydf)}.")
        names = list(ydf.columns)
        aux = []
        for a in self.auxiliary:
            name = names[a] if isinstance(a, Integral) and 0 <= a < len(names) else str(a)
            if name not in names:
                raise ValueError(f"auxiliary names {a!r}, not a column of y; columns are {names}.")
            aux.append(name)
        labels = [c for c in names if c not in aux]
        if not labels:
            raise ValueError("y has no label columns left once the auxiliary ones are taken.")
        cols = labels + aux
        values = np.empty((n, len(cols)), np.float32)
        for j, c in enumerate(cols):
            try:
                v = pd.to_numeric(ydf[c], errors="raise").to_numpy(dtype=float)
            except (TypeError, ValueError):
                raise ValueError(f"column {c!r} of y is not numeric 0/1 labels.") from None
            bad = np.isnan(v)
            if bad.any():
                raise ValueError(
                    f"column {c!r} of y has NaN labels (first in row {np.argmax(bad)})."
                )
            odd = ~np.isin(v, (0.0, 1.0))
            if odd.any():
                row = int(np.argmax(odd))
                raise ValueError(
                    f"column {c!r} of y must hold 0/1 labels; row {row} is {v[row]!r}."
                )
            values[:, j] = v
        self.label_names_ = np.asarray(labels, dtype=object)
        self.auxiliary_names_ = np.asarray(aux, dtype=object)
        self.classes_ = self.label_names_.copy()
        return values, cols, names

    def _loss_weights(self, cols, names):
        if self.label_weights is None:
            return np.ones(len(cols))
        if isinstance(self.label_weights, dict):
            unknown = sorted(set(map(str, self.label_weights)) - set(cols))
            if unknown:
                raise ValueError(f"label_weights names unknown column(s) {unknown}; y has {cols}.")
            w = np.array([float(self.label_weights.get(c, 1.0)) for c in cols])
        else:
            w = np.asarray(self.label_weights, dtype=float).ravel()
            if len(w) != len(cols):
                raise ValueError(f"label_weights has {len(w)} entries for {len(cols)} columns.")
            order = [names.index(c) for c in cols]
            w = w[order]
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() == 0:
            raise ValueError("label_weights must be finite, >= 0 and not all 0.")
        return w

    @staticmethod
    def _check_two_classes(y, cols, where):
        for j, c in enumerate(cols):
            k = np.unique(y[:, j])
            if len(k) < 2:
                raise ValueError(
                    f"column {c!r} of y has only class {int(k[0])} in {where}: a label needs "
                    "positive and negative images to be learned."
                )

    def _split(self, n, groups, seed):
        from sklearn.model_selection import GroupShuffleSplit

        if self.validation_size is None:
            return np.arange(n), None
        if groups is None:
            warnings.warn(
                "validation_size is set but groups is None: the validation split is made "
                "per image, so images of one subject can fall on both sides. Pass groups.",
                UserWarning,
                stacklevel=3,
            )
            groups = np.arange(n)
        groups = np.asarray(groups)
        if len(groups) != n:
            raise ValueError(f"X has {n} samples but groups has {len(groups)}.")
        if len(np.unique(groups)) < 2:
            raise ValueError("a validation split needs at least 2 subjects in groups.")
        gss = GroupShuffleSplit(n_splits=1, test_size=self.validation_size, random_state=seed)
        tr, va = next(gss.split(np.zeros(n), groups=groups))
        return tr, va

    # ---- fitting ---------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, groups=None):
        """Train the network on labelled images; set the thresholds on the validation split.

        Parameters
        ----------
        X : ndarray of shape (n, H, W) or (n, C, H, W), lazy array-like, or sequence of paths
            uint8, uint16 or float images (floats in [0, 1]).
        y : DataFrame, or array-like of shape (n,) or (n, n_columns)
            0/1 labels per column (NaN is an error); arrays are named ``y0, y1, ...``.
            Columns named in ``auxiliary`` are auxiliary targets.
        groups : array-like of shape (n,), default=None
            Subject ids for the validation split (``validation_size``).

        Returns
        -------
        self
        """
        import torch

        from skddh.models import _torch as T
        from skddh.models._finetune import _Schedule

        aug = self._augment_params()
        rule = self._threshold_rule()
        first = ImageSource(X, self.image_size or 224)
        if first.paths is None and self.image_size is None:
            size, input_shape = max(first.shape[-2:]), tuple(first.shape[-2:])
        else:
            size, input_shape = self.image_size or 224, None
        src = ImageSource(X, size) if first.image_size != size else first
        if src.n < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 images, got {src.n}.")
        yv, cols, names = self._encode_labels(y, src.n)
        w = self._loss_weights(cols, names)
        n_lab = len(self.label_names_)
        seed = T.seed_from(self.random_state)
        tr, va = self._split(src.n, groups, seed)
        self.validation_indices_ = va
        self._check_two_classes(yv[tr], cols, "the training images")
        pw = balanced_pos_weight(yv[tr]) if self.pos_weight == "balanced" else np.ones(len(cols))

        device = T.resolve_device(self.device)
        amp = T.resolve_dtype(self.precision, device)
        with T.seeded(seed):
            net = _build_network(self.backbone, src.channels, len(cols))
        net = net.to(device)
        if device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        optim = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        data = B.stage(src, device)
        yt = torch.from_numpy(yv).to(device)
        w_t = torch.as_tensor(w / w.sum(), dtype=torch.float32, device=device)
        pw_t = torch.as_tensor(pw, dtype=torch.float32, device=device)
        gen = T.generator(device, seed + 1)
        cpu_gen = T.generator(torch.device("cpu"), seed + 2)
        tr_t = torch.from_numpy(tr)
        batch = min(self.batch_size, len(tr))
        sched = _Schedule(self.epochs, B.steps_per_epoch(len(tr), batch), 0)
        ctx = _Step(net, optim, data, src, yt, w_t, pw_t, device, size, amp, aug, gen)
        bn = T.BatchNormGuard(net)  # undone on out-of-memory (see its docstring)
        history, step_i = [], 0
        epochs = range(self.epochs)
        if self.verbose:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc=type(self).__name__, unit="epoch")
        with T.seeded(seed + 3):  # dropout / drop-path draw from the global RNG: keep it local
            for epoch in epochs:
                net.train()
                order = B.epoch_order(data, len(tr), cpu_gen, batch, rows=tr_t)
                t0, seen, start = time.perf_counter(), 0, 0
                total = torch.zeros((), device=device)
                while start + 2 <= len(tr):
                    idx = order[start : start + batch]
                    for g in optim.param_groups:
                        g["lr"] = self.lr * sched(step_i)
                    bn.save()
                    try:
                        loss = ctx.train_step(idx, B.next_batch(order, start, batch))
                    except RuntimeError as exc:  # out of memory: halve the batch, go on
                        if not T.is_oom(exc) or batch <= 2:
                            raise
                        bn.restore()  # the failed step's images must not count in batch norm
                        optim.zero_grad(set_to_none=True)
                        T.release_after_oom(exc, device)
                        batch //= 2
                        sched.recount(
                            step_i,
                            B.steps_per_epoch(len(tr) - start, batch),
                            epoch,
                            B.steps_per_epoch(len(tr), batch),
                        )
                        warnings.warn(
                            f"out of memory on {device}: batch_size halved to {batch}.",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                        continue
                    total += loss * len(idx)
                    seen += len(idx)
                    start += len(idx)
                    step_i += 1
                secs = time.perf_counter() - t0
                row = {
                    "epoch": epoch + 1,
                    "loss": float(total / max(seen, 1)),
                    "lr": self.lr * sched(max(step_i - 1, 0)),
                    "images_per_s": seen / secs if secs > 0 else float("nan"),
                    "seconds": secs,
                }
                if va is not None:
                    row["val_loss"] = ctx.loss_of(va, ctx.logits(va, batch))
                history.append(row)

        optim.zero_grad(set_to_none=True)  # no stale gradients kept or pickled
        net.eval().requires_grad_(False)
        self.module_ = net
        self.history_ = pd.DataFrame(history).set_index("epoch")
        self.pos_weight_ = pw
        self.n_channels_in_ = src.channels
        self.image_size_ = int(size)
        self.input_shape_ = input_shape
        self.precision_ = "fp32" if amp is None else "bf16"
        self.n_steps_ = step_i
        self.device_ = str(device)
        self._set_thresholds(rule, None if va is None else (yv[va, :n_lab], ctx, va, batch))
        return self

    def _set_thresholds(self, rule, validation):
        from sklearn.metrics import roc_auc_score

        n_lab = len(self.label_names_)
        self.thresholds_ = np.full(n_lab, 0.5)
        self.validation_auroc_ = None
        if validation is None:
            return
        y_va, ctx, va, batch = validation
        proba = 1 / (1 + np.exp(-ctx.logits(va, batch)[:, :n_lab].astype(np.float64)))
        auroc = np.full(n_lab, np.nan)
        for j, name in enumerate(self.label_names_):
            if len(np.unique(y_va[:, j])) < 2:
                if rule[0] != "0.5":
                    warnings.warn(
                        f"label {name!r} has one class in the validation split: its threshold "
                        "stays 0.5.",
                        UserWarning,
                        stacklevel=3,
                    )
                continue
            auroc[j] = roc_auc_score(y_va[:, j], proba[:, j])
            if rule[0] == "youden":
                self.thresholds_[j] = youden_threshold(y_va[:, j], proba[:, j])
            elif rule[0] == "sensitivity":
                self.thresholds_[j] = sensitivity_threshold(y_va[:, j], proba[:, j], rule[1])
        self.validation_auroc_ = auroc

    # ---- prediction ------------------------------------------------------------------------
    def _source(self, X):
        """Validated predict-time images (the channels and, without image_size, the size)."""
        check_is_fitted(self)
        src = ImageSource(X, self.image_size_)
        if src.channels != self.n_channels_in_:
            raise ValueError(
                f"X has {src.channels} channel(s) but the model was fitted on "
                f"{self.n_channels_in_}."
            )
        shape = self.input_shape_
        if shape is not None and (src.paths is not None or tuple(src.shape[-2:]) != shape):
            got = "files" if src.paths is not None else f"images of {tuple(src.shape[-2:])}"
            raise ValueError(
                f"X has {got}, but the model was fitted on {shape} images with "
                "image_size=None; resize them, or fit with image_size set so that every "
                "input is letterboxed to one size."
            )
        return src

    def _inputs(self, src, sl, device):
        """Normalised float network input for images ``sl`` of ``src`` (used by Grad-CAM too)."""
        from skddh.models._augment import normalize

        return normalize(B.read(src, sl, device, self.image_size_))

    def _logits(self, X):
        import torch

        from skddh.models import _torch as T

        src = self._source(X)
        device = T.resolve_device(self.device)
        amp = T.resolve_dtype("bf16", device) if self.precision == "bf16" else None
        module = self.module_.to(device).eval()
        out = np.empty((src.n, int(module[1].out_features)), np.float64)
        step = max(1, self.batch_size)
        with torch.inference_mode():
            for start in range(0, src.n, step):
                sl = slice(start, min(src.n, start + step))
                with T.autocast(device, amp):
                    out[sl] = T.to_numpy(module(self._inputs(src, sl, device)))
        return out

    def decision_function(self, X):
        """Logits of the labels, (n, n_labels), columns in ``classes_``."""
        return self._logits(X)[:, : len(self.label_names_)]

    def predict_proba(self, X):
        """Probability of each label being present.

        Parameters
        ----------
        X : images as in :meth:`fit`

        Returns
        -------
        ndarray of shape (n, n_labels)
            Column j is P(label ``classes_[j]`` = 1) (see Notes of the class on the layout);
            ``roc_auc_score(y[classes_], proba, average=None)`` gives the AUROC per label.
        """
        return 1 / (1 + np.exp(-self.decision_function(X)))

    def predict(self, X):
        """0/1 per label: ``predict_proba(X) >= thresholds_``, (n, n_labels) int."""
        return (self.predict_proba(X) >= self.thresholds_).astype(np.int64)

    @available_if(lambda self: len(self.auxiliary) > 0)
    def predict_auxiliary_proba(self, X):
        """Probabilities of the auxiliary targets, (n, n_auxiliary), in ``auxiliary_names_``."""
        return 1 / (1 + np.exp(-self._logits(X)[:, len(self.label_names_) :]))

    # ---- pickling and tags -----------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = False
        tags.classifier_tags.multi_class = False
        tags.classifier_tags.multi_label = True
        tags.non_deterministic = self.device != "cpu"
        return tags


class _Step:
    """One optimiser step and validation inference, so that ``fit`` reads as a schedule."""

    def __init__(self, net, optim, data, src, y, w, pw, device, size, amp, aug, gen):
        self.net, self.optim, self.data, self.src, self.y = net, optim, data, src, y
        self.w, self.pw, self.device, self.size, self.amp = w, pw, device, size, amp
        self.aug, self.gen = aug, gen

    def _bce(self, logits, y):
        import torch.nn.functional as F

        per = F.binary_cross_entropy_with_logits(
            logits.float(), y, pos_weight=self.pw, reduction="none"
        )
        return (per.mean(0) * self.w).sum()

    def train_step(self, idx, ahead=None):
        from skddh.models import _torch as T
        from skddh.models._augment import augment_measurement, normalize

        x = B.take(self.data, self.src, idx, self.device, self.size, ahead=ahead)
        v = normalize(augment_measurement(x, self.aug, self.gen))
        if self.device.type == "cuda":
            import torch

            v = v.contiguous(memory_format=torch.channels_last)
        with T.autocast(self.device, self.amp):
            out = self.net(v)
        loss = self._bce(out, self.y[idx.to(self.device)])
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        return loss.detach()  # no host sync per step

    def logits(self, rows, batch) -> np.ndarray:
        import torch

        from skddh.models import _torch as T
        from skddh.models._augment import normalize

        self.net.eval()
        rows = torch.from_numpy(np.asarray(rows))
        out = []
        with torch.inference_mode():
            for s in range(0, len(rows), batch):
                x = normalize(
                    B.take(self.data, self.src, rows[s : s + batch], self.device, self.size)
                )
                with T.autocast(self.device, self.amp):
                    out.append(T.to_numpy(self.net(x)))
        return np.concatenate(out).astype(np.float64)

    def loss_of(self, rows, logits) -> float:
        import torch

        y = self.y[torch.from_numpy(np.asarray(rows)).to(self.device)]
        return float(self._bce(torch.as_tensor(logits, device=self.device), y))
