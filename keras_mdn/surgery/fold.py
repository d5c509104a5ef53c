"""Folding a multi-domain functional model into a plain single-domain Keras model.

`fold_domain(model, domain)` walks the functional graph of a multi-domain model (inputs
`"image"` or `"features"` and `"domain"`) and rebuilds it for one fixed domain with plain Keras
layers only:

- a `ResidualAdapter` becomes its wrapped `Conv1D`/`Conv2D`/`Dense` with the domain's adapter
  merged into the kernel (`ResidualAdapter.folded_kernel`, i.e. `keras_mdn.ops.folding`);
- a `DomainBatchNormalization` (or a `keras.layers.BatchNormalization` on the last axis) whose
  input is the only use of a conv/dense/adapter output without activation is merged into that
  layer's kernel and bias (`folding.fold_affine`); any other one becomes a fixed
  `keras.layers.BatchNormalization` holding the domain's statistics;
- a `DomainHead` becomes a `Dense` with that domain's classes only;
- a `FactorizedDense` / `FactorizedConv1D` / `FactorizedConv2D` reading the domain as its task
  becomes a `Dense` / `Conv*D` with the task's reconstructed kernel (`task_kernel`), or stays
  factorised (called with the fixed task) when its factors are smaller than one reconstructed
  kernel (`factorized="auto"`, e.g. a TT-matrix layer that compresses a big dense layer);
- every other layer is copied (config and weights); a non-layer operation (`keras.ops.*` used
  on symbolic tensors) is re-applied.

The folded model costs exactly what the base network (the same architecture without adapters)
costs when folded the same way.

`call_with_domain(model, inputs, domain)` runs the same graph with the original layers and
`domain` given as a Python int (static: per-domain weights are sliced while tracing, so an
exported endpoint holds that domain's weights as constants) or a 0-d int tensor (one domain per
batch, chosen at run time). The export code traces its endpoints with it.
"""

import keras
import numpy as np

from keras_mdn.layers.domain_batch_normalization import DomainBatchNormalization
from keras_mdn.layers.domain_head import DomainHead
from keras_mdn.layers.factorized_conv import BaseFactorizedConv
from keras_mdn.layers.factorized_dense import FactorizedDense
from keras_mdn.layers.residual_adapter import ResidualAdapter
from keras_mdn.ops import folding, routing

_LINEAR_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Dense)
FACTORIZED_LAYERS = (FactorizedDense, BaseFactorizedConv)
DOMAIN_LAYERS = (ResidualAdapter, DomainBatchNormalization, DomainHead) + FACTORIZED_LAYERS
FACTORIZED_CHOICES = ("auto", "reconstruct", "keep")


