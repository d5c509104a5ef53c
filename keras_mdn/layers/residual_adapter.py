import math

import keras
import numpy as np
from keras import ops

from keras_mdn.api import register
from keras_mdn.layers.domain_batch_normalization import (
    DomainBatchNormalization,
    check_epsilon,
    check_momentum,
)
from keras_mdn.layers.domain_layer import (
    DomainLayer,
    DomainVariable,
    as_float32,
    build_input_shape,
    built_layer,
    check_affine,
    check_domain,
)
from keras_mdn.ops import folding, routing

MODES = ("parallel", "series")
_CONV_TYPES = (keras.layers.Conv1D, keras.layers.Conv2D)
_DENSE_TYPES = (keras.layers.Dense, keras.layers.EinsumDense)


@register
class ResidualAdapter(keras.layers.Layer, DomainLayer):
    """A shared convolution or projection adapted to each domain by a residual 1x1 adapter.

    Wraps a `keras.layers.Conv2D` (or `Conv1D`, `Dense`, `EinsumDense`) whose weights are shared
    by all domains and adds, per domain `t`, a linear adapter `alpha_t`:

    - `mode="parallel"`: `act(f(x) + alpha_t(x))`. The adapter is a 1x1 convolution on the same
      input with the same stride, reading the input position of one kernel tap (the centre tap
      for odd kernels; this matches the paper's symmetric padding, and stays exact under
      Keras' asymmetric `"same"` padding with stride 2), so it folds into that tap exactly.
    - `mode="series"`: `y + alpha_t(BN'_t(y))` with `y = act(f(x))`, as in the authors' code
      (a per-domain batch norm before the 1x1 adapter).

    The per-domain batch norm that follows a conv in the reference network is a separate
    `DomainBatchNormalization` layer. Adapter kernels start at zero, so a new domain starts as
    the base network. With `rank=r` the adapters are low-rank: a projection `beta`
    `(C_in, r)` shared by all domains and per-domain `gamma_t` `(r, C_out)`, the compressed
    form of cross-domain SVD compression.

    Args:
        layer: the shared `keras.layers.Conv2D`, `Conv1D`, `Dense` or `EinsumDense` to wrap
            (built or not; pretrained weights are kept). Channels-last only.
        num_domains: int, number of domains.
        mode: `"parallel"` or `"series"`. Defaults to `"parallel"`.
        rank: optional int, rank of low-rank adapters, at most the adapter's input channels
            (the rank of all domains' adapters stacked side by side).
            Defaults to `None` (full 1x1 adapters).
        adapter_initializer: initializer of the per-domain adapter kernels. Defaults to
            `"zeros"`.
        projection_initializer: initializer of the shared projection when `rank` is set.
            Defaults to `"orthogonal"`.
        adapter_regularizer: regularizer of the per-domain adapter kernels (the paper gives
            adapters their own weight decay). Defaults to `None`.
        freeze_base: bool, make the wrapped layer non-trainable. Defaults to `False`.
        norm_epsilon: float, epsilon of the series adapter's batch norm. Defaults to `1e-5`
            (the authors' setting, PyTorch's default).
        norm_momentum: float, momentum of the series adapter's batch norm moving averages,
            in Keras terms (`moving = momentum * moving + (1 - momentum) * batch`).
            Defaults to `0.9` (the authors' PyTorch momentum 0.1).
        dropout: float in `[0, 1)`, rate of channel-wise (spatial) dropout on the parallel
            adapter's input only, in training: the shared layer sees the undropped input, as
            in the authors' code (`F.dropout2d` before `parallel_conv`). Each example drops
            whole channels (the same ones at every position), the rest scaled by
            `1 / (1 - dropout)`, like `keras.layers.SpatialDropout2D`. Parallel mode only.
            Defaults to `0.0`.
        seed: optional int, seed of the dropout. Defaults to `None`.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: the wrapped layer's input.
        domain: Python int, 0-d int tensor, or int tensor of shape `(batch,)`.
        training: Python bool (used by the series adapter's batch norm).

    Input shape:
        That of the wrapped layer, e.g. `(batch, height, width, channels)` for `Conv2D`.

    Output shape:
        That of the wrapped layer.

    Example:

    >>> conv = keras.layers.Conv2D(64, 3, padding="same", use_bias=False)
    >>> adapted = ResidualAdapter(conv, num_domains=10, mode="parallel")
    >>> y = adapted(np.ones((2, 32, 32, 16)), domain=3)

    Reference:
        Rebuffi, Bilen, Vedaldi, "Efficient parametrization of multi-domain deep neural
        networks", CVPR 2018. https://arxiv.org/abs/1803.10082
    """

    def __init__(
        self,
        layer,
        num_domains,
        mode="parallel",
        rank=None,
        adapter_initializer="zeros",
        projection_initializer="orthogonal",
        adapter_regularizer=None,
        freeze_base=False,
        norm_epsilon=1e-5,
        norm_momentum=0.9,
        dropout=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, _CONV_TYPES + _DENSE_TYPES):
            raise TypeError(
                "`layer` must be a keras.layers.Conv1D, Conv2D, Dense or EinsumDense. "
                f"Received: layer={layer!r}"
            )
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ValueError(
                "ResidualAdapter supports channels_last layers only. "
                f"Received: layer with data_format={layer.data_format!r}"
            )
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"`rank` must be a positive int or None. Received: rank={rank!r}")
        self.layer = layer
        self.num_domains = routing.check_num_domains(num_domains)
        self.mode = mode
        self.rank = rank
        self.adapter_initializer = keras.initializers.get(adapter_initializer)
        self.projection_initializer = keras.initializers.get(projection_initializer)
        self.adapter_regularizer = keras.regularizers.get(adapter_regularizer)
        if freeze_base:
            self.layer.trainable = False
        self.is_conv = isinstance(layer, _CONV_TYPES)
        self.norm_epsilon = check_epsilon(norm_epsilon, "norm_epsilon")
        self.norm_momentum = check_momentum(norm_momentum, "norm_momentum")
        self.dropout = _check_dropout(dropout)
        if self.dropout and mode != "parallel":
            raise ValueError(
                "`dropout` applies to the parallel adapter's input only (the authors' code: no "
                f"effect in series mode). Received: dropout={dropout!r} with mode={mode!r}"
            )
        self.seed = seed
        # Only with dropout: a rate-0 layer keeps exactly its variables of before.
        self.seed_generator = keras.random.SeedGenerator(seed) if self.dropout else None
        self.adapter_norm = (
            DomainBatchNormalization(
                self.num_domains,
                momentum=self.norm_momentum,
                epsilon=self.norm_epsilon,
                name="adapter_norm",
                dtype=self.dtype_policy,
            )
            if mode == "series"
            else None
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        expected_rank = self.layer.rank + 2 if self.is_conv else None
        if expected_rank is not None and len(input_shape) != expected_rank:
            raise ValueError(
                f"ResidualAdapter wrapping {type(self.layer).__name__} expects inputs of rank "
                f"{expected_rank}. Received: input_shape={input_shape}"
            )
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                "ResidualAdapter expects inputs of rank >= 2 with known channels. "
                f"Received: input_shape={input_shape}"
            )
        if not self.layer.built:
            self.layer.build(input_shape)
        output_shape = tuple(self.layer.compute_output_shape(input_shape))
        out_channels = output_shape[-1]
        if self.mode == "parallel":
            in_channels = input_shape[-1]
            if not self.is_conv and tuple(output_shape[:-1]) != input_shape[:-1]:
                raise ValueError(
                    "A parallel adapter on an EinsumDense needs the output to differ from the "
                    "input in the last axis only. "
                    f"Received: input_shape={input_shape}, output_shape={output_shape}"
                )
            self.tap, self._slices = (
                _adapter_tap(self.layer, input_shape) if self.is_conv else ((), None)
            )
        else:
            in_channels = out_channels
            self.tap, self._slices = (), None
            self.adapter_norm.build(output_shape)
        self.input_spec = _input_spec(self, input_shape)
        # The adapters of all domains stacked side by side, (C_in, T * C_out), have rank at
        # most C_in: a shared projection wider than the input holds nothing more.
        if self.rank is not None and self.rank > in_channels:
            raise ValueError(
                f"`rank` must be at most the adapter's input channels, {in_channels}, for "
                f"this layer. Received: rank={self.rank}"
            )
        self.adapter_projection = None
        if self.rank is not None:
            self.adapter_projection = self.add_weight(
                name="adapter_projection",
                shape=(in_channels, self.rank),
                initializer=self.projection_initializer,
            )
        self.adapter_kernel = self.add_weight(
            name="adapter_kernel",
            shape=(self.num_domains, self.rank or in_channels, out_channels),
            initializer=self.adapter_initializer,
            regularizer=self.adapter_regularizer,
        )

    def call(self, inputs, domain, training=None):
        domain = routing.canonicalize_domain(domain, self.num_domains)
        routing.check_batch(domain, inputs)
        if self.mode == "parallel":
            dropping = bool(training) and self.dropout > 0
            if training and not dropping and routing.is_uniform(domain) and self._merges_uniform():
                # Training on one domain: its adapter merged into the kernel tap it reads, one
                # conv instead of two (exact up to rounding: both are linear). Not at
                # inference: a traced per-domain endpoint keeps the shared kernel as is, so a
                # multi-signature export stores it once (`fold` merges for deployment).
                adapter = routing.gather_domain(self.adapter_kernel, domain)
                if self.adapter_projection is not None:
                    adapter = ops.matmul(self.adapter_projection, adapter)
                kernel = folding.fold_parallel(self.layer.kernel, adapter, self.tap)
                return self._activation(self._base_linear(inputs, kernel))
            taps = self.tap_input(inputs)
            if dropping:
                taps = self._drop_channels(taps)
            outputs = self._base_linear(inputs) + self._adapt(taps, domain)
            return self._activation(outputs)
        outputs = self._activation(self._base_linear(inputs))
        normalized = self.adapter_norm(outputs, domain=domain, training=training)
        return outputs + self._adapt(normalized, domain)

    def _drop_channels(self, inputs):
        """Spatial dropout: whole channels of each example, `(batch, 1, ..., 1, channels)`."""
        shape = ops.shape(inputs)
        noise_shape = (shape[0],) + (1,) * (len(inputs.shape) - 2) + (shape[-1],)
        return keras.random.dropout(
            inputs, self.dropout, noise_shape=noise_shape, seed=self.seed_generator
        )

    def _adapt(self, inputs, domain):
        if self.adapter_projection is not None:
            # Shared down-projection once for the whole batch, then the per-domain gamma.
            inputs = self._pointwise(self.adapter_projection, inputs=inputs)

        # The domain's form decides the path while tracing (no run-time cond: XLA).
        if routing.is_uniform(domain):
            return self._pointwise(routing.gather_domain(self.adapter_kernel, domain), inputs)
        # Per-example kernels as one batched GEMM: (B, positions, in) @ (B, in, out).
        # (An einsum with an ellipsis here runs about 7x slower on TensorFlow's CPU.)
        selection = routing.select(domain, self.num_domains, inputs)
        spatial = tuple(inputs.shape[1:-1])
        if any(size is None for size in spatial):
            spatial = tuple(ops.shape(inputs)[1:-1])
        flat = ops.reshape(inputs, (-1, math.prod(spatial) if spatial else 1, inputs.shape[-1]))
        kernels = routing.read(self.adapter_kernel)
        outputs = routing.domain_matmul(flat, kernels, selection)
        return ops.reshape(outputs, (-1, *spatial, kernels.shape[-1]))

    def _pointwise(self, kernel, inputs):
        """`inputs @ kernel` on the channel axis: a 1x1 convolution for conv layers."""
        if self.is_conv:
            kernel = ops.reshape(kernel, (1,) * self.layer.rank + tuple(kernel.shape))
            return ops.conv(inputs, kernel, padding="valid")
        return ops.matmul(inputs, kernel)

    def tap_input(self, inputs):
        """The input positions a parallel adapter reads (its kernel tap at the conv's stride).

        Returns `inputs` itself, with no op, when that is the whole input (stride 1, "same").
        """
        if self._slices is None:
            return inputs
        return inputs[(slice(None),) + self._slices + (slice(None),)]

    def _delegated_tap_input(self, inputs):
        """`tap_input` as a unit-step slice and a 1x1 depthwise conv of ones at the stride.

        The same values; for TFLite, where XNNPACK does not take a STRIDED_SLICE with a step
        (the graph splits into several delegate partitions) but takes DEPTHWISE_CONV_2D.
        """
        if self._slices is None:
            return inputs
        steps = tuple(sl.step or 1 for sl in self._slices)
        unit = tuple(slice(sl.start, sl.stop) for sl in self._slices)
        inputs = inputs[(slice(None),) + unit + (slice(None),)]
        if all(step == 1 for step in steps):
            return inputs
        ones = ops.ones((1,) * len(steps) + (inputs.shape[-1], 1), dtype=inputs.dtype)
        return ops.depthwise_conv(inputs, ones, strides=steps, padding="valid")

    def _merges_uniform(self):
        return self.layer.quantization_mode is None and not isinstance(
            self.layer, keras.layers.EinsumDense
        )

    def _base_linear(self, inputs, kernel=None):
        """The wrapped layer's output before its activation (with `kernel` if given)."""
        layer = self.layer
        if layer.quantization_mode is not None:
            return self._quantized_linear(inputs)
        kernel = layer.kernel if kernel is None else kernel
        if self.is_conv:
            padding = layer.padding
            if padding == "causal":
                span = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
                inputs, padding = ops.pad(inputs, ((0, 0), (span, 0), (0, 0))), "valid"
            outputs = ops.conv(
                inputs, kernel, layer.strides, padding, dilation_rate=layer.dilation_rate
            )
        elif isinstance(layer, keras.layers.EinsumDense):
            outputs = ops.einsum(layer.equation, inputs, kernel)
        else:
            outputs = ops.matmul(inputs, kernel)
        if layer.bias is not None:
            outputs = outputs + layer.bias
        return outputs

    def _quantized_linear(self, inputs):
        """The quantized wrapped layer's own forward pass, before its activation.

        `model.quantize()` stores the wrapped layer's kernel quantized with its scales; only
        the layer's own quantized call reads them right.
        """
        layer, activation = self.layer, self.layer.activation
        layer.activation = None
        try:
            outputs = layer(inputs)
        finally:
            layer.activation = activation
        return ops.cast(outputs, self.compute_dtype)

    def _activation(self, outputs):
        activation = self.layer.activation
        return outputs if activation is None else activation(outputs)

    def adapter_matrix(self, domain):
        """The effective `(in_channels, out_channels)` adapter of one domain."""
        domain = routing.canonicalize_domain(domain, self.num_domains)
        return folding.adapter_matrix(self.adapter_kernel, domain, self.adapter_projection)

    def folded_kernel(self, domain):
        """`(kernel, bias)` of the wrapped layer with `domain`'s adapter merged in (inference).

        Applying the wrapped layer with these weights (same strides, padding, activation)
        gives this layer's inference output for `domain`. `bias` is `None` when the wrapped
        layer has none and the fold adds none.
        """
        if self.layer.quantization_mode is not None:
            raise ValueError(
                "Cannot fold an adapter into a quantized layer: fold the float model, then "
                "quantize the folded one. Received: layer with "
                f"quantization_mode={self.layer.quantization_mode!r}"
            )
        adapter = self.adapter_matrix(domain)
        kernel, bias = self.layer.kernel, self.layer.bias
        if isinstance(self.layer, keras.layers.EinsumDense):
            raise NotImplementedError("Folding an adapter into an EinsumDense is not supported.")
        if self.mode == "parallel":
            return folding.fold_parallel(kernel, adapter, self.tap), bias
        if self.layer.activation not in (None, keras.activations.linear):
            raise ValueError(
                "A series adapter folds only into a layer without activation. Received: "
                f"activation={keras.activations.serialize(self.layer.activation)!r}"
            )
        scale, offset = self.adapter_norm.affine(domain)
        return folding.fold_series(kernel, bias, adapter, scale, offset)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "layer": keras.saving.serialize_keras_object(self.layer),
            "num_domains": self.num_domains,
            "mode": self.mode,
            "rank": self.rank,
            "adapter_initializer": keras.initializers.serialize(self.adapter_initializer),
            "projection_initializer": keras.initializers.serialize(
                self.projection_initializer
            ),
            "adapter_regularizer": keras.regularizers.serialize(self.adapter_regularizer),
            "norm_epsilon": self.norm_epsilon,
            "norm_momentum": self.norm_momentum,
            "dropout": self.dropout,
            "seed": self.seed,
        }

    # === Domain-layer interface (keras_mdn.layers.domain_layer) ===

    def domain_variables(self):
        entries = [DomainVariable.shared_weight(v) for v in self.layer.weights]
        if self.adapter_norm is not None:
            entries += self.adapter_norm.domain_variables()
        if self.adapter_projection is not None:
            entries.append(DomainVariable.shared_weight(self.adapter_projection))
        entries.append(DomainVariable.rows(self.adapter_kernel, self.num_domains))
        return entries

    def fold(self, domain):
        domain = check_domain(domain, self.num_domains)
        try:
            kernel, bias = self.folded_kernel(domain)
        except (NotImplementedError, ValueError) as error:
            raise ValueError(
                f"Cannot fold layer {self.name!r} (ResidualAdapter wrapping "
                f"{type(self.layer).__name__}): {error}"
            ) from error
        config = {**self.layer.get_config(), "name": self.name, "use_bias": bias is not None}
        if self.mode == "series":
            config["activation"] = None
        weights = [kernel] if bias is None else [kernel, bias]
        return [built_layer(type(self.layer), config, build_input_shape(self), weights)]

    def merges_affine(self):
        return self.mode == "series" or self.layer.activation in (
            None, keras.activations.linear
        )

    def swappable_tensors(self, domain, affine=None):
        """The domain's adapter, with a following affine map merged in.

        - parallel: `adapter` (`(C_in, C_out)`, low rank `(rank, C_out)` after the shared
          projection) and, with `affine`, `scale` and `offset`: the output is
          `act(f(x) * scale + tap(x) @ adapter + offset)`, the adapter scaled by `scale`;
        - series, full rank: `adapter = (I + diag(a) A) * scale` and `offset`, the output
          `act(f(x)) @ adapter + offset`;
        - series, low rank: `norm_scale`, `norm_offset`, `adapter`, `scale`, `offset`:
          `y * scale + ((y * norm_scale + norm_offset) @ P) @ adapter + offset`.
        """
        domain = check_domain(domain, self.num_domains)
        affine = check_affine(self, affine)
        kernel = self.adapter_kernel[domain]
        channels = self.adapter_kernel.shape[-1]
        scale, offset = affine or (np.ones((channels,), "float32"),
                                   np.zeros((channels,), "float32"))
        if self.mode == "parallel":
            adapter, offset = folding.fold_affine(kernel, None, scale, offset)
            tensors = {"adapter": adapter}
            if affine is not None:
                tensors.update(scale=scale, offset=offset)
        else:
            norm_scale, norm_offset = self.adapter_norm.affine(domain)
            if self.rank is None:
                identity = np.eye(channels, dtype="float32")
                mixing, bias = folding.fold_series(identity, None, kernel, norm_scale,
                                                   norm_offset)
                adapter, offset = folding.fold_affine(mixing, bias, scale, offset)
                tensors = {"adapter": adapter, "offset": offset}
            else:
                adapter, offset = folding.fold_affine(kernel, None, scale, offset)
                tensors = {"norm_scale": norm_scale, "norm_offset": norm_offset,
                           "adapter": adapter, "scale": scale, "offset": offset}
        return {name: as_float32(value) for name, value in tensors.items()}

    def fold_terms(self, tensors, projection=None):
        parts = set(tensors)
        if projection is None and self.adapter_projection is not None:
            projection = ops.convert_to_numpy(self.adapter_projection)
        if self.mode == "parallel" and "adapter" in parts and parts <= {
            "adapter", "scale", "offset"
        }:
            return folding.FoldTerms(tensors.get("scale"), False, tensors["adapter"],
                                     tuple(self.tap), tensors.get("offset"), projection)
        if self.mode == "series" and parts == {"adapter", "offset"}:
            return folding.FoldTerms(tensors["adapter"], True, None, (), tensors["offset"])
        if self.mode == "series" and parts == {
            "norm_scale", "norm_offset", "adapter", "scale", "offset"
        }:
            # y * scale + ((y * norm_scale + norm_offset) @ P) @ A + offset: y @ M + offset'.
            low_rank = ops.matmul(projection, tensors["adapter"])
            mix = ops.expand_dims(tensors["norm_scale"], -1) * low_rank
            mix = mix + ops.diag(ops.convert_to_tensor(tensors["scale"]))
            offset = ops.matmul(ops.expand_dims(tensors["norm_offset"], 0), low_rank)[0]
            return folding.FoldTerms(mix, True, None, (), offset + tensors["offset"], projection)
        return super().fold_terms(tensors, projection)

    def swappable_call(self, inputs, tensors):
        # keras.ops throughout: the tensors are NumPy arrays or the export's symbolic inputs.
        if self.mode == "parallel":
            taps = self._delegated_tap_input(inputs)
            if self.adapter_projection is not None:
                taps = _channel_matmul(taps, self.adapter_projection)
            outputs = self._base_linear(inputs)
            if "scale" in tensors:
                outputs = ops.multiply(outputs, tensors["scale"])
            outputs = ops.add(outputs, _channel_matmul(taps, tensors["adapter"]))
            if "offset" in tensors:
                outputs = ops.add(outputs, tensors["offset"])
            return self._activation(outputs)
        y = self._activation(self._base_linear(inputs))
        if self.rank is None:
            return ops.add(_channel_matmul(y, tensors["adapter"]), tensors["offset"])
        normalized = ops.add(ops.multiply(y, tensors["norm_scale"]), tensors["norm_offset"])
        hidden = _channel_matmul(normalized, self.adapter_projection)
        return ops.add(ops.add(ops.multiply(y, tensors["scale"]),
                               _channel_matmul(hidden, tensors["adapter"])), tensors["offset"])


