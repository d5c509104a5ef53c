"""Applying one trial's `Design` to a multi-domain base: adapters in, shared groups frozen."""

import keras
import numpy as np

from keras_mdn.layers.domain_batch_normalization import DomainBatchNormalization
from keras_mdn.layers.residual_adapter import ResidualAdapter
from keras_mdn.surgery.adapters import adaptable
from keras_mdn.surgery.ownership import model_num_domains
from keras_mdn.surgery.rebuild import call_layer, rebuild
from keras_mdn.tuning.search_space import ADAPTER_MODES


def place(model, design, source_domain=0, name=None):
    """Rebuilds a multi-domain base with one trial's adapters and shared groups.

    Layers whose mode is `"parallel"`/`"series"` are wrapped in `ResidualAdapter`s (the
    wrapped layer frozen, the rank capped at the adapter's input channels as in
    `keras_mdn.surgery.add_adapters`); a per-domain batch norm whose group mode is `"none"`
    becomes a frozen plain `BatchNormalization` holding domain `source_domain`'s parameters
    and statistics (so the group has no per-domain parameter); everything else is re-applied
    as is. A factorised layer named in `design.factorizations` is decomposed anew (kind,
    rank or eps) from its per-domain kernels (`fold`), all its factors trainable.

    Args:
        model: a multi-domain base from `keras_mdn.tuning.base_model.multi_domain_base`.
        design: a `keras_mdn.tuning.search_space.Design`.
        source_domain: int, the domain whose batch norm a shared group keeps. Defaults to 0.
        name: name of the new model. Defaults to the base's.

    Returns:
        A new `keras.Model` sharing the base's layer objects.
    """
    num_domains = model_num_domains(model)
    regularizer = (
        keras.regularizers.L2(design.weight_decay) if design.weight_decay else None
    )

    def call(op, args, kwargs, domain):
        mode = design.layer_modes.get(op.name)
        if mode in ADAPTER_MODES and adaptable(op):
            x = args[0]
            adapter = ResidualAdapter(
                op,
                num_domains,
                mode=mode,
                rank=_capped_rank(design.layer_ranks.get(op.name), op, x, mode),
                adapter_regularizer=regularizer,
                freeze_base=True,
                name=op.name,
            )
            return adapter(x, domain)
        if mode == "none" and isinstance(op, DomainBatchNormalization):
            return _shared_batch_norm(op, args[0], source_domain)
        if op.name in design.factorizations:
            return _refactorized(op, design.factorizations[op.name], num_domains)(
                *args, **kwargs
            )
        return call_layer(op, args, kwargs)

    return rebuild(model, call, name=name)


def _refactorized(layer, choice, num_domains):
    """`layer` (factorised) decomposed anew from its per-domain kernels with another kind."""
    kind, rank, eps = choice
    folded = [layer.fold(d)[0] for d in range(num_domains)]
    return type(layer).from_layers(folded, factorization=kind, rank=rank, eps=eps,
                                   name=layer.name)


def _capped_rank(rank, layer, x, mode):
    if rank is None:
        return None
    channels = x.shape[-1] if mode == "parallel" else (
        layer.filters if hasattr(layer, "filters") else layer.units
    )
    return min(rank, int(channels))


def _shared_batch_norm(domain_norm, x, domain):
    norm = keras.layers.BatchNormalization(
        momentum=domain_norm.momentum,
        epsilon=domain_norm.epsilon,
        center=domain_norm.center,
        scale=domain_norm.scale,
        name=domain_norm.name,
    )
    outputs = norm(x)
    for attribute in ("gamma", "beta", "moving_mean", "moving_variance"):
        source, target = getattr(domain_norm, attribute), getattr(norm, attribute)
        if source is not None and target is not None:
            row = keras.ops.convert_to_numpy(source)[domain]
            target.assign(np.asarray(row, dtype=target.dtype))
    norm.trainable = False
    return outputs
