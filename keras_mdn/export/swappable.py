"""The swappable form of a multi-domain model: per-domain tensors swapped at run time.

`SwappablePlan(model)` reads the functional graph once and asks every layer that reads the
domain (a `keras_mdn.layers.DomainLayer`) for its per-domain tensors
(`swappable_tensors(domain)`) and for its inference output computed from them
(`swappable_call(inputs, tensors)`); every other layer runs with its own weights, which
become constants of the base model. A domain layer whose output feeds only a domain layer
computing a per-channel affine map (its swappable tensors are exactly `scale` and `offset`: a
`DomainBatchNormalization`) absorbs that map when it `merges_affine()`, so the batch norm
costs nothing at run time.

The base model holds the tensors in resource variables, written by its `set_domain`
signature once per domain switch and read by its inference signature (`keras_mdn.export.
tflite`). Packs hold differences from a reference: the tensors of `reference_domain`, which
the variables start from. So the base model computes `reference_domain` before any pack and
with an all-zero pack, and every pack tensor is consumed by `set_domain`.
"""

import json
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_mdn.export import packs
from keras_mdn.layers.domain_layer import check_domain, is_domain_layer
from keras_mdn.surgery.graph import FunctionalGraph, accepts_training

SEPARATOR = "__"
AFFINE_PARTS = {"scale", "offset"}


class SwappedLayer(NamedTuple):
    """A domain layer of the graph whose tensors the base model reads at run time.

    Attributes:
        layer: the domain layer.
        name: the graph node's name: the prefix of the layer's tensors in packs.
        affine: the affine domain layer it absorbs (its only consumer), or None.
    """

    layer: object
    name: str
    affine: object = None


