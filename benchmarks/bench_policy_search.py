"""How much does tuning rule and delta cost? A 100-delta x 3-rule policy search, four ways.

Baseline: one 5-fold ``cross_validate`` of the conformal regressor the policy fits (the cost
of fitting once per fold), timed in the same run. Against it:

- plain ``GridSearchCV(SelectiveImagingPolicy, {"rule", "delta"})``: refits per candidate;
- the same with ``memory=`` (the fitted regressor cached, as ``Pipeline(memory=...)`` does);
- ``SelectiveImagingPolicyCV``: one fit per fold, every candidate scored from it.

Data: the study cohort's ultrasound images (``make_hip_cohort(random_state=0)``, training and
calibration subjects), as 512-d features from a fixed random projection of 32 px pixels (a
stand-in for frozen SimSiam features), and the paper's head shape, an MLP 512 -> 128 -> 3.
Folds are ``GroupKFold(5)`` by subject; groups reach each calibration split by metadata
routing.

    python benchmarks/bench_policy_search.py [--n-deltas 100] [--plain-deltas 100]
        [--repeat 3] [--images]

``--images`` searches the DESIGN.md pipeline instead: ``FrozenEstimator(SimSiamFeaturizer)``
+ ``MeasurementRegressor`` on the 32 px images themselves.

``--plain-deltas`` below ``--n-deltas`` times plain GridSearchCV on that many deltas and
scales its time linearly (its cost is per candidate), saying so in the table; it is timed
once, the others ``--repeat`` times (mean, min-max, and each repetition's ratio to its own
baseline). Each repetition of the cached search starts from an empty disk cache and empty
in-process LRUs.
"""

import argparse
import os
import platform
import tempfile
import time
import warnings

import numpy as np
import sklearn
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_validate
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skddh import (
    MeasurementRegressor,
    OneSidedConformalRegressor,
    SelectiveImagingPolicy,
    SelectiveImagingPolicyCV,
    SimSiamFeaturizer,
    make_hip_cohort,
    make_policy_scorer,
)
from skddh.policy import _cache

RULES = ["alpha", "or", "and"]
BASELINE = "baseline: cross_validate of the regressor (5 fits)"
PLAIN = "GridSearchCV, plain"
CACHED = "GridSearchCV, memory= (cached fits)"
TWIN = "SelectiveImagingPolicyCV (incl. final refit)"
ROWS = [BASELINE, PLAIN, CACHED, TWIN]


def _data():
    cohort = make_hip_cohort(random_state=0, image_size=32)
    us = cohort.us
    keep = np.asarray(us.split) != "test"
    pixels = us.images[keep].reshape(keep.sum(), -1).astype(np.float32) / 255.0
    proj = np.random.default_rng(0).normal(size=(pixels.shape[1], 512)) / np.sqrt(pixels.shape[1])
    X = np.tanh((pixels - pixels.mean(0)) @ proj).astype(np.float32)
    y = us.targets[keep].reset_index(drop=True)
    groups = np.asarray(us.subject)[keep]
    return X, y, groups


def _image_data():
    """The same cases as raw 32 px images, and a frozen SimSiam encoder for them."""
    cohort = make_hip_cohort(random_state=0, image_size=32, n_registry_us=512)
    us = cohort.us
    keep = np.asarray(us.split) != "test"
    encoder = SimSiamFeaturizer(
        image_size=32, epochs=2, batch_size=64, device="cpu", random_state=0
    ).fit(cohort.registry_us)
    y = us.targets[keep].reset_index(drop=True)
    return us.images[keep], y, np.asarray(us.subject)[keep], encoder


def _regressor(encoder=None):
    if encoder is None:
        head = MLPRegressor(hidden_layer_sizes=(128,), max_iter=300, random_state=0)
        model = make_pipeline(StandardScaler(), head)
    else:  # the DESIGN.md pipeline: frozen encoder + the paper's head, on images
        model = make_pipeline(
            FrozenEstimator(encoder), MeasurementRegressor(device="cpu", random_state=0)
        )
    return OneSidedConformalRegressor(model, calibration_size=0.2, random_state=0)


