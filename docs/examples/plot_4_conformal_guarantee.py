"""
The conformal guarantee, and the price of calibrating by subject
================================================================

A one-sided lower bound ``LB`` comes with ``P(y >= LB) >= 1 - delta``, over the draw of the
calibration set and the new case together, when the two are exchangeable. An infant scanned
several times gives correlated images: the infant, not the image, is the exchangeable unit,
so skddh calibrates by subject (``groups=``) and the guarantee speaks of a *new subject*.
By simulation, this tutorial shows

1. that image-level calibration under-covers a new subject;
2. what calibrating by subject costs (fewer scores: wider bounds, a larger smallest delta)
   and what cross-conformal (CV+) buys back;
3. that the paper's affine correction, fitted on the calibration cases themselves, falls
   below nominal at tiny ``n`` (which is why it is opt-in).
"""

# %%
# Subjects with several correlated images
# ---------------------------------------
# Each subject has 2 to 6 images. A skewed subject effect is shared by all of its images
# (an infant whose hips the model over-reads is over-read on every scan), plus a little
# per-image noise: the images of one subject are highly correlated, and their number varies.
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression

from skddh import OneSidedConformalRegressor, OneSidedCrossConformalRegressor
from skddh.conformal import smallest_delta


def draw_subjects(n_subjects, rng):
    n_images = rng.integers(2, 7, n_subjects)
    groups = np.repeat(np.arange(n_subjects), n_images)
    X = rng.normal(size=(len(groups), 2))
    subject_effect = rng.gumbel(0, 4, n_subjects)[groups]
    y = X @ [3.0, -2.0] + subject_effect + rng.normal(0, 0.5, len(groups))
    return X, y, groups


# %%
# Four ways to calibrate, on the paper's study shape
# --------------------------------------------------
# Each draw has 37 subjects. The split-conformal regressors fit on 30 of them and calibrate
# on the other 7 (the paper's 30 / 7); CV+ uses all 37 for both, in 5 folds over subjects.
# ``"image"`` still splits by subject but scores each image as if it were independent, so
# its ``n`` counts images (about 28). For each fitted model, 100 new subjects measure
#
# - *each image*: the chance that a randomly chosen image of a new subject is covered;
# - *worst image*: the chance that every image of a new subject is covered;
# - *radius*: prediction minus lower bound (median over draws), the price in width.
#
# The bounds at both deltas come from one fit (``lower_from_components``).
methods = {
    "image": dict(calibration_unit="image"),
    "subject-max": dict(calibration_unit="subject-max"),
    "subject-subsample": dict(calibration_unit="subject-subsample"),
}
deltas = [0.1, 0.2]
records = []
for seed in range(200):
    rng = np.random.default_rng(seed)
    X, y, groups = draw_subjects(37, rng)
    X_new, y_new, subject_new = draw_subjects(100, rng)
    models = {
        name: OneSidedConformalRegressor(
            LinearRegression(), delta=0.2, calibration_size=7, random_state=seed, **params
        )
        for name, params in methods.items()
    }
    models["CV+"] = OneSidedCrossConformalRegressor(
        LinearRegression(), delta=0.2, cv=5, random_state=seed
    )
    for name, model in models.items():
        model.fit(X, y, groups=groups)
        components, prediction = model.predict_components(X_new), model.predict(X_new)
        for delta in deltas:
            with warnings.catch_warnings():  # 7 subjects cannot support delta = 0.1: -inf
                warnings.simplefilter("ignore", UserWarning)
                lb = model.lower_from_components(components, delta)[:, 0]
            covered = np.bincount(subject_new, y_new >= lb) / np.bincount(subject_new)
            records.append(
                {
                    "delta": delta,
                    "method": name,
                    "n": model.n_calibration_,
                    "each image": covered.mean(),
                    "worst image": np.mean(covered == 1),
                    "radius": np.mean(prediction - lb),
                }
            )

names = [*methods, "CV+"]
table = (
    pd.DataFrame(records)
    .groupby(["delta", "method"])
    .agg({"n": "mean", "each image": "mean", "worst image": "mean", "radius": "median"})
    .reindex(pd.MultiIndex.from_product([deltas, names], names=["delta", "method"]))
)
print(table.round(3).to_string())
print(f"smallest delta with 7 calibration subjects: 1/(n+1) = {smallest_delta(7):.3f}")

