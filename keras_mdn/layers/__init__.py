"""Keras layers of keras_mdn, one public layer per module."""

from keras_mdn.layers.domain_batch_normalization import DomainBatchNormalization
from keras_mdn.layers.domain_head import DomainHead
from keras_mdn.layers.residual_adapter import ResidualAdapter

__all__ = ["DomainBatchNormalization", "DomainHead", "ResidualAdapter"]
