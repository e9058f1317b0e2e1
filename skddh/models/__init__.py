"""Torch estimators: the SimSiam featurizer, the measurement head and their plumbing."""

from skddh.models._head import MeasurementRegressor
from skddh.models._simsiam import SimSiamFeaturizer

__all__ = ["MeasurementRegressor", "SimSiamFeaturizer"]
