"""Residual adapters for an existing single-domain Keras model (the paper's plug-and-play use)."""

import keras
import numpy as np

from keras_mdn.layers.domain_batch_normalization import DomainBatchNormalization
from keras_mdn.layers.domain_head import DomainHead
from keras_mdn.layers.domain_layer import check_domain
from keras_mdn.layers.residual_adapter import MODES, ResidualAdapter
from keras_mdn.ops import routing
from keras_mdn.surgery.graph import FunctionalGraph
from keras_mdn.surgery.rebuild import LayerCopies, as_functional, graph_layers, rebuild

PLACEMENTS = ("all", "shallow", "deep")
BATCH_NORMS = ("per_domain", "shared")


def add_adapters(
    model,
    num_domains,
    mode="parallel",
    where=None,
    depth_fraction=0.5,
    rank=None,
    freeze_base=True,
    num_classes=None,
    classifier=None,
    adapter_initializer="zeros",
    adapter_regularizer=None,
    batch_norms="per_domain",
    source_domain=None,
    name=None,
):
    """A multi-domain copy of a built single-domain functional model.

    The graph of `model` is rebuilt with an extra float32 domain-id input `"domain"`:

    - the chosen `Conv1D`/`Conv2D`/`Dense` layers are wrapped in `ResidualAdapter`s around a
      copy of the layer (its weights shared by all domains), with the original layer's name;
    - every `BatchNormalization` (channels last) becomes a `DomainBatchNormalization` of the
      same name whose every domain starts from the original's gamma, beta and moving
      statistics (with `batch_norms="shared"` it stays one batch norm shared by all domains);
    - with `num_classes`, the top classifier (the `Dense` producing the model's output) becomes
      a `DomainHead` (followed by the classifier's activation, if any); domain
      `source_domain` (by default, every domain with as many classes as the original) starts
      from its weights. Without it, the classifier stays shared.

    Every other layer is copied (config and weights): `model` itself is never changed, and
    the new model shares no variable with it. Adapters start at zero, so at first every
    domain computes exactly what the original model computes (in inference mode; up to float
    rounding of the batch norm). The result keeps the original inputs (names included), then
    `"domain"`; nested functional models (a `keras.applications` backbone inside a
    `Sequential`) are inlined.

    Args:
        model: a built functional or `Sequential` Keras model (for example a
            `keras.applications` network), channels last.
        num_domains: int, number of domains.
        mode: `"parallel"` or `"series"` adapters. Defaults to `"parallel"`.
        where: which layers get adapters, chosen among the model's `Conv1D`/`Conv2D` (not
            grouped) and `Dense` layers in graph order, the top classifier excluded unless
            named: `None` or `"all"` (every one), `"shallow"` (the first `depth_fraction` of
            them), `"deep"` (the last `depth_fraction`), a list of layer names, or a
            predicate `layer -> bool` (applied to those layers, classifier included).
            Defaults to `None`.
        depth_fraction: float in (0, 1], the share of layers `"shallow"`/`"deep"` take (at
            least one). Defaults to `0.5`.
        rank: optional int, low-rank adapters, capped at each layer's channel counts.
            Defaults to `None`.
        freeze_base: bool, make every shared layer of the new model non-trainable (the
            original model is not touched). Defaults to `True`.
        num_classes: optional list of ints, one per domain: replace the top classifier by a
            `DomainHead`. Defaults to `None` (the classifier is kept, shared).
        classifier: optional name of the classifier layer to replace. Defaults to the `Dense`
            layer producing the model's output.
        adapter_initializer: Defaults to `"zeros"`.
        adapter_regularizer: regularizer of the adapter kernels. Defaults to `None`.
        batch_norms: `"per_domain"` (each `BatchNormalization` becomes a
            `DomainBatchNormalization`) or `"shared"` (kept as is, frozen with `freeze_base`).
            Defaults to `"per_domain"`.
        source_domain: optional int, the domain the original classifier was trained for: only
            its head starts from the classifier's weights. Defaults to `None` (every domain
            with the classifier's class count).
        name: name of the new model. Defaults to the original's.

    Returns:
        A `keras.Model` with inputs `[*model.inputs, domain]`.

    Example:

    >>> base = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3))
    >>> multi = add_adapters(base, num_domains=3, where="deep", num_classes=[10, 10, 5])
    >>> logits = multi([images, domains])
    """
    num_domains = routing.check_num_domains(num_domains)
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"`rank` must be a positive int or None. Received: rank={rank!r}")
    if num_classes is not None:
        num_classes = _check_num_classes(num_classes, num_domains)
    if batch_norms not in BATCH_NORMS:
        raise ValueError(
            f"`batch_norms` must be one of {BATCH_NORMS}. Received: batch_norms={batch_norms!r}"
        )
    if source_domain is not None:
        source_domain = check_domain(source_domain, num_domains, "source_domain")
    model = as_functional(model)
    layers = graph_layers(model)
    head = _find_classifier(model, layers, classifier, required=num_classes is not None)
    selected = select_layers(layers, where, depth_fraction, exclude=head)
    if head is not None and num_classes is not None and head in selected:
        raise ValueError(
            f"The classifier {head.name!r} is replaced by a DomainHead (`num_classes` is set), "
            f"so it cannot also take an adapter. Received: where={where!r}"
        )
    selected_ids = {id(layer) for layer in selected}
    replaced, copies = {}, LayerCopies()

    def call(op, args, kwargs, domain):
        x = args[0] if args else None
        if id(op) in selected_ids:
            first = id(op) not in replaced
            if first:
                replaced[id(op)] = ResidualAdapter(
                    copies.copy(op),
                    num_domains,
                    mode=mode,
                    rank=_layer_rank(rank, op, x, mode),
                    adapter_initializer=adapter_initializer,
                    adapter_regularizer=adapter_regularizer,
                    freeze_base=freeze_base,
                    name=op.name,
                )
            outputs = replaced[id(op)](x, domain)
            if first:
                replaced[id(op)].layer.set_weights(op.get_weights())
            return outputs
        if isinstance(op, keras.layers.BatchNormalization) and batch_norms == "per_domain":
            first = id(op) not in replaced
            if first:
                replaced[id(op)] = _domain_batch_norm(op, num_domains, x)
            outputs = replaced[id(op)](x, domain, training=kwargs.get("training"))
            if first:
                _copy_batch_norm(op, replaced[id(op)])
            return outputs
        if num_classes is not None and op is head:
            return _domain_head(op, num_classes, x, domain, source_domain)
        return copies(op, args, kwargs)

    multi = rebuild(model, call, add_domain_input=True, name=name)
    if freeze_base:
        for layer in copies.copies.values():
            if isinstance(layer, keras.layers.Layer) and layer.weights:
                layer.trainable = False
    return multi


