"""The pretrained base of a search: cloned per trial, turned multi-domain, shared part frozen.

Trials share the expensive part: the base's shared weights are trained once, before the search
(or loaded), and every trial starts from a fresh copy of them and trains only domain-specific
parameters. `clone_pretrained` is the one place a trial copies the base (with the surgery's
own `LayerCopies`), so two trials never touch each other's weights.
"""


from keras_mdn.surgery.adapters import adaptable, add_adapters
from keras_mdn.surgery.graph import FunctionalGraph
from keras_mdn.surgery.ownership import layer_ownership, model_num_domains
from keras_mdn.surgery.rebuild import LayerCopies, as_functional, graph_layers, rebuild


def clone_pretrained(model):
    """A copy of `model` with its own layers and the same weight values.

    Args:
        model: a built functional (or `Sequential`) Keras model.

    Returns:
        A new `keras.Model`; changing it (wrapping, freezing, training) leaves `model` as is.
    """
    copies = LayerCopies()
    return rebuild(model, lambda op, args, kwargs, domain: copies(op, args, kwargs))


def multi_domain_base(model, num_classes, name=None):
    """A fresh multi-domain copy of a pretrained base whose shared layers are frozen.

    A single-domain model (no `"domain"` input) gets per-domain batch norms (every domain
    starting from the pretrained statistics) and a per-domain head from
    `keras_mdn.surgery.add_adapters` (with no adapter yet). A model that is already
    multi-domain (a `keras_mdn.models.resnet26`, say) must have one domain per entry of
    `num_classes`. In both cases every layer whose weights are all shared is frozen.

    Args:
        model: the pretrained base, a built functional Keras model.
        num_classes: list of ints, the classes of each domain.
        name: name of the new model. Defaults to the base's.

    Returns:
        A `keras.Model` with inputs `[*base inputs, "domain"]`.
    """
    if FunctionalGraph(as_functional(model)).domain_input is not None:
        num_domains = model_num_domains(model)
        if num_domains != len(num_classes):
            raise ValueError(
                f"The multi-domain base has {num_domains} domains but the data has "
                f"{len(num_classes)}. Received: model={model.name!r}, "
                f"num_classes={list(num_classes)}"
            )
        multi = clone_pretrained(model)
    else:  # `add_adapters` works on copies of the layers
        multi = add_adapters(
            model, len(num_classes), where=[], num_classes=list(num_classes), name=name
        )
    for layer in graph_layers(multi):
        entries = layer_ownership(layer) if layer.weights else []
        if entries and all(entry.shared for entry in entries):
            layer.trainable = False
    return multi


def adaptable_layers(model):
    """The layers of `model` that can take an adapter, in graph order, classifier excluded.

    Raises:
        ValueError: when the model has none.
    """
    layers = [layer for layer in graph_layers(model) if adaptable(layer)]
    outputs = set(_output_names(FunctionalGraph(model).outputs))
    layers = [layer for layer in layers if layer.name not in outputs]
    if not layers:
        kinds = sorted({type(layer).__name__ for layer in graph_layers(model)})
        raise ValueError(
            "The base model has nothing to adapt: no Conv1D, Conv2D or Dense layer besides "
            f"its classifier. Received: model={model.name!r} with layers of types {kinds}"
        )
    return layers


def _output_names(structure):
    """Names of the layers producing a graph's outputs (leaves `(layer, node, tensor)`)."""
    if isinstance(structure, tuple):
        return [structure[0]]
    values = structure.values() if isinstance(structure, dict) else structure
    return [name for value in values for name in _output_names(value)]
