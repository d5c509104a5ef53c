"""The domain-layer interface: what every layer holding per-domain parameters answers.

A layer with per-domain (or per-task) parameters subclasses `DomainLayer` (a mixin, beside
`keras.layers.Layer`) and answers four questions about itself, as Keras' `Dense` carries its
own LoRA merge. Surgery (`keras_mdn.surgery`), the parameter report, export and tuning ask
these questions; they never switch on layer types, so a new domain layer (a user's too) works
with all of them once it implements the interface:

- `num_domains`: the number of domains (an attribute).
- `domain_variables()`: every weight of the layer, each with the axis along which it splits
  into per-domain blocks and the block sizes (`DomainVariable`); ownership, freezing, the
  parameter report and packs read it.
- `with_num_domains(num_domains, init_from=None)`: an independent copy of the layer with more
  domains, the existing domains bit-identical (`add_domain`).
- `fold(domain)`: the plain Keras layers computing one domain at inference (`fold_domain`,
  the folded and multi-signature exports).
- `swappable_tensors(domain)` and `swappable_call(inputs, tensors)`: what a swappable export
  feeds per domain, and the layer's inference output computed from it.

`domain_layers(model)` finds a model's domain layers and `count_domains(model)` counts its
domains: the one way to do both.
"""

from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_mdn.ops import folding


class DomainVariable(NamedTuple):
    """One weight of a domain layer and how it splits over domains.

    Attributes:
        variable: the `keras.Variable`.
        axis: the axis along which the weight splits into per-domain blocks, or `None` for a
            weight shared by all domains.
        sizes: tuple, the block size of each domain along `axis`, in domain order (empty for a
            shared weight): `(1,) * num_domains` for a table with a row per domain, the class
            counts for a head's columns.
        statistic: True for moving statistics (updated in `call`, never by gradients).
    """

    variable: object
    axis: object = None
    sizes: tuple = ()
    statistic: bool = False

    @classmethod
    def rows(cls, variable, num_domains, axis=0, statistic=False):
        """A weight with one block of size 1 per domain along `axis` (a per-domain table)."""
        return cls(variable, axis, (1,) * int(num_domains), statistic)

    @classmethod
    def shared_weight(cls, variable, statistic=False):
        """A weight shared by all domains."""
        return cls(variable, None, (), statistic)

    @property
    def shared(self):
        return self.axis is None

    @property
    def name(self):
        return self.variable.path.split("/")[-1]

    @property
    def size(self):
        return int(np.prod(self.variable.shape))

    def block(self, domain):
        """The `slice` of `domain`'s block along `axis`."""
        start = int(sum(self.sizes[:domain]))
        return slice(start, start + self.sizes[domain])

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
        for domain in domains:
            index = [slice(None)] * mask.ndim
            index[self.axis] = self.block(domain)
            mask[tuple(index)] = True
        return mask

    def domain_value(self, domain, value=None):
        """NumPy value of `domain`'s block (of `value`, defaulting to the variable's)."""
        value = ops.convert_to_numpy(self.variable) if value is None else value
        index = [slice(None)] * value.ndim
        index[self.axis] = self.block(domain)
        return value[tuple(index)]


