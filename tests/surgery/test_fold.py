import keras
import numpy as np
import pytest

from keras_mdn import DomainBatchNormalization, DomainHead, ResidualAdapter
from keras_mdn.surgery import fold_domain
from keras_mdn.surgery.graph import call_with_domain
from tests.helpers import rng, to_numpy

NUM_CLASSES = [3, 5, 4]
T = len(NUM_CLASSES)


def randomize(model, seed=0, scale=0.1):
    """Random per-domain parameters (adapters, BN statistics) so folding is not trivial."""
    r = rng(seed)
    for weight in model.weights:
        path = weight.path
        if "adapter_kernel" in path or "adapter_projection" in path:
            value = r.normal(size=weight.shape) * scale
        elif "moving_variance" in path or "gamma" in path:
            value = r.uniform(0.6, 1.4, size=weight.shape)
        elif "moving_mean" in path or "beta" in path:
            value = r.normal(size=weight.shape) * scale
        else:
            continue
        weight.assign(value.astype("float32"))
    return model


def small_model(adapter="parallel", rank=None, plain_bn=False, extra=None):
    """conv -> adapter -> domain BN -> ReLU -> strided conv block with a residual -> head."""
    image = keras.Input((9, 9, 3), name="image")
    domain = keras.Input((), dtype="int32", name="domain")

    def conv(x, filters, strides, name):
        layer = keras.layers.Conv2D(filters, 3, strides=strides, padding="same",
                                    use_bias=False, name=name)
        if adapter is None:
            return layer(x)
        return ResidualAdapter(layer, T, mode=adapter, rank=rank, name=name)(x, domain=domain)

    x = conv(image, 6, 1, "conv1")
    x = DomainBatchNormalization(T, name="bn1")(x, domain=domain)
    x = keras.layers.ReLU()(x)
    y = conv(x, 6, 2, "conv2")
    y = DomainBatchNormalization(T, name="bn2")(y, domain=domain)
    y = keras.layers.ReLU()(y)
    y = conv(y, 6, 1, "conv3")
    if plain_bn:
        y = keras.layers.BatchNormalization(name="plain_bn")(y)
    else:
        y = DomainBatchNormalization(T, name="bn3")(y, domain=domain)
    shortcut = keras.layers.AveragePooling2D(2, padding="same")(x)
    x = keras.ops.add(y, shortcut)  # a keras.ops operation in the graph
    x = DomainBatchNormalization(T, name="final_bn")(x, domain=domain)  # not after a conv
    x = keras.layers.ReLU()(x)
    if extra is not None:
        x = extra(x, domain)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = DomainHead(NUM_CLASSES, name="head")(x, domain=domain)
    return randomize(keras.Model({"image": image, "domain": domain}, logits))


def images(n=4, seed=3):
    return rng(seed).normal(size=(n, 9, 9, 3)).astype("float32")


def reference(model, x, domain):
    logits = model({"image": x, "domain": np.full((len(x),), domain, "int32")})
    return to_numpy(logits)[:, : NUM_CLASSES[domain]]


def layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


