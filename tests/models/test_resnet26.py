import keras
import numpy as np
import pytest

from keras_mdn import DomainBatchNormalization, ResidualAdapter
from keras_mdn.models import resnet26
from tests.helpers import np_conv, rng, save_and_load, to_numpy

CLASSES = [3, 5]
SMALL = dict(width_factor=0.125, input_shape=(8, 8, 3))  # widths 4 / 8 / 16 / 32


def _infer(model, x, domain):
    # Eager calls: tracing a graph of this model costs more than the whole test on 2 cores.
    return to_numpy(model([x, np.asarray(domain, "int32")], training=False))


def _randomize(model, seed=1):
    """Random BN statistics and adapters so the numpy reference is not trivial."""
    r = rng(seed)
    for weight in model.weights:
        name = weight.path.split("/")[-1]
        if name == "moving_variance":
            weight.assign(r.uniform(0.5, 2.0, size=weight.shape).astype("float32"))
        elif name in ("moving_mean", "beta", "adapter_kernel"):
            weight.assign((r.normal(size=weight.shape) * 0.2).astype("float32"))
        elif name == "gamma":
            weight.assign(r.uniform(0.5, 1.5, size=weight.shape).astype("float32"))


def _np_bn(layer, x, d):
    mean, var = to_numpy(layer.moving_mean)[d], to_numpy(layer.moving_variance)[d]
    gamma, beta = to_numpy(layer.gamma)[d], to_numpy(layer.beta)[d]
    return (x - mean) / np.sqrt(var + layer.epsilon) * gamma + beta


def _np_conv_unit(model, name, bn_name, x, d):
    layer = model.get_layer(name)
    if isinstance(layer, ResidualAdapter):
        conv = layer.layer
        kernel = to_numpy(conv.kernel)
        y = np_conv(x, kernel, conv.strides, conv.padding)
        if layer.mode == "parallel":
            tap_kernel = np.zeros_like(kernel)
            tap_kernel[layer.tap] = to_numpy(layer.adapter_matrix(d))
            y = y + np_conv(x, tap_kernel, conv.strides, conv.padding)
        else:
            y = y + _np_bn(layer.adapter_norm, y, d) @ to_numpy(layer.adapter_matrix(d))
    else:
        y = np_conv(x, to_numpy(layer.kernel), layer.strides, layer.padding)
    return _np_bn(model.get_layer(bn_name), y, d)


def _np_resnet26(model, x, d):
    """The authors' ResNet-26 forward pass in numpy, inference mode, one domain."""
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    h = _np_conv_unit(model, "stem_conv", "stem_bn", x, d)  # no ReLU after the stem
    for s in range(1, 4):
        for b in range(1, 5):
            p = f"stage{s}_block{b}"
            y = relu(_np_conv_unit(model, f"{p}_conv1", f"{p}_bn1", h, d))
            y = _np_conv_unit(model, f"{p}_conv2", f"{p}_bn2", y, d)
            if b == 1:
                n, hh, ww, c = h.shape
                pooled = h.reshape(n, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))
                h = np.concatenate([pooled, np.zeros_like(pooled)], axis=-1)
            h = relu(y + h)
    h = relu(_np_bn(model.get_layer("final_bn"), h, d)).mean(axis=(1, 2))
    kernel, bias = model.get_layer("head").domain_weights(d)
    logits = h @ to_numpy(kernel) + to_numpy(bias)
    return logits


def test_parameter_counts_at_width_factor_one():
    model = resnet26([10, 5], adapter="parallel")
    counts = {}
    for weight in model.weights:
        name = weight.path.split("/")[-1]
        counts[name] = counts.get(name, 0) + int(np.prod(weight.shape))
    head = model.get_layer("head")
    assert counts["kernel"] - int(np.prod(head.kernel.shape)) == 5_806_944  # ~5.8 M shared
    assert counts["adapter_kernel"] // 2 == 645_216  # ~0.65 M per domain
    assert counts["gamma"] // 2 + counts["beta"] // 2 == 7_744  # ~7.7 k per domain
    assert counts["adapter_kernel"] / 2 / 5_806_944 == pytest.approx(0.111, abs=1e-3)
    convs = [layer for layer in model.layers if isinstance(layer, ResidualAdapter)]
    assert len(convs) == 25
    assert all(c.layer.kernel_size == (3, 3) and c.layer.use_bias is False for c in convs)


