"""Moving a pretrained single-domain network's weights into a multi-domain model."""

from keras import ops

from keras_mdn.layers.domain_layer import DomainVariable, check_domain, is_domain_layer
from keras_mdn.surgery.graph import FunctionalGraph
from keras_mdn.surgery.ownership import STATISTICS, leaf_layers
from keras_mdn.surgery.rebuild import as_functional


def transfer_weights(source, target, source_domain=None, classifier=None):
    """Copies a pretrained single-domain network into a multi-domain model, in place.

    Layers are matched by name (`keras_mdn.models.resnet26` names its layers the same with
    and without adapters; `add_adapters` keeps the original names). For every target layer
    with a source layer of the same name, each weight the source has (matched by weight name,
    e.g. `kernel`, `gamma`, `moving_mean`) is copied:

    - into a shared weight as it is (a `ResidualAdapter`'s wrapped conv gets the source
      conv's kernel);
    - into a per-domain weight (`DomainLayer.domain_variables`), into every domain's block:
      every domain's batch norm starts from the source's gamma, beta and moving statistics;
    - except for the classifier (the source layer producing the source's output, or the one
      named `classifier`): its weights go to domain `source_domain` only, the domain the
      source was trained on, or nowhere with `source_domain=None`.

    Weights the source lacks (adapter kernels, a series adapter's inner batch norm) keep
    their values; adapters initialised at zero then make every domain compute the source
    network. `source` is not changed.

    Args:
        source: a built single-domain model (plain Keras layers, or keras_mdn domain layers
            with one domain).
        target: a built multi-domain model.
        source_domain: optional int, the target domain whose head gets the source's
            classifier. Defaults to `None`.
        classifier: optional name of the source's classifier layer. Defaults to the layer
            producing the source's output.

    Returns:
        The names of the target layers that received weights, in layer order.

    Example:

    >>> pretrained = resnet26([10], width_factor=0.25)  # ... trained on domain 0
    >>> model = resnet26([10, 10, 5], adapter="parallel", freeze_shared=True)
    >>> transfer_weights(pretrained, model, source_domain=0)
    """
    sources = {layer.name: layer for layer in leaf_layers(source)}
    head = classifier if classifier is not None else _output_layer(source)
    if classifier is not None and classifier not in sources:
        raise ValueError(
            f"`classifier` must name a layer of `source`. Received: classifier={classifier!r}"
        )
    copied = []
    for layer in leaf_layers(target):
        origin = sources.get(layer.name)
        if origin is None or not origin.weights or not layer.weights:
            continue
        domains = None
        if origin.name == head:
            if source_domain is None:
                continue
            domains = [check_domain(source_domain, _num_domains(layer), "source_domain")]
        if transfer_layer(origin, layer, domains):
            copied.append(layer.name)
    if not copied:
        raise ValueError(
            "No layer of `target` has a namesake with weights in `source`. Received: "
            f"source={source.name!r}, target={target.name!r}"
        )
    return copied


def transfer_layer(source, target, domains=None):
    """Copies one single-domain layer's weights into `target` (into `domains`, default all).

    Returns:
        True when some weight was copied (weights are matched by name).
    """
    entries = {entry.name: entry for entry in _entries(source)}
    if is_domain_layer(source) and source.num_domains != 1:
        raise ValueError(
            f"`source` must be a single-domain network. Received: layer {source.name!r} with "
            f"num_domains={source.num_domains}"
        )
    changed = False
    for entry in _entries(target):
        origin = entries.get(entry.name)
        if origin is None:
            continue
        value = ops.convert_to_numpy(origin.variable)
        target_value = ops.convert_to_numpy(entry.variable).copy()
        if entry.shared:
            target_value = _fit(value, target_value.shape, source, target, entry)
        else:
            for domain in range(len(entry.sizes)) if domains is None else domains:
                index = [slice(None)] * target_value.ndim
                index[entry.axis] = entry.block(domain)
                block = target_value[tuple(index)]
                target_value[tuple(index)] = _fit(value, block.shape, source, target, entry)
        entry.variable.assign(target_value.astype(entry.variable.dtype))
        changed = True
    return changed


def _fit(value, shape, source, target, entry):
    """`value` in `shape` when they differ by axes of size 1 only (a BN row, a table row)."""
    if value.shape == tuple(shape):
        return value
    if [s for s in value.shape if s != 1] == [s for s in shape if s != 1]:
        return value.reshape(shape)
    raise ValueError(
        f"Cannot copy weight {entry.name!r} of layer {source.name!r} (shape {value.shape}) "
        f"into layer {target.name!r} (a domain's block of shape {tuple(shape)})."
    )


def _entries(layer):
    if is_domain_layer(layer):
        return layer.domain_variables()
    return [
        DomainVariable.shared_weight(v, statistic=v.path.split("/")[-1] in STATISTICS)
        for v in layer.weights
    ]


def _num_domains(layer):
    return layer.num_domains if is_domain_layer(layer) else 1


def _output_layer(model):
    try:
        graph = FunctionalGraph(as_functional(model))
    except (TypeError, ValueError):
        return None
    leaves = []

    def visit(structure):
        if isinstance(structure, tuple):
            leaves.append(structure[0])
        else:
            for value in structure.values() if isinstance(structure, dict) else structure:
                visit(value)

    visit(graph.outputs)
    return leaves[0] if len(set(leaves)) == 1 else None


__all__ = ["transfer_weights"]
