"""TFLite export in three layouts, built-in ops only (no Flex).

- **folded**: one `.tflite` per domain from `keras_mdn.surgery.fold_domain`: adapters and BNs
  merged into the conv kernels, the head cut to the domain's classes; the base network's size
  and ops. Signature `domain_<d>`: `image -> logits (batch, num_classes[d])`.
- **multi-signature**: one `.tflite` with a signature `domain_<d>` per domain, each traced with
  a Python-int domain; the shared weights are stored once. Converted from the multi-endpoint
  SavedModel (`TFLiteConverter.from_concrete_functions` silently drops the weights, and an
  endpoint named `serve` collapses the signatures: neither is used). Each signature returns
  its domain's logits `(batch, num_classes[d])`.
- **swappable**: one base `.tflite` and one pack file per domain (`keras_mdn.export.packs`).
  The base holds the per-domain tensors (see `keras_mdn.export.swappable`) in resource
  variables (built-in VAR_HANDLE / READ_VARIABLE / ASSIGN_VARIABLE, shared by the signatures
  of one interpreter): signature `set_domain` takes a pack's tensors (differences from the
  reference domain) and writes them, once per domain switch; signature `swappable` takes only
  `image` and returns the padded logits `(batch, max(num_classes))`. The variables start at
  the reference domain's values. The base carries the model id in its TFLite metadata
  (`keras_mdn_model_id`), which every pack's header must match.

Every conversion uses `supported_ops=[TFLITE_BUILTINS]`, so an op without a built-in kernel
fails to convert, and the result is checked for custom (Flex) ops.
"""

import collections
import os

from keras_mdn.export import packs
from keras_mdn.export import quantization as quantization_lib
from keras_mdn.export.savedmodel import (
    check_domains,
    endpoint_name,
    export_saved_model,
    input_spec,
    write_endpoints,
)
from keras_mdn.export.swappable import SwappablePlan
from keras_mdn.surgery.fold import fold_domain
from keras_mdn.surgery.graph import FunctionalGraph

SWAPPABLE_SIGNATURE = "swappable"
SET_DOMAIN_SIGNATURE = "set_domain"
MODEL_ID_METADATA = "keras_mdn_model_id"


# === Converter ===