def select_layers(layers, where=None, depth_fraction=0.5, exclude=None):
    """The layers `where` picks among `layers` (graph order); see `add_adapters`."""
    candidates = [layer for layer in layers if adaptable(layer) and layer is not exclude]
    if where is None or isinstance(where, str):
        where = "all" if where is None else where
        if where not in PLACEMENTS:
            raise ValueError(
                f"`where` must be None, one of {PLACEMENTS}, a list of layer names or a "
                f"predicate. Received: where={where!r}"
            )
        if not candidates:
            raise ValueError(
                "The model has no Conv1D, Conv2D or Dense layer to adapt (besides its "
                f"classifier). Received: where={where!r}"
            )
        if where == "all":
            return candidates
        if isinstance(depth_fraction, bool) or not 0.0 < depth_fraction <= 1.0:
            raise ValueError(
                f"`depth_fraction` must be in (0, 1]. Received: depth_fraction={depth_fraction!r}"
            )
        count = max(1, int(round(depth_fraction * len(candidates))))
        return candidates[:count] if where == "shallow" else candidates[-count:]
    if callable(where):
        return [layer for layer in layers if adaptable(layer) and where(layer)]
    if isinstance(where, (list, tuple, set)):
        by_name = {layer.name: layer for layer in layers}
        missing = [n for n in where if n not in by_name]
        if missing:
            raise ValueError(
                f"`where` names layers that are not in the model: {missing}. "
                f"Received: where={list(where)!r}"
            )
        bad = [n for n in where if not adaptable(by_name[n])]
        if bad:
            kinds = {n: type(by_name[n]).__name__ for n in bad}
            raise ValueError(
                "Only Conv1D, Conv2D (groups=1, channels_last) and Dense layers take adapters. "
                f"Received: where with {kinds}"
            )
        return [layer for layer in layers if layer.name in set(where)]
    raise TypeError(
        "`where` must be None, a string, a list of layer names or a predicate. "
        f"Received: where={where!r}"
    )


def adaptable(layer):
    """True for layers a `ResidualAdapter` can wrap: Conv1D/Conv2D (groups=1) and Dense."""
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D)):
        return layer.groups == 1 and layer.data_format == "channels_last"
    return isinstance(layer, keras.layers.Dense)


def _layer_rank(rank, layer, x, mode):
    if rank is None:
        return None
    out_channels = layer.filters if hasattr(layer, "filters") else layer.units
    in_channels = x.shape[-1] if mode == "parallel" else out_channels
    return min(rank, in_channels)