def _timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-deltas", type=int, default=100)
    ap.add_argument("--plain-deltas", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (plain search: once)")
    ap.add_argument(
        "--images",
        action="store_true",
        help="search the frozen-encoder + head pipeline on 32 px images instead of features",
    )
    args = ap.parse_args()
    # The small MLP stops at max_iter before converging on some folds; that is not the question.
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*Maximum iterations.*")
    if args.images:
        X, y, groups, encoder = _image_data()
    else:
        (X, y, groups), encoder = _data(), None
    deltas = [float(d) for d in np.round(np.linspace(0.02, 0.5, args.n_deltas), 4)]
    scorer = make_policy_scorer(radiation_cost=1.0, miss_penalty=10.0)
    cv = GroupKFold(5)
    n_cand = len(deltas) * len(RULES)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"sklearn {sklearn.__version__}; n={len(y)} cases, {len(set(groups))} subjects, "
        f"X {X.shape[1:]}; {len(deltas)} deltas x {len(RULES)} rules = {n_cand} "
        "candidates, GroupKFold(5)"
    )
    times = {name: [] for name in ROWS}
    notes = dict.fromkeys(ROWS, "")
    # The policy raises without subject ids: groups reach it (and each calibration split)
    # by metadata routing.
    with sklearn.config_context(enable_metadata_routing=True):
        for rep in range(args.repeat):
            base = _regressor(encoder).set_fit_request(groups=True)
            t, _ = _timed(cross_validate, base, X, y, params={"groups": groups}, cv=cv)
            times[BASELINE].append(t)

            if rep == 0 and args.plain_deltas > 0:  # ~300x: timed once, it is not the question
                step = max(1, len(deltas) // args.plain_deltas)
                plain_deltas = deltas[::step][: args.plain_deltas]
                policy = SelectiveImagingPolicy(_regressor(encoder)).set_fit_request(groups=True)
                search = GridSearchCV(
                    policy, {"rule": RULES, "delta": plain_deltas}, scoring=scorer, cv=cv
                )
                t, _ = _timed(search.set_params(refit=False).fit, X, y, groups=groups)
                scale = len(deltas) / len(plain_deltas)
                times[PLAIN].append(t * scale)
                notes[PLAIN] = "one run" + (
                    f", on {len(plain_deltas)} deltas, scaled x{scale:g}" if scale != 1 else ""
                )

            # Content keys would let this repetition hit the last one's fits: start empty.
            _cache.FITS.clear()
            _cache.PREDICTIONS.clear()
            with tempfile.TemporaryDirectory() as cache:
                policy = SelectiveImagingPolicy(_regressor(encoder), memory=cache)
                search = GridSearchCV(
                    policy.set_fit_request(groups=True),
                    {"rule": RULES, "delta": deltas},
                    scoring=scorer,
                    cv=cv,
                    refit=False,
                )
                t, _ = _timed(search.fit, X, y, groups=groups)
                times[CACHED].append(t)
                cached_best = search.best_score_

            twin = SelectiveImagingPolicyCV(_regressor(encoder), rules=RULES, deltas=deltas, cv=cv)
            # It includes its final refit on all data (one more fit than the GridSearchCVs).
            t, _ = _timed(twin.fit, X, y, groups=groups)
            times[TWIN].append(t)
            assert abs(twin.best_score_ - cached_best) < 1e-12, (twin.best_score_, cached_best)

    base_t = np.array(times[BASELINE])
    print(f"\n{args.repeat} repetition(s); mean (min-max); ratios per repetition, then averaged")
    print(f"| {'method':<50} | {'time (s)':>20} | {'x baseline':>18} | note")
    print(f"|{'-' * 52}|{'-' * 22}|{'-' * 20}|------")
    for name in ROWS:
        t = np.array(times[name])
        if not len(t):
            continue
        r = t / base_t[: len(t)]
        print(
            f"| {name:<50} | {t.mean():7.2f} ({t.min():5.2f}-{t.max():5.2f}) | "
            f"{r.mean():6.2f} ({r.min():4.2f}-{r.max():4.2f}) | {notes[name]}"
        )
    per_fold = (np.array(times[CACHED]) - base_t) / (n_cand * cv.get_n_splits()) * 1e3
    print(
        f"\ncached GridSearchCV beyond the baseline: {per_fold.mean():.2f} ms per candidate-fold "
        f"({per_fold.min():.2f}-{per_fold.max():.2f})"
    )
    print(f"best: rule={twin.best_rule_}, delta={twin.best_delta_}, utility={twin.best_score_:.4f}")


if __name__ == "__main__":
    main()
