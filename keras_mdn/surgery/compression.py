"""Cross-domain SVD compression of a trained multi-domain model's residual adapters."""

import keras
import numpy as np
from keras import ops

from keras_mdn.layers.residual_adapter import ResidualAdapter
from keras_mdn.ops import compression
from keras_mdn.surgery.rebuild import LayerCopies, graph_layers, rebuild


def compress_adapters(model, rank=None, energy=None, name=None):
    """Replaces every `ResidualAdapter` by its low-rank cross-domain SVD form.

    For each adapter layer, the effective adapters of the T domains are stacked,
    `M = [A_1 ... A_T]` `(C_in, T * C_out)`, and truncated by SVD to rank r:
    `A_t ~= beta gamma_t` with `beta` `(C_in, r)` shared and `gamma_t` `(r, C_out)` per
    domain, stored as `ResidualAdapter(rank=r)` (`adapter_projection = beta`,
    `adapter_kernel[t] = gamma_t`). The rank of each layer is `rank` (capped at
    `min(C_in, T * C_out)`, the rank of the stacked adapters) or the smallest keeping `energy`
    of the squared singular values. At the full rank `min(C_in, T * C_out)` the adapters are
    reproduced exactly; otherwise the relative error of the stack is the SVD's tail,
    `sqrt(sum_{i > r} s_i^2 / sum_i s_i^2)` (`keras_mdn.ops.compression`).

    Every other layer, the wrapped convs included, is copied (config and weights): the new
    model is independent of the original.

    Args:
        model: a functional multi-domain model with `ResidualAdapter` layers.
        rank: positive int, the rank of every layer (capped per layer).
        energy: float in (0, 1], the share of squared singular values to keep per layer.
            Exactly one of `rank` and `energy`.
        name: name of the new model. Defaults to the original's.

    Returns:
        `(compressed_model, report)`: `report` is a list with one dict per adapter layer:
        `layer`, `rank`, `max_rank`, `relative_error`, `energy`, `parameters_before`,
        `parameters_after` (adapter parameters of all domains, shared projection included).

    Example:

    >>> small, report = compress_adapters(model, energy=0.9)
    >>> [(row["layer"], row["rank"], row["relative_error"]) for row in report]
    """
    compression.check_rank_or_energy(rank, energy)
    if not any(isinstance(layer, ResidualAdapter) for layer in graph_layers(model)):
        raise ValueError(
            f"`model` has no ResidualAdapter to compress. Received: model={model.name!r}"
        )
    report, compressed_layers, copies = [], {}, LayerCopies()

    def call(op, args, kwargs, domain):
        if not isinstance(op, ResidualAdapter):
            return copies(op, args, kwargs)
        first = id(op) not in compressed_layers
        if first:
            compressed_layers[id(op)], row = _compress_layer(op, rank, energy)
            report.append(row)
        outputs = compressed_layers[id(op)](*args, **kwargs)
        if first:
            _set_low_rank(op, compressed_layers[id(op)], report[-1])
        return outputs

    compressed = rebuild(model, call, name=name)
    for row in report:
        row.pop("_factors", None)
    return compressed, report


def _compress_layer(layer, rank, energy):
    adapters = np.stack(
        [ops.convert_to_numpy(layer.adapter_matrix(d)) for d in range(layer.num_domains)]
    )
    num_domains, in_channels, out_channels = adapters.shape
    max_rank = min(in_channels, num_domains * out_channels)
    factors = compression.compress_stacked(adapters, rank, energy, max_rank=max_rank)
    r = factors["rank"]
    conv = layer.layer
    wrapped = type(conv).from_config(conv.get_config())
    new = ResidualAdapter(
        wrapped,
        layer.num_domains,
        mode=layer.mode,
        rank=r,
        adapter_initializer=layer.adapter_initializer,
        projection_initializer=layer.projection_initializer,
        adapter_regularizer=layer.adapter_regularizer,
        name=layer.name,
    )
    new.trainable = layer.trainable
    new.layer.trainable = conv.trainable
    before = sum(
        int(np.prod(v.shape))
        for v in (layer.adapter_kernel, layer.adapter_projection)
        if v is not None
    )
    return new, {
        "layer": layer.name,
        "rank": r,
        "max_rank": max_rank,
        "relative_error": factors["relative_error"],
        "energy": factors["energy"],
        "parameters_before": before,
        "parameters_after": in_channels * r + layer.num_domains * r * out_channels,
        "_factors": factors,
    }


def _set_low_rank(old, new, row):
    factors = row["_factors"]
    new.layer.set_weights(old.layer.get_weights())
    for variable, value in (
        (new.adapter_projection, factors["projection"]),
        (new.adapter_kernel, factors["kernels"]),
    ):
        variable.assign(value.astype(keras.backend.standardize_dtype(variable.dtype)))
    if old.adapter_norm is not None:
        new.adapter_norm.set_weights(old.adapter_norm.get_weights())