class DomainLayer:
    """Mixin of the layers holding per-domain parameters: the protocol they implement.

    Subclass it beside `keras.layers.Layer` (`class MyLayer(DomainLayer, keras.layers.Layer)`
    or, for an existing layer, after it). The layer keeps `num_domains` as an attribute and
    its call takes the domain as a Python int, a 0-d int tensor or an int tensor `(batch,)`,
    positionally after the inputs or by the keyword `domain_argument` names.

    Implement `domain_variables()` and `fold(domain)`; `swappable_tensors(domain)` and
    `swappable_call(inputs, tensors)` for the swappable export. `with_num_domains` works as is
    for a layer whose config holds `num_domains` (override `_grown_config` otherwise).

    Example:

    ```python
    @keras.saving.register_keras_serializable(package="my_package")
    class DomainScale(DomainLayer, keras.layers.Layer):
        def __init__(self, num_domains, **kwargs):
            super().__init__(**kwargs)
            self.num_domains = num_domains

        def build(self, input_shape):
            self.scale = self.add_weight(
                name="scale", shape=(self.num_domains, input_shape[-1]), initializer="ones"
            )

        def call(self, inputs, domain):
            return inputs * keras.ops.take(self.scale, domain, axis=0)

        def get_config(self):
            return {**super().get_config(), "num_domains": self.num_domains}

        def domain_variables(self):
            return [DomainVariable.rows(self.scale, self.num_domains)]

        def fold(self, domain):
            # A per-channel scale is a BatchNormalization with beta 0, mean 0 and variance
            # 1 - epsilon (tests/user_domain_layer.py writes it out in full).
            norm = keras.layers.BatchNormalization(epsilon=1e-3, center=False)
            norm.build(self.get_build_config()["input_shape"])
            channels = self.scale.shape[-1]
            norm.set_weights([self.scale[domain], np.zeros(channels),
                              np.full(channels, 1 - 1e-3)])
            return [norm]
    ```
    """

    # True for layers whose weights are factorised (`keras_mdn.FactorizedDense`, ...): called
    # with a fixed domain they can be smaller than their folded plain layer, and
    # `fold_domain(factorized=...)` chooses between the two.
    factorized = False

    # The keyword of `call` that takes the domain, and other keywords accepted for it.
    domain_argument = "domain"
    domain_argument_aliases = ()

    def domain_variables(self):
        """Every weight of the layer, as `DomainVariable`s, each variable once.

        Shared weights (a wrapped convolution's kernel, a low-rank adapter's projection) are
        listed with `axis=None`; the order is stable for one configuration (two layers with
        the same config list matching variables at the same positions).
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement DomainLayer.domain_variables()."
        )

    def with_num_domains(self, num_domains, init_from=None, **kwargs):
        """An independent copy of the layer with `num_domains` domains.

        Domains `0 .. self.num_domains - 1` are copied bit for bit; each new domain starts
        from domain `init_from`'s blocks (where the block sizes agree) or, with
        `init_from=None`, from the layer's initializers. Shared weights are copied by value:
        the new layer owns its own variables (a wrapped convolution is a new copy too).

        Args:
            num_domains: int, at least the current number of domains.
            init_from: optional int, an existing domain the new domains start from. Defaults
                to `None`.
            **kwargs: layer-specific settings of the new domains (a `DomainHead` takes
                `num_classes`, the class counts of the new domains).

        Returns:
            The new layer, built (with the same input shape) when this one is built.
        """
        current = self.num_domains
        num_domains = _check_growth(num_domains, current)
        if init_from is not None:
            init_from = check_domain(init_from, current, "init_from")
        config = self._grown_config(self.get_config(), num_domains, init_from, **kwargs)
        grown = type(self).from_config(config)
        if self.built:
            grown.build_from_config(self.get_build_config())
            copy_domains(self, grown, init_from)
        return grown

    def _grown_config(self, config, num_domains, init_from=None, **kwargs):
        """The config of the grown layer (the default sets `num_domains`)."""
        if kwargs:
            raise TypeError(
                f"{type(self).__name__}.with_num_domains takes no extra arguments. "
                f"Received: {sorted(kwargs)}"
            )
        if "num_domains" not in config:
            raise NotImplementedError(
                f"{type(self).__name__}'s config has no `num_domains`: override "
                "DomainLayer._grown_config."
            )
        return {**config, "num_domains": num_domains}

    def fold(self, domain):
        """The plain Keras layers computing `domain`'s inference output, in order.

        Returns:
            A list of built `keras.layers.Layer` (usually one: a `Conv2D`/`Dense` with the
            domain's weights merged in, or a `BatchNormalization` holding its statistics)
            that, applied one after the other to the layer's input, give this layer's output
            for `domain` at inference (`training=False`). `fold_domain` merges a folded
            `BatchNormalization` into a preceding folded conv or dense.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement DomainLayer.fold().")

    def swappable_tensors(self, domain, affine=None):
        """The per-domain tensors a swappable export feeds for `domain`.

        Args:
            domain: int.
            affine: optional `(scale, offset)` of a per-channel affine map applied to this
                layer's output (the `swappable_tensors` of a domain batch norm that only this
                layer feeds); accepted only when `merges_affine()` is True. The tensors then
                compute the composition, so the exporter drops the batch norm.

        Returns:
            dict part name -> float32 NumPy array. The shapes do not depend on `domain`
            (padded where domains differ, e.g. a head's kernel to `max(num_classes)`
            columns), so one base model serves every domain's pack. A layer whose inference
            output is a per-channel affine map of its input returns exactly
            `{"scale", "offset"}`, so an exporter can merge it into the previous layer.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement DomainLayer.swappable_tensors()."
        )

    def merges_affine(self):
        """True when `swappable_tensors(domain, affine=...)` can absorb a following affine map."""
        return False

    def fold_terms(self, tensors, projection=None):
        """This layer's inference map from its swapped tensors, as `ops.folding.FoldTerms`.

        What the fold-on-switch export needs to refold a domain's kernel in place. The default
        covers a per-channel affine map (`tensors` exactly `{"scale", "offset"}`: a batch
        norm); layers computing `W @ mix + tap(adapter)` otherwise override it.

        Args:
            tensors: dict part name -> array or tensor, as `swappable_tensors` returns
                (including an absorbed affine map's `scale` / `offset`).
            projection: optional array, the layer's shared low-rank adapter projection (read
                from the layer when None).

        Raises:
            ValueError: the tensors do not describe a linear fold of this layer.
        """
        if set(tensors) == {"scale", "offset"}:
            return folding.FoldTerms(mix=tensors["scale"], offset=tensors["offset"])
        raise ValueError(
            f"Layer {self.name!r} ({type(self).__name__}) cannot be refolded from its swapped "
            f"tensors {sorted(tensors)}: implement `fold_terms` for it."
        )

    def swappable_call(self, inputs, tensors):
        """This layer's inference output from the domain's `swappable_tensors` given as inputs.

        `tensors` holds what `swappable_tensors` returns (as tensors fed at run time, same
        names and shapes); shared weights are read from the layer. Uses `keras.ops` only.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement DomainLayer.swappable_call()."
        )


