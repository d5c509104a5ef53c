"""The functional-graph walker every surgery and export shares.

`FunctionalGraph(model)` reads a functional model's nodes from its public, serialisable config
(no private Keras attributes) as named records (`Node`, `GraphInput`), in topological order,
and `run` evaluates them with a handler. `call_with_domain` runs a multi-domain model with a
fixed domain at inference, for export.
"""

import inspect
from typing import NamedTuple

import keras

from keras_mdn.layers.domain_head import DomainHead
from keras_mdn.layers.domain_layer import count_domains, is_domain_layer

DOMAIN_INPUT = "domain"  # the name of a multi-domain model's domain-id input


class Node(NamedTuple):
    """One call of an operation in a functional graph.

    Attributes:
        operation: the layer or `keras.ops` operation.
        name: a unique name of this call (the operation's name, `_<index>` for reuses).
        args: positional arguments, with `TensorRef`s where the call reads a tensor.
        kwargs: keyword arguments, likewise.
        key: `(layer_name, node_index)` of the call's outputs; output `i` is `key + (i,)`.
    """

    operation: object
    name: str
    args: object
    kwargs: object
    key: tuple

    def tensor_keys(self):
        """Keys `(layer_name, node_index, tensor_index)` of the tensors this node reads."""
        return tensor_keys((self.args, self.kwargs))


class GraphInput(NamedTuple):
    """A model input: its name, node key, dtype and shape (batch axis included)."""

    name: str
    key: tuple
    dtype: str
    shape: tuple


class TensorRef(NamedTuple):
    """A tensor read by a node: the key of the node output it reads."""

    key: tuple


class FunctionalGraph:
    """The nodes of a functional model, read from its (public, serialisable) config.

    Attributes:
        model: the model.
        nodes: list of `Node` in topological order.
        inputs: list of `GraphInput`.
        domain_input: the name of the domain input (the input named `"domain"`, else the
            integer-typed input), or None.
        outputs: the output structure, with `(layer_name, node_index, tensor_index)` leaves.
        uses: number of reads of each output tensor `(layer_name, node_index, tensor_index)`,
            model outputs included.
        consumers: indices into `nodes` of the nodes reading each output tensor.
        num_domains: `keras_mdn.layers.domain_layer.count_domains(model)`.
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
                args = _parse(node.get("args", []))
                kwargs = _parse(node.get("kwargs", {}))
                name = op.name if index == 0 else f"{op.name}_{index}"
                pending.append(Node(op, name, args, kwargs, (op.name, index)))
        self.inputs = []
        integer_inputs = []
        for history in _history_leaves(_history_structure(config["input_layers"])):
            layer = operations[history[0]]
            tensor = layer.output
            dtype = keras.backend.standardize_dtype(tensor.dtype)
            self.inputs.append(GraphInput(layer.name, (history[0], history[1]), dtype,
                                          tensor.shape))
            if "int" in dtype:
                integer_inputs.append(layer.name)
        # The input named "domain" (float32 from `keras_mdn.domain_input`), else the one
        # integer-typed input.
        names = [i.name for i in self.inputs]
        if DOMAIN_INPUT in names:
            self.domain_input = DOMAIN_INPUT
        elif len(integer_inputs) > 1:
            raise ValueError(
                "Expected one integer (domain) input or one named 'domain'. Received: model "
                f"with integer inputs {integer_inputs}"
            )
        else:
            self.domain_input = integer_inputs[0] if integer_inputs else None
        self.outputs = _history_structure(config["output_layers"])
        for history in _history_leaves(self.outputs):
            self._count(history)
        # Topological order (the config lists layers in order, but shared layers' nodes may
        # read tensors of later layers).
        available = {graph_input.key for graph_input in self.inputs}
        self.nodes = []
        while pending:
            remaining = []
            for node in pending:
                if all(k[:2] in available for k in node.tensor_keys()):
                    self.nodes.append(node)
                    available.add(node.key)
                else:
                    remaining.append(node)
            if len(remaining) == len(pending):
                raise ValueError(f"Cannot order the graph of model {model.name!r}.")
            pending = remaining
        self.consumers = {}
        for index, node in enumerate(self.nodes):
            for key in node.tensor_keys():
                self._count(key)
                self.consumers.setdefault(key, []).append(index)
        self.num_domains = count_domains(model)

    def _count(self, key):
        self.uses[key] = self.uses.get(key, 0) + 1

    def input_names(self, domain=False):
        """Names of the model inputs, without the domain input unless `domain`."""
        return [i.name for i in self.inputs if domain or i.name != self.domain_input]

    def run(self, input_values, handler):
        """Evaluates the graph: `handler(op, name, args, kwargs, key)` computes each node.

        Args:
            input_values: dict input name -> value (the domain input included if it is read).
            handler: returns the node's output (any value type the handler understands; an
                object that is not a list, tuple or dict counts as one output).

        Returns:
            The model outputs' structure with the handler's values.
        """
        values = {}
        for graph_input in self.inputs:
            if graph_input.name in input_values:
                values[graph_input.key + (0,)] = input_values[graph_input.name]

        def resolve(value):
            if isinstance(value, TensorRef):
                if value.key not in values:
                    raise ValueError(f"Missing value for the model input {value.key[0]!r}.")
                return values[value.key]
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in value.items()}
            if isinstance(value, list):
                return [resolve(v) for v in value]
            if isinstance(value, tuple):
                return tuple(resolve(v) for v in value)
            return value

        for node in self.nodes:
            outputs = handler(node.operation, node.name, resolve(node.args),
                              resolve(node.kwargs), node.key)
            for index, output in enumerate(keras.tree.flatten(outputs)):
                values[node.key + (index,)] = output
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
    names = graph.input_names()
    if not isinstance(inputs, dict):
        if len(names) != 1:
            raise ValueError(f"Pass a dict for the model inputs {names}. Received: {inputs!r}")
        inputs = {names[0]: inputs}
    values = dict(inputs)
    if graph.domain_input is not None:
        values[graph.domain_input] = domain

    def handler(op, name, args, kwargs, key):
        if is_domain_layer(op) and len(args) > 1:
            # Keras layers take only tensors positionally; a Python int domain goes by name.
            args, kwargs = args[:1], {**kwargs, op.domain_argument: args[1]}
        # Padded logits are DomainHead's own convention: only a head can drop them.
        if head_classes_only and isinstance(op, DomainHead) and isinstance(domain, int):
            kernel, bias = op.domain_weights(kwargs.get("domain", domain))
            logits = keras.ops.matmul(args[0], kernel)
            return logits if bias is None else logits + bias
        if isinstance(op, keras.layers.Layer) and accepts_training(op):
            kwargs = {**kwargs, "training": False}
        return op(*args, **kwargs)

    return graph.run(values, handler)


def accepts_training(layer):
    """True when `layer.call` takes a `training` argument."""
    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False


def tensor_keys(structure):
    """Keys of the `TensorRef`s in a structure of node arguments."""
    keys = []

    def visit(value):
        if isinstance(value, TensorRef):
            keys.append(tuple(value.key))
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    visit(structure)
    return keys


def _parse(value):
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return TensorRef(tuple(value["config"]["keras_history"]))
        if value.get("class_name") == "__tuple__":
            return tuple(_parse(v) for v in value["config"]["value"])
        return {k: _parse(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_parse(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_parse(v) for v in value)
    return value


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


__all__ = ["FunctionalGraph", "GraphInput", "Node", "TensorRef", "call_with_domain"]
