"""The fold-on-switch TFLite layout: a domain switch refolds the network's constants.

XNNPACK runs CONV_2D and FULLY_CONNECTED on its fast kernels only with constant filters, so a
layout that feeds per-domain tensors at run time (`swappable.tflite`) leaves batch-norm scales
as extra elementwise passes and adapters off the fast kernels. This layout keeps the network
in its folded form (adapters and batch norms merged into the conv kernels, as
`keras_mdn.surgery.fold_domain` does): the per-domain values are constant buffers of an
ordinary `.tflite`, rewritten once per domain switch.

- `template.tflite`: the folded network of the plan's reference domain (signature
  `template`, `image -> logits (batch, max(num_classes))`, zeros past a domain's classes),
  the same ops as a folded export, so it runs at the base network's speed.
- `fold.tflite`: signature `fold`. Inputs: the template's own patched buffers (read from its
  bytes, `template__<name>`) and a domain pack's tensors (the same packs as the swappable
  layout: per-domain alpha as differences from the reference domain). Outputs `<name>`: the
  new contents of those buffers, in the template's layout (conv filters OHWI, dense weights
  OI). It holds the reference domain's swapped tensors as constants (about one pack).
  Its metadata `keras_mdn_template_patches` (JSON) lists, for each output, the template's
  buffer offsets, the byte size, the shape and the dtype, and the template's SHA-256.
- App steps per switch: run `fold` once, copy each output into a copy of the template's
  bytes at its offsets, build a new interpreter from the patched bytes
  (`keras_mdn.export.runner.FoldOnSwitchModel` does exactly this).

How a buffer is refolded. Every swapped layer (`keras_mdn.export.swappable.SwappedLayer`)
computes, before its activation, `W @ mix + tap(adapter)` with bias `b @ mix + offset`, where
`mix` is a per-channel scale (a batch norm folded in), a channel-mixing matrix (a series
adapter) or nothing, and `adapter` a parallel adapter added at its kernel tap. The template
holds the reference's folded kernel `K_ref = W @ mix_ref + tap(adapter_ref)`; a domain's is
`(K_ref - tap(adapter_ref)) @ (mix_ref^-1 mix) + tap(adapter)`, and likewise for the bias, so
the shared kernels `W` are shipped once (inside the template). A head or factorised layer
(swapped tensors `kernel` and `bias`) and a batch norm left unmerged (`scale` and `offset`)
take the domain's values. The kernel arithmetic is `keras_mdn.ops.folding`'s.

Trade-off against the variables layout (`swappable.tflite`): every call here costs what the
base network costs, and a switch costs a refold, a copy of the template's bytes and a new
interpreter (tens of ms for ResNet-26 width 0.5 against about 2 ms for writing variables,
`benchmarks/results/export_quick.md`). Apps that switch domain on most frames, or cannot
build interpreters at run time, use the variables layout.

Limits: float32 only; folded layers must be `Conv2D` or `Dense`; the reference domain needs
nonzero folded batch-norm scales and invertible series mixing (else pick another
`reference_domain`); a fold the refold does not model (a plain `BatchNormalization` merged
into an adapter's conv) is refused at export, where every exported domain's refold is checked
against `fold_domain`.
"""

import hashlib
import json
import os
from typing import NamedTuple

import numpy as np

TEMPLATE_SIGNATURE = "template"
FOLD_SIGNATURE = "fold"
PATCHES_METADATA = "keras_mdn_template_patches"
TEMPLATE_INPUT = "template__"
LAYOUTS = {"conv": (3, 0, 1, 2), "dense": (1, 0), "vector": (0,)}  # Keras -> TFLite axes


class Refold(NamedTuple):
    """One folded layer of the template whose constants depend on the domain.

    Attributes:
        name: the folded layer's name in the template (prefix of its buffers' names).
        unit: the `SwappedLayer` whose swapped tensors it is computed from.
        kind: `"linear"` (a conv/dense refolded from the reference: mixing, tap adapter,
            offset), `"replace"` (a conv/dense whose kernel and bias are the unit's `kernel`
            and `bias`) or `"affine"` (a batch norm left as a per-channel scale and offset).
        parts: the layer's patched buffers, e.g. `("kernel", "bias")`.
        layout: `"conv"` (Keras HWIO, TFLite OHWI) or `"dense"` (IO, OI) for the kernel.
    """

    name: str
    unit: object
    kind: str
    parts: tuple
    layout: str


