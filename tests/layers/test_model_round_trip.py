"""A functional model holding every layer of the package saves and loads exactly."""

import keras
import numpy as np

from keras_mdn import DomainBatchNormalization, DomainHead, ResidualAdapter
from tests.helpers import rng, save_and_load, to_numpy

CLASSES = [3, 5]


def build_model():
    image = keras.Input((8, 8, 3), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    x = ResidualAdapter(keras.layers.Conv2D(6, 3, padding="same", use_bias=False), 2)(image, domain)
    x = DomainBatchNormalization(2)(x, domain)
    x = keras.layers.ReLU()(x)
    x = ResidualAdapter(keras.layers.Conv2D(6, 3, strides=2, padding="same"), 2, mode="series")(
        x, domain
    )
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = ResidualAdapter(keras.layers.Dense(4), 2, rank=2)(x, domain)
    return keras.Model([image, domain], DomainHead(CLASSES)(x, domain))


def test_every_layer_round_trips_with_identical_outputs(tmp_path):
    model = build_model()
    r = rng(0)
    for weight in model.weights:
        if "variance" in weight.path:
            weight.assign(r.uniform(0.5, 2.0, size=weight.shape).astype("float32"))
        else:
            weight.assign(r.normal(size=weight.shape).astype("float32") * 0.3)
    x = r.normal(size=(4, 8, 8, 3)).astype("float32")
    loaded = save_and_load(model, tmp_path)
    assert len(loaded.weights) == len(model.weights)
    for original, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(restored), to_numpy(original))
    for domain in (np.zeros(4, "int32"), np.ones(4, "int32"), np.array([0, 1, 1, 0], "int32")):
        expected = model.predict([x, domain], verbose=0)
        np.testing.assert_array_equal(loaded.predict([x, domain], verbose=0), expected)
    # A training step after loading still works (trainable state restored).
    loaded.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    loaded.fit([x, np.array([0, 1, 1, 0])], np.array([0, 4, 1, 2]), verbose=0)
