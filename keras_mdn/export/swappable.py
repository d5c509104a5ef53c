"""The swappable form of a multi-domain model: per-domain parameters as runtime inputs.

`SwappablePlan(model)` reads the functional graph once and decides, for every layer that reads
the domain, which tensors a domain pack holds and how the base model uses them:

- parallel `ResidualAdapter` (+ the `DomainBatchNormalization` that only it feeds, when the
  wrapped layer has no activation): `conv(x, W) * scale + x_tap @ adapter + offset`, with
  `adapter = A_t * scale` (`(C_in, C_out)`, or the low-rank `gamma_t * scale` `(r, C_out)`
  after the shared projection); the BN is merged into the pack, not computed at run time;
- series `ResidualAdapter` (+ its BN): full rank `y @ adapter + offset` with
  `adapter = (I + diag(a) A_t) * scale` (the series fold of `keras_mdn.ops.folding`); low rank
  `y * scale + ((y * norm_scale + norm_offset) @ P) @ adapter + offset`;
- any other `DomainBatchNormalization`: `x * scale + offset`;
- `DomainHead`: `x @ kernel + bias`, kernel and bias zero-padded to `max(num_classes)`; the
  first `num_classes[domain]` logits equal the Keras model's (the rest are 0, see
  `keras_mdn.export.packs`).

Every other layer runs with its own (shared) weights, which become constants of the base
model. The pointwise products with a runtime matrix lower to TFLite `BATCH_MATMUL`, which
XNNPACK runs in float32.
"""

import json

import keras
import numpy as np
from keras import ops

from keras_mdn.export import packs
from keras_mdn.layers.domain_batch_normalization import DomainBatchNormalization
from keras_mdn.layers.domain_head import DomainHead
from keras_mdn.layers.residual_adapter import ResidualAdapter
from keras_mdn.ops import folding
from keras_mdn.surgery.fold import (
    FACTORIZED_LAYERS,
    FunctionalGraph,
    _accepts_training,
    _tensor_keys,
)

SEPARATOR = "__"