class Patch(NamedTuple):
    """Where one output of `fold.tflite` goes in the template's bytes."""

    name: str
    offsets: tuple
    nbytes: int
    shape: tuple
    dtype: str = "float32"


def fold_terms(unit, tensors, projection=None):
    """The `FoldTerms` of a swapped layer from its swapped tensors: the layer's `fold_terms`.

    `projection`: the layer's low-rank adapter projection as an array (read from the layer
    when None: eagerly only).

    Raises:
        ValueError: for a layer whose swapped tensors do not describe a linear fold.
    """
    fold = getattr(unit.layer, "fold_terms", None)
    try:
        if fold is None:
            raise ValueError(f"{type(unit.layer).__name__} has no `fold_terms`.")
        return fold(tensors, projection)
    except ValueError as error:
        raise ValueError(
            f"The fold-on-switch export cannot refold layer {unit.layer.name!r} "
            f"({type(unit.layer).__name__}) from its swapped tensors {sorted(tensors)}: export "
            f'the swappable layout (layouts=("swappable",)) for it. ({error})'
        ) from error


class TemplatePlan:
    """The template's patched layers for a `SwappablePlan`, and the refold of each.

    Args:
        plan: a `keras_mdn.export.SwappablePlan`.

    Attributes:
        refolds: list of `Refold`, one per template layer whose buffers change with the
            domain.
        folded: the folded Keras model of the template's architecture (a domain with the
            most classes), whose per-domain weights the export overwrites.
    """

    def __init__(self, plan):
        from keras_mdn.surgery.fold import fold_domain

        self.plan = plan
        counts = [plan.num_classes(d) for d in range(plan.num_domains)]
        self.wide_domain = int(np.argmax(counts)) if any(counts) else plan.reference_domain
        self.folded = fold_domain(plan.model, self.wide_domain, factorized="reconstruct")
        layers = {layer.name: layer for layer in self.folded.layers}
        nodes = {node.key: node for node in plan.graph.nodes}
        self.refolds = []
        for key, unit in plan.units.items():
            parts = set(plan.reference_tensors_of(unit))
            layer = layers.get(unit.name)
            if layer is None and parts == {"scale", "offset"}:
                # A batch norm after a plain conv/dense: fold_domain merged it into that layer.
                refs = nodes[key].tensor_keys()
                producer = nodes.get(refs[0][:2]) if refs else None
                layer = None if producer is None else layers.get(producer.name)
            self.refolds.append(self._refold(unit, layer, parts))
        names = [refold.name for refold in self.refolds]
        if len(set(names)) != len(names):
            raise ValueError(
                "The fold-on-switch export found two swapped layers folded into one layer "
                f"of the folded model. Received: folded layers {names}"
            )
        # The reference's fold terms as arrays (constants of fold.tflite), computed once.
        self.reference_terms = {
            refold.name: _numpy_terms(fold_terms(refold.unit, plan.reference_tensors_of(
                refold.unit))) for refold in self.refolds if refold.kind == "linear"
        }
        for terms in self.reference_terms.values():
            _ratio(terms, terms)  # refuses a reference whose mixing cannot be inverted

    def _refold(self, unit, layer, parts):
        import keras

        if layer is None:
            raise ValueError(
                f"The fold-on-switch export cannot find the folded layer of {unit.name!r} "
                f"({type(unit.layer).__name__}) in the folded model."
            )
        if isinstance(layer, keras.layers.BatchNormalization):
            if parts != {"scale", "offset"}:
                raise ValueError(f"Folded batch norm {layer.name!r} for swapped {sorted(parts)}.")
            return Refold(layer.name, unit, "affine", ("scale", "offset"), "vector")
        if type(layer) is keras.layers.Conv2D:
            layout = "conv"
        elif type(layer) is keras.layers.Dense:
            layout = "dense"
        else:
            raise ValueError(
                f"The fold-on-switch export supports folded Conv2D and Dense layers. Received: "
                f"layer {layer.name!r} ({type(layer).__name__}) folded from {unit.name!r}"
            )
        if parts == {"kernel", "bias"}:
            return Refold(layer.name, unit, "replace", ("kernel", "bias"), layout)
        terms = fold_terms(unit, self.plan.reference_tensors_of(unit))
        patched = ("kernel",)
        if terms.mix is not None or terms.offset is not None:
            if layer.bias is None:
                raise ValueError(f"Folded layer {layer.name!r} has no bias to take an offset.")
            patched += ("bias",)
        return Refold(layer.name, unit, "linear", patched, layout)

    # === Values in the template's layout ===

    def names(self):
        """Every patched buffer's name, `<layer>__<part>`, in order."""
        return [f"{r.name}__{part}" for r in self.refolds for part in r.parts]

    def reference_values(self):
        """dict name -> float32 array (TFLite layout): the reference domain's buffers."""
        from keras_mdn.surgery.fold import fold_domain

        plan = self.plan
        folded = fold_domain(plan.model, plan.reference_domain, factorized="reconstruct")
        layers = {layer.name: layer for layer in folded.layers}
        values = {}
        for refold in self.refolds:
            tensors = plan.reference_tensors_of(refold.unit)
            for part in refold.parts:
                if refold.kind == "linear":
                    value = _numpy(getattr(layers[refold.name], part))
                else:
                    value = tensors[part]
                values[f"{refold.name}__{part}"] = to_tflite(value, refold, part)
        return values

    def refold(self, current, deltas):
        """New buffer contents from the template's (`current`) and a pack's `deltas`.

        Both are dicts of tensors (the template's in TFLite layout); uses `keras.ops`, so it
        runs eagerly on arrays and traces into `fold.tflite`.
        """
        from keras import ops

        from keras_mdn.ops import folding

        plan, outputs = self.plan, {}
        for refold in self.refolds:
            reference = plan.reference_tensors_of(refold.unit)
            prefix = f"{refold.unit.name}__"
            tensors = {part: ops.add(value, deltas[prefix + part])
                       for part, value in reference.items()}
            name = refold.name
            if refold.kind != "linear":
                for part in refold.parts:
                    delta = to_tflite(deltas[prefix + part], refold, part)
                    outputs[f"{name}__{part}"] = ops.add(current[f"{name}__{part}"], delta)
                continue
            kernel = from_tflite(current[f"{name}__kernel"], refold, "kernel")
            old = self.reference_terms[name]
            new = fold_terms(refold.unit, tensors, old.projection)
            ratio = _ratio(old, new)
            kernel = _mix(kernel, ratio, new.matrix)
            if new.adapter is not None:
                # (K - tap(P A_ref)) r + tap(P A) = K r + tap(P (A - A_ref r)): one tap of a
                # run-time tensor, so no kernel-sized constant lands in fold.tflite.
                adapter = ops.subtract(new.adapter, _mix(old.adapter, ratio, new.matrix))
                if new.projection is not None:
                    adapter = ops.matmul(new.projection, adapter)
                kernel = folding.fold_parallel(kernel, adapter, new.tap)
            outputs[f"{name}__kernel"] = to_tflite(kernel, refold, "kernel")
            if "bias" in refold.parts:
                bias = current[f"{name}__bias"]
                if old.offset is not None:
                    bias = ops.subtract(bias, old.offset)
                bias = _mix(bias, ratio, new.matrix)
                if new.offset is not None:
                    bias = ops.add(bias, new.offset)
                outputs[f"{name}__bias"] = bias
        return outputs


def _ratio(old, new):
    """`mix_ref^-1 mix` (None without mixing): a per-channel ratio or a matrix."""
    from keras import ops

    if new.mix is None:
        return None
    reference = np.asarray(old.mix, dtype="float64")
    if old.matrix:
        if np.linalg.cond(reference) > 1e6:
            raise ValueError(
                "The reference domain's series adapter mixing is (nearly) singular: pick "
                "another `reference_domain`. Received: condition number "
                f"{np.linalg.cond(reference):.3g}"
            )
        inverse = np.linalg.inv(reference).astype("float32")
        return ops.matmul(inverse, new.mix)
    if np.any(np.abs(reference) < 1e-12):
        raise ValueError(
            "A folded batch-norm scale of the reference domain is 0, so the shared kernel "
            "cannot be recovered from the template: pick another `reference_domain`. Received: "
            f"{int(np.sum(np.abs(reference) < 1e-12))} zero scales"
        )
    return ops.multiply(new.mix, (1.0 / reference).astype("float32"))


def _mix(value, ratio, matrix):
    """`value @ ratio` on the last axis (a matrix) or `value * ratio` (per channel)."""
    from keras import ops

    if ratio is None:
        return value
    if not matrix:
        return ops.multiply(value, ratio)
    shape = tuple(value.shape)
    if len(shape) == 1:
        # A vector times a matrix as a sum of products: as a MatMul beside the kernel's, the
        # converter makes one BATCH_MATMUL of both and fails to verify it.
        return ops.sum(ops.expand_dims(value, -1) * ratio, axis=0)
    flat = ops.reshape(value, (-1, shape[-1]))
    return ops.reshape(ops.matmul(flat, ratio), shape)


def _numpy_terms(terms):
    return terms._replace(**{
        field: None if getattr(terms, field) is None else _numpy(getattr(terms, field))
        for field in ("mix", "adapter", "offset", "projection")
    })


def _numpy(value):
    from keras import ops

    return np.asarray(ops.convert_to_numpy(value), dtype="float32")


def to_tflite(value, refold, part):
    """A Keras-layout kernel in the template's layout (conv OHWI, dense OI); vectors as is."""
    from keras import ops

    if part != "kernel":
        return value
    axes = LAYOUTS[refold.layout]
    return np.transpose(value, axes) if isinstance(value, np.ndarray) else ops.transpose(
        value, axes)


def from_tflite(value, refold, part):
    from keras import ops

    if part != "kernel":
        return value
    return ops.transpose(value, tuple(np.argsort(LAYOUTS[refold.layout])))


# === Buffers of a TFLite flatbuffer ===


def buffer_locations(data):
    """dict buffer index -> (byte offset, byte size) of every non-empty buffer of `data`."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    locations = {}
    for index in range(model.BuffersLength()):
        buffer = model.Buffers(index)
        if buffer.Offset() > 1:  # stored after the flatbuffer (models over 2 GB)
            locations[index] = (int(buffer.Offset()), int(buffer.Size()))
            continue
        field = buffer._tab.Offset(4)
        if field and buffer.DataLength():
            locations[index] = (int(buffer._tab.Vector(field)), int(buffer.DataLength()))
    return locations


def locate(data, expected, source="template"):
    """Where each expected float32 tensor lies in the model bytes `data`.

    Args:
        data: TFLite model bytes.
        expected: dict name -> float32 array (TFLite layout), each unique in the model.

    Returns:
        dict name -> `Patch`.

    Raises:
        ValueError: when a tensor is in no buffer (the converter fused it with another op) or
            two tensors share one buffer.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(data, 0)
    locations = buffer_locations(data)
    by_size = {}
    for index, (_, nbytes) in locations.items():
        by_size.setdefault(nbytes, []).append(index)
    users = {}
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            users.setdefault(tensor.Buffer(), []).append(tensor.Type())
    found, owner = {}, {}
    for name, value in expected.items():
        value = np.asarray(value, dtype="float32")
        tolerance = 1e-5 * max(1.0, float(np.max(np.abs(value))) if value.size else 1.0)
        matches = []
        for index in by_size.get(value.nbytes, []):
            if set(users.get(index, [])) != {schema.TensorType.FLOAT32}:
                continue
            offset, nbytes = locations[index]
            stored = np.frombuffer(data, "<f4", value.size, offset)
            if np.allclose(stored, value.reshape(-1), rtol=1e-5, atol=tolerance):
                matches.append(index)
        if not matches:
            raise ValueError(
                f"{source}: the folded tensor {name!r} {value.shape} is in no constant buffer "
                "of the converted model (the converter fused it with another op), so it "
                "cannot be patched per domain."
            )
        for index in matches:
            if index in owner:
                raise ValueError(
                    f"{source}: the converter shares one buffer ({index}) between the patched "
                    f"tensors {owner[index]!r} and {name!r}; they cannot be patched apart."
                )
            owner[index] = name
        found[name] = Patch(name, tuple(locations[i][0] for i in matches), value.nbytes,
                            tuple(value.shape))
    return found


def patch(data, values, patches):
    """`data` (template bytes) with each `values[name]` written at its patch offsets.

    Returns new `bytes`, built in one pass (the interpreter takes `bytes`, not a bytearray).
    """
    pieces = []
    for name, entry in patches.items():
        raw = np.ascontiguousarray(values[name], dtype="<f4").tobytes()
        if len(raw) != entry.nbytes:
            raise ValueError(
                f"Patch {name!r} must be {entry.nbytes} bytes (shape {entry.shape}). "
                f"Received: {len(raw)} bytes"
            )
        pieces += [(offset, raw) for offset in entry.offsets]
    out, position = [], 0
    view = memoryview(data)
    for offset, raw in sorted(pieces, key=lambda piece: piece[0]):
        out += [view[position:offset], raw]
        position = offset + len(raw)
    out.append(view[position:])
    return b"".join(out)


