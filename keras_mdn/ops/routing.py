"""Domain routing: the one place where a `domain` argument selects per-domain parameters.

A domain is given at call time in one of three forms:

- a Python int: the whole batch is one domain, known while tracing. The parameters are sliced
  statically, so an exported per-domain endpoint holds that domain's weights as constants and
  an adapter lowers to a plain 1x1 convolution.
- a 0-d integer tensor: the whole batch is one domain, chosen at run time (one gather of the
  parameter table, then a single kernel for the batch).
- an integer tensor of shape `(batch,)`: a mixed-domain batch, the form a functional model gets
  from `keras.Input(shape=(), dtype="int32")`. `route` checks at run time whether the batch is
  in fact uniform and then takes the single-kernel path; otherwise it gathers per example.

Python ints and concrete (eager) tensors are range-checked here. Inside a compiled graph the
values are unknown until run time: TensorFlow on CPU then raises from its gather, while JAX and
accelerators clamp or zero-fill out-of-range indices, so validate domain ids in the input
pipeline when running compiled code.
"""

import numpy as np
from keras import KerasTensor, ops
from keras import backend as K


def check_num_domains(num_domains, name="num_domains"):
    """Validates a constructor's number of domains (or tasks) and returns it as an int."""
    if isinstance(num_domains, (bool, np.bool_)) or not isinstance(num_domains, (int, np.integer)):
        raise TypeError(f"`{name}` must be a positive integer. Received: {name}={num_domains!r}")
    if num_domains < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={num_domains}")
    return int(num_domains)


def canonicalize_domain(domain, num_domains, name="domain"):
    """Validates a domain argument and returns a Python int or an int32 tensor.

    Args:
        domain: Python int, 0-d integer tensor, or integer tensor of shape `(batch,)`.
        num_domains: number of domains the caller owns parameters for.
        name: argument name used in error messages.

    Returns:
        A Python int for static domains, otherwise an int32 tensor of rank 0 or 1.
    """
    if domain is None:
        raise ValueError(f"`{name}` is required: pass a domain index. Received: {name}=None")
    if isinstance(domain, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be an integer, not a bool. Received: {name}={domain!r}")
    if isinstance(domain, (int, np.integer)):
        domain = int(domain)
        _check_range(np.asarray(domain), num_domains, name)
        return domain
    if isinstance(domain, (float, np.floating)):
        raise TypeError(f"`{name}` must be an integer. Received: {name}={domain!r}")
    if isinstance(domain, (list, tuple)):
        domain = np.asarray(domain)
    dtype = K.standardize_dtype(domain.dtype)
    if "int" not in dtype:
        raise TypeError(
            f"`{name}` must have an integer dtype. Received: {name} with dtype={dtype}"
        )
    if len(domain.shape) > 1:
        raise ValueError(
            f"`{name}` must be a scalar or have shape (batch,). "
            f"Received: {name} with shape={tuple(domain.shape)}"
        )
    values = _concrete_values(domain)
    if values is not None:
        _check_range(values, num_domains, name)
    return ops.cast(domain, "int32")


def is_uniform(domain):
    """True when `domain` names one domain for the whole batch (int or 0-d tensor)."""
    return isinstance(domain, int) or len(domain.shape) == 0


def gather_domain(params, domain):
    """Selects rows of a per-domain parameter table `params` of shape `(num_domains, ...)`.

    Returns `params[domain]` (shape `(...)`) for a uniform domain and a per-example table of
    shape `(batch, ...)` for a domain vector.
    """
    if isinstance(domain, int):
        return params[domain]
    return ops.take(params, domain, axis=0)


def route(domain, uniform_fn, mixed_fn):
    """Runs `uniform_fn(scalar_domain)` for a one-domain batch, else `mixed_fn(domain_vector)`.

    A domain vector whose entries are all equal is detected at run time (`ops.cond`), so a
    functional model fed one domain per batch runs a single kernel per layer. Both functions
    must return tensors of the same shape and dtype, and must not assign variables.
    """
    if is_uniform(domain):
        return uniform_fn(domain)
    if isinstance(domain, KerasTensor):
        return mixed_fn(domain)
    batch_uniform = ops.logical_and(
        ops.greater(ops.size(domain), 0), ops.all(ops.equal(domain, domain[:1]))
    )
    return ops.cond(batch_uniform, lambda: uniform_fn(domain[0]), lambda: mixed_fn(domain))


def _check_range(values, num_domains, name):
    values = np.asarray(values)
    if values.size == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= num_domains:
        bad = low if low < 0 else high
        raise ValueError(
            f"`{name}` must be in [0, {num_domains}) for a layer with "
            f"num_domains={num_domains}. Received: {name}={bad}"
        )


def _concrete_values(domain):
    """The tensor's values when they are known now (eager), else None (symbolic or traced)."""
    if isinstance(domain, (KerasTensor, np.ndarray)):
        return None if isinstance(domain, KerasTensor) else domain
    try:
        return ops.convert_to_numpy(domain)
    except Exception:  # symbolic TF graph tensor or JAX tracer: values unknown until run time
        return None
