"""Helpers of the factorised-layer tests (gradients come from tests.helpers, on every backend)."""

import keras
import numpy as np

from tests.helpers import gradients  # noqa: F401  (re-exported for the layer tests)


def check_mixed_precision(make_layer, input_shape, policy, where, tmp_path):
    """A model with factorised layers under `policy` (global or the layers' `dtype=`):
    float32 variables, outputs in the compute dtype (also from shape inference), finite
    training, and a `.keras` round trip that keeps the policy and the outputs."""
    from tests.helpers import assert_close, rng, save_and_load

    previous = keras.config.dtype_policy()
    if where == "global":
        keras.config.set_dtype_policy(policy)
    try:
        kwargs = {} if where == "global" else {"dtype": policy}
        features = keras.Input(input_shape[1:], name="features")
        domain = keras.Input((), dtype="int32", name="domain")
        layers = make_layer(**kwargs)
        hidden = features
        for layer in layers:
            hidden = layer(hidden, domain=domain)
        compute = keras.mixed_precision.DTypePolicy(policy).compute_dtype
        assert hidden.dtype == compute
        outputs = keras.layers.Activation("linear", dtype="float32")(hidden)
        model = keras.Model([features, domain], outputs)
        for layer in layers:
            assert layer.dtype_policy.name == policy
            assert all(w.dtype == "float32" for w in layer.weights)
        x = rng(0).normal(size=(16,) + tuple(input_shape[1:])).astype("float32")
        domains = (np.arange(16) % layers[0].num_domains).astype("int32")
        y = rng(1).normal(size=(16,) + tuple(outputs.shape[1:])).astype("float32")
        model.compile(keras.optimizers.SGD(0.01), "mse")
        history = model.fit([x, domains], y, epochs=2, batch_size=8, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        for layer in layers:
            assert all(w.dtype == "float32" for w in layer.weights)
            assert all(np.all(np.isfinite(keras.ops.convert_to_numpy(w)))
                       for w in layer.weights)
        eager = layers[0](x[:4], domain=domains[:4])
        assert keras.backend.standardize_dtype(eager.dtype) == compute
        loaded = save_and_load(model, tmp_path)
        for layer in layers:
            assert loaded.get_layer(layer.name).dtype_policy.name == policy
        assert_close(loaded.predict_on_batch([x, domains]), model.predict_on_batch([x, domains]),
                     atol=0)
    finally:
        keras.config.set_dtype_policy(previous)


def check_bad_ids_give_nan_in_compiled_graphs(layer, x, jit_compile):
    """Inside a compiled `predict` (TF graph / TF XLA / JAX jit) an id outside
    `[0, num_domains)` gives NaN outputs for its example only; the others are exact."""
    import pytest

    from tests.helpers import assert_close, backend

    if backend() == "torch":
        pytest.skip("torch runs eagerly: bad ids raise there (test_domain_safety's eager path)")
    inputs = keras.Input(x.shape[1:], name="features")
    domain = keras.Input((), dtype="int32", name="domain")
    model = keras.Model([inputs, domain], layer(inputs, domain=domain))
    model.compile(jit_compile=jit_compile)
    bad = layer.num_domains
    domains = np.array([0, bad, 1, -1][: len(x)], dtype="int32")
    outputs = keras.ops.convert_to_numpy(model.predict_on_batch([x, domains]))
    for index, value in enumerate(domains):
        if 0 <= value < layer.num_domains:
            expected = layer(x[index:index + 1], domain=int(value))
            assert_close(outputs[index:index + 1], expected, atol=1e-5)
        else:
            assert np.all(np.isnan(outputs[index])), (index, value)


def compiled_outputs_and_gradients(layer, x, domain, jit_compile, power=1):
    """`(outputs, [d sum(outputs ** power) / d w for w in layer.weights])` as NumPy, computed
    inside one compiled function: a TF graph (`jit_compile=False`), TF XLA or JAX jit."""
    from tests.helpers import backend

    weights = list(layer.weights)
    if backend() == "tensorflow":
        import tensorflow as tf

        def run(x, domain):
            with tf.GradientTape() as tape:
                outputs = layer(x, domain=domain)
                loss = tf.reduce_sum(outputs**power)
            grads = tape.gradient(loss, [w.value for w in weights])
            return outputs, [tf.convert_to_tensor(g) for g in grads]

        outputs, grads = tf.function(run, jit_compile=jit_compile)(x, domain)
        return outputs.numpy(), [g.numpy() for g in grads]
    import jax

    def pure(values, x, domain):
        with keras.StatelessScope(state_mapping=list(zip(weights, values, strict=True))):
            outputs = layer(x, domain=domain)
        return jax.numpy.sum(outputs**power), outputs

    grads, outputs = jax.jit(jax.grad(pure, has_aux=True))([w.value for w in weights], x, domain)
    return np.asarray(outputs), [np.asarray(g) for g in grads]


def check_nan_example_stays_in_its_domain(layer, x, domains, jit_compile):
    """One NaN in an example of domain `domains[0]` leaves every other example's output and
    every other domain's slice of the per-domain weights' gradients bit-identical (compiled).

    `domains` is a vector (mixed batch) or a 0-d array (the whole batch is one domain: the
    other domains' gradient slices must then be exact zeros, as in the clean batch).
    """
    import pytest

    from tests.helpers import backend

    if backend() == "torch":
        pytest.skip("compiled paths only (TF graph, TF XLA, JAX jit)")
    bad = x.copy()
    bad[0].flat[0] = np.nan
    clean_out, clean_grads = compiled_outputs_and_gradients(layer, x, domains, jit_compile)
    bad_out, bad_grads = compiled_outputs_and_gradients(layer, bad, domains, jit_compile)
    assert np.any(np.isnan(bad_out[0]))
    np.testing.assert_array_equal(bad_out[1:], clean_out[1:])
    first = int(np.reshape(domains, (-1,))[0])
    others = [d for d in range(layer.num_domains) if d != first]
    index = {id(w): i for i, w in enumerate(layer.weights)}
    reached = []  # the NaN does reach its own domain's codes: the check has teeth
    for entry in layer.domain_variables():
        if entry.shared:
            continue
        i = index[id(entry.variable)]
        reached.append(np.any(np.isnan(np.take(bad_grads[i], [first], axis=entry.axis))))
        np.testing.assert_array_equal(np.take(bad_grads[i], others, axis=entry.axis),
                                      np.take(clean_grads[i], others, axis=entry.axis),
                                      err_msg=entry.name)
        if np.ndim(domains) == 0:
            assert not np.any(np.take(bad_grads[i], others, axis=entry.axis)), entry.name
    assert any(reached)


def check_bad_ids_reach_no_domain_weights(layer, x, jit_compile):
    """Compiled, with the loss `sum(outputs ** 2)` (NaN upstream gradients from the bad
    examples): ids outside `[0, num_domains)` give NaN outputs, and every per-domain weight's
    gradient stays finite (the bad examples reach no domain's codes or bias); a bad 0-d id
    gives NaN for the whole batch and zero gradients to every per-domain weight."""
    import pytest

    from tests.helpers import backend

    if backend() == "torch":
        pytest.skip("compiled paths only (TF graph, TF XLA, JAX jit)")
    bad = layer.num_domains
    domains = np.array([0, bad, 1, -1][: len(x)], dtype="int32")
    outputs, grads = compiled_outputs_and_gradients(layer, x, domains, jit_compile, power=2)
    assert np.all(np.isnan(outputs[1])) and np.all(np.isnan(outputs[3]))
    assert np.all(np.isfinite(outputs[[0, 2]]))
    index = {id(w): i for i, w in enumerate(layer.weights)}
    for entry in layer.domain_variables():
        if not entry.shared:
            assert np.all(np.isfinite(grads[index[id(entry.variable)]])), entry.name
    # A 0-d domain tensor with a bad id: the whole batch is NaN, no domain weight moves.
    for value in (bad, -1):
        outputs, grads = compiled_outputs_and_gradients(layer, x, np.array(value, "int32"),
                                                        jit_compile, power=2)
        assert np.all(np.isnan(outputs))
        for entry in layer.domain_variables():
            if not entry.shared:
                assert not np.any(grads[index[id(entry.variable)]]), entry.name


def check_length_one_vector_and_changed_features(layer, x, jit_compile):
    """A length-1 domain vector in a TF graph of unknown batch gives NaN (or raises), never
    the one domain's answer broadcast to the batch; other features after build raise a clear
    input-spec error naming the axis."""
    import pytest
    import tensorflow as tf

    from tests.helpers import to_numpy

    layer(x, domain=0)
    spec = tf.TensorSpec((None,) + x.shape[1:], "float32")
    call = tf.function(lambda x, domain: layer(x, domain=domain), jit_compile=jit_compile,
                       input_signature=[spec, tf.TensorSpec((None,), tf.int32)])
    try:
        assert np.isnan(to_numpy(call(x, np.array([1], "int32")))).all()
    except tf.errors.InvalidArgumentError:
        pass  # raising is the other allowed answer
    other = np.zeros(x.shape[:-1] + (x.shape[-1] + 1,), "float32")
    with pytest.raises(ValueError, match="axis -1"):
        layer(other, domain=0)
