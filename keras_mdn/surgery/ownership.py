"""Which entries of each weight belong to which domain: the one place that decides it.

A weight is either shared by all domains, or split into per-domain blocks along one axis:

- `DomainBatchNormalization` `gamma`, `beta`, `moving_mean`, `moving_variance` and
  `ResidualAdapter.adapter_kernel`: tables with one row per domain (axis 0);
- `DomainHead` `kernel` (axis 1) and `bias` (axis 0): `num_classes[t]` columns per domain;
- factorised multi-task layers (`FactorizedDense`, ...): the factor that carries the task axis,
  and the per-task bias (axis 0);
- everything else (the wrapped conv of an adapter, a low-rank adapter's shared projection,
  plain Keras layers) is shared.

The parameter report counts with it, and per-domain freezing builds its masks from it.
"""

import keras
import numpy as np

from keras_mdn.layers.domain_batch_normalization import DomainBatchNormalization
from keras_mdn.layers.domain_head import DomainHead
from keras_mdn.layers.residual_adapter import ResidualAdapter

STATISTICS = ("moving_mean", "moving_variance")


class WeightOwnership:
    """One weight of a model and how it splits over domains.

    Attributes:
        layer: the top-level layer of the model holding the weight.
        variable: the weight.
        axis: the axis along which the weight splits into per-domain blocks, or `None` for a
            shared weight.
        sizes: the block size of each domain along `axis` (empty for a shared weight).
        statistic: True for moving statistics (never trained by gradients).
    """

    def __init__(self, layer, variable, axis=None, sizes=(), statistic=False):
        self.layer = layer
        self.variable = variable
        self.axis = axis
        self.sizes = tuple(int(s) for s in sizes)
        self.statistic = statistic

    @property
    def shared(self):
        return self.axis is None

    @property
    def name(self):
        return self.variable.path.split("/")[-1]

    @property
    def size(self):
        return int(np.prod(self.variable.shape))

    def domain_size(self, domain):
        """Number of entries that belong to `domain` (0 for a shared weight)."""
        if self.shared:
            return 0
        return self.size // self.variable.shape[self.axis] * self.sizes[domain]

    def domain_mask(self, domains):
        """Boolean array of the weight's shape, True on the entries of the given domains."""
        mask = np.zeros(tuple(self.variable.shape), dtype=bool)
        if self.shared:
            return mask
        starts = np.concatenate([[0], np.cumsum(self.sizes)])
        for domain in domains:
            index = [slice(None)] * mask.ndim
            index[self.axis] = slice(starts[domain], starts[domain + 1])
            mask[tuple(index)] = True
        return mask


def model_ownership(model):
    """`WeightOwnership` of every weight of `model`, each variable once, in layer order."""
    seen, result = set(), []
    for layer in _leaf_layers(model):
        for entry in layer_ownership(layer):
            if id(entry.variable) not in seen:
                seen.add(id(entry.variable))
                result.append(entry)
    return result


def model_num_domains(model):
    """The number of domains of a multi-domain model (0 when it has no per-domain layer)."""
    counts = {
        getattr(layer, "num_domains", None) or getattr(layer, "num_tasks", None)
        for layer in _leaf_layers(model)
        if isinstance(layer, (ResidualAdapter, DomainBatchNormalization, DomainHead))
        or _factorization_network(layer) is not None
    }
    counts.discard(None)
    if len(counts) > 1:
        raise ValueError(
            "The per-domain layers of the model disagree on the number of domains. "
            f"Received: model={model.name!r} with num_domains in {sorted(counts)}"
        )
    return counts.pop() if counts else 0


def layer_ownership(layer, owner=None):
    """`WeightOwnership` of every weight of one layer (nested weights included)."""
    owner = owner or layer
    if isinstance(layer, DomainBatchNormalization):
        rows = (1,) * layer.num_domains
        return [
            WeightOwnership(owner, v, 0, rows, statistic=v.path.split("/")[-1] in STATISTICS)
            for v in layer.weights
        ]
    if isinstance(layer, DomainHead):
        return [
            WeightOwnership(owner, v, 1 if len(v.shape) == 2 else 0, layer.num_classes)
            for v in layer.weights
        ]
    if isinstance(layer, ResidualAdapter):
        entries = [WeightOwnership(owner, v) for v in layer.layer.weights]
        if layer.adapter_norm is not None:
            entries += layer_ownership(layer.adapter_norm, owner)
        if layer.adapter_projection is not None:
            entries.append(WeightOwnership(owner, layer.adapter_projection))
        entries.append(WeightOwnership(owner, layer.adapter_kernel, 0, (1,) * layer.num_domains))
        return entries
    network = _factorization_network(layer)
    if network is not None:
        return _factorized_ownership(layer, network)
    return [
        WeightOwnership(owner, v, statistic=v.path.split("/")[-1] in STATISTICS)
        for v in layer.weights
    ]


def _factorized_ownership(layer, network):
    """Multi-task factorised layers: the task operand and the per-task bias are per task."""
    tasks = layer.num_tasks
    per_task = {}
    index = network.task_operand
    if index is not None:
        variable = layer.factorization.variables[index]
        per_task[id(variable)] = network.labels[index].index(network.task_label)
    bias = getattr(layer, "bias", None)
    if bias is not None and tasks > 1 and len(bias.shape) == 2 and bias.shape[0] == tasks:
        per_task[id(bias)] = 0
    return [
        WeightOwnership(layer, v, per_task[id(v)], (1,) * tasks)
        if id(v) in per_task
        else WeightOwnership(layer, v)
        for v in layer.weights
    ]


def _factorization_network(layer):
    factorization = getattr(layer, "factorization", None)
    network = getattr(factorization, "network_", None)
    if network is None or not hasattr(layer, "num_tasks"):
        return None
    return network


def _leaf_layers(model):
    """The model's layers, with nested models expanded."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer
