import keras
import numpy as np
import pytest

from keras_mdn import DomainBatchNormalization, ResidualAdapter
from tests.helpers import (
    assert_close,
    np_conv,
    rng,
    save_and_load,
    skip_unless_tensorflow,
    to_numpy,
)

T = 3


def _randomize(layer, seed=1):
    """Random adapters (and series batch-norm statistics) so references are not trivial."""
    r = rng(seed)
    for weight in layer.weights:
        if "adapter" in weight.path:
            value = r.normal(size=weight.shape) * 0.3
            if "variance" in weight.path:
                value = np.abs(value) + 0.5
            weight.assign(value.astype("float32"))


def _reference(layer, x, domain):
    """Numpy output of `layer` for one domain at inference."""
    conv = layer.layer
    kernel, bias = to_numpy(conv.kernel), to_numpy(conv.bias)
    adapter = to_numpy(layer.adapter_kernel)[domain]
    if layer.rank is not None:
        adapter = to_numpy(layer.adapter_projection) @ adapter
    base = np_conv(x, kernel, conv.strides, conv.padding, conv.dilation_rate) + bias
    if layer.mode == "parallel":
        # The adapter reads the input under one kernel tap: the same conv with a kernel that
        # is zero except the adapter at that tap. At stride 1 and an odd kernel this is x @ A.
        tap_kernel = np.zeros_like(kernel)
        tap_kernel[layer.tap] = adapter
        return base + np_conv(x, tap_kernel, conv.strides, conv.padding, conv.dilation_rate)
    norm = layer.adapter_norm
    mean, var = to_numpy(norm.moving_mean)[domain], to_numpy(norm.moving_variance)[domain]
    gamma, beta = to_numpy(norm.gamma)[domain], to_numpy(norm.beta)[domain]
    normalized = (base - mean) / np.sqrt(var + norm.epsilon) * gamma + beta
    return base + normalized @ adapter


