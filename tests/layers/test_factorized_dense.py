"""FactorizedDense: numerics against a dense NumPy reference for every kind and task."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_mdn
from keras_mdn import FactorizedDense
from keras_mdn.factorizations import TTMatrix
from tests.helpers import (
    assert_close,
    backend,
    rng,
    save_and_load,
    skip_unless_tensorflow,
    to_numpy,
)
from tests.layers.factorized_helpers import (
    check_bad_ids_give_nan_in_compiled_graphs,
    check_bad_ids_reach_no_domain_weights,
    check_length_one_vector_and_changed_features,
    check_mixed_precision,
    check_nan_example_stays_in_its_domain,
    compiled_outputs_and_gradients,
    gradients,
)

KINDS = ["laf", "tucker", "tt", "tt_matrix"]
TASKS = 3


def make(kind, rank=2, units=8, in_dim=12, **kwargs):
    layer = FactorizedDense(units, num_domains=TASKS, factorization=kind, rank=rank, **kwargs)
    layer.build((None, in_dim))
    # Non-zero biases so the per-task bias routing is checked too.
    layer.bias.assign(rng(5).normal(size=(TASKS, units)).astype("float32"))
    return layer


def reference(layer, x, tasks):
    stacked = to_numpy(layer.stacked_kernel())
    bias = to_numpy(layer.bias)
    tasks = np.broadcast_to(tasks, (x.shape[0],))
    return np.einsum("bi,iob->bo", x, stacked[..., tasks]) + bias[tasks]


@pytest.mark.parametrize(
    "kind,contraction",
    [(kind, "auto") for kind in KINDS] + [("tt_matrix", "flops"), ("tucker", "reconstruct")],
)
def test_forward_every_task_uniform_and_mixed(kind, contraction):
    layer = make(kind, contraction=contraction)
    x = rng(0).normal(size=(7, 12)).astype("float32")
    for task in range(TASKS):
        assert_close(layer(x, domain=task), reference(layer, x, task), atol=1e-5)
        assert_close(layer(x, domain=ops.convert_to_tensor(task)), reference(layer, x, task),
                     atol=1e-5)
    mixed = np.array([0, 2, 1, 1, 0, 2, 2], dtype="int32")
    assert_close(layer(x, domain=mixed), reference(layer, x, mixed), atol=1e-5)
    same = np.full((7,), 1, dtype="int32")  # a uniform vector takes the single-kernel path
    assert_close(layer(x, domain=same), reference(layer, x, 1), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_dense_reference(kind):
    layer = make(kind)
    x = rng(1).normal(size=(5, 12)).astype("float32")
    tasks = np.array([2, 0, 1, 2, 2], dtype="int32")
    upstream = rng(2).normal(size=(5, 8)).astype("float32")
    stacked = to_numpy(layer.stacked_kernel())
    grad_x, grad_factors = gradients(
        lambda inputs: ops.sum(ops.multiply(layer(inputs, domain=tasks), upstream)), x,
        layer.factorization.variables)
    expected_x = np.einsum("bo,iob->bi", upstream, stacked[..., tasks])
    np.testing.assert_allclose(grad_x, expected_x, atol=1e-5)
    # dL/dW_stacked from NumPy, pulled back through the reconstruction.
    grad_stacked = np.zeros_like(stacked)
    for b, t in enumerate(tasks):
        grad_stacked[..., t] += np.outer(x[b], upstream[b])
    _, expected = gradients(
        lambda inputs: ops.sum(ops.multiply(layer.stacked_kernel(), grad_stacked)), x,
        layer.factorization.variables)
    for got, want in zip(grad_factors, expected):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_sequence_inputs_and_per_example_task():
    layer = make("tucker")
    x = rng(3).normal(size=(4, 5, 12)).astype("float32")
    tasks = np.array([0, 2, 1, 0], dtype="int32")
    out = to_numpy(layer(x, domain=tasks))
    assert out.shape == (4, 5, 8)
    for b in range(4):
        assert_close(out[b], reference(layer, x[b], tasks[b]), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_sequence_inputs_with_per_example_weights_match_reference(kind):
    # Built for (batch, 4, 5, 6): 20 rows per example share its weight, so one weight per
    # example and a batched matmul beat the per-row path.
    layer = FactorizedDense(4, num_domains=TASKS, factorization=kind, rank=2)
    layer.build((None, 4, 5, 6))
    layer.bias.assign(rng(5).normal(size=(TASKS, 4)).astype("float32"))
    assert "per_example" in layer.contraction_paths()
    x = rng(3).normal(size=(3, 4, 5, 6)).astype("float32")
    tasks = np.array([2, 0, 2], dtype="int32")
    out = to_numpy(layer(x, domain=tasks))
    for b in range(3):
        assert_close(out[b].reshape(20, 4), reference(layer, x[b].reshape(20, 6), tasks[b]),
                     atol=1e-5)
    assert_close(layer(x, domain=1), reference(layer, x.reshape(60, 6), 1).reshape(3, 4, 5, 4),
                 atol=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_per_example_weights_keep_a_nan_example_in_its_domain(jit_compile):
    if backend() == "jax" and not jit_compile:
        pytest.skip("JAX always compiles with XLA")
    layer = FactorizedDense(4, num_domains=TASKS, factorization="tucker", rank=2)
    layer.build((None, 5, 6))
    assert "per_example" in layer.contraction_paths()
    x = rng(7).normal(size=(4, 5, 6)).astype("float32")
    check_nan_example_stays_in_its_domain(layer, x, np.array([0, 1, 2, 1], "int32"),
                                          jit_compile)
    check_bad_ids_reach_no_domain_weights(layer, x, jit_compile)


def test_mixed_path_never_builds_a_weight_per_example():
    layer = make("tt", rank=2, units=64, in_dim=64, batch_size_hint=256)
    paths = layer.contraction_paths()
    # The task code is contracted with the small last core, not with a reconstructed weight.
    assert paths["mixed_flops"] < 2 * 256 * 64 * 64
    assert "core_2" in paths["mixed"]


def test_training_step_reduces_loss():
    x = rng(4).normal(size=(32, 12)).astype("float32")
    tasks = (np.arange(32) % TASKS).astype("int32")
    y = rng(5).normal(size=(32, 8)).astype("float32")
    features = keras.Input((12,), name="features")
    domain = keras.Input((), dtype="int32", name="domain")
    outputs = FactorizedDense(8, num_domains=TASKS, factorization="tt", rank=2)(features,
                                                                               domain=domain)
    model = keras.Model([features, domain], outputs)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    before = model.evaluate([x, tasks], y, verbose=0)
    model.fit([x, tasks], y, epochs=3, batch_size=16, verbose=0)
    assert model.evaluate([x, tasks], y, verbose=0) < before


def test_keras_round_trip_of_every_kind_identical_for_every_task(tmp_path):
    features = keras.Input((12,), name="features")
    domain = keras.Input((), dtype="int32", name="domain")
    kinds = ["laf", "tucker", "tt", TTMatrix(rank=3, input_modes=(3, 4), output_modes=(4, 3))]
    hidden = features
    for index, kind in enumerate(kinds):
        rank = None if isinstance(kind, TTMatrix) else 2
        layer = FactorizedDense(12, num_domains=TASKS, factorization=kind, rank=rank,
                                activation="tanh", name=f"shared_{index}")
        hidden = layer(hidden, domain=domain)
        layer.bias.assign(rng(6 + index).normal(size=(TASKS, 12)).astype("float32"))
    model = keras.Model([features, domain], hidden)
    loaded = save_and_load(model, tmp_path)
    x = rng(7).normal(size=(6, 12)).astype("float32")
    for tasks in [np.full((6,), t, dtype="int32") for t in range(TASKS)] + [
        np.array([0, 1, 2, 0, 1, 2], dtype="int32")
    ]:
        # predict_on_batch compiles each model once (an eager JAX cond retraces per call).
        assert_close(loaded.predict_on_batch([x, tasks]), model.predict_on_batch([x, tasks]),
                     atol=0)
    names = {w.path for w in loaded.get_layer("shared_3").weights}
    assert {"shared_3/core_0", "shared_3/core_task", "shared_3/bias"} <= names


def test_get_config_round_trip():
    layer = FactorizedDense(8, num_domains=TASKS, factorization="tucker", rank=(2, 3, 2),
                            kernel_variance="he", batch_size_hint=64, name="d")
    layer.build((None, 12))
    again = FactorizedDense.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()
    again.build((None, 12))
    assert [w.shape for w in again.weights] == [w.shape for w in layer.weights]


@pytest.mark.parametrize("kind", KINDS)
def test_from_layers_full_rank_reproduces_each_dense(kind):
    x = rng(8).normal(size=(5, 12)).astype("float32")
    denses = [keras.layers.Dense(8, activation="tanh") for _ in range(TASKS)]
    for dense in denses:
        dense.build((None, 12))
        dense.bias.assign(rng(9).normal(size=8).astype("float32"))
    layer = FactorizedDense.from_layers(denses, factorization=kind)
    for task, dense in enumerate(denses):
        assert_close(layer(x, domain=task), dense(x), atol=1e-5)


def test_from_layers_eps_picks_ranks_and_rank_float_is_eps():
    generator = rng(10)
    shared = generator.normal(size=(12, 8))
    denses = []
    for _ in range(4):
        dense = keras.layers.Dense(8)
        dense.build((None, 12))
        dense.kernel.assign((shared + 0.01 * generator.normal(size=(12, 8))).astype("float32"))
        denses.append(dense)
    layer = FactorizedDense.from_layers(denses, factorization="laf", eps=0.05)
    assert layer.factorization.rank == (1,)
    assert FactorizedDense.from_layers(denses, "tucker", rank=0.05).factorization.rank[-1] == 1
    # Nearly identical tasks: the sharing strength is close to 1.
    assert layer.sharing_strength() > 0.99


def test_from_dense_tt_matrix_compresses_one_layer():
    dense = keras.layers.Dense(16)
    dense.build((None, 24))
    layer = FactorizedDense.from_dense(dense, TTMatrix(input_modes=(2, 3, 4),
                                                       output_modes=(2, 4, 2)))
    x = rng(11).normal(size=(3, 24)).astype("float32")
    assert_close(layer(x), dense(x), atol=1e-5)
    small = FactorizedDense.from_dense(dense, "tt_matrix", rank=2)
    assert small.factorization.rank == (2, 2)
    assert small.count_params() < dense.count_params()


@pytest.mark.tensorflow_only
def test_tt_matrix_matches_t3f_matmul():
    skip_unless_tensorflow()
    import t3f
    import tensorflow as tf

    layer = FactorizedDense(16, num_domains=1, use_bias=False,
                            factorization=TTMatrix(rank=3, input_modes=(2, 3, 4),
                                                   output_modes=(2, 4, 2)))
    x = rng(12).normal(size=(5, 24)).astype("float32")
    y = layer(x)
    cores = [tf.convert_to_tensor(v) for v in layer.factorization.variables]
    expected = t3f.matmul(tf.constant(x), t3f.TensorTrain(cores))
    assert_close(y, expected, atol=1e-5)
    assert_close(t3f.full(t3f.TensorTrain(cores)), layer.task_kernel(0), atol=1e-6)


def test_sharing_strength_of_independent_and_shared_tasks():
    layer = make("laf", rank=3)
    layer.factorization.variables[1].assign(np.eye(3, dtype="float32"))
    assert layer.sharing_strength() == pytest.approx(0.0, abs=1e-6)
    layer.factorization.variables[1].assign(np.ones((3, 3), dtype="float32"))
    assert layer.sharing_strength() == pytest.approx(1.0, abs=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="Received: units=0"):
        FactorizedDense(0, num_domains=2, rank=1)
    with pytest.raises(ValueError, match="Received: factorization='cp'"):
        FactorizedDense(4, num_domains=2, factorization="cp", rank=1)
    with pytest.raises(ValueError, match="Received: rank=0"):
        FactorizedDense(4, num_domains=2, rank=0)
    with pytest.raises(ValueError, match=r"at most 2 .*Received: rank=3"):
        FactorizedDense(4, num_domains=2, rank=3).build((None, 6))
    with pytest.raises(ValueError, match=r"input_modes=\(2, 2\)"):
        FactorizedDense(4, num_domains=1, factorization=TTMatrix(
            rank=2, input_modes=(2, 2), output_modes=(2, 2)))(np.ones((1, 6), "float32"))
    layer = make("laf")
    with pytest.raises(ValueError, match=r"Received: domain=3"):
        layer(np.ones((2, 12), "float32"), domain=3)
    with pytest.raises(ValueError, match=r"Received: domain=-1"):
        layer(np.ones((2, 12), "float32"), domain=np.array([0, -1]))
    dense = keras.layers.Dense(8)
    dense.build((None, 12))
    other = keras.layers.Dense(8)
    other.build((None, 10))
    with pytest.raises(ValueError, match="same kernel shape"):
        FactorizedDense.from_layers([dense, other])
    with pytest.raises(ValueError, match="at least 2 layers"):
        FactorizedDense.from_layers([dense])
    for eps in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=f"Received: eps={eps}"):
            FactorizedDense.from_layers([dense, dense], eps=eps)
    with pytest.raises(ValueError, match="Received: contraction='fast'"):
        FactorizedDense(4, num_domains=2, rank=1, contraction="fast")


def test_exported_from_package():
    assert keras_mdn.FactorizedDense is FactorizedDense
    assert keras.saving.get_registered_name(FactorizedDense) == "keras_mdn>FactorizedDense"


def test_num_tasks_and_task_are_aliases_of_num_domains_and_domain():
    layer = FactorizedDense(8, num_tasks=TASKS, factorization="laf", rank=2)
    assert layer.num_domains == TASKS and layer.num_tasks == TASKS
    config = layer.get_config()
    assert config["num_domains"] == TASKS and "num_tasks" not in config
    # A config written before the rename (num_tasks) still loads.
    old = {k: v for k, v in config.items() if k != "num_domains"}
    assert FactorizedDense.from_config({**old, "num_tasks": TASKS}).num_domains == TASKS
    layer = make("laf")
    x = rng(0).normal(size=(4, 12)).astype("float32")
    mixed = np.array([0, 2, 1, 2], dtype="int32")
    assert_close(layer(x, task=mixed), layer(x, domain=mixed), atol=0)
    assert_close(layer(x, task=1), layer(x, domain=1), atol=0)
    with pytest.raises(ValueError, match="not both"):
        layer(x, domain=1, task=1)
    with pytest.raises(ValueError, match="not both"):
        FactorizedDense(8, num_domains=2, num_tasks=2, rank=1)


# Both policies and both placements, across the dense and conv modules (CI time).
@pytest.mark.parametrize("policy,where", [("mixed_float16", "global"), ("mixed_bfloat16", "layer")])
def test_mixed_precision(policy, where, tmp_path):
    def make_layers(**kwargs):
        kinds = ["laf", "tucker", "tt", TTMatrix(rank=2, input_modes=(3, 4),
                                                 output_modes=(4, 3))]
        return [FactorizedDense(12, num_domains=TASKS, factorization=kind,
                                rank=None if isinstance(kind, TTMatrix) else 2,
                                name=f"mp_{index}", **kwargs)
                for index, kind in enumerate(kinds)]

    check_mixed_precision(make_layers, (None, 12), policy, where, tmp_path)


def test_compute_output_shape_and_spec():
    layer = FactorizedDense(8, num_domains=TASKS, factorization="tt", rank=2)
    assert layer.compute_output_shape((None, 5, 12)) == (None, 5, 8)
    spec = layer.compute_output_spec(keras.KerasTensor((4, 12)), domain=1)
    assert spec.shape == (4, 8)


def test_quantize_refuses_clearly_and_filters_let_the_rest_quantize():
    features = keras.Input((12,), name="features")
    domain = keras.Input((), dtype="int32", name="domain")
    hidden = FactorizedDense(16, num_domains=TASKS, factorization="tucker", rank=2,
                             name="shared")(features, domain=domain)
    model = keras.Model([features, domain], keras.layers.Dense(4, name="head")(hidden))
    x = rng(0).normal(size=(6, 12)).astype("float32")
    domains = np.array([0, 1, 2, 0, 1, 2], dtype="int32")
    before = to_numpy(model.predict_on_batch([x, domains]))
    with pytest.raises(ValueError, match=r"FactorizedDense 'shared' cannot be quantized.*"
                                         r"Received: mode='int8'"):
        model.quantize("int8")
    assert model.get_layer("head").quantization_mode is None
    model.quantize("int8", filters=lambda layer: not hasattr(layer, "factorization"))
    assert model.get_layer("head").quantization_mode == "int8"
    after = to_numpy(model.predict_on_batch([x, domains]))
    # Keras' own Dense int8 tolerance is loose; only the head is quantized.
    np.testing.assert_allclose(after, before, atol=0.1 * np.abs(before).max() + 1e-3)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_bad_ids_in_compiled_graphs_give_nan_for_their_examples_only(jit_compile):
    if backend() == "jax" and not jit_compile:
        pytest.skip("JAX always compiles with XLA")
    layer = make("tucker")
    layer.activation = keras.activations.get("relu")
    x = rng(3).normal(size=(4, 12)).astype("float32")
    check_bad_ids_give_nan_in_compiled_graphs(layer, x, jit_compile)
    layer = FactorizedDense(8, num_domains=TASKS, factorization="laf", rank=2, use_bias=False)
    check_bad_ids_give_nan_in_compiled_graphs(layer, x, jit_compile)


@pytest.mark.parametrize("kind", ["laf", "tucker", "tt"])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_nan_example_never_reaches_other_domains(kind, jit_compile):
    if backend() == "jax" and not jit_compile:
        pytest.skip("JAX always compiles with XLA")
    layer = make(kind)
    x = rng(4).normal(size=(6, 12)).astype("float32")
    mixed = np.array([0, 1, 2, 0, 2, 1], dtype="int32")
    check_nan_example_stays_in_its_domain(layer, x, mixed, jit_compile)
    check_bad_ids_reach_no_domain_weights(layer, x[:4], jit_compile)
    check_nan_example_stays_in_its_domain(layer, x, np.array(1, "int32"), jit_compile)


def test_bad_id_with_sequence_inputs_gives_nan_for_its_example_only():
    if backend() == "torch":
        pytest.skip("compiled paths only")
    layer = FactorizedDense(4, num_domains=TASKS, factorization="laf", rank=2)
    layer.build((None, 5, 6))
    x = rng(6).normal(size=(3, 5, 6)).astype("float32")
    outputs, _ = compiled_outputs_and_gradients(layer, x, np.array([0, TASKS, 2], "int32"),
                                                jit_compile=False)
    assert np.all(np.isnan(outputs[1]))
    assert_close(outputs[[0, 2]], reference_nd(layer, x[[0, 2]], np.array([0, 2])), atol=1e-5)


def reference_nd(layer, x, tasks):
    return np.stack([reference(layer, x[b], tasks[b]) for b in range(len(x))])


@pytest.mark.parametrize("kind", ["laf", "tt"])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_length_one_vector_and_changed_features(kind, jit_compile):
    skip_unless_tensorflow()
    x = rng(5).normal(size=(4, 12)).astype("float32")
    layer = FactorizedDense(8, num_domains=TASKS, factorization=kind, rank=2)
    check_length_one_vector_and_changed_features(layer, x, jit_compile)
