"""
Tuning delta and the rule, and reading the decision curve
=========================================================

Fitting the model depends on neither the miscoverage ``delta`` nor the rule, so a search
over them should not refit anything per candidate. Two ways: ``GridSearchCV`` with
``memory=`` (the fitted regressor is cached), or ``SelectiveImagingPolicyCV``, which scores
every candidate from one fit per fold. Then the decision curve shows which policy is worth
its X-rays at each radiation cost.
"""

# %%
# Features once, then search on them
# ----------------------------------
# A frozen encoder inside a searched pipeline would re-run on every candidate; features
# computed once keep the search cheap.
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import sklearn
from sklearn.model_selection import GridSearchCV, GroupKFold

from skddh import (
    DecisionCurveDisplay,
    MeasurementRegressor,
    OneSidedConformalRegressor,
    SelectiveImagingPolicy,
    SelectiveImagingPolicyCV,
    SimSiamFeaturizer,
    make_hip_cohort,
    make_policy_scorer,
)

cohort = make_hip_cohort(image_size=32, n_registry_us=256, n_registry_xr=16, random_state=1)
us = cohort.us
encoder = SimSiamFeaturizer(image_size=32, epochs=2, batch_size=64, device="cpu", random_state=0)
features = encoder.fit(cohort.registry_us).transform(us.images)
fit_rows, test = us.split != "test", us.split == "test"
X, y, groups = features[fit_rows], us.targets[fit_rows], us.subject[fit_rows]


def regressor():
    head = MeasurementRegressor(epochs=60, device="cpu", random_state=0)
    return OneSidedConformalRegressor(head, calibration_size=0.3, random_state=0)


# %%
# Groups must reach the policy
# ----------------------------
# The policy calibrates by subject, so its ``fit`` needs ``groups``. ``GridSearchCV(...).fit(X,
# y, groups=groups)`` gives them to the splitter only; without metadata routing the policy
# gets none and refuses to fit rather than silently calibrating per image.
scorer = make_policy_scorer(radiation_cost=1.0, miss_penalty=10.0)
grid = {"rule": ["alpha", "or", "and"], "delta": [0.1, 0.2, 0.3, 0.4]}
try:
    GridSearchCV(
        SelectiveImagingPolicy(regressor()),
        grid,
        scoring=scorer,
        cv=GroupKFold(4),
        error_score="raise",
    ).fit(X, y, groups=groups)
except ValueError as exc:
    print(str(exc).split(". ")[0] + ".")
else:
    raise AssertionError("the policy was expected to refuse groups=None")

# %%
# GridSearchCV with routing and a cache
# -------------------------------------
# With ``enable_metadata_routing=True`` and ``set_fit_request(groups=True)`` on the policy,
# ``groups`` reach both the splitter (``GroupKFold``) and the policy's own calibration split.
# ``memory=`` caches the fitted regressor, so the 12 candidates cost one fit per fold.
#
# Calibration is by subject, so ``calibration_size=0.3`` above: each training fold holds
# about 28 subjects, 9 of them calibrate, and 9 subjects support delta down to
# ``1/(n+1) = 0.1``. With 7 of them, any delta below 0.125 would give ``LB = -inf`` and
# refer every hip, with a warning.
with sklearn.config_context(enable_metadata_routing=True), tempfile.TemporaryDirectory() as c:
    policy = SelectiveImagingPolicy(regressor(), memory=c).set_fit_request(groups=True)
    search = GridSearchCV(policy, grid, scoring=scorer, cv=GroupKFold(4)).fit(X, y, groups=groups)
print("GridSearchCV:", search.best_params_, round(search.best_score_, 3))

# %%
# The tuned twin: one fit per fold
# --------------------------------
# ``SelectiveImagingPolicyCV`` takes ``groups`` in its own ``fit`` and uses them for its
# folds and for every calibration split inside them; no routing is needed.
twin = SelectiveImagingPolicyCV(
    regressor(), deltas=[0.1, 0.2, 0.3, 0.4], cv=GroupKFold(4), miss_penalty=10.0
).fit(X, y, groups=groups)
print("SelectiveImagingPolicyCV:", twin.best_rule_, twin.best_delta_, round(twin.best_score_, 3))
print(twin.cv_results_[["rule", "delta", "mean_test_score", "mean_pass_rate"]].head(6))

# %%
# Decision curves on the test subjects
# ------------------------------------
# Utility per hip against the radiation cost of one X-ray, with the miss penalty fixed.
# A policy is worth using where its curve lies above both references.
fig, ax = plt.subplots()
for i, (rule, delta) in enumerate([("and", 0.1), ("alpha", 0.2), ("or", 0.4)]):
    p = SelectiveImagingPolicy(regressor(), rule=rule, delta=delta).fit(X, y, groups=groups)
    DecisionCurveDisplay.from_estimator(
        p,
        features[test],
        us.targets[test],
        radiation_costs=np.linspace(0, 2, 41),
        ax=ax,
        references=i == 0,
    )
plt.show()
