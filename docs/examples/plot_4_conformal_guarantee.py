"""
The conformal guarantee in pictures
===================================

``P(y >= LB) >= 1 - delta`` holds over the draw of the calibration set and the new case.
Here we draw many calibration sets from a skewed, biased predictor and watch the coverage:
it lies in the finite-sample band ``[1 - delta, 1 - delta + 1/(n+1)]``, and the paper's
affine correction fitted on the calibration cases themselves falls below it at tiny n.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

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


# %%
# Coverage against 1 - delta, at n = 7 and n = 28
# -----------------------------------------------
deltas = np.array([0.125, 0.2, 0.3, 0.4, 0.5])
fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
for ax, n in zip(axes, [7, 28]):
    nominal = 1 - deltas
    ax.fill_between(nominal, nominal, nominal + 1 / (n + 1), color="0.85", label="band")
    ax.plot(nominal, nominal, "k--", lw=1)
    for corr, style in [(False, "o-"), (True, "s-")]:
        cov = [coverage_over_draws(n, d, corr) for d in deltas]
        ax.plot(nominal, cov, style, label="affine on calibration" if corr else "no correction")
    ax.set_title(f"n = {n} calibration cases")
    ax.set_xlabel("1 - delta")
axes[0].set_ylabel("coverage P(y >= LB)")
axes[0].legend()
plt.show()

# %%
# On a fitted model
# -----------------
# ``CoverageDisplay`` draws the same for a fitted regressor on held-out data.
from sklearn.linear_model import LinearRegression

from skddh import CoverageDisplay, OneSidedConformalRegressor

rng = np.random.default_rng(0)
X = rng.normal(size=(600, 3))
y = X @ [3.0, -2.0, 1.0] + rng.gumbel(0, 2, 600)
model = OneSidedConformalRegressor(
    LinearRegression(), calibration_size=100, bias_correction=None, random_state=0
).fit(X[:300], y[:300])
CoverageDisplay.from_estimator(model, X[300:], y[300:], deltas=[0.05, 0.1, 0.2, 0.3, 0.5])
plt.show()
