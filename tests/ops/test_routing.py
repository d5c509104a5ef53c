import keras
import numpy as np
import pytest

from keras_mdn.ops import routing
from tests.helpers import to_numpy


def test_python_int_is_static_and_checked():
    assert routing.canonicalize_domain(2, 3) == 2
    assert routing.canonicalize_domain(np.int64(1), 3) == 1
    with pytest.raises(ValueError, match="domain=3"):
        routing.canonicalize_domain(3, 3)
    with pytest.raises(ValueError, match="domain=-1"):
        routing.canonicalize_domain(-1, 3)


@pytest.mark.parametrize("bad", [1.0, True, np.float32(2.0)])
def test_non_integer_domains_are_rejected(bad):
    with pytest.raises(TypeError, match="domain"):
        routing.canonicalize_domain(bad, 3)


def test_tensor_domains():
    vector = routing.canonicalize_domain(np.array([0, 2, 1]), 3)
    assert not routing.is_uniform(vector)
    scalar = routing.canonicalize_domain(keras.ops.convert_to_tensor(1, "int32"), 3)
    assert routing.is_uniform(scalar)
    with pytest.raises(ValueError, match="domain=5"):
        routing.canonicalize_domain(np.array([0, 5]), 3)
    with pytest.raises(ValueError, match="domain=-2"):
        routing.canonicalize_domain(keras.ops.convert_to_tensor([0, -2]), 3)
    with pytest.raises(TypeError, match="dtype=bool"):
        routing.canonicalize_domain(np.array([True, False]), 3)
    # Whole-valued floats are ids (a float domain input); fractions are not.
    assert routing.canonicalize_domain(np.array([0.0, 2.0], "float32"), 3).shape == (2,)
    with pytest.raises(ValueError, match="domain=0.5"):
        routing.canonicalize_domain(np.array([0.0, 0.5], "float32"), 3)
    with pytest.raises(ValueError, match="shape"):
        routing.canonicalize_domain(np.zeros((2, 2), "int32"), 3)
    with pytest.raises(TypeError, match="num_domains"):
        routing.check_num_domains(2.5)
    with pytest.raises(ValueError, match="num_domains=0"):
        routing.check_num_domains(0)


@pytest.mark.parametrize("by_mask", [False, True], ids=["gather", "masked"])
def test_invalid_ids_select_nan_rows_and_no_segment(by_mask):
    table = np.arange(12, dtype="float32").reshape(3, 4)
    ids = keras.ops.convert_to_tensor([2, -1, 3, 0])
    selection = routing.select(ids, 3)
    rows = to_numpy(routing.take_domains(table, selection, by_mask=by_mask))
    np.testing.assert_array_equal(rows[[0, 3]], table[[2, 0]])
    assert np.isnan(rows[[1, 2]]).all()
    # Rows of any rank; invalid ids read NaN, or (`fill_invalid=False`) finite values.
    cube = table.reshape(3, 2, 2)
    rows = to_numpy(routing.take_domains(cube, selection, by_mask=by_mask))
    assert rows.shape == (4, 2, 2)
    np.testing.assert_array_equal(rows[[0, 3]], cube[[2, 0]])
    assert np.isnan(rows[[1, 2]]).all()
    kept = to_numpy(routing.take_domains(table, selection, fill_invalid=False, by_mask=by_mask))
    np.testing.assert_array_equal(kept[[0, 3]], table[[2, 0]])
    assert np.isfinite(kept).all()
    data = np.array([[1.0], [np.nan], [np.nan], [np.nan]], "float32")
    data[3] = 5.0
    sums = to_numpy(routing.domain_sums(data, selection, by_mask=by_mask))
    np.testing.assert_array_equal(sums, [[5.0], [0.0], [1.0]])
    vector_sums = to_numpy(routing.domain_sums(data[:, 0], selection, by_mask=by_mask))
    np.testing.assert_array_equal(vector_sums, [5.0, 0.0, 1.0])
    np.testing.assert_array_equal(to_numpy(selection.counts()), [1.0, 0.0, 1.0])
    scalar = routing.select(keras.ops.convert_to_tensor(-4), 3)
    assert np.isnan(to_numpy(routing.take_domains(table, scalar, by_mask=by_mask))).all()
    scalar = routing.select(keras.ops.convert_to_tensor(1), 3)
    row = to_numpy(routing.take_domains(cube, scalar, by_mask=by_mask))
    np.testing.assert_array_equal(row, cube[1])
    floats = routing.select(keras.ops.convert_to_tensor([1.0, 1.5]), 3)
    np.testing.assert_array_equal(to_numpy(floats.valid), [True, False])


