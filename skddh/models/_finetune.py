"""FineTuningRegressor: encoder and head trained end to end on labelled images.

A frozen SimSiam encoder with an MLP head (the DDH paper's recipe) learns little from a few
hundred SGD steps of pretraining; training the whole network on the labelled images, with
augmentation that keeps the labels (rotation, isotropic zoom, shift, intensity), is what
beats the median at the paper's label budget. The encoder starts from a fitted
:class:`~skddh.SimSiamFeaturizer` when one is given (the unlabelled registry's contribution)
and from a fresh timm backbone otherwise; it gets its own, smaller learning rate.

There is no hidden validation split: every labelled image trains. The weights predicted with
are an exponential moving average over the training steps (``ema_decay``), which evens out
the epoch-to-epoch swings of a small labelled set without choosing an epoch on held-out data.
"""

from __future__ import annotations

import datetime
import os
import time
import warnings
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted
from sklearn_compat.base import _fit_context

from skddh.models import _batches as B
from skddh.models import _checkpoint as C
from skddh.models._images import ImageSource
from skddh.models._pickle import CPUStateMixin
from skddh.models._targets import TargetsMixin


def _build_network(backbone, in_chans, hidden, dropout, n_out):
    """Encoder (timm, never pretrained) + head, freshly initialised, as one module."""
    import timm
    from torch import nn

    from skddh.models._head import _build_module

    encoder = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans)
    head = _build_module(encoder.num_features, hidden, dropout, n_out)
    return nn.Sequential(encoder, head)


def _initial_encoder(encoder):
    """The fitted :class:`SimSiamFeaturizer` behind ``encoder`` (bare or frozen), or None."""
    from sklearn.exceptions import NotFittedError
    from sklearn.frozen import FrozenEstimator

    from skddh.models._simsiam import SimSiamFeaturizer

    if encoder is None:
        return None
    inner = encoder.estimator if isinstance(encoder, FrozenEstimator) else encoder
    if not isinstance(inner, SimSiamFeaturizer):
        raise TypeError(
            f"encoder must be None or a fitted SimSiamFeaturizer (optionally in a "
            f"FrozenEstimator), got {type(inner).__name__}."
        )
    try:
        check_is_fitted(inner)
    except NotFittedError:
        raise ValueError(
            "encoder is an unfitted SimSiamFeaturizer. Fit it on the unlabelled images first; "
            "inside GridSearchCV or cross_validate, pass FrozenEstimator(fitted_encoder): "
            "clone() would otherwise hand each fold an unfitted copy."
        ) from None
    return inner


