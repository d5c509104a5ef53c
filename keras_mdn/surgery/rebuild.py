"""Re-running a functional model's graph with some layers replaced: the core of model surgery.

The graph is read with `keras_mdn.surgery.graph.FunctionalGraph` (from the model's public
config, no private Keras attributes), so folding and the other surgeries walk graphs the
same way. Nested functional models (a `keras.applications` backbone inside a `Sequential`)
are inlined, so their layers can be replaced too.
"""

import keras

from keras_mdn.layers.domain_layer import domain_input
from keras_mdn.surgery.graph import DOMAIN_INPUT, FunctionalGraph


def as_functional(model):
    """`model` as a functional model (a built `Sequential` is re-wrapped on its tensors)."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model. Received: model={model!r}")
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            "Expected a built functional keras.Model (made with keras.Input). Received: "
            f"model={model.name!r} of type {type(model).__name__}, not built"
        )
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


def rebuild(model, call, add_domain_input=False, name=None):
    """Rebuilds `model` on fresh inputs, calling `call(op, args, kwargs, domain)` per node.

    Args:
        model: a built functional (or Sequential) model.
        call: function returning the outputs of one node; `op` is the original operation,
            `args`/`kwargs` its new inputs, `domain` the domain input tensor (or None).
            `call_layer(op, args, kwargs)` re-applies the original layer.
        add_domain_input: add a float32 domain-id input named `"domain"`
            (`keras_mdn.domain_input`; error if one exists).
        name: the new model's name. Defaults to the model's name.

    Returns:
        The new `keras.Model`: the model's inputs (same names, shapes, dtypes), then the
        domain input when added.
    """
    graph = FunctionalGraph(as_functional(model))
    inputs = {}
    for graph_input in graph.inputs:
        inputs[graph_input.name] = keras.Input(
            batch_shape=tuple(graph_input.shape), dtype=graph_input.dtype, name=graph_input.name
        )
    domain = None
    if add_domain_input:
        if DOMAIN_INPUT in inputs:
            raise ValueError(
                f"The model already has an input named {DOMAIN_INPUT!r}. Received: model "
                f"with inputs {list(inputs)}"
            )
        domain = domain_input(DOMAIN_INPUT)
    elif graph.domain_input is not None:
        domain = inputs[graph.domain_input]
    outputs = _run(graph, inputs, call, domain)
    all_inputs = list(inputs.values()) + ([domain] if add_domain_input else [])
    return keras.Model(all_inputs, outputs, name=name or model.name)


def _run(graph, values, call, domain):
    def handler(op, node_name, args, kwargs, key):
        if _is_nested_functional(op):
            return _inline(op, args, call, domain)
        return call(op, args, kwargs, domain)

    return graph.run(values, handler)


def _inline(model, args, call, domain):
    graph = FunctionalGraph(model)
    names = graph.input_names(domain=True)
    given = keras.tree.flatten(args[0]) if len(args) == 1 else keras.tree.flatten(args)
    if len(given) != len(names):
        raise ValueError(
            f"Cannot inline the nested model {model.name!r}: it has inputs {names}. "
            f"Received: {len(given)} input tensors"
        )
    return _run(graph, dict(zip(names, given)), call, domain)


def _is_nested_functional(op):
    if not isinstance(op, keras.Model):
        return False
    try:
        return "input_layers" in op.get_config()
    except Exception:  # a subclassed model: an opaque layer
        return False


def call_layer(op, args, kwargs):
    """Re-applies an original operation to new inputs."""
    return op(*args, **kwargs)


def graph_layers(model):
    """The model's operations in graph order, nested functional models expanded."""
    graph = FunctionalGraph(as_functional(model))
    seen, ordered = set(), []
    for node in graph.nodes:
        op = node.operation
        layers = graph_layers(op) if _is_nested_functional(op) else [op]
        for layer in layers:
            if id(layer) not in seen:
                seen.add(id(layer))
                ordered.append(layer)
    return ordered


class LayerCopies:
    """Applies independent copies of a model's layers: surgery never touches the original.

    Each layer is copied once (config, then weights once built), so a layer used at several
    nodes stays shared within the new model; `keras.ops` operations and weightless layers
    that cannot be copied are re-applied as they are (they hold no state).

    Example:

    >>> copies = LayerCopies()
    >>> new = rebuild(model, lambda op, args, kwargs, domain: copies(op, args, kwargs))
    """

    def __init__(self):
        self.copies = {}

    def copy(self, op):
        """The copy of `op` (made unbuilt at the first request)."""
        if id(op) not in self.copies:
            try:
                self.copies[id(op)] = type(op).from_config(op.get_config())
            except Exception as error:
                if op.weights:
                    raise ValueError(
                        f"Cannot copy layer {op.name!r} ({type(op).__name__}): its config does "
                        f"not round-trip ({error}). Register it with "
                        "keras.saving.register_keras_serializable and give it a get_config."
                    ) from error
                self.copies[id(op)] = op
        return self.copies[id(op)]

    def __call__(self, op, args, kwargs):
        if not isinstance(op, keras.layers.Layer) or isinstance(op, keras.layers.InputLayer):
            return call_layer(op, args, kwargs)
        first = id(op) not in self.copies
        layer = self.copy(op)
        outputs = layer(*args, **kwargs)
        if first and layer is not op:
            layer.set_weights(op.get_weights())
        return outputs