@pytest.mark.parametrize("by_mask", [False, True], ids=["gather", "masked"])
def test_gathered_rows_get_gradients_of_their_own_examples_only(by_mask):
    table = keras.Variable(np.ones((3, 2), "float32"))
    table.assign(np.array([[1.0, 1.0], [np.nan, 1.0], [1.0, 1.0]], "float32"))
    selection = routing.select(keras.ops.convert_to_tensor([0, 0, 2]), 3)
    upstream = np.array([[np.nan, 1.0], [1.0, 1.0], [2.0, 3.0]], "float32")

    def loss(t):
        rows = routing.take_domains(t, selection, by_mask=by_mask)
        return keras.ops.sum(rows * upstream), rows

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value, rows = loss(table.value)
        grad = to_numpy(tf.convert_to_tensor(tape.gradient(value, table.value)))
    elif keras.backend.backend() == "jax":
        import jax

        grad = to_numpy(jax.grad(lambda t: loss(t)[0])(table.value))
        rows = loss(table.value)[1]
    else:
        pytest.skip("gradient check written for TensorFlow and JAX")
    # Domain 1's NaN weight reaches no example of another domain.
    assert np.isfinite(to_numpy(rows)).all()
    assert np.isnan(grad[0, 0])
    np.testing.assert_array_equal(grad[1:], [[0.0, 0.0], [2.0, 3.0]])


def test_gather_and_route_agree_for_uniform_and_mixed():
    table = np.arange(12, dtype="float32").reshape(3, 4)
    assert to_numpy(routing.gather_domain(table, 1)).tolist() == table[1].tolist()
    mixed = routing.canonicalize_domain(np.array([2, 0, 2]), 3)
    np.testing.assert_array_equal(to_numpy(routing.gather_domain(table, mixed)), table[[2, 0, 2]])

    def uniform(d):
        return keras.ops.broadcast_to(routing.gather_domain(table, d), (3, 4)) + 100.0

    def mixed_fn(d):
        return routing.gather_domain(table, d) + 100.0

    same = routing.canonicalize_domain(np.array([1, 1, 1]), 3)
    np.testing.assert_array_equal(
        to_numpy(routing.route(same, uniform, mixed_fn)), table[[1] * 3] + 100
    )
    scalar = routing.canonicalize_domain(keras.ops.convert_to_tensor(1), 3)
    np.testing.assert_array_equal(
        to_numpy(routing.route(scalar, uniform, mixed_fn)), table[[1] * 3] + 100
    )
    np.testing.assert_array_equal(
        to_numpy(routing.route(mixed, uniform, mixed_fn)), table[[2, 0, 2]] + 100
    )


