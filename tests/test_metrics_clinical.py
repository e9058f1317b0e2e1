"""Tests of skddh.metrics._clinical: the per-label clinical report and its patient bootstrap."""

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from scipy.stats import norm
from sklearn import metrics

import skddh.metrics
from skddh.metrics import clinical_report
from skddh.metrics._clinical import _bootstrap, _weighted_auroc

METRICS = ["accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auroc"]


def _data(seed=0, n_patients=30, labels=("cam", "dysplasia", "ischial_spine")):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_patients)
    groups = np.repeat([f"p{i}" for i in range(n_patients)], sizes)
    n = len(groups)
    y = pd.DataFrame({lab: (rng.random(n) < 0.35).astype(int) for lab in labels})
    noise = rng.normal(size=(n, len(labels)))
    score = pd.DataFrame(expit(2.0 * (y.to_numpy() - 0.5) + noise), columns=list(labels))
    return y, score, groups


def _sklearn_values(t, s, cut=0.5):
    p = s >= cut
    return {
        "accuracy": metrics.accuracy_score(t, p),
        "sensitivity": metrics.recall_score(t, p),
        "specificity": metrics.recall_score(t, p, pos_label=0),
        "ppv": metrics.precision_score(t, p),
        "npv": metrics.precision_score(t, p, pos_label=0),
        "f1": metrics.f1_score(t, p),
        "auroc": metrics.roc_auc_score(t, s),
    }


def test_exported():
    assert "clinical_report" in skddh.metrics.__all__


def test_tidy_table_and_point_values_match_sklearn():
    y, score, groups = _data()
    report = clinical_report(y, score, groups=groups, n_bootstraps=200, random_state=0)
    assert report.columns.tolist() == [
        "label",
        "metric",
        "value",
        "low",
        "high",
        "n",
        "n_undefined",
    ]
    assert report.label.tolist() == [lab for lab in y.columns for _ in METRICS]
    assert report.metric.tolist() == METRICS * 3
    for lab in y.columns:
        got = report[report.label == lab].set_index("metric")
        want = _sklearn_values(y[lab].to_numpy(), score[lab].to_numpy())
        assert got["value"].to_dict() == pytest.approx(want)
        t = y[lab].to_numpy() == 1
        p = score[lab].to_numpy() >= 0.5
        n = {"accuracy": len(t), "sensitivity": t.sum(), "specificity": (~t).sum()}
        n.update(ppv=p.sum(), npv=(~p).sum(), f1=len(t), auroc=len(t))
        assert got["n"].to_dict() == n
        assert (got["low"] <= got["value"] + 1e-12).all()
        assert (got["value"] <= got["high"] + 1e-12).all()


def test_per_label_threshold_and_at_or_above_convention():
    y = pd.DataFrame({"a": [1, 1, 0, 0], "b": [1, 0, 1, 0]})
    s = pd.DataFrame({"a": [0.3, 0.2, 0.1, 0.3], "b": [0.7, 0.5, 0.8, 0.2]})
    report = clinical_report(y, s, threshold={"a": 0.3, "b": 0.75}, n_bootstraps=0)
    got = report.set_index(["label", "metric"])["value"]
    # a: called positive at 0.3 (>=): rows 0 and 3; b: at 0.75: row 2 only (a true one).
    assert got["a", "sensitivity"] == 0.5 and got["a", "ppv"] == 0.5
    assert got["b", "sensitivity"] == 0.5 and got["b", "specificity"] == 1.0
    assert got["b", "ppv"] == 1.0 and got["b", "f1"] == pytest.approx(2 / 3)
    assert report[["low", "high"]].isna().all().all()
    assert (report.n_undefined == 0).all()


def test_undefined_point_estimate_is_nan():
    y = np.array([1, 0, 1, 0])
    report = clinical_report(y, [0.1, 0.2, 0.3, 0.4], n_bootstraps=0).set_index("metric")
    assert np.isnan(report.loc["ppv", "value"]) and report.loc["ppv", "n"] == 0
    assert report.loc["sensitivity", "value"] == 0.0


def test_input_forms():
    y, score, groups = _data(seed=1)
    ref = clinical_report(y, score, groups=groups, n_bootstraps=100, random_state=3)
    # Arrays with names; y_score columns in another order; a single label as a Series.
    arr = clinical_report(
        y.to_numpy(),
        score.to_numpy(),
        labels=list(y.columns),
        groups=groups,
        n_bootstraps=100,
        random_state=3,
    )
    pd.testing.assert_frame_equal(arr, ref)
    swapped = clinical_report(
        y, score[score.columns[::-1]], groups=groups, n_bootstraps=100, random_state=3
    )
    pd.testing.assert_frame_equal(swapped, ref)
    one = clinical_report(y["cam"], score["cam"], n_bootstraps=0)
    assert one.label.unique().tolist() == ["cam"]
    plain = clinical_report(y.to_numpy()[:, 0], score.to_numpy()[:, 0], n_bootstraps=0)
    assert plain.label.unique().tolist() == ["label0"]
    assert plain["value"].tolist() == pytest.approx(one["value"].tolist())


