"""Linear algebra of residual adapters at inference: the effective adapter and its folding.

A residual adapter is linear once a domain is fixed, so it merges into the shared kernel:

- parallel: `conv_W(x) + A^T x_tap = conv_{W'}(x)` with `W'[tap] = W[tap] + A`, where `tap` is
  the kernel position whose input the adapter reads (the centre tap for odd kernels);
- series (authors' form `z = y + A^T BN'(y)`, `BN'(y) = a * y + b`):
  `z = (I + diag(a) A)^T y + A^T b`, so `W' = W (I + diag(a) A)` on the output channels and
  `bias' = bias (I + diag(a) A) + b A`;
- a following affine map (a per-domain BatchNorm at inference, `y * s + t`) folds as
  `W' = W * s`, `bias' = bias * s + t`.

Functions take and return backend tensors; kernels have the output channels last.
"""

from typing import NamedTuple

import numpy as np
from keras import ops


class FoldTerms(NamedTuple):
    """A domain layer's inference map before its activation, as folding terms.

    The layer computes `W @ mix + tap(P @ adapter)` with bias `b @ mix + offset` from its
    shared kernel `W` (and bias `b`): `mix` is a per-channel scale (a batch norm folded in), a
    channel-mixing matrix (`matrix=True`: a series adapter) or None; `adapter` a parallel
    adapter `(in, out)` added at the kernel position `tap` (empty for dense), or None;
    `projection` the shared `P` of a low-rank adapter (None: the identity). The fold-on-switch
    export refolds a domain's kernel from these (`keras_mdn.export.fold_on_switch`).
    """

    mix: object = None
    matrix: bool = False
    adapter: object = None
    tap: tuple = ()
    offset: object = None
    projection: object = None


def adapter_matrix(kernel_table, domain, projection=None):
    """The `(in, out)` adapter of `domain`: `kernel_table[domain]`, or `projection @ it`."""
    kernel = kernel_table[domain]
    return kernel if projection is None else ops.matmul(projection, kernel)


def fold_parallel(kernel, adapter, tap):
    """Adds `adapter` `(in, out)` to the kernel position `tap` (tuple, empty for dense)."""
    if not tap:
        return kernel + adapter
    mask = np.zeros(tuple(kernel.shape[:-2]) + (1, 1), dtype="float32")
    mask[tuple(tap)] = 1.0
    return kernel + ops.cast(mask, kernel.dtype) * adapter


def fold_series(kernel, bias, adapter, norm_scale, norm_offset):
    """Composes the series adapter `y + A^T (y * norm_scale + norm_offset)` after a kernel."""
    channels = adapter.shape[0]
    mixing = ops.eye(channels, dtype=adapter.dtype) + ops.expand_dims(norm_scale, -1) * adapter
    kernel = ops.matmul(kernel, mixing)
    if bias is None:
        bias = ops.zeros((channels,), dtype=adapter.dtype)
    bias = ops.matmul(ops.expand_dims(bias, 0), mixing)[0] + ops.matmul(
        ops.expand_dims(norm_offset, 0), adapter
    )[0]
    return kernel, bias


def fold_affine(kernel, bias, scale, offset):
    """Folds a following per-channel affine map `y * scale + offset` into kernel and bias."""
    if bias is None:
        bias = ops.zeros_like(scale)
    return ops.multiply(kernel, scale), ops.add(ops.multiply(bias, scale), offset)