CASES = [
    dict(adapter="parallel"),
    dict(adapter="series"),
    dict(adapter="parallel", rank=2),
    dict(adapter=None),
    dict(adapter="parallel", plain_bn=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_folded_model_matches_every_domain_and_costs_the_base(case):
    model = small_model(**case)
    base = fold_domain(small_model(None, plain_bn=case.get("plain_bn", False)), 0)
    x = images()
    for domain in range(T):
        folded = fold_domain(model, domain)
        assert [i.name for i in folded.inputs] == ["image"]
        out = to_numpy(folded(x))
        expected = reference(model, x, domain)
        assert out.shape == expected.shape
        assert np.max(np.abs(out - expected)) <= 1e-5
        # Same architecture as the folded base network: counts and layer types, except that
        # the head has this domain's classes.
        head = NUM_CLASSES[domain] - NUM_CLASSES[0]
        assert folded.count_params() == base.count_params() + head * (6 + 1)
        assert layer_types(folded) == layer_types(base)
    # Every conv absorbed its adapter and its BN: no adapter or domain layer left, and only
    # the BN after the residual sum stays a (fixed) BatchNormalization.
    assert layer_types(base).count("BatchNormalization") == 1
    assert layer_types(base).count("Conv2D") == 3


def test_fold_matches_static_domain_call():
    model = small_model()
    x = images()
    for domain in range(T):
        static = to_numpy(call_with_domain(model, x, domain))[:, : NUM_CLASSES[domain]]
        np.testing.assert_allclose(static, reference(model, x, domain), atol=1e-5)


def test_folded_model_saves_and_loads(tmp_path):
    folded = fold_domain(small_model(), 1)
    path = str(tmp_path / "folded.keras")
    folded.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(to_numpy(loaded(images())), to_numpy(folded(images())), atol=1e-6)


def test_bad_domain_and_unsupported_layer():
    model = small_model()
    with pytest.raises(ValueError, match="domain=3"):
        fold_domain(model, T)
    with pytest.raises(TypeError, match="domain"):
        fold_domain(model, np.array([0, 1]))

    class Gate(keras.layers.Layer):
        def call(self, x, domain):
            return x * keras.ops.cast(keras.ops.reshape(domain, (-1, 1, 1, 1)), x.dtype)

    gated = small_model(extra=lambda x, domain: Gate(name="my_gate")(x, domain))
    with pytest.raises(ValueError, match="'my_gate' \\(Gate\\)"):
        fold_domain(gated, 0)


def test_adapter_on_activated_conv_keeps_bn_separate():
    image = keras.Input((6, 6, 2), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
    x = ResidualAdapter(conv, T)(image, domain=domain)
    x = DomainBatchNormalization(T)(x, domain=domain)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = DomainHead(NUM_CLASSES)(x, domain=domain)
    model = randomize(keras.Model({"image": image, "domain": domain}, logits))
    x = rng(5).normal(size=(2, 6, 6, 2)).astype("float32")
    for domain in range(T):
        folded = fold_domain(model, domain)
        assert "BatchNormalization" in layer_types(folded)
        np.testing.assert_allclose(to_numpy(folded(x)), reference(model, x, domain), atol=1e-5)


@pytest.mark.parametrize("adapter", ["parallel", "series"])
def test_resnet26_folds_to_the_base_network(adapter):
    resnet = pytest.importorskip("keras_mdn.models.resnet26")
    kwargs = dict(num_classes=[3, 4], input_shape=(16, 16, 3), width_factor=0.125)
    model = randomize(resnet.resnet26(adapter=adapter, **kwargs), scale=0.05)
    base = fold_domain(resnet.resnet26(adapter=None, **kwargs), 1)
    x = rng(4).normal(size=(2, 16, 16, 3)).astype("float32")
    folded = fold_domain(model, 1)
    expected = to_numpy(model({"image": x, "domain": np.ones((2,), "int32")}))[:, :4]
    np.testing.assert_allclose(to_numpy(folded(x)), expected, atol=1e-5, rtol=0)
    assert folded.count_params() == base.count_params()
    assert layer_types(folded) == layer_types(base)
    assert "ResidualAdapter" not in layer_types(folded)


def factorized_model(factorization="laf", rank=2):
    """features -> FactorizedConv2D(task) -> domain BN -> ReLU -> pool -> FactorizedDense."""
    from keras_mdn import FactorizedConv2D, FactorizedDense

    image = keras.Input((6, 6, 3), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    x = FactorizedConv2D(5, 3, num_tasks=T, rank=2, padding="same", name="fconv")(
        image, task=domain
    )
    x = DomainBatchNormalization(T, name="bn")(x, domain=domain)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = FactorizedDense(64, num_tasks=T, factorization=factorization, rank=rank,
                        activation="relu", name="fdense")(x, task=domain)
    logits = DomainHead(NUM_CLASSES, name="head")(x, domain=domain)
    model = keras.Model({"image": image, "domain": domain}, logits)
    return randomize(model)


@pytest.mark.parametrize("factorized", ["reconstruct", "keep", "auto"])
def test_factorized_layers_fold_per_task(factorized):
    model = factorized_model()
    x = rng(6).normal(size=(3, 6, 6, 3)).astype("float32")
    for domain in range(T):
        folded = fold_domain(model, domain, factorized=factorized)
        expected = reference(model, x, domain)
        np.testing.assert_allclose(to_numpy(folded(x)), expected, atol=1e-5, rtol=0)
        types = layer_types(folded)
        if factorized == "reconstruct":
            assert "FactorizedDense" not in types and "FactorizedConv2D" not in types
            assert types.count("BatchNormalization") == 0  # the BN folded into the conv
        if factorized == "keep":
            assert "FactorizedDense" in types and "FactorizedConv2D" in types
        if factorized == "auto":
            # The 3x3x3x5 conv kernel (135) is smaller than the layer's factors: reconstructed.
            # The 5x64 dense: LAF factors 5*64*2 + 2*3 + 3*64 > 320: reconstructed too.
            assert "FactorizedConv2D" not in types


def test_factorized_auto_keeps_a_compressing_layer():
    from keras_mdn import FactorizedDense

    features = keras.Input((64,), name="features")
    domain = keras.Input((), dtype="int32", name="domain")
    x = FactorizedDense(64, num_tasks=T, factorization="tucker", rank=4, name="fdense")(
        features, task=domain
    )
    model = keras.Model({"features": features, "domain": domain}, x)
    folded = fold_domain(model, 1)
    assert "FactorizedDense" in layer_types(folded)  # Tucker rank 4: far below 64 * 64
    x = rng(2).normal(size=(2, 64)).astype("float32")
    expected = to_numpy(model({"features": x, "domain": np.ones((2,), "int32")}))
    np.testing.assert_allclose(to_numpy(folded(x)), expected, atol=1e-5)
