"""Named measurement targets shared by the torch regressors: encoding, loss and decoding.

:class:`~skddh.MeasurementRegressor` (on features) and :class:`~skddh.FineTuningRegressor`
(on images) take the same ``y`` (a DataFrame of named measurements, a Series, or an array),
train regression targets with a weighted L1 loss in standard units and classification
targets (IHDI grade) with cross-entropy, and predict in the caller's units and labels. The
mixin holds that once, so both estimators read and return targets identically.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import pandas as pd


class TargetsMixin:
    """Target handling for estimators with ``loss_weights``, ``classification_targets`` and
    ``standardize_targets`` parameters. Sets ``target_names_``, ``classes_``, ``y_mean_``,
    ``y_scale_`` (and the private ``_reg``, ``_cls``, ``_y_1d`` that saved models rely on).
    """

    def _targets(self, y):
        if isinstance(y, pd.Series):
            y = y.to_frame(name="y0" if y.name is None else y.name)
            self._y_1d = True
        elif isinstance(y, pd.DataFrame):
            self._y_1d = False
        else:
            arr = np.asarray(y)
            self._y_1d = arr.ndim == 1
            if arr.ndim == 1:
                arr = arr[:, None]
            if arr.ndim != 2:
                raise ValueError(f"y must be 1-D or 2-D, got {arr.ndim} dimensions.")
            y = pd.DataFrame(arr, columns=[f"y{j}" for j in range(arr.shape[1])])
        y = y.rename(columns=str).reset_index(drop=True)
        names = list(y.columns)
        cls = []
        for t in self.classification_targets:
            name = names[t] if isinstance(t, Integral) and 0 <= t < len(names) else str(t)
            if name not in names:
                raise ValueError(
                    f"classification_targets names {t!r}, not a target; targets are {names}."
                )
            cls.append(name)
        return y, names, cls

    def _weights(self, names):
        if self.loss_weights is None:
            return np.ones(len(names))
        if isinstance(self.loss_weights, dict):
            unknown = sorted(set(self.loss_weights) - set(names))
            if unknown:
                raise ValueError(f"loss_weights names unknown target(s) {unknown}.")
            w = np.array([float(self.loss_weights.get(t, 1.0)) for t in names])
        else:
            w = np.asarray(self.loss_weights, dtype=float).ravel()
            if len(w) != len(names):
                raise ValueError(f"loss_weights has {len(w)} entries for {len(names)} targets.")
        if (w < 0).any() or not np.isfinite(w).all():
            raise ValueError("loss_weights must be finite and >= 0.")
        return w

    def _encode_targets(self, y, n, rows=None):
        """Validate ``y`` for ``n`` samples and set the target attributes.

        ``rows``: the caller's row number of each of ``y``'s rows, for error messages (when
        ``y`` is a subset of what the caller was given).

        Returns the standardised regression targets (n, k) float32, the class codes (n, m)
        int64 and the loss weights of each (the regression ones as an array).
        """
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        ydf, names, cls = self._targets(y)
        if len(ydf) != n:
            raise ValueError(f"X has {n} samples but y has {len(ydf)}.")
        reg = [t for t in names if t not in cls]
        y_reg = ydf[reg].to_numpy(dtype=float) if reg else np.zeros((n, 0))
        bad = ~np.isfinite(y_reg)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            row = row if rows is None else rows[row]
            raise ValueError(f"y has a NaN or infinite value at row {row}, target {reg[col]!r}.")
        self.classes_, codes = {}, []
        for t in cls:
            col = ydf[t]
            if col.isna().any():
                row = int(col.isna().argmax())
                row = row if rows is None else int(rows[row])
                raise ValueError(f"y has a missing class label at row {row}.")
            classes, code = np.unique(col.to_numpy(), return_inverse=True)
            self.classes_[t] = classes
            codes.append(code)
        weights = self._weights(names)
        self.target_names_ = np.asarray(names, dtype=object)
        self._reg, self._cls = reg, cls
        self.y_mean_ = y_reg.mean(0) if self.standardize_targets else np.zeros(len(reg))
        sd = y_reg.std(0) if len(y_reg) else np.ones(len(reg))
        self.y_scale_ = (
            np.where(sd > 1e-12, sd, 1.0) if self.standardize_targets else np.ones(len(reg))
        )
        y_std = ((y_reg - self.y_mean_) / self.y_scale_).astype(np.float32)
        y_cls = np.stack(codes, 1) if codes else np.zeros((n, 0), np.int64)
        w_reg = weights[[names.index(t) for t in reg]].astype(np.float32)
        w_cls = [float(weights[names.index(t)]) for t in cls]
        return y_std, y_cls.astype(np.int64), w_reg, w_cls

    @property
    def _n_outputs(self) -> int:
        return len(self._reg) + sum(len(self.classes_[t]) for t in self._cls)

    def _loss(self, out, yr, yc, w_reg, w_cls):
        """Weighted L1 on the regression outputs plus weighted cross-entropy on the grades."""
        import torch.nn.functional as F

        k = yr.shape[1]
        loss = (out[:, :k] - yr).abs().mean(0) @ w_reg if k else out.sum() * 0
        start = k
        for j, t in enumerate(self._cls):
            m = len(self.classes_[t])
            loss = loss + w_cls[j] * F.cross_entropy(out[:, start : start + m], yc[:, j])
            start += m
        return loss

    def _triplet(self, hidden, yr, w_reg):
        """``triplet_weight`` times the adaptive triplet loss on the head's hidden layer.

        Regression targets only (standard units, weighted by ``loss_weights``); zero when
        ``triplet_weight`` is 0 or there are no regression targets.
        """
        if not self.triplet_weight or yr.shape[1] == 0:
            return hidden.sum() * 0.0
        from skddh.models._losses import adaptive_triplet_loss

        return self.triplet_weight * adaptive_triplet_loss(
            hidden, yr, margin=self.triplet_margin, weights=w_reg
        )

    def _decode(self, out):
        """Raw network outputs (n, ``_n_outputs``) -> predictions in the caller's units."""
        cols = {t: out[:, j] * self.y_scale_[j] + self.y_mean_[j] for j, t in enumerate(self._reg)}
        start = len(self._reg)
        for t in self._cls:
            m = len(self.classes_[t])
            cols[t] = self.classes_[t][out[:, start : start + m].argmax(1)]
            start += m
        pred = np.column_stack([cols[t] for t in self.target_names_])
        if all(np.asarray(cols[t]).dtype.kind in "iuf" for t in self.target_names_):
            pred = pred.astype(float)
        return pred[:, 0] if self._y_1d else pred

    def _probabilities(self, out):
        """Class probabilities from raw outputs: one array per classification target."""
        start, probs = len(self._reg), []
        for t in self._cls:
            m = len(self.classes_[t])
            logits = out[:, start : start + m]
            e = np.exp(logits - logits.max(1, keepdims=True))
            probs.append(e / e.sum(1, keepdims=True))
            start += m
        return probs[0] if len(probs) == 1 else probs
