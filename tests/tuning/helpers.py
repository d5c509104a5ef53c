"""Tiny data and a tiny pretrained base for the tuning tests (seconds per search)."""

import keras
import numpy as np

from keras_mdn.datasets import MultiDomainData

NAMES = ("a", "b", "c")
NUM_CLASSES = (3, 3, 2)


def tiny_data(seed=0):
    """Three domains of 4x4x1 images whose class is set by one pixel's sign pattern."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, size in (("train", 48), ("validation", 24), ("test", 24)):
        pairs = []
        for domain, classes in enumerate(NUM_CLASSES):
            labels = rng.integers(0, classes, size)
            images = rng.normal(0, 0.3, (size, 4, 4, 1)).astype("float32")
            images[np.arange(size), labels, domain, 0] += 2.0
            pairs.append((images, labels))
        splits[split] = pairs
    return MultiDomainData.from_arrays(NAMES, NUM_CLASSES, splits, description="tiny")


def tiny_base(data, epochs=2, seed=0):
    """A Dense-BN-ReLU x2 classifier pretrained on domain 0 (a single-domain model)."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((4, 4, 1), name="image")
    x = keras.layers.Flatten(name="flatten")(image)
    x = keras.layers.Dense(8, name="dense1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Dense(8, name="dense2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    logits = keras.layers.Dense(NUM_CLASSES[0], name="classifier")(x)
    model = keras.Model(image, logits, name="tiny")
    images, labels = data.arrays("train", 0)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, epochs=epochs, batch_size=16, verbose=0)
    return model