def domain_input(name="domain"):
    """The `(batch,)` domain-id input of a multi-domain functional model: float32.

    `resnet26`, `add_adapters` and the baselines build their `"domain"` input with it; use it
    in your own functional models too (`keras_mdn.domain_input()`).

    Keras casts what is fed to an input to its dtype before any layer runs: an int32 input
    would turn ids `[0.7, 1.2, 2.9]` into `[0, 1, 2]` silently. As float32 the ids reach the
    domain layers unchanged (int ids up to 2**24 exactly), which raise on a fractional id
    eagerly and make that example's outputs NaN in compiled graphs.
    """
    return keras.Input(shape=(), dtype="float32", name=name)


def is_domain_layer(layer):
    """True for a layer implementing the domain-layer interface."""
    return isinstance(layer, DomainLayer)


def domain_layers(model):
    """The domain layers of `model` (a model or layer), nested models expanded, each once."""
    if is_domain_layer(model):
        return [model]
    seen, found = set(), []
    for layer in _leaf_layers(model):
        if is_domain_layer(layer) and id(layer) not in seen:
            seen.add(id(layer))
            found.append(layer)
    return found


def count_domains(model):
    """The number of domains of a model (0 when it has no domain layer).

    Raises:
        ValueError: when its domain layers disagree. Layers with a single domain (a
            single-task factorised layer compressing a dense layer) agree with any count.
    """
    counts = {int(layer.num_domains) for layer in domain_layers(model)}
    if len(counts) > 1:
        counts.discard(1)
    if len(counts) > 1:
        raise ValueError(
            "The domain layers of the model disagree on the number of domains. "
            f"Received: model={model.name!r} with num_domains in {sorted(counts)}"
        )
    return counts.pop() if counts else 0


