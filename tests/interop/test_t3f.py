"""t3f interop: TT-matrices and t3f.nn.KerasDense models into FactorizedDense (TensorFlow)."""

import keras
import numpy as np
import pytest

from keras_mdn import FactorizedDense
from keras_mdn.factorizations import TTMatrix
from tests.helpers import assert_close, rng, save_and_load, skip_unless_tensorflow

pytestmark = pytest.mark.tensorflow_only

SHAPE = ((3, 4, 2), (2, 3, 2))  # 24 x 12


@pytest.fixture
def t3f():
    skip_unless_tensorflow()
    import t3f

    return t3f


def tt_matrix(t3f, rank=3, seed=0):
    weight = rng(seed).normal(size=(24, 12)).astype("float32")
    return t3f.to_tt_matrix(weight, shape=SHAPE, max_tt_rank=rank)


def test_from_t3f_matches_t3f_matmul_and_round_trips(t3f):
    import tensorflow as tf

    tt = tt_matrix(t3f)
    bias = rng(1).normal(size=(12,)).astype("float32")
    layer = FactorizedDense.from_t3f(tt, bias=bias, activation="tanh", name="tt")
    assert isinstance(layer.factorization, TTMatrix)
    assert layer.factorization.input_modes == SHAPE[0]
    x = rng(2).normal(size=(5, 24)).astype("float32")
    expected = np.tanh(t3f.matmul(tf.constant(x), tt).numpy() + bias)
    assert_close(layer(x), expected, atol=1e-5)
    back = layer.to_t3f()
    assert back.get_tt_ranks().as_list() == tt.get_tt_ranks().as_list()
    assert_close(t3f.full(back), t3f.full(tt), atol=1e-6)
    # From cores as saved arrays (e.g. read from a checkpoint).
    cores = [core.numpy() for core in tt.tt_cores]
    assert_close(FactorizedDense.from_t3f(cores, bias=bias, activation="tanh")(x), expected,
                 atol=1e-5)


def test_to_t3f_of_a_multi_domain_layer_folds_the_domain_core(t3f):
    layer = FactorizedDense(12, num_domains=3, factorization=TTMatrix(
        rank=2, input_modes=SHAPE[0], output_modes=SHAPE[1]))
    layer.build((None, 24))
    for domain in range(3):
        assert_close(t3f.full(layer.to_t3f(domain)), layer.task_kernel(domain), atol=1e-5)
    with pytest.raises(ValueError, match="Received: domain=None"):
        layer.to_t3f()
    with pytest.raises(ValueError, match="Received: domain=3"):
        layer.to_t3f(3)


def test_bad_inputs_name_the_argument(t3f):
    with pytest.raises(ValueError, match="'tt_matrix' factorization"):
        FactorizedDense(4, num_domains=2, rank=1).to_t3f()
    tensor = t3f.to_tt_tensor(rng(0).normal(size=(3, 4, 2)).astype("float32"), max_tt_rank=2)
    with pytest.raises(ValueError, match="TT-matrix"):
        FactorizedDense.from_t3f(tensor)
    with pytest.raises(ValueError, match=r"Received: bias with shape=\(5,\)"):
        FactorizedDense.from_t3f(tt_matrix(t3f), bias=np.zeros(5))
    with pytest.raises(ValueError, match="core shapes"):
        FactorizedDense.from_t3f([np.zeros((1, 2, 2, 3)), np.zeros((2, 2, 2, 1))])


def keras_dense(t3f, monkeypatch, tt, **kwargs):
    """A `t3f.nn.KerasDense` holding `tt`: its own initializers fail on NumPy >= 1.24
    (`np.int`), so the initializer is handed the cores (as a user would restore them)."""
    monkeypatch.setattr(t3f, "glorot_initializer", lambda shape, tt_rank: tt)
    return t3f.nn.KerasDense(SHAPE[0], SHAPE[1], tt_rank=3, **kwargs)


def test_convert_model_of_keras_dense_gives_equal_outputs_and_saves(t3f, monkeypatch,
                                                                     tmp_path):
    from keras_mdn.interop import t3f as interop

    first = keras_dense(t3f, monkeypatch, tt_matrix(t3f, seed=3), activation="relu")
    first.b.assign(rng(4).normal(size=(12,)).astype("float32"))
    model = keras.Sequential([keras.Input((24,)), first, keras.layers.Dense(5, name="head")])
    x = rng(5).normal(size=(6, 24)).astype("float32")
    expected = model.predict_on_batch(x)
    converted = interop.convert_model(model)
    assert isinstance(converted.layers[0], FactorizedDense)
    assert_close(converted.predict_on_batch(x), expected, atol=1e-5)
    loaded = save_and_load(converted, tmp_path)
    assert_close(loaded.predict_on_batch(x), expected, atol=1e-5)
    # A functional model is cloned.
    inputs = keras.Input((24,))
    second = keras_dense(t3f, monkeypatch, tt_matrix(t3f, seed=6), use_bias=False)
    functional = keras.Model(inputs, keras.layers.Dense(3)(second(inputs)))
    assert_close(interop.convert_model(functional).predict_on_batch(x),
                 functional.predict_on_batch(x), atol=1e-5)
