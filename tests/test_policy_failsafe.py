"""A hip is never passed on garbage, whatever the base estimator does with it (issue 10, item 1)."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.multioutput import MultiOutputRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skddh import OneSidedConformalRegressor, SelectiveImagingPolicy
from skddh.policy import rule_margin
from skddh.policy._policy import untrustworthy_rows


def _cohort(n=240, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = pd.DataFrame(
        {
            "alpha": 66 + 3 * X[:, 0] + rng.normal(0, 0.5, n),
            "coverage": 60 + 3 * X[:, 1] + rng.normal(0, 0.5, n),
        }
    )
    return X, y, np.arange(n) // 2


def test_nan_tolerant_base_does_not_pass_an_all_nan_row():
    X, y, g = _cohort()
    base = MultiOutputRegressor(HistGradientBoostingRegressor(max_iter=30, random_state=0))
    policy = SelectiveImagingPolicy(
        OneSidedConformalRegressor(base, random_state=0), rule="or", delta=0.3
    ).fit(X, y, groups=g)
    new = np.vstack([X[:5], np.full((1, 3), np.nan), [[0.5, np.inf, 0.1]]])
    lower = policy.predict_lower(new)
    assert np.isfinite(lower.to_numpy()[5]).all()  # the base predicts something for NaN ...
    decision = policy.predict(new)
    assert decision[:5].sum() > 0  # healthy hips do pass
    assert decision[5] == 0 and decision[6] == 0  # ... but the policy refers the garbage rows
    assert np.isneginf(policy.decision_function(new)[5:]).all()


class _Corrupted(RegressorMixin, BaseEstimator):
    """A fitted model whose weights were corrupted on disk: finite, absurd predictions."""

    def fit(self, X, y):
        self.n_features_in_ = np.asarray(X).shape[1]
        self.scale_ = 1.0
        return self

    def predict(self, X):
        return np.full((len(X), 2), 65.0) * self.scale_


def test_corrupted_weights_are_referred():
    X, y, g = _cohort()
    policy = SelectiveImagingPolicy(
        OneSidedConformalRegressor(_Corrupted(), random_state=0), rule="or", delta=0.3
    ).fit(X, y, groups=g)
    assert policy.predict(X[:10]).sum() == 10  # constant 65: every hip clears
    policy.estimator_.estimator_.scale_ = 1e18  # the file was corrupted after calibration
    assert policy.predict(X[:10]).sum() == 0
    assert (policy.predict_lower(X[:10])["alpha"] > 90).all()


def test_blank_and_constant_images_are_referred():
    rng = np.random.default_rng(0)
    images = rng.random((120, 8, 8))
    y = pd.DataFrame({"alpha": np.full(120, 70.0), "coverage": np.full(120, 70.0)})
    y += rng.normal(0, 0.5, (120, 2))
    flatten = FunctionTransformer(lambda a: np.asarray(a).reshape(len(a), -1).mean(1)[:, None])
    policy = SelectiveImagingPolicy(
        OneSidedConformalRegressor(
            make_pipeline(flatten, MultiOutputRegressor(HistGradientBoostingRegressor())),
            delta=0.3,
            random_state=0,
        ),
        rule="and",
        delta=0.3,
    ).fit(images, y, groups=np.arange(120) // 3)
    new = np.stack([images[0], np.ones((8, 8)), np.zeros((8, 8)), np.full((8, 8), 0.5)])
    decision = policy.predict(new)
    assert decision[0] == 1
    assert (decision[1:] == 0).all()


def test_untrustworthy_rows():
    a = np.random.default_rng(0).random((4, 5, 5)).astype(np.float32)
    a[1] = 0.0
    a[2, 1, 1] = np.inf
    assert untrustworthy_rows(a).tolist() == [False, True, True, False]
    u8 = (a[[0, 3]] * 255).astype(np.uint8)
    assert untrustworthy_rows(u8).tolist() == [False, False]
    feats = np.array([[1.0, 1.0], [np.nan, 2.0]])
    assert untrustworthy_rows(feats).tolist() == [False, True]  # constant features are fine
    assert untrustworthy_rows(["a.png", "b.png"]).tolist() == [False, False]
    assert untrustworthy_rows(pd.DataFrame(feats)).tolist() == [False, True]


@pytest.mark.parametrize("value", [90.5, 1e20, np.inf, np.nan])
def test_non_physical_bounds_refer(value):
    lb = {"alpha": [70.0, value], "coverage": [70.0, 70.0]}
    margin = rule_margin(lb, {"alpha": 60.0, "coverage": 50.0}, "or")
    assert margin[0] == 20.0 and np.isneginf(margin[1])


def test_policy_cv_refuses_folds_that_split_a_subject():
    from sklearn.model_selection import KFold

    from skddh import SelectiveImagingPolicyCV

    X, y, g = _cohort()
    search = SelectiveImagingPolicyCV(
        OneSidedConformalRegressor(random_state=0), deltas=[0.3], cv=KFold(4, shuffle=True)
    )
    with pytest.raises(ValueError, match="subject.*in both its training and test part"):
        search.fit(X, y, groups=g)
