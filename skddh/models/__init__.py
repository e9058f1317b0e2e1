"""Estimators: the SimSiam featurizer, the measurement heads and their plumbing (torch), and
self-training for any regressor."""

from skddh.models._finetune import FineTuningRegressor
from skddh.models._head import MeasurementRegressor
from skddh.models._hip_pipeline import predict_hip_morphology
from skddh.models._localize import HipJointLocalizer
from skddh.models._losses import adaptive_triplet_loss
from skddh.models._morphology import MorphologyClassifier
from skddh.models._proxy import CrossModalProxy
from skddh.models._selftraining import SelfTrainingRegressor
from skddh.models._simsiam import SimSiamFeaturizer

__all__ = [
    "CrossModalProxy",
    "FineTuningRegressor",
    "HipJointLocalizer",
    "MeasurementRegressor",
    "MorphologyClassifier",
    "SelfTrainingRegressor",
    "SimSiamFeaturizer",
    "adaptive_triplet_loss",
    "predict_hip_morphology",
]