class FunctionalGraph:
    """The nodes of a functional model, read from its (public, serialisable) config.

    Attributes:
        model: the model.
        nodes: list of `(operation, node_name, args, kwargs, key)` in topological order;
            `args`/`kwargs` hold `("tensor", key)` markers where the node reads a tensor, and
            `key` is `(layer_name, node_index)` of the node's outputs.
        inputs: list of `(name, key, dtype, shape)` of the model inputs.
        domain_input: the name of the domain input (the integer-typed input), or None.
        outputs: the output structure, with `(layer_name, node_index, tensor_index)` leaves.
        uses: number of reads of each output tensor `(layer_name, node_index, tensor_index)`,
            model outputs included.
        consumers: indices into `nodes` of the nodes reading each output tensor.
    """

    def __init__(self, model):
        if not isinstance(model, keras.Model):
            raise TypeError(f"Expected a keras.Model. Received: model={model!r}")
        config = model.get_config()
        if "layers" not in config or "input_layers" not in config:
            raise TypeError(
                "Expected a functional keras.Model (built with keras.Input). Received: "
                f"model={model.name!r} of type {type(model).__name__}"
            )
        self.model = model
        operations = {op.name: op for op in model.operations}
        self.uses = {}
        pending = []
        for layer_config in config["layers"]:
            op = operations[layer_config["name"]]
            for index, node in enumerate(layer_config.get("inbound_nodes", [])):
                args = self._parse(node.get("args", []))
                kwargs = self._parse(node.get("kwargs", {}))
                name = op.name if index == 0 else f"{op.name}_{index}"
                pending.append((op, name, args, kwargs, (op.name, index)))
        input_keys = _history_leaves(_history_structure(config["input_layers"]))
        by_name = {layer.name: layer for layer in model.operations}
        self.inputs = []
        self.domain_input = None
        for history in input_keys:
            layer = by_name[history[0]]
            tensor = layer.output
            dtype = keras.backend.standardize_dtype(tensor.dtype)
            self.inputs.append((layer.name, (history[0], history[1]), dtype, tensor.shape))
            if "int" in dtype:
                if self.domain_input is not None:
                    raise ValueError(
                        "Expected one integer (domain) input. Received: model with integer "
                        f"inputs {self.domain_input!r} and {layer.name!r}"
                    )
                self.domain_input = layer.name
        self.outputs = _history_structure(config["output_layers"])
        for history in _history_leaves(self.outputs):
            self._count(history)
        # Topological order (the config lists layers in order, but shared layers' nodes may
        # read tensors of later layers).
        available = {key for _, key, _, _ in self.inputs}
        self.nodes = []
        while pending:
            remaining = []
            for node in pending:
                if all(k[:2] in available for k in _tensor_keys((node[2], node[3]))):
                    self.nodes.append(node)
                    available.add(node[4])
                else:
                    remaining.append(node)
            if len(remaining) == len(pending):
                raise ValueError(f"Cannot order the graph of model {model.name!r}.")
            pending = remaining
        self.consumers = {}
        for index, node in enumerate(self.nodes):
            for key in _tensor_keys((node[2], node[3])):
                self._count(key)
                self.consumers.setdefault(key, []).append(index)
        self.num_domains = max(
            (
                getattr(op, "num_tasks", None) or getattr(op, "num_domains", 0)
                for op in model.operations
                if isinstance(op, DOMAIN_LAYERS)
            ),
            default=0,
        )

    def _count(self, key):
        self.uses[key] = self.uses.get(key, 0) + 1

    def _parse(self, value):
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                return ("tensor", tuple(value["config"]["keras_history"]))
            if value.get("class_name") == "__tuple__":
                return tuple(self._parse(v) for v in value["config"]["value"])
            return {k: self._parse(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._parse(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._parse(v) for v in value)
        return value

    def run(self, input_values, handler):
        """Evaluates the graph: `handler(op, name, args, kwargs, key)` computes each node.

        Args:
            input_values: dict input name -> value (the domain input included if it is read).
            handler: returns the node's output (any value type the handler understands).

        Returns:
            The model outputs' structure with the handler's values.
        """
        values = {}
        for name, key, _, _ in self.inputs:
            if name in input_values:
                values[key + (0,)] = input_values[name]

        def resolve(value):
            if isinstance(value, tuple) and len(value) == 2 and value[0] == "tensor":
                key = value[1]
                if key not in values:
                    raise ValueError(f"Missing value for the model input {key[0]!r}.")
                return values[key]
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in value.items()}
            if isinstance(value, list):
                return [resolve(v) for v in value]
            if isinstance(value, tuple):
                return tuple(resolve(v) for v in value)
            return value

        for op, name, args, kwargs, key in self.nodes:
            outputs = handler(op, name, resolve(args), resolve(kwargs), key)
            flat = keras.tree.flatten(outputs) if not isinstance(outputs, _Linear) else [outputs]
            for index, output in enumerate(flat):
                values[key + (index,)] = output
        return _map_history(lambda history: values[history], self.outputs)


def call_with_domain(model, inputs, domain, graph=None, head_classes_only=False):
    """Runs a functional multi-domain model with a static or scalar `domain`, at inference.

    Args:
        model: functional model with a domain input.
        inputs: the non-domain input (a tensor) or a dict input name -> tensor.
        domain: Python int (static: weights are sliced while tracing) or a 0-d int tensor.
        graph: an optional `FunctionalGraph` of `model` (built once by callers tracing many
            endpoints).
        head_classes_only: with a Python int `domain`, each `DomainHead` returns only the
            domain's classes `(batch, num_classes[domain])` instead of the padded logits (no
            padding value then reaches the graph: it would ruin int8 output scales).

    Returns:
        The model's outputs.
    """
    graph = graph or FunctionalGraph(model)
    names = [name for name, _, _, _ in graph.inputs if name != graph.domain_input]
    if not isinstance(inputs, dict):
        if len(names) != 1:
            raise ValueError(f"Pass a dict for the model inputs {names}. Received: {inputs!r}")
        inputs = {names[0]: inputs}
    values = dict(inputs)
    if graph.domain_input is not None:
        values[graph.domain_input] = domain

    def handler(op, name, args, kwargs, key):
        if isinstance(op, DOMAIN_LAYERS) and len(args) > 1:
            # Keras layers take only tensors positionally; a Python int domain goes by name.
            name = "task" if isinstance(op, FACTORIZED_LAYERS) else "domain"
            args, kwargs = args[:1], {**kwargs, name: args[1]}
        if head_classes_only and isinstance(op, DomainHead) and isinstance(domain, int):
            kernel, bias = op.domain_weights(kwargs.get("domain", domain))
            logits = keras.ops.matmul(args[0], kernel)
            return logits if bias is None else logits + bias
        if isinstance(op, keras.layers.Layer) and _accepts_training(op):
            kwargs = {**kwargs, "training": False}
        return op(*args, **kwargs)

    return graph.run(values, handler)


def _accepts_training(layer):
    import inspect

    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False


def fold_domain(model, domain, factorized="auto"):
    """A plain single-domain Keras model with adapters, domain BNs and head folded in.

    Args:
        model: a functional multi-domain model (e.g. `keras_mdn.models.resnet26`) with a
            domain input, or a single-input model whose domain layers get Python ints.
        domain: Python int, the domain to fold.
        factorized: what becomes of factorised layers reading the domain as their task:
            `"reconstruct"` (a plain layer with the task's kernel), `"keep"` (the factorised
            layer called with the fixed task) or `"auto"` (whichever holds fewer parameters).
            Defaults to `"auto"`.

    Returns:
        A `keras.Model` with the model's non-domain input(s) (e.g. `"image"`) and the domain's
        logits `(batch, num_classes[domain])` (a `DomainHead` keeps only the domain's classes).

    Raises:
        ValueError: for a domain out of range, or a layer that reads the domain and is not
            one of `ResidualAdapter`, `DomainBatchNormalization`, `DomainHead` (the error names
            the layer).

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
    for name, _, dtype, shape in graph.inputs:
        if name == graph.domain_input:
            values[name] = _DOMAIN
        else:
            values[name] = keras.Input(shape=tuple(shape[1:]), dtype=dtype, name=name)
    folder = _Folder(graph, domain, factorized)
    outputs = graph.run(values, folder)
    outputs = keras.tree.map_structure(folder.materialize, outputs)
    inputs = [values[name] for name, _, _, _ in graph.inputs if name != graph.domain_input]
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
        """The domain a domain layer was called with (the model's, or a fixed Python int)."""
        name = "task" if isinstance(op, FACTORIZED_LAYERS) else "domain"
        domain = kwargs.get(name, args[1] if len(args) > 1 else None)
        if domain is _DOMAIN:
            return self.domain
        if isinstance(domain, (int, np.integer)) and not isinstance(domain, bool):
            return int(domain)
        raise ValueError(
            f"fold_domain: layer {op.name!r} ({type(op).__name__}) is called with a domain "
            "that is neither the model's domain input nor a Python int. "
            f"Received: domain={domain!r}"
        )

    def __call__(self, op, name, args, kwargs, key):
        if isinstance(op, ResidualAdapter):
            return self._adapter(op, name, args, kwargs, key)
        if isinstance(op, (DomainBatchNormalization, keras.layers.BatchNormalization)):
            return self._normalization(op, name, args, kwargs, key)
        if isinstance(op, FACTORIZED_LAYERS) and _reads_domain(args, kwargs):
            return self._factorized(op, name, args, kwargs, key)
        if isinstance(op, DomainHead):
            domain = self._domain_argument(op, args, kwargs)
            kernel, bias = op.domain_weights(domain)
            config = {"units": op.num_classes[domain], "use_bias": bias is not None}
            return _Linear(
                keras.layers.Dense, config, kernel, bias, self.materialize(args[0]), name, key
            )
        if type(op) in _LINEAR_TYPES and not _reads_domain(args, kwargs):
            layer_input = self.materialize(args[0])
            return _Linear(
                type(op), op.get_config(), op.kernel, op.bias, layer_input, name, key
            )
        return self._copy(op, name, args, kwargs)

    def _factorized(self, op, name, args, kwargs, key):
        task = self._domain_argument(op, args, kwargs)
        kernel = op.task_kernel(task)
        bias = None if op.bias is None else op.bias[task]
        reconstructed = int(np.prod(kernel.shape)) + (0 if bias is None else int(bias.shape[0]))
        keep = self.factorized == "keep" or (
            self.factorized == "auto" and op.count_params() < reconstructed
        )
        if keep:
            kwargs = {k: v for k, v in kwargs.items() if k != "task"}
            return self._copy(op, name, args[:1], {**kwargs, "task": task})
        activation = keras.activations.serialize(op.activation) if op.activation else None
        if isinstance(op, FactorizedDense):
            cls, config = keras.layers.Dense, {"units": op.units}
        else:
            cls = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D}[op.rank_spatial]
            config = {
                "filters": op.filters,
                "kernel_size": op.kernel_size,
                "strides": op.strides,
                "padding": op.padding,
                "dilation_rate": op.dilation_rate,
            }
        config["activation"] = activation
        return _Linear(cls, config, kernel, bias, self.materialize(args[0]), name, key)

    def _adapter(self, op, name, args, kwargs, key):
        domain = self._domain_argument(op, args, kwargs)
        try:
            kernel, bias = op.folded_kernel(domain)
        except (NotImplementedError, ValueError) as error:
            raise ValueError(
                f"fold_domain cannot fold layer {op.name!r} (ResidualAdapter wrapping "
                f"{type(op.layer).__name__}): {error}"
            ) from error
        config = op.layer.get_config()
        if op.mode == "series":
            config["activation"] = None
        return _Linear(type(op.layer), config, kernel, bias, self.materialize(args[0]), name, key)

    def _normalization(self, op, name, args, kwargs, key):
        source = args[0]
        if isinstance(op, DomainBatchNormalization):
            domain = self._domain_argument(op, args, kwargs)
            scale, offset = op.affine(domain)
            statistics = [
                None if op.gamma is None else op.gamma[domain],
                None if op.beta is None else op.beta[domain],
                op.moving_mean[domain],
                op.moving_variance[domain],
            ]
            bn_config = {"epsilon": op.epsilon, "center": op.center, "scale": op.scale}
        else:
            axis = op.axis if isinstance(op.axis, int) else None
            if _reads_domain(args, kwargs) or axis not in (-1, len(source_shape(source)) - 1):
                return self._copy(op, name, args, kwargs)
            scale = keras.ops.rsqrt(op.moving_variance + op.epsilon)
            if op.gamma is not None:
                scale = scale * op.gamma
            offset = -op.moving_mean * scale
            if op.beta is not None:
                offset = offset + op.beta
            statistics = None
        if (
            isinstance(source, _Linear)
            and not source.activation
            and self.graph.uses[source.key + (0,)] == 1
            and source.output is None
        ):
            kernel, bias = folding.fold_affine(source.kernel, source.bias, scale, offset)
            return _Linear(source.cls, source.config, kernel, bias, source.inputs, source.name,
                           key)
        if statistics is None:
            return self._copy(op, name, args, kwargs)
        layer = keras.layers.BatchNormalization(name=name, **bn_config)
        output = layer(self.materialize(source))
        layer.set_weights(
            [keras.ops.convert_to_numpy(w) for w in statistics if w is not None]
        )
        return output

    def _copy(self, op, name, args, kwargs):
        if _reads_domain(args, kwargs):
            raise ValueError(
                f"fold_domain does not know how to fold layer {op.name!r} "
                f"({type(op).__name__}): it reads the domain input. Foldable domain layers: "
                "ResidualAdapter, DomainBatchNormalization, DomainHead, FactorizedDense, "
                "FactorizedConv1D, FactorizedConv2D."
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


def _is_history(value):
    return (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and isinstance(value[0], str)
        and all(isinstance(v, int) for v in value[1:])
    )


def _history_structure(value):
    """Input/output layer specs as a structure with tuple leaves."""
    if _is_history(value):
        return tuple(value)
    if isinstance(value, dict):
        return {k: _history_structure(v) for k, v in value.items()}
    return [_history_structure(v) for v in value]


def _map_history(fn, structure):
    if isinstance(structure, tuple):
        return fn(structure)
    if isinstance(structure, dict):
        return {k: _map_history(fn, v) for k, v in structure.items()}
    return [_map_history(fn, v) for v in structure]


def _history_leaves(structure):
    leaves = []
    _map_history(leaves.append, structure)
    return leaves


def _tensor_keys(structure):
    keys = []

    def visit(value):
        if isinstance(value, tuple) and len(value) == 2 and value[0] == "tensor":
            keys.append(tuple(value[1]))
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    visit(structure)
    return keys


__all__ = ["FunctionalGraph", "call_with_domain", "fold_domain"]
