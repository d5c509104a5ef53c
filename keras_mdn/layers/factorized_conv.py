"""FactorizedConv1D / FactorizedConv2D: per-task convolutions with a factorised stacked kernel."""

import itertools
import math

import keras
from keras import ops

from keras_mdn.api import register
from keras_mdn.factorizations import planning
from keras_mdn.layers.base_factorized import BaseFactorized, fans, stack_layer_weights

_DEFAULT_BATCH_HINT = 32


class BaseFactorizedConv(BaseFactorized):
    """Rank-generic factorised convolution, `kernel_size + (C_in, filters, T)` stacked kernel.

    Chosen at build time by a cost model (`contraction_paths()`, `factorizations.planning`):
    either the domain's kernel is reconstructed and fed to one `keras.ops.conv`, or some of the
    factors (all that touch the input modes, maybe more) form a kernel whose output channels
    are the bond ranks, and the rest (output factor, domain codes) is contracted afterwards like
    a dense layer. A mixed batch without the factored path runs one convolution with
    `filters * E` channels against the shared part and mixes per example with the domain codes
    (E: LAF K, Tucker r_T, TT the last rank, or T); or, where those multiply the flops, each
    example's kernel is contracted from its domain code and meets the input's patches in one
    batched matmul (a uniform batch's flops; `contraction_paths()["mixed"] == "per_example"`;
    Tucker: in the rank space, between its input- and output-channel factors); in a TF graph
    not compiled by XLA, the batch folded into the channels of one grouped convolution.
    """

    rank_spatial = None

    def __init__(
        self,
        filters,
        kernel_size,
        num_domains=None,
        factorization="laf",
        rank=None,
        strides=1,
        padding="valid",
        dilation_rate=1,
        activation=None,
        use_bias=True,
        kernel_variance="glorot",
        bias_initializer="zeros",
        factor_regularizer=None,
        bias_regularizer=None,
        factor_constraint=None,
        batch_size_hint=None,
        contraction="auto",
        num_tasks=None,
        **kwargs,
    ):
        super().__init__(
            num_domains,
            num_tasks=num_tasks,
            factorization=factorization,
            rank=rank,
            activation=activation,
            use_bias=use_bias,
            kernel_variance=kernel_variance,
            bias_initializer=bias_initializer,
            factor_regularizer=factor_regularizer,
            bias_regularizer=bias_regularizer,
            factor_constraint=factor_constraint,
            **kwargs,
        )
        if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
            raise ValueError(f"`filters` must be a positive int. Received: filters={filters!r}")
        self.filters = filters
        self.kernel_size = _tuple(kernel_size, self.rank_spatial, "kernel_size")
        self.strides = _tuple(strides, self.rank_spatial, "strides")
        self.dilation_rate = _tuple(dilation_rate, self.rank_spatial, "dilation_rate")
        padding = padding.lower() if isinstance(padding, str) else padding
        if padding not in ("valid", "same"):
            raise ValueError(f"`padding` must be 'valid' or 'same'. Received: padding={padding!r}")
        self.padding = padding
        planning.check_mode(contraction, ("auto", "reconstruct"))
        if batch_size_hint is not None and (not isinstance(batch_size_hint, int)
                                            or batch_size_hint < 1):
            raise ValueError(
                f"`batch_size_hint` must be a positive int or None. "
                f"Received: batch_size_hint={batch_size_hint!r}"
            )
        self.batch_size_hint = batch_size_hint
        self.contraction = contraction

    def _factor_dims(self, input_shape):
        return self.kernel_size + (int(input_shape[-1]),), (self.filters,)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"The channel dimension of the inputs must be known. "
                             f"Received: input_shape={input_shape}")
        # Later calls with other channels (or rank) raise Keras' clear input-spec error.
        self.input_spec = keras.layers.InputSpec(
            ndim=len(input_shape), axes={-1: input_shape[-1]})
        in_dims, out_dims = self._factor_dims(input_shape)
        fan_in, fan_out = fans(in_dims, out_dims, math.prod(self.kernel_size))
        self._build_factors(in_dims, out_dims, fan_in, fan_out, self.filters)
        spatial = self.compute_output_shape(input_shape)[1:-1]
        positions = None if None in spatial else math.prod(spatial)
        batch = input_shape[0] or self.batch_size_hint or _DEFAULT_BATCH_HINT
        self._plan = planning.plan_conv(self.factorization, batch, positions, self.contraction)

    def compute_output_shape(self, input_shape):
        spatial = []
        for size, kernel, stride, dilation in zip(input_shape[1:-1], self.kernel_size,
                                                  self.strides, self.dilation_rate):
            if size is None:
                spatial.append(None)
            elif self.padding == "same":
                spatial.append(-(-size // stride))
            else:
                spatial.append((size - dilation * (kernel - 1) - 1) // stride + 1)
        return (input_shape[0],) + tuple(spatial) + (self.filters,)

    def _conv(self, inputs, kernel):
        return ops.conv(inputs, kernel, strides=self.strides, padding=self.padding,
                        data_format="channels_last", dilation_rate=self.dilation_rate)

    def _patches(self, inputs):
        """`(patches, spatial)`: the input under each output position's kernel window.

        `patches` is `(batch, prod(spatial), prod(kernel_size) * C_in)`, ordered as the
        flattened kernel `(*kernel_size, C_in)`; `spatial` the static output size. The same
        padding as `keras.ops.conv` ("same": the excess split with the extra row after).
        """
        sizes = tuple(inputs.shape[1:-1])
        spatial = self.compute_output_shape(inputs.shape)[1:-1]
        pads = [(0, 0)]
        for size, out, kernel, stride, dilation in zip(sizes, spatial, self.kernel_size,
                                                       self.strides, self.dilation_rate):
            total = 0
            if self.padding == "same":
                total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        pads.append((0, 0))
        if any(pad != (0, 0) for pad in pads):
            inputs = ops.pad(inputs, pads)
        taps = []
        plain_slices = (keras.backend.backend() == "tensorflow"
                        and all(stride == 1 for stride in self.strides))
        for offsets in itertools.product(*(range(k) for k in self.kernel_size)):
            if plain_slices:
                # A plain slice: its gradient is a pad, where a TF graph runs the gradient of
                # a strided slice 3x slower (the input's gradient, and U_in's when projected).
                # (XLA fuses Python slices into the concatenation; `slice` it does not.)
                start = (0,) + tuple(o * d for o, d in zip(offsets, self.dilation_rate)) + (0,)
                taps.append(ops.slice(inputs, start, (ops.shape(inputs)[0],) + tuple(spatial)
                                      + (inputs.shape[-1],)))
                continue
            window = tuple(
                slice(offset * dilation, offset * dilation + (out - 1) * stride + 1, stride)
                for offset, out, stride, dilation in zip(offsets, spatial, self.strides,
                                                         self.dilation_rate))
            taps.append(inputs[(slice(None),) + window + (slice(None),)])
        patches = ops.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]
        return ops.reshape(patches, (-1, math.prod(spatial), patches.shape[-1])), spatial

    def _grouped_conv(self, inputs, kernels):
        """Example `b` of `inputs` convolved with `kernels[b]` `(prod(kernel_size) * C_in,
        filters')`, all as one convolution with the batch folded into the channels (`B`
        groups): `(batch, *spatial, filters')`. TensorFlow only (`planning.grouped_conv_wins`):
        `tf.nn.convolution` itself, as `keras.ops.conv` compiles a grouped convolution with
        XLA on a CPU, whose gradient is ~100x slower."""
        import tensorflow as tf

        # A grouped convolution of zero groups raises: an empty batch gets empty outputs.
        def empty():
            spatial = tuple(self.compute_output_shape(inputs.shape)[1:-1])
            return tf.zeros((0,) + spatial + (kernels.shape[-1],), inputs.dtype)

        if inputs.shape[0] is None:
            return tf.cond(tf.shape(inputs)[0] > 0,
                           lambda: self._grouped_conv_of(inputs, kernels), empty)
        if inputs.shape[0] == 0:
            return empty()
        return self._grouped_conv_of(inputs, kernels)

    def _grouped_conv_of(self, inputs, kernels):
        import tensorflow as tf

        rank = len(self.kernel_size)
        channels, filters = inputs.shape[-1], kernels.shape[-1]
        # (B, *kernel, C, F) -> (*kernel, C, B, F) -> (*kernel, C, B * F)
        kernels = ops.reshape(kernels, (-1,) + self.kernel_size + (channels, filters))
        kernels = ops.transpose(kernels, tuple(range(1, rank + 2)) + (0, rank + 2))
        kernels = ops.reshape(kernels, self.kernel_size + (channels, -1))
        # (B, *spatial, C) -> (1, *spatial, B * C)
        grouped = ops.transpose(inputs, tuple(range(1, rank + 1)) + (0, rank + 1))
        grouped = ops.reshape(grouped, (1,) + tuple(inputs.shape[1:-1]) + (-1,))
        outputs = tf.nn.convolution(grouped, kernels, strides=self.strides,
                                    padding=self.padding.upper(),
                                    dilations=self.dilation_rate)  # (1, *spatial', B * F)
        spatial = tuple(outputs.shape[1:-1])
        outputs = ops.reshape(outputs, spatial + (-1, filters))
        return ops.transpose(outputs, (rank,) + tuple(range(rank)) + (rank + 1,))

    def call(self, inputs, domain=None):
        route, selection = self._domain(domain, inputs)
        inputs = ops.cast(inputs, self.compute_dtype)
        outputs = planning.conv(self._plan, self.factorization, inputs, route, self._conv,
                                self._patches, self._grouped_conv)
        return self._finish(outputs, route, selection)

    def contraction_paths(self):
        """`{"uniform": ..., "mixed": ...}`: `"factored"` (a convolution with some factors as
        kernel, the rest contracted after it; `"<key>_detail"` says which) or `"reconstruct"`
        (the domain's kernel, or for a mixed batch the coded kernel)."""
        return planning.describe_conv(self._plan, self.factorization)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            "batch_size_hint": self.batch_size_hint,
            "contraction": self.contraction,
        }

    @classmethod
    def from_layers(cls, layers, factorization="laf", rank=None, eps=None, **kwargs):
        """A factorised convolution initialised from T trained Keras convolutions (one per task).

        The kernels are stacked into `kernel_size + (C_in, filters, T)` and decomposed (SVD for
        LAF, HOSVD for Tucker, TT-SVD for TT); at full rank every task's convolution is
        reproduced exactly. Strides, padding, dilation, activation and bias come from the
        first layer.

        Args:
            layers: built `keras.layers.Conv1D` / `Conv2D` layers with the same kernel shape,
                at least 2, `channels_last`, `groups=1`.
            factorization: kind name or instance. Defaults to `"laf"`.
            rank: None (full rank, or chosen by `eps`), an int or one rank per slot; a float in
                (0, 1) is read as `eps`. Defaults to None.
            eps: relative Frobenius error threshold in (0, 1). Defaults to None.
            eps_mode: what `eps` means: `"frobenius"` or `"authors"` (see
                `FactorizedDense.from_layers`). Defaults to None (`"frobenius"`).
            **kwargs: other layer arguments.
        """
        kind = keras.layers.Conv2D if cls.rank_spatial == 2 else keras.layers.Conv1D
        kernels, biases, first = stack_layer_weights(layers, kind, 2)
        for index, layer in enumerate(layers):
            config = layer.get_config()
            if config.get("groups", 1) != 1 or config.get("data_format") == "channels_first":
                raise ValueError(
                    f"`layers[{index}]` must use groups=1 and channels_last. "
                    f"Received: groups={config.get('groups')}, "
                    f"data_format={config.get('data_format')}"
                )
        config = first.get_config()
        for key in ("strides", "padding", "dilation_rate", "use_bias"):
            kwargs.setdefault(key, config[key])
        kwargs.setdefault("activation", keras.activations.serialize(first.activation))
        input_shape = (None,) * (cls.rank_spatial + 1) + (kernels.shape[-3],)
        return cls._from_stacked(
            kernels, biases, input_shape, factorization, rank, eps,
            filters=kernels.shape[-2], kernel_size=kernels.shape[:-3],
            num_domains=kernels.shape[-1], **kwargs,
        )

    # === Domain-layer interface: the plain layer a task folds into ===

    def _plain_layer(self):
        cls = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D}[self.rank_spatial]
        return cls, {
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
        }

    def _plain_call(self, inputs, kernel):
        return self._conv(inputs, kernel)


