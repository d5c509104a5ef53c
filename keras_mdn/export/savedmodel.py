"""SavedModel export: one endpoint per domain and a generic endpoint taking the domain index.

Written with `tf.saved_model.save` (see `write_endpoints`). Endpoint `domain_<d>` takes the
image batch and runs domain `d` traced with a Python int, so its per-domain weights are sliced
while tracing (adapters become plain 1x1 convolutions), and returns the domain's logits
`(batch, num_classes[d])` (the Keras model's output without the padding columns). Endpoint
`domain_index` takes the image batch and a scalar int32 domain, checks its range, gathers the
domain's weights at run time and returns the Keras model's output `(batch, max(num_classes))`,
the classes a domain does not have set to the head's padding logit.

A domain out of range at `domain_index` raises `InvalidArgumentError` ("`domain` must be in
[0, T)") from an explicit check; TensorFlow's own gather on CPU would also raise, but on GPU it
silently returns zeros, hence the check.
"""

import os
import tempfile

from keras_mdn.surgery.graph import FunctionalGraph, call_with_domain

GENERIC_ENDPOINT = "domain_index"


def endpoint_name(domain):
    """Name of the per-domain endpoint / TFLite signature of `domain`."""
    return f"domain_{int(domain)}"


def check_domains(domains, num_domains):
    """`domains` (None: all) as a sorted list of ints in `[0, num_domains)`."""
    if domains is None:
        return list(range(num_domains))
    if isinstance(domains, int):
        domains = [domains]
    checked = []
    for domain in domains:
        if isinstance(domain, bool) or not isinstance(domain, int):
            raise TypeError(f"`domains` must hold ints. Received: domains={domains!r}")
        if not 0 <= domain < num_domains:
            raise ValueError(
                f"`domains` must be in [0, {num_domains}) for this model. "
                f"Received: domains={domains!r}"
            )
        checked.append(domain)
    if not checked:
        raise ValueError(f"`domains` must not be empty. Received: domains={domains!r}")
    return sorted(set(checked))


def input_spec(graph, batch_size=None):
    """`(name, tf.TensorSpec)` of the model's non-domain input."""
    import tensorflow as tf

    inputs = [i for i in graph.inputs if i[0] != graph.domain_input]
    if len(inputs) != 1:
        raise ValueError(
            f"Export needs one non-domain input. Received: inputs {[i[0] for i in inputs]}"
        )
    name, _, dtype, shape = inputs[0]
    return name, tf.TensorSpec((batch_size,) + tuple(shape[1:]), dtype, name=name)


def _domain_function(model, graph, domain):
    def serve(image):
        return call_with_domain(model, image, domain, graph, head_classes_only=True)

    return serve


def _generic_function(model, graph):
    import tensorflow as tf

    num_domains = graph.num_domains

    def serve(image, domain):
        message = f"`domain` must be in [0, {num_domains})"
        checks = [
            tf.debugging.assert_greater_equal(domain, 0, message=message),
            tf.debugging.assert_less(domain, num_domains, message=message),
        ]
        with tf.control_dependencies(checks):
            domain = tf.identity(domain)
        return call_with_domain(model, image, domain, graph)

    return serve


def export_saved_model(model, path, domains=None, generic=True, batch_size=None):
    """Writes a SavedModel with an endpoint per domain and a generic one.

    Args:
        model: functional multi-domain model (inputs `"image"` and `"domain"`).
        path: directory to write.
        domains: list of domain indices with their own endpoint. Defaults to all.
        generic: also write the `domain_index` endpoint `(image, domain) -> logits`.
            Defaults to `True`.
        batch_size: static batch size of the endpoints, or `None` (any). Defaults to `None`.

    Returns:
        `path`. Reload with `tf.saved_model.load(path)`; call `loaded.domain_2(images)` or
        `loaded.domain_index(images, tf.constant(2))`, or use `loaded.signatures[...]`.

    Example:

    >>> export_saved_model(model, "saved_models/multi_domain")
    """
    import tensorflow as tf

    graph = FunctionalGraph(model)
    if graph.num_domains < 1:
        raise ValueError(f"Model {model.name!r} has no domain layers to export.")
    domains = check_domains(domains, graph.num_domains)
    _, spec = input_spec(graph, batch_size)
    endpoints = {endpoint_name(d): (_domain_function(model, graph, d), [spec]) for d in domains}
    if generic:
        endpoints[GENERIC_ENDPOINT] = (
            _generic_function(model, graph),
            [spec, tf.TensorSpec((), tf.int32, name="domain")],
        )
    return write_endpoints(endpoints, path)


def write_endpoints(endpoints, path=None):
    """Writes `{name: (fn, input_signature)}` and the variables they read as a SavedModel.

    Each endpoint is an attribute of the saved object (`loaded.<name>(...)`) and a serving
    signature (`loaded.signatures[name]`); the first is also `"serving_default"`, as Keras'
    `ExportArchive` does. Each function is traced once: `tf.saved_model.save` retraces every
    `tf.function` it finds on the object (TensorFlow keys its trace cache on the save
    context), which doubled the export time, so the object holds the concrete functions.

    Returns the directory (a new temporary one when `path` is None).
    """
    import tensorflow as tf

    path = os.fspath(path or tempfile.mkdtemp(prefix="keras_mdn_export_"))
    root = tf.Module()
    signatures, variables = {}, {}
    for name, (fn, signature) in endpoints.items():
        concrete = tf.function(fn, autograph=False).get_concrete_function(*signature)
        setattr(root, name, concrete)
        signatures[name] = concrete
        variables.update((id(v), v) for v in concrete.variables)
    signatures.setdefault("serving_default", next(iter(signatures.values())))
    root.endpoint_variables = list(variables.values())
    tf.saved_model.save(root, path, signatures=signatures)
    return path