def test_reproducible_with_random_state():
    y, score, groups = _data(seed=2)
    a = clinical_report(y, score, groups=groups, n_bootstraps=100, random_state=7)
    b = clinical_report(y, score, groups=groups, n_bootstraps=100, random_state=7)
    c = clinical_report(y, score, groups=groups, n_bootstraps=100, random_state=8)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["low"], c["low"])


def test_weighted_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.4
    s = np.round(rng.random(60), 1)  # many ties
    w = rng.integers(0, 4, size=(60, 25)).astype(float)
    got = _weighted_auroc(w, y, s)
    want = [metrics.roc_auc_score(y, s, sample_weight=w[:, b]) for b in range(25)]
    assert got == pytest.approx(want)
    none = w.copy()
    none[y, 0] = 0.0  # no positive weight in resample 0: undefined
    assert np.isnan(_weighted_auroc(none, y, s)[0])


def test_bootstrap_equals_sklearn_with_draw_counts_as_weights():
    # Each resample is a vector of patient draw counts; every metric of it is what sklearn
    # gives with those counts (spread onto the patients' images) as sample_weight.
    y, score, groups = _data(seed=3, n_patients=12)
    codes = pd.factorize(groups)[0]
    t, s = y.to_numpy() == 1, score.to_numpy()
    boot = _bootstrap(t, s >= 0.5, s, codes, 12, 8, np.random.RandomState(0))
    draws = np.random.RandomState(0).multinomial(12, np.full(12, 1 / 12), size=8)
    checked = 0
    for b in range(8):
        w = draws[b][codes].astype(float)
        keep = w > 0
        for j in range(t.shape[1]):
            tj, sj, wj = t[keep, j], s[keep, j], w[keep]
            pj = sj >= 0.5
            if tj.all() or not tj.any() or pj.all() or not pj.any():
                continue  # an undefined metric: covered by the next test
            want = {
                "accuracy": metrics.accuracy_score(tj, pj, sample_weight=wj),
                "sensitivity": metrics.recall_score(tj, pj, sample_weight=wj),
                "specificity": metrics.recall_score(tj, pj, pos_label=0, sample_weight=wj),
                "ppv": metrics.precision_score(tj, pj, sample_weight=wj),
                "npv": metrics.precision_score(tj, pj, pos_label=0, sample_weight=wj),
                "f1": metrics.f1_score(tj, pj, sample_weight=wj),
                "auroc": metrics.roc_auc_score(tj, sj, sample_weight=wj),
            }
            assert {m: boot[m][b, j] for m in METRICS} == pytest.approx(want)
            checked += 1
    assert checked >= 12


def test_groups_keep_a_patients_images_together():
    # Every patient has 3 identical images: resampling patients must give exactly the
    # image-level bootstrap of one image per patient (same draws, counts scaled by 3).
    y, score, _ = _data(seed=4, n_patients=40)
    y1, s1 = y.iloc[:40].reset_index(drop=True), score.iloc[:40].reset_index(drop=True)
    y3 = pd.concat([y1] * 3, ignore_index=True)
    s3 = pd.concat([s1] * 3, ignore_index=True)
    groups = np.tile(np.arange(40), 3)
    single = clinical_report(y1, s1, n_bootstraps=300, random_state=5)
    tripled = clinical_report(y3, s3, groups=groups, n_bootstraps=300, random_state=5)
    cols = ["value", "low", "high", "n_undefined"]
    pd.testing.assert_frame_equal(single[cols], tripled[cols])
    # Ignoring the groups treats 120 images as independent: intervals too narrow.
    naive = clinical_report(y3, s3, n_bootstraps=300, random_state=5)
    assert ((naive.high - naive.low) < (tripled.high - tripled.low)).mean() > 0.8


def test_one_class_resamples_are_counted_and_left_out():
    # One positive patient in 10: a resample misses it with probability 0.9**10 = 0.349,
    # and then sensitivity and AUROC are undefined there.
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 3)
    y = np.zeros(30, dtype=int)
    y[:3] = 1
    score = np.clip(0.6 * y + 0.3 * rng.random(30), 0, 1)
    report = clinical_report(y, score, groups=groups, n_bootstraps=1000, random_state=0)
    report = report.set_index("metric")
    missed = report.loc["sensitivity", "n_undefined"]
    assert abs(missed - 349) < 60
    assert report.loc["auroc", "n_undefined"] == missed
    assert report.loc["specificity", "n_undefined"] == 0
    assert np.isfinite(report.loc["sensitivity", ["low", "high"]].astype(float)).all()


