import keras
import numpy as np
from keras import ops

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
class DomainHead(keras.layers.Layer, DomainLayer):
    """Per-domain linear classifiers whose domains may have different numbers of classes.

    The kernels of all domains are stored side by side in one `(features, sum(num_classes))`
    matrix, so the parameter count is exactly that of T separate heads. The output always has
    `max(num_classes)` logits; the logits a domain does not have are set to a large negative
    value (`padding_logit`), so a softmax gives them probability zero and `argmax` never picks
    them. Train with `keras.losses.SparseCategoricalCrossentropy(from_logits=True)` and
    `keras.metrics.SparseCategoricalAccuracy()`, with integer labels in
    `[0, num_classes[domain])`, for one-domain or mixed-domain batches alike.

    Args:
        num_classes: int (every domain has this many classes, `num_domains` required) or a
            list of ints, one per domain.
        num_domains: int, number of domains; inferred from a list `num_classes`.
        use_bias: bool. Defaults to `True`.
        kernel_initializer: Defaults to `"glorot_uniform"`.
        bias_initializer: Defaults to `"zeros"`.
        kernel_regularizer: optional regularizer.
        bias_regularizer: optional regularizer.
        **kwargs: base layer keyword arguments.

    Call arguments:
        inputs: tensor of shape `(batch, features)`.
        domain: Python int, 0-d int tensor, or int tensor of shape `(batch,)`.

    Input shape:
        `(batch, features)`.

    Output shape:
        `(batch, max(num_classes))` logits.

    Example:

    >>> head = DomainHead(num_classes=[10, 2, 100])
    >>> logits = head(np.ones((4, 64)), domain=np.array([0, 1, 2, 2]))  # (4, 100)
    """

    def __init__(
        self,
        num_classes,
        num_domains=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        num_classes = check_num_classes(num_classes, num_domains)
        self.num_classes = num_classes
        self.num_domains = len(num_classes)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.max_classes = max(num_classes)
        self.offsets = [int(o) for o in np.cumsum([0] + num_classes[:-1])]
        # Column of each (domain, class) in the stacked kernel extended by two constant
        # columns (see `_extended`): padded classes read the padding column, and the extra
        # last row, for invalid ids, reads only the NaN column.
        total = sum(num_classes)
        self._columns = np.full((self.num_domains + 1, self.max_classes), total, "int32")
        self._columns[-1] = total + 1
        for d, (offset, n) in enumerate(zip(self.offsets, num_classes)):
            self._columns[d, :n] = np.arange(offset, offset + n)

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                "DomainHead expects inputs of shape (batch, features) with known features. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.input_spec = keras.layers.InputSpec(ndim=2, axes={-1: input_shape[-1]})
        total = sum(self.num_classes)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_shape[-1], total),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(total,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )

    def call(self, inputs, domain):
        domain = routing.canonicalize_domain(domain, self.num_domains)
        routing.check_batch(domain, inputs)
        if isinstance(domain, int):
            return self._static_logits(inputs, domain)
        selection = routing.select(domain, self.num_domains, inputs)
        # A GEMM with the stacked kernel, then each example's columns. The kernel gradient
        # `features^T @ upstream` would be NaN in every domain's columns (NaN x 0) when one
        # example's features are not finite: such rows enter as zeros and leave as NaN.
        finite = ops.all(ops.isfinite(inputs), axis=-1, keepdims=True)
        safe_inputs = ops.where(finite, inputs, ops.zeros_like(inputs))
        kernel, bias = self._extended(inputs.dtype)
        ids = ops.where(selection.valid, selection.ids, self.num_domains)
        columns = ops.take(self._columns, ids, axis=0)
        if routing.is_uniform(domain):
            logits = ops.matmul(safe_inputs, ops.take(kernel, columns, axis=1))
            logits = logits + ops.take(bias, columns, axis=0)
        else:
            logits = routing.take_columns(ops.matmul(safe_inputs, kernel) + bias, columns)
        # Non-finite features (or an invalid id, via the NaN column): NaN logits, never
        # another domain's answer.
        return ops.where(finite, logits, ops.cast(float("nan"), logits.dtype))

    def _extended(self, dtype):
        """Kernel and bias with two constant columns: the padding logit and NaN.

        Both are exact (`x @ 0 + c == c` for finite `x`), so one selection of columns gives
        the logits of the example's domain, the padding logit past its classes and NaN for
        an invalid id.
        """
        extra = np.array([padding_logit(dtype), np.nan])
        kernel = ops.pad(self.kernel, ((0, 0), (0, 2)))
        if self.bias is None:
            bias = np.concatenate([np.zeros(sum(self.num_classes)), extra])
            return kernel, ops.cast(bias, dtype)
        return kernel, ops.concatenate([ops.cast(self.bias, dtype), ops.cast(extra, dtype)], axis=0)

    def _static_logits(self, inputs, domain):
        start, n = self.offsets[domain], self.num_classes[domain]
        logits = ops.matmul(inputs, self.kernel[:, start : start + n])
        if self.bias is not None:
            logits = logits + self.bias[start : start + n]
        if n == self.max_classes:
            return logits
        padding = ops.full(
            (ops.shape(logits)[0], self.max_classes - n),
            self._padding_logit(logits.dtype),
            dtype=logits.dtype,
        )
        return ops.concatenate([logits, padding], axis=-1)

    def domain_weights(self, domain):
        """`(kernel, bias)` of one domain: shapes `(features, n)` and `(n,)` (bias may be None)."""
        domain = routing.canonicalize_domain(domain, self.num_domains)
        start, n = self.offsets[domain], self.num_classes[domain]
        bias = None if self.bias is None else self.bias[start : start + n]
        return self.kernel[:, start : start + n], bias

    @staticmethod
    def _padding_logit(dtype):
        return padding_logit(dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.max_classes)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": list(self.num_classes),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
        }

    # === Domain-layer interface (keras_mdn.layers.domain_layer) ===

    def domain_variables(self):
        return [DomainVariable(v, len(v.shape) - 1, tuple(self.num_classes)) for v in self.weights]

    def with_num_domains(self, num_domains, init_from=None, num_classes=None):
        """A copy with more domains; `num_classes`: int or list, the new domains' classes.

        `num_classes` defaults to the class count of `init_from` when that is given.
        """
        return super().with_num_domains(num_domains, init_from, num_classes=num_classes)

    def _grown_config(self, config, num_domains, init_from=None, num_classes=None):
        added = num_domains - self.num_domains
        if num_classes is None and added:
            if init_from is None:
                raise ValueError(
                    "`num_classes` is required: the classes of the new domains' heads. "
                    "Received: num_classes=None"
                )
            num_classes = self.num_classes[init_from]
        if num_classes is None:
            num_classes = []
        elif isinstance(num_classes, (int, np.integer)) and not isinstance(num_classes, bool):
            num_classes = [num_classes] * added
        if not isinstance(num_classes, (list, tuple)) or len(num_classes) != added:
            raise ValueError(
                f"`num_classes` must be an int or a list of {added} ints (one per new domain). "
                f"Received: num_classes={num_classes!r}"
            )
        return {**config, "num_classes": check_num_classes(list(self.num_classes)
                                                           + list(num_classes))}

    def fold(self, domain):
        kernel, bias = self.domain_weights(check_domain(domain, self.num_domains))
        config = {"units": int(kernel.shape[1]), "use_bias": bias is not None, "name": self.name}
        weights = [kernel] if bias is None else [kernel, bias]
        return [built_layer(keras.layers.Dense, config, build_input_shape(self), weights)]

    def swappable_tensors(self, domain, affine=None):
        """`kernel` `(features, max_classes)` and `bias`, zero-padded past the domain's classes.

        The logits past `num_classes[domain]` are 0 in the swappable model (not the padding
        logit), so a pack holds no large constant.
        """
        check_affine(self, affine)
        kernel, bias = self.domain_weights(check_domain(domain, self.num_domains))
        kernel = as_float32(kernel)
        padded = np.zeros((kernel.shape[0], self.max_classes), "float32")
        padded[:, : kernel.shape[1]] = kernel
        padded_bias = np.zeros((self.max_classes,), "float32")
        if bias is not None:
            padded_bias[: kernel.shape[1]] = as_float32(bias)
        return {"kernel": padded, "bias": padded_bias}

    def swappable_call(self, inputs, tensors):
        return ops.matmul(inputs, tensors["kernel"]) + tensors["bias"]


