"""FactorizedConv1D / FactorizedConv2D against per-task Keras convolutions."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_mdn
from keras_mdn import FactorizedConv, FactorizedConv1D, FactorizedConv2D
from keras_mdn.factorizations import planning
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
    gradients,
)

KINDS = ["laf", "tucker", "tt", "tt_matrix"]
TASKS = 3


def make(kind, rank=2, cls=FactorizedConv2D, channels=3, **kwargs):
    kwargs.setdefault("padding", "same")
    layer = cls(4, 3, num_domains=TASKS, factorization=kind, rank=rank, **kwargs)
    layer.build((None,) + (6,) * cls.rank_spatial + (channels,))
    layer.bias.assign(rng(5).normal(size=(TASKS, 4)).astype("float32"))
    return layer


def reference(layer, x, tasks):
    """Per-example Keras convolution with the task's reconstructed kernel."""
    stacked = to_numpy(layer.stacked_kernel())
    bias = to_numpy(layer.bias)
    tasks = np.broadcast_to(tasks, (x.shape[0],))
    outputs = [
        to_numpy(ops.conv(x[b : b + 1], stacked[..., t], strides=layer.strides,
                          padding=layer.padding, dilation_rate=layer.dilation_rate))[0] + bias[t]
        for b, t in enumerate(tasks)
    ]
    return np.stack(outputs)


@pytest.mark.parametrize(
    "kind,contraction",
    [(kind, "auto") for kind in KINDS] + [("tt", "reconstruct"), ("tucker", "reconstruct")],
)
def test_forward_every_task_uniform_and_mixed(kind, contraction):
    layer = make(kind, strides=2, contraction=contraction)
    x = rng(0).normal(size=(5, 7, 7, 3)).astype("float32")
    for task in range(TASKS):
        assert_close(layer(x, domain=task), reference(layer, x, task), atol=1e-5)
    mixed = np.array([0, 2, 1, 1, 2], dtype="int32")
    assert_close(layer(x, domain=mixed), reference(layer, x, mixed), atol=1e-5)


def per_example(layer, project=False):
    """`layer` with its mixed-batch plan replaced by per-example kernels (patches + GEMM;
    `project`: Tucker's channel factors as 2-D GEMMs around them)."""
    factorization = layer.factorization
    sizes = dict(factorization.network_.sizes, B=8, P=16)
    step = planning._per_example(factorization, sizes, 128, 27, layer.filters, project)
    layer._plan = planning.ConvPlan(layer._plan.uniform, step)
    return layer


# Every kind once and every window geometry once (the patches do not depend on the kind).
@pytest.mark.parametrize("kind,cls,size,kwargs", [
    ("laf", FactorizedConv2D, 7, {"strides": 2, "padding": "same"}),
    ("tucker", FactorizedConv2D, 8, {"strides": 2, "padding": "same"}),
    ("tt", FactorizedConv2D, 7, {"strides": (1, 2), "padding": "valid"}),
    ("tt_matrix", FactorizedConv2D, 7, {"padding": "same", "dilation_rate": 2}),
    ("laf", FactorizedConv1D, 7, {"strides": 2, "padding": "same"}),
])
def test_per_example_kernels_match_reference(kind, cls, size, kwargs):
    layer = per_example(make(kind, cls=cls, **kwargs))
    shape = (5,) + (size,) * cls.rank_spatial + (3,)
    x = rng(6).normal(size=shape).astype("float32")
    mixed = np.array([0, 2, 1, 1, 2], dtype="int32")
    assert_close(layer(x, domain=mixed), reference(layer, x, mixed), atol=1e-5)


