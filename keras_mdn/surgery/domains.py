"""Adding a domain to a trained multi-domain model without changing the other domains."""

import keras
import numpy as np
from keras import ops

from keras_mdn.layers.domain_batch_normalization import DomainBatchNormalization
from keras_mdn.layers.domain_head import DomainHead
from keras_mdn.layers.residual_adapter import ResidualAdapter
from keras_mdn.surgery.freezing import train_only_domains
from keras_mdn.surgery.ownership import model_num_domains
from keras_mdn.surgery.rebuild import call_layer, graph_layers, rebuild

DOMAIN_LAYERS = (ResidualAdapter, DomainBatchNormalization, DomainHead)


def add_domain(model, num_classes=None, init_from=None, freeze_existing=True, name=None):
    """Returns `model` with one more domain; the existing domains compute exactly as before.

    Every `ResidualAdapter`, `DomainBatchNormalization` and `DomainHead` is replaced by one
    with `T + 1` domains whose first `T` domains hold the original values (copied bit for
    bit; the wrapped convs and every other layer are the original objects, shared). The new
    domain `T` starts from domain `init_from`'s parameters (adapters, batch norms, and the
    head when the class counts agree), or, with `init_from=None`, from the layers'
    initializers: zero adapters, batch norms with gamma 1, beta 0, mean 0, variance 1, and
    a freshly initialised head.

    With `freeze_existing=True` (the default), `train_only_domains(new_model, [T])` is
    applied: shared weights frozen, the other domains' entries restored after every
    optimizer step (bit-identical even with weight decay, regularizers and Adam). Shared
    layers are the original objects, so they are frozen in `model` too. Train on batches of
    the new domain only (the batch norms' moving statistics of absent domains do not move).

    Args:
        model: a functional multi-domain model with a `"domain"` input.
        num_classes: int, classes of the new domain; required when the model has a
            `DomainHead`.
        init_from: optional int, an existing domain to copy. Defaults to `None`.
        freeze_existing: bool. Defaults to `True`.
        name: name of the new model. Defaults to the original's.

    Returns:
        A `keras.Model` with the same inputs and `T + 1` domains; the new domain is `T`.

    Example:

    >>> bigger = add_domain(model, num_classes=5)
    >>> bigger.compile(...)  # trains only domain T's parameters
    >>> bigger.fit([images, np.full(n, T)], labels)
    """
    layers = graph_layers(model)
    num_domains = model_num_domains(model)
    if num_domains == 0:
        raise ValueError(
            "`model` has no per-domain layer (ResidualAdapter, DomainBatchNormalization, "
            f"DomainHead). Received: model={model.name!r}"
        )
    others = [
        layer.name
        for layer in layers
        if not isinstance(layer, DOMAIN_LAYERS)
        and (hasattr(layer, "num_domains") or hasattr(layer, "num_tasks"))
    ]
    if others:
        raise ValueError(
            "add_domain supports ResidualAdapter, DomainBatchNormalization and DomainHead. "
            f"Received: model with other per-domain layers {others}"
        )
    heads = [layer for layer in layers if isinstance(layer, DomainHead)]
    if heads and (
        num_classes is None
        or isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 1
    ):
        raise ValueError(
            "`num_classes` must be a positive int: the classes of the new domain's head. "
            f"Received: num_classes={num_classes!r}"
        )
    if not heads and num_classes is not None:
        raise ValueError(
            f"`model` has no DomainHead, so `num_classes` does not apply. "
            f"Received: num_classes={num_classes!r}"
        )
    if init_from is not None and (
        isinstance(init_from, bool)
        or not isinstance(init_from, (int, np.integer))
        or not 0 <= init_from < num_domains
    ):
        raise ValueError(
            f"`init_from` must be None or a domain in [0, {num_domains}). "
            f"Received: init_from={init_from!r}"
        )
    replaced = {}

    def call(op, args, kwargs, domain):
        if not isinstance(op, DOMAIN_LAYERS):
            return call_layer(op, args, kwargs)
        first = id(op) not in replaced
        if first:
            replaced[id(op)] = _grown(op, num_classes)
        outputs = replaced[id(op)](*args, **kwargs)
        if first:
            _copy_domains(op, replaced[id(op)], init_from)
        return outputs

    grown = rebuild(model, call, name=name)
    if freeze_existing:
        train_only_domains(grown, [num_domains])
    return grown


def _grown(layer, num_classes):
    """A copy of a per-domain layer with one more domain (the wrapped layer shared)."""
    if isinstance(layer, ResidualAdapter):
        return ResidualAdapter(
            layer.layer,
            layer.num_domains + 1,
            mode=layer.mode,
            rank=layer.rank,
            adapter_initializer=layer.adapter_initializer,
            projection_initializer=layer.projection_initializer,
            adapter_regularizer=layer.adapter_regularizer,
            name=layer.name,
        )
    config = layer.get_config()
    if isinstance(layer, DomainHead):
        config["num_classes"] = list(layer.num_classes) + [int(num_classes)]
    else:
        config["num_domains"] = layer.num_domains + 1
    return type(layer).from_config(config)


def _copy_domains(old, new, init_from):
    """Copies every domain of `old` into `new`; `new`'s last domain from `init_from`."""
    if isinstance(old, ResidualAdapter):
        _copy_rows(old.adapter_kernel, new.adapter_kernel, init_from)
        if old.adapter_projection is not None:
            new.adapter_projection.assign(old.adapter_projection)
        if old.adapter_norm is not None:
            _copy_domains(old.adapter_norm, new.adapter_norm, init_from)
        return
    if isinstance(old, DomainBatchNormalization):
        for attribute in ("gamma", "beta", "moving_mean", "moving_variance"):
            source, target = getattr(old, attribute), getattr(new, attribute)
            if source is not None:
                _copy_rows(source, target, init_from)
        return
    # DomainHead: the new domain's columns come last.
    total = sum(old.num_classes)
    same = init_from is not None and old.num_classes[init_from] == new.num_classes[-1]
    start = old.offsets[init_from] if same else None
    for source, target in ((old.kernel, new.kernel), (old.bias, new.bias)):
        if source is None:
            continue
        value = ops.convert_to_numpy(target).copy()
        old_value = ops.convert_to_numpy(source)
        value[..., :total] = old_value
        if same:
            value[..., total:] = old_value[..., start : start + new.num_classes[-1]]
        target.assign(value)


def _copy_rows(source, target, init_from):
    value = ops.convert_to_numpy(target).copy()
    old_value = ops.convert_to_numpy(source)
    value[: old_value.shape[0]] = old_value
    if init_from is not None:
        value[-1] = old_value[init_from]
    target.assign(value.astype(keras.backend.standardize_dtype(target.dtype)))
