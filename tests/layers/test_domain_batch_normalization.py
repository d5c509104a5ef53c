import keras
import numpy as np
import pytest

from keras_mdn import DomainBatchNormalization
from tests.helpers import assert_close, rng, save_and_load, skip_unless_tensorflow, to_numpy

T = 3


def _layer(x):
    bn = DomainBatchNormalization(T, momentum=0.9, epsilon=1e-3)
    bn.build(x.shape)
    r = rng(5)
    bn.gamma.assign(r.uniform(0.5, 1.5, size=bn.gamma.shape).astype("float32"))
    bn.beta.assign(r.normal(size=bn.beta.shape).astype("float32"))
    bn.moving_mean.assign(r.normal(size=bn.beta.shape).astype("float32"))
    bn.moving_variance.assign(r.uniform(0.5, 2, size=bn.beta.shape).astype("float32"))
    return bn


def _np_normalize(x, mean, var, gamma, beta, eps=1e-3):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


@pytest.mark.parametrize("shape", [(6, 4), (6, 5, 5, 4)])
def test_inference_uses_each_domains_moving_statistics(shape):
    x = rng(0).normal(size=shape).astype("float32")
    bn = _layer(x)
    mean, var = to_numpy(bn.moving_mean), to_numpy(bn.moving_variance)
    gamma, beta = to_numpy(bn.gamma), to_numpy(bn.beta)
    domain = np.array([0, 1, 2, 2, 1, 0])
    expected = np.stack(
        [_np_normalize(x[i], mean[d], var[d], gamma[d], beta[d]) for i, d in enumerate(domain)]
    )
    assert_close(bn(x, domain=domain), expected)
    for d in range(T):
        assert_close(bn(x, domain=d), _np_normalize(x, mean[d], var[d], gamma[d], beta[d]))


def test_uniform_training_batch_updates_only_its_domain():
    x = rng(0).normal(2.0, 3.0, size=(8, 4, 4, 2)).astype("float32")
    bn = _layer(x)
    mean0, var0 = to_numpy(bn.moving_mean).copy(), to_numpy(bn.moving_variance).copy()
    gamma, beta = to_numpy(bn.gamma), to_numpy(bn.beta)
    y = bn(x, domain=1, training=True)
    m, v = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    assert_close(y, _np_normalize(x, m, v, gamma[1], beta[1]), atol=1e-4)
    expected_mean, expected_var = mean0.copy(), var0.copy()
    expected_mean[1] = 0.9 * mean0[1] + 0.1 * m
    expected_var[1] = 0.9 * var0[1] + 0.1 * v
    assert_close(bn.moving_mean, expected_mean)
    assert_close(bn.moving_variance, expected_var)


@pytest.mark.parametrize("shape", [(7, 3), (7, 4, 4, 3)])
def test_mixed_training_batch_uses_per_domain_statistics(shape):
    x = rng(0).normal(size=shape).astype("float32")
    x[:3] += 5.0  # domain 2 examples are shifted: per-domain statistics must differ
    domain = np.array([2, 2, 2, 0, 0, 0, 0])
    bn = _layer(x)
    mean0, var0 = to_numpy(bn.moving_mean).copy(), to_numpy(bn.moving_variance).copy()
    gamma, beta = to_numpy(bn.gamma), to_numpy(bn.beta)
    y = bn(x, domain=domain, training=True)
    axes = tuple(range(len(shape) - 1))
    expected = np.empty_like(x)
    expected_mean, expected_var = mean0.copy(), var0.copy()
    for d in (0, 2):
        rows = domain == d
        m, v = x[rows].mean(axis=axes), x[rows].var(axis=axes)
        expected[rows] = _np_normalize(x[rows], m, v, gamma[d], beta[d])
        expected_mean[d] = 0.9 * mean0[d] + 0.1 * m
        expected_var[d] = 0.9 * var0[d] + 0.1 * v
    assert_close(y, expected, atol=1e-4)
    assert_close(bn.moving_mean, expected_mean, atol=1e-5)
    assert_close(bn.moving_variance, expected_var, atol=1e-5)
    # Domain 1 is absent: its statistics are untouched.
    np.testing.assert_array_equal(to_numpy(bn.moving_mean)[1], mean0[1])


def test_frozen_layer_runs_in_inference_mode():
    x = rng(0).normal(size=(4, 3)).astype("float32")
    bn = _layer(x)
    bn.trainable = False
    before = to_numpy(bn.moving_mean).copy()
    bn(x, domain=0, training=True)
    np.testing.assert_array_equal(to_numpy(bn.moving_mean), before)


