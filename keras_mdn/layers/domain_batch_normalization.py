import math

import keras
import numpy as np
from keras import ops

from keras_mdn import distribution
from keras_mdn.api import register
from keras_mdn.layers.domain_layer import (
    DomainLayer,
    DomainVariable,
    as_float32,
    build_input_shape,
    built_layer,
    check_affine,
    check_domain,
)
from keras_mdn.ops import routing


@register
class DomainBatchNormalization(keras.layers.Layer, DomainLayer):
    """Batch normalization with its own gamma, beta and moving statistics per domain.

    The normalised axis is the last one (channels last). In training, a one-domain batch is
    normalised with its own statistics and updates that domain's moving mean and variance. A
    mixed-domain batch is normalised domain by domain: each example uses the mean and
    variance of the examples of its domain in the batch, and only the domains present in the
    batch update their moving statistics. At inference each example uses its domain's moving
    statistics. As in `keras.layers.BatchNormalization`, a non-trainable layer always runs in
    inference mode.

    Args:
        num_domains: int, number of domains.
        momentum: float, momentum of the moving averages. Defaults to `0.99`.
        epsilon: float, added to the variance. Defaults to `1e-3`.
        center: bool, learn a per-domain offset `beta`. Defaults to `True`.
        scale: bool, learn a per-domain scale `gamma`. Defaults to `True`.
        beta_initializer: initializer of `beta`. Defaults to `"zeros"`.
        gamma_initializer: initializer of `gamma`. Defaults to `"ones"`.
        moving_mean_initializer: Defaults to `"zeros"`.
        moving_variance_initializer: Defaults to `"ones"`.
        beta_regularizer: optional regularizer of `beta`.
        gamma_regularizer: optional regularizer of `gamma`.
        synchronized: per-domain statistics over all replicas' examples in training (the
            per-domain `SyncBatchNormalization`): `None` turns it on under a distribution
            (`keras_mdn.distribution.is_distributed`), `True`/`False` always/never. Without
            a distribution the local batch is the global one, so `True` changes nothing; on
            JAX's `keras.distribution` statistics are always global. Defaults to `None`.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: tensor of rank >= 2, channels last.
        domain: Python int, 0-d int tensor, or int tensor of shape `(batch,)`.
        training: Python bool, training or inference mode.

    Input shape:
        `(batch, ..., channels)`.

    Output shape:
        Same as the input.

    Example:

    >>> bn = DomainBatchNormalization(num_domains=3)
    >>> y = bn(np.ones((4, 8, 8, 16)), domain=np.array([0, 0, 2, 1]), training=True)

    Reference:
        Rebuffi, Bilen, Vedaldi, "Efficient parametrization of multi-domain deep neural
        networks", CVPR 2018.
    """

    def __init__(
        self,
        num_domains,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        synchronized=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_domains = routing.check_num_domains(num_domains)
        self.momentum = check_momentum(momentum)
        self.epsilon = check_epsilon(epsilon)
        self.center = center
        self.scale = scale
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.synchronized = distribution.check_synchronized(synchronized)
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(
                "DomainBatchNormalization expects inputs of rank >= 2. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "The channel (last) dimension of the inputs must be known. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: channels})
        shape = (self.num_domains, channels)
        self.gamma = None
        self.beta = None
        if self.scale:
            self.gamma = self.add_weight(
                name="gamma",
                shape=shape,
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                name="beta",
                shape=shape,
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                autocast=False,
            )
        self.moving_mean = self.add_weight(
            name="moving_mean",
            shape=shape,
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
        )
        self.moving_variance = self.add_weight(
            name="moving_variance",
            shape=shape,
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
        )

    def call(self, inputs, domain, training=None):
        domain = routing.canonicalize_domain(domain, self.num_domains)
        routing.check_batch(domain, inputs)
        if not keras.backend.is_float_dtype(inputs.dtype):
            # Integer images normalise in floats, as Keras' BatchNormalization does (the
            # output cast back to the input's dtype would truncate them).
            inputs = ops.cast(inputs, self.compute_dtype)
        training = bool(training) and self.trainable
        synchronized = training and distribution.should_synchronize(self.synchronized)
        if synchronized and routing.is_uniform(domain):
            # Replicas may hold different domains: reduce per domain, as for a mixed batch.
            domain = ops.full((ops.shape(inputs)[0],), domain, "int32")
        if not routing.is_uniform(domain):
            selection = routing.select(domain, self.num_domains, inputs)
            if training:
                outputs = self._mixed_training(inputs, selection, synchronized)
            else:
                outputs = self._mixed_inference(inputs, selection)
            return ops.cast(outputs, inputs.dtype)
        if not isinstance(domain, int):
            domain = routing.select(domain, self.num_domains)
        if training:
            mean, variance = self._uniform_moments(inputs, domain)
            scale, offset = self.affine(domain, mean, variance)
        else:
            scale, offset = self.affine(domain)
        scale, offset = ops.cast(scale, inputs.dtype), ops.cast(offset, inputs.dtype)
        # offset first: Keras' TF `add` mistakes a (0, 1, 1, C) offset for a bias (empty batch).
        return ops.add(offset, ops.multiply(inputs, scale))

    def _mixed_inference(self, inputs, selection):
        # One gather of the stacked [mean | variance | gamma | beta] table, then each
        # example's affine map: computed per example, so that when the number of domains
        # changes (add_domain) the old domains' outputs stay bit-identical. Invalid ids read
        # NaN rows, so their outputs are NaN.
        tables = [self.moving_mean, self.moving_variance]
        tables += [w for w in (self.gamma, self.beta) if w is not None]
        rows = routing.take_domains(ops.concatenate(tables, axis=-1), selection, by_mask="auto")
        rows = ops.split(rows, len(tables), axis=-1)
        gamma = rows[2] if self.gamma is not None else None
        beta = rows[-1] if self.beta is not None else None
        scale, offset = self._scale_offset(rows[0], rows[1], gamma, beta)
        # No batch-length reshape: the call's Selection (made with the inputs) NaNs a vector
        # of another length, and broadcasting raises for any other mismatch.
        scale = routing.per_example(ops.cast(scale, inputs.dtype), inputs)
        offset = routing.per_example(ops.cast(offset, inputs.dtype), inputs)
        return ops.add(offset, ops.multiply(inputs, scale))

    def _mixed_training(self, inputs, selection, synchronized=False):
        """Normalises each example with its domain's batch statistics; moves those domains."""
        if synchronized:  # over every replica's examples of each domain
            counts = distribution.cross_replica_sum(selection.counts())
            divisors = ops.expand_dims(ops.maximum(counts, 1.0), -1)
            present = ops.expand_dims(ops.greater(counts, 0.0), -1)
        else:  # computed once per call, shared by every layer
            divisors, present = selection.divisors(), selection.present()
        shape = (self.num_domains, inputs.shape[-1])
        gamma = ops.ones(shape) if self.gamma is None else routing.read(self.gamma)
        beta = ops.zeros(shape) if self.beta is None else routing.read(self.beta)
        # Traced once per signature and shared by the model's batch norms of one shape
        # (`routing.shared_trace`); synchronized sums need the replica context: traced here.
        step = _mixed_training if synchronized else _shared_mixed_training
        normalized, mean, variance = step(
            inputs, routing.read(self.moving_mean), routing.read(self.moving_variance), gamma,
            beta, selection.parts(), divisors, present, self.num_domains, self.epsilon,
            self.momentum, synchronized,
        )
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        return normalized

    def affine(self, domain, mean=None, variance=None):
        """The per-channel `(scale, offset)` with `y = x * scale + offset` for `domain`.

        With `mean`/`variance` left out, the domain's moving statistics are used: this is the
        inference-time map that folding merges into a preceding kernel.
        """
        if mean is None:
            mean = routing.gather_domain(self.moving_mean, domain)
        if variance is None:
            variance = routing.gather_domain(self.moving_variance, domain)
        gamma = None if self.gamma is None else routing.gather_domain(self.gamma, domain)
        beta = None if self.beta is None else routing.gather_domain(self.beta, domain)
        return self._scale_offset(mean, variance, gamma, beta)

    def _scale_offset(self, mean, variance, gamma, beta):
        scale = ops.rsqrt(ops.add(variance, self.epsilon))
        if gamma is not None:
            scale = ops.multiply(scale, gamma)
        if beta is None:
            return scale, ops.negative(ops.multiply(mean, scale))
        # `subtract`, not `add`: Keras' TF `add` takes a (0, C) operand for a bias.
        return scale, ops.subtract(beta, ops.multiply(mean, scale))

    def _uniform_moments(self, inputs, domain):
        x = ops.cast(inputs, "float32")
        axes = tuple(range(len(inputs.shape) - 1))
        mean, variance = ops.moments(x, axes=axes)
        # Only `domain` moves, and only for a non-empty batch and a valid id.
        if isinstance(domain, int):
            present = ops.equal(ops.arange(self.num_domains, dtype="int32"), domain)
        else:
            # An invalid run-time id normalises with NaN (even without gamma/beta to gather).
            mean = ops.where(domain.valid, mean, float("nan"))
            present = ops.logical_and(
                ops.equal(ops.arange(self.num_domains, dtype="int32"), domain.ids), domain.valid
            )
        batch = ops.shape(inputs)[0]
        present = ops.logical_and(present, ops.greater(batch, 0))
        self._update_moving(mean, variance, present)
        return mean, variance

    def _update_moving(self, mean, variance, present):
        """Moves the statistics of the `present` domains (bool, `(num_domains[, 1])`) only."""
        for moving, batch_value in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moved(routing.read(moving), batch_value, present, self.momentum))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_domains": self.num_domains,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": keras.initializers.serialize(self.beta_initializer),
            "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
            "moving_mean_initializer": keras.initializers.serialize(
                self.moving_mean_initializer
            ),
            "moving_variance_initializer": keras.initializers.serialize(
                self.moving_variance_initializer
            ),
            "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": keras.regularizers.serialize(self.gamma_regularizer),
            "synchronized": self.synchronized,
        }

    # === Domain-layer interface (keras_mdn.layers.domain_layer) ===

    def domain_variables(self):
        statistics = (id(self.moving_mean), id(self.moving_variance))
        return [
            DomainVariable.rows(v, self.num_domains, statistic=id(v) in statistics)
            for v in self.weights
        ]

    def fold(self, domain):
        domain = check_domain(domain, self.num_domains)
        config = {"axis": -1, "epsilon": self.epsilon, "center": self.center,
                  "scale": self.scale, "name": self.name}
        weights = [w[domain] for w in (self.gamma, self.beta) if w is not None]
        weights += [self.moving_mean[domain], self.moving_variance[domain]]
        return [built_layer(keras.layers.BatchNormalization, config, build_input_shape(self),
                            weights)]

    def swappable_tensors(self, domain, affine=None):
        check_affine(self, affine)
        scale, offset = self.affine(check_domain(domain, self.num_domains))
        return {"scale": as_float32(scale), "offset": as_float32(offset)}

    def swappable_call(self, inputs, tensors):
        return inputs * tensors["scale"] + tensors["offset"]


