import keras
import numpy as np
import pytest

from keras_mdn import DomainBatchNormalization, DomainHead, ResidualAdapter
from keras_mdn.surgery import add_adapters
from tests.helpers import rng, save_and_load, to_numpy
from tests.surgery.toy import infer, randomize_adapters, toy_cnn

T = 3


def _x(n=4, size=8):
    return rng(0).normal(size=(n, size, size, 3)).astype("float32")


def _adapted_names(model):
    return [layer.name for layer in model.layers if isinstance(layer, ResidualAdapter)]


@pytest.mark.parametrize("mode", ["parallel", "series"])
def test_every_domain_starts_as_the_original(mode):
    base = toy_cnn()
    x = _x()
    expected = to_numpy(base(x, training=False))
    multi = add_adapters(base, T, mode=mode)
    assert [t.name for t in multi.inputs] == ["image", "domain"]
    assert _adapted_names(multi) == ["conv1", "conv2", "conv3", "hidden"]
    for d in range(T):
        np.testing.assert_allclose(infer(multi, x, d), expected, atol=1e-6)
    np.testing.assert_allclose(infer(multi, x, [0, 2, 1, 0]), expected, atol=1e-6)


def test_layers_are_copied_and_batch_norms_copied_per_domain():
    base = toy_cnn()
    weights = [to_numpy(w) for w in base.weights]
    multi = add_adapters(base, T, freeze_base=True)
    # A copy: no layer or variable of the original is reused, and the original is untouched.
    assert multi.get_layer("conv1").layer is not base.get_layer("conv1")
    assert multi.get_layer("depthwise") is not base.get_layer("depthwise")
    assert not {id(w) for w in multi.weights} & {id(w) for w in base.weights}
    assert all(layer.trainable for layer in base.layers)
    for weight, value in zip(base.weights, weights):
        np.testing.assert_array_equal(to_numpy(weight), value)
    np.testing.assert_array_equal(to_numpy(multi.get_layer("conv1").layer.kernel),
                                  to_numpy(base.get_layer("conv1").kernel))
    for name in ("bn1", "bn2"):
        bn, domain_bn = base.get_layer(name), multi.get_layer(name)
        assert isinstance(domain_bn, DomainBatchNormalization)
        assert domain_bn.momentum == bn.momentum and domain_bn.epsilon == bn.epsilon
        for attribute in ("gamma", "beta", "moving_mean", "moving_variance"):
            table = to_numpy(getattr(domain_bn, attribute))
            assert table.shape == (T, bn.gamma.shape[0])
            for d in range(T):
                np.testing.assert_array_equal(table[d], to_numpy(getattr(bn, attribute)))
    # The adapted model changes with the adapters; the original does not.
    randomize_adapters(multi)
    x = _x()
    assert not np.allclose(infer(multi, x, 1), to_numpy(base(x, training=False)), atol=1e-4)


def test_freeze_base_leaves_only_domain_parameters_trainable():
    base = toy_cnn()
    multi = add_adapters(base, T, num_classes=[3, 3, 2])
    trainable = {w.path.split("/")[-1] for w in multi.trainable_weights}
    assert trainable == {"adapter_kernel", "gamma", "beta", "kernel", "bias"}
    kernels = [w for w in multi.trainable_weights if w.path.split("/")[-1] == "kernel"]
    assert kernels == [multi.get_layer("predictions").kernel]  # the DomainHead
    assert not multi.get_layer("depthwise").trainable
    assert base.get_layer("depthwise").trainable  # the original is not changed


def test_placement_by_depth_names_and_predicate():
    base = toy_cnn()
    assert _adapted_names(add_adapters(base, T, where="shallow")) == ["conv1", "conv2"]
    assert _adapted_names(add_adapters(base, T, where="deep")) == ["conv3", "hidden"]
    assert _adapted_names(add_adapters(base, T, where="deep", depth_fraction=0.1)) == ["hidden"]
    assert _adapted_names(add_adapters(base, T, where=["conv2", "hidden"])) == ["conv2", "hidden"]
    picked = add_adapters(base, T, where=lambda layer: layer.name.endswith("3"))
    assert _adapted_names(picked) == ["conv3"]
    # Batch norms become per-domain whatever the placement ("BN only" with where=[]).
    bn_only = add_adapters(base, T, where=[])
    assert _adapted_names(bn_only) == []
    assert isinstance(bn_only.get_layer("bn1"), DomainBatchNormalization)