@register
class FactorizedConv2D(BaseFactorizedConv):
    """2-D convolution per task, the `kh x kw x C_in x C_out x T` stacked kernel factorised.

    Args:
        filters: output channels.
        kernel_size: int or tuple of 2 ints.
        num_domains: number of domains (the paper's tasks) T; `num_tasks` is an alias.
        factorization: `"laf"`, `"tucker"`, `"tt"`, `"tt_matrix"` or an instance. Defaults to
            `"laf"`.
        rank: rank(s) for a kind given by name. Defaults to None (required unless built by
            `from_layers`).
        strides: int or tuple. Defaults to 1.
        padding: `"valid"` or `"same"`. Defaults to `"valid"`.
        dilation_rate: int or tuple. Defaults to 1.
        activation: activation function. Defaults to None.
        use_bias: per-domain bias `(T, filters)`. Defaults to True.
        kernel_variance: `"glorot"`, `"he"` or a float, the reconstructed kernel's variance at
            initialisation. Defaults to `"glorot"`.
        bias_initializer: Defaults to `"zeros"`.
        factor_regularizer: regularizer of every factor. Defaults to None.
        bias_regularizer: Defaults to None.
        factor_constraint: constraint of every factor. Defaults to None.
        batch_size_hint: batch size the path is chosen for when not static. Defaults to None
            (32).
        contraction: `"auto"` (a convolution with only the input-side factors, then the rest
            contracted like a dense layer, when the cost model finds it cheaper) or
            `"reconstruct"` (always the task's full kernel). Defaults to `"auto"`.

    Call arguments:
        inputs: `(batch, height, width, C_in)` (channels last).
        domain: Python int, 0-d int tensor or int tensor `(batch,)`. `task` is an alias.

    Input shape:
        `(batch, height, width, C_in)`.

    Output shape:
        `(batch, new_height, new_width, filters)`.

    Example:

    ```python
    conv = keras_mdn.FactorizedConv2D(32, 3, num_domains=5, factorization="tucker", rank=4,
                                      padding="same")
    y = conv(images, domain=domain_vector)
    ```

    Reference:
        Yang & Hospedales, "Deep Multi-task Representation Learning: A Tensor Factorisation
        Approach", ICLR 2017.
    """

    rank_spatial = 2


@register
class FactorizedConv1D(BaseFactorizedConv):
    """1-D convolution per task, the `k x C_in x C_out x T` stacked kernel factorised.

    Same arguments as `FactorizedConv2D`, with `kernel_size`, `strides` and `dilation_rate`
    an int or a tuple of 1 int; inputs `(batch, steps, C_in)`.
    """

    rank_spatial = 1


FactorizedConv = FactorizedConv2D


def _tuple(value, count, name):
    values = (value,) * count if isinstance(value, int) else tuple(value)
    if len(values) != count or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(
            f"`{name}` must be a positive int or a tuple of {count} positive ints. "
            f"Received: {name}={value!r}"
        )
    return values
