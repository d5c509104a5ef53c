import keras
import numpy as np
import pytest

from keras_mdn.surgery.rebuild import LayerCopies, as_functional, graph_layers, rebuild
from tests.helpers import rng, to_numpy
from tests.surgery.toy import toy_cnn


def test_rebuild_with_copies_is_an_independent_equal_model():
    model = toy_cnn()
    copies = LayerCopies()
    new = rebuild(model, lambda op, args, kwargs, domain: copies(op, args, kwargs), name="copy")
    x = rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(to_numpy(new(x, training=False)),
                                  to_numpy(model(x, training=False)))
    assert new.name == "copy" and [t.name for t in new.inputs] == ["image"]
    assert not {id(w) for w in new.weights} & {id(w) for w in model.weights}
    new.get_layer("conv1").kernel.assign(np.zeros(new.get_layer("conv1").kernel.shape))
    assert np.any(to_numpy(model.get_layer("conv1").kernel))


def test_a_shared_layer_stays_shared_in_the_copy():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(4, name="shared")
    model = keras.Model(inputs, dense(dense(inputs)))
    copies = LayerCopies()
    new = rebuild(model, lambda op, args, kwargs, domain: copies(op, args, kwargs))
    assert len(new.weights) == 2
    x = rng(1).normal(size=(2, 4)).astype("float32")
    np.testing.assert_allclose(to_numpy(new(x)), to_numpy(model(x)), atol=1e-6)


def test_domain_input_added_once_and_nested_models_inlined():
    inner_inputs = keras.Input((4,))
    inner = keras.Model(inner_inputs, keras.layers.Dense(3, name="inner_dense")(inner_inputs))
    inputs = keras.Input((4,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(2, name="top")(inner(inputs)))
    assert [layer.name for layer in graph_layers(model)][-2:] == ["inner_dense", "top"]
    seen = []

    def call(op, args, kwargs, domain):
        seen.append(domain)
        return op(*args, **kwargs)

    new = rebuild(model, call, add_domain_input=True)
    assert [t.name for t in new.inputs] == ["features", "domain"]
    assert all(d is new.inputs[1] for d in seen)
    with pytest.raises(ValueError, match="already has an input named 'domain'"):
        rebuild(new, call, add_domain_input=True)


def test_sequential_is_rewrapped_and_unbuilt_models_rejected():
    sequential = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert isinstance(as_functional(sequential), keras.Model)
    with pytest.raises(ValueError, match="not built"):
        as_functional(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(TypeError, match="keras.Model"):
        as_functional(keras.layers.Dense(2))


def test_a_layer_without_config_cannot_be_copied():
    class NoConfig(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def get_config(self):  # a config the constructor does not take back
            return {**super().get_config(), "size": self.units}

        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], self.units))

        def call(self, x):
            return x @ self.w

    inputs = keras.Input((3,))
    model = keras.Model(inputs, NoConfig(2, name="custom")(inputs))
    copies = LayerCopies()
    with pytest.raises(ValueError, match="Cannot copy layer 'custom'"):
        rebuild(model, lambda op, args, kwargs, domain: copies(op, args, kwargs))
