"""t3f interop: TT-matrices and `t3f.nn.KerasDense` models into Keras 3 `FactorizedDense`.

t3f (TensorFlow only) stores a TT-matrix `N x M` as cores `(r_{k-1}, n_k, m_k, r_k)`, exactly
the cores of the `"tt_matrix"` factorisation, with the same row-major mode order, so the
conversion copies cores and checks shapes. Its Keras layer `t3f.nn.KerasDense` has no
`get_config` (t3f#212), does not save, and its initializers fail on NumPy >= 1.24; the
migration path is `convert_model`, which rebuilds a model with every `KerasDense` replaced by a
`FactorizedDense` holding the same cores and bias (outputs equal), savable as `.keras`.

Only this module imports t3f (`import keras_mdn` stays free of it).
"""

import math

import keras
import numpy as np

from keras_mdn.factorizations import TTMatrix
from keras_mdn.layers.factorized_dense import FactorizedDense


def from_t3f(tt_matrix, bias=None, activation=None, **kwargs):
    """A single-domain `FactorizedDense` computing `x @ tt_matrix (+ bias)`.

    Args:
        tt_matrix: a `t3f.TensorTrain` TT-matrix (not a batch), or its list of cores as arrays
            `(r_{k-1}, n_k, m_k, r_k)` (e.g. read from a saved checkpoint).
        bias: optional bias of shape `(M,)`. Defaults to None (no bias).
        activation: activation function. Defaults to None.
        **kwargs: other `FactorizedDense` arguments (e.g. `name`, `batch_size_hint`).

    Returns:
        A built `FactorizedDense` with `factorization=TTMatrix(...)`.
    """
    cores = _cores(tt_matrix)
    input_modes = tuple(int(core.shape[1]) for core in cores)
    output_modes = tuple(int(core.shape[2]) for core in cores)
    ranks = tuple(int(core.shape[-1]) for core in cores[:-1])
    units = math.prod(output_modes)
    if bias is not None:
        bias = np.asarray(bias, dtype="float32")
        if bias.shape != (units,):
            raise ValueError(
                f"`bias` must have shape ({units},) for a TT-matrix with output modes "
                f"{output_modes}. Received: bias with shape={bias.shape}"
            )
    kind = TTMatrix(rank=ranks, input_modes=input_modes, output_modes=output_modes)
    layer = FactorizedDense(units, num_domains=1, factorization=kind, activation=activation,
                            use_bias=bias is not None, **kwargs)
    layer.build((None, math.prod(input_modes)))
    layer.factorization.set_arrays(cores)
    if bias is not None:
        layer.bias.assign(bias[None])
    return layer


def to_t3f(layer, domain=None):
    """Domain `domain`'s weight of a TT-matrix `FactorizedDense` as a `t3f.TensorTrain`.

    The cores are a snapshot (constants). For a multi-domain layer the domain core is folded
    into the last matrix core.

    Args:
        layer: a built `FactorizedDense` with the `"tt_matrix"` factorisation.
        domain: the domain (required when `num_domains > 1`). Defaults to None.
    """
    import t3f
    import tensorflow as tf

    if not isinstance(layer, FactorizedDense) or not isinstance(layer.factorization, TTMatrix):
        raise ValueError(
            "`to_t3f` needs a FactorizedDense with the 'tt_matrix' factorization. "
            f"Received: layer={layer!r}"
        )
    if not layer.built:
        raise ValueError(f"`to_t3f` needs a built layer. Received: layer={layer.name!r}")
    cores = [keras.ops.convert_to_numpy(v) for v in layer.factorization.variables]
    if layer.num_domains > 1:
        if domain is None:
            raise ValueError(
                f"`domain` is required: layer {layer.name!r} has num_domains="
                f"{layer.num_domains}. Received: domain=None"
            )
        if isinstance(domain, bool) or not isinstance(domain, (int, np.integer)) or not (
                0 <= domain < layer.num_domains):
            raise ValueError(
                f"`domain` must be an int in [0, {layer.num_domains}). Received: domain={domain!r}"
            )
        task_core = cores.pop()
        cores[-1] = np.tensordot(cores[-1], task_core[:, int(domain)], axes=[[3], [0]])[
            ..., None]
    return t3f.TensorTrain([tf.constant(core) for core in cores])


