"""SimSiamFeaturizer: self-supervised pretraining of a timm encoder, then frozen features.

SimSiam (Chen & He, CVPR 2021): two augmented views, an encoder + projector, a predictor on
one branch, and the symmetric negative cosine loss with a stop-gradient on the other. No
negatives, no momentum encoder. The DDH paper (arXiv 2511.18457) pretrains a ResNet-18 this
way on its unlabelled registry and freezes it.
"""

from __future__ import annotations

import datetime
import os
import time
import warnings
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from sklearn_compat.base import _fit_context

from skddh.models import _batches as B
from skddh.models import _checkpoint as C
from skddh.models._images import ImageSource
from skddh.models._pickle import CPUStateMixin


def _build(backbone, in_chans, proj_dim, pred_dim):
    import timm
    from torch import nn

    encoder = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans)
    d = encoder.num_features
    projector = nn.Sequential(
        nn.Linear(d, proj_dim, bias=False),
        nn.BatchNorm1d(proj_dim),
        nn.ReLU(inplace=True),
        nn.Linear(proj_dim, proj_dim, bias=False),
        nn.BatchNorm1d(proj_dim),
        nn.ReLU(inplace=True),
        nn.Linear(proj_dim, proj_dim, bias=False),
        nn.BatchNorm1d(proj_dim, affine=False),
    )
    predictor = nn.Sequential(
        nn.Linear(proj_dim, pred_dim, bias=False),
        nn.BatchNorm1d(pred_dim),
        nn.ReLU(inplace=True),
        nn.Linear(pred_dim, proj_dim),
    )
    return encoder, projector, predictor


def _project(model, predictor, v):
    """Projections and predictions of a batch of views (what DDP wraps)."""
    z = model["projector"](model["encoder"](v))
    return z, predictor(z)


