"""Keras layers of keras_mdn, one public layer per module."""

from keras_mdn.layers.domain_batch_normalization import DomainBatchNormalization
from keras_mdn.layers.domain_head import DomainHead
from keras_mdn.layers.factorized_conv import FactorizedConv, FactorizedConv1D, FactorizedConv2D
from keras_mdn.layers.factorized_dense import FactorizedDense
from keras_mdn.layers.residual_adapter import ResidualAdapter

__all__ = [
    "DomainBatchNormalization",
    "DomainHead",
    "FactorizedConv",
    "FactorizedConv1D",
    "FactorizedConv2D",
    "FactorizedDense",
    "ResidualAdapter",
]