def read_buffers(data, patches):
    """dict name -> float32 array: the current contents of the patched buffers of `data`."""
    return {
        name: np.frombuffer(data, "<f4", int(np.prod(entry.shape, dtype=np.int64)),
                            entry.offsets[0]).reshape(entry.shape).copy()
        for name, entry in patches.items()
    }


def encode_patches(patches, template):
    """The JSON bytes of `fold.tflite`'s patch table (the template's SHA-256 included)."""
    return json.dumps({
        "template_sha256": hashlib.sha256(template).hexdigest(),
        "patches": [{"name": p.name, "offsets": list(p.offsets), "nbytes": p.nbytes,
                     "shape": list(p.shape), "dtype": p.dtype} for p in patches.values()],
    }).encode("utf-8")


def decode_patches(raw, source="fold.tflite"):
    """`(patches, template_sha256)` from the patch table bytes; raises naming `source`."""
    try:
        table = json.loads(raw.decode("utf-8"))
        patches = {
            entry["name"]: Patch(str(entry["name"]), tuple(int(o) for o in entry["offsets"]),
                                 int(entry["nbytes"]), tuple(int(d) for d in entry["shape"]),
                                 str(entry["dtype"]))
            for entry in table["patches"]
        }
        return patches, str(table["template_sha256"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{source} has a malformed patch table: {error}") from error


# === Export ===


def export_fold_on_switch_tflite(model, directory, domains=None, pack_dtype="float32",
                                 domain_names=None, plan=None, write_packs=True, verify=True):
    """Writes `template.tflite`, `fold.tflite` and a pack `domain_<d>.mdnpack` per domain.

    The fast swappable layout: the template is a folded network (the base network's ops and
    speed) whose per-domain constants are rewritten on a domain switch from the domain's pack
    by `fold.tflite` (see this module's docstring). Float32 only.

    Args:
        model: functional multi-domain model.
        directory: output directory.
        domains: domains to write packs for (and to verify). Defaults to all.
        pack_dtype: `"float32"`, `"float16"` or `"int8"`: storage of the pack matrices.
        domain_names: optional list of names, one per domain of the model.
        plan: an optional `SwappablePlan` of `model`. Defaults to `SwappablePlan(model)`.
        write_packs: write the packs (the swappable layout's packs serve this one too).
            Defaults to `True`.
        verify: check that refolding each exported domain gives `fold_domain`'s folded
            weights (within 1e-5 of their scale). Defaults to `True`.

    Returns:
        dict with `"template"`, `"fold"` (paths), `"packs"` (domain -> path) and
        `"model_id"` (hex).
    """
    import tensorflow as tf

    from keras_mdn.export import tflite
    from keras_mdn.export.savedmodel import check_domains, input_spec, write_endpoints
    from keras_mdn.export.swappable import SwappablePlan

    plan = plan or SwappablePlan(model)
    domains = check_domains(domains, plan.num_domains)
    names = tflite.check_domain_names(domain_names, plan.num_domains)
    template_plan = TemplatePlan(plan)
    probe = template_plan.folded
    rng = np.random.default_rng(0)
    expected = {}
    for refold in template_plan.refolds:
        expected.update(_randomize(probe.get_layer(refold.name), refold, rng))
    name, spec = input_spec(plan.graph)
    folded = probe

    def serve(image):
        return folded(image, training=False)

    saved = write_endpoints({TEMPLATE_SIGNATURE: (serve, [spec])})
    data = tflite.convert_saved_model(saved, [TEMPLATE_SIGNATURE])
    data = tflite.add_metadata(data, tflite.MODEL_ID_METADATA,
                               plan.model_id.hex().encode("ascii"))
    patches = locate(data, expected)
    reference = template_plan.reference_values()
    template = patch(data, reference, patches)

    current_specs = {
        key: tf.TensorSpec(patches[key].shape, tf.float32, name=TEMPLATE_INPUT + key)
        for key in template_plan.names()
    }
    pack_specs = {key: tf.TensorSpec(shape, tf.float32, name=key)
                  for key, shape in plan.specs.items()}

    def fold(inputs):
        current = {key: inputs[TEMPLATE_INPUT + key] for key in current_specs}
        deltas = {key: inputs[key] for key in pack_specs}
        return template_plan.refold(current, deltas)

    signature = {TEMPLATE_INPUT + key: s for key, s in current_specs.items()}
    signature.update(pack_specs)
    saved = write_endpoints({FOLD_SIGNATURE: (fold, [signature])})
    fold_data = tflite.convert_saved_model(saved, [FOLD_SIGNATURE])
    fold_data = tflite.add_metadata(fold_data, tflite.MODEL_ID_METADATA,
                                    plan.model_id.hex().encode("ascii"))
    fold_data = tflite.add_metadata(fold_data, PATCHES_METADATA,
                                    encode_patches(patches, template))
    if verify:
        _verify(template_plan, fold_data, reference, domains)
    os.makedirs(directory, exist_ok=True)
    template_path = tflite.write(os.path.join(directory, "template.tflite"), template)
    fold_path = tflite.write(os.path.join(directory, "fold.tflite"), fold_data)
    pack_paths = (tflite.write_domain_packs(plan, directory, domains, names, pack_dtype)
                  if write_packs else {})
    return {"template": template_path, "fold": fold_path, "packs": pack_paths,
            "model_id": plan.model_id.hex()}


def _randomize(layer, refold, rng):
    """Gives the patched weights of a probe layer unique random values; returns them in the
    template's layout (what the converter must store verbatim, or a batch norm's scale and
    offset)."""
    weights = [np.asarray(w) for w in layer.get_weights()]
    if refold.kind == "affine":
        epsilon = layer.epsilon
        gamma = rng.uniform(0.5, 1.5, layer.gamma.shape) if layer.gamma is not None else 1.0
        beta = rng.normal(size=layer.beta.shape) if layer.beta is not None else 0.0
        mean = rng.normal(size=layer.moving_mean.shape)
        variance = rng.uniform(0.5, 2.0, layer.moving_variance.shape)
        values = ([gamma] if layer.gamma is not None else []) + (
            [beta] if layer.beta is not None else []) + [mean, variance]
        layer.set_weights([np.asarray(v, "float32") for v in values])
        scale = np.asarray(gamma, "float64") / np.sqrt(variance + epsilon)
        offset = np.asarray(beta, "float64") - mean * scale
        return {f"{refold.name}__scale": scale.astype("float32"),
                f"{refold.name}__offset": offset.astype("float32")}
    out = {}
    for index, part in enumerate(("kernel", "bias")):
        if part in refold.parts:
            weights[index] = rng.normal(size=weights[index].shape).astype("float32")
            out[f"{refold.name}__{part}"] = to_tflite(weights[index], refold, part)
    layer.set_weights(weights)
    return out


def _verify(template_plan, fold_data, reference, domains):
    """Refolds each domain with `fold.tflite` and compares with `fold_domain`'s weights."""
    from ai_edge_litert.interpreter import Interpreter

    from keras_mdn.surgery.fold import fold_domain

    plan = template_plan.plan
    runner = Interpreter(model_content=fold_data).get_signature_runner(FOLD_SIGNATURE)
    current = {TEMPLATE_INPUT + key: value for key, value in reference.items()}
    for domain in domains:
        outputs = runner(**current, **plan.pack_tensors(domain))
        folded = fold_domain(plan.model, domain, factorized="reconstruct")
        for refold in template_plan.refolds:
            tensors = plan.domain_tensors_of(refold.unit, domain)
            for part in refold.parts:
                if refold.kind == "linear":
                    value = _numpy(getattr(folded.get_layer(refold.name), part))
                else:
                    value = tensors[part]
                want = to_tflite(value, refold, part)
                got = outputs[f"{refold.name}__{part}"]
                error = float(np.max(np.abs(got - want))) if want.size else 0.0
                if error > 1e-5 * max(1.0, float(np.max(np.abs(want)))):
                    raise ValueError(
                        f"Refolding domain {domain} gives {refold.name}.{part} off by {error:.3g} "
                        "from fold_domain's: the fold-on-switch export does not match this "
                        "model's fold."
                    )


def pack_inputs(signature_inputs):
    """The pack tensors among `fold.tflite`'s inputs (the rest are template buffers)."""
    return {k: v for k, v in signature_inputs.items() if not k.startswith(TEMPLATE_INPUT)}


__all__ = ["TemplatePlan", "export_fold_on_switch_tflite"]