def _mixed_training(inputs, moving_mean, moving_variance, gamma, beta, parts, divisors, present,
                    num_domains, epsilon, momentum, synchronized):
    """A mixed training batch's outputs and the moved `(moving_mean, moving_variance)`."""
    selection = routing.Selection.from_parts(num_domains, parts)
    x = ops.cast(inputs, "float32")
    shift = routing.take_domains(moving_mean, selection, fill_invalid=False, by_mask="auto")
    shift = routing.per_example(shift, x)
    spatial = x.shape[1:-1]
    if any(size is None for size in spatial):
        positions = ops.cast(math.prod(ops.shape(x)[1:-1]), "float32")
    else:
        positions = float(math.prod(spatial))
    normalized, shifted_mean, variance = per_domain_normalization(
        x, gamma, beta, shift, divisors * positions, selection, epsilon, synchronized
    )
    return (
        normalized,
        moved(moving_mean, moving_mean + shifted_mean, present, momentum),
        moved(moving_variance, variance, present, momentum),
    )


def moved(old, batch_value, present, momentum):
    """A moving average moved towards `batch_value` for the `present` domains only.

    `present`: bool `(num_domains[, 1])`. `where`, not a product with a mask: the other
    domains keep their values bit for bit even when the batch's statistics are NaN.
    """
    if len(present.shape) == 1:
        present = ops.expand_dims(present, -1)
    new = old * momentum + ops.cast(batch_value, old.dtype) * (1.0 - momentum)
    return ops.where(present, new, old)


