"""Folding a multi-domain functional model into a plain single-domain Keras model.

`fold_domain(model, domain)` walks the functional graph of a multi-domain model (inputs
`"image"` or `"features"` and `"domain"`) and rebuilds it for one fixed domain with plain Keras
layers only. Every domain layer folds itself (`DomainLayer.fold`, see
`keras_mdn.layers.domain_layer`): a `ResidualAdapter` becomes its wrapped conv/dense with the
domain's adapter merged into the kernel, a `DomainBatchNormalization` a `BatchNormalization`
with the domain's statistics, a `DomainHead` a `Dense` with the domain's classes only, a
factorised layer a `Dense` / `Conv*D` with the task's reconstructed kernel. This module then:

- merges a `BatchNormalization` on the last axis (folded or plain) whose input is the only use
  of a conv/dense output without activation into that layer's kernel and bias
  (`keras_mdn.ops.folding.fold_affine`);
- keeps a factorised domain layer, called with the fixed domain, when its factors are smaller
  than its folded kernel (`factorized="auto"`, e.g. a TT-matrix layer that compresses a big
  dense layer);
- copies every other layer (config and weights) and re-applies non-layer operations
  (`keras.ops.*` used on symbolic tensors).

The folded model costs exactly what the base network (the same architecture without adapters)
costs when folded the same way.
"""

import keras
import numpy as np

from keras_mdn.layers.domain_layer import is_domain_layer
from keras_mdn.ops import folding, routing
from keras_mdn.surgery.graph import FunctionalGraph

_LINEAR_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Dense)
FACTORIZED_CHOICES = ("auto", "reconstruct", "keep")


def fold_domain(model, domain, factorized="auto"):
    """A plain single-domain Keras model with adapters, domain BNs and head folded in.

    Args:
        model: a functional multi-domain model (e.g. `keras_mdn.models.resnet26`) with a
            domain input, or a single-input model whose domain layers get Python ints.
        domain: Python int, the domain to fold.
        factorized: what becomes of factorised domain layers (`DomainLayer.factorized`):
            `"reconstruct"` (a plain layer with the task's kernel), `"keep"` (the factorised
            layer called with the fixed task) or `"auto"` (whichever holds fewer parameters).
            Defaults to `"auto"`.

    Returns:
        A `keras.Model` with the model's non-domain input(s) (e.g. `"image"`) and the domain's
        logits `(batch, num_classes[domain])` (a `DomainHead` keeps only the domain's classes).

    Raises:
        ValueError: for a domain out of range, or a layer that reads the domain and does not
            implement `DomainLayer.fold` (the error names the layer).

    Example:

    >>> plain = fold_domain(multi_domain_model, domain=2)
    >>> plain.predict(images)  # == multi_domain_model({"image": images, "domain": 2s})
    """
    if factorized not in FACTORIZED_CHOICES:
        raise ValueError(
            f"`factorized` must be one of {FACTORIZED_CHOICES}. Received: factorized={factorized!r}"
        )
    graph = FunctionalGraph(model)
    if isinstance(domain, (bool, np.bool_)) or not isinstance(domain, (int, np.integer)):
        raise TypeError(f"`domain` must be a Python int. Received: domain={domain!r}")
    domain = routing.canonicalize_domain(int(domain), max(graph.num_domains, 1))
    values = {}
    for graph_input in graph.inputs:
        name = graph_input.name
        if name == graph.domain_input:
            values[name] = _DOMAIN
        else:
            values[name] = keras.Input(shape=tuple(graph_input.shape[1:]),
                                       dtype=graph_input.dtype, name=name)
    folder = _Folder(graph, domain, factorized)
    outputs = graph.run(values, folder)
    outputs = keras.tree.map_structure(folder.materialize, outputs)
    inputs = [values[name] for name in graph.input_names()]
    return keras.Model(
        inputs[0] if len(inputs) == 1 else inputs, outputs, name=f"{model.name}_domain_{domain}"
    )


class _DomainMarker:
    def __repr__(self):
        return "<domain input>"


_DOMAIN = _DomainMarker()


class _Linear:
    """A conv/dense whose weights may still absorb a following affine map."""

    def __init__(self, cls, config, kernel, bias, inputs, name, key):
        self.cls, self.config, self.inputs, self.name = cls, config, inputs, name
        self.kernel = np.asarray(keras.ops.convert_to_numpy(kernel), dtype="float32")
        self.bias = None if bias is None else np.asarray(
            keras.ops.convert_to_numpy(bias), dtype="float32"
        )
        self.key = key
        self.output = None

    @property
    def activation(self):
        return self.config.get("activation") not in (None, "linear")