# %%
# What the table shows
# --------------------
# At ``delta = 0.10``, image-level calibration has about 28 scores, so it gives a finite
# bound, and it covers a random image of a new subject *less* often than the nominal 0.90:
# 28 correlated scores carry about as much information as 7. Calibrated by subject, 7
# subjects cannot support ``delta = 0.10`` at all (the smallest is ``1/(n+1) = 0.125``):
# the bound is ``-inf`` and the policy would refer every hip. That is the price of an honest
# ``n``, in its starkest form. CV+, where all 37 subjects calibrate, supports it, and covers
# every image of a new subject at least as often as the nominal 0.90.
#
# At ``delta = 0.20`` the three subject-level methods meet their targets:
#
# - ``"subject-max"`` covers the *worst* image of a new subject within the finite-sample band
#   ``[0.80, 0.80 + 1/8]``, so each of its images more often still; its bound is the widest.
# - ``"subject-subsample"`` (one image per subject, 51 subsamples, a majority vote) covers a
#   random image of a new subject at or above 0.80 (its guarantee is ``1 - 2 delta`` in the
#   worst case, close to ``1 - delta`` in practice), with a narrower bound than the maximum.
# - CV+ covers the worst image at or above 0.80 (worst case ``1 - 2 delta`` less a small
#   K-fold term), with a narrower bound than either split, because every subject both fits
#   and calibrates.
#
# The asserts below keep these sentences true of the printed table.
cell = table.to_dict("index")
assert cell[0.1, "image"]["each image"] < 0.9  # image-level under-covers a new subject
assert np.isinf(cell[0.1, "subject-max"]["radius"])  # 7 subjects cannot support 0.10
assert np.isinf(cell[0.1, "subject-subsample"]["radius"])
assert cell[0.1, "CV+"]["worst image"] >= 0.9
assert 0.8 <= cell[0.2, "subject-max"]["worst image"] <= 0.8 + 1 / 8
assert cell[0.2, "subject-max"]["each image"] > cell[0.2, "subject-max"]["worst image"]
assert cell[0.2, "subject-subsample"]["each image"] >= 0.8
assert cell[0.2, "subject-subsample"]["radius"] < cell[0.2, "subject-max"]["radius"]
assert cell[0.2, "CV+"]["worst image"] >= 0.8
assert cell[0.2, "CV+"]["radius"] < cell[0.2, "subject-subsample"]["radius"]
assert cell[0.2, "image"]["radius"] < cell[0.2, "subject-subsample"]["radius"]

# %%
# Coverage against width at ``delta = 0.20``: the image-level bound is the narrowest
# because it claims more than its data support.
at = table.loc[0.2]
fig, ax = plt.subplots(figsize=(6, 4))
ax.axhline(0.8, color="k", ls="--", lw=1, label="nominal 1 - delta")
ax.plot(at["radius"], at["each image"], "o", label="each image")
ax.plot(at["radius"], at["worst image"], "s", mfc="none", label="worst image")
for name, row in at.iterrows():
    ax.annotate(name, (row["radius"], row["each image"]), xytext=(4, 4), textcoords="offset points")
ax.set_xlabel("radius: prediction - lower bound")
ax.set_ylabel("coverage of a new subject")
ax.legend(loc="lower right")
plt.show()

# %%
# The paper's affine correction at tiny n
# ---------------------------------------
# Here every subject has one image, so ``n`` counts subjects and images alike. We draw many
# calibration sets from a biased, mis-scaled predictor with skewed errors. Without a
# correction (the default, ``bias_correction=None``) coverage lies in the finite-sample band
# ``[1 - delta, 1 - delta + 1/(n+1)]``. The paper's affine correction fitted on the same
# calibration cases it then scores (``bias_correction="affine"``) makes the scores no
# longer exchangeable with a new case's, and falls below the band at n = 7.
# ``"affine-split"`` fits it on half of the calibration subjects instead and stays exact.
from skddh.conformal import fit_affine, lower_bound


def coverage_over_draws(n, delta, correction, reps=1000, m=50, seed=0):
    rng = np.random.default_rng(seed)
    out = np.empty(reps)
    for r in range(reps):
        y_hat = rng.normal(60, 6, n + m)
        y = 1.3 * y_hat - 18 + rng.gumbel(0, 4, n + m)  # biased, mis-scaled, skewed noise
        a, b = fit_affine(y_hat[:n, None], y[:n, None]) if correction else ([1.0], [0.0])
        tilde = a[0] * y_hat + b[0]
        lb = lower_bound(tilde[n:], tilde[:n] - y[:n], delta)
        out[r] = np.mean(y[n:] >= lb)
    return out.mean()


affine_deltas = np.array([0.125, 0.2, 0.3, 0.4, 0.5])
fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
curves = {}
for ax, n in zip(axes, [7, 28]):
    nominal = 1 - affine_deltas
    ax.fill_between(nominal, nominal, nominal + 1 / (n + 1), color="0.85", label="band")
    ax.plot(nominal, nominal, "k--", lw=1)
    for corr, style in [(False, "o-"), (True, "s-")]:
        curves[n, corr] = [coverage_over_draws(n, d, corr) for d in affine_deltas]
        label = "affine on calibration" if corr else "no correction (default)"
        ax.plot(nominal, curves[n, corr], style, label=label)
    ax.set_title(f"n = {n} calibration subjects")
    ax.set_xlabel("1 - delta")
