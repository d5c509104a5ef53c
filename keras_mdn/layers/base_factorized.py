"""Private base of the factorised layers: domain routing, per-domain bias, init and rho.

The DMTRL paper calls the domains "tasks": `num_tasks=` / `task=` and the `num_tasks` property
are kept as aliases of `num_domains` / `domain` (configs saved with `num_tasks` still load).

The factorisation kind does all tensor math (`keras_mdn.factorizations`); this base owns what
every factorised layer shares and never branches on the kind.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_mdn import factorizations
from keras_mdn.factorizations.base import _is_int
from keras_mdn.layers.domain_layer import (
    DomainLayer,
    DomainVariable,
    as_float32,
    build_input_shape,
    built_layer,
    check_affine,
    check_domain,
)
from keras_mdn.ops import decomposition
from keras_mdn.ops.routing import (
    canonicalize_domain,
    check_batch,
    is_uniform,
    per_example,
    select,
    take_domains,
)

_VARIANCES = ("glorot", "he")


class BaseFactorized(keras.layers.Layer, DomainLayer):
    """Shared logic of `FactorizedDense` and the factorised convolutions (private)."""

    def __init__(
        self,
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
        num_tasks=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        num_domains = _alias(num_domains, num_tasks, "num_domains", "num_tasks")
        if num_domains is None:
            raise ValueError("`num_domains` is required. Received: num_domains=None")
        if not _is_int(num_domains) or num_domains < 1:
            raise ValueError(
                f"`num_domains` must be a positive int. Received: num_domains={num_domains!r}"
            )
        self.num_domains = int(num_domains)
        self.factorization = factorizations.get(factorization, rank)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_variance = _validate_variance(kernel_variance)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.factor_regularizer = keras.regularizers.get(factor_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.factor_constraint = keras.constraints.get(factor_constraint)

    def _build_factors(self, in_dims, out_dims, fan_in, fan_out, units):
        if self.kernel_variance == "glorot":
            variance = 2.0 / (fan_in + fan_out)
        elif self.kernel_variance == "he":
            variance = 2.0 / fan_in
        else:
            variance = float(self.kernel_variance)
        self.factorization.build(self, in_dims, out_dims, self.num_domains, variance,
                                 self.factor_regularizer, self.factor_constraint)
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.num_domains, units),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )

    @property
    def num_tasks(self):
        """Alias of `num_domains` (the DMTRL paper's name)."""
        return self.num_domains

    def __call__(self, *args, task=None, **kwargs):
        # The alias `task=` becomes `domain=` before Keras records the call, so functional
        # graphs (fold, export) always see `domain`.
        if task is not None:
            kwargs["domain"] = _alias(kwargs.get("domain"), task, "domain", "task")
        return super().__call__(*args, **kwargs)

    def _domain(self, domain, inputs=None):
        """`(route, selection)` of the call's domain, canonicalised by routing.

        `route` is what the factorisation's plan reads: a Python int, or the routing
        `Selection` of a 0-d domain tensor or a domain vector (`selection` too; None for an
        int). An invalid traced id selects NaN domain codes, so its examples' outputs are NaN
        and its gradients reach no domain's codes or bias.
        """
        if domain is None and self.num_domains == 1:
            return 0, None
        domain = canonicalize_domain(domain, self.num_domains, name="domain")
        if isinstance(domain, int):
            return domain, None
        if inputs is not None:
            check_batch(domain, inputs)
        # With the inputs, a vector of another length gives NaN rows where no reshape
        # catches it (a length-1 vector in a TF graph of unknown batch would broadcast).
        selection = select(domain, self.num_domains, inputs)
        return selection, selection

    def _finish(self, outputs, route, selection):
        if self.bias is not None:
            if selection is None:
                bias = self.bias[route]
            else:
                bias = take_domains(self.bias, selection)
                if not is_uniform(selection.ids):
                    bias = per_example(bias, outputs)
            outputs = outputs + ops.cast(bias, outputs.dtype)
        if self.activation is not None:
            outputs = self.activation(outputs)
        if selection is None or not self._mask_after(outputs):
            return outputs
        # Routing's rule for ids known only at run time: NaN for the bad examples, never
        # another domain's answer. The NaN codes already give NaN before the activation; a
        # `where` after it too when the activation might map NaN to a number, or when no
        # weight is per domain. (A `where` over the whole output is skipped otherwise: in a
        # TF graph it costs as much as a small factorised layer.)
        valid = selection.valid
        if not is_uniform(selection.ids):
            valid = ops.reshape(valid, (-1,) + (1,) * (len(outputs.shape) - 1))
        return ops.where(valid, outputs, ops.cast(float("nan"), outputs.dtype))

    def _mask_after(self, outputs):
        linear = self.activation in (None, keras.activations.linear)
        return not linear or self.factorization.network_.task_operand is None

    def quantize(self, mode=None, type_check=True, config=None):
        """Refuses: the kernel is a product of factors, which Keras' quantizers do not cover.

        Raises a `ValueError` naming the layer, so `model.quantize(...)` never leaves a
        factorised layer silently in float next to quantized ones.
        """
        raise ValueError(
            f"{type(self).__name__} {self.name!r} cannot be quantized: its kernel is a product "
            f"of factors ({self.factorization.name}), which Keras' quantization does not "
            "cover. Quantize the other layers with `model.quantize(mode, filters=lambda layer: "
            "not hasattr(layer, 'factorization'))`, or fold a domain into plain layers first "
            "(`keras_mdn.surgery.fold_domain(model, domain, factorized='reconstruct')`). "
            f"Received: mode={mode!r}"
        )

    # --- public helpers ---

    def sharing_strength(self):
        """rho, the mean pairwise cosine similarity of the task codes (0: independent, 1: shared).

        LAF: the columns of S; Tucker: the rows of the task factor; TT: the task slices of the
        last core. A single-task layer returns nan.
        """
        from keras_mdn.sharing import sharing_strength

        return sharing_strength(self.factorization.task_factors())

    def stacked_kernel(self):
        """The reconstructed stacked kernel, shape `(*kernel_shape, num_domains)`."""
        return self.factorization.stacked()

    def task_kernel(self, domain):
        """Domain `domain`'s reconstructed kernel (the weight of the equivalent plain layer)."""
        return self.factorization.task_weight(self._domain(domain)[0])

    def get_config(self):
        return {
            **super().get_config(),
            "num_domains": self.num_domains,
            "factorization": keras.saving.serialize_keras_object(self.factorization),
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_variance": self.kernel_variance,
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "factor_regularizer": keras.regularizers.serialize(self.factor_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "factor_constraint": keras.constraints.serialize(self.factor_constraint),
        }

    @classmethod
    def _from_stacked(cls, stacked, biases, input_shape, factorization, rank, eps,
                      eps_mode=None, **kwargs):
        """A built layer whose factors decompose `stacked` `(*in, *out, T)` (NumPy)."""
        if isinstance(rank, float) and 0.0 < rank < 1.0 and eps is None:
            rank, eps = None, rank  # the DMTRL convention: values below 1 are an error bound
        if eps_mode is not None:
            if eps is None:
                raise ValueError(
                    "`eps_mode` names the meaning of `eps`: pass `eps` too. "
                    f"Received: eps=None, eps_mode={eps_mode!r}"
                )
            decomposition.validate_eps_mode(eps_mode)  # the error names `eps_mode`
            eps = decomposition.Tolerance(getattr(eps, "eps", eps), eps_mode)
        eps = decomposition.validate_eps(eps)
        kind = factorizations.get(factorization, rank)
        layer = cls(factorization=kind, **kwargs)
        in_dims, out_dims = layer._factor_dims(input_shape)
        num_domains = stacked.shape[-1]
        if kind.rank is None and eps is None:
            ranks = tuple(kind.rank_limits(in_dims, out_dims, num_domains))
        else:
            ranks = kind.resolve_ranks(in_dims, out_dims, num_domains, allow_none=True)
        ranks, arrays = kind.decompose(np.asarray(stacked, dtype=np.float64), in_dims, out_dims,
                                       num_domains, ranks, eps)
        layer.factorization.rank = tuple(int(r) for r in ranks)
        layer.build(input_shape)
        layer.factorization.set_arrays(arrays)
        if layer.bias is not None:
            layer.bias.assign(np.asarray(biases, dtype=layer.bias.dtype))
        return layer

    # === Domain-layer interface (keras_mdn.layers.domain_layer) ===

    factorized = True
    domain_argument_aliases = ("task",)

    def domain_variables(self):
        per_domain = {}
        network = self.factorization.network_
        index = network.task_operand
        if index is not None:
            variable = self.factorization.variables[index]
            per_domain[id(variable)] = network.labels[index].index(network.task_label)
        if self.bias is not None and self.num_domains > 1:
            per_domain[id(self.bias)] = 0
        return [
            DomainVariable.rows(v, self.num_domains, axis=per_domain[id(v)])
            if id(v) in per_domain
            else DomainVariable.shared_weight(v)
            for v in self.weights
        ]

    def fold(self, domain):
        """The plain `Dense` / `Conv*D` holding the domain's reconstructed kernel."""
        domain = check_domain(domain, self.num_domains)
        cls, config = self._plain_layer()
        kernel = self.task_kernel(domain)
        config = {**config, "activation": keras.activations.serialize(self.activation),
                  "use_bias": self.bias is not None, "name": self.name}
        weights = [kernel] if self.bias is None else [kernel, self.bias[domain]]
        return [built_layer(cls, config, build_input_shape(self), weights)]

    def merges_affine(self):
        return self.activation in (None, keras.activations.linear)

    def swappable_tensors(self, domain, affine=None):
        """`kernel` (the domain's reconstructed kernel) and `bias`, a following affine merged."""
        domain = check_domain(domain, self.num_domains)
        affine = check_affine(self, affine)
        kernel = as_float32(self.task_kernel(domain))
        units = kernel.shape[-1]
        bias = np.zeros((units,), "float32") if self.bias is None else as_float32(
            self.bias[domain])
        if affine is not None:
            kernel, bias = kernel * affine[0], bias * affine[0] + affine[1]
        return {"kernel": kernel, "bias": bias}

    def swappable_call(self, inputs, tensors):
        outputs = self._plain_call(inputs, tensors["kernel"]) + tensors["bias"]
        return self.activation(outputs) if self.activation is not None else outputs


def stack_layer_weights(layers, kind, min_layers):
    """Kernels stacked on a last task axis, biases `(T, units)`, and the first layer's config.

    Checks that every layer is a built `kind` with the same kernel shape.
    """
    layers = list(layers)
    if len(layers) < min_layers:
        raise ValueError(
            f"`layers` needs at least {min_layers} layers (one per task). "
            f"Received: {len(layers)} layer(s)"
        )
    for index, layer in enumerate(layers):
        if not isinstance(layer, kind) or not layer.built:
            raise ValueError(
                f"`layers[{index}]` must be a built keras.layers.{kind.__name__}. "
                f"Received: layers[{index}]={layer!r}"
            )
    shapes = [tuple(layer.kernel.shape) for layer in layers]
    if len(set(shapes)) > 1:
        raise ValueError(f"All layers must have the same kernel shape. Received: shapes={shapes}")
    kernels = np.stack([ops.convert_to_numpy(layer.kernel) for layer in layers], axis=-1)
    units = shapes[0][-1]
    biases = np.stack([
        ops.convert_to_numpy(layer.bias) if layer.use_bias else np.zeros(units)
        for layer in layers
    ])
    return kernels, biases, layers[0]


def _alias(value, alias_value, name, alias):
    """`value`, or `alias_value` given under the alias name (never both)."""
    if alias_value is None:
        return value
    if value is not None:
        raise ValueError(
            f"Pass `{name}` or its alias `{alias}`, not both. "
            f"Received: {name}={value!r}, {alias}={alias_value!r}"
        )
    return alias_value


def _validate_variance(value):
    if isinstance(value, str) and value in _VARIANCES:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise ValueError(
        f"`kernel_variance` must be one of {_VARIANCES} or a positive float. "
        f"Received: kernel_variance={value!r}"
    )


def fans(in_dims, out_dims, receptive_field=1):
    """Keras' fan-in / fan-out of a kernel `(*receptive, in, out)`."""
    return receptive_field * in_dims[-1], receptive_field * math.prod(out_dims)
