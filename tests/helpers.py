"""Small test helpers on the public API (no keras.src)."""

import contextlib
import os
from pathlib import Path

import keras
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"../shared/data not found at {SHARED_DATA} (present in CI and developer checkouts)",
)

tensorflow_only = pytest.mark.tensorflow_only


def backend():
    return keras.backend.backend()


def skip_unless_tensorflow():
    if backend() != "tensorflow":
        pytest.skip(f"needs the TensorFlow backend, running on {backend()}")


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def assert_close(actual, expected, atol=1e-5, rtol=1e-5):
    np.testing.assert_allclose(to_numpy(actual), to_numpy(expected), atol=atol, rtol=rtol)


def save_and_load(model, tmp_path, name="model.keras"):
    """Round trips `model` through a `.keras` file with no custom_objects."""
    path = os.path.join(str(tmp_path), name)
    model.save(path)
    return keras.saving.load_model(path)


def rng(seed=0):
    return np.random.default_rng(seed)


def np_conv(x, kernel, strides=1, padding="same", dilation=1):
    """Reference N-d convolution (channels last) with TensorFlow's padding rules, in numpy."""
    spatial = x.ndim - 2
    strides = (strides,) * spatial if isinstance(strides, int) else tuple(strides)
    dilation = (dilation,) * spatial if isinstance(dilation, int) else tuple(dilation)
    ks = kernel.shape[:spatial]
    pads, outs = [], []
    for size, k, s, d in zip(x.shape[1:-1], ks, strides, dilation):
        span = d * (k - 1) + 1
        if padding == "valid":
            out, total = (size - span) // s + 1, 0
        elif padding == "same":
            out = -(-size // s)
            total = max((out - 1) * s + span - size, 0)
        else:  # causal (1-D)
            out, total = size, span - 1
        before = total // 2 if padding == "same" else total
        pads.append((before, total - before))
        outs.append(out)
    xp = np.pad(x, [(0, 0)] + pads + [(0, 0)])
    y = np.zeros((x.shape[0], *outs, kernel.shape[-1]), dtype=np.float64)
    for tap in np.ndindex(*ks):
        index = tuple(
            slice(t * d, t * d + (o - 1) * s + 1, s)
            for t, d, o, s in zip(tap, dilation, outs, strides)
        )
        y += xp[(slice(None),) + index + (slice(None),)] @ kernel[tap]
    return y


@contextlib.contextmanager
def dtype_policy(policy):
    """Sets Keras' global dtype policy for the block, then restores the previous one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def gradients(fn, x, variables):
    """`(d fn / d x, [d fn / d v for v in variables])` as NumPy, on TensorFlow, JAX or torch.

    `fn(x)` returns a scalar; a variable `fn` does not use gets zeros.
    """
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        grads = tape.gradient(value, [x] + list(variables))
        grads = [None if g is None else tf.convert_to_tensor(g) for g in grads]  # dense slices
    elif name == "jax":
        import jax

        def pure(x, values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
                return fn(x)

        grad_x, grad_values = jax.grad(pure, argnums=(0, 1))(
            np.asarray(x), [v.value for v in variables]
        )
        grads = [grad_x, *grad_values]
    elif name == "torch":
        import torch

        x = torch.tensor(np.asarray(x), requires_grad=True)
        sources = [x] + [v.value for v in variables]
        grads = torch.autograd.grad(fn(x), sources, allow_unused=True)
    else:
        pytest.skip(f"no gradient helper for the {name} backend")
    grads = [np.zeros(tuple(s.shape)) if g is None else to_numpy(g)
             for g, s in zip(grads, [x] + list(variables), strict=True)]
    return grads[0], grads[1:]
