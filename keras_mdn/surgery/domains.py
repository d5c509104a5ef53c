"""Adding domains to a trained multi-domain model without changing the existing domains."""

import inspect
from typing import NamedTuple

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

    Recipe (`benchmarks/results/new_domain.md`, `new_domain_omniglot.md`: leave one domain
    out, training to convergence): the defaults (fresh adapters and batch norms,
    `init_from=None`; the closest domain was no better) and the adapter kernels at 9x the
    learning rate, `keras_mdn.optimizers.adapter_learning_rates(optimizer)` (Omniglot, 5
    alphabets x 3 seeds: level with full fine-tuning at 10.8 % of its parameters, +2.9
    points over one rate for every parameter; the authors' per-group L2 and extra adapter
    weight decay did not help).

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


class ClosestDomain(NamedTuple):
    """The result of `closest_domain`: the chosen domain and every candidate's score."""

    domain: int
    scores: dict


def closest_domain(model, inputs, labels, candidates=None, batch_size=256):
    """The existing domain whose features separate a new domain's classes best.

    For each candidate domain `d`, the examples run through domain `d`'s path of `model` (its
    adapters and batch norms, in inference mode) up to the input of the model's `DomainHead`;
    the score is the accuracy of a nearest-class-mean classifier (cosine similarity) on those
    features, with two folds (class means from even examples score the odd ones, and the
    reverse). The domain with the highest score (the lowest id on ties) is the natural
    `init_from` of `add_domain`: its network already suits the new data best, and the new
    domain's adapters then start there instead of at zero.

    Args:
        model: a functional multi-domain model with a `"domain"` input and a `DomainHead`.
        inputs: the new domain's examples: an array for the model's one other input, or a
            dict of arrays keyed by input name (without `"domain"`).
        labels: int array `(n,)`, the examples' classes in the new domain.
        candidates: optional list of domain ids to compare. Defaults to every domain.
        batch_size: examples per forward pass. Defaults to 256.

    Returns:
        A `ClosestDomain(domain, scores)`, `scores` mapping each candidate to its accuracy.

    Example:

    >>> closest = closest_domain(model, new_images, new_labels)
    >>> bigger = add_domain(model, num_classes=10, init_from=closest.domain)
    """
    num_domains = count_domains(model)
    if num_domains == 0:
        raise ValueError(
            "`model` has no domain layer (ResidualAdapter, DomainBatchNormalization, "
            f"DomainHead, ...). Received: model={model.name!r}"
        )
    from keras_mdn.layers.domain_head import DomainHead

    heads = [layer for layer in graph_layers(model) if isinstance(layer, DomainHead)]
    if len(heads) != 1:
        raise ValueError(
            f"`model` must have one DomainHead (its input is the feature). Received: "
            f"model={model.name!r} with {len(heads)} DomainHead layers"
        )
    labels = np.asarray(labels).reshape(-1)
    structure = model.input
    names = [tensor.name for tensor in keras.tree.flatten(structure)]
    if "domain" not in names:
        raise ValueError(f"`model` has no input named 'domain'. Received: inputs {names}")
    if not isinstance(inputs, dict):
        others = [name for name in names if name != "domain"]
        if len(others) != 1:
            raise ValueError(
                "Pass `inputs` as a dict keyed by input name: the model has inputs "
                f"{names}. Received: inputs of type {type(inputs).__name__}"
            )
        inputs = {others[0]: inputs}
    missing = sorted(set(names) - set(inputs) - {"domain"})
    if missing:
        raise ValueError(f"`inputs` lacks the model inputs {missing}. Received: {sorted(inputs)}")
    sizes = {len(np.asarray(value)) for value in inputs.values()}
    if sizes != {len(labels)} or len(labels) < 4:
        raise ValueError(
            "`inputs` and `labels` must hold the same number (at least 4) of examples. "
            f"Received: {sorted(sizes)} examples and labels of shape {labels.shape}"
        )
    if candidates is None:
        candidates = list(range(num_domains))
    candidates = [check_domain(d, num_domains, "candidates") for d in candidates]
    # The head is called as head(features, domain): its first input is the feature.
    features = keras.Model(structure, keras.tree.flatten(heads[0].input)[0])
    scores = {}
    for d in candidates:
        values = dict(inputs, domain=np.full(len(labels), d, dtype="int32"))
        values = keras.tree.map_structure(lambda t, v=values: np.asarray(v[t.name]), structure)
        batches = [
            keras.ops.convert_to_numpy(features(
                keras.tree.map_structure(lambda v, s=start: v[s:s + batch_size], values),
                training=False))
            for start in range(0, len(labels), batch_size)
        ]
        scores[d] = _nearest_mean_accuracy(np.concatenate(batches), labels)
    best = max(candidates, key=lambda d: (scores[d], -d))
    return ClosestDomain(int(best), scores)


def _nearest_mean_accuracy(features, labels):
    """Two-fold accuracy of a cosine nearest-class-mean classifier."""
    features = np.asarray(features, dtype=np.float64).reshape(len(labels), -1)
    features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    order = np.arange(len(labels))
    correct = 0
    for fit, score in ((order % 2 == 0, order % 2 == 1), (order % 2 == 1, order % 2 == 0)):
        classes = np.unique(labels[fit])
        means = np.stack([features[fit][labels[fit] == c].mean(axis=0) for c in classes])
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        guess = classes[np.argmax(features[score] @ means.T, axis=1)]
        correct += int(np.sum(guess == labels[score]))
    return correct / len(labels)


def _takes_num_classes(layer):
    return "num_classes" in inspect.signature(layer.with_num_domains).parameters


__all__ = ["ClosestDomain", "add_domain", "add_domains", "closest_domain"]
