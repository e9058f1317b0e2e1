"""Self-supervised featurisation: SimSiam pretraining of a timm encoder, batched on the device."""

from skddh.featurize._simsiam import SimSiamFeaturizer

__all__ = ["SimSiamFeaturizer"]
