"""`model.quantize()` through the domain layers, checked against the float model and against
Keras' own quantized `Dense` with the same kernel."""

import warnings

import keras
import numpy as np
import pytest

from keras_mdn.layers import DomainBatchNormalization, DomainHead, ResidualAdapter
from tests.helpers import save_and_load, to_numpy

MODES = ("int8", "float8")
NUM_DOMAINS = 3
# Largest error allowed against the float model, relative to the largest output: int8 weights
# and activations (7 bits) / float8 e4m3 (3 mantissa bits) over 16 products.
TOLERANCE = {"int8": 0.02, "float8": 0.1}


def _shared(kind):
    if kind == "dense":
        return keras.layers.Dense(8, activation="relu")
    return keras.layers.EinsumDense("abc,cd->abd", (5, 8), bias_axes="d", activation="relu")


def _quantize(model, mode):
    """`model.quantize(mode)`, skipping where this Keras/backend lacks the mode."""
    with warnings.catch_warnings():
        # Keras warns for each layer it has no quantization for (inputs, batch norms, heads).
        warnings.simplefilter("ignore")
        try:
            model.quantize(mode)
        except NotImplementedError as error:  # pragma: no cover - depends on Keras/backend
            pytest.skip(f"Keras {keras.__version__} has no {mode} on this backend: {error}")


def _data(batch=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, 5, 16)).astype("float32")
    return x, (np.arange(batch) % NUM_DOMAINS).astype("int32")


def _adapter_model(kind, mode="parallel"):
    x = keras.Input((5, 16))
    domain = keras.Input((), dtype="int32")
    adapter = ResidualAdapter(
        _shared(kind), NUM_DOMAINS, mode=mode, adapter_initializer="random_normal"
    )
    return keras.Model([x, domain], adapter(x, domain=domain)), adapter


@pytest.mark.parametrize("kind", ["dense", "einsum"])
@pytest.mark.parametrize("mode", MODES)
def test_quantized_adapter_equals_keras_quantized_layer_plus_adapter(kind, mode):
    model, adapter = _adapter_model(kind)
    x, domain = _data()
    float_outputs = to_numpy(model([x, domain]))

    # Keras' own quantized layer with the same weights, without its activation.
    plain = _shared(kind)
    plain.activation = None
    reference = keras.Sequential([keras.Input((5, 16)), plain])
    plain.set_weights(adapter.layer.get_weights())
    adapters = np.stack([to_numpy(adapter.adapter_matrix(d)) for d in range(NUM_DOMAINS)])

    _quantize(model, mode)
    _quantize(reference, mode)
    assert adapter.layer.quantization_mode == mode
    base = to_numpy(reference(x))
    expected = np.maximum(base + np.einsum("bpc,bcd->bpd", x, adapters[domain]), 0.0)
    actual = to_numpy(model([x, domain]))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)

    error = np.abs(actual - float_outputs).max()
    assert 0.0 < error <= TOLERANCE[mode] * np.abs(float_outputs).max(), error


@pytest.mark.parametrize("adapter_mode", ["parallel", "series"])
@pytest.mark.parametrize("mode", MODES)
def test_quantized_domain_model_close_to_float_and_saved(adapter_mode, mode, tmp_path):
    x_in = keras.Input((5, 16))
    domain = keras.Input((), dtype="int32")
    y = ResidualAdapter(
        _shared("dense"), NUM_DOMAINS, mode=adapter_mode, adapter_initializer="random_normal"
    )(x_in, domain=domain)
    y = DomainBatchNormalization(NUM_DOMAINS)(y, domain=domain)
    y = keras.layers.GlobalAveragePooling1D()(y)
    logits = DomainHead([4, 2, 3])(y, domain=domain)
    model = keras.Model([x_in, domain], logits)
    x, d = _data()
    float_logits = to_numpy(model([x, d]))

    _quantize(model, mode)
    logits = to_numpy(model([x, d]))
    valid = float_logits > -1e8
    error = np.abs(logits - float_logits)[valid].max()
    assert 0.0 < error <= TOLERANCE[mode] * np.abs(float_logits[valid]).max(), error
    np.testing.assert_array_equal(logits[~valid], float_logits[~valid])

    loaded = save_and_load(model, tmp_path)
    np.testing.assert_array_equal(to_numpy(loaded([x, d])), logits)
    inner = [layer for layer in loaded._flatten_layers() if isinstance(layer, ResidualAdapter)]
    assert inner[0].layer.quantization_mode == mode


def test_quantized_adapter_trains():
    model, adapter = _adapter_model("dense")
    _quantize(model, "int8")
    x, domain = _data()
    before = to_numpy(adapter.adapter_kernel)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    history = model.fit([x, domain], np.zeros((6, 5, 8), "float32"), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(to_numpy(adapter.adapter_kernel), before)


def test_layers_keras_cannot_quantize_are_left_exact():
    # Keras quantizes no Conv: a conv adapter, batch norms and heads stay float, unchanged.
    x_in = keras.Input((5, 16))
    domain = keras.Input((), dtype="int32")
    y = ResidualAdapter(keras.layers.Conv1D(8, 3, padding="same"), NUM_DOMAINS,
                        adapter_initializer="random_normal")(x_in, domain=domain)
    y = DomainBatchNormalization(NUM_DOMAINS)(y, domain=domain)
    logits = DomainHead(4, num_domains=NUM_DOMAINS)(keras.layers.Flatten()(y), domain=domain)
    model = keras.Model([x_in, domain], logits)
    x, d = _data()
    expected = to_numpy(model([x, d]))
    with pytest.warns(UserWarning, match="DomainBatchNormalization"):
        model.quantize("int8")
    np.testing.assert_array_equal(to_numpy(model([x, d])), expected)


def test_folding_a_quantized_adapter_raises():
    model, adapter = _adapter_model("dense")
    _quantize(model, "int8")
    with pytest.raises(ValueError, match="quantization_mode='int8'"):
        adapter.folded_kernel(0)
