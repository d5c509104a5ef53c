"""The baselines of multi-domain learning, built from a pretrained single-domain network.

- `frozen_features`: the pretrained network up to its classifier, frozen and shared by every
  domain (batch norms included), with a trainable head per domain.
- `batch_norms_only`: the same, but every batch norm per domain (each starting from the
  pretrained one) and trainable, as in Bilen & Vedaldi's "universal representations" and the
  BN-only rows of the residual adapter paper.

Fine-tuning, the third baseline, is the pretrained network trained per domain (a copy each).
"""

import keras

from keras_mdn.layers.domain_batch_normalization import DomainBatchNormalization
from keras_mdn.layers.domain_head import DomainHead, check_num_classes
from keras_mdn.layers.domain_layer import check_domain, count_domains, is_domain_layer
from keras_mdn.surgery.adapters import (
    _copy_batch_norm,
    _domain_batch_norm,
    _domain_head,
    _find_classifier,
)
from keras_mdn.surgery.graph import FunctionalGraph
from keras_mdn.surgery.rebuild import LayerCopies, as_functional, graph_layers, rebuild
from keras_mdn.surgery.transfer import transfer_layer


def frozen_features(model, num_classes, source_domain=None, classifier=None, name=None):
    """The frozen-feature baseline: a pretrained network's features, one head per domain.

    Every layer below the classifier is a frozen copy (batch norms run on their moving
    statistics), shared by all domains; the classifier becomes a trainable `DomainHead`.
    `model` is not changed.

    Args:
        model: a built single-domain model: plain Keras layers (a `keras.applications`
            network) or keras_mdn domain layers with one domain (`resnet26([n])`).
        num_classes: list of ints, one per domain.
        source_domain: optional int, the domain `model` was trained on: its head starts from
            `model`'s classifier. Defaults to `None` (fresh heads).
        classifier: optional name of the classifier layer. Defaults to the layer producing
            the model's output (a `Dense` or a one-domain `DomainHead`).
        name: name of the new model. Defaults to `"<model name>_frozen_features"`.

    Returns:
        A `keras.Model` with the model's inputs and a `"domain"` input (`keras_mdn.domain_input`).

    Example:

    >>> baseline = frozen_features(pretrained, num_classes=[10, 10, 5], source_domain=0)
    """
    return _baseline(model, num_classes, False, source_domain, classifier,
                     name or f"{model.name}_frozen_features")


def batch_norms_only(model, num_classes, source_domain=None, classifier=None, name=None):
    """The batch-norm baseline: shared frozen weights, per-domain batch norms and heads.

    As `frozen_features`, but every batch norm (a `BatchNormalization` on the channels axis,
    or a one-domain `DomainBatchNormalization`) becomes a trainable
    `DomainBatchNormalization` whose every domain starts from the pretrained statistics and
    affine parameters.

    Args:
        model: a built single-domain model (see `frozen_features`).
        num_classes: list of ints, one per domain.
        source_domain: optional int, the domain `model` was trained on. Defaults to `None`.
        classifier: optional name of the classifier layer. Defaults to the output layer.
        name: name of the new model. Defaults to `"<model name>_batch_norms_only"`.

    Returns:
        A `keras.Model` with the model's inputs and a `"domain"` input (`keras_mdn.domain_input`).
    """
    return _baseline(model, num_classes, True, source_domain, classifier,
                     name or f"{model.name}_batch_norms_only")


def _baseline(model, num_classes, per_domain_norms, source_domain, classifier, name):
    num_classes = check_num_classes(num_classes)
    num_domains = len(num_classes)
    if source_domain is not None:
        source_domain = check_domain(source_domain, num_domains, "source_domain")
    model = as_functional(model)
    if count_domains(model) > 1:
        raise ValueError(
            "`model` must be a single-domain network. Received: model "
            f"{model.name!r} with {count_domains(model)} domains"
        )
    layers = graph_layers(model)
    head = _classifier(model, layers, classifier)
    has_domain_input = FunctionalGraph(model).domain_input is not None
    copies, replaced = LayerCopies(), {}

    def call(op, args, kwargs, domain):
        x = args[0] if args else None
        if op is head:
            return _head(op, x, domain, num_classes, source_domain)
        if per_domain_norms and _is_batch_norm(op):
            first = id(op) not in replaced
            if first:
                replaced[id(op)] = _per_domain_norm(op, num_domains, x)
            outputs = replaced[id(op)](x, domain, training=kwargs.get("training"))
            if first and isinstance(op, keras.layers.BatchNormalization):
                _copy_batch_norm(op, replaced[id(op)])
            return outputs
        if is_domain_layer(op):
            # A one-domain layer of the pretrained network: every domain runs its domain 0.
            keywords = (op.domain_argument, *op.domain_argument_aliases)
            kwargs = {k: v for k, v in kwargs.items() if k not in keywords}
            return copies(op, args[:1], {**kwargs, op.domain_argument: 0})
        return copies(op, args, kwargs)

    if has_domain_input:
        new_model = rebuild(model, call, name=name)
    else:
        new_model = rebuild(model, call, add_domain_input=True, name=name)
    for layer in copies.copies.values():
        if isinstance(layer, keras.layers.Layer) and layer.weights:
            layer.trainable = False
    return new_model


def _classifier(model, layers, classifier):
    if classifier is None:
        outputs = FunctionalGraph(model).outputs
        if isinstance(outputs, list) and len(outputs) == 1:
            outputs = outputs[0]
        last = model.get_layer(outputs[0]) if isinstance(outputs, tuple) else None
        if isinstance(last, DomainHead):
            return last
    return _find_classifier(model, layers, classifier, required=True)


def _head(op, x, domain, num_classes, source_domain):
    if isinstance(op, DomainHead):
        head = DomainHead(num_classes, use_bias=op.use_bias,
                          kernel_initializer=op.kernel_initializer,
                          bias_initializer=op.bias_initializer,
                          kernel_regularizer=op.kernel_regularizer,
                          bias_regularizer=op.bias_regularizer, name=op.name)
        logits = head(x, domain)
        if source_domain is not None:
            transfer_layer(op, head, [source_domain])
        return logits
    return _domain_head(op, num_classes, x, domain, source_domain)


def _is_batch_norm(op):
    if isinstance(op, DomainBatchNormalization):
        return op.num_domains == 1
    return isinstance(op, keras.layers.BatchNormalization)


def _per_domain_norm(op, num_domains, x):
    if isinstance(op, DomainBatchNormalization):
        return op.with_num_domains(num_domains, init_from=0)
    return _domain_batch_norm(op, num_domains, x)


__all__ = ["batch_norms_only", "frozen_features"]
