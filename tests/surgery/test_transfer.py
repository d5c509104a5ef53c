import keras
import numpy as np
import pytest

from keras_mdn import DomainBatchNormalization, DomainHead, ResidualAdapter
from keras_mdn.models import resnet26
from keras_mdn.surgery import add_adapters, transfer_weights
from tests.helpers import rng, to_numpy
from tests.surgery.toy import infer, randomize_batch_norms, toy_cnn

KW = dict(input_shape=(8, 8, 3), width_factor=0.125)


def _images(n=2):
    return rng(0).normal(size=(n, 8, 8, 3)).astype("float32")


@pytest.mark.parametrize("adapter", [None, "parallel", "series"])
def test_every_domain_starts_as_the_pretrained_network(adapter):
    pretrained = resnet26([4], **KW)
    randomize_batch_norms(pretrained)
    x = _images()
    expected = infer(pretrained, x, 0)
    weights = [to_numpy(w) for w in pretrained.weights]
    model = resnet26([4, 4, 3], adapter=adapter, freeze_shared=True, **KW)
    copied = transfer_weights(pretrained, model, source_domain=1)
    assert "stem_conv" in copied and "head" in copied
    np.testing.assert_allclose(infer(model, x, 1)[:, :4], expected, atol=1e-5)
    # Domain 0 shares everything but its head, which keeps its fresh initialisation.
    assert not np.allclose(infer(model, x, 0)[:, :4], expected, atol=1e-3)
    bn = model.get_layer("stem_bn")
    for attribute in ("gamma", "beta", "moving_mean", "moving_variance"):
        table = to_numpy(getattr(bn, attribute))
        source = to_numpy(getattr(pretrained.get_layer("stem_bn"), attribute))
        np.testing.assert_array_equal(table, np.repeat(source, 3, axis=0))
    for weight, value in zip(pretrained.weights, weights):  # the source is not changed
        np.testing.assert_array_equal(to_numpy(weight), value)


def test_plain_keras_source_into_an_adapted_copy():
    base = toy_cnn()
    multi = add_adapters(base, 2, num_classes=[3, 3])
    for weight in multi.weights:  # scramble, then restore from the source
        weight.assign(rng(1).normal(size=weight.shape).astype("float32") * 0.0 + 0.5)
    for layer in multi.layers:
        if isinstance(layer, ResidualAdapter):
            layer.adapter_kernel.assign(np.zeros(layer.adapter_kernel.shape, "float32"))
    transfer_weights(base, multi, source_domain=0)
    x = rng(2).normal(size=(3, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(infer(multi, x, 0), to_numpy(base(x, training=False)), atol=1e-5)
    assert isinstance(multi.get_layer("bn1"), DomainBatchNormalization)
    assert isinstance(multi.get_layer("predictions"), DomainHead)


def test_without_source_domain_the_head_is_left_alone():
    pretrained = resnet26([4], **KW)
    model = resnet26([4, 4], **KW)
    head = to_numpy(model.get_layer("head").kernel)
    assert "head" not in transfer_weights(pretrained, model)
    np.testing.assert_array_equal(to_numpy(model.get_layer("head").kernel), head)


def test_bad_sources_and_arguments():
    pretrained = resnet26([4], **KW)
    model = resnet26([4, 3], **KW)
    with pytest.raises(ValueError, match="source_domain=5"):
        transfer_weights(pretrained, model, source_domain=5)
    with pytest.raises(ValueError, match="classes|shape"):
        transfer_weights(pretrained, model, source_domain=1)  # 4 classes into a 3-class head
    with pytest.raises(ValueError, match="single-domain"):
        transfer_weights(model, resnet26([4, 3], **KW))
    with pytest.raises(ValueError, match="classifier='nope'"):
        transfer_weights(pretrained, model, classifier="nope")
    inputs = keras.Input((3,))
    other = keras.Model(inputs, keras.layers.Dense(2, name="elsewhere")(inputs))
    with pytest.raises(ValueError, match="No layer"):
        transfer_weights(other, model)
