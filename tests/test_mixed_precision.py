"""Mixed precision (`mixed_float16`, `mixed_bfloat16`; global policy and per-layer `dtype=`)
through the domain layers and a resnet26, on every backend."""

import keras
import numpy as np
import pytest

from keras_mdn.layers import DomainBatchNormalization, DomainHead, ResidualAdapter
from tests.helpers import dtype_policy, save_and_load, to_numpy

POLICIES = ("mixed_float16", "mixed_bfloat16")
COMPUTE = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
# Outputs of order 1 against the float32 model: 10 (float16) and 7 (bfloat16) mantissa bits,
# a few roundings deep.
TOLERANCE = {"mixed_float16": 1e-2, "mixed_bfloat16": 6e-2}
NUM_DOMAINS = 3

# name -> (make(dtype) -> layer, input shape without the batch)
LAYERS = {
    "batch_norm": (lambda dtype: DomainBatchNormalization(NUM_DOMAINS, dtype=dtype), (4, 4, 3)),
    "adapter_parallel": (
        lambda dtype: ResidualAdapter(
            keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
            NUM_DOMAINS,
            dtype=dtype,
        ),
        (4, 4, 3),
    ),
    "adapter_series": (
        lambda dtype: ResidualAdapter(
            keras.layers.Conv2D(4, 3, padding="same"), NUM_DOMAINS, mode="series", dtype=dtype
        ),
        (4, 4, 3),
    ),
    "adapter_dense_low_rank": (
        lambda dtype: ResidualAdapter(keras.layers.Dense(5), NUM_DOMAINS, rank=2, dtype=dtype),
        (6,),
    ),
    "head": (lambda dtype: DomainHead([4, 2, 3], dtype=dtype), (6,)),
}


def _model(make, shape, dtype):
    """`layer(x, domain)` pooled to `(batch, k)` and cast to float32 (as Keras advises)."""
    x = keras.Input(shape)
    domain = keras.Input((), dtype="int32")
    layer = make(dtype)
    y = layer(x, domain=domain)
    if len(shape) == 3:
        y = keras.layers.GlobalAveragePooling2D()(y)
    y = keras.layers.Activation("linear", dtype="float32")(y)
    return keras.Model([x, domain], y), layer


def _randomize(model, seed=0):
    """Non-trivial weights for every variable (positive, so variances stay valid)."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                       for w in model.get_weights()])


def _data(shape, batch=6):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(batch, *shape)).astype("float32")
    domain = (np.arange(batch) % NUM_DOMAINS).astype("int32")
    return x, domain


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_under_mixed_precision(name, policy, scope, tmp_path):
    make, shape = LAYERS[name]
    with dtype_policy("float32"):
        reference, _ = _model(make, shape, "float32")
    with dtype_policy(policy if scope == "global" else "float32"):
        model, layer = _model(make, shape, None if scope == "global" else policy)
    _randomize(model)
    reference.set_weights(model.get_weights())
    x, domain = _data(shape)

    assert layer.dtype_policy.name == policy
    assert layer.compute_dtype == COMPUTE[policy]
    assert {keras.backend.standardize_dtype(w.dtype) for w in layer.weights} == {"float32"}
    raw = layer(x, domain=domain, training=False)
    assert keras.backend.standardize_dtype(raw.dtype) == COMPUTE[policy]

    expected = to_numpy(reference([x, domain], training=False))
    actual = to_numpy(model([x, domain], training=False))
    valid = expected > -1e8  # a head's padded logits differ by dtype (-1e9 / -3e4)
    np.testing.assert_allclose(actual[valid], expected[valid], rtol=TOLERANCE[policy],
                               atol=TOLERANCE[policy] * np.abs(expected[valid]).max())
    assert np.all(actual[~valid] <= -1e4)

    # Training: finite loss and weights; statistics stay float32 and move.
    statistics = [w for w in layer.non_trainable_weights]
    before = [to_numpy(w) for w in statistics]
    loss = (keras.losses.SparseCategoricalCrossentropy(from_logits=True) if name == "head"
            else "mse")
    target = domain % 2 if name == "head" else np.zeros((len(x), actual.shape[-1]), "float32")
    model.compile(keras.optimizers.SGD(0.01), loss)
    history = model.fit([x, domain], target, batch_size=3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(np.all(np.isfinite(to_numpy(w))) for w in model.weights)
    for w, old in zip(statistics, before, strict=True):
        assert keras.backend.standardize_dtype(w.dtype) == "float32"
        assert not np.allclose(to_numpy(w), old)

    # `.keras` keeps the policy, even when loaded under a float32 global policy.
    with dtype_policy("float32"):
        loaded = save_and_load(model, tmp_path)
    loaded_layer = loaded.get_layer(layer.name)
    assert loaded_layer.dtype_policy.name == policy
    np.testing.assert_array_equal(
        to_numpy(loaded([x, domain], training=False)), to_numpy(model([x, domain], training=False))
    )


def test_series_adapter_norm_follows_the_adapter_policy():
    adapter = ResidualAdapter(
        keras.layers.Conv2D(4, 3, padding="same"), NUM_DOMAINS, mode="series",
        dtype="mixed_bfloat16",
    )
    assert adapter.adapter_norm.dtype_policy.name == "mixed_bfloat16"


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["parallel"])
def test_resnet26_trains_one_epoch_on_digits_under_mixed_bfloat16(adapter):
    pytest.importorskip("sklearn")
    from keras_mdn.datasets import load_digits_domains
    from keras_mdn.models import resnet26

    data = load_digits_domains(image_size=8)
    x, domain, y = data.as_numpy("train")
    with dtype_policy("mixed_bfloat16"):
        model = resnet26(list(data.num_classes), adapter=adapter, input_shape=x.shape[1:],
                         width_factor=0.125)
    assert {keras.backend.standardize_dtype(w.dtype) for w in model.weights} == {"float32"}
    logits = model([x[:4], domain[:4]], training=False)
    assert keras.backend.standardize_dtype(logits.dtype) == "bfloat16"
    model.compile(
        keras.optimizers.SGD(0.1, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,  # XLA / jax.jit compilation costs more than this epoch on a CPU
    )
    losses = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"]))
    )
    model.fit([x, domain], y, batch_size=256, epochs=1, shuffle=True, verbose=0,
              callbacks=[record])
    assert len(losses) == -(-len(x) // 256)
    assert np.all(np.isfinite(losses))
    assert all(np.all(np.isfinite(to_numpy(w))) for w in model.weights)
    # Keras logs the epoch's running mean: it falls when the later batches are learnt.
    assert losses[-1] < losses[0], losses