class FineTuningRegressor(CPUStateMixin, TargetsMixin, RegressorMixin, BaseEstimator):
    """Images -> named measurements, encoder and head trained end to end with augmentation.

    Parameters
    ----------
    encoder : SimSiamFeaturizer, FrozenEstimator of one, or None, default=None
        A fitted featurizer whose encoder initialises the network (its backbone is used and
        its weights are copied; it is never modified). None: a fresh ``backbone``. Inside
        ``GridSearchCV`` wrap it in :class:`sklearn.frozen.FrozenEstimator`, which ``clone``
        keeps fitted.
    backbone : str, default="resnet18"
        timm model name when ``encoder`` is None (``pretrained=False``: nothing downloads).
    image_size : int or None, default=None
        Side of the square images the network sees (arrays and files are letterboxed to
        it). None: the encoder's ``image_size``, or 224 without one.
    hidden : int, default=128
        Width of the head's hidden layer.
    loss_weights : dict or array-like, default=None
        Weight per target (by name or position); equal weights by default.
    classification_targets : tuple of str or int, default=()
        Targets that are class labels, e.g. ``("ihdi",)`` (cross-entropy).
    epochs : int, default=60
        Passes over the labelled images.
    batch_size : int, default=32
        Halved, with a warning, on a device out-of-memory error. Under
        ``torch.distributed``, the global batch (split across the processes, never halved:
        see Notes).
    lr : float, default=1e-3
        AdamW learning rate of the head; cosine schedule after a linear warm-up.
    encoder_lr : float, default=3e-4
        AdamW learning rate of the encoder (0 freezes it and keeps it in eval mode).
    weight_decay : float, default=1e-4
    warmup_epochs : int, default=2
        Linear warm-up of both learning rates (a pretrained encoder is not shocked by a
        random head's first gradients).
    dropout : float, default=0.1
    ema_decay : float or None, default=None
        Decay of the exponential moving average of the weights (and batch-norm statistics)
        used to predict, warmed up as ``min(ema_decay, (1 + t) / (10 + t))`` at step t; None
        predicts with the last step's weights.
    consistency_weight : float, default=0.0
        Weight of a mean-teacher consistency loss (Tarvainen and Valpola, NeurIPS 2017) on
        unlabelled images: rows of ``y`` whose every target is missing (NaN, None). At each
        step ``unlabelled_batch_size`` of them are drawn; the weight average (the teacher,
        which needs ``ema_decay``) predicts each unaugmented image, and the network being
        trained is pulled, by the weighted L1 of its regression outputs in standard units,
        towards that prediction on an augmented view of it: the labels are invariant to the
        augmentation, so the unlabelled registry teaches the invariance. The weight ramps up
        as ``exp(-5 (1 - t)^2)`` over the first quarter of the steps. 0: a missing target is
        an error.
    unlabelled_batch_size : int or None, default=None
        Unlabelled images per step when ``consistency_weight > 0``; None: ``batch_size``.
        Halved with the batch on an out-of-memory error.
    rotation : float, default=15.0
        Maximum rotation of the label-preserving augmentation, degrees (0 turns it off).
    scale : tuple of float, default=(0.85, 1.15)
        Isotropic zoom range.
    shift : float, default=0.08
        Maximum shift, as a fraction of the image side.
    brightness : float, default=0.1
    contrast : float, default=0.2
        Maximum gain change about the image mean.
    gamma : float, default=0.2
    noise : float, default=0.03
        Maximum standard deviation of additive Gaussian noise.
    test_time_views : int, default=1
        Views of each image whose network outputs are averaged at prediction: the image
        itself and ``test_time_views - 1`` rotations, zooms and shifts within the training
        ranges above (no intensity change), the same transforms for every image, so a
        prediction is a fixed function of its image (what conformal calibration needs).
        1: the image only. Prediction costs this many forward passes.
    standardize_targets : bool, default=True
    triplet_weight : float, default=0.0
        Weight of the adaptive triplet loss on the head's hidden layer (0 turns it off), as
        in :class:`MeasurementRegressor`; it follows Zheng et al. (MICCAI 2021), which a
        patent application covers (US 2022/0309651 A1).
    triplet_margin : float, default=0.5
        Margin per unit of standardised target difference.
    device : str, default="auto"
    precision : {"auto", "fp32", "bf16"}, default="auto"
        Training precision (``"auto"``: bf16 on CUDA), fixed at fit time (``precision_``).
        Predictions are float32 unless ``"bf16"`` is asked for explicitly.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, shuffling, augmentation and dropout (local generators only).
    checkpoint : str, path-like or None, default=None
        A file to checkpoint the fit to (its directory must exist), so that a fit killed
        at any moment resumes where it died: fitting again with the same parameters, data
        and ``encoder`` continues from the file and, on the CPU, ends bitwise equal to a fit
        that was never interrupted. Saved (atomically: a temporary file renamed over it)
        after every ``checkpoint_every``-th step and at the end of every epoch: network,
        optimiser, weight average, every random generator (dropout's included), the
        epoch's permutation and position, the history. A file from another fit (other
        parameters, images, targets or encoder weights) is refused with a ``ValueError``;
        the file is deleted when the fit ends. One path serves one fit: leave it None
        in searches and cross-validation (their clones would share it). None: no
        checkpoint.
    checkpoint_every : int or datetime.timedelta, default=100
        Optimisation steps between checkpoints, or the time between them (a
        :class:`datetime.timedelta`: a checkpoint after the first step that ends at
        least that long after the last one).
    verbose : int, default=0

    Attributes
    ----------
    module_ : torch.nn.Module
        ``Sequential(encoder, head)`` with the averaged weights, eval mode.
    history_ : DataFrame
        Per epoch: ``loss`` (training, augmented; with the consistency term), ``lr``,
        ``images_per_s``, ``seconds``.
    target_names_ : ndarray of str
    classes_ : dict
        Class labels per classification target.
    n_channels_in_ : int
    image_size_ : int
    backbone_ : str
    initialised_from_ : {"simsiam", "scratch"}
    precision_ : {"fp32", "bf16"}
    n_steps_ : int
    device_ : str

    See Also
    --------
    MeasurementRegressor : a head on frozen features (the paper's recipe).

    Notes
    -----
    **Several GPUs or machines.** As :class:`SimSiamFeaturizer`: under ``torchrun`` (or in a
    ``torch.distributed`` group the caller initialised), ``fit`` trains on every process
    under ``DistributedDataParallel`` with synchronised batch norm; ``batch_size`` is the
    global batch, split across the processes without padding (an uneven share's loss is
    weighted by its size), and every process must be given the same ``X``, ``y`` and
    ``random_state``. Augmentation and dropout draw per process, from streams that are
    functions of ``random_state``, the rank and the step; the triplet loss
    (``triplet_weight``) pairs images within each process's share only. The weight average
    is computed on every rank from identical weights. No out-of-memory halving under DDP;
    only rank 0 shows progress and writes ``checkpoint``, every rank resumes from it.
    ``module_`` is a plain module and ``predict`` runs on every row, unsharded.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from skddh import FineTuningRegressor
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 255, (24, 32, 32), dtype=np.uint8)
    >>> y = pd.DataFrame({"alpha": images.mean((1, 2)) / 4, "coverage": rng.normal(55, 5, 24)})
    >>> model = FineTuningRegressor(backbone="resnet18", image_size=32, epochs=1,
    ...                             batch_size=8, device="cpu", random_state=0).fit(images, y)
    >>> model.predict(images[:2]).shape
    (2, 2)
    """

    _parameter_constraints: dict = {
        "encoder": [None, HasMethods(["transform"])],
        "backbone": [str],
        "image_size": [Interval(Integral, 8, None, closed="left"), None],
        "hidden": [Interval(Integral, 1, None, closed="left")],
        "loss_weights": [dict, "array-like", None],
        "classification_targets": [tuple, list],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "encoder_lr": [Interval(Real, 0, None, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "warmup_epochs": [Interval(Integral, 0, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "ema_decay": [Interval(Real, 0, 1, closed="left"), None],
        "consistency_weight": [Interval(Real, 0, None, closed="left")],
        "unlabelled_batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "rotation": [Interval(Real, 0, 180, closed="both")],
        "scale": [tuple],
        "shift": [Interval(Real, 0, 0.5, closed="both")],
        "brightness": [Interval(Real, 0, 1, closed="both")],
        "contrast": [Interval(Real, 0, 1, closed="both")],
        "gamma": [Interval(Real, 0, None, closed="left")],
        "noise": [Interval(Real, 0, None, closed="left")],
        "test_time_views": [Interval(Integral, 1, None, closed="left")],
        "standardize_targets": ["boolean"],
        "triplet_weight": [Interval(Real, 0, None, closed="left")],
        "triplet_margin": [Interval(Real, 0, None, closed="left")],
        "device": [str],
        "precision": [StrOptions({"auto", "fp32", "bf16"})],
        "random_state": ["random_state"],
        "checkpoint": [None, str, os.PathLike],
        "checkpoint_every": [Interval(Integral, 1, None, closed="left"), datetime.timedelta],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        encoder=None,
        *,
        backbone="resnet18",
        image_size=None,
        hidden=128,
        loss_weights=None,
        classification_targets=(),
        epochs=60,
        batch_size=32,
        lr=1e-3,
        encoder_lr=3e-4,
        weight_decay=1e-4,
        warmup_epochs=2,
        dropout=0.1,
        ema_decay=None,
        consistency_weight=0.0,
        unlabelled_batch_size=None,
        rotation=15.0,
        scale=(0.85, 1.15),
        shift=0.08,
        brightness=0.1,
        contrast=0.2,
        gamma=0.2,
        noise=0.03,
        test_time_views=1,
        standardize_targets=True,
        triplet_weight=0.0,
        triplet_margin=0.5,
        device="auto",
        precision="auto",
        random_state=None,
        checkpoint=None,
        checkpoint_every=100,
        verbose=0,
    ):
        self.encoder = encoder
        self.backbone = backbone
        self.image_size = image_size
        self.hidden = hidden
        self.loss_weights = loss_weights
        self.classification_targets = classification_targets
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.encoder_lr = encoder_lr
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.dropout = dropout
        self.ema_decay = ema_decay
        self.consistency_weight = consistency_weight
        self.unlabelled_batch_size = unlabelled_batch_size
        self.rotation = rotation
        self.scale = scale
        self.shift = shift
        self.brightness = brightness
        self.contrast = contrast
        self.gamma = gamma
        self.noise = noise
        self.test_time_views = test_time_views
        self.standardize_targets = standardize_targets
        self.triplet_weight = triplet_weight
        self.triplet_margin = triplet_margin
        self.device = device
        self.precision = precision
        self.random_state = random_state
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.verbose = verbose

    # ---- fitting ---------------------------------------------------------------------------
    def _augment_params(self):
        from skddh.models._augment import measure_augment_params

        return measure_augment_params(self)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Train encoder and head on labelled images.

        Parameters
        ----------
        X : ndarray of shape (n, H, W) or (n, C, H, W), lazy array-like, or sequence of paths
            uint8, uint16 or float images (floats in [0, 1]); at least 2.
        y : DataFrame or array-like of shape (n,) or (n, n_targets)
            Measurements and class labels. NaN is an error, except that with
            ``consistency_weight > 0`` a row whose every target is missing marks an
            unlabelled image.

        Returns
        -------
        self
        """
        from skddh.models import _distributed as D

        with D.session(self.device) as dist:  # torchrun: one process per device (Notes)
            return self._fit(X, y, dist)

    def _fit(self, X, y, dist):
        import torch

        from skddh.models import _distributed as D
        from skddh.models import _torch as T
        from skddh.models._augment import augment_measurement, normalize

        aug = self._augment_params()
        init = _initial_encoder(self.encoder)
        size = self.image_size or (init.image_size if init is not None else 224)
        src = ImageSource(X, size)
        if self.consistency_weight > 0 and self.ema_decay is None:
            raise ValueError(
                "consistency_weight > 0 needs ema_decay: the mean teacher is the weight "
                "average (try ema_decay=0.99)."
            )
        lab, unl, y_lab = self._labelled_rows(y, src.n)
        if len(lab) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 labelled images, got {len(lab)}."
            )
        y_std, y_cls, w_reg, w_cls = self._encode_targets(y_lab, len(lab), rows=lab)
        if len(unl):  # targets at every row index; the unlabelled rows' are never read
            y_std, y_cls = _scatter(y_std, lab, src.n), _scatter(y_cls, lab, src.n)
        backbone = init.backbone if init is not None else self.backbone
        if init is not None and init.n_channels_in_ != src.channels:
            raise ValueError(
                f"X has {src.channels} channel(s) but the encoder was fitted on "
                f"{init.n_channels_in_}."
            )
        D.check_same(dist, src.n)
        device = dist.device
        amp = T.resolve_dtype(self.precision, device)
        seed = D.shared_seed(dist, T.seed_from(self.random_state))
        with T.seeded(seed):
            net = _build_network(backbone, src.channels, self.hidden, self.dropout, self._n_outputs)
        if init is not None:
            net[0].load_state_dict(init.encoder_.state_dict())
        freeze = self.encoder_lr == 0
        if freeze:
            net[0].requires_grad_(False)
        net = net.to(device)
        cl = torch.contiguous_format
        if device.type == "cuda":  # convolutions in NHWC: the fast layout for tensor cores
            cl = torch.channels_last
            net = net.to(memory_format=cl)
        params = [{"params": net[1].parameters(), "lr": self.lr}]
        if not freeze:
            params.append({"params": net[0].parameters(), "lr": self.encoder_lr})
        optim = torch.optim.AdamW(params, weight_decay=self.weight_decay)
        ema = avg = None
        if self.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel

            avg = _WarmEMA(self.ema_decay)
            ema = AveragedModel(net, multi_avg_fn=avg, use_buffers=True)

        data = B.stage(src, device)
        bn = T.BatchNormGuard(net)  # undone on out-of-memory (see its docstring)
        yr = torch.from_numpy(y_std).to(device)
        yc = torch.from_numpy(y_cls).to(device)
        w_r = torch.from_numpy(w_reg).to(device)
        gen = T.generator(device, seed + 1)
        cpu_gen = T.generator(torch.device("cpu"), seed + 2)
        n_lab = len(lab)
        batch = min(self.batch_size, n_lab)  # the global batch, split across the ranks
        D.check_batch(dist, batch)
        first_batch = batch
        lab_t = torch.from_numpy(lab) if len(unl) else None  # None: every row, as always
        unl_t = torch.from_numpy(unl)
        if len(unl):
            D.check_batch(dist, self._unlabelled_batch(batch, first_batch))
        sched = _Schedule(
            self.epochs, D.steps_per_epoch(n_lab, batch, world=dist.world), self.warmup_epochs
        )
        base = [g["lr"] for g in optim.param_groups]
        history, step_i = [], 0
        stateful = dict(net=net, optim=optim, gen=gen, cpu_gen=cpu_gen, rng=C.GlobalRNG(device))
        if ema is not None:
            stateful["ema"] = ema
        names = np.asarray(self.target_names_, dtype=str)
        ckpt = C.Checkpointer(
            self.checkpoint,
            self.checkpoint_every,
            lambda: C.fingerprint(
                self,
                seed,
                src,
                y_std,
                y_cls,
                self.y_mean_,
                self.y_scale_,
                names,
                *([lab] if len(unl) else []),  # which rows are unlabelled
                encoder=init,
            ),
            device,
            write=dist.main,  # every rank resumes from rank 0's file; only rank 0 writes it
            **stateful,
        )

        def snapshot(end_of_epoch=False):  # the loop's position, for the checkpoint
            mid = not end_of_epoch
            return {
                "epoch": epoch + end_of_epoch,
                "order": order if mid else None,
                "start": start if mid else 0,
                "seen": seen if mid else 0,
                "total": total.cpu() if mid else None,
                "seconds": time.perf_counter() - t0 if mid else 0.0,
                "step": step_i,
                "batch": batch,
                "schedule_total": sched.total,
                "history": history,
            }

        with T.seeded(seed + 3):  # dropout draws from the global RNG: keep it local
            loop = ckpt.restore()  # None unless resuming (restores dropout's RNG too)
            if loop is not None:
                history, step_i = loop["history"], loop["step"]
                batch, sched.total = loop["batch"], loop["schedule_total"]
            D.barrier(dist)  # every rank has read the checkpoint before rank 0 replaces it
            swapped = D.sync_batchnorm(dist, net)  # after the weight average's copy: plain
            ddp = D.wrap(dist, D.Joined(lambda v: _hidden_and_out(net, v), net=net))
            epochs = range(0 if loop is None else loop["epoch"], self.epochs)
            if self.verbose and dist.main:
                from tqdm.auto import tqdm

                epochs = tqdm(
                    epochs,
                    desc=type(self).__name__,
                    unit="epoch",
                    initial=epochs.start,
                    total=self.epochs,
                )
            for epoch in epochs:
                net.train()
                if freeze:
                    net[0].eval()
                if loop is not None and loop["order"] is not None:  # resume inside it
                    order, start, seen = loop["order"], loop["start"], loop["seen"]
                    total = loop["total"].to(device)
                    t0 = time.perf_counter() - loop["seconds"]
                else:
                    order = B.epoch_order(data, n_lab, cpu_gen, batch, rows=lab_t)
                    t0, seen, total = time.perf_counter(), 0, torch.zeros((), device=device)
                    start = 0
                loop = None
                while start + D.min_rows(batch, False, dist.world) <= n_lab:
                    rows = order[start : start + batch]  # the global batch
                    idx = D.shard(dist, rows)  # this rank's share (all of it in one process)
                    if dist.active:  # each rank's own streams, functions of the step
                        gen.manual_seed(D.step_seed(seed + 1, dist.rank, step_i))
                        D.seed_global(device, D.step_seed(seed + 3, dist.rank, step_i))  # dropout
                    factor = sched(step_i)
                    for g, lr in zip(optim.param_groups, base):
                        g["lr"] = lr * factor
                    bn.save()
                    try:
                        ahead = D.shard(dist, B.next_batch(order, start, batch))
                        x = B.take(data, src, idx, device, size, ahead=ahead)
                        v = normalize(augment_measurement(x, aug, gen)).contiguous(memory_format=cl)
                        if len(unl):  # the teacher's targets and the student's views
                            ub = self._unlabelled_batch(batch, first_batch)
                            pick = torch.randint(len(unl), (ub,), generator=cpu_gen)
                            uidx = D.shard(dist, unl_t[pick])  # this rank's share
                            target, vu = self._teacher(
                                ema.module,
                                B.take(data, src, uidx, device, size),
                                aug,
                                gen,
                                cl,
                                device,
                                amp,
                                yr.shape[1],
                            )
                            v = torch.cat([v, vu])
                        with T.autocast(device, amp):
                            if ddp is None:
                                head = net[1]
                                hidden = head[1](head[0](net[0](v)))  # the head's hidden layer
                                out = head[3](head[2](hidden))
                            else:  # the same, through DDP (its backward averages gradients)
                                hidden, out = ddp(v)
                        d = idx.to(device)
                        m = len(idx)  # the labelled rows of the batch come first
                        loss = self._loss(out[:m].float(), yr[d], yc[d], w_r, w_cls)
                        loss = loss + self._triplet(hidden[:m], yr[d], w_r)
                        scale = D.loss_scale(dist, len(idx), len(rows))  # uneven shards
                        objective = loss if scale is None else loss * scale
                        if len(unl):  # each term weighted by its own shard
                            ramp = _rampup(step_i, sched.total)
                            gap = (out[m:, : yr.shape[1]].float() - target).abs().mean(0)
                            extra = self.consistency_weight * ramp * (gap @ w_r)
                            scale = D.loss_scale(dist, len(uidx), ub)
                            objective = objective + (extra if scale is None else extra * scale)
                        optim.zero_grad(set_to_none=True)
                        objective.backward()
                        optim.step()
                    except RuntimeError as exc:  # out of memory: halve the batch, go on
                        if not T.is_oom(exc) or batch <= 2:
                            raise
                        if dist.active:  # the ranks cannot agree on a new batch mid-step
                            raise RuntimeError(
                                f"out of memory on {device} (rank {dist.rank}) under "
                                "torch.distributed, where the batch is not halved: fit "
                                "again with a smaller batch_size."
                            ) from exc
                        bn.restore()  # the failed step's images must not count in batch norm
                        optim.zero_grad(set_to_none=True)
                        x = v = None
                        T.release_after_oom(exc, device)
                        batch //= 2
                        sched.recount(
                            step_i,
                            B.steps_per_epoch(n_lab - start, batch),
                            epoch,
                            B.steps_per_epoch(n_lab, batch),
                        )
                        warnings.warn(
                            f"out of memory on {device}: batch_size halved to {batch}.",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                        continue
                    if ema is not None:
                        avg.at(step_i)
                        ema.update_parameters(net)
                    part = loss.detach() * len(idx)  # the global batch's mean, once summed
                    if len(unl):  # ... and the consistency term's, over its own batch
                        part = part + extra.detach() * (len(uidx) * len(rows) / ub)
                    total += D.global_sum(dist, part)
                    seen += len(rows)
                    start += len(rows)
                    step_i += 1
                    if ckpt.due(step_i):
                        ckpt.save(snapshot())
                secs = time.perf_counter() - t0
                history.append(
                    {
                        "epoch": epoch + 1,
                        "loss": float(total / max(seen, 1)),
                        "lr": self.lr * sched(max(step_i - 1, 0)),
                        "images_per_s": seen / secs if secs > 0 else float("nan"),
                        "seconds": secs,
                    }
                )
                ckpt.save(snapshot(end_of_epoch=True))
        del ddp
        D.revert(swapped)  # plain batch norm again: the fitted module knows nothing of DDP
        final = ema.module if ema is not None else net
        final = final.eval()
        final.requires_grad_(False)
        self.module_ = final
        self.history_ = pd.DataFrame(history).set_index("epoch")
        self.n_channels_in_ = src.channels
        self.image_size_ = int(size)
        self.backbone_ = backbone
        self.initialised_from_ = "scratch" if init is None else "simsiam"
        self.precision_ = "fp32" if amp is None else "bf16"
        self.n_steps_ = step_i
        self.device_ = str(device)
        ckpt.finish()
        return self

    def _labelled_rows(self, y, n):
        """Labelled and unlabelled row indices, and ``y`` at the labelled rows.

        Without ``consistency_weight`` every row is labelled (a missing target is then
        reported by ``_encode_targets``); with it, a row whose every target is missing is an
        unlabelled image, and a row with only some missing is an error naming it.
        """
        every = np.arange(n)
        if y is None or self.consistency_weight == 0:
            return every, every[:0], y
        ydf, _, _ = self._targets(y)
        if len(ydf) != n:
            raise ValueError(f"X has {n} samples but y has {len(ydf)}.")
        missing = ydf.isna().to_numpy()
        none = missing.all(1)
        some = missing.any(1) & ~none
        if some.any():
            row = int(np.argmax(some))
            col = ydf.columns[int(np.argmax(missing[row]))]
            raise ValueError(
                f"y has a missing value at row {row}, target {col!r}, where other targets are "
                "given: a row is an unlabelled image only when every target is missing."
            )
        if not none.any():
            return every, every[:0], y
        lab = np.flatnonzero(~none)
        y_lab = y.iloc[lab] if isinstance(y, (pd.Series, pd.DataFrame)) else np.asarray(y)[lab]
        return lab, np.flatnonzero(none), y_lab

    def _unlabelled_batch(self, batch, first_batch):
        """Unlabelled images per step: ``unlabelled_batch_size``, halved with the batch."""
        if self.unlabelled_batch_size is None:
            return batch
        return max(1, self.unlabelled_batch_size * batch // first_batch)

    @staticmethod
    def _teacher(teacher, x, aug, gen, cl, device, amp, k):
        """The teacher's regression outputs on unaugmented images, and augmented views.

        The teacher (the weight average, in eval mode) sees each image as it is; the
        student will see an augmented view, so the consistency loss asks for invariance to
        exactly the label-preserving transforms.
        """
        import torch

        from skddh.models import _torch as T
        from skddh.models._augment import augment_measurement, normalize

        teacher.eval()
        with torch.no_grad(), T.autocast(device, amp):
            target = teacher(normalize(x).contiguous(memory_format=cl)).float()[:, :k]
        view = normalize(augment_measurement(x, aug, gen)).contiguous(memory_format=cl)
        return target, view

    # ---- prediction ------------------------------------------------------------------------
    def _forward(self, X):
        import torch

        from skddh.models import _torch as T
        from skddh.models._augment import measurement_views, normalize

        check_is_fitted(self)
        aug = self._augment_params()
        src = ImageSource(X, self.image_size_)
        if src.channels != self.n_channels_in_:
            raise ValueError(
                f"X has {src.channels} channel(s) but the model was fitted on "
                f"{self.n_channels_in_}."
            )
        device = T.resolve_device(self.device)
        amp = T.resolve_dtype("bf16", device) if self.precision == "bf16" else None
        module = self.module_.to(device).eval()
        cl = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        out = np.empty((src.n, self._n_outputs), np.float64)
        step = max(1, self.batch_size)
        views = self.test_time_views
        with torch.inference_mode():
            for start in range(0, src.n, step):
                sl = slice(start, min(src.n, start + step))
                acc = 0.0
                for v in measurement_views(B.read(src, sl, device, self.image_size_), aug, views):
                    with T.autocast(device, amp):
                        acc = acc + module(normalize(v).contiguous(memory_format=cl)).float()
                out[sl] = T.to_numpy(acc / views)
        return out

    def predict(self, X):
        """Every target: measurements in their units, class labels for the grades.

        Parameters
        ----------
        X : images as in :meth:`fit` (same number of channels)

        Returns
        -------
        ndarray of shape (n,) or (n, n_targets), columns in ``target_names_``
        """
        return self._decode(self._forward(X))

    @available_if(lambda self: len(self.classification_targets) > 0)
    def predict_proba(self, X):
        """Class probabilities of the classification targets.

        Returns
        -------
        ndarray of shape (n, n_classes) for one classification target, else a list of them
        in the order of ``classification_targets``.
        """
        return self._probabilities(self._forward(X))

    # ---- pickling and tags -----------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.non_deterministic = self.device != "cpu"
        return tags


def _hidden_and_out(net, v):
    """The head's hidden layer and the network's outputs (what DDP wraps)."""
    head = net[1]
    hidden = head[1](head[0](net[0](v)))
    return hidden, head[3](head[2](hidden))


def _scatter(values, rows, n):
    """``values`` (len(rows), ...) at ``rows`` of a zero array of ``n`` rows."""
    out = np.zeros((n,) + values.shape[1:], values.dtype)
    out[rows] = values
    return out


def _rampup(step, total):
    """The consistency weight's ramp-up, ``exp(-5 (1 - t)^2)`` over the first quarter."""
    t = min(1.0, step / max(1.0, 0.25 * total))
    return float(np.exp(-5.0 * (1.0 - t) ** 2))


class _WarmEMA:
    """EMA update for ``AveragedModel`` whose decay warms up: ``min(decay, (1+t)/(10+t))``.

    torch's ``get_ema_multi_avg_fn`` uses a fixed decay, so with the few hundred steps of a
    small labelled set the average would keep a large share of the random initial weights;
    the warm-up (the convention of TensorFlow's and timm's EMA) lets early steps count fully.
    """

    def __init__(self, decay):
        self.decay = decay
        self.now = decay

    def at(self, step):
        self.now = min(self.decay, (1 + step) / (10 + step))

    def __call__(self, averaged, current, _n_averaged):
        import torch

        with torch.no_grad():
            for a, c in zip(averaged, current):
                if a.is_floating_point():
                    a.lerp_(c, 1 - self.now)
                else:  # integer buffers (batches seen): the model's own count
                    a.copy_(c)


class _Schedule:
    """Linear warm-up then cosine decay to 0 at the last step, as a factor of the base lr."""

    def __init__(self, epochs, steps_per_epoch, warmup_epochs):
        self.epochs = epochs
        self.total = max(1, epochs * steps_per_epoch)
        self.warmup = min(warmup_epochs * steps_per_epoch, self.total - 1)

    def recount(self, step, left_this_epoch, epoch, steps_per_epoch):
        """After an out-of-memory halving: the steps still to come, at the new batch size."""
        rest = left_this_epoch + (self.epochs - epoch - 1) * steps_per_epoch
        self.total = max(step + 1, step + rest)

    def __call__(self, step):
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        t = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1 + np.cos(np.pi * min(t, 1.0)))