_shared_mixed_training = routing.shared_trace(_mixed_training)


def per_domain_normalization(x, gamma, beta, shift, sizes, selection, epsilon, synchronized):
    """Batch normalization of each example with its domain's batch statistics.

    The forward pass and its gradient written out, so that each needs one segment sum and
    one gather (automatic differentiation of the same math builds about three times the
    graph ops, which mostly costs trace and compile time):

    - statistics: one-pass moments of `c = x - shift`, `shift` each example's domain's moving
      mean (`E[c^2] - E[c]^2` stays accurate for `c` near zero), from one segment sum of the
      per-example `[sum c | sum c^2]`;
    - output: `c * scale + offset` with the per-domain `[scale | offset]` table gathered per
      example (invalid ids read NaN rows);
    - gradient: the batch-norm gradient per domain, `dx = scale * (dy - mean(dy) - xhat *
      mean(dy xhat))`, from one segment sum of `[sum dy | sum dy c]` and one gather (with
      `synchronized`, the inputs' gradient reads all replicas' sums, as autodiff through
      the all-reduce would; gamma and beta get this replica's).

    Segment sums keep a NaN in its own domain, forward and backward.

    Args:
        x: float32 inputs `(batch, ..., channels)`.
        gamma, beta: `(num_domains, channels)` tensors.
        shift: per-example shift, broadcastable against `x`.
        sizes: `(num_domains, 1)`: the number of values each domain's statistics average
            (at least 1 per position).
        selection: the call's `routing.Selection`.
        epsilon: float.
        synchronized: sum the statistics over replicas.

    Returns:
        `(outputs, shifted_mean, variance)`: the normalised inputs, and each domain's batch
        mean minus its shift and its batch variance, `(num_domains, channels)` (not
        differentiated: they feed the moving averages).
    """
    spatial = tuple(range(1, len(x.shape) - 1))
    num_domains = selection.num_domains

    def per_domain_sums(selection, first, second):
        """This replica's per-domain sums of two per-example tensors, and all replicas'."""
        if spatial:
            first, second = ops.sum(first, axis=spatial), ops.sum(second, axis=spatial)
        sums = routing.domain_sums(ops.concatenate([first, second], axis=-1), selection,
                                   by_mask="auto")
        local = ops.split(sums, 2, axis=-1)
        if not synchronized:
            return local, local
        return local, ops.split(distribution.cross_replica_sum(sums), 2, axis=-1)

    def per_example(selection, table, parts, like):
        rows = routing.take_domains(table, selection, by_mask="auto")
        return ops.split(routing.per_example(rows, like), parts, axis=-1)

    # Every traced value the custom gradient uses is one of its arguments (none closed over:
    # a `routing.shared_trace` on JAX re-traces the forward pass after its values are gone).
    @routing.custom_gradient
    def normalize(x, gamma, beta, shift, sizes, *parts):
        selection = routing.Selection.from_parts(num_domains, parts)
        centered = x - shift
        _, (shifted_sum, square_sum) = per_domain_sums(selection, centered, ops.square(centered))
        shifted_mean, mean_square = shifted_sum / sizes, square_sum / sizes
        variance = ops.maximum(mean_square - ops.square(shifted_mean), 0.0)
        inverse = ops.rsqrt(variance + epsilon)
        scale = gamma * inverse
        offset = beta - shifted_mean * scale
        row_scale, row_offset = per_example(
            selection, ops.concatenate([scale, offset], axis=-1), 2, centered
        )
        outputs = row_offset + centered * row_scale

        def grad(*upstream):
            upstream = upstream[0]
            if isinstance(upstream, (tuple, list)):  # JAX: one cotangent per output
                upstream = upstream[0]
            # gamma and beta get this replica's sums (the optimizer sums the replicas'
            # gradients); the inputs' gradient reads every replica's, as the statistics do.
            local, every = per_domain_sums(selection, upstream, upstream * centered)
            (beta_grad, centered_grad), (sum_grad, sum_centered_grad) = local, every
            gamma_grad = inverse * (centered_grad - shifted_mean * beta_grad)  # sum dy xhat
            sum_xhat_grad = gamma_grad
            if synchronized:
                sum_xhat_grad = inverse * (sum_centered_grad - shifted_mean * sum_grad)
            ratio = scale / sizes
            table = ops.concatenate(
                [scale, ratio * (shifted_mean * inverse * sum_xhat_grad - sum_grad),
                 ratio * inverse * sum_xhat_grad],
                axis=-1,
            )
            row_scale, row_offset, row_slope = per_example(selection, table, 3, upstream)
            x_grad = row_scale * upstream + row_offset - centered * row_slope
            return (x_grad, gamma_grad, beta_grad, None, None) + (None,) * len(parts)

        return (outputs, shifted_mean, variance), grad

    return normalize(x, gamma, beta, shift, sizes, *selection.parts())


def check_momentum(momentum, name="momentum"):
    """Validates a batch-norm momentum (a finite float in [0, 1]) and returns it as a float."""
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.number)):
        raise TypeError(f"`{name}` must be a float in [0, 1]. Received: {name}={momentum!r}")
    if not 0.0 <= float(momentum) <= 1.0:  # also False for NaN
        raise ValueError(f"`{name}` must be in [0, 1]. Received: {name}={momentum}")
    return float(momentum)


def check_epsilon(epsilon, name="epsilon"):
    """Validates a batch-norm epsilon (a finite positive float) and returns it as a float."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.number)):
        raise TypeError(f"`{name}` must be a positive float. Received: {name}={epsilon!r}")
    if not 0.0 < float(epsilon) < float("inf"):  # also False for NaN
        raise ValueError(f"`{name}` must be a finite positive float. Received: {name}={epsilon}")
    return float(epsilon)