class _Folder:
    def __init__(self, graph, domain, factorized="auto"):
        self.graph, self.domain, self.factorized = graph, domain, factorized

    def materialize(self, value):
        if not isinstance(value, _Linear):
            return value
        if value.output is None:
            config = {**value.config, "name": value.name, "use_bias": value.bias is not None}
            layer = value.cls.from_config(config)
            value.output = layer(value.inputs)
            layer.set_weights([value.kernel] + ([] if value.bias is None else [value.bias]))
        return value.output

    def _domain_argument(self, op, args, kwargs):
        """The domain a domain layer is called with (the model's, a Python int, or None)."""
        domain = args[1] if len(args) > 1 else None
        for keyword in (op.domain_argument, *op.domain_argument_aliases):
            domain = kwargs.get(keyword, domain)
        if domain is _DOMAIN:
            return self.domain
        if isinstance(domain, (int, np.integer)) and not isinstance(domain, bool):
            return int(domain)
        if domain is None:
            return None
        raise ValueError(
            f"fold_domain: layer {op.name!r} ({type(op).__name__}) is called with a domain "
            "that is neither the model's domain input nor a Python int. "
            f"Received: domain={domain!r}"
        )

    def __call__(self, op, name, args, kwargs, key):
        if is_domain_layer(op):
            domain = self._domain_argument(op, args, kwargs)
            if domain is not None:
                return self._domain_layer(op, domain, name, args, kwargs, key)
        if isinstance(op, keras.layers.BatchNormalization) and not _reads_domain(args, kwargs):
            return self._normalization(op, args[0], name, key, op)
        if type(op) in _LINEAR_TYPES and not _reads_domain(args, kwargs):
            return _Linear(type(op), op.get_config(), op.kernel, op.bias,
                           self.materialize(args[0]), name, key)
        return self._copy(op, name, args, kwargs)

    def _domain_layer(self, op, domain, name, args, kwargs, key):
        try:
            layers = op.fold(domain)
        except NotImplementedError as error:
            raise ValueError(
                f"fold_domain does not know how to fold layer {op.name!r} "
                f"({type(op).__name__}): {error}"
            ) from error
        if op.factorized:
            folded = sum(layer.count_params() for layer in layers)
            if self.factorized == "keep" or (
                self.factorized == "auto" and op.count_params() < folded
            ):
                keywords = (op.domain_argument, *op.domain_argument_aliases)
                kwargs = {k: v for k, v in kwargs.items() if k not in keywords}
                return self._copy(op, name, args[:1], {**kwargs, op.domain_argument: domain})
        value = args[0]
        for index, layer in enumerate(layers):
            last = index == len(layers) - 1
            value = self._plain(layer, value, name if index == 0 else f"{name}_{index}",
                                key if last else None)
        return value

    def _plain(self, layer, value, name, key):
        """Applies one folded plain layer to `value` (a tensor or a pending `_Linear`)."""
        if isinstance(layer, keras.layers.BatchNormalization):
            return self._normalization(layer, value, name, key, layer)
        if type(layer) in _LINEAR_TYPES:
            return _Linear(type(layer), layer.get_config(), layer.kernel, layer.bias,
                           self.materialize(value), name, key)
        return self._copy(layer, name, [value], {})

    def _normalization(self, op, source, name, key, layer):
        """A last-axis batch norm merges into a preceding conv/dense that nothing else reads."""
        axis = op.axis if isinstance(op.axis, int) else None
        if axis not in (-1, len(source_shape(source)) - 1):
            return self._copy(layer, name, [source], {})
        scale = keras.ops.rsqrt(op.moving_variance + op.epsilon)
        if op.gamma is not None:
            scale = scale * op.gamma
        offset = -op.moving_mean * scale
        if op.beta is not None:
            offset = offset + op.beta
        if (
            isinstance(source, _Linear)
            and not source.activation
            and (source.key is None or self.graph.uses[source.key + (0,)] == 1)
            and source.output is None
        ):
            kernel, bias = folding.fold_affine(source.kernel, source.bias, scale, offset)
            return _Linear(source.cls, source.config, kernel, bias, source.inputs, source.name,
                           key)
        return self._copy(layer, name, [source], {})

    def _copy(self, op, name, args, kwargs):
        if _reads_domain(args, kwargs):
            raise ValueError(
                f"fold_domain does not know how to fold layer {op.name!r} "
                f"({type(op).__name__}): it reads the domain input. Layers that read the "
                "domain fold when they implement keras_mdn.layers.DomainLayer."
            )
        args = keras.tree.map_structure(self.materialize, args)
        kwargs = keras.tree.map_structure(self.materialize, kwargs)
        if not isinstance(op, keras.layers.Layer):
            return op(*args, **kwargs)  # a stateless keras.ops operation
        try:
            config = {**op.get_config(), "name": name}
            layer = type(op).from_config(config)
        except Exception as error:
            raise ValueError(
                f"fold_domain cannot copy layer {op.name!r} ({type(op).__name__}): its config "
                f"does not round-trip ({error})."
            ) from error
        output = layer(*args, **kwargs)
        weights = op.get_weights()
        if weights:
            layer.set_weights(weights)
        return output


def source_shape(value):
    return value.inputs.shape if isinstance(value, _Linear) else value.shape


def _reads_domain(args, kwargs):
    return any(v is _DOMAIN for v in keras.tree.flatten((args, kwargs)))


__all__ = ["fold_domain"]
