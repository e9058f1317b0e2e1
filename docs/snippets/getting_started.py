"""The getting-started snippet, shown on the landing page (tests/test_docs_snippet.py runs it)."""

from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import make_pipeline

from skddh import (
    MeasurementRegressor,
    OneSidedConformalRegressor,
    SelectiveImagingPolicy,
    SimSiamFeaturizer,
    make_hip_cohort,
)

# start
cohort = make_hip_cohort(image_size=32, n_registry_us=256, n_registry_xr=16, random_state=0)
us, test = cohort.us, cohort.us.split == "test"
encoder = SimSiamFeaturizer(image_size=32, epochs=2, device="cpu", random_state=0)
encoder.fit(cohort.registry_us)  # self-supervised: unlabelled ultrasound only
head = make_pipeline(FrozenEstimator(encoder), MeasurementRegressor(device="cpu", random_state=0))
model = OneSidedConformalRegressor(head, calibration_size=0.25, random_state=0)
policy = SelectiveImagingPolicy(model, rule="alpha", delta=0.2)
policy.fit(us.images[~test], us.targets[~test], groups=us.subject[~test])
print(policy.predict_lower(us.images[test]).head().round(1))  # lower bounds per measurement
decision = policy.predict(us.images[test])  # 1: ultrasound suffices, 0: refer to X-ray
print(f"passed on ultrasound: {decision.mean():.0%} of {decision.size} test images")
# end
