"""A domain layer written as a user would, on the public interface only (tests' fixture).

`DomainScale` scales and shifts each channel per domain (FiLM-style). It implements
`keras_mdn.layers.DomainLayer`, so every surgery, report and export function handles it.
"""

import keras
import numpy as np
from keras import ops

from keras_mdn.layers import DomainLayer, DomainVariable
from keras_mdn.layers.domain_layer import check_affine


@keras.saving.register_keras_serializable(package="keras_mdn_tests")
class DomainScale(DomainLayer, keras.layers.Layer):
    """`y = x * scale[domain] + offset[domain]` per channel."""

    def __init__(self, num_domains, **kwargs):
        super().__init__(**kwargs)
        self.num_domains = int(num_domains)

    def build(self, input_shape):
        shape = (self.num_domains, input_shape[-1])
        self.scale = self.add_weight(name="scale", shape=shape, initializer="ones")
        self.offset = self.add_weight(name="offset", shape=shape, initializer="zeros")

    def call(self, inputs, domain):
        domain = ops.convert_to_tensor(domain, "int32")
        scale = ops.take(self.scale, domain, axis=0)
        offset = ops.take(self.offset, domain, axis=0)
        if len(scale.shape) == 2:  # one domain per example
            shape = (-1,) + (1,) * (len(inputs.shape) - 2) + (inputs.shape[-1],)
            scale, offset = ops.reshape(scale, shape), ops.reshape(offset, shape)
        return inputs * scale + offset

    def get_config(self):
        return {**super().get_config(), "num_domains": self.num_domains}

    # The domain-layer interface.

    def domain_variables(self):
        return [DomainVariable.rows(self.scale, self.num_domains),
                DomainVariable.rows(self.offset, self.num_domains)]

    def fold(self, domain):
        # A batch norm with mean 0 and variance 1 - epsilon is exactly `x * gamma + beta`.
        epsilon = 1e-3
        norm = keras.layers.BatchNormalization(epsilon=epsilon, name=self.name)
        channels = self.scale.shape[-1]
        norm.build(self.get_build_config()["input_shape"])
        norm.set_weights([
            ops.convert_to_numpy(self.scale[domain]),
            ops.convert_to_numpy(self.offset[domain]),
            np.zeros((channels,), "float32"),
            np.full((channels,), 1.0 - epsilon, "float32"),
        ])
        return [norm]

    def swappable_tensors(self, domain, affine=None):
        check_affine(self, affine)  # merges_affine() is False: refuses a following affine map
        return {"scale": ops.convert_to_numpy(self.scale[domain]).astype("float32"),
                "offset": ops.convert_to_numpy(self.offset[domain]).astype("float32")}

    def swappable_call(self, inputs, tensors):
        return ops.add(ops.multiply(inputs, tensors["scale"]), tensors["offset"])