# Each window geometry, plain and projected (Tucker): the grouped convolution (TF graph) and
# the patches give the same outputs and gradients, in one TF graph.
@pytest.mark.parametrize("kind,project,cls,size,kwargs", [
    ("laf", False, FactorizedConv2D, 7, {"strides": 2, "padding": "same"}),
    ("tt", False, FactorizedConv2D, 7, {"strides": (1, 2), "padding": "valid"}),
    ("laf", False, FactorizedConv2D, 7, {"padding": "same", "dilation_rate": 2}),
    ("laf", False, FactorizedConv1D, 8, {"strides": 2, "padding": "same"}),
    ("tucker", True, FactorizedConv2D, 8, {"strides": 2, "padding": "same"}),
])
def test_grouped_per_example_conv_matches_patches(kind, project, cls, size, kwargs,
                                                  monkeypatch):
    skip_unless_tensorflow()
    from tests.layers.factorized_helpers import compiled_outputs_and_gradients

    rank = (2,) * cls.rank_spatial + (2, 3, 3) if project else 2
    layer = per_example(make(kind, rank=rank, cls=cls, **kwargs), project=project)
    x = rng(7).normal(size=(5,) + (size,) * cls.rank_spatial + (3,)).astype("float32")
    mixed = np.array([0, 2, 1, 1, 2], dtype="int32")
    grouped = compiled_outputs_and_gradients(layer, x, mixed, jit_compile=False, power=2)
    monkeypatch.setattr(planning, "grouped_conv_wins", lambda: False)
    patches = compiled_outputs_and_gradients(layer, x, mixed, jit_compile=False, power=2)
    assert_close(grouped[0], patches[0], atol=1e-5)
    assert_close(grouped[0], reference(layer, x, mixed), atol=1e-5)
    for ours, theirs in zip(grouped[1], patches[1], strict=True):
        assert_close(ours, theirs, atol=1e-4)


def test_grouped_per_example_conv_of_an_empty_or_unknown_batch():
    # A grouped convolution of zero groups raises in TensorFlow: an empty batch (static or
    # known only at run time) gets empty outputs; one traced function serves every size.
    skip_unless_tensorflow()
    import tensorflow as tf

    layer = per_example(make("laf"))
    traced = tf.function(lambda x, d: layer(x, domain=d), input_signature=[
        tf.TensorSpec((None, 6, 6, 3)), tf.TensorSpec((None,), tf.int32)])
    for size in (0, 1, 3):
        x = rng(8).normal(size=(size, 6, 6, 3)).astype("float32")
        mixed = (np.arange(size) % TASKS).astype("int32")
        outputs = traced(x, mixed)
        assert tuple(outputs.shape) == (size, 6, 6, 4)
        if size:
            assert_close(outputs, reference(layer, x, mixed), atol=1e-5)
    empty = layer(np.zeros((0, 6, 6, 3), "float32"), domain=np.zeros((0,), "int32"))
    assert tuple(empty.shape) == (0, 6, 6, 4)


def test_grouped_conv_only_in_a_tensorflow_graph_without_xla():
    if backend() != "tensorflow":
        assert not planning.grouped_conv_wins()
        return
    import tensorflow as tf

    seen = {}

    def probe(jit):
        seen[jit] = planning.grouped_conv_wins()
        return tf.zeros(())

    tf.function(lambda: probe(False), jit_compile=False)()
    tf.function(lambda: probe(True), jit_compile=True)()
    assert seen == {False: True, True: False}


@pytest.mark.parametrize("cls,size,kwargs", [
    (FactorizedConv2D, 8, {"strides": 2, "padding": "same"}),
    (FactorizedConv2D, 7, {"strides": (1, 2), "padding": "valid", "dilation_rate": 1}),
    (FactorizedConv1D, 9, {"padding": "same", "dilation_rate": 2}),
])
def test_projected_per_example_kernels_match_reference(cls, size, kwargs):
    # Tucker: the input projected by U_in, (r_in -> r_out) kernels per example, then U_out.
    layer = per_example(make("tucker", rank=(2,) * cls.rank_spatial + (2, 3, 3), cls=cls,
                             **kwargs), project=True)
    assert layer._plan.mixed.project is not None
    assert "projected by factor_" in layer.contraction_paths()["mixed_detail"]
    x = rng(6).normal(size=(5,) + (size,) * cls.rank_spatial + (3,)).astype("float32")
    mixed = np.array([0, 2, 1, 1, 2], dtype="int32")
    assert_close(layer(x, domain=mixed), reference(layer, x, mixed), atol=1e-5)


