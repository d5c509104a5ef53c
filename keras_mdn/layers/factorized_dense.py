"""FactorizedDense: T domain-specific dense layers whose stacked kernel is factorised."""

import keras
from keras import ops

from keras_mdn.api import register
from keras_mdn.factorizations import planning
from keras_mdn.layers.base_factorized import BaseFactorized, stack_layer_weights
from keras_mdn.ops.routing import Selection, is_uniform, select

_DEFAULT_BATCH_HINT = 128


@register
class FactorizedDense(BaseFactorized):
    """A dense layer per domain (task), the `D_in x D_out x T` stacked kernel factorised.

    Domains share knowledge through the factors, by an amount learned from data (DMTRL). With
    `num_domains=1` and `factorization="tt_matrix"` it is a tensorised (TT-matrix) dense layer
    that compresses one big layer. The forward path (factor-by-factor contraction in the best
    order, or reconstruct-then-matmul) is chosen once at build time from the shapes, the ranks
    and the batch size by a cost model; a mixed-domain batch gathers each example's domain code
    and, on 2-D inputs, never builds a weight per example (inputs `(batch, ..., D_in)` with
    many rows per example may: one weight per example, then one batched matmul).

    Args:
        units: output dimension.
        num_domains: number of domains (the paper's tasks) T; `num_tasks` is an alias.
        factorization: `"laf"`, `"tucker"`, `"tt"`, `"tt_matrix"` or a
            `keras_mdn.factorizations.Factorization` instance. Defaults to `"laf"`.
        rank: rank(s) for a kind given by name (an int, or one per rank slot). Defaults to None
            (required unless built by `from_layers` / `from_dense`).
        activation: activation function. Defaults to None.
        use_bias: whether to add a per-domain bias `(T, units)`. Defaults to True.
        kernel_variance: variance of the reconstructed kernel at initialisation: `"glorot"`
            (`2 / (fan_in + fan_out)`), `"he"` (`2 / fan_in`) or a float. Defaults to
            `"glorot"`.
        bias_initializer: initializer of the bias. Defaults to `"zeros"`.
        factor_regularizer: regularizer applied to every factor. Defaults to None.
        bias_regularizer: regularizer of the bias. Defaults to None.
        factor_constraint: constraint applied to every factor. Defaults to None.
        batch_size_hint: batch size the forward path is optimised for when the input's batch
            dimension is not static. Defaults to None (128).
        contraction: `"auto"` (cost model), `"flops"` (fewest flops) or `"reconstruct"`
            (always reconstruct the weight, then one matmul). Defaults to `"auto"`.

    Call arguments:
        inputs: tensor `(batch, ..., D_in)`.
        domain: Python int, 0-d int tensor or int tensor `(batch,)`; may be omitted when
            `num_domains=1`. `task` is an alias.

    Input shape:
        `(batch, ..., D_in)`.

    Output shape:
        `(batch, ..., units)`.

    Example:

    ```python
    layer = keras_mdn.FactorizedDense(64, num_domains=10, factorization="tucker", rank=8)
    y = layer(x, domain=3)                     # one domain for the batch
    y = layer(x, domain=np.array([0, 3, 3]))   # a domain per example
    ```

    Reference:
        Yang & Hospedales, "Deep Multi-task Representation Learning: A Tensor Factorisation
        Approach", ICLR 2017; Novikov et al., "Tensorizing Neural Networks", NeurIPS 2015.
    """

    def __init__(
        self,
        units,
        num_domains=None,
        factorization="laf",
        rank=None,
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
        if not isinstance(units, int) or isinstance(units, bool) or units < 1:
            raise ValueError(f"`units` must be a positive int. Received: units={units!r}")
        if batch_size_hint is not None and (not isinstance(batch_size_hint, int)
                                            or batch_size_hint < 1):
            raise ValueError(
                f"`batch_size_hint` must be a positive int or None. "
                f"Received: batch_size_hint={batch_size_hint!r}"
            )
        planning.check_mode(contraction)
        self.units = units
        self.batch_size_hint = batch_size_hint
        self.contraction = contraction

    def _factor_dims(self, input_shape):
        return (int(input_shape[-1]),), (self.units,)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"The last dimension of the inputs must be known. "
                             f"Received: input_shape={input_shape}")
        # Later calls with other features raise Keras' clear input-spec error.
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_shape[-1]})
        in_dims, out_dims = self._factor_dims(input_shape)
        self._build_factors(in_dims, out_dims, in_dims[0], self.units, self.units)
        leading = input_shape[:-1]
        positions = None
        if all(dim is not None for dim in leading[1:]):
            positions = 1
            for dim in leading[1:]:
                positions *= dim
        if leading[0] is not None and positions is not None:
            batch = leading[0] * positions
        else:
            batch = (self.batch_size_hint or _DEFAULT_BATCH_HINT) * (positions or 1)
        self._plan = planning.plan_dense(self.factorization, batch, self.contraction, positions)

    def call(self, inputs, domain=None):
        route, selection = self._domain(domain, inputs)
        inputs = ops.cast(inputs, self.compute_dtype)
        if len(inputs.shape) == 2:
            outputs = planning.matmul(self._plan, self.factorization, inputs, route)
            return self._finish(outputs, route, selection)
        shape = ops.shape(inputs)
        if (isinstance(route, Selection) and not is_uniform(route.ids)
                and self._plan.per_example is not None):
            rows = ops.reshape(inputs, (shape[0], -1, inputs.shape[-1]))
            outputs = planning.per_example_matmul(self._plan, self.factorization, rows, route)
            outputs = ops.reshape(outputs, tuple(shape[:-1]) + (self.units,))
            return self._finish(outputs, route, selection)
        flat = ops.reshape(inputs, (-1, inputs.shape[-1]))
        flat_route = route
        if isinstance(route, Selection) and not is_uniform(route.ids):
            positions = ops.shape(flat)[0] // ops.shape(inputs)[0]
            # `segments` keeps invalid ids invalid (-1) in the repeated selection.
            flat_route = select(ops.repeat(route.segments, positions, axis=0), self.num_domains)
        outputs = planning.matmul(self._plan, self.factorization, flat, flat_route)
        outputs = ops.reshape(outputs, tuple(shape[:-1]) + (self.units,))
        return self._finish(outputs, route, selection)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def contraction_paths(self):
        """The forward paths chosen at build time and their flops (for benchmarks)."""
        return planning.describe_dense(self._plan, self.factorization)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "batch_size_hint": self.batch_size_hint,
            "contraction": self.contraction,
        }

    @classmethod
    def from_layers(cls, layers, factorization="laf", rank=None, eps=None, **kwargs):
        """A `FactorizedDense` initialised from T trained `keras.layers.Dense` (one per task).

        The kernels are stacked into `D_in x D_out x T` and decomposed: SVD for LAF, HOSVD for
        Tucker, TT-SVD for TT and TT-matrix. At full rank the layer reproduces every task's
        dense layer exactly.

        Args:
            layers: built Dense layers with the same kernel shape, at least 2.
            factorization: kind name or instance. Defaults to `"laf"`.
            rank: None (full rank, or chosen by `eps`), an int or one rank per slot; a float
                in (0, 1) is read as `eps`. Defaults to None.
            eps: relative Frobenius error threshold in (0, 1) choosing the ranks. Defaults to
                None.
            eps_mode: what `eps` means: `"frobenius"` (the relative Frobenius error of the
                whole decomposition, split over its SVD steps) or `"authors"` (the DMTRL
                authors' rule: `eps` as the precision of a pivoted QR at every step; see
                `keras_mdn.ops.decomposition`). Defaults to None (`"frobenius"`).
            **kwargs: other `FactorizedDense` arguments (e.g. `batch_size_hint`).
        """
        kernels, biases, first = stack_layer_weights(layers, keras.layers.Dense, 2)
        return cls._from_dense_stack(kernels, biases, first, factorization, rank, eps, kwargs)

    @classmethod
    def from_t3f(cls, tt_matrix, bias=None, activation=None, **kwargs):
        """A single-domain TT-matrix `FactorizedDense` computing `x @ tt_matrix (+ bias)`.

        TensorFlow only (t3f). See `keras_mdn.interop.t3f.from_t3f`; to migrate a model built
        with `t3f.nn.KerasDense`, use `keras_mdn.interop.t3f.convert_model`.

        Args:
            tt_matrix: a `t3f.TensorTrain` TT-matrix, or its cores `(r_{k-1}, n_k, m_k, r_k)`.
            bias: optional bias `(units,)`. Defaults to None.
            activation: activation function. Defaults to None.
            **kwargs: other `FactorizedDense` arguments.
        """
        from keras_mdn.interop import t3f as t3f_interop

        return t3f_interop.from_t3f(tt_matrix, bias=bias, activation=activation, **kwargs)

    def to_t3f(self, domain=None):
        """This TT-matrix layer's weight (domain `domain`) as a `t3f.TensorTrain` snapshot."""
        from keras_mdn.interop import t3f as t3f_interop

        return t3f_interop.to_t3f(self, domain)

    @classmethod
    def from_dense(cls, layer, factorization="tt_matrix", rank=None, eps=None, **kwargs):
        """A single-task `FactorizedDense` compressing one trained `keras.layers.Dense`.

        Args:
            layer: a built Dense layer.
            factorization: kind name or instance, e.g. `TTMatrix(input_modes=...)`. Defaults
                to `"tt_matrix"`.
            rank: as in `from_layers`. Defaults to None.
            eps: as in `from_layers`. Defaults to None.
            **kwargs: other `FactorizedDense` arguments.
        """
        kernels, biases, first = stack_layer_weights([layer], keras.layers.Dense, 1)
        return cls._from_dense_stack(kernels, biases, first, factorization, rank, eps, kwargs)

    @classmethod
    def _from_dense_stack(cls, kernels, biases, first, factorization, rank, eps, kwargs):
        kwargs.setdefault("activation", keras.activations.serialize(first.activation))
        kwargs.setdefault("use_bias", first.use_bias)
        return cls._from_stacked(
            kernels, biases, (None, kernels.shape[0]), factorization, rank, eps,
            units=kernels.shape[1], num_domains=kernels.shape[-1], **kwargs,
        )

    # === Domain-layer interface: the plain layer a task folds into ===

    def _plain_layer(self):
        return keras.layers.Dense, {"units": self.units}

    def _plain_call(self, inputs, kernel):
        return ops.matmul(inputs, kernel)
