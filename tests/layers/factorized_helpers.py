"""Gradient helper for the factorised-layer tests: grads of a scalar w.r.t. input and weights."""

import keras
import numpy as np

from tests.helpers import backend


def gradients(fn, x, variables):
    """`(d fn / d x, [d fn / d v for v in variables])` as NumPy, on TensorFlow or JAX."""
    if backend() == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        grads = tape.gradient(value, [x] + list(variables))
        # IndexedSlices (gathers) become dense; an unused input gets zeros.
        grads = [np.zeros(np.shape(v)) if g is None else np.asarray(tf.convert_to_tensor(g))
                 for g, v in zip(grads, [x] + list(variables))]
        return grads[0], grads[1:]
    import jax

    def pure(x, values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(x)

    grad_x, grad_values = jax.grad(pure, argnums=(0, 1))(
        np.asarray(x), [v.value for v in variables]
    )
    return np.asarray(grad_x), [np.asarray(g) for g in grad_values]
