"""Adding domains to a trained multi-domain model without changing the existing domains."""

import inspect

import keras
import numpy as np

from keras_mdn.layers.domain_layer import (
    check_domain,
    count_domains,
    is_domain_layer,
)
from keras_mdn.surgery.freezing import train_only_domains
from keras_mdn.surgery.rebuild import LayerCopies, graph_layers, rebuild


def add_domains(model, count=None, num_classes=None, init_from=None, freeze_existing=True,
                name=None):
    """Returns a copy of `model` with `count` more domains; the existing ones compute as before.

    Every domain layer with the model's `T` domains is replaced by its
    `with_num_domains(T + count, init_from)` copy (see `keras_mdn.layers.DomainLayer`): the
    first `T` domains hold the original values bit for bit. The new domains `T .. T+count-1`
    start from domain `init_from`'s parameters (adapters, batch norms, and the head where the
    class counts agree), or, with `init_from=None`, from the layers' initializers: zero
    adapters, batch norms with gamma 1, beta 0, mean 0, variance 1, a fresh head. Every other
    layer is an independent copy: `model` itself is never changed.

    With `freeze_existing=True` (the default), `train_only_domains(new_model, new_domains)`
    is applied to the new model: shared weights frozen, the existing domains' entries restored
    after every optimizer step (bit-identical even with weight decay, regularizers and Adam).
    Train on batches of the new domains (the batch norms' moving statistics of absent domains
    do not move).

    Args:
        model: a functional multi-domain model with a `"domain"` input.
        count: int, how many domains to add. Defaults to `len(num_classes)`.
        num_classes: the new domains' class counts (a list with one int per new domain, or
            one int for all); required when the model has a `DomainHead`.
        init_from: optional int, an existing domain the new domains start from. Defaults to
            `None`.
        freeze_existing: bool. Defaults to `True`.
        name: name of the new model. Defaults to the original's.

    Returns:
        A `keras.Model` with the same inputs and `T + count` domains.

    Example:

    >>> bigger = add_domains(model, num_classes=[5, 7])  # domains T and T + 1
    >>> bigger.compile(...)  # trains only the new domains' parameters
    """
    num_domains = count_domains(model)
    if num_domains == 0:
        raise ValueError(
            "`model` has no domain layer (ResidualAdapter, DomainBatchNormalization, "
            f"DomainHead, ...). Received: model={model.name!r}"
        )
    if isinstance(num_classes, (int, np.integer)) and not isinstance(num_classes, bool):
        num_classes = [int(num_classes)] * (1 if count is None else count)
    if count is None:
        if num_classes is None:
            raise ValueError(
                "Pass `count` or `num_classes` (one class count per new domain). "
                "Received: count=None, num_classes=None"
            )
        count = len(num_classes)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"`count` must be a positive int. Received: count={count!r}")
    growing = [
        layer for layer in graph_layers(model)
        if is_domain_layer(layer) and layer.num_domains == num_domains
    ]
    takes_classes = [layer for layer in growing if _takes_num_classes(layer)]
    if takes_classes and num_classes is None:
        raise ValueError(
            "`num_classes` must be given: the classes of the new domains' heads "
            f"({[layer.name for layer in takes_classes]}). Received: num_classes=None"
        )
    if not takes_classes and num_classes is not None:
        raise ValueError(
            "`model` has no DomainHead, so `num_classes` does not apply. "
            f"Received: num_classes={num_classes!r}"
        )
    if num_classes is not None and (
        not isinstance(num_classes, (list, tuple))
        or len(num_classes) != count
        or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1
               for n in num_classes)
    ):
        raise ValueError(
            f"`num_classes` must be a positive int or a list of {count} positive ints. "
            f"Received: num_classes={num_classes!r}"
        )
    if init_from is not None:
        init_from = check_domain(init_from, num_domains, "init_from")
    growing_ids = {id(layer) for layer in growing}
    grown, copies = {}, LayerCopies()

    def call(op, args, kwargs, domain):
        if id(op) not in growing_ids:
            if any(value is domain for value in keras.tree.flatten((args, kwargs))):
                raise ValueError(
                    f"Layer {op.name!r} ({type(op).__name__}) reads the domain input but does "
                    "not implement keras_mdn.layers.DomainLayer with the model's "
                    f"{num_domains} domains, so it cannot grow."
                )
            return copies(op, args, kwargs)
        if id(op) not in grown:
            extra = {"num_classes": list(num_classes)} if _takes_num_classes(op) else {}
            grown[id(op)] = op.with_num_domains(num_domains + count, init_from, **extra)
        return grown[id(op)](*args, **kwargs)

    new_model = rebuild(model, call, name=name)
    if freeze_existing:
        train_only_domains(new_model, list(range(num_domains, num_domains + count)))
    return new_model


def add_domain(model, num_classes=None, init_from=None, freeze_existing=True, name=None):
    """Returns a copy of `model` with one more domain, `T`; see `add_domains`.

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
    if num_classes is not None and (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 1
    ):
        raise ValueError(
            "`num_classes` must be a positive int: the classes of the new domain's head. "
            f"Received: num_classes={num_classes!r}"
        )
    return add_domains(
        model,
        1,
        None if num_classes is None else [int(num_classes)],
        init_from=init_from,
        freeze_existing=freeze_existing,
        name=name,
    )


def _takes_num_classes(layer):
    return "num_classes" in inspect.signature(layer.with_num_domains).parameters


__all__ = ["add_domain", "add_domains"]