def _value_and_grads(fn, *args):
    """`fn(*args)` (a scalar) and its gradients with respect to every arg (TF or JAX)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        args = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            for a in args:
                tape.watch(a)
            value = fn(*args)
        return value, tape.gradient(value, args)
    if keras.backend.backend() == "jax":
        import jax

        return jax.value_and_grad(fn, argnums=tuple(range(len(args))))(*args)
    pytest.skip("gradient check written for TensorFlow and JAX")


def test_domain_matmul_and_its_gradient_match_per_example_products():
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(4, 3, 2)).astype("float32")
    kernels = rng.normal(size=(3, 2, 5)).astype("float32")
    upstream = rng.normal(size=(4, 3, 5)).astype("float32")
    ids = np.array([2, 0, 2, 1])
    selection = routing.select(keras.ops.convert_to_tensor(ids), 3)
    ops = keras.ops

    def ours(x, k):
        return ops.sum(routing.domain_matmul(x, k, selection) * upstream)

    def reference(x, k):  # autodiff of the plain gather
        return ops.sum(ops.matmul(x, ops.take(k, ids, axis=0)) * upstream)

    value, grads = _value_and_grads(ours, inputs, kernels)
    expected_value, expected = _value_and_grads(reference, inputs, kernels)
    np.testing.assert_allclose(to_numpy(value), to_numpy(expected_value), rtol=1e-5)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(to_numpy(g), to_numpy(e), rtol=1e-5, atol=1e-5)
    # An invalid id: NaN outputs for its example only; a NaN stays in its own domain.
    bad = routing.select(keras.ops.convert_to_tensor([2, 5, 2, 1]), 3)
    outputs = to_numpy(routing.domain_matmul(inputs, kernels, bad))
    assert np.isnan(outputs[1]).all() and np.isfinite(outputs[[0, 2, 3]]).all()
    nan_inputs = inputs.copy()
    nan_inputs[1, 0, 0] = np.nan  # an example of domain 0
    _, (_, kernel_grad) = _value_and_grads(ours, nan_inputs, kernels)
    kernel_grad = to_numpy(kernel_grad)
    assert np.isnan(kernel_grad[0]).any() and np.isfinite(kernel_grad[1:]).all()


@pytest.mark.parametrize("path", ["eager", "graph", "xla"])
def test_domain_matmul_gradient_matches_numpy_and_keeps_nan_in_its_domain_on_every_path(path):
    # The written-out gradient against NumPy, eagerly and compiled (TF graph, XLA, JAX jit).
    rng = np.random.default_rng(3)
    inputs = rng.normal(size=(6, 4, 3)).astype("float32")
    kernels = rng.normal(size=(3, 3, 2)).astype("float32")
    upstream = rng.normal(size=(6, 4, 2)).astype("float32")
    ids = np.array([2, 0, 2, 1, 0, 2], "int32")
    expected_inputs = np.einsum("bpo,bio->bpi", upstream, kernels[ids])
    expected_kernels = np.stack(
        [np.einsum("bpi,bpo->io", inputs[ids == d], upstream[ids == d]) for d in range(3)]
    )

    def loss(x, k, d):
        selection = routing.select(d, 3)
        return keras.ops.sum(routing.domain_matmul(x, k, selection) * upstream)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def grads(x, k, d):
            with tf.GradientTape() as tape:
                tape.watch([x, k])
                value = loss(x, k, d)
            return tape.gradient(value, [x, k])

        if path != "eager":
            grads = tf.function(grads, jit_compile=path == "xla")
        run = lambda x: grads(tf.constant(x), tf.constant(kernels), tf.constant(ids))  # noqa: E731
    elif backend == "jax":
        if path == "graph":
            pytest.skip("JAX has no graph mode without XLA")
        import jax

        grads = jax.grad(loss, argnums=(0, 1))
        if path == "xla":
            grads = jax.jit(grads)
        run = lambda x: grads(x, kernels, ids)  # noqa: E731
    else:
        pytest.skip("gradient check written for TensorFlow and JAX")
    input_grad, kernel_grad = (to_numpy(g) for g in run(inputs))
    np.testing.assert_allclose(input_grad, expected_inputs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernel_grad, expected_kernels, rtol=1e-5, atol=1e-5)
    nan_inputs = inputs.copy()
    nan_inputs[1, 0, 0] = np.nan  # an example of domain 0
    input_grad, kernel_grad = (to_numpy(g) for g in run(nan_inputs))
    assert np.isnan(kernel_grad[0]).any()
    np.testing.assert_allclose(kernel_grad[1:], expected_kernels[1:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(input_grad, expected_inputs, rtol=1e-5, atol=1e-5)


def _value_and_gradients(fn, x, y, jit):
    """`(fn(x, y), d sum(fn^2) / d(x, y))`, compiled (a TF graph or a JAX jit) when `jit`."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        def step(x, y):
            with tf.GradientTape() as tape:
                tape.watch([x, y])
                out = fn(x, y)
                loss = tf.reduce_sum(out * out)
            return out, tape.gradient(loss, [x, y])

        out, grads = (tf.function(step) if jit else step)(tf.constant(x), tf.constant(y))
        return to_numpy(out), [to_numpy(g) for g in grads]
    import jax

    def loss(x, y):
        out = fn(x, y)
        return (out * out).sum(), out

    step = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    (_, out), grads = (jax.jit(step) if jit else step)(x, y)
    return to_numpy(out), [to_numpy(g) for g in grads]


@pytest.mark.skipif(keras.backend.backend() not in ("tensorflow", "jax"),
                    reason="traces are shared on TF and JAX")
def test_shared_trace_traces_each_signature_once_with_the_same_values_and_gradients():
    traces = []

    def affine(x, scale):
        traces.append(tuple(x.shape))
        return x * scale + 1.0

    shared = routing.shared_trace(affine)

    def model(fn):
        return lambda x, y: fn(x, 2.0) + fn(y, 2.0) + keras.ops.sum(fn(x[:1], 3.0))

    x = rng_normal(1, (3, 4))
    y = rng_normal(2, (3, 4))
    out, grads = _value_and_gradients(model(shared), x, y, jit=True)
    # (3, 4) with 2.0 once for two calls; (1, 4) with 3.0 once: not once per call.
    assert sorted(traces) == [(1, 4), (3, 4)]
    # the same values and gradients as the function itself (eager: no trace)
    expected, expected_grads = _value_and_gradients(model(affine), x, y, jit=False)
    assert len(traces) == 5
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    shared(x, 5.0)  # an eager call runs the function itself
    assert len(traces) == 6


def rng_normal(seed, shape):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")
