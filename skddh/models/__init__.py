"""Torch estimators: the SimSiam featurizer, the measurement heads and their plumbing."""

from skddh.models._finetune import FineTuningRegressor
from skddh.models._head import MeasurementRegressor
from skddh.models._simsiam import SimSiamFeaturizer

__all__ = ["FineTuningRegressor", "MeasurementRegressor", "SimSiamFeaturizer"]