def test_domain_head_replaces_the_classifier():
    base = toy_cnn()
    x = _x()
    expected = to_numpy(base(x, training=False))
    multi = add_adapters(base, T, num_classes=[3, 4, 3])
    head = multi.get_layer("predictions")
    assert isinstance(head, DomainHead) and head.num_classes == [3, 4, 3]
    # Domains with the original's 3 classes start from its weights (softmax kept).
    for d in (0, 2):
        np.testing.assert_allclose(infer(multi, x, d)[:, :3], expected, atol=1e-6)
        np.testing.assert_allclose(infer(multi, x, d)[:, 3], 0.0, atol=1e-12)
    probabilities = infer(multi, x, 1)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_nested_functional_backbone_is_inlined():
    backbone = toy_cnn()
    backbone = keras.Model(backbone.input, backbone.get_layer("pool").output, name="backbone")
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), backbone, keras.layers.Dense(2, name="top")], name="seq"
    )
    x = _x()
    expected = to_numpy(model(x, training=False))
    multi = add_adapters(model, T, num_classes=[2, 2, 5])
    assert _adapted_names(multi) == ["conv1", "conv2", "conv3"]
    np.testing.assert_allclose(infer(multi, x, 1)[:, :2], expected, atol=1e-6)


def test_low_rank_adapters_are_capped_per_layer():
    multi = add_adapters(toy_cnn(), T, rank=5)
    assert multi.get_layer("conv1").rank == 3  # 3 input channels
    assert multi.get_layer("conv2").rank == 4
    assert multi.get_layer("conv3").rank == 5


def test_mobilenet_v2_surgery_trains_and_round_trips(tmp_path):
    base = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=4
    )
    for layer in base.layers:  # non-trivial statistics so the BN copy is checked
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(
                rng(1).uniform(0.5, 2.0, size=layer.moving_variance.shape).astype("float32")
            )
    x = rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    expected = to_numpy(base(x, training=False))
    multi = add_adapters(base, 2, where="deep", num_classes=[4, 3])
    np.testing.assert_allclose(infer(multi, x, 0), expected, atol=1e-5)
    assert infer(multi, x, 1).shape == (4, 4)
    multi.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        run_eagerly=True,
    )
    before = to_numpy(multi.get_layer("Conv_1").adapter_kernel)
    # Two examples per domain: the last feature map is 1x1, so a domain's batch statistics
    # need two examples to have a variance (and a gradient).
    multi.fit([x, np.array([0, 1, 0, 1], "int32")], np.array([3, 2, 0, 1]), epochs=1, verbose=0)
    assert not np.array_equal(before, to_numpy(multi.get_layer("Conv_1").adapter_kernel))
    loaded = save_and_load(multi, tmp_path)
    for d in range(2):
        np.testing.assert_allclose(infer(loaded, x, d), infer(multi, x, d), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(where="middle"), "where='middle'"),
        (dict(where=["conv1", "nope"]), "nope"),
        (dict(where=["depthwise"]), "DepthwiseConv2D"),
        (dict(where=3), "where=3"),
        (dict(where="deep", depth_fraction=0.0), "depth_fraction=0.0"),
        (dict(num_classes=[3, 3]), "num_classes"),
        (dict(rank=0), "rank=0"),
        (dict(mode="sideways"), "mode='sideways'"),
        (dict(classifier="conv1", num_classes=[3, 3, 3]), "classifier='conv1'"),
        (dict(where=["predictions"], num_classes=[3, 3, 3]), "cannot also take an adapter"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        add_adapters(toy_cnn(), T, **kwargs)


def test_model_without_convs_and_bad_models():
    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    with pytest.raises(ValueError, match="no Conv1D, Conv2D or Dense"):
        add_adapters(keras.Model(inputs, pooled), T)
    with pytest.raises(ValueError, match="num_classes"):
        add_adapters(keras.Model(inputs, pooled), T, where=[], num_classes=[2, 2, 2])
    with pytest.raises(TypeError, match="keras.Model"):
        add_adapters(keras.layers.Dense(3), T)
    with pytest.raises(ValueError, match="num_domains"):
        add_adapters(toy_cnn(), 0)


def test_shared_batch_norms_and_the_source_domain_head():
    base = toy_cnn()
    x = _x()
    expected = to_numpy(base(x, training=False))
    frozen = add_adapters(base, T, where=[], batch_norms="shared", num_classes=[3, 3, 2],
                          source_domain=1)
    assert type(frozen.get_layer("bn1")) is keras.layers.BatchNormalization
    assert {w.path.split("/")[-1] for w in frozen.trainable_weights} == {"kernel", "bias"}
    np.testing.assert_allclose(infer(frozen, x, 1), expected, atol=1e-6)
    # Domain 0 has 3 classes too, but only the source domain starts from the classifier.
    assert not np.allclose(infer(frozen, x, 0), expected, atol=1e-3)
    with pytest.raises(ValueError, match="source_domain=2"):
        add_adapters(base, T, num_classes=[3, 3, 2], source_domain=2)
    with pytest.raises(ValueError, match="source_domain=3"):
        add_adapters(base, T, num_classes=[3, 3, 2], source_domain=3)
    with pytest.raises(ValueError, match="batch_norms='none'"):
        add_adapters(base, T, batch_norms="none")
