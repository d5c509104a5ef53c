"""Benchmark-only layers for the DMTRL benchmark: independent per-task layers (the single-task
baseline trained as one model), a per-task logit mask, and export to plain Keras layers.

Single-task learning (STL) is T independent networks. Training them as one Keras model over
mixed-task batches is equivalent (no parameter receives a gradient from another task's
examples; Adam normalises each parameter's step on its own) and costs one `fit` call instead
of T, which matters on 2 shared cores.
"""

import keras
import numpy as np
from keras import ops

from keras_mdn.ops.routing import canonicalize_domain, route


class PerTaskDense(keras.layers.Layer):
    """T independent dense layers; the example's task picks the kernel and bias."""

    def __init__(self, units, num_tasks, activation=None, same_init=True, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.num_tasks = num_tasks
        self.activation = keras.activations.get(activation)
        self.same_init = same_init

    def build(self, input_shape):
        fan_in = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel", shape=(self.num_tasks, fan_in, self.units),
            initializer=_task_glorot(fan_in, self.units, self.same_init))
        self.bias = self.add_weight(name="bias", shape=(self.num_tasks, self.units),
                                    initializer="zeros")

    def call(self, inputs, domain):
        task = canonicalize_domain(domain, self.num_tasks, name="domain")

        def uniform(t):
            return ops.matmul(inputs, ops.take(self.kernel, t, axis=0))

        def mixed(tasks):
            return ops.einsum("bi,biu->bu", inputs, ops.take(self.kernel, tasks, axis=0))

        outputs = route(task, uniform, mixed) + ops.take(self.bias, task, axis=0)
        return self.activation(outputs)

    def to_keras_layers(self):
        """One built `keras.layers.Dense` per task holding that task's weights."""
        layers = []
        kernels = ops.convert_to_numpy(self.kernel)
        biases = ops.convert_to_numpy(self.bias)
        for task in range(self.num_tasks):
            layer = keras.layers.Dense(self.units,
                                       activation=keras.activations.serialize(self.activation))
            layer.build((None, kernels.shape[1]))
            layer.kernel.assign(kernels[task])
            layer.bias.assign(biases[task])
            layers.append(layer)
        return layers


class PerTaskConv2D(keras.layers.Layer):
    """T independent 'same'-padded 2-D convolutions; the example's task picks the kernel.

    All T convolutions run as one convolution with `T * filters` output channels, then each
    example keeps its task's channels.
    """

    def __init__(self, filters, kernel_size, num_tasks, activation=None, same_init=True,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.num_tasks = num_tasks
        self.activation = keras.activations.get(activation)
        self.same_init = same_init

    def build(self, input_shape):
        channels = int(input_shape[-1])
        k = self.kernel_size
        fan_in, fan_out = k * k * channels, k * k * self.filters
        init = _task_glorot(fan_in, fan_out, self.same_init)
        self.kernel = self.add_weight(
            name="kernel", shape=(self.num_tasks, k, k, channels, self.filters),
            initializer=init)
        self.bias = self.add_weight(name="bias", shape=(self.num_tasks, self.filters),
                                    initializer="zeros")

    def call(self, inputs, domain):
        k, t, f = self.kernel_size, self.num_tasks, self.filters
        task = canonicalize_domain(domain, t, name="domain")

        def uniform(index):
            return ops.conv(inputs, ops.take(self.kernel, index, axis=0), padding="same")

        def mixed(tasks):
            kernel = ops.transpose(self.kernel, (1, 2, 3, 0, 4))
            kernel = ops.reshape(kernel, (k, k, kernel.shape[2], t * f))
            outputs = ops.conv(inputs, kernel, padding="same")
            shape = ops.shape(outputs)
            outputs = ops.reshape(outputs, (shape[0], shape[1], shape[2], t, f))
            one_hot = ops.one_hot(tasks, t, dtype=outputs.dtype)
            return ops.einsum("bhwtf,bt->bhwf", outputs, one_hot)

        outputs = route(task, uniform, mixed)
        bias = ops.take(self.bias, task, axis=0)
        if len(bias.shape) == 2:
            bias = bias[:, None, None, :]
        return self.activation(outputs + bias)

    def to_keras_layers(self):
        """One built `keras.layers.Conv2D` per task holding that task's weights."""
        layers = []
        kernels = ops.convert_to_numpy(self.kernel)
        biases = ops.convert_to_numpy(self.bias)
        for task in range(self.num_tasks):
            layer = keras.layers.Conv2D(
                self.filters, self.kernel_size, padding="same",
                activation=keras.activations.serialize(self.activation))
            layer.build((None, None, None, kernels.shape[3]))
            layer.kernel.assign(kernels[task])
            layer.bias.assign(biases[task])
            layers.append(layer)
        return layers


class TaskLogitMask(keras.layers.Layer):
    """Adds -1e9 to the logits of classes a task does not have (tasks with fewer classes)."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = list(num_classes)
        width = max(self.num_classes)
        mask = np.zeros((len(self.num_classes), width), dtype="float32")
        for task, count in enumerate(self.num_classes):
            mask[task, count:] = -1e9
        self.mask = mask

    def call(self, logits, domain):
        task = canonicalize_domain(domain, len(self.num_classes), name="domain")
        return logits + ops.take(ops.convert_to_tensor(self.mask), task, axis=0)


def _task_glorot(fan_in, fan_out, same_init):
    """Glorot-uniform kernels per task: one draw repeated over tasks, or one draw each."""
    limit = float(np.sqrt(6.0 / (fan_in + fan_out)))

    def initializer(shape, dtype=None):
        if same_init:
            one = keras.random.uniform(shape[1:], -limit, limit, dtype=dtype)
            return ops.repeat(one[None], shape[0], axis=0)
        return keras.random.uniform(shape, -limit, limit, dtype=dtype)

    return initializer