def _find_classifier(model, layers, classifier, required):
    if classifier is not None:
        by_name = {layer.name: layer for layer in layers}
        if classifier not in by_name or not isinstance(by_name[classifier], keras.layers.Dense):
            raise ValueError(
                "`classifier` must name a Dense layer of the model. "
                f"Received: classifier={classifier!r}"
            )
        return by_name[classifier]
    outputs = _output_layers(FunctionalGraph(model).outputs)
    last = model.get_layer(outputs[0][0]) if len(outputs) == 1 else None
    if isinstance(last, keras.layers.Dense):
        return last
    if required:
        raise ValueError(
            "`num_classes` replaces the top classifier, but the model's output is not made by "
            "a Dense layer (or the model has several outputs): pass `classifier=<layer "
            f"name>`. Received: model={model.name!r} whose last layer is "
            f"{type(last).__name__ if last is not None else None}"
        )
    return None


def _output_layers(structure):
    """Names of the layers producing the outputs (leaves `(layer, node, tensor)`)."""
    if isinstance(structure, tuple):
        return [structure]
    values = structure.values() if isinstance(structure, dict) else structure
    return [leaf for value in values for leaf in _output_layers(value)]


def _check_num_classes(num_classes, num_domains):
    if (
        not isinstance(num_classes, (list, tuple))
        or len(num_classes) != num_domains
        or any(
            isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1
            for n in num_classes
        )
    ):
        raise ValueError(
            f"`num_classes` must be a list of {num_domains} positive ints (one per domain). "
            f"Received: num_classes={num_classes!r}"
        )
    return [int(n) for n in num_classes]


def _domain_batch_norm(bn, num_domains, x):
    axis = bn.axis if isinstance(bn.axis, int) else bn.axis[0]
    if axis not in (-1, len(x.shape) - 1):
        raise ValueError(
            "Only batch norms on the last (channels) axis can become per-domain. "
            f"Received: layer {bn.name!r} with axis={bn.axis}"
        )
    return DomainBatchNormalization(
        num_domains,
        momentum=bn.momentum,
        epsilon=bn.epsilon,
        center=bn.center,
        scale=bn.scale,
        beta_regularizer=bn.beta_regularizer,
        gamma_regularizer=bn.gamma_regularizer,
        name=bn.name,
    )


def _copy_batch_norm(bn, domain_bn):
    """Every domain of `domain_bn` starts from `bn`'s gamma, beta and moving statistics."""
    for attribute in ("gamma", "beta", "moving_mean", "moving_variance"):
        source, target = getattr(bn, attribute), getattr(domain_bn, attribute)
        if source is None or target is None:
            continue
        row = keras.ops.convert_to_numpy(source)
        target.assign(np.tile(row[None], (domain_bn.num_domains, 1)).astype(target.dtype))


def _domain_head(dense, num_classes, x, domain, source_domain=None):
    if len(x.shape) != 2:
        raise ValueError(
            "The classifier replaced by a DomainHead must read (batch, features). Received: "
            f"classifier {dense.name!r} with input shape {tuple(x.shape)}"
        )
    head = DomainHead(
        num_classes,
        use_bias=dense.use_bias,
        kernel_initializer=dense.kernel_initializer,
        bias_initializer=dense.bias_initializer,
        kernel_regularizer=dense.kernel_regularizer,
        bias_regularizer=dense.bias_regularizer,
        name=dense.name,
    )
    logits = head(x, domain)
    kernel = keras.ops.convert_to_numpy(dense.kernel)
    bias = None if dense.bias is None else keras.ops.convert_to_numpy(dense.bias)
    new_kernel = keras.ops.convert_to_numpy(head.kernel)
    new_bias = None if head.bias is None else keras.ops.convert_to_numpy(head.bias)
    for index, (offset, classes) in enumerate(zip(head.offsets, num_classes)):
        if source_domain is not None and index != source_domain:
            continue
        if classes != dense.units and source_domain is not None:
            raise ValueError(
                f"The classifier {dense.name!r} has {dense.units} classes, the head of "
                f"`source_domain` {classes}. Received: source_domain={source_domain}"
            )
        if classes == dense.units:
            new_kernel[:, offset : offset + classes] = kernel
            if new_bias is not None:
                new_bias[offset : offset + classes] = bias
    head.kernel.assign(new_kernel)
    if new_bias is not None:
        head.bias.assign(new_bias)
    activation = dense.activation
    if activation is None or activation is keras.activations.linear:
        return logits
    return keras.layers.Activation(activation, name=f"{dense.name}_activation")(logits)
