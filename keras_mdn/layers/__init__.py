"""Keras layers of keras_mdn, one public layer per module.

Every layer holding per-domain parameters implements `DomainLayer`
(`keras_mdn.layers.domain_layer`), the interface surgery, reports and export use.
"""

from keras_mdn.layers.domain_batch_normalization import DomainBatchNormalization
from keras_mdn.layers.domain_head import DomainHead
from keras_mdn.layers.domain_layer import (
    DomainLayer,
    DomainVariable,
    count_domains,
    domain_input,
    domain_layers,
    is_domain_layer,
)
from keras_mdn.layers.factorized_conv import FactorizedConv, FactorizedConv1D, FactorizedConv2D
from keras_mdn.layers.factorized_dense import FactorizedDense
from keras_mdn.layers.residual_adapter import ResidualAdapter

__all__ = [
    "DomainBatchNormalization",
    "DomainHead",
    "DomainLayer",
    "DomainVariable",
    "FactorizedConv",
    "FactorizedConv1D",
    "FactorizedConv2D",
    "FactorizedDense",
    "ResidualAdapter",
    "count_domains",
    "domain_input",
    "domain_layers",
    "is_domain_layer",
]
