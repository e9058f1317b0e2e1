"""skddh: ultrasound-first, radiation-preserving selective imaging for hip dysplasia.

A scikit-learn-compatible toolkit: a synthetic paired ultrasound / X-ray cohort, self-supervised
featurisation, measurement heads, one-sided conformal lower bounds and a selective imaging
policy that refers to X-ray whenever ultrasound cannot vouch for a hip.
"""

from skddh.conformal import (
    OneSidedConformalRegressor,
    OneSidedCrossConformalRegressor,
    SelectiveClassifier,
)
from skddh.datasets import (
    load_image_table,
    load_morphology_table,
    make_bmd_cohort,
    make_hip_cohort,
    make_hip_morphology_cohort,
    save_image_table,
    save_morphology_table,
)
from skddh.metrics import (
    bland_altman,
    clinical_report,
    gwet_ac1,
    make_policy_scorer,
    regression_agreement,
)
from skddh.model_file import load_policy, save_policy
from skddh.models import (
    CrossModalProxy,
    FineTuningRegressor,
    HipJointLocalizer,
    MeasurementRegressor,
    MorphologyClassifier,
    SelfTrainingRegressor,
    SimSiamFeaturizer,
    predict_hip_morphology,
)
from skddh.plotting import (
    BlandAltmanDisplay,
    CoverageDisplay,
    DecisionCurveDisplay,
    GradCAMDisplay,
)
from skddh.policy import (
    ConformalSelectionPolicy,
    GrafAlphaThreshold,
    RiskControlledPolicy,
    SelectiveImagingPolicy,
    SelectiveImagingPolicyCV,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "BlandAltmanDisplay",
    "ConformalSelectionPolicy",
    "CoverageDisplay",
    "CrossModalProxy",
    "DecisionCurveDisplay",
    "FineTuningRegressor",
    "GradCAMDisplay",
    "GrafAlphaThreshold",
    "HipJointLocalizer",
    "MeasurementRegressor",
    "MorphologyClassifier",
    "OneSidedConformalRegressor",
    "OneSidedCrossConformalRegressor",
    "RiskControlledPolicy",
    "SelectiveClassifier",
    "SelectiveImagingPolicy",
    "SelectiveImagingPolicyCV",
    "SelfTrainingRegressor",
    "SimSiamFeaturizer",
    "__version__",
    "bland_altman",
    "clinical_report",
    "gwet_ac1",
    "load_image_table",
    "load_morphology_table",
    "load_policy",
    "make_bmd_cohort",
    "make_hip_cohort",
    "make_hip_morphology_cohort",
    "make_policy_scorer",
    "predict_hip_morphology",
    "regression_agreement",
    "save_image_table",
    "save_morphology_table",
    "save_policy",
]
