"""Which entries of each weight of a model belong to which domain.

Domain layers answer for their own weights (`DomainLayer.domain_variables`, see
`keras_mdn.layers.domain_layer`); every weight of any other layer is shared. The parameter
report counts with it, per-domain freezing builds its masks from it, and packs select with it.
"""

from typing import NamedTuple

import keras

from keras_mdn.layers.domain_layer import (
    DomainVariable,
    count_domains,
    is_domain_layer,
)

STATISTICS = ("moving_mean", "moving_variance")


class WeightOwnership(NamedTuple):
    """One weight of a model, the top-level layer holding it, and how it splits over domains.

    Attributes:
        layer: the layer of the model holding the weight (nested models expanded).
        entry: the weight's `DomainVariable` (variable, axis, per-domain sizes, statistic).
    """

    layer: object
    entry: DomainVariable

    variable = property(lambda self: self.entry.variable)
    axis = property(lambda self: self.entry.axis)
    sizes = property(lambda self: self.entry.sizes)
    statistic = property(lambda self: self.entry.statistic)
    shared = property(lambda self: self.entry.shared)
    name = property(lambda self: self.entry.name)
    size = property(lambda self: self.entry.size)

    def domain_size(self, domain):
        """Number of entries that belong to `domain` (0 for a shared weight)."""
        return self.entry.domain_size(domain)

    def domain_mask(self, domains):
        """Boolean array of the weight's shape, True on the entries of the given domains."""
        return self.entry.domain_mask(domains)


def model_ownership(model):
    """`WeightOwnership` of every weight of `model`, each variable once, in layer order.

    A one-domain layer in a model of several domains (a frozen pretrained batch norm every
    domain runs as its domain 0) holds shared weights.
    """
    num_domains = count_domains(model)
    seen, result = set(), []
    for layer in leaf_layers(model):
        for entry in layer_ownership(layer):
            if num_domains > 1 and len(entry.sizes) == 1:
                entry = WeightOwnership(entry.layer, DomainVariable.shared_weight(
                    entry.variable, entry.statistic))
            if id(entry.variable) not in seen:
                seen.add(id(entry.variable))
                result.append(entry)
    return result


def model_num_domains(model):
    """The number of domains of a model (0 without domain layers); `count_domains`."""
    return count_domains(model)


def layer_ownership(layer):
    """`WeightOwnership` of every weight of one layer (nested weights included)."""
    if is_domain_layer(layer):
        entries = layer.domain_variables()
        missing = {id(w) for w in layer.weights} - {id(e.variable) for e in entries}
        if missing:
            names = [w.path for w in layer.weights if id(w) in missing]
            raise ValueError(
                f"{type(layer).__name__}.domain_variables() must list every weight of the "
                f"layer. Received: layer {layer.name!r} leaving out {names}"
            )
    else:
        entries = [
            DomainVariable.shared_weight(v, statistic=v.path.split("/")[-1] in STATISTICS)
            for v in layer.weights
        ]
    return [WeightOwnership(layer, entry) for entry in entries]


def leaf_layers(model):
    """The model's layers, with nested models expanded."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer
