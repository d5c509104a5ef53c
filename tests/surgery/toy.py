"""Small models for the surgery tests (tiny shapes so every test runs in seconds)."""

import keras
import numpy as np

from keras_mdn import DomainBatchNormalization, DomainHead, ResidualAdapter
from tests.helpers import rng


def toy_cnn(classes=3):
    """A single-domain CNN: convs with and without bias, batch norms, depthwise, dense."""
    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv1")(image)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    y = keras.layers.Conv2D(6, 1, name="conv3")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(5, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    model = keras.Model(image, outputs, name="toy_cnn")
    randomize_batch_norms(model)
    return model


def randomize_batch_norms(model, seed=3):
    """Non-trivial statistics and affine parameters in every (domain) batch norm."""
    r = rng(seed)
    for weight in model.weights:
        name = weight.path.split("/")[-1]
        if name == "moving_variance":
            weight.assign(r.uniform(0.5, 2.0, size=weight.shape).astype("float32"))
        elif name in ("moving_mean", "beta"):
            weight.assign((r.normal(size=weight.shape) * 0.3).astype("float32"))
        elif name == "gamma":
            weight.assign(r.uniform(0.5, 1.5, size=weight.shape).astype("float32"))


def randomize_adapters(model, seed=4, scale=0.3):
    r = rng(seed)
    for weight in model.weights:
        if weight.path.split("/")[-1] in ("adapter_kernel", "adapter_projection"):
            weight.assign((r.normal(size=weight.shape) * scale).astype("float32"))


def toy_multi_domain(num_domains=3, classes=(3, 4, 2), mode="parallel", rank=None):
    """A multi-domain model with every per-domain layer; random per-domain parameters."""
    image = keras.Input((6, 6, 3), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    conv = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv1")
    x = ResidualAdapter(conv, num_domains, mode=mode, rank=rank, name="conv1")(image, domain)
    x = DomainBatchNormalization(num_domains, name="bn1")(x, domain)
    x = keras.layers.ReLU(name="relu1")(x)
    conv = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv2")
    x = ResidualAdapter(conv, num_domains, mode=mode, rank=rank, name="conv2")(x, domain)
    x = DomainBatchNormalization(num_domains, name="bn2")(x, domain)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = DomainHead(list(classes), name="head")(x, domain)
    model = keras.Model([image, domain], logits, name="toy_multi_domain")
    randomize_batch_norms(model)
    randomize_adapters(model)
    return model


def infer(model, x, domain):
    """Eager inference call (tracing a graph costs more than these tests' math)."""
    domain = np.broadcast_to(np.asarray(domain, "int32"), (len(x),))
    return keras.ops.convert_to_numpy(model([x, domain], training=False))


def assert_same_outputs(actual, expected):
    """Outputs of two models whose domains hold bit-identical weights but whose domain count
    differs. A mixed-domain batch makes `DomainBatchNormalization` compute its whole
    `(num_domains, C)` table of scales at once, and a vectorised `rsqrt` may round an entry
    differently (by one ulp) at another position of a longer table; one-domain batches are
    bit-identical (`tests/layers/test_domain_layer.py`)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)