def _clustered(seed, n_patients=80, n_draws=200):
    """``n_draws`` independent data sets (one label column each) on one patient design.

    Positives' logits share a patient effect (latent intra-patient correlation 0.98), so a
    patient's images are mostly all detected or all missed. Sensitivity at 0.5 is
    P(1 + 2 a + 0.3 e >= 0) = Phi(1 / sqrt(4.09)) = 0.6895.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 9, n_patients)
    groups = np.repeat(np.arange(n_patients), sizes)
    n = len(groups)
    a = rng.normal(size=(n_patients, n_draws))[groups]
    y = rng.random((n, n_draws)) < 0.4
    logit = np.where(
        y,
        1.0 + 2.0 * a + 0.3 * rng.normal(size=(n, n_draws)),
        -1.5 + rng.normal(size=(n, n_draws)),
    )
    return y.astype(int), expit(logit), groups, float(norm.cdf(1 / np.sqrt(4.09)))


def test_patient_bootstrap_covers_known_sensitivity():
    # 200 independent data sets as 200 label columns of one call (the resamples are shared
    # across columns, each column's interval is still its own bootstrap interval).
    y, score, groups, truth = _clustered(seed=1)
    report = clinical_report(y, score, groups=groups, n_bootstraps=300, random_state=0)
    sens = report[report.metric == "sensitivity"]
    covered = ((sens.low <= truth) & (truth <= sens.high)).mean()
    # Nominal 0.95; binomial sd over 200 draws is 0.015. This seed: 0.93; 0.958 over 1,000.
    assert 0.90 <= covered <= 0.99, covered
    # Control: the image-level bootstrap on the same data ignores the clustering and
    # under-covers (this seed: 0.81; 0.77 over 1,000 draws).
    naive = clinical_report(y, score, n_bootstraps=300, random_state=0)
    sens0 = naive[naive.metric == "sensitivity"]
    covered0 = ((sens0.low <= truth) & (truth <= sens0.high)).mean()
    assert covered0 < 0.86, covered0


def _with_nan(frame, row, col):
    out = frame.astype(float)
    out.loc[row, col] = np.nan
    return out


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda y, s, g: (y.iloc[:-1], s, g), ValueError, "shape"),
        (lambda y, s, g: (y, s, g[:-1]), ValueError, "groups has shape"),
        (lambda y, s, g: (y.assign(cam=0), s, g), ValueError, "label 'cam' has only one class"),
        (lambda y, s, g: (y.assign(cam=2), s, g), ValueError, "only 0/1.*'cam'"),
        (
            lambda y, s, g: (_with_nan(y, 3, "dysplasia"), s, g),
            ValueError,
            "y_true holds a missing value.*'dysplasia' at row 3",
        ),
        (
            lambda y, s, g: (y, _with_nan(s, 2, "cam"), g),
            ValueError,
            "y_score holds a missing value.*'cam' at row 2",
        ),
        (lambda y, s, g: (y, s * 3, g), ValueError, r"probabilities in \[0, 1\]"),
        (lambda y, s, g: (y, s.rename(columns={"cam": "x"}), g), ValueError, "columns"),
        (lambda y, s, g: (y, s, np.where(np.arange(len(g)) == 0, None, g)), ValueError, "groups"),
    ],
)
def test_input_errors(change, error, match):
    y, score, groups = _data(seed=5)
    y, score, groups = change(y, score, groups)
    with pytest.raises(error, match=match):
        clinical_report(y, score, groups=groups, n_bootstraps=10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": {"cam": 0.5}}, "missing: \\['dysplasia', 'ischial_spine'\\]"),
        ({"threshold": {"cam": 0.5, "dysplasia": 0.5, "ischial_spine": 0.5, "x": 0.2}}, "x"),
        ({"threshold": 1.5}, "threshold for label 'cam'"),
        ({"n_bootstraps": -1}, "n_bootstraps"),
        ({"n_bootstraps": 10.0}, "n_bootstraps"),
        ({"confidence_level": 95}, "confidence_level"),
        ({"labels": ["a", "b"]}, "labels"),
    ],
)
def test_argument_errors(kwargs, match):
    y, score, groups = _data(seed=5)
    if "labels" in kwargs:
        y, score = y.to_numpy(), score.to_numpy()
    with pytest.raises(ValueError, match=match):
        clinical_report(y, score, groups=groups, **kwargs)
