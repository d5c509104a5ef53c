"""`plain_resnet26`: the one-domain ResNet-26 of plain Keras layers, and its transfer."""

import keras
import numpy as np
import pytest

from keras_mdn.models import plain_resnet26, resnet26
from keras_mdn.surgery import transfer_weights
from tests.helpers import rng, to_numpy

SMALL = dict(input_shape=(8, 8, 3), width_factor=0.125)


def _randomize_batch_norms(model, seed=0):
    r = rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = (to_numpy(w) for w in layer.weights)
            layer.set_weights([
                r.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                (r.normal(size=beta.shape) * 0.2).astype("float32"),
                (r.normal(size=mean.shape) * 0.1).astype("float32"),
                r.uniform(0.8, 1.25, variance.shape).astype("float32"),
            ])


def test_plain_layers_and_the_same_layer_names_as_resnet26():
    plain = plain_resnet26(4, **SMALL)
    multi = resnet26([4, 3], **SMALL)
    assert [t.name for t in plain.inputs] == ["image"]
    assert plain.output.shape == (None, 4)
    names = {layer.name for layer in plain.layers}
    assert names == {layer.name for layer in multi.layers} - {"domain"}
    assert isinstance(plain.get_layer("stem_bn"), keras.layers.BatchNormalization)
    assert isinstance(plain.get_layer("head"), keras.layers.Dense)
    assert plain.count_params() < multi.count_params()
    bn = plain.get_layer("final_bn")
    assert (bn.momentum, bn.epsilon) == (0.9, 1e-5)  # the authors' (PyTorch) settings


@pytest.mark.parametrize("adapter", [None, "parallel"])
def test_transfer_into_resnet26_gives_the_plain_networks_logits(adapter):
    plain = plain_resnet26(4, **SMALL)
    _randomize_batch_norms(plain)
    multi = resnet26([4, 3], adapter=adapter, **SMALL)
    transfer_weights(plain, multi, source_domain=0)
    x = rng(1).normal(size=(5, 8, 8, 3)).astype("float32")
    expected = to_numpy(plain(x, training=False))
    got = to_numpy(multi([x, np.zeros(5, "int32")], training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Domain 1 has the source's batch norms too (a fresh head of its own).
    features = keras.Model(multi.inputs, multi.get_layer("pool").output)
    reference = keras.Model(plain.input, plain.get_layer("pool").output)
    np.testing.assert_allclose(
        to_numpy(features([x, np.ones(5, "int32")], training=False)),
        to_numpy(reference(x, training=False)), rtol=1e-5, atol=1e-5,
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_classes=[3]), "num_classes"),
        (dict(num_classes=0), "num_classes=0"),
        (dict(num_classes=True), "num_classes=True"),
        (dict(num_classes=3, width_factor=0.01), "width_factor=0.01"),
        (dict(num_classes=3, input_shape=(None, 8, 3)), "input_shape"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        plain_resnet26(**kwargs)