def test_projected_per_example_chosen_for_tucker_with_many_domains():
    # Tucker T = 10, rank 16, 32 -> 32 channels at 16 x 16 (the benchmark's shape): the coded
    # kernel is the one-hot stack (r_T = T); per-example kernels in the rank space keep the
    # patches at 16 channels.
    layer = FactorizedConv2D(32, 3, num_domains=10, factorization="tucker", rank=16,
                             padding="same")
    layer.build((16, 16, 16, 32))
    assert layer.contraction_paths()["mixed"] == "per_example"
    assert layer._plan.mixed.project is not None
    # LAF and TT have no channel factor of their own: no projected form.
    for kind in ("laf", "tt"):
        other = make(kind)
        sizes = dict(other.factorization.network_.sizes, B=8, P=16)
        assert planning._per_example(other.factorization, sizes, 128, 27, 4, True) is None


@pytest.mark.parametrize("kind", ["tucker", "tt"])
def test_factored_path_convolves_with_input_side_factors_only(kind):
    # Wide channels, low rank: the cost model convolves to the bond ranks, then contracts.
    layer = FactorizedConv2D(32, 3, num_domains=TASKS, factorization=kind, rank=2,
                             padding="same")
    layer.build((None, 8, 8, 32))
    layer.bias.assign(rng(4).normal(size=(TASKS, 32)).astype("float32"))
    assert layer.contraction_paths()["mixed"] == "factored"
    x = rng(5).normal(size=(3, 8, 8, 32)).astype("float32")
    mixed = np.array([1, 2, 0], dtype="int32")
    assert_close(layer(x, domain=mixed), reference(layer, x, mixed), atol=1e-4)
    assert_close(layer(x, domain=1), reference(layer, x, 1), atol=1e-4)


@pytest.mark.parametrize("kind", ["laf", "tt"])
def test_conv1d_with_dilation(kind):
    layer = make(kind, cls=FactorizedConv1D, padding="valid", dilation_rate=2)
    x = rng(1).normal(size=(4, 9, 3)).astype("float32")
    mixed = np.array([1, 0, 2, 1], dtype="int32")
    assert_close(layer(x, domain=mixed), reference(layer, x, mixed), atol=1e-5)
    assert_close(layer(x, domain=ops.convert_to_tensor(2)), reference(layer, x, 2), atol=1e-5)


@pytest.mark.parametrize("kind,contraction", [("tucker", "auto"), ("tt", "auto"),
                                              ("tt", "reconstruct"), ("laf", "per_example"),
                                              ("tucker", "projected")])
def test_gradients_match_dense_reference(kind, contraction):
    if contraction in ("per_example", "projected"):
        layer = per_example(make(kind), project=contraction == "projected")
    else:
        layer = make(kind, contraction=contraction)
    x = rng(2).normal(size=(3, 5, 5, 3)).astype("float32")
    tasks = np.array([2, 0, 2], dtype="int32")
    upstream = rng(3).normal(size=(3, 5, 5, 4)).astype("float32")
    grad_x, grad_factors = gradients(
        lambda inputs: ops.sum(ops.multiply(layer(inputs, domain=tasks), upstream)), x,
        layer.factorization.variables)
    stacked = to_numpy(layer.stacked_kernel())
    # dL/dx of the per-example reference convolutions.
    grad_x_ref, _ = gradients(
        lambda inputs: ops.sum(ops.multiply(_per_example(inputs, stacked, tasks), upstream)), x, [])
    np.testing.assert_allclose(grad_x, grad_x_ref, atol=1e-4)
    # Factor gradients: dL/dW per task in NumPy, pulled back through the reconstruction.
    grad_w = np.zeros_like(stacked)
    for t in range(TASKS):
        picked = tasks == t
        if picked.any():
            grad_w[..., t] = _kernel_grad(x[picked], upstream[picked])
    _, expected = gradients(lambda inputs: ops.sum(ops.multiply(layer.stacked_kernel(), grad_w)), x,
                            layer.factorization.variables)
    for got, want in zip(grad_factors, expected):
        np.testing.assert_allclose(got, want, atol=1e-4)


def _per_example(x, stacked, tasks):
    return ops.concatenate([
        ops.conv(x[b : b + 1], stacked[..., int(t)], padding="same") for b, t in enumerate(tasks)
    ], axis=0)