def padding_logit(dtype):
    """The logit `DomainHead` gives the classes a domain does not have (for `dtype`).

    Far below any real logit, yet finite so losses and gradients stay finite.
    """
    return -3.0e4 if keras.backend.standardize_dtype(dtype) in ("float16",) else -1.0e9


def out_of_domain_labels(y_true, logits):
    """Bool `(batch,)`: the label is not a class of the example's domain in `DomainHead` logits.

    True for labels outside `[0, max_classes)` and for labels naming a class the example's
    domain does not have (its logit is the head's padding value). A `SparseCategoricalCrossentropy`
    gives such examples a loss of about 1e9 and no error; `keras_mdn.losses.DomainCrossentropy`
    and `keras_mdn.metrics.OutOfDomainLabels` use this to show them.
    """
    labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    in_range = ops.logical_and(
        ops.greater_equal(labels, 0), ops.less(labels, logits.shape[-1])
    )
    safe = ops.where(in_range, labels, 0)
    picked = ops.take_along_axis(logits, ops.expand_dims(safe, -1), axis=-1)[:, 0]
    padded = ops.equal(picked, ops.cast(padding_logit(logits.dtype), logits.dtype))
    return ops.logical_or(ops.logical_not(in_range), padded)


def check_num_classes(num_classes, num_domains=None):
    """Validates per-domain class counts and returns them as a list of ints, one per domain.

    `num_classes` is a list of positive ints, or one int shared by `num_domains` domains.
    """
    if isinstance(num_classes, (int, np.integer)) and not isinstance(num_classes, bool):
        if num_domains is None:
            raise ValueError(
                "`num_domains` is required when `num_classes` is a single int; or pass one "
                f"class count per domain. Received: num_classes={num_classes}, num_domains=None"
            )
        num_classes = [int(num_classes)] * routing.check_num_domains(num_domains)
    if not isinstance(num_classes, (list, tuple)) or not num_classes or any(
        isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1
        for n in num_classes
    ):
        raise ValueError(
            "`num_classes` must be a positive int or a non-empty list of positive ints. "
            f"Received: num_classes={num_classes!r}"
        )
    num_classes = [int(n) for n in num_classes]
    if num_domains is not None and routing.check_num_domains(num_domains) != len(num_classes):
        raise ValueError(
            f"`num_domains` must equal len(num_classes)={len(num_classes)}. "
            f"Received: num_domains={num_domains}"
        )
    return num_classes
