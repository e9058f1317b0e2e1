"""MeasurementRegressor: a small torch MLP head for named measurements on frozen features.

Regression targets (Graf alpha, beta, coverage; AI, CE) train with a weighted L1 loss,
classification targets (IHDI grade) with cross-entropy, in one network (the DDH paper,
arXiv 2511.18457: 512 -> 128 -> k). Our own loop, small on purpose: no hidden validation
split, a ``random_state``, 1-D and 2-D targets both handled.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted, validate_data
from sklearn_compat.base import _fit_context

from skddh.models._pickle import CPUStateMixin
from skddh.models._targets import TargetsMixin


def _build_module(n_features, hidden, dropout, n_out):
    """The head's network, freshly initialised: features -> hidden -> outputs.

    One definition for :meth:`MeasurementRegressor.fit` and for rebuilding a saved head
    (:func:`skddh.model_file.load_policy`), so the two cannot drift apart.
    """
    from torch import nn

    return nn.Sequential(
        nn.Linear(n_features, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, n_out),
    )


class MeasurementRegressor(CPUStateMixin, TargetsMixin, RegressorMixin, BaseEstimator):
    """MLP head (features -> hidden -> measurements): L1 for angles, cross-entropy for grades.

    Parameters
    ----------
    hidden : int, default=128
        Width of the hidden layer.
    loss_weights : dict or array-like, default=None
        Weight per target (by name or position); equal weights by default.
    classification_targets : tuple of str or int, default=()
        Targets (names or column positions) that are class labels, e.g. ``("ihdi",)``.
    epochs : int, default=100
    lr : float, default=1e-3
        Adam learning rate.
    weight_decay : float, default=1e-4
    batch_size : int, default=64
    dropout : float, default=0.2
        Dropout after the hidden layer: a few hundred labelled images overfit easily.
    standardize_targets : bool, default=True
        Fit regression targets in standard units (so L1 weights compare across units).
    triplet_weight : float, default=0.0
        Weight of the adaptive triplet loss on the hidden layer (0 turns it off): hidden
        representations of samples with close targets are pulled together, those with
        distant targets pushed apart by a margin that grows with the difference. It follows
        Zheng et al. (MICCAI 2021), which a patent application covers (US 2022/0309651 A1);
        the definition is in :func:`~skddh.models.adaptive_triplet_loss`.
    triplet_margin : float, default=0.5
        Margin per unit of standardised target difference.
    device : str, default="auto"
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained network (eval mode).
    history_ : DataFrame
        Training loss per epoch.
    target_names_ : ndarray of str
    classes_ : dict
        Class labels per classification target.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        When X had string column names.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from skddh import MeasurementRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 8)).astype("float32")
    >>> y = pd.DataFrame({"alpha": 60 + 5 * X[:, 0], "ihdi": 1 + (X[:, 1] > 1)})
    >>> head = MeasurementRegressor(hidden=32, classification_targets=("ihdi",), epochs=50,
    ...                             device="cpu", random_state=0).fit(X, y)
    >>> head.predict(X[:2]).shape, head.classes_["ihdi"].tolist()
    ((2, 2), [1, 2])
    """

    _parameter_constraints: dict = {
        "hidden": [Interval(Integral, 1, None, closed="left")],
        "loss_weights": [dict, "array-like", None],
        "classification_targets": [tuple, list],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "standardize_targets": ["boolean"],
        "triplet_weight": [Interval(Real, 0, None, closed="left")],
        "triplet_margin": [Interval(Real, 0, None, closed="left")],
        "device": [str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        hidden=128,
        *,
        loss_weights=None,
        classification_targets=(),
        epochs=100,
        lr=1e-3,
        weight_decay=1e-4,
        batch_size=64,
        dropout=0.2,
        standardize_targets=True,
        triplet_weight=0.0,
        triplet_margin=0.5,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.hidden = hidden
        self.loss_weights = loss_weights
        self.classification_targets = classification_targets
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.dropout = dropout
        self.standardize_targets = standardize_targets
        self.triplet_weight = triplet_weight
        self.triplet_margin = triplet_margin
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Train the head.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features (e.g. from :class:`~skddh.SimSiamFeaturizer`).
        y : DataFrame or array-like of shape (n_samples,) or (n_samples, n_targets)
            Measurements; NaN is an error.

        Returns
        -------
        self
        """
        import torch

        from skddh.models import _torch as T

        X = validate_data(self, X, dtype=np.float32, ensure_min_samples=2)
        y_std, y_cls, w_reg, w_cls = self._encode_targets(y, len(X))
        self.x_mean_ = X.mean(0)
        # Frozen-encoder features often hold near-constant dimensions; dividing by their tiny
        # spread would blow small test-time differences up, so the scale has a floor.
        sd = X.std(0)
        floor = max(1e-2 * float(sd.mean()), 1e-6)
        self.x_scale_ = np.maximum(sd, floor).astype(np.float32)

        device = T.resolve_device(self.device)
        seed = T.seed_from(self.random_state)
        with T.seeded(seed):
            module = _build_module(X.shape[1], self.hidden, self.dropout, self._n_outputs)
        module = module.to(device)
        xt = torch.from_numpy((X - self.x_mean_) / self.x_scale_).to(device)
        yr = torch.from_numpy(y_std).to(device)
        yc = torch.from_numpy(y_cls).to(device)
        w_reg = torch.from_numpy(w_reg).to(device)
        optim = torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        gen = T.generator(torch.device("cpu"), seed + 1)
        n, bs = len(X), min(self.batch_size, len(X))
        losses = []
        epochs = range(self.epochs)
        if self.verbose:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc="MeasurementRegressor", unit="epoch")
        with T.seeded(seed + 2):  # dropout masks draw from the global RNG: keep it local
            for _ in epochs:
                module.train()
                order = torch.randperm(n, generator=gen).to(device)
                total = torch.zeros((), device=device)
                for start in range(0, n, bs):
                    idx = order[start : start + bs]
                    hidden = module[1](module[0](xt[idx]))  # = module[:2], the hidden layer
                    out = module[3](module[2](hidden))
                    loss = self._loss(out, yr[idx], yc[idx], w_reg, w_cls)
                    loss = loss + self._triplet(hidden, yr[idx], w_reg)
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                    total += loss.detach() * len(idx)
                losses.append(total / n)
        self.module_ = module.eval()
        self.history_ = pd.DataFrame(
            {"loss": torch.stack(losses).cpu().numpy()},
            index=pd.RangeIndex(1, self.epochs + 1, name="epoch"),
        )
        return self

    # ---- prediction ---------------------------------------------------------------------
    def _forward(self, X):
        import torch

        from skddh.models import _torch as T

        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        device = T.resolve_device(self.device)
        module = self.module_.to(device).eval()
        with torch.inference_mode():
            xt = torch.from_numpy((X - self.x_mean_) / self.x_scale_).to(device)
            return T.to_numpy(module(xt)).astype(np.float64)

    def predict(self, X):
        """Every target: measurements in their units, class labels for the grades.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_targets), columns in ``target_names_``
        """
        return self._decode(self._forward(X))

    @available_if(lambda self: len(self.classification_targets) > 0)
    def predict_proba(self, X):
        """Class probabilities of the classification targets.

        Returns
        -------
        ndarray of shape (n_samples, n_classes) for one classification target, else a list
        of them in the order of ``classification_targets``.
        """
        return self._probabilities(self._forward(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.non_deterministic = self.device != "cpu"
        return tags