def copy_domains(source, target, init_from=None):
    """Copies every domain of `source` into `target` (a copy of it with more domains).

    Shared weights are copied by value (skipped when both layers hold the same variable);
    per-domain blocks of the domains `source` has are copied, and `target`'s extra domains
    start from `init_from`'s block when the block sizes agree.
    """
    old, new = source.domain_variables(), target.domain_variables()
    if [e.name for e in old] != [e.name for e in new]:
        raise ValueError(
            f"Cannot copy the domains of {source.name!r}: its variables "
            f"{[e.name for e in old]} do not match {[e.name for e in new]}."
        )
    for before, after in zip(old, new):
        if before.variable is after.variable:
            continue
        value = ops.convert_to_numpy(before.variable)
        if before.shared:
            _assign(after.variable, value)
            continue
        grown = ops.convert_to_numpy(after.variable).copy()
        count = len(before.sizes)
        head = [slice(None)] * grown.ndim
        head[after.axis] = slice(0, int(sum(before.sizes)))
        grown[tuple(head)] = value
        if init_from is not None:
            for domain in range(count, len(after.sizes)):
                if after.sizes[domain] == before.sizes[init_from]:
                    index = [slice(None)] * grown.ndim
                    index[after.axis] = after.block(domain)
                    grown[tuple(index)] = before.domain_value(init_from, value)
        _assign(after.variable, grown)


def check_domain(domain, num_domains, name="domain"):
    """`domain` as an int in `[0, num_domains)`, or a `ValueError` naming `name`."""
    if (
        isinstance(domain, (bool, np.bool_))
        or not isinstance(domain, (int, np.integer))
        or not 0 <= domain < num_domains
    ):
        raise ValueError(
            f"`{name}` must be an int in [0, {num_domains}). Received: {name}={domain!r}"
        )
    return int(domain)


def build_input_shape(layer):
    """The input shape `layer` was built with (`fold` builds its plain layers for it)."""
    config = layer.get_build_config() if layer.built else None
    if not config or "input_shape" not in config:
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) must be built before it is folded. "
            f"Received: build config {config!r}"
        )
    return tuple(config["input_shape"])


def as_float32(value):
    """A float32 NumPy array of a tensor (what packs hold)."""
    return np.asarray(ops.convert_to_numpy(value), dtype="float32")


def check_affine(layer, affine):
    """`affine` as two arrays, or an error when `layer` cannot absorb it."""
    if affine is None:
        return None
    if not layer.merges_affine():
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) cannot absorb a following affine "
            f"map in its swappable tensors. Received: affine={affine!r}"
        )
    scale, offset = affine
    return as_float32(scale), as_float32(offset)


def built_layer(cls, config, input_shape, weights):
    """A plain Keras layer `cls(**config)` built for `input_shape`, holding `weights`."""
    layer = cls.from_config(config)
    layer.build(tuple(input_shape))
    layer.set_weights([np.asarray(ops.convert_to_numpy(w)) for w in weights])
    return layer


def _check_growth(num_domains, current):
    if (
        isinstance(num_domains, (bool, np.bool_))
        or not isinstance(num_domains, (int, np.integer))
        or num_domains < current
    ):
        raise ValueError(
            f"`num_domains` must be an int >= the current {current}. "
            f"Received: num_domains={num_domains!r}"
        )
    return int(num_domains)


def _assign(variable, value):
    variable.assign(np.asarray(value).astype(keras.backend.standardize_dtype(variable.dtype)))


def _leaf_layers(model):
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer
