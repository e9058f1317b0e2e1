"""Tests of SelfTrainingRegressor: the pure statistics, the contract, and whether it helps."""

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn import config_context
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import skddh.models._selftraining as st_module
from skddh import OneSidedConformalRegressor, SelfTrainingRegressor
from skddh.models._selftraining import crossfit_folds, ensemble_agreement, trusted_mask


# ---- the pure statistics -------------------------------------------------------------------
def test_crossfit_folds_hold_each_unit_out_once_per_repeat():
    rng = np.random.default_rng(0)
    units = np.repeat(np.arange(40), rng.integers(1, 4, 40))  # subjects with 1-3 rows
    labeled = np.isin(units, np.arange(0, 40, 4))  # every fourth subject labelled
    folds = crossfit_folds(units, labeled, 5, 3, random_state=0)
    assert len(folds) == 15
    for r in range(3):
        tests = [test for _, test in folds[5 * r : 5 * r + 5]]
        np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(len(units)))
        for train, test in folds[5 * r : 5 * r + 5]:
            assert not set(units[train]) & set(units[test])  # a subject is never split
            assert len(np.union1d(train, test)) == len(units)
        # the 10 labelled subjects are dealt evenly: 2 per fold
        assert [len(np.unique(units[t][labeled[t]])) for t in tests] == [2] * 5
    again = crossfit_folds(units, labeled, 5, 3, random_state=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))


def test_ensemble_agreement_is_mean_and_scaled_sd():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(4, 6, 2))
    scale = np.array([2.0, 0.5])
    pseudo, d = ensemble_agreement(p, scale)
    np.testing.assert_allclose(pseudo, p.mean(0))
    np.testing.assert_allclose(d, (p.std(0, ddof=1) / scale).max(1))
    with pytest.raises(ValueError, match="n_predictions >= 2"):
        ensemble_agreement(p[:1], scale)
    with pytest.raises(ValueError, match="positive"):
        ensemble_agreement(p, [1.0, 0.0])


def test_trusted_mask_counts_ties_nan_and_level():
    d = np.array([0.2, np.nan, 0.1, 0.2, 0.5, 0.0])
    assert trusted_mask(d, 0.5).tolist() == [True, False, True, False, False, True]
    assert trusted_mask(d, 0.34).sum() == 3  # ceil(0.34 * 6)
    assert trusted_mask(d, 1.0).all()  # NaN last, but everything is trusted
    assert trusted_mask(d, 1.0, max_disagreement=0.15).tolist() == [
        False,
        False,
        True,
        False,
        False,
        True,
    ]