CASES = [
    dict(mode="parallel", strides=1, padding="same", size=8),
    dict(mode="parallel", strides=2, padding="same", size=8),
    dict(mode="parallel", strides=2, padding="same", size=9),
    dict(mode="parallel", strides=2, padding="valid", size=9),
    dict(mode="parallel", strides=1, padding="same", size=8, rank=2),
    dict(mode="series", strides=1, padding="same", size=8),
    dict(mode="series", strides=2, padding="same", size=8, rank=2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_matches_numpy_reference_for_every_domain(case):
    x = rng(0).normal(size=(4, case["size"], case["size"], 3)).astype("float32")
    conv = keras.layers.Conv2D(5, 3, strides=case["strides"], padding=case["padding"])
    layer = ResidualAdapter(conv, num_domains=T, mode=case["mode"], rank=case.get("rank"))
    layer(x, domain=0)
    conv.bias.assign(rng(2).normal(size=5).astype("float32"))
    _randomize(layer)
    expected = {d: _reference(layer, x, d) for d in range(T)}
    for d in range(T):
        assert_close(layer(x, domain=d), expected[d], atol=1e-4)
        assert_close(layer(x, domain=keras.ops.convert_to_tensor(d)), expected[d], atol=1e-4)
        assert_close(layer(x, domain=np.full((4,), d)), expected[d], atol=1e-4)
    mixed = np.array([2, 0, 1, 2])
    stacked = np.stack([expected[d][i] for i, d in enumerate(mixed)])
    assert_close(layer(x, domain=mixed), stacked, atol=1e-4)
    if case["mode"] == "parallel":
        # Training on one domain merges its adapter into the kernel tap: the same outputs.
        for d in (0, keras.ops.convert_to_tensor(2)):
            d_int = int(to_numpy(d))
            assert_close(layer(x, domain=d, training=True), expected[d_int], atol=1e-4)
        with pytest.raises(ValueError, match="domain=7"):
            layer(x, domain=keras.ops.convert_to_tensor(7), training=True)


def test_parallel_stride_one_is_the_papers_formula():
    """y = f * x + alpha_t x: the adapter reads the conv's input at the same position."""
    x = rng(0).normal(size=(2, 6, 6, 4)).astype("float32")
    layer = ResidualAdapter(keras.layers.Conv2D(3, 3, padding="same"), T)
    layer(x, domain=0)
    _randomize(layer)
    adapter = to_numpy(layer.adapter_kernel)[1]
    expected = to_numpy(layer.layer(x)) + x @ adapter
    assert_close(layer(x, domain=1), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["parallel", "series"])
def test_zero_initialised_adapters_reproduce_the_wrapped_conv(mode):
    x = rng(0).normal(size=(3, 8, 8, 4)).astype("float32")
    conv = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu")
    expected = to_numpy(conv(x))
    layer = ResidualAdapter(conv, T, mode=mode)
    for domain in [0, 2, np.array([0, 1, 2])]:
        np.testing.assert_array_equal(to_numpy(layer(x, domain=domain)), expected)


@pytest.mark.parametrize("mode", ["parallel", "series"])
def test_dense_einsum_dense_and_conv1d(mode):
    r = rng(0)
    x2 = r.normal(size=(4, 5)).astype("float32")
    dense = ResidualAdapter(keras.layers.Dense(3), T, mode=mode)
    dense(x2, domain=0)
    _randomize(dense)
    a = to_numpy(dense.adapter_kernel)[1]
    base = x2 @ to_numpy(dense.layer.kernel) + to_numpy(dense.layer.bias)
    if mode == "parallel":
        assert_close(dense(x2, domain=1), base + x2 @ a)
    else:
        assert dense(x2, domain=1).shape == (4, 3)

    x3 = r.normal(size=(2, 7, 5)).astype("float32")
    einsum = ResidualAdapter(
        keras.layers.EinsumDense("abc,cd->abd", (7, 4), bias_axes="d"), T, mode=mode
    )
    y = einsum(x3, domain=np.array([0, 2]))
    assert y.shape == (2, 7, 4)

    conv1d = ResidualAdapter(keras.layers.Conv1D(4, 3, padding="causal"), T, mode=mode)
    conv1d(x3, domain=0)
    _randomize(conv1d)
    if mode == "parallel":
        kernel = np.zeros((3, 5, 4), "float32")
        kernel[conv1d.tap] = to_numpy(conv1d.adapter_kernel)[2]
        expected = np_conv(x3, to_numpy(conv1d.layer.kernel), 1, "causal") + np_conv(
            x3, kernel, 1, "causal"
        )
        assert_close(conv1d(x3, domain=2), expected + to_numpy(conv1d.layer.bias), atol=1e-5)


def test_functional_model_with_domain_input_and_frozen_base_trains_only_adapters():
    x = rng(0).normal(size=(6, 8, 8, 3)).astype("float32")
    domain = np.array([0, 2, 0, 2, 2, 0], "int32")
    labels = rng(1).normal(size=(6, 8, 8, 4)).astype("float32")
    image_in = keras.Input((8, 8, 3), name="image")
    domain_in = keras.Input((), dtype="int32", name="domain")
    conv = keras.layers.Conv2D(4, 3, padding="same")
    adapter = ResidualAdapter(conv, T, mode="parallel", freeze_base=True)
    bn = DomainBatchNormalization(T)
    out = bn(adapter(image_in, domain_in), domain_in)
    model = keras.Model([image_in, domain_in], out)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = {w.path: to_numpy(w).copy() for w in model.weights}
    model.fit([x, domain], labels, epochs=1, batch_size=6, verbose=0)
    after = {w.path: to_numpy(w) for w in model.weights}
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    kernel_path = adapter.adapter_kernel.path
    assert conv.kernel.path not in changed and conv.bias.path not in changed
    assert kernel_path in changed
    # Only the domains present in the batch move (domain 1 is absent).
    for path in [kernel_path, bn.gamma.path, bn.beta.path, bn.moving_mean.path]:
        delta = np.abs(after[path] - before[path]).reshape(T, -1).max(axis=1)
        assert delta[1] == 0 and delta[0] > 0 and delta[2] > 0, path


def test_save_load_and_config_round_trip(tmp_path):
    x = rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    image_in = keras.Input((8, 8, 3), name="image")
    domain_in = keras.Input((), dtype="int32", name="domain")
    series = ResidualAdapter(keras.layers.Conv2D(4, 3, padding="same"), T, mode="series")
    parallel = ResidualAdapter(
        keras.layers.Conv2D(5, 3, strides=2, padding="same"), T, rank=2, freeze_base=True
    )
    out = parallel(series(image_in, domain_in), domain_in)
    model = keras.Model([image_in, domain_in], out)
    _randomize(series)
    _randomize(parallel)
    loaded = save_and_load(model, tmp_path)
    for d in range(T):
        domains = np.full((4,), d, "int32")
        assert_close(
            loaded.predict([x, domains], verbose=0),
            model.predict([x, domains], verbose=0),
            atol=0,
            rtol=0,
        )
    assert loaded.layers[-1].layer.trainable is False
    config = parallel.get_config()
    clone = ResidualAdapter.from_config(config)
    assert clone.rank == 2 and clone.mode == "parallel" and clone.num_domains == T
    assert isinstance(clone.layer, keras.layers.Conv2D) and clone.layer.strides == (2, 2)


def test_weight_counts_and_names():
    layer = ResidualAdapter(keras.layers.Conv2D(8, 3, use_bias=False), 4)
    layer.build((None, 6, 6, 5))
    assert tuple(layer.adapter_kernel.shape) == (4, 5, 8)
    low = ResidualAdapter(keras.layers.Conv2D(8, 3, use_bias=False), 4, rank=2)
    low.build((None, 6, 6, 5))
    assert tuple(low.adapter_projection.shape) == (5, 2)
    assert tuple(low.adapter_kernel.shape) == (4, 2, 8)
    assert low.count_params() == 3 * 3 * 5 * 8 + 5 * 2 + 4 * 2 * 8
    # The stacked adapters (C_in, T * C_out) can have rank up to C_in, above C_out.
    wide = ResidualAdapter(keras.layers.Conv2D(2, 3, use_bias=False), 4, rank=5)
    wide.build((None, 6, 6, 5))
    assert tuple(wide.adapter_kernel.shape) == (4, 5, 2)


def test_bad_input_gets_clear_errors():
    conv = keras.layers.Conv2D(4, 3)
    with pytest.raises(ValueError, match="mode='serial'"):
        ResidualAdapter(conv, T, mode="serial")
    with pytest.raises(ValueError, match="rank=0"):
        ResidualAdapter(conv, T, rank=0)
    with pytest.raises(ValueError, match="rank=9"):
        ResidualAdapter(keras.layers.Conv2D(4, 3), T, rank=9).build((None, 8, 8, 3))
    with pytest.raises(TypeError, match="layer="):
        ResidualAdapter(keras.layers.DepthwiseConv2D(3), T)
    with pytest.raises(TypeError, match="layer="):
        ResidualAdapter(keras.layers.ReLU(), T)
    with pytest.raises(ValueError, match="num_domains=0"):
        ResidualAdapter(conv, 0)
    layer = ResidualAdapter(keras.layers.Conv2D(4, 3, padding="same"), T)
    x = np.zeros((2, 8, 8, 3), "float32")
    with pytest.raises(ValueError, match="rank 4"):
        layer(np.zeros((2, 8, 3), "float32"), domain=0)
    with pytest.raises(ValueError, match="domain=3"):
        layer(x, domain=3)
    with pytest.raises(ValueError, match="domain=-1"):
        layer(x, domain=np.array([0, -1]))
    with pytest.raises(TypeError, match="domain"):
        layer(x, domain=1.0)


def test_series_norm_takes_the_authors_settings_and_arguments():
    conv = keras.layers.Conv2D(4, 3, padding="same")
    series = ResidualAdapter(conv, T, mode="series")
    assert series.adapter_norm.epsilon == 1e-5 and series.adapter_norm.momentum == 0.9
    custom = ResidualAdapter(
        keras.layers.Conv2D(4, 3, padding="same"),
        T,
        mode="series",
        norm_epsilon=1e-3,
        norm_momentum=0.99,
    )
    clone = ResidualAdapter.from_config(custom.get_config())
    assert clone.adapter_norm.epsilon == 1e-3 and clone.adapter_norm.momentum == 0.99
    with pytest.raises(ValueError, match="norm_epsilon=nan"):
        ResidualAdapter(conv, T, mode="series", norm_epsilon=float("nan"))
    with pytest.raises(ValueError, match="norm_momentum=1.5"):
        ResidualAdapter(conv, T, mode="series", norm_momentum=1.5)


def test_input_specs_catch_changed_channels_and_strided_sizes():
    layer = ResidualAdapter(keras.layers.Conv2D(4, 3, strides=2, padding="same"), T)
    layer(np.zeros((2, 8, 8, 3), "float32"), domain=0)
    with pytest.raises(ValueError, match="expected shape=.*8, 8, 3"):
        layer(np.zeros((2, 9, 9, 3), "float32"), domain=0)  # another tap at odd sizes
    with pytest.raises(ValueError, match="incompatible"):
        layer(np.zeros((2, 8, 8, 5), "float32"), domain=0)
    series = ResidualAdapter(keras.layers.Conv2D(4, 3, padding="same"), T, mode="series")
    series(np.zeros((2, 8, 8, 3), "float32"), domain=0)
    series(np.zeros((2, 6, 6, 3), "float32"), domain=0)  # stride 1: any size
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 3"):
        series(np.zeros((2, 8, 8, 2), "float32"), domain=0)


# === Adapter dropout (the authors' `F.dropout2d` on the parallel adapter's input) ===


def _identity_adapters(layer):
    """Adapter of domain `d` = `(d + 1) I`: the adapter's output shows its input directly."""
    channels = layer.adapter_kernel.shape[-1]
    eye = np.eye(channels, dtype="float32")
    layer.adapter_kernel.assign(np.stack([(d + 1) * eye for d in range(T)]))


@pytest.mark.parametrize("strides", [1, 2])
def test_dropout_zeroes_whole_adapter_input_channels_with_scaling(strides):
    x = rng(0).normal(size=(6, 8, 8, 4)).astype("float32") + 3.0  # no zero inputs
    conv = keras.layers.Conv2D(4, 3, strides=strides, padding="same")
    layer = ResidualAdapter(conv, T, dropout=0.5, seed=3)
    layer(x, domain=0)
    _identity_adapters(layer)
    base = to_numpy(conv(x))  # the shared conv sees the undropped input
    taps = to_numpy(layer.tap_input(x))
    for domain in (1, np.array([0, 1, 2, 2, 1, 0])):
        scales = np.broadcast_to(np.asarray(domain) + 1.0, (6,))[:, None, None, None]
        ratio = (to_numpy(layer(x, domain=domain, training=True)) - base) / (taps * scales)
        kept = ratio[:, :1, :1, :]
        # Each (example, channel) is dropped at every position or kept and scaled by 2.
        np.testing.assert_allclose(ratio, np.broadcast_to(kept, ratio.shape), atol=1e-4)
        assert set(np.round(kept.ravel(), 3)) == {0.0, 2.0}


@pytest.mark.parametrize("rank", [None, 2])
def test_dropout_inference_is_exact_and_rate_zero_is_unchanged(rank):
    x = rng(0).normal(size=(4, 9, 9, 3)).astype("float32")
    plain = ResidualAdapter(keras.layers.Conv2D(5, 3, strides=2), T, rank=rank)
    zero = ResidualAdapter(keras.layers.Conv2D(5, 3, strides=2), T, rank=rank, dropout=0.0)
    dropping = ResidualAdapter(keras.layers.Conv2D(5, 3, strides=2), T, rank=rank, dropout=0.4)
    for layer in (plain, zero, dropping):
        layer(x, domain=0)
    _randomize(plain)
    for layer in (zero, dropping):
        for target, source in zip(layer.weights, plain.weights):
            target.assign(source)
    # Rate 0: no seed state, the same variables and the same outputs, training included.
    assert zero.seed_generator is None and len(zero.variables) == len(plain.variables)
    for domain in (2, np.array([0, 2, 1, 2])):
        for training in (False, True):
            expected = to_numpy(plain(x, domain=domain, training=training))
            np.testing.assert_array_equal(to_numpy(zero(x, domain=domain, training=training)),
                                          expected)
        # Inference with dropout: the adapter reads the whole input.
        np.testing.assert_array_equal(to_numpy(dropping(x, domain=domain)),
                                      to_numpy(plain(x, domain=domain)))
    # Fold (the inference path) is unaffected by the rate.
    for domain in range(T):
        (folded,) = dropping.fold(domain)
        assert_close(folded(x), plain(x, domain=domain), atol=1e-4)


def test_dropout_trains_compiled_and_round_trips(tmp_path):
    x = rng(0).normal(size=(6, 8, 8, 3)).astype("float32")
    domain = np.array([0, 2, 0, 2, 2, 0], "int32")
    image_in = keras.Input((8, 8, 3), name="image")
    domain_in = keras.Input((), dtype="int32", name="domain")
    adapter = ResidualAdapter(keras.layers.Conv2D(4, 3, padding="same"), T, dropout=0.5, seed=7)
    model = keras.Model([image_in, domain_in], adapter(image_in, domain_in))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")  # default jit_compile
    model.fit([x, domain], np.ones((6, 8, 8, 4), "float32"), batch_size=6, verbose=0)
    assert np.isfinite(to_numpy(adapter.adapter_kernel)).all()
    assert np.abs(to_numpy(adapter.adapter_kernel)).max() > 0
    config = adapter.get_config()
    assert config["dropout"] == 0.5 and config["seed"] == 7
    clone = ResidualAdapter.from_config(config)
    assert clone.dropout == 0.5 and clone.seed == 7
    loaded = save_and_load(model, tmp_path)
    assert loaded.layers[-1].dropout == 0.5
    np.testing.assert_array_equal(loaded.predict([x, domain], verbose=0),
                                  model.predict([x, domain], verbose=0))


def test_dropout_bad_rates_raise_clear_errors():
    conv = keras.layers.Conv2D(4, 3)
    for rate in (1.0, -0.1, float("nan"), True, "0.5", None):
        with pytest.raises(ValueError, match=f"dropout={rate!r}"):
            ResidualAdapter(conv, T, dropout=rate)
    with pytest.raises(ValueError, match="dropout=0.5 with mode='series'"):
        ResidualAdapter(conv, T, mode="series", dropout=0.5)
    ResidualAdapter(conv, T, mode="series", dropout=0.0)  # rate 0 is allowed in series mode


@pytest.mark.parametrize("training", [False, True])
def test_length_one_domain_vector_never_broadcasts_in_a_graph_of_unknown_batch(training):
    skip_unless_tensorflow()
    import tensorflow as tf

    layer = ResidualAdapter(keras.layers.Conv2D(3, 3, padding="same"), T)
    x = rng(0).normal(size=(4, 6, 6, 2)).astype("float32")
    layer(x, domain=0)
    _randomize(layer)
    call = tf.function(
        lambda x, domain: layer(x, domain=domain, training=training),
        input_signature=[tf.TensorSpec((None, 6, 6, 2)), tf.TensorSpec((None,), tf.int32)],
    )
    try:
        outputs = to_numpy(call(x, np.array([1], "int32")))
    except tf.errors.InvalidArgumentError:
        return
    assert np.isnan(outputs).all()
    assert_close(call(x, np.full((4,), 1, "int32")), layer(x, domain=1), atol=1e-5)