class SwappablePlan:
    """Which tensors of a multi-domain model are swapped at run time, and how.

    Args:
        model: functional multi-domain model (one non-domain input and the `"domain"` input).
        reference_domain: int, the domain the base model computes before any pack (an
            all-zero pack); packs hold differences from its tensors. Defaults to 0.

    Attributes:
        graph: the model's `FunctionalGraph`.
        num_domains: int.
        input_name: name of the (non-domain) input.
        specs: dict tensor name -> shape of every swapped tensor, in pack order.
        model_id: 32-byte digest of the base model (architecture, shared weights, reference).

    A plan is a snapshot: the model id and each domain's tensors are read from the model once
    (the first time they are needed) and kept. Make a new plan after the weights change.
    """

    def __init__(self, model, reference_domain=0):
        self.model = model
        self.graph = graph = FunctionalGraph(model)
        self.num_domains = graph.num_domains
        names = graph.input_names()
        if len(names) != 1:
            raise ValueError(
                f"The swappable export needs one non-domain input. Received: inputs {names}"
            )
        self.input_name = names[0]
        if self.num_domains < 1:
            raise ValueError(f"Model {model.name!r} has no domain layers to export.")
        self.reference_domain = check_domain(reference_domain, self.num_domains,
                                             "reference_domain")
        domain_key = None
        for graph_input in graph.inputs:
            if graph_input.name == graph.domain_input:
                domain_key = graph_input.key + (0,)
        self.units = {}
        self.absorbed = set()
        for node in graph.nodes:
            if domain_key is None or domain_key not in node.tensor_keys():
                continue
            if node.key in self.absorbed:
                continue
            if not is_domain_layer(node.operation):
                raise ValueError(
                    f"The swappable export does not know layer {node.operation.name!r} "
                    f"({type(node.operation).__name__}): it reads the domain input but does "
                    "not implement keras_mdn.layers.DomainLayer."
                )
            affine = self._only_affine_consumer(node, domain_key)
            if affine is not None:
                self.absorbed.add(affine.key)
            self.units[node.key] = SwappedLayer(
                node.operation, node.name, None if affine is None else affine.operation
            )
        self._reference = None
        self._domain_tensors = {}
        self.specs = {name: value.shape for name, value in self.reference_tensors().items()}
        self.model_id = packs.model_digest(self._architecture(), self._shared_weights())

    def _only_affine_consumer(self, node, domain_key):
        """The domain node that alone reads `node`'s output, when `node` can absorb it."""
        if not node.operation.merges_affine():
            return None
        out = node.key + (0,)
        readers = self.graph.consumers.get(out, [])
        if len(readers) != 1 or self.graph.uses.get(out) != 1:
            return None
        consumer = self.graph.nodes[readers[0]]
        if not is_domain_layer(consumer.operation) or domain_key not in consumer.tensor_keys():
            return None
        if set(consumer.operation.swappable_tensors(0)) != AFFINE_PARTS:
            return None
        return consumer

    # === Pack contents ===

    def domain_tensors(self, domain):
        """dict name -> float32 array: the swapped tensors' values for `domain`."""
        if isinstance(domain, (bool, np.bool_)) or not isinstance(domain, (int, np.integer)):
            raise TypeError(f"`domain` must be an int. Received: domain={domain!r}")
        domain = check_domain(domain, self.num_domains)
        if domain in self._domain_tensors:
            return dict(self._domain_tensors[domain])
        tensors = {}
        for unit in self.units.values():
            affine = None
            if unit.affine is not None:
                parts = unit.affine.swappable_tensors(domain)
                affine = (parts["scale"], parts["offset"])
            for part, value in unit.layer.swappable_tensors(domain, affine=affine).items():
                tensors[f"{unit.name}{SEPARATOR}{part}"] = np.asarray(value, dtype="float32")
        # Evaluated once per domain: each layer's tensors are eager ops, and the export reads
        # every domain's several times (packs, verification).
        self._domain_tensors[domain] = tensors
        return dict(tensors)

    def reference_tensors(self):
        """The tensors of `reference_domain`: the base model's values before any pack."""
        if self._reference is None:
            self._reference = self.domain_tensors(self.reference_domain)
        return self._reference

    def reference_tensors_of(self, unit):
        """dict part -> array: the reference tensors of one `SwappedLayer` (names unprefixed)."""
        return _parts(self.reference_tensors(), unit.name)

    def domain_tensors_of(self, unit, domain):
        """dict part -> array: one `SwappedLayer`'s tensors for `domain`."""
        return _parts(self.domain_tensors(domain), unit.name)

    def pack_tensors(self, domain):
        """dict name -> float32 array: what `domain`'s pack holds, `domain - reference`."""
        reference = self.reference_tensors()
        return {name: value - reference[name]
                for name, value in self.domain_tensors(domain).items()}

    def num_classes(self, domain):
        """Number of valid logits of `domain` (0: all), from a layer with `num_classes`."""
        counts = [getattr(unit.layer, "num_classes", None) for unit in self.units.values()]
        counts = [c for c in counts if isinstance(c, (list, tuple))]
        return int(counts[0][domain]) if len(counts) == 1 else 0

    # === Runtime graph ===

    def call(self, inputs, params):
        """The model's output for a batch `inputs` with the swapped `params` (name -> tensor)."""

        def handler(op, name, args, kwargs, key):
            if key in self.absorbed:
                return args[0]
            unit = self.units.get(key)
            if unit is None:
                if isinstance(op, keras.layers.Layer) and accepts_training(op):
                    kwargs = {**kwargs, "training": False}
                return op(*args, **kwargs)
            return unit.layer.swappable_call(args[0], _parts(params, unit.name))

        values = {self.input_name: inputs}
        if self.graph.domain_input is not None:
            values[self.graph.domain_input] = None  # read only by the swapped layers
        return self.graph.run(values, handler)

    # === Identity ===

    def _architecture(self):
        spec = [(name, list(shape)) for name, shape in self.specs.items()]
        config = json.dumps(self.model.get_config(), sort_keys=True, default=str)
        return json.dumps({"format": packs.FORMAT_VERSION, "inputs": spec, "model": config,
                           "reference_domain": self.reference_domain})

    def _shared_weights(self):
        # The reference values are constants of the base model: packs are deltas from them.
        for name, value in self.reference_tensors().items():
            yield f"reference/{name}", value
        for op in self.model.operations:
            if is_domain_layer(op):
                weights = [entry.variable for entry in op.domain_variables() if entry.shared]
            else:
                weights = getattr(op, "weights", [])
            for weight in weights:
                yield f"{op.name}/{weight.path}", ops.convert_to_numpy(weight)



def _parts(tensors, unit_name):
    prefix = f"{unit_name}{SEPARATOR}"
    return {name[len(prefix):]: value for name, value in tensors.items()
            if name.startswith(prefix)}
