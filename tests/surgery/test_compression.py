import numpy as np
import pytest

from keras_mdn import ResidualAdapter
from keras_mdn.ops.compression import stack_adapters
from keras_mdn.surgery import compress_adapters
from tests.helpers import to_numpy
from tests.surgery.toy import infer, toy_multi_domain

# conv1: 3 -> 4 channels, conv2: 4 -> 8 channels (full rank min(C_in, T * C_out) is exact).


def _x(n=4):
    return np.random.default_rng(0).normal(size=(n, 6, 6, 3)).astype("float32")


def _stack(layer):
    return stack_adapters(
        np.stack([to_numpy(layer.adapter_matrix(d)) for d in range(layer.num_domains)])
    )


@pytest.mark.parametrize("mode", ["parallel", "series"])
def test_full_rank_reproduces_the_model(mode):
    model = toy_multi_domain(mode=mode)
    x = _x()
    compressed, report = compress_adapters(model, rank=100)
    assert [row["layer"] for row in report] == ["conv1", "conv2"]
    expected_ranks = [3, 4] if mode == "parallel" else [4, 8]
    assert [row["rank"] for row in report] == expected_ranks
    for row in report:
        assert row["relative_error"] < 1e-6
    for d in range(3):
        np.testing.assert_allclose(infer(compressed, x, d), infer(model, x, d), atol=1e-5)
    # A new, independent model: the wrapped convs are copies.
    assert compressed.get_layer("conv1").layer is not model.get_layer("conv1").layer
    np.testing.assert_array_equal(
        to_numpy(compressed.get_layer("conv1").layer.kernel),
        to_numpy(model.get_layer("conv1").layer.kernel),
    )


def test_low_rank_error_is_the_svd_tail():
    model = toy_multi_domain()
    compressed, report = compress_adapters(model, rank=2)
    for row in report:
        original = _stack(model.get_layer(row["layer"]))
        layer = compressed.get_layer(row["layer"])
        assert isinstance(layer, ResidualAdapter) and layer.rank == 2
        assert layer.adapter_projection.shape == (original.shape[0], 2)
        approx = _stack(layer)
        s = np.linalg.svd(original, compute_uv=False)
        tail = np.sqrt(np.sum(s[2:] ** 2) / np.sum(s**2))
        measured = np.linalg.norm(original - approx) / np.linalg.norm(original)
        assert tail > 0.05
        assert measured == pytest.approx(tail, rel=1e-4)
        assert row["relative_error"] == pytest.approx(tail, rel=1e-6)
        cin, cout = original.shape[0], original.shape[1] // 3
        assert row["parameters_before"] == 3 * cin * cout
        assert row["parameters_after"] == cin * 2 + 3 * 2 * cout
    # Batch norms and head are copied: with exact adapters the outputs would agree.
    head, old_head = compressed.get_layer("head"), model.get_layer("head")
    np.testing.assert_array_equal(to_numpy(head.kernel), to_numpy(old_head.kernel))


def test_energy_threshold_per_layer():
    model = toy_multi_domain()
    _, report = compress_adapters(model, energy=0.8)
    for row in report:
        s = np.linalg.svd(_stack(model.get_layer(row["layer"])), compute_uv=False)
        kept = np.cumsum(s**2) / np.sum(s**2)
        assert row["rank"] == int(np.argmax(kept >= 0.8 - 1e-12)) + 1
        assert row["energy"] >= 0.8


def test_already_low_rank_adapters_recompress():
    model = toy_multi_domain(rank=2)
    x = _x()
    compressed, report = compress_adapters(model, rank=2)
    assert all(row["relative_error"] < 1e-6 for row in report)
    for d in range(3):
        np.testing.assert_allclose(infer(compressed, x, d), infer(model, x, d), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rank=0), "rank=0"),
        (dict(rank=-2), "rank=-2"),
        (dict(energy=0.0), "energy=0.0"),
        (dict(energy=1.2), "energy=1.2"),
        (dict(), "exactly one"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compress_adapters(toy_multi_domain(), **kwargs)


def test_model_without_adapters():
    import keras

    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="no ResidualAdapter"):
        compress_adapters(keras.Model(inputs, keras.layers.Dense(2)(inputs)), rank=1)
