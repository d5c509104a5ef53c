import keras
import numpy as np
import pytest

from keras_mdn.layers import DomainBatchNormalization, DomainHead
from keras_mdn.models import resnet26
from keras_mdn.tuning.base_model import adaptable_layers, clone_pretrained, multi_domain_base
from tests.helpers import tensorflow_only
from tests.tuning.helpers import tiny_base, tiny_data

pytestmark = tensorflow_only


def test_clone_is_independent():
    data = tiny_data()
    base = tiny_base(data, epochs=1)
    before = [w.copy() for w in base.get_weights()]
    clone = clone_pretrained(base)
    for a, b in zip(clone.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    for variable in clone.trainable_weights:
        variable.assign(variable + 1.0)
    for a, b in zip(base.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(layer.trainable for layer in base.layers)


def test_single_domain_base_becomes_multi_domain_and_frozen():
    data = tiny_data()
    base = tiny_base(data, epochs=1)
    model = multi_domain_base(base, data.num_classes)
    assert [t.name for t in model.inputs] == ["image", "domain"]
    assert isinstance(model.get_layer("bn1"), DomainBatchNormalization)
    assert isinstance(model.get_layer("classifier"), DomainHead)
    assert not model.get_layer("dense1").trainable
    assert model.get_layer("bn1").trainable
    # At the start every domain computes the pretrained network (inference mode).
    images, _ = data.arrays("test", 0)
    expected = base.predict_on_batch(images[:5])
    got = model.predict_on_batch({"image": images[:5], "domain": np.zeros(5, "int32")})
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [layer.name for layer in adaptable_layers(model)] == ["dense1", "dense2"]


def test_multi_domain_base_must_match_the_data():
    base = resnet26([3, 3], input_shape=(8, 8, 1), width_factor=0.125)
    with pytest.raises(ValueError, match="has 2 domains but the data has 3"):
        multi_domain_base(base, [3, 3, 2])
    model = multi_domain_base(base, [3, 3])
    assert not model.get_layer("stem_conv").trainable
    assert model.get_layer("stem_bn").trainable
    assert len(adaptable_layers(model)) == 25


def test_nothing_to_adapt():
    image = keras.Input((4, 4, 1), name="image")
    x = keras.layers.GlobalAveragePooling2D()(image)
    model = keras.Model(image, keras.layers.Dense(3, name="classifier")(x))
    base = multi_domain_base(model, [3, 3])
    with pytest.raises(ValueError, match="nothing to adapt"):
        adaptable_layers(base)
