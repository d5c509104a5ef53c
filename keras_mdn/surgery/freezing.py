"""Training some domains only: shared weights frozen, other domains' entries kept bit-identical.

Per-domain parameters live in tables shared by all domains (a row per domain, or a head's
columns), so freezing a domain is freezing part of a variable. Gradient masking is not enough:
regularizers and decoupled weight decay (AdamW) move every entry. Instead, each per-domain
variable gets a `FrozenEntries` constraint: Keras optimizers apply a variable's constraint after
every update (on every backend, compiled or not), and `FrozenEntries` writes the frozen
entries back from a snapshot, so they stay bit-identical whatever the optimizer does to them.
"""

import keras
import numpy as np
from keras import ops

from keras_mdn.api import register
from keras_mdn.layers.domain_layer import count_domains
from keras_mdn.surgery.ownership import leaf_layers, model_ownership


@register
class FrozenEntries(keras.constraints.Constraint):
    """Constraint restoring fixed values on the frozen entries of a variable after updates.

    Args:
        trainable_mask: boolean array broadcastable to the variable's shape, True on the
            entries that train.
        frozen_values: array of the variable's shape: the values the other entries keep.
        constraint: optional constraint applied to the trainable entries first.

    Example:

    >>> table.constraint = FrozenEntries(mask, keras.ops.convert_to_numpy(table))
    """

    def __init__(self, trainable_mask, frozen_values, constraint=None):
        self.trainable_mask = np.asarray(trainable_mask, dtype=bool)
        self.frozen_values = np.asarray(frozen_values)
        self.constraint = keras.constraints.get(constraint)

    def __call__(self, w):
        w = ops.convert_to_tensor(w)  # optimizers may pass the variable itself (JAX)
        if self.constraint is not None:
            w = self.constraint(w)
        return ops.where(self.trainable_mask, w, ops.cast(self.frozen_values, w.dtype))

    def get_config(self):
        return {
            "trainable_mask": self.trainable_mask.tolist(),
            "frozen_values": self.frozen_values.tolist(),
            "constraint": keras.constraints.serialize(self.constraint),
        }


def train_only_domains(model, domains, layers=None):
    """Makes only the parameters of `domains` trainable, in place.

    Shared weights (the convs, a low-rank adapter's projection, plain layers) become
    non-trainable. Per-domain tables stay trainable, with a `FrozenEntries` constraint that
    restores the other domains' entries after every optimizer step, so those stay
    bit-identical even under weight decay, regularizers and Adam. Moving statistics are not
    trained by gradients: a `DomainBatchNormalization` updates only the domains present in a
    training batch, so train on batches of `domains` only.

    `layers` chooses which parts of the domains train: only the per-domain parameters of the
    domain layers it selects (e.g. `[keras_mdn.DomainHead]` for heads only, `[DomainHead,
    DomainBatchNormalization]` for the batch-norm baseline); every other weight is frozen.
    One call states the whole training state, so no other call has to be remembered; a layer
    you froze yourself (`layer.trainable = False` before the call) stays frozen.

    Call it before `compile` (the optimizer takes the trainable variables when it builds).
    The state is not saved: a reloaded model trains everything; call this again.
    `train_only_domains(model, None)` undoes it (this function's freezing removed, layers
    you froze yourself kept frozen).

    Args:
        model: a multi-domain Keras model.
        domains: int or list of ints, the domains to train; or `None` to unfreeze.
        layers: optional selection of the domain layers that train: a list of layer classes
            and/or layer names, or a predicate `layer -> bool`. Defaults to `None` (every
            domain layer).

    Returns:
        `model`.

    Example:

    >>> train_only_domains(model, [3], layers=[keras_mdn.DomainHead])  # domain 3's head only
    """
    num_domains = max(count_domains(model), 1)
    if domains is not None:
        domains = [domains] if isinstance(domains, (int, np.integer)) else list(domains)
        for domain in domains:
            if (
                isinstance(domain, bool)
                or not isinstance(domain, (int, np.integer))
                or not (0 <= domain < num_domains)
            ):
                raise ValueError(
                    f"`domains` must be ints in [0, {num_domains}). Received: domains={domains}"
                )
    selected = _selector(layers, model)
    entries = model_ownership(model)
    owners = {id(entry.layer): entry.layer for entry in entries}
    owners = {
        key: layer for key, layer in owners.items()
        if layer.trainable or getattr(layer, _FROZEN_HERE, False)
    }
    for layer in owners.values():
        # Per-variable flags below decide; a non-trainable layer would hide them all.
        layer.trainable = True
        setattr(layer, _FROZEN_HERE, False)
    for entry in entries:
        if id(entry.layer) not in owners:
            continue
        variable = entry.variable
        base = _inner_constraint(variable.constraint)
        if entry.statistic:
            continue
        if domains is None:
            variable.constraint = base
            variable.trainable = True
        elif entry.shared or not selected(entry.layer):
            variable.constraint = base
            variable.trainable = False
        else:
            variable.trainable = True
            variable.constraint = FrozenEntries(
                entry.domain_mask(domains), ops.convert_to_numpy(variable), base
            )
    for layer in owners.values():
        if domains is not None and all(
            not (e.variable.trainable and not e.statistic) for e in entries if e.layer is layer
        ):
            layer.trainable = False
            setattr(layer, _FROZEN_HERE, True)
    return model


# Marks the layers this module froze, so a later call (or `None`) can tell them from layers
# the user froze.
_FROZEN_HERE = "_keras_mdn_frozen"


def _selector(layers, model):
    if layers is None:
        return lambda layer: True
    if callable(layers) and not isinstance(layers, type):
        return layers
    if isinstance(layers, (type, str)):
        layers = [layers]
    if not isinstance(layers, (list, tuple, set)) or not all(
        isinstance(item, (type, str)) for item in layers
    ):
        raise TypeError(
            "`layers` must be None, a list of layer classes and/or names, or a predicate. "
            f"Received: layers={layers!r}"
        )
    classes = tuple(item for item in layers if isinstance(item, type))
    names = {item for item in layers if isinstance(item, str)}
    known = {layer.name for layer in leaf_layers(model)}
    missing = sorted(names - known)
    if missing:
        raise ValueError(
            f"`layers` names layers that are not in the model: {missing}. "
            f"Received: layers={layers!r}"
        )
    return lambda layer: isinstance(layer, classes) or layer.name in names


def _inner_constraint(constraint):
    return constraint.constraint if isinstance(constraint, FrozenEntries) else constraint