axes[0].set_ylabel("coverage P(y >= LB)")
axes[0].legend()
plt.show()

none7, affine7 = curves[7, False][0], curves[7, True][0]
print(f"n = 7, nominal 0.875: no correction {none7:.3f}, affine in sample {affine7:.3f}")
assert abs(none7 - 0.875) < 0.01  # exact, up to Monte Carlo error
assert affine7 < 0.875 - 0.03  # the in-sample correction under-covers

# %%
# On a fitted model: one calibration draw against many
# ----------------------------------------------------
# ``CoverageDisplay`` draws the same for a fitted regressor on held-out data. With one image
# per subject (``groups`` are then just row numbers), the per-image coverage it draws is the
# subject coverage the band speaks of. One fitted model is *one* calibration draw: the
# guarantee is an average over such draws, so a single draw's curve scatters around the
# band, by more than the binomial error of its 300 test cases, because all of its
# deltas share one calibration set.
from skddh import CoverageDisplay

deltas_fit = [0.05, 0.1, 0.2, 0.3, 0.5]
subject = np.arange(600)  # one image per subject


def fitted_draw(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(600, 3))
    y = pd.DataFrame({"y": X @ [3.0, -2.0, 1.0] + rng.gumbel(0, 2, 600)})
    model = OneSidedConformalRegressor(LinearRegression(), calibration_size=100, random_state=seed)
    model.fit(X[:300], y[:300], groups=subject[:300])
    return model, X, y


def held_out_coverage(seed):
    model, X, y = fitted_draw(seed)
    X_test, y_test = X[300:], y[300:]
    lbs = [np.ravel(model.predict_lower(X_test, delta=d)) for d in deltas_fit]
    return [np.mean(y_test["y"] >= lb) for lb in lbs]


model, X, y = fitted_draw(0)
X_test, y_test = X[300:], y[300:]
display = CoverageDisplay.from_estimator(
    model, X_test, y_test, deltas=deltas_fit, name="one calibration draw (seed 0)"
)
many = np.array([held_out_coverage(seed) for seed in range(200)])
mean_coverage = many.mean(axis=0)
display.ax_.errorbar(
    1 - np.array(deltas_fit),
    mean_coverage,
    yerr=[mean_coverage - np.quantile(many, 0.05, 0), np.quantile(many, 0.95, 0) - mean_coverage],
    fmt="s-",
    capsize=3,
    label="mean of 200 draws (5-95 % of draws)",
)
display.ax_.legend(loc="upper left")
plt.show()
single = display.coverage["y"].to_numpy()
print(
    pd.DataFrame(
        {
            "nominal": 1 - np.array(deltas_fit),
            "seed 0": single,
            "mean of 200": mean_coverage,
            "lowest of 200": many.min(0),
        }
    )
    .round(3)
    .to_string(index=False)
)

# %%
# Seed 0 covers less than nominal at every delta (0.36 at a nominal 0.50, the lowest of the
# 200 draws there): its 100 calibration cases happen to lie above the model's predictions
# more than new cases do, so its radius is small and its bounds high. The bound itself is
# right (the check below recomputes it by hand from the calibration scores): a
# split-conformal guarantee holds on average over calibration sets, and one set of 100
# scores moves the whole curve by several points. Averaged over 200 draws, coverage lies in
# the band at every delta, up to the Monte Carlo error of 200 draws (0.015 below). To bound
# the coverage of *this* calibration set with high probability, a training-conditional
# (PAC) bound is needed; more calibration subjects shrink the scatter as ``1/sqrt(n)``.
cal = model.calibration_indices_
scores = model.estimator_.predict(X[cal]).ravel() - y["y"].to_numpy()[cal]
by_hand = lower_bound(model.estimator_.predict(X_test).ravel(), scores, 0.5)
assert np.allclose(by_hand, np.ravel(model.predict_lower(X_test, delta=0.5)))
assert np.all(single < 1 - np.array(deltas_fit)), single
assert single[-1] == many[0, -1] == many[:, -1].min()  # the seed-0 draw, lowest of 200
tolerance = 0.015  # Monte Carlo error of a mean of 200 draws, about 3 standard errors
assert np.all(mean_coverage >= 1 - np.array(deltas_fit) - tolerance), mean_coverage
assert np.all(mean_coverage <= 1 - np.array(deltas_fit) + 1 / 101 + tolerance), mean_coverage