class SwappablePlan:
    """Which parameters of a multi-domain model are swapped at run time, and how.

    Args:
        model: functional multi-domain model (inputs `"image"`/`"features"` and `"domain"`).

    Attributes:
        graph: the model's `FunctionalGraph`.
        num_domains: int.
        input_name: name of the (non-domain) input.
    """

    def __init__(self, model, reference_domain=0):
        self.model = model
        self.graph = graph = FunctionalGraph(model)
        self.num_domains = graph.num_domains
        inputs = [i for i in graph.inputs if i[0] != graph.domain_input]
        if len(inputs) != 1:
            raise ValueError(
                "The swappable export needs one non-domain input. Received: inputs "
                f"{[i[0] for i in inputs]}"
            )
        self.input_name, _, self.input_dtype, self.input_shape = inputs[0]
        domain_key = None
        for name, key, _, _ in graph.inputs:
            if name == graph.domain_input:
                domain_key = key + (0,)
        self.units = {}
        self.absorbed = {}
        for op, name, args, kwargs, key in graph.nodes:
            reads = _reads_key((args, kwargs), domain_key)
            if not reads:
                continue
            if key in self.absorbed:
                continue
            if isinstance(op, ResidualAdapter):
                if op.is_conv is False and isinstance(op.layer, keras.layers.EinsumDense):
                    raise ValueError(
                        f"The swappable export does not support layer {op.name!r} "
                        "(ResidualAdapter on an EinsumDense)."
                    )
                norm = self._only_norm_consumer(op, key, domain_key)
                if norm is not None:
                    self.absorbed[norm[1]] = name
                self.units[key] = ("adapter", op, name, None if norm is None else norm[0])
            elif isinstance(op, DomainBatchNormalization):
                self.units[key] = ("affine", op, name, None)
            elif isinstance(op, DomainHead):
                self.units[key] = ("head", op, name, None)
            elif isinstance(op, FACTORIZED_LAYERS):
                raise ValueError(
                    f"The swappable export does not support factorised layer {op.name!r} "
                    f"({type(op).__name__}): export it with the folded or multi-signature "
                    "layouts (each task's weights as constants)."
                )
            else:
                raise ValueError(
                    f"The swappable export does not know layer {op.name!r} "
                    f"({type(op).__name__}): it reads the domain input. Supported domain "
                    "layers: ResidualAdapter, DomainBatchNormalization, DomainHead."
                )
        if isinstance(reference_domain, bool) or not isinstance(reference_domain, int) or not (
            0 <= reference_domain < self.num_domains
        ):
            raise ValueError(
                f"`reference_domain` must be an int in [0, {self.num_domains}). "
                f"Received: reference_domain={reference_domain!r}"
            )
        self.reference_domain = reference_domain
        self._reference = None
        self.specs = {name: value.shape for name, value in self.reference_tensors().items()}
        self.model_id = packs.model_digest(self._architecture(), self._shared_weights())

    def _only_norm_consumer(self, op, key, domain_key):
        """The domain BN that is the only reader of the adapter's output, if it can merge."""
        out = key + (0,)
        readers = self.graph.consumers.get(out, [])
        if len(readers) != 1 or self.graph.uses.get(out) != 1:
            return None
        consumer = self.graph.nodes[readers[0]]
        if not isinstance(consumer[0], DomainBatchNormalization):
            return None
        if not _reads_key((consumer[2], consumer[3]), domain_key):
            return None
        if op.mode == "parallel" and op.layer.activation not in (None, keras.activations.linear):
            return None
        return consumer[0], consumer[4]

    # === Pack contents ===

    def domain_tensors(self, domain, adapters=True):
        """dict name -> float32 array: the values of the swapped tensors for `domain`.

        With `adapters=False` the adapters of `domain` count as zero: the base network with
        the domain's batch norms and head.
        """
        if isinstance(domain, bool) or not isinstance(domain, (int, np.integer)):
            raise TypeError(f"`domain` must be an int. Received: domain={domain!r}")
        if not 0 <= int(domain) < self.num_domains:
            raise ValueError(
                f"`domain` must be in [0, {self.num_domains}). Received: domain={domain}"
            )
        domain = int(domain)
        tensors = {}
        for kind, op, name, norm in self.units.values():
            if kind == "adapter":
                values = self._adapter_tensors(op, norm, domain, adapters)
            elif kind == "affine":
                scale, offset = op.affine(domain)
                values = {"scale": scale, "offset": offset}
            else:
                values = self._head_tensors(op, domain)
            for part, value in values.items():
                tensors[f"{name}{SEPARATOR}{part}"] = np.asarray(
                    ops.convert_to_numpy(value), dtype="float32"
                )
        return tensors

    def reference_tensors(self):
        """The values an all-zero pack stands for: domain `reference_domain` without adapters."""
        if self._reference is None:
            self._reference = self.domain_tensors(self.reference_domain, adapters=False)
        return self._reference

    def pack_tensors(self, domain):
        """dict name -> float32 array: what `domain`'s pack holds, `domain_tensors - reference`.

        Adapter matrices have reference 0, so they are stored as they are; an all-zero pack
        gives the base network (no adapters) with the reference domain's batch norms and head.
        """
        reference = self.reference_tensors()
        return {name: value - reference[name]
                for name, value in self.domain_tensors(domain).items()}

    def _adapter_tensors(self, op, norm, domain, adapters=True):
        """The unit's tensors (matrices `(in, out)`)."""
        kernel = ops.convert_to_numpy(op.adapter_kernel[domain])
        if not adapters:
            kernel = np.zeros_like(kernel)
        channels = kernel.shape[-1]
        if norm is None:
            scale, offset = np.ones((channels,), "float32"), np.zeros((channels,), "float32")
        else:
            scale, offset = norm.affine(domain)
        if op.mode == "parallel":
            adapter, offset = folding.fold_affine(kernel, None, scale, offset)
            return {"adapter": adapter, "scale": scale, "offset": offset}
        norm_scale, norm_offset = op.adapter_norm.affine(domain)
        if op.rank is None:
            # z = (y + (y * a + b) A) * s + t = y * s + y (diag(a) A diag(s)) + (b A s + t)
            adapter = ops.expand_dims(norm_scale, -1) * kernel
            bias = ops.matmul(ops.expand_dims(norm_offset, 0), kernel)[0]
            adapter, offset = folding.fold_affine(adapter, bias, scale, offset)
            return {"adapter": adapter, "scale": scale, "offset": offset}
        adapter, offset = folding.fold_affine(kernel, None, scale, offset)
        return {
            "norm_scale": norm_scale,
            "norm_offset": norm_offset,
            "adapter": adapter,
            "scale": scale,
            "offset": offset,
        }

    def _head_tensors(self, op, domain):
        kernel, bias = op.domain_weights(domain)
        kernel = ops.convert_to_numpy(kernel)
        n = kernel.shape[1]
        padded = np.zeros((kernel.shape[0], op.max_classes), "float32")
        padded[:, :n] = kernel
        padded_bias = np.zeros((op.max_classes,), "float32")
        if bias is not None:
            padded_bias[:n] = ops.convert_to_numpy(bias)
        return {"kernel": padded, "bias": padded_bias}

    def num_classes(self, domain):
        """Number of valid logits of `domain` (0 when the model has no `DomainHead`)."""
        heads = [unit[1] for unit in self.units.values() if unit[0] == "head"]
        return heads[0].num_classes[domain] if len(heads) == 1 else 0

    # === Runtime graph ===

    def call(self, inputs, params):
        """The model's output for a batch `inputs` with the domain's `params` (name -> tensor)."""

        def handler(op, name, args, kwargs, key):
            if key in self.absorbed:
                return args[0]
            unit = self.units.get(key)
            if unit is None:
                if isinstance(op, keras.layers.Layer) and _accepts_training(op):
                    kwargs = {**kwargs, "training": False}
                return op(*args, **kwargs)
            kind, op, name, norm = unit

            def p(part):
                return params[f"{name}{SEPARATOR}{part}"]

            x = args[0]
            if kind == "affine":
                return x * p("scale") + p("offset")
            if kind == "head":
                return _pointwise(x, p("kernel")) + p("bias")
            return self._adapter_call(op, x, p)

        values = {self.input_name: inputs}
        if self.graph.domain_input is not None:
            values[self.graph.domain_input] = None  # read only by the swapped layers
        return self.graph.run(values, handler)

    def _adapter_call(self, op, x, p):
        layer = op.layer
        if op.mode == "parallel":
            base = _pre_activation(layer, x)
            x_tap = op.tap_input(x)
            if op.adapter_projection is not None:
                x_tap = _pointwise(x_tap, op.adapter_projection)
            outputs = base * p("scale") + _pointwise(x_tap, p("adapter")) + p("offset")
            activation = layer.activation
            if activation not in (None, keras.activations.linear):
                outputs = activation(outputs)
            return outputs
        y = _pre_activation(layer, x)
        if layer.activation not in (None, keras.activations.linear):
            y = layer.activation(y)
        if op.rank is None:
            return y * p("scale") + _pointwise(y, p("adapter")) + p("offset")
        hidden = _pointwise(y * p("norm_scale") + p("norm_offset"),
                            op.adapter_projection)
        return y * p("scale") + _pointwise(hidden, p("adapter")) + p("offset")

    # === Identity ===

    def _architecture(self):
        spec = [(name, list(shape)) for name, shape in self.specs.items()]
        config = json.dumps(self.model.get_config(), sort_keys=True, default=str)
        return json.dumps({"format": packs.FORMAT_VERSION, "inputs": spec, "model": config,
                           "reference_domain": self.reference_domain})

    def _shared_weights(self):
        # The reference values are constants of the base model: packs are deltas from them.
        for name, value in self.reference_tensors().items():
            yield f"reference/{name}", value
        for op in self.model.operations:
            if isinstance(op, ResidualAdapter):
                weights = list(op.layer.weights)
                if op.adapter_projection is not None:
                    weights.append(op.adapter_projection)
            elif isinstance(op, (DomainBatchNormalization, DomainHead)):
                continue
            else:
                weights = getattr(op, "weights", [])
            for weight in weights:
                yield f"{op.name}/{weight.path}", ops.convert_to_numpy(weight)


def _reads_key(structure, key):
    return key is not None and key in _tensor_keys(structure)


def _pointwise(x, matrix):
    """`x @ matrix` on the channel axis, `matrix` `(in, out)`: one TFLite BATCH_MATMUL.

    XNNPACK runs BATCH_MATMUL with a runtime float32 right-hand side; a CONV_2D only with a
    constant filter, and (in LiteRT 2.x) FULLY_CONNECTED only with a constant one too.
    """
    letters = "abcdefgh"[: len(x.shape) - 1]
    return ops.einsum(f"{letters}i,io->{letters}o", x, matrix)


def _pre_activation(layer, x):
    """The wrapped conv/dense output before its activation."""
    if isinstance(layer, keras.layers.Dense):
        outputs = ops.matmul(x, layer.kernel)
    else:
        if layer.padding == "causal":
            raise ValueError(
                f"The swappable export does not support causal padding (layer {layer.name!r})."
            )
        outputs = ops.conv(x, layer.kernel, layer.strides, layer.padding,
                           dilation_rate=layer.dilation_rate)
    if layer.bias is not None:
        outputs = outputs + layer.bias
    return outputs