class SimSiamFeaturizer(CPUStateMixin, TransformerMixin, BaseEstimator):
    """Self-supervised SimSiam pretraining of a timm encoder; ``transform`` gives its features.

    Parameters
    ----------
    backbone : str, default="resnet18"
        Any timm model name (``resnet18`` and ``convnext_tiny`` are tested). Always built with
        ``pretrained=False``: nothing is downloaded, ever. ``in_chans`` comes from the data.
    image_size : int, default=224
        Side of the square views the encoder sees. Arrays are letterboxed on the device
        (padded to a square, then resized) exactly as files are when read, so an image that is
        not square keeps its angles.
    epochs : int, default=10
    batch_size : int, default=256
        Halved, with a warning, on a device out-of-memory error. Under
        ``torch.distributed``, the global batch (split across the processes, never halved:
        see Notes).
    lr : float, default=0.05
        Base learning rate for SGD at batch size 256 (scaled linearly), cosine schedule; the
        predictor keeps a fixed rate, as in SimSiam.
    weight_decay : float, default=1e-4
    projection_dim : int, default=2048
    prediction_dim : int, default=512
    crop_scale : tuple of float, default=(0.4, 1.0)
        Area range of the random resized crop.
    crop_ratio : tuple of float, default=(3/4, 4/3)
        Aspect-ratio range of the crop (SimSiam's). A ratio other than 1 shears the image,
        and with it Graf's angles: the features learn to ignore part of what alpha and beta
        measure. ``(1.0, 1.0)`` keeps every angle (rotation, zoom and shift only).
    flip_p : float, default=0.5
        Probability of a horizontal flip (angles keep their size under a flip).
    rotation : float, default=10.0
        Maximum rotation in degrees.
    brightness, contrast, gamma : float, default=0.2
        Intensity jitter strengths.
    blur_p : float, default=0.5
        Probability of a Gaussian blur (sigma 0.1-1.5 px).
    speckle : float, default=0.15
        Maximum strength of multiplicative speckle noise (applied with probability 0.5).
    device : str, default="auto"
        ``"auto"`` uses CUDA when available.
    precision : {"auto", "fp32", "bf16"}, default="auto"
        Training precision. ``"auto"``: bf16 autocast on CUDA, float32 elsewhere (decided
        once, in ``fit``: ``precision_``). ``transform`` computes float32 features unless
        ``"bf16"`` is asked for explicitly, so a model fitted on a GPU gives the same
        features on a CPU.
    compile : bool, default=False
        ``torch.compile`` the training step's model and the encoder in ``transform``. To
        keep one shape (a new batch size compiles again), training then drops the last,
        short batch of each epoch (as lightly's ``DataLoader(drop_last=True)`` does: those
        images are seen in other epochs, in another order), and ``transform`` pads its last
        batch to full size and keeps only the real rows.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, shuffling and augmentation (local generators only). On
        the CPU the same seed gives the same features; on a GPU, cuDNN may not.
    checkpoint : str, path-like or None, default=None
        A file to checkpoint the fit to (its directory must exist), so that a fit killed
        at any moment resumes where it died: fitting again with the same parameters and
        data continues from the file and, on the CPU, ends bitwise equal to a fit that was
        never interrupted. Saved (atomically: a temporary file renamed over it) after every
        ``checkpoint_every``-th step and at the end of every epoch: weights, optimiser,
        every random generator, the epoch's permutation and position, the history. A file
        from another fit (other parameters or data) is refused with a ``ValueError``; the
        file is deleted when the fit ends. One path serves one fit: leave it None in
        searches and cross-validation (their clones would share it). None: no checkpoint.
    checkpoint_every : int or datetime.timedelta, default=100
        Optimisation steps between checkpoints, or the time between them (a
        :class:`datetime.timedelta`: a checkpoint after the first step that ends at
        least that long after the last one).
    verbose : int, default=0
        Progress bar per epoch when > 0.

    Attributes
    ----------
    encoder_ : torch.nn.Module
        The pretrained encoder, frozen, in eval mode (projector and predictor are dropped).
    history_ : DataFrame
        Per epoch: ``loss``, ``images_per_s``, ``batch_size``, ``seconds``.
    n_features_out_ : int
        Feature dimension (512 for ResNet-18).
    n_channels_in_ : int
        Image channels seen in ``fit``.
    device_ : str
        Device fitted on.
    precision_ : {"fp32", "bf16"}
        Precision the encoder was trained in.
    n_steps_ : int
        Optimiser steps taken (the cosine schedule reaches 0 at the last one).

    Notes
    -----
    **Several GPUs or machines.** Launched by ``torchrun`` (``WORLD_SIZE > 1`` in the
    environment), ``fit`` initialises a ``torch.distributed`` group itself (``nccl`` on
    CUDA, ``gloo`` on the CPU) and destroys it when it returns; a group the caller has
    initialised is used and left open. Each process trains on ``cuda:LOCAL_RANK`` (for
    ``device="auto"`` or ``"cuda"``) under ``DistributedDataParallel``, with every batch
    norm layer synchronised over all processes. Every process must be given the same ``X``
    and ``random_state`` (``None`` is fine: rank 0's seed is broadcast); the estimator
    shards the data itself. ``batch_size`` is the *global* batch: each of the W processes
    takes its contiguous share (``batch_size / W`` images, shares differing by at most one)
    of the same sequence of batches, drawn from one permutation per epoch that every
    process draws identically (what ``DistributedSampler.set_epoch`` achieves), and the
    learning rate scales with the global batch; so a fit on W processes computes what one
    process with the same ``batch_size`` computes, up to the order of floating-point sums
    (augmentation aside: each process draws its own views, from a stream that is a function
    of ``random_state``, its rank and the step). Nothing is padded or repeated: a last,
    uneven batch is split unevenly and each share's loss weighted by its size. Under DDP an
    out-of-memory error is raised, not answered by halving the batch (the processes cannot
    agree mid-step). Only rank 0 shows progress bars and writes ``checkpoint``; every rank
    resumes from that file. Every rank ends with the same weights, as plain modules (no DDP
    wrapper, no synchronised batch norm), so the fitted estimator pickles and transforms
    like a single-process one; ``transform`` is never sharded: each process that calls it
    gets the features of every row.

    References
    ----------
    Chen & He, "Exploring simple Siamese representation learning", CVPR 2021; the DDH paper,
    arXiv 2511.18457.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh import SimSiamFeaturizer
    >>> images = np.random.default_rng(0).integers(0, 255, (16, 32, 32), dtype=np.uint8)
    >>> enc = SimSiamFeaturizer(image_size=32, epochs=1, batch_size=8, projection_dim=32,
    ...                         prediction_dim=16, device="cpu", random_state=0).fit(images)
    >>> enc.transform(images[:3]).shape
    (3, 512)
    """

    _torch_attributes = ("encoder_",)

    _parameter_constraints: dict = {
        "backbone": [str],
        "image_size": [Interval(Integral, 8, None, closed="left")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "projection_dim": [Interval(Integral, 1, None, closed="left")],
        "prediction_dim": [Interval(Integral, 1, None, closed="left")],
        "crop_scale": [tuple],
        "crop_ratio": [tuple],
        "flip_p": [Interval(Real, 0, 1, closed="both")],
        "rotation": [Interval(Real, 0, 180, closed="both")],
        "brightness": [Interval(Real, 0, 1, closed="both")],
        "contrast": [Interval(Real, 0, 1, closed="both")],
        "gamma": [Interval(Real, 0, None, closed="left")],
        "blur_p": [Interval(Real, 0, 1, closed="both")],
        "speckle": [Interval(Real, 0, None, closed="left")],
        "device": [str],
        "precision": [StrOptions({"auto", "fp32", "bf16"})],
        "compile": ["boolean"],
        "random_state": ["random_state"],
        "checkpoint": [None, str, os.PathLike],
        "checkpoint_every": [Interval(Integral, 1, None, closed="left"), datetime.timedelta],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        backbone="resnet18",
        *,
        image_size=224,
        epochs=10,
        batch_size=256,
        lr=0.05,
        weight_decay=1e-4,
        projection_dim=2048,
        prediction_dim=512,
        crop_scale=(0.4, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        flip_p=0.5,
        rotation=10.0,
        brightness=0.2,
        contrast=0.2,
        gamma=0.2,
        blur_p=0.5,
        speckle=0.15,
        device="auto",
        precision="auto",
        compile=False,
        random_state=None,
        checkpoint=None,
        checkpoint_every=100,
        verbose=0,
    ):
        self.backbone = backbone
        self.image_size = image_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.projection_dim = projection_dim
        self.prediction_dim = prediction_dim
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.flip_p = flip_p
        self.rotation = rotation
        self.brightness = brightness
        self.contrast = contrast
        self.gamma = gamma
        self.blur_p = blur_p
        self.speckle = speckle
        self.device = device
        self.precision = precision
        self.compile = compile
        self.random_state = random_state
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.verbose = verbose

    # ---- fitting ---------------------------------------------------------------------------
    def _augment_params(self):
        from skddh.models._augment import AugmentParams

        lo, hi = (float(v) for v in self.crop_scale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(
                f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}."
            )
        try:
            r_lo, r_hi = (float(v) for v in self.crop_ratio)
        except (TypeError, ValueError):
            raise ValueError(f"crop_ratio must be a pair, got {self.crop_ratio!r}.") from None
        if not 0 < r_lo <= r_hi:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}.")
        return AugmentParams(
            crop_scale=(lo, hi),
            crop_ratio=(r_lo, r_hi),
            flip_p=float(self.flip_p),
            rotation=float(self.rotation),
            brightness=float(self.brightness),
            contrast=float(self.contrast),
            gamma=float(self.gamma),
            blur_p=float(self.blur_p),
            speckle=float(self.speckle),
        )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Pretrain the encoder with SimSiam on unlabelled images.

        Parameters
        ----------
        X : ndarray of shape (n, H, W) or (n, C, H, W), lazy array-like, or sequence of paths
            uint8, uint16 or float images (floats in [0, 1]); at least 2 images.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        from skddh.models import _distributed as D

        with D.session(self.device) as dist:  # torchrun: one process per device (Notes)
            return self._fit(X, dist)

    def _fit(self, X, dist):
        import torch

        from skddh.models import _distributed as D
        from skddh.models import _torch as T
        from skddh.models._augment import augment, normalize

        aug = self._augment_params()
        src = ImageSource(X, self.image_size)
        if src.n < 2:
            raise ValueError(f"SimSiam needs at least 2 images (batch norm), got {src.n}.")
        D.check_same(dist, src.n)
        device = dist.device
        amp = T.resolve_dtype(self.precision, device)
        seed = D.shared_seed(dist, T.seed_from(self.random_state))
        with T.seeded(seed):
            encoder, projector, predictor = _build(
                self.backbone, src.channels, self.projection_dim, self.prediction_dim
            )
        model = torch.nn.ModuleDict({"encoder": encoder, "projector": projector}).to(device)
        predictor = predictor.to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        batch = min(self.batch_size, src.n)  # the global batch, split across the ranks
        D.check_batch(dist, batch)
        base_lr = self.lr * batch / 256
        optim = torch.optim.SGD(
            [
                {"params": model.parameters(), "fix_lr": False},
                {"params": predictor.parameters(), "fix_lr": True},
            ],
            lr=base_lr,
            momentum=0.9,
            weight_decay=self.weight_decay,
        )
        bn = T.BatchNormGuard(model, predictor)  # undone on out-of-memory (see its docstring)
        # A compiled step keeps one shape: the short last batch of an epoch is dropped (as
        # lightly's DataLoader(drop_last=True) does), or it would compile the step again.
        drop = bool(self.compile)
        data = B.stage(src, device)
        gen = T.generator(device, seed + 1)
        cpu_gen = T.generator(torch.device("cpu"), seed + 2)
        history = []
        # The schedule counts the steps the loop takes (a last batch of one image is
        # skipped), and is recounted when an out-of-memory error halves the batch.
        total_steps = self.epochs * D.steps_per_epoch(src.n, batch, drop, dist.world)
        step_i = 0
        ckpt = C.Checkpointer(
            self.checkpoint,
            self.checkpoint_every,
            lambda: C.fingerprint(self, seed, src),
            device,
            model=model,
            predictor=predictor,
            optim=optim,
            write=dist.main,  # every rank resumes from rank 0's file; only rank 0 writes it
            gen=gen,
            cpu_gen=cpu_gen,
        )
        loop = ckpt.restore()  # None unless resuming
        if loop is not None:
            history, step_i = loop["history"], loop["step"]
            batch, total_steps = loop["batch"], loop["total_steps"]
        D.barrier(dist)  # every rank has read the checkpoint before rank 0 replaces it
        swapped = D.sync_batchnorm(dist, model, predictor)
        ddp = D.wrap(
            dist,
            D.Joined(lambda v: _project(model, predictor, v), model=model, predictor=predictor),
        )
        step_fn = self._make_step(
            model, predictor, optim, device, amp, aug, augment, normalize, ddp
        )

        def snapshot(end_of_epoch=False):  # the loop's position, for the checkpoint
            mid = not end_of_epoch
            return {
                "epoch": epoch + end_of_epoch,
                "order": order if mid else None,
                "start": start if mid else 0,
                "seen": seen if mid else 0,
                "losses": [v.cpu() for v in losses] if mid else [],
                "seconds": time.perf_counter() - t0 if mid else 0.0,
                "step": step_i,
                "batch": batch,
                "total_steps": total_steps,
                "history": history,
            }

        for epoch in range(0 if loop is None else loop["epoch"], self.epochs):
            model.train()
            predictor.train()
            if loop is not None and loop["order"] is not None:  # resume inside this epoch
                order, start, seen = loop["order"], loop["start"], loop["seen"]
                losses = [v.to(device) for v in loop["losses"]]
                t0 = time.perf_counter() - loop["seconds"]
            else:
                order = B.epoch_order(data, src.n, cpu_gen, batch)
                t0, seen, losses = time.perf_counter(), 0, []
                start = 0
            loop = None
            bar = self._progress(epoch, src.n) if dist.main else None
            if bar is not None and start:
                bar.update(start)
            while start + D.min_rows(batch, drop, dist.world) <= src.n:
                rows = order[start : start + batch]  # the global batch
                idx = D.shard(dist, rows)  # this rank's share (all of it in one process)
                if dist.active:  # each rank's own stream, a function of the step (resumable)
                    gen.manual_seed(D.step_seed(seed + 1, dist.rank, step_i))
                lr = base_lr * 0.5 * (1 + np.cos(np.pi * min(step_i, total_steps) / total_steps))
                for g in optim.param_groups:
                    g["lr"] = base_lr if g["fix_lr"] else lr
                bn.save()
                try:  # building the batch can run out of memory too
                    ahead = D.shard(dist, B.next_batch(order, start, batch, drop))
                    x = B.take(data, src, idx, device, self.image_size, ahead=ahead)
                    scale = D.loss_scale(dist, len(idx), len(rows))  # None in one process
                    loss = step_fn(x, gen) if scale is None else step_fn(x, gen, scale)
                except RuntimeError as exc:  # out of memory: halve the batch, go on
                    if not T.is_oom(exc) or batch <= 2:
                        raise
                    if dist.active:  # the ranks cannot agree on a new batch mid-step
                        raise RuntimeError(
                            f"out of memory on {device} (rank {dist.rank}) under "
                            "torch.distributed, where the batch is not halved: fit again "
                            "with a smaller batch_size."
                        ) from exc
                    bn.restore()  # the failed step's images must not count in batch norm
                    optim.zero_grad(set_to_none=True)
                    x = None
                    T.release_after_oom(exc, device)
                    batch //= 2
                    left = B.steps_per_epoch(src.n - start, batch, drop)
                    total_steps = (
                        step_i
                        + left
                        + (self.epochs - epoch - 1) * B.steps_per_epoch(src.n, batch, drop)
                    )
                    warnings.warn(
                        f"out of memory on {device}: batch_size halved to {batch}.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    continue
                if dist.active:  # the global batch's mean loss, the same on every rank
                    loss = D.global_sum(dist, loss * len(idx)) / len(rows)
                losses.append(loss)
                seen += len(rows)
                start += len(rows)
                step_i += 1
                if ckpt.due(step_i):
                    ckpt.save(snapshot())
                if bar is not None:
                    bar.update(len(rows))
            if bar is not None:
                bar.close()
            if device.type == "cuda":
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            mean_loss = float(torch.stack(losses).mean()) if losses else float("nan")
            history.append(
                {
                    "epoch": epoch + 1,
                    "loss": mean_loss,
                    "images_per_s": seen / secs if secs > 0 else float("nan"),
                    "batch_size": batch,
                    "seconds": secs,
                }
            )
            ckpt.save(snapshot(end_of_epoch=True))
        del ddp, step_fn
        D.revert(swapped)  # plain batch norm again: the fitted encoder knows nothing of DDP
        encoder = model["encoder"].eval()
        for p in encoder.parameters():
            p.requires_grad_(False)
        self.encoder_ = encoder
        self.history_ = pd.DataFrame(history).set_index("epoch")
        self.n_features_out_ = int(encoder.num_features)
        self.n_channels_in_ = src.channels
        self.device_ = str(device)
        self.precision_ = "fp32" if amp is None else "bf16"
        self.n_steps_ = step_i
        ckpt.finish()
        return self

    def _make_step(self, model, predictor, optim, device, amp, aug, augment, normalize, ddp=None):
        import torch
        import torch.nn.functional as F

        from skddh.models import _torch as T

        size = self.image_size
        cl = torch.channels_last if device.type == "cuda" else torch.contiguous_format

        def forward(v1, v2):
            v = torch.cat([v1, v2]).contiguous(memory_format=cl)
            if ddp is None:
                z = model["projector"](model["encoder"](v))
                p = predictor(z)
            else:  # the same computation, through DDP (its backward averages the gradients)
                z, p = ddp(v)
            z1, z2 = z.chunk(2)
            p1, p2 = p.chunk(2)
            return -0.5 * (
                F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
                + F.cosine_similarity(p2, z1.detach(), dim=-1).mean()
            )

        # dynamic=False: one static graph; the loop keeps the batch shape fixed (drop_last),
        # so only an out-of-memory halving compiles again.
        fwd = torch.compile(forward, dynamic=False) if self.compile else forward

        def step(x, gen, scale=None):
            v1 = normalize(augment(x, size, aug, gen))
            v2 = normalize(augment(x, size, aug, gen))
            with T.autocast(device, amp):
                loss = fwd(v1, v2)
            optim.zero_grad(set_to_none=True)
            (loss if scale is None else loss * scale).backward()  # scale: DDP's uneven shards
            optim.step()
            return loss.detach().float()

        return step

    def _progress(self, epoch, n):
        if not self.verbose:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=n, desc=f"SimSiam epoch {epoch + 1}/{self.epochs}", unit="img")

    # ---- features --------------------------------------------------------------------------
    def transform(self, X):
        """Pooled encoder features, batched, in inference mode.

        Parameters
        ----------
        X : images as in :meth:`fit` (same number of channels)

        Returns
        -------
        ndarray of shape (n, ``n_features_out_``), float32
        """
        import torch

        from skddh.models import _torch as T
        from skddh.models._augment import normalize

        check_is_fitted(self)
        src = ImageSource(X, self.image_size)
        if src.channels != self.n_channels_in_:
            raise ValueError(
                f"X has {src.channels} channel(s) but the encoder was fitted on "
                f"{self.n_channels_in_}."
            )
        device = T.resolve_device(self.device)
        # Features are float32 unless bf16 was asked for explicitly: "auto" decides bf16 at
        # fit time on a GPU, and a model calibrated there must give the same features on a
        # CPU (a precision shift is a feature shift the conformal guarantee does not cover).
        amp = T.resolve_dtype("bf16", device) if self.precision == "bf16" else None
        encoder = self.encoder_.to(device).eval()
        # Compiled: one static shape; the last batch is padded with blank rows (eval-mode
        # batch norm treats every row alone, so the real rows' features do not change).
        net = torch.compile(encoder, dynamic=False) if self.compile else encoder
        cl = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        out = np.empty((src.n, self.n_features_out_), np.float32)
        step = max(1, self.batch_size)
        with torch.inference_mode():
            for start in range(0, src.n, step):
                sl = slice(start, min(src.n, start + step))
                x = B.read(src, sl, device, self.image_size)
                rows = len(x)
                if self.compile:
                    x = B.pad_rows(x, step)
                with T.autocast(device, amp):
                    f = net(normalize(x).contiguous(memory_format=cl))
                out[sl] = T.to_numpy(f[:rows])
        return out

    def get_feature_names_out(self, input_features=None):
        """``simsiam0`` ... ``simsiam{d-1}``."""
        check_is_fitted(self)
        return np.asarray([f"simsiam{i}" for i in range(self.n_features_out_)], dtype=object)

    # ---- pickling and tags -----------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.non_deterministic = self.device != "cpu"
        tags.requires_fit = True
        return tags
