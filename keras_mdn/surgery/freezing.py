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
from keras_mdn.surgery.ownership import model_num_domains, model_ownership


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


def train_only_domains(model, domains):
    """Makes only the parameters of `domains` trainable, in place.

    Shared weights (the convs, a low-rank adapter's projection, plain layers) become
    non-trainable. Per-domain tables stay trainable, with a `FrozenEntries` constraint that
    restores the other domains' entries after every optimizer step, so those stay
    bit-identical even under weight decay, regularizers and Adam. Moving statistics are not
    trained by gradients: a `DomainBatchNormalization` updates only the domains present in a
    training batch, so train on batches of `domains` only.

    Call it before `compile` (the optimizer takes the trainable variables when it builds).
    The state is not saved: a reloaded model trains everything; call this again.
    `train_only_domains(model, None)` undoes it (everything trainable, constraints removed).

    Args:
        model: a multi-domain Keras model.
        domains: int or list of ints, the domains to train; or `None` to unfreeze.

    Returns:
        `model`.
    """
    num_domains = max(model_num_domains(model), 1)
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
    entries = model_ownership(model)
    owners = {id(entry.layer): entry.layer for entry in entries}
    for layer in owners.values():
        # Per-variable flags below decide; a non-trainable layer would hide them all.
        layer.trainable = True
    for entry in entries:
        variable = entry.variable
        base = _inner_constraint(variable.constraint)
        if entry.statistic:
            continue
        if domains is None:
            variable.constraint = base
            variable.trainable = True
        elif entry.shared:
            variable.constraint = base
            variable.trainable = False
        else:
            variable.trainable = True
            variable.constraint = FrozenEntries(
                entry.domain_mask(domains), ops.convert_to_numpy(variable), base
            )
    for layer in owners.values():
        if domains is not None and all(
            e.shared or e.statistic for e in entries if e.layer is layer
        ):
            layer.trainable = False
    return model


def _inner_constraint(constraint):
    return constraint.constraint if isinstance(constraint, FrozenEntries) else constraint