@pytest.mark.parametrize("adapter", [None, "parallel", "series"])
def test_matches_numpy_reference_for_every_domain(adapter):
    model = resnet26(CLASSES, adapter=adapter, **SMALL)
    _randomize(model)
    x = rng(0).normal(size=(3, 8, 8, 3)).astype("float32")
    for d in range(2):
        domain = np.full((3,), d, "int32")
        out = _infer(model, x, domain)
        ref = _np_resnet26(model, x.astype("float64"), d)
        np.testing.assert_allclose(out[:, : CLASSES[d]], ref, atol=1e-4, rtol=1e-4)
    # A mixed batch gives each example its own domain's output.
    mixed = _infer(model, x, [0, 1, 0])
    np.testing.assert_allclose(mixed[1, :5], _np_resnet26(model, x[1:2], 1)[0], atol=1e-4)


def test_series_parameter_counts_follow_the_widths():
    model = resnet26(CLASSES, adapter="series", **SMALL)
    widths = [4] + [8] * 8 + [16] * 8 + [32] * 8
    adapters = sum(int(np.prod(w.shape)) for w in model.weights if "adapter_kernel" in w.path)
    assert adapters == 2 * sum(c * c for c in widths)


def test_stable_layer_names_and_structure():
    model = resnet26(CLASSES, adapter="parallel", **SMALL)
    names = {layer.name for layer in model.layers}
    assert {"image", "domain", "stem_conv", "stem_bn", "final_bn", "pool", "head"} <= names
    for s in range(1, 4):
        for b in range(1, 5):
            for i in (1, 2):
                layer = model.get_layer(f"stage{s}_block{b}_conv{i}")
                assert isinstance(layer, ResidualAdapter)
                assert layer.layer.name == layer.name
                assert isinstance(
                    model.get_layer(f"stage{s}_block{b}_bn{i}"), DomainBatchNormalization
                )
    assert model.get_layer("stage2_block1_conv1").layer.strides == (2, 2)
    assert model.get_layer("stage2_block2_conv1").layer.strides == (1, 1)
    assert model.output.shape == (None, 5)
    assert [t.name for t in model.inputs] == ["image", "domain"]


def test_freeze_shared_leaves_only_domain_parameters_trainable():
    model = resnet26(CLASSES, adapter="parallel", freeze_shared=True, **SMALL)
    trainable = {w.path.split("/")[-1] for w in model.trainable_weights}
    assert trainable == {"adapter_kernel", "gamma", "beta", "kernel", "bias"}
    kernels = [w for w in model.trainable_weights if w.path.endswith("/kernel")]
    assert kernels == [model.get_layer("head").kernel]
    base = resnet26(CLASSES, freeze_shared=True, **SMALL)
    assert not any(w.path.endswith("conv/kernel") for w in base.trainable_weights)


def test_low_rank_adapters_are_capped_per_layer():
    model = resnet26(CLASSES, adapter="parallel", rank=6, **SMALL)
    assert model.get_layer("stem_conv").rank == 3  # 3 input channels
    assert model.get_layer("stage1_block1_conv1").rank == 4
    assert model.get_layer("stage3_block4_conv2").rank == 6


def test_trains_and_round_trips(tmp_path):
    model = resnet26(CLASSES, adapter="parallel", adapter_regularizer="l2", **SMALL)
    x = rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    domain = np.array([0, 1, 1, 0], "int32")
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    before = to_numpy(model.get_layer("stage1_block1_conv1").adapter_kernel)
    model.fit({"image": x, "domain": domain}, np.array([0, 4, 1, 2]), epochs=1, verbose=0)
    assert not np.array_equal(
        before, to_numpy(model.get_layer("stage1_block1_conv1").adapter_kernel)
    )
    loaded = save_and_load(model, tmp_path)
    np.testing.assert_array_equal(_infer(loaded, x, domain), _infer(model, x, domain))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_classes=[3], adapter="serial"), "adapter='serial'"),
        (dict(num_classes=3), "num_domains"),
        (dict(num_classes=[3, 4], num_domains=3), "num_domains=3"),
        (dict(num_classes=[3, 0]), "num_classes"),
        (dict(num_classes=[3], width_factor=0.01), "width_factor=0.01"),
        (dict(num_classes=[3], input_shape=(None, 8, 3)), "input_shape"),
        (dict(num_classes=[3], adapter="parallel", rank=0), "rank=0"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        resnet26(**kwargs)