def _check_dropout(rate):
    if (
        isinstance(rate, bool)
        or not isinstance(rate, (int, float, np.integer, np.floating))
        or not 0 <= rate < 1
    ):
        raise ValueError(f"`dropout` must be a float in [0, 1). Received: dropout={rate!r}")
    return float(rate)


def _input_spec(adapter, input_shape):
    """Fixes the channels; and the spatial size where a strided parallel adapter's tap needs it.

    At stride 2 the tap read depends on the size's parity (Keras' "same" padding), so a call at
    another size than the one built for would read the wrong input positions.
    """
    if not adapter.is_conv:
        return keras.layers.InputSpec(min_ndim=2, axes={-1: input_shape[-1]})
    strided = adapter.mode == "parallel" and any(s != 1 for s in adapter.layer.strides)
    if strided:
        return keras.layers.InputSpec(shape=(None,) + tuple(input_shape[1:]))
    return keras.layers.InputSpec(ndim=len(input_shape), axes={-1: input_shape[-1]})


def _adapter_tap(conv, input_shape):
    """The kernel tap a parallel adapter reads, and the input slices that realise it.

    Output position `i` of a conv reads input `i * stride + dilation * j - pad_before` at tap
    `j`. The adapter reads the tap closest to the kernel centre whose input position is
    inside the image for every output, so its 1x1 kernel folds into that tap exactly.
    """
    taps, slices = [], []
    spatial = input_shape[1:-1]
    for axis, size in enumerate(spatial):
        k = conv.kernel_size[axis]
        s = conv.strides[axis]
        d = conv.dilation_rate[axis]
        span = d * (k - 1) + 1
        padding = conv.padding
        if size is None:
            if s != 1:
                raise ValueError(
                    "A parallel adapter on a strided conv needs static spatial dimensions. "
                    f"Received: input_shape={tuple(input_shape)}"
                )
            pad_before = {"valid": 0, "same": (span - 1) // 2, "causal": span - 1}[padding]
            tap = pad_before // d if padding != "valid" else k // 2
            start = d * tap - pad_before
            if start < 0:
                raise ValueError(
                    "A parallel adapter needs static spatial dimensions for "
                    f"kernel_size={conv.kernel_size}, dilation_rate={conv.dilation_rate}. "
                    f"Received: input_shape={tuple(input_shape)}"
                )
            end = start - (span - 1) + _pad_total(padding, span)
            slices.append(slice(start, end if end < 0 else None, 1))
            taps.append(tap)
            continue
        if padding == "valid":
            out, pad_before = (size - span) // s + 1, 0
        elif padding == "same":
            out = math.ceil(size / s)
            pad_before = max((out - 1) * s + span - size, 0) // 2
        else:  # causal
            out, pad_before = size, span - 1
        candidates = sorted(range(k), key=lambda j: (abs(2 * j - (k - 1)), -j))
        for tap in candidates:
            first = d * tap - pad_before
            if first >= 0 and first + (out - 1) * s <= size - 1:
                break
        else:
            raise ValueError(
                f"No kernel tap reads inside the input for kernel_size={conv.kernel_size}, "
                f"strides={conv.strides}, padding={padding!r}, input_shape={tuple(input_shape)}"
            )
        taps.append(tap)
        slices.append(slice(first, first + (out - 1) * s + 1, s))
    whole = [sl.start in (0, None) and sl.step in (1, None) and sl.stop in (None, size)
             for sl, size in zip(slices, spatial)]
    return tuple(taps), None if all(whole) else tuple(slices)


def _pad_total(padding, span):
    """Total padding of a stride-1 conv: the output is `size - span + 1 + pad_total` long."""
    return {"valid": 0, "same": span - 1, "causal": span - 1}[padding]


def _channel_matmul(x, matrix):
    """`x @ matrix` on the channel axis (a TFLite BATCH_MATMUL for a runtime matrix)."""
    letters = "abcdefgh"[: len(x.shape) - 1]
    return ops.einsum(f"{letters}i,io->{letters}o", x, matrix)