def test_round_trip(tmp_path):
    x = rng(0).normal(size=(4, 3)).astype("float32")
    inputs = keras.Input((3,))
    domain = keras.Input((), dtype="int32")
    bn = DomainBatchNormalization(T, momentum=0.5)
    model = keras.Model([inputs, domain], bn(inputs, domain))
    for w in bn.weights:
        w.assign(rng(1).uniform(0.5, 1.5, size=w.shape).astype("float32"))
    loaded = save_and_load(model, tmp_path)
    for d in range(T):
        ids = np.full((4,), d)
        assert_close(loaded([x, ids]), model([x, ids]), atol=0, rtol=0)
    assert DomainBatchNormalization.from_config(bn.get_config()).momentum == 0.5


def test_bad_input():
    with pytest.raises(ValueError, match="num_domains=0"):
        DomainBatchNormalization(0)
    with pytest.raises(ValueError, match="momentum=2"):
        DomainBatchNormalization(2, momentum=2)
    bn = DomainBatchNormalization(2)
    with pytest.raises(ValueError, match="rank >= 2"):
        bn(np.zeros((3,), "float32"), domain=0)
    with pytest.raises(ValueError, match="domain=2"):
        DomainBatchNormalization(2)(np.zeros((3, 2), "float32"), domain=np.array([0, 1, 2]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epsilon=float("nan")), "epsilon=nan"),
        (dict(epsilon=0.0), "epsilon=0.0"),
        (dict(epsilon=float("inf")), "epsilon=inf"),
        (dict(momentum=float("nan")), "momentum=nan"),
        (dict(momentum=-0.1), "momentum=-0.1"),
    ],
)
def test_bad_epsilon_and_momentum_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DomainBatchNormalization(2, **kwargs)


def test_changed_channels_raise_a_clear_error():
    bn = DomainBatchNormalization(2)
    bn(np.zeros((2, 4, 3), "float32"), domain=0)
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 3"):
        bn(np.zeros((2, 4, 5), "float32"), domain=0)


def _reference_mixed(x, domain, gamma, beta, eps):
    """Per-domain batch norm from masks, in keras.ops (autodiff gives its gradient)."""
    ops = keras.ops
    axes = tuple(range(len(x.shape) - 1))
    out = ops.zeros_like(x)
    for d in range(T):
        mask = ops.reshape(ops.cast(domain == d, "float32"), (-1,) + (1,) * (len(x.shape) - 1))
        n = ops.sum(mask) * (np.prod(x.shape[1:-1]) if len(x.shape) > 2 else 1)
        mean = ops.sum(x * mask, axis=axes) / n
        var = ops.sum(ops.square(x - mean) * mask, axis=axes) / n
        out = out + mask * ((x - mean) * ops.rsqrt(var + eps) * gamma[d] + beta[d])
    return out


def _gradients(fn, x, variables):
    """d sum(fn(x, *variables) * w) / d (x, *variables), on the TF or JAX backend."""
    w = rng(9).normal(size=x.shape).astype("float32")
    if keras.backend.backend() == "jax":
        import jax

        return jax.grad(lambda *a: (fn(*a) * w).sum(), argnums=tuple(range(1 + len(variables))))(
            keras.ops.convert_to_tensor(x), *[keras.ops.convert_to_tensor(v) for v in variables]
        )
    import tensorflow as tf

    x = tf.constant(x)
    variables = [tf.Variable(v) for v in variables]
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(fn(x, *variables) * w)
    return tape.gradient(loss, [x, *variables])