def from_keras_dense(t3f_layer, **kwargs):
    """A `FactorizedDense` with the cores, bias and activation of a `t3f.nn.KerasDense`."""
    import t3f

    if not isinstance(t3f_layer, t3f.nn.KerasDense):
        raise ValueError(
            f"`from_keras_dense` needs a t3f.nn.KerasDense. Received: {t3f_layer!r}"
        )
    bias = None
    if t3f_layer.use_bias:
        bias = keras.ops.convert_to_numpy(t3f_layer.b)
    kwargs.setdefault("name", t3f_layer.name)
    return from_t3f(t3f_layer.matrix, bias=bias, activation=t3f_layer.activation, **kwargs)


def convert_model(model):
    """A Keras 3 model equal to `model` with every `t3f.nn.KerasDense` as a `FactorizedDense`.

    Other layers are rebuilt from their configs with the same weights. A `Sequential` (Keras 2
    or 3) is rebuilt layer by layer; a Keras 3 functional model is cloned.

    Args:
        model: a built model containing `t3f.nn.KerasDense` layers.

    Returns:
        A built Keras 3 model; it saves to `.keras` and loads with no `custom_objects`.
    """
    import t3f

    def convert(layer):
        if isinstance(layer, t3f.nn.KerasDense):
            return from_keras_dense(layer)
        cls = type(layer)
        if not isinstance(layer, keras.layers.Layer):  # a Keras 2 layer: its Keras 3 twin
            cls = getattr(keras.layers, cls.__name__, None)
            if cls is None:
                raise ValueError(
                    f"No Keras 3 layer matches layer {layer.name!r} of type "
                    f"{type(layer).__name__}. Received: model={model.name!r}"
                )
        return cls.from_config(layer.get_config())

    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if isinstance(model, keras.Model) and not isinstance(model, keras.Sequential):
        converted = keras.models.clone_model(model, clone_function=convert)
    else:
        converted = keras.Sequential([keras.Input(tuple(model.input_shape[1:]))]
                                     + [convert(layer) for layer in layers], name=model.name)
    new_layers = [layer for layer in converted.layers if type(layer).__name__ != "InputLayer"]
    for old, new in zip(layers, new_layers):
        if not isinstance(old, t3f.nn.KerasDense):
            new.set_weights(old.get_weights())
    return converted


def _cores(tt_matrix):
    """The cores of a t3f TT-matrix (or a list of core arrays) as checked float32 arrays."""
    if isinstance(tt_matrix, (list, tuple)):
        cores = [np.asarray(keras.ops.convert_to_numpy(core), dtype="float32")
                 for core in tt_matrix]
    else:
        import t3f

        if isinstance(tt_matrix, t3f.TensorTrainBatch) or not isinstance(
                tt_matrix, t3f.TensorTrain) or not tt_matrix.is_tt_matrix():
            raise ValueError(
                "`tt_matrix` must be a t3f.TensorTrain TT-matrix (not a batch, not a TT-tensor) "
                f"or a list of cores. Received: tt_matrix={tt_matrix!r}"
            )
        cores = [np.asarray(keras.ops.convert_to_numpy(core), dtype="float32")
                 for core in tt_matrix.tt_cores]
    shapes = [tuple(core.shape) for core in cores]
    valid = len(cores) >= 2 and all(len(shape) == 4 for shape in shapes) and (
        shapes[0][0] == 1 and shapes[-1][-1] == 1
        and all(a[-1] == b[0] for a, b in zip(shapes, shapes[1:])))
    if not valid:
        raise ValueError(
            "`tt_matrix` must have at least 2 cores of shape (r_{k-1}, n_k, m_k, r_k) with "
            f"r_0 = r_d = 1 and matching bonds. Received: core shapes={shapes}"
        )
    return cores