def _kernel_grad(x, upstream):
    """dL/dK of L = sum(conv_same(x, K) * upstream), 3x3 kernel, in NumPy."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    grad = np.zeros((3, 3, x.shape[-1], upstream.shape[-1]))
    for i in range(3):
        for j in range(3):
            window = padded[:, i : i + x.shape[1], j : j + x.shape[2], :]
            grad[i, j] = np.einsum("bhwc,bhwf->cf", window, upstream)
    return grad


@pytest.mark.parametrize("kind", KINDS)
def test_from_layers_full_rank_reproduces_each_conv(kind):
    convs = [keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")
             for _ in range(TASKS)]
    for conv in convs:
        conv.build((None, 7, 7, 3))
        conv.bias.assign(rng(6).normal(size=4).astype("float32"))
    layer = FactorizedConv2D.from_layers(convs, factorization=kind)
    assert layer.strides == (2, 2) and layer.padding == "same"
    x = rng(7).normal(size=(2, 7, 7, 3)).astype("float32")
    for task, conv in enumerate(convs):
        assert_close(layer(x, domain=task), conv(x), atol=1e-5)


def test_from_layers_rejects_mismatched_shapes_and_single_layer():
    a = keras.layers.Conv2D(4, 3)
    a.build((None, 7, 7, 3))
    b = keras.layers.Conv2D(4, 3)
    b.build((None, 7, 7, 2))
    with pytest.raises(ValueError, match="same kernel shape"):
        FactorizedConv2D.from_layers([a, b])
    with pytest.raises(ValueError, match="at least 2 layers"):
        FactorizedConv2D.from_layers([a])
    with pytest.raises(ValueError, match="must be a built keras.layers.Conv2D"):
        FactorizedConv2D.from_layers([a, keras.layers.Dense(3)])


def test_keras_round_trip_of_every_kind_identical_for_every_task(tmp_path):
    image = keras.Input((6, 6, 3), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    hidden = image
    for index, kind in enumerate(KINDS):
        conv = FactorizedConv(3, 3, num_domains=TASKS, factorization=kind, rank=2,
                              padding="same", activation="relu", name=f"conv_{index}")
        hidden = conv(hidden, domain=domain)
        conv.bias.assign(rng(8 + index).normal(size=(TASKS, 3)).astype("float32"))
    model = keras.Model([image, domain], hidden)
    loaded = save_and_load(model, tmp_path)
    x = rng(9).normal(size=(3, 6, 6, 3)).astype("float32")
    for tasks in [np.full((3,), t, dtype="int32") for t in range(TASKS)] + [
        np.array([2, 0, 1], dtype="int32")
    ]:
        # predict_on_batch compiles each model once (an eager JAX cond retraces per call).
        assert_close(loaded.predict_on_batch([x, tasks]), model.predict_on_batch([x, tasks]),
                     atol=0)


def test_get_config_round_trip_and_sharing_strength():
    layer = make("tucker", strides=(1, 2), kernel_variance=0.01)
    again = FactorizedConv2D.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()
    assert -1.0 <= layer.sharing_strength() <= 1.0


def test_init_variance_uses_conv_fans():
    layer = FactorizedConv2D(32, 3, num_domains=2, factorization="tt", rank=4,
                             kernel_variance="he")
    layer.build((None, 8, 8, 16))
    np.testing.assert_allclose(np.var(to_numpy(layer.stacked_kernel())), 2.0 / (9 * 16),
                               rtol=0.03)


def test_bad_input():
    with pytest.raises(ValueError, match=r"Received: kernel_size=\(3, 3, 3\)"):
        FactorizedConv2D(4, (3, 3, 3), num_domains=2, rank=1)
    with pytest.raises(ValueError, match="Received: padding='causal'"):
        FactorizedConv2D(4, 3, num_domains=2, rank=1, padding="causal")
    with pytest.raises(ValueError, match="Received: filters=0"):
        FactorizedConv2D(0, 3, num_domains=2, rank=1)
    layer = make("laf")
    with pytest.raises(ValueError, match="Received: domain=5"):
        layer(np.ones((1, 6, 6, 3), "float32"), domain=5)


def test_exported_from_package():
    assert keras_mdn.FactorizedConv is FactorizedConv2D
    assert keras_mdn.FactorizedConv1D is FactorizedConv1D


# Both policies and both placements, across the dense and conv modules (CI time).
@pytest.mark.parametrize("policy,where", [("mixed_bfloat16", "global"), ("mixed_float16", "layer")])
def test_mixed_precision(policy, where, tmp_path):
    def make_layers(**kwargs):
        return [FactorizedConv2D(4, 3, num_domains=TASKS, factorization=kind, rank=2,
                                 padding="same", name=f"mp_{kind}", **kwargs)
                for kind in ("laf", "tucker", "tt")]

    check_mixed_precision(make_layers, (None, 6, 6, 3), policy, where, tmp_path)


@pytest.mark.parametrize("cls,shape,kwargs,expected", [
    (FactorizedConv2D, (None, 7, 9, 3), {"strides": 2, "padding": "same"}, (None, 4, 5, 4)),
    (FactorizedConv2D, (2, 7, 7, 3), {"padding": "valid", "dilation_rate": 2}, (2, 3, 3, 4)),
    (FactorizedConv1D, (None, None, 3), {"padding": "valid"}, (None, None, 4)),
])
def test_compute_output_shape_and_spec(cls, shape, kwargs, expected):
    layer = cls(4, 3, num_domains=TASKS, rank=2, **kwargs)
    assert layer.compute_output_shape(shape) == expected
    if None not in shape[1:]:
        spec = layer.compute_output_spec(keras.KerasTensor((2,) + shape[1:]), domain=1)
        assert spec.shape == (2,) + expected[1:]
        x = np.ones((2,) + shape[1:], "float32")
        assert tuple(layer(x, domain=1).shape) == (2,) + expected[1:]


def test_quantize_refuses_clearly():
    layer = make("tt")
    with pytest.raises(ValueError, match=r"FactorizedConv2D .* cannot be quantized"):
        layer.quantize("int8")


@pytest.mark.parametrize("jit_compile", [False, True])
def test_bad_ids_in_compiled_graphs_give_nan_for_their_examples_only(jit_compile):
    if backend() == "jax" and not jit_compile:
        pytest.skip("JAX always compiles with XLA")
    x = rng(3).normal(size=(4, 6, 6, 3)).astype("float32")
    check_bad_ids_give_nan_in_compiled_graphs(make("laf"), x, jit_compile)
    layer = FactorizedConv2D(4, 3, num_domains=TASKS, factorization="tt", rank=2,
                             padding="same", use_bias=False, activation="relu")
    check_bad_ids_give_nan_in_compiled_graphs(layer, x, jit_compile)


@pytest.mark.parametrize("kind,contraction", [("laf", "auto"), ("tucker", "auto"),
                                              ("tt", "reconstruct")])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_nan_example_never_reaches_other_domains(kind, contraction, jit_compile):
    if backend() == "jax" and not jit_compile:
        pytest.skip("JAX always compiles with XLA")
    layer = make(kind, contraction=contraction)
    x = rng(4).normal(size=(4, 6, 6, 3)).astype("float32")
    mixed = np.array([0, 1, 2, 1], dtype="int32")
    check_nan_example_stays_in_its_domain(layer, x, mixed, jit_compile)
    check_bad_ids_reach_no_domain_weights(layer, x[:4], jit_compile)
    check_nan_example_stays_in_its_domain(layer, x, np.array(2, "int32"), jit_compile)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_per_example_kernels_keep_nan_and_bad_ids_in_their_examples(jit_compile):
    if backend() == "jax" and not jit_compile:
        pytest.skip("JAX always compiles with XLA")
    x = rng(4).normal(size=(4, 6, 6, 3)).astype("float32")
    layer = per_example(make("laf"))
    check_nan_example_stays_in_its_domain(layer, x, np.array([0, 1, 2, 1], "int32"),
                                          jit_compile)
    check_bad_ids_reach_no_domain_weights(layer, x, jit_compile)
    check_bad_ids_give_nan_in_compiled_graphs(per_example(make("tucker")), x, jit_compile)
    projected = per_example(make("tucker"), project=True)
    check_nan_example_stays_in_its_domain(projected, x, np.array([2, 1, 0, 1], "int32"),
                                          jit_compile)
    check_bad_ids_give_nan_in_compiled_graphs(projected, x, jit_compile)


@pytest.mark.parametrize("kind", ["laf", "tt"])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_length_one_vector_and_changed_features(kind, jit_compile):
    skip_unless_tensorflow()
    x = rng(5).normal(size=(4, 5, 5, 3)).astype("float32")
    layer = FactorizedConv2D(4, 3, num_domains=TASKS, factorization=kind, rank=2, padding="same")
    check_length_one_vector_and_changed_features(layer, x, jit_compile)