# ---- the scikit-learn contract ---------------------------------------------------------------
@parametrize_with_checks(
    [SelfTrainingRegressor(Ridge())],
    expected_failed_checks=lambda est: {
        "check_non_transformer_estimators_n_iter": (
            "n_iter_ counts self-training rounds and is 0 when every row is labelled, as in "
            "the checks' data (scikit-learn marks SelfTrainingClassifier the same way)."
        )
    },
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _smooth(n=120, n_labeled=30, seed=0, n_subjects=None):
    """A smooth 2-target problem; rows after ``n_labeled`` unlabelled; 3 rows per subject."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 2))
    y = pd.DataFrame(
        {
            "alpha": 60 + 5 * np.sin(3 * X[:, 0]) + rng.normal(0, 0.3, n),
            "coverage": 50 + 8 * X[:, 1] ** 2 + rng.normal(0, 0.3, n),
        }
    )
    y.iloc[n_labeled:] = np.nan
    groups = np.arange(n) // 3 if n_subjects is None else rng.integers(0, n_subjects, n)
    return X, y, groups


class SpyRidge(Ridge):
    """Ridge that logs what every fit saw (row ids in column 0) and every predict asked."""

    log: list = []

    def fit(self, X, y, sample_weight=None):
        self.spy_id_ = len(SpyRidge.log)
        SpyRidge.log.append(
            {
                "id": self.spy_id_,
                "rows": X[:, 0].astype(int),
                "y": np.asarray(y, dtype=float).copy(),
                "w": None if sample_weight is None else np.asarray(sample_weight).copy(),
                "predicted": [],
            }
        )
        return super().fit(X[:, 1:], y, sample_weight=sample_weight)

    def predict(self, X):
        SpyRidge.log[self.spy_id_]["predicted"].append(X[:, 0].astype(int))
        return super().predict(X[:, 1:])


def _with_row_ids(X):
    return np.column_stack([np.arange(len(X)), X])


def test_unlabelled_targets_never_reach_a_fit_and_members_never_score_what_they_saw():
    X, y, groups = _smooth(n_subjects=25)  # subjects mix labelled and unlabelled rows
    Xi = _with_row_ids(X)
    labeled = y.notna().all(1).to_numpy()
    SpyRidge.log = []
    model = SelfTrainingRegressor(SpyRidge(), max_iter=3, random_state=0)
    model.fit(Xi, y, groups=groups)
    log = SpyRidge.log
    final = log[-1]
    assert len(log) == 15 * model.n_iter_ + 1  # 5 folds x 3 repeats per round, then the final
    y_true = y.to_numpy()
    for fit in log:
        assert np.isfinite(fit["y"]).all()  # no NaN target ever reaches the base estimator
        lab = labeled[fit["rows"]]
        np.testing.assert_array_equal(fit["y"][lab], y_true[fit["rows"][lab]])
        seen = set(groups[fit["rows"]])
        for asked in fit["predicted"]:
            assert not labeled[asked].any()  # members only score unlabelled rows
            assert not seen & set(groups[asked])  # ... of subjects they were not fitted on
    for fit in log[:15]:  # round 1: labelled rows only
        assert labeled[fit["rows"]].all()
    # the final fit: labelled rows plus the trusted ones, with their last pseudo-targets
    np.testing.assert_array_equal(final["rows"], np.flatnonzero(labeled | model.trusted_))
    pseudo_rows = final["rows"][~labeled[final["rows"]]]
    np.testing.assert_array_equal(
        final["y"][~labeled[final["rows"]]], model.pseudo_targets_[pseudo_rows]
    )
    assert not (model.trusted_ & labeled).any()
    assert np.isnan(model.pseudo_targets_[labeled]).all()
    assert np.isfinite(model.pseudo_targets_[~labeled]).all()


def test_fully_labelled_is_exactly_the_base_fit():
    X, y, _ = _smooth(n_labeled=120)
    for target in (y, y["alpha"].to_numpy()):
        base = KNeighborsRegressor(4)
        model = SelfTrainingRegressor(base).fit(X, target)
        np.testing.assert_array_equal(model.predict(X), clone(base).fit(X, target).predict(X))
        assert model.n_iter_ == 0 and model.termination_condition_ == "all_labeled"
        assert model.history_.empty and not model.trusted_.any()


def test_rounds_revise_pseudo_targets_and_keep_the_trusted_share():
    X, y, groups = _smooth(n=150, n_labeled=25)
    model = SelfTrainingRegressor(
        KNeighborsRegressor(3), trust_fraction=0.4, max_iter=6, random_state=0
    ).fit(X, y, groups=groups)
    h = model.history_
    assert list(h.columns) == list(st_module.HISTORY_COLUMNS)
    assert len(h) == model.n_iter_ >= 2
    assert (h["n_trusted"] == 50).all()  # ceil(0.4 * 125)
    assert h["n_fit"].iloc[0] == 25 and (h["n_fit"].iloc[1:] == 75).all()
    assert np.isnan(h["pseudo_change"].iloc[0]) and h["pseudo_change"].iloc[1] > 0
    assert model.termination_condition_ in ("no_change", "max_iter")
    if model.termination_condition_ == "no_change":
        assert h["n_added"].iloc[-1] == 0 and h["n_dropped"].iloc[-1] == 0
    d = model.disagreement_[~model.labeled_mask_]
    tr = model.trusted_[~model.labeled_mask_]
    assert d[tr].max() <= d[~tr].min()
    level = float(np.quantile(d, 0.2))
    capped = clone(model).set_params(max_disagreement=level).fit(X, y, groups=groups)
    assert capped.history_["n_trusted"].iloc[0] <= 50


def test_pseudo_weight_reaches_the_base_estimator():
    X, y, groups = _smooth()
    Xi = _with_row_ids(X)
    labeled = y.notna().all(1).to_numpy()
    w_user = np.linspace(1, 2, len(X))
    SpyRidge.log = []
    SelfTrainingRegressor(SpyRidge(), pseudo_weight=0.25, max_iter=2, random_state=0).fit(
        Xi, y, groups=groups, sample_weight=w_user
    )
    for fit in SpyRidge.log:
        rows = fit["rows"]
        np.testing.assert_allclose(fit["w"], np.where(labeled[rows], 1.0, 0.25) * w_user[rows])


# ---- composition ------------------------------------------------------------------------------
def test_clone_pickle_and_pipelines():
    X, y, groups = _smooth()
    model = SelfTrainingRegressor(
        make_pipeline(StandardScaler(), KNeighborsRegressor(3)), max_iter=2, random_state=0
    )
    assert clone(model).get_params()["trust_fraction"] == 0.5
    fitted = clone(model).fit(X, y, groups=groups)
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict(X), fitted.predict(X))
    # inside a Pipeline: fit parameters by step name reach the estimator without routing
    pipe = make_pipeline(StandardScaler(), clone(model))
    pipe.fit(X, y, selftrainingregressor__groups=groups)
    assert pipe.predict(X).shape == (len(X), 2)
    # image-shaped X is passed on as is (the base estimator flattens it)
    images = np.repeat(X[:, :, None], 3, axis=2)
    flat = make_pipeline(FunctionTransformer(lambda a: a.reshape(len(a), -1)), Ridge())
    img_model = SelfTrainingRegressor(flat, max_iter=1, random_state=0).fit(images, y)
    assert img_model.predict(images[:4]).shape == (4, 2)
    # a base estimator that allows NaN in X keeps that (its tags are delegated)
    X_nan = X.copy()
    X_nan[5, 0] = np.nan
    hgb = HistGradientBoostingRegressor(max_iter=10)
    SelfTrainingRegressor(hgb, n_folds=2, n_repeats=2, max_iter=1).fit(X_nan, y["alpha"])


def _record_units(monkeypatch):
    seen = []
    original = st_module.crossfit_folds

    def spy(units, *args, **kwargs):
        seen.append(np.asarray(units).copy())
        return original(units, *args, **kwargs)

    monkeypatch.setattr(st_module, "crossfit_folds", spy)
    return seen


def test_gridsearch_routes_groups_to_the_folds(monkeypatch):
    X, y, groups = _smooth(n=150, n_labeled=60, n_subjects=30)
    seen = _record_units(monkeypatch)
    grid = {"trust_fraction": [0.3, 0.8]}
    with config_context(enable_metadata_routing=True):
        model = SelfTrainingRegressor(
            KNeighborsRegressor(3), max_iter=2, random_state=0
        ).set_fit_request(groups=True)
        search = GridSearchCV(model, grid, cv=GroupKFold(3)).fit(X, y, groups=groups)
    assert len(seen) == 2 * 3 + 1  # every candidate and fold, then the refit
    for units in seen:
        assert len(np.unique(units)) < len(units) and np.isin(units, groups).all()
    # the default score leaves unlabelled rows out, so folds that hold them score
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    # without routing, GridSearchCV gives groups to its splitter only: row-level folds
    seen.clear()
    GridSearchCV(clone(model), grid, cv=GroupKFold(3)).fit(X, y, groups=groups)
    assert all(np.array_equal(units, np.arange(len(units))) for units in seen)


def test_conformal_bounds_around_a_frozen_self_trained_model():
    X, y, groups = _smooth(n=240, n_labeled=240, n_subjects=60, seed=3)
    cal = groups >= 45  # 15 calibration subjects, labelled, never used in fitting
    y_train = y.copy()
    y_train.loc[(~cal) & (groups % 3 != 0)] = np.nan  # a third of training subjects labelled
    st = SelfTrainingRegressor(KNeighborsRegressor(3), max_iter=2, random_state=0)
    st.fit(X[~cal], y_train[~cal], groups=groups[~cal])
    conformal = OneSidedConformalRegressor(FrozenEstimator(st), delta=0.2)
    conformal.fit(X[cal], y[cal], groups=groups[cal])
    lower = conformal.predict_lower(X[:5])
    assert np.isfinite(lower).all() and (lower <= conformal.predict(X[:5])).all()
    # fully labelled, the self-trainer is its base estimator inside the conformal split
    OneSidedConformalRegressor(SelfTrainingRegressor(Ridge()), random_state=0).fit(
        X, y, groups=groups
    )


@pytest.mark.xfail(
    strict=True,
    raises=ValueError,
    reason="OneSidedConformalRegressor refuses NaN targets and keeps groups to itself; it "
    "would have to put unlabelled rows in the training part and forward their groups "
    "(skddh/conformal/_split.py). Remove the mark when it does.",
)
def test_conformal_around_self_training_with_unlabelled_rows():
    X, y, groups = _smooth(n=240, n_labeled=120, n_subjects=60)
    model = OneSidedConformalRegressor(SelfTrainingRegressor(KNeighborsRegressor(3)))
    model.fit(X, y, groups=groups)


def test_measurement_regressor_composes():
    from skddh import MeasurementRegressor

    X, y, groups = _smooth(n=60, n_labeled=24)
    head = MeasurementRegressor(hidden=8, epochs=5, batch_size=32, device="cpu", random_state=0)
    model = SelfTrainingRegressor(head, n_folds=2, n_repeats=2, max_iter=1, random_state=0)
    model.fit(X.astype("float32"), y, groups=groups)
    assert list(model.estimator_.target_names_) == ["alpha", "coverage"]  # names reach it
    assert model.predict(X[:3].astype("float32")).shape == (3, 2)
    assert np.isfinite(model.pseudo_targets_[~model.labeled_mask_]).all()


# ---- bad input --------------------------------------------------------------------------------
def _bad(case):
    X, y, groups = _smooth(n=50, n_labeled=20)
    fit_kw = {}
    if case == "all unlabelled":
        y.iloc[:] = np.nan
    elif case == "non-numeric target":
        y["beta"] = "a"
    elif case == "string array":
        y = np.array(["1.0", "x"] * 25)
    elif case == "partial row":
        y.iloc[3, 1] = np.nan
    elif case == "infinite target":
        y.iloc[4, 0] = np.inf
    elif case == "NaN in X":
        X[7, 1] = np.nan
    elif case == "X longer":
        X = np.vstack([X, X[:1]])
    elif case == "groups shorter":
        fit_kw["groups"] = groups[:-1]
    elif case == "missing subject":
        fit_kw["groups"] = np.where(np.arange(50) == 9, np.nan, groups)
    elif case == "too few labelled subjects":
        fit_kw["groups"] = np.where(np.arange(50) < 20, np.arange(50) % 3, np.arange(50))
    return X, y, fit_kw


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("all unlabelled", ValueError, "no labelled row: all 50 rows are NaN"),
        ("non-numeric target", TypeError, "target 'beta' has dtype"),
        ("string array", TypeError, "y must be numeric"),
        ("partial row", ValueError, "y row 3 has target 'coverage' missing"),
        ("infinite target", ValueError, "infinite value at row 4, target 'alpha'"),
        ("NaN in X", ValueError, "X has a NaN or infinite value at row 7, column 1"),
        ("X longer", ValueError, "X has 51 samples but y has 50"),
        ("groups shorter", ValueError, r"groups must have shape \(50,\)"),
        ("missing subject", ValueError, "missing subject id at row 9"),
        ("too few labelled subjects", ValueError, "n_folds=5 needs at least 5 labelled subj"),
    ],
)
def test_bad_input_names_the_problem(case, error, match):
    X, y, fit_kw = _bad(case)
    with pytest.raises(error, match=match):
        SelfTrainingRegressor(Ridge()).fit(X, y, **fit_kw)


@pytest.mark.parametrize(
    "params", [{"trust_fraction": 0.0}, {"n_repeats": 1}, {"pseudo_weight": 1.5}]
)
def test_bad_parameters(params):
    X, y, _ = _smooth()
    with pytest.raises(ValueError, match=next(iter(params))):
        SelfTrainingRegressor(Ridge(), **params).fit(X, y)


# ---- statistics as statistics ---------------------------------------------------------------
def _spiral(rng, n, turns=2.0, width=0.02):
    """Points along a two-turn spiral; the target is the position along it."""
    t = rng.uniform(0, 1, n)
    theta = 2 * np.pi * turns * t
    radius = 0.3 + t
    X = np.column_stack([radius * np.cos(theta), radius * np.sin(theta)])
    return X + rng.normal(0, width, (n, 2)), t


def test_self_training_helps_where_the_naive_variant_does_not():
    # 30 labelled points on a spiral whose arms lie closer than the labelled spacing: a
    # 3-nearest-neighbour model on the labels alone averages across arms. 400 unlabelled
    # points trace the arms; trusted pseudo-labels carry the labels along them. The naive
    # variant trusts every first-round (cross-arm) pseudo-label and never revises it.
    mae = {"labelled only": [], "self-training": [], "naive": []}
    for seed in range(25):
        rng = np.random.default_rng(seed)
        X, t = _spiral(rng, 430)
        X_test, t_test = _spiral(rng, 300)
        y = t + rng.normal(0, 0.02, 430)
        y[30:] = np.nan
        base = KNeighborsRegressor(3)
        models = {
            "labelled only": clone(base).fit(X[:30], y[:30]),
            "self-training": SelfTrainingRegressor(base, max_iter=5, random_state=seed),
            "naive": SelfTrainingRegressor(base, trust_fraction=1.0, max_iter=1, random_state=seed),
        }
        for name, model in models.items():
            if name != "labelled only":
                model.fit(X, y)
            mae[name].append(mean_absolute_error(t_test, model.predict(X_test)))
    sup, st, naive = (np.array(mae[k]) for k in ("labelled only", "self-training", "naive"))
    # observed: mean MAE 0.098 / 0.074 / 0.116; self-training better on 25/25 draws
    assert (st < sup).sum() >= 20 and st.mean() < 0.9 * sup.mean()
    # the control can fail: trusting everything from round 1 is no better than the labels
    assert (st < naive).sum() >= 20 and st.mean() < 0.9 * naive.mean()
    assert naive.mean() > 0.98 * sup.mean()