@pytest.mark.parametrize("shape", [(7, 3), (7, 4, 4, 3)])
def test_mixed_training_gradient_matches_automatic_differentiation(shape):
    if keras.backend.backend() == "torch":
        pytest.skip("torch differentiates the forward ops: no written-out gradient to check")
    # The mixed training path has a hand-written gradient: check it against autodiff of
    # the masked per-domain reference, for the inputs, gamma and beta.
    x = rng(0).normal(size=shape).astype("float32")
    x[:3] += 5.0
    domain = np.array([2, 2, 2, 0, 0, 1, 0])
    bn = _layer(x)
    gamma, beta = to_numpy(bn.gamma), to_numpy(bn.beta)
    moving = [v.value for v in bn.non_trainable_weights]

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        x_t = tf.constant(x)
        w = rng(9).normal(size=x.shape).astype("float32")
        with tf.GradientTape() as tape:
            tape.watch(x_t)
            loss = tf.reduce_sum(bn(x_t, domain=domain, training=True) * w)
        actual = tape.gradient(loss, [x_t, bn.gamma, bn.beta])
    else:

        def layer_fn(x, gamma, beta):
            outputs, _ = bn.stateless_call([gamma, beta], moving, x, domain, training=True)
            return outputs

        actual = _gradients(layer_fn, x, [gamma, beta])
    expected = _gradients(
        lambda x, g, b: _reference_mixed(x, domain, g, b, 1e-3), x, [gamma, beta]
    )
    for a, e in zip(actual, expected):
        assert_close(a, e, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("training", [False, True])
def test_length_one_domain_vector_never_broadcasts_in_a_graph_of_unknown_batch(training):
    # The batch-length check lives in the call's Selection: NaN outputs (or an error), and
    # no domain's statistics move.
    skip_unless_tensorflow()
    import tensorflow as tf

    x = rng(0).normal(size=(4, 3, 3, 2)).astype("float32")
    bn = DomainBatchNormalization(T)
    bn(x, domain=0)
    before = [to_numpy(v).copy() for v in bn.non_trainable_weights]
    call = tf.function(
        lambda x, domain: bn(x, domain=domain, training=training),
        input_signature=[tf.TensorSpec((None, 3, 3, 2)), tf.TensorSpec((None,), tf.int32)],
    )
    try:
        outputs = to_numpy(call(x, np.array([1], "int32")))
        assert np.isnan(outputs).all()
    except tf.errors.InvalidArgumentError:
        pass  # raising is the other allowed answer
    for old, new in zip(before, bn.non_trainable_weights):
        np.testing.assert_array_equal(to_numpy(new), old)


def test_integer_inputs_normalise_in_floats():
    # As Keras' BatchNormalization: a cast back to int32 would truncate the outputs.
    x = np.arange(2 * 3 * 3 * 2).reshape(2, 3, 3, 2).astype("int32")
    bn = DomainBatchNormalization(T)
    outputs = bn(x, domain=np.array([0, 1], "int32"), training=True)
    expected = keras.layers.BatchNormalization()
    assert keras.backend.standardize_dtype(outputs.dtype) == "float32"
    reference = np.stack([to_numpy(expected(x[i:i + 1], training=True))[0] for i in range(2)])
    assert_close(outputs, reference, atol=1e-4, rtol=1e-4)


def test_layers_of_one_shape_share_one_trace_with_unchanged_results(monkeypatch):
    # TF graph / JAX jit: the mixed training path is traced once per signature and shared by
    # the layers of that shape; the values, gradients and statistics are those of a trace
    # per layer.
    if keras.backend.backend() not in ("tensorflow", "jax"):
        pytest.skip("traces are shared on TF and JAX")
    from keras_mdn.layers import domain_batch_normalization as module
    from keras_mdn.ops import routing

    x = rng(3).normal(size=(6, 2, 2, 11)).astype("float32")  # 11 channels: a fresh signature
    domain = np.array([0, 2, 2, 1, 0, 2], "int32")
    traced = []
    monkeypatch.setattr(module, "per_domain_normalization", _counted(
        module.per_domain_normalization, traced))

    def run(share):
        monkeypatch.setattr(routing, "SHARE_TRACES", share)
        traced.clear()
        layers = [DomainBatchNormalization(T, name=f"bn{i}") for i in range(3)]
        for layer in layers:
            layer.build(x.shape)
        values = _three_layer_step(layers, x, domain)
        return len(traced), values

    traces, shared = run(True)
    assert traces == 1  # three layers, one signature
    traces, separate = run(False)
    assert traces == 3
    for a, b in zip(shared, separate):
        assert_close(a, b, atol=1e-5, rtol=1e-5)


def _counted(fn, calls):
    def counted(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return counted


def _three_layer_step(layers, x, domain):
    """A compiled training step through `layers`: outputs, gradients (inputs, gamma, beta of
    each layer) and the moved statistics, as NumPy arrays."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = x
                for layer in layers:
                    y = layer(y, domain=domain, training=True) * 1.5
                loss = tf.reduce_sum(y * y)
            weights = [w for layer in layers for w in (layer.gamma, layer.beta)]
            return y, tape.gradient(loss, [x, *weights])

        y, grads = step(tf.constant(x))
        statistics = [w for layer in layers for w in layer.non_trainable_weights]
        return [to_numpy(v) for v in (y, *grads, *statistics)]
    import jax

    def loss(x, trainable):
        y, moved = x, []
        for layer, weights in zip(layers, trainable):
            non_trainable = [v.value for v in layer.non_trainable_weights]
            y, statistics = layer.stateless_call(weights, non_trainable, y, domain,
                                                 training=True)
            y = y * 1.5
            moved += statistics
        return (y * y).sum(), (y, moved)

    trainable = [[v.value for v in layer.trainable_weights] for layer in layers]
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, (y, moved)), (x_grad, weight_grads) = step(x, trainable)
    grads = [g for layer_grads in weight_grads for g in layer_grads]
    return [to_numpy(v) for v in (y, x_grad, *grads, *moved)]