def convert_saved_model(saved_model_dir, signature_keys, quantization=None,
                        representative_dataset=None, resource_variables=False):
    """Converts signatures of a SavedModel to TFLite bytes with built-in ops only."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        os.fspath(saved_model_dir), signature_keys=list(signature_keys)
    )
    # Variables assigned by a signature stay variables; read-only ones become constants.
    converter.experimental_enable_resource_variables = resource_variables
    quantization_lib.configure(converter, quantization, representative_dataset)
    data = converter.convert()
    check_builtin_only(data)
    return data


def _model_object(data):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


def op_counts(data):
    """`collections.Counter` of the operator names of a TFLite model (all subgraphs)."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = _model_object(data)
    codes = []
    for code in model.operatorCodes:
        if code.customCode:
            custom = code.customCode
            codes.append(custom.decode() if isinstance(custom, bytes) else str(custom))
        else:
            codes.append(names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?"))
    counts = collections.Counter()
    for subgraph in model.subgraphs:
        for operator in subgraph.operators or []:
            counts[codes[operator.opcodeIndex]] += 1
    return counts


def check_builtin_only(data):
    """Raises `ValueError` if the model holds a custom or Flex op (phones lack them)."""
    custom = [
        code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
        for code in _model_object(data).operatorCodes
        if code.customCode
    ]
    if custom or any(name.startswith("Flex") for name in op_counts(data)):
        raise ValueError(f"The TFLite model uses non-built-in ops {custom}.")


def add_metadata(data, name, value):
    """Returns the TFLite model bytes with a metadata entry `name` holding `value` bytes."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = _model_object(data)
    buffer = schema.BufferT()
    buffer.data = bytearray(value)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(data, name):
    """The bytes of metadata entry `name` of a TFLite model, or None."""
    model = _model_object(data)
    for entry in model.metadata or []:
        entry_name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if entry_name == name:
            return bytes(bytearray(model.buffers[entry.buffer].data))
    return None


def write(path, data):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return os.fspath(path)


def _domain_images(representative_data, domain):
    """The representative images of one domain (a dict per domain, or shared images)."""
    import numpy as np

    if isinstance(representative_data, dict):
        if domain not in representative_data:
            raise ValueError(
                f"`representative_data` has no images for domain {domain}. Received keys: "
                f"{sorted(representative_data)}"
            )
        images = representative_data[domain]
    else:
        images = representative_data
    return np.asarray(images, dtype="float32")


def _representative(representative_data, domains, feeds, many=False):
    """A converter representative dataset drawing from every domain in turn.

    `feeds(domain, image)` returns `(signature_key, inputs_dict)` for one example (with
    `many=True`, an iterable of them).
    """
    if representative_data is None:
        return None

    def dataset():
        per_domain = {d: _domain_images(representative_data, d) for d in domains}
        longest = max(len(images) for images in per_domain.values())
        for index in range(longest):
            for domain, images in per_domain.items():
                if index < len(images):
                    example = feeds(domain, images[index : index + 1])
                    yield from (example if many else [example])

    return dataset


# === Layouts ===


def export_folded_tflite(model, directory, domains=None, quantization=None,
                         representative_data=None):
    """Writes `domain_<d>.tflite` (folded, one signature `domain_<d>`) for each domain.

    Args:
        model: functional multi-domain model.
        directory: output directory.
        domains: domain indices. Defaults to all.
        quantization: `None`, `"float16"`, `"dynamic_range"` or `"int8"`.
        representative_data: images `(N, H, W, C)` (all domains) or `{domain: images}`;
            required for `"int8"`.

    Returns:
        dict domain -> path.
    """
    _check_quantization(quantization, representative_data)
    graph = FunctionalGraph(model)
    domains = check_domains(domains, graph.num_domains)
    name, spec = input_spec(graph)
    paths = {}
    for domain in domains:
        folded = fold_domain(model, domain)
        key = endpoint_name(domain)

        saved = write_endpoints({key: (_inference(folded), [spec])})
        dataset = _representative(
            representative_data, [domain], lambda d, x, key=key: (key, {name: x})
        )
        data = convert_saved_model(saved, [key], quantization, dataset)
        paths[domain] = write(os.path.join(directory, f"{key}{_suffix(quantization)}.tflite"),
                               data)
    return paths


def export_multi_signature_tflite(model, path, domains=None, quantization=None,
                                  representative_data=None, saved_model_dir=None):
    """Writes one `.tflite` with a signature `domain_<d>` per domain (shared weights once).

    Args:
        model: functional multi-domain model.
        path: output file.
        domains: domain indices. Defaults to all.
        quantization, representative_data: as in `export_folded_tflite`.
        saved_model_dir: a SavedModel written by `export_saved_model` for these domains, to
            convert instead of writing a new one.

    Returns:
        `path`.
    """
    _check_quantization(quantization, representative_data)
    graph = FunctionalGraph(model)
    domains = check_domains(domains, graph.num_domains)
    name, _ = input_spec(graph)
    if saved_model_dir is None:
        import tempfile

        saved_model_dir = export_saved_model(
            model, tempfile.mkdtemp(prefix="keras_mdn_multi_"), domains, generic=False
        )
    keys = [endpoint_name(d) for d in domains]
    dataset = _representative(
        representative_data, domains, lambda d, x: (endpoint_name(d), {name: x})
    )
    data = convert_saved_model(saved_model_dir, keys, quantization, dataset)
    return write(path, data)


def export_swappable_tflite(model, directory, domains=None, quantization=None,
                            representative_data=None, pack_dtype="float32", domain_names=None,
                            plan=None, write_packs=True):
    """Writes the swappable base `swappable.tflite` and a pack `domain_<d>.mdnpack` per domain.

    Args:
        model: functional multi-domain model.
        directory: output directory.
        domains: domains to write packs for. Defaults to all.
        quantization: quantisation of the base model (its shared weights); the packs' dtype is
            `pack_dtype`.
        representative_data: as in `export_folded_tflite`; for `"int8"` each example is fed
            with its domain's pack.
        pack_dtype: `"float32"`, `"float16"` or `"int8"`: storage of the pack matrices.
        domain_names: optional list of names, one per domain of the model.
        plan: an optional `SwappablePlan` of `model` (its `reference_domain` is the domain the
            base model computes before any pack). Defaults to `SwappablePlan(model)`.
        write_packs: write the packs too (they do not depend on `quantization`). Defaults to
            `True`.

    Returns:
        dict with `"base"` (path), `"packs"` (domain -> path) and `"model_id"` (hex).
    """
    import numpy as np
    import tensorflow as tf

    _check_quantization(quantization, representative_data)
    plan = plan or SwappablePlan(model)
    domains = check_domains(domains, plan.num_domains)
    check_pack_dtype(pack_dtype)
    names = check_domain_names(domain_names, plan.num_domains)
    name, spec = input_spec(plan.graph)
    reference = plan.reference_tensors()
    # The swapped tensors live in resource variables: `set_domain` writes them once per
    # domain switch, the inference signature reads them (LiteRT shares variables across the
    # signatures of one interpreter). They start at the reference values (an all-zero pack),
    # so before any `set_domain` the model computes the base network.
    variables = {
        tensor: tf.Variable(value, trainable=False, name=tensor)
        for tensor, value in reference.items()
    }
    pack_signature = {
        tensor: tf.TensorSpec(shape, tf.float32, name=tensor)
        for tensor, shape in plan.specs.items()
    }

    def set_domain(deltas):
        for tensor, variable in variables.items():
            value = deltas[tensor]
            if np.any(reference[tensor]):  # adapters' reference is 0: no constant stored
                value = tf.constant(reference[tensor]) + value
            variable.assign(value)
        return {"num_tensors": tf.constant(len(variables), tf.int32)}

    def serve(image):
        return plan.call(image, {k: v.read_value() for k, v in variables.items()})

    saved = write_endpoints({
        SWAPPABLE_SIGNATURE: (serve, [spec]),
        SET_DOMAIN_SIGNATURE: (set_domain, [pack_signature]),
    })

    def feeds(domain, image):
        # The calibration of an int8 base reads the variables: each domain's pack goes first.
        yield SET_DOMAIN_SIGNATURE, plan.pack_tensors(domain)
        yield SWAPPABLE_SIGNATURE, {name: image}

    dataset = _representative(representative_data, domains, feeds, many=True)
    data = convert_saved_model(saved, [SWAPPABLE_SIGNATURE, SET_DOMAIN_SIGNATURE], quantization,
                               dataset, resource_variables=True)
    data = add_metadata(data, MODEL_ID_METADATA, plan.model_id.hex().encode("ascii"))
    base = write(os.path.join(directory, f"swappable{_suffix(quantization)}.tflite"), data)
    pack_paths = (write_domain_packs(plan, directory, domains, names, pack_dtype)
                  if write_packs else {})
    return {"base": base, "packs": pack_paths, "model_id": plan.model_id.hex()}


def write_domain_packs(plan, directory, domains, names, pack_dtype="float32"):
    """Writes `domain_<d>[.<dtype>].mdnpack` for each domain; returns domain -> path."""
    check_pack_dtype(pack_dtype)
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for domain in domains:
        pack = packs.Pack(plan.model_id, domain, names[domain], plan.pack_tensors(domain),
                          dtype=pack_dtype, num_classes=plan.num_classes(domain))
        suffix = "" if pack_dtype == "float32" else f".{pack_dtype}"
        path = os.path.join(directory, f"{endpoint_name(domain)}{suffix}.mdnpack")
        packs.write_pack(path, pack)
        paths[domain] = path
    return paths


def check_pack_dtype(pack_dtype):
    if pack_dtype not in packs.DTYPE_CODES:
        raise ValueError(
            f"`pack_dtype` must be one of {list(packs.DTYPE_CODES)}. "
            f"Received: pack_dtype={pack_dtype!r}"
        )


def _check_quantization(quantization, representative_data):
    quantization_lib.check_quantization(quantization)
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            'quantization="int8" needs representative images from every domain. Received: '
            "representative_data=None"
        )


def _inference(model):
    def serve(image):
        return model(image, training=False)

    return serve


def check_domain_names(domain_names, num_domains):
    """`domain_names` checked (one per domain), or the default `domain_<d>` names."""
    if domain_names is None:
        return [endpoint_name(d) for d in range(num_domains)]
    domain_names = [str(n) for n in domain_names]
    if len(domain_names) != num_domains:
        raise ValueError(
            f"`domain_names` must have one name per domain ({num_domains}). "
            f"Received: {len(domain_names)} names"
        )
    return domain_names


def _suffix(quantization):
    return "" if quantization is None else f".{quantization}"
