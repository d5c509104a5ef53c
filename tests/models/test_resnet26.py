import keras
import numpy as np
import pytest

from keras_mdn import DomainBatchNormalization, ResidualAdapter
from keras_mdn.models import resnet26
from tests.helpers import rng, save_and_load, to_numpy
from tests.models import authors_resnet26 as authors
from tests.models.authors_resnet26 import authors_state_dict

CLASSES = [3, 5]
SMALL_SHAPE = dict(input_shape=(8, 8, 3))
SMALL = dict(width_factor=0.125, **SMALL_SHAPE)  # widths 4 / 8 / 16 / 32


def _infer(model, x, domain):
    # Eager calls: tracing a graph of this model costs more than the whole test on 2 cores.
    return to_numpy(model([x, np.asarray(domain, "int32")], training=False))


def _randomize(model, seed=1, input_shape=(8, 8, 3)):
    """Random BNs and adapters so the reference is not trivial, at a realistic scale.

    Each domain's moving statistics are those of a random batch through the randomised
    network (then perturbed), so activations stay O(1) and float32 round-off stays far below
    the tolerances: random statistics instead give logits of 1e3 after 26 layers.
    """
    r = rng(seed)
    for weight in model.weights:
        name = weight.path.split("/")[-1]
        if name in ("beta", "adapter_kernel"):
            weight.assign((r.normal(size=weight.shape) * 0.2).astype("float32"))
        elif name == "gamma":
            weight.assign(r.uniform(0.5, 1.5, size=weight.shape).astype("float32"))
    norms = [layer for layer in model.layers if isinstance(layer, DomainBatchNormalization)]
    norms += [layer.adapter_norm for layer in model.layers
              if isinstance(layer, ResidualAdapter) and layer.adapter_norm is not None]
    momentums = [norm.momentum for norm in norms]
    x = r.normal(size=(8, *input_shape)).astype("float32")
    for norm in norms:
        norm.momentum = 0.0  # moving statistics := the batch's
    for domain in range(model.get_layer("head").num_domains):
        model([x, np.full((8,), domain, "int32")], training=True)
    for norm, momentum in zip(norms, momentums):
        norm.momentum = momentum
        norm.moving_mean.assign(norm.moving_mean + r.normal(size=norm.moving_mean.shape) * 0.1)
        norm.moving_variance.assign(
            norm.moving_variance * r.uniform(0.8, 1.25, size=norm.moving_variance.shape)
        )


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


@pytest.mark.parametrize(
    "adapter, width_factor", [(None, 0.125), ("parallel", 0.125), ("series", 0.125),
                              ("parallel", 0.3)]
)
def test_matches_the_authors_network_for_every_domain(adapter, width_factor):
    # 16 px: every stride-2 conv sees an even size above 1, where padding conventions differ.
    model = resnet26(CLASSES, adapter=adapter, width_factor=width_factor, input_shape=(16, 16, 3))
    _randomize(model, input_shape=(16, 16, 3))
    state = authors_state_dict(model, adapter)
    x = rng(0).normal(size=(3, 16, 16, 3)).astype("float32")
    for d in range(2):
        out = _infer(model, x, np.full((3,), d, "int32"))
        ref = authors.forward(state, x, d, adapter)
        np.testing.assert_allclose(out[:, : CLASSES[d]], ref, atol=1e-5, rtol=1e-5)
    # A mixed batch gives each example its own domain's logits.
    mixed = _infer(model, x, [0, 1, 0])
    np.testing.assert_allclose(mixed[1], authors.forward(state, x[1:2], 1, adapter)[0],
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(mixed[2, :3], authors.forward(state, x[2:3], 0, adapter)[0],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("adapter", [None, "parallel", "series"])
def test_training_step_matches_the_authors_batch_norms(adapter):
    """Training mode: batch statistics (epsilon) and running means (momentum) of every BN."""
    model = resnet26(CLASSES, adapter=adapter, width_factor=0.125, input_shape=(16, 16, 3))
    _randomize(model, input_shape=(16, 16, 3))
    state = authors_state_dict(model, adapter)
    x = rng(2).normal(size=(4, 16, 16, 3)).astype("float32")
    out = to_numpy(model([x, np.ones((4,), "int32")], training=True))
    ref = authors.forward(state, x, 1, adapter, training=True)
    np.testing.assert_allclose(out[:, : CLASSES[1]], ref, atol=1e-5, rtol=1e-5)
    after = authors_state_dict(model, adapter)
    means = [key for key in state if key.endswith("running_mean")]
    assert len(means) == 2 * (51 if adapter == "series" else 26)
    for key in means:
        np.testing.assert_allclose(after[key], state[key], atol=1e-6, rtol=0, err_msg=key)


def test_strided_convs_pad_one_on_every_side():
    model = resnet26(CLASSES, adapter="parallel", **SMALL)
    for stage in (1, 2, 3):
        pad = model.get_layer(f"stage{stage}_block1_pad1")
        conv = model.get_layer(f"stage{stage}_block1_conv1")
        assert pad.padding == ((1, 1), (1, 1))
        assert conv.layer.padding == "valid" and conv.layer.strides == (2, 2)
        assert conv.input[0] is pad.output
        # The adapter reads padded position 2i + 1, i.e. input 2i: the centre tap.
        assert conv.tap == (1, 1)
    stride_one = [layer for layer in model.layers if isinstance(layer, ResidualAdapter)
                  and layer.layer.strides == (1, 1)]
    assert len(stride_one) == 22 and all(c.layer.padding == "same" for c in stride_one)


def test_widths_are_rounded_as_the_authors_do():
    model = resnet26(CLASSES, adapter="parallel", width_factor=0.3, **SMALL_SHAPE)
    widths = [model.get_layer(name).layer.filters
              for name in ("stem_conv", "stage1_block1_conv1", "stage2_block1_conv1",
                           "stage3_block1_conv1")]
    assert widths == [9, 19, 38, 76]  # int(32 f), int(64 f), int(128 f), int(256 f)
    assert model.get_layer("stage1_block1_shortcut").output.shape[-1] == 19
    assert model.get_layer("final_bn").moving_mean.shape == (2, 76)


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
        (dict(num_classes=[3], adapter="parallel", adapter_dropout=1.0), "adapter_dropout=1.0"),
        (dict(num_classes=[3], adapter="parallel", adapter_dropout=(0.5,)), "adapter_dropout"),
        (dict(num_classes=[3], adapter="series", adapter_dropout=0.5), "adapter='series'"),
        (dict(num_classes=[3], adapter_dropout=(0.0, 0.5)), "adapter=None"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        resnet26(**kwargs)


def test_fractional_domain_ids_are_not_truncated_by_the_model_input():
    model = resnet26(CLASSES, adapter="parallel", **SMALL)
    assert model.get_layer("domain").output.dtype == "float32"
    x = rng(2).normal(size=(3, 8, 8, 3)).astype("float32")
    ids = np.array([0.7, 1.0, 1.5], "float32")
    with pytest.raises(ValueError, match="whole numbers"):
        model([x, ids])
    if keras.backend.backend() == "torch":  # eager predict: the values are checked too
        with pytest.raises(ValueError, match="whole numbers"):
            model.predict({"image": x, "domain": ids}, verbose=0)
        return
    logits = model.predict({"image": x, "domain": ids}, verbose=0)  # compiled: NaN rows
    assert np.isnan(logits[[0, 2]]).all() and np.isfinite(logits[1]).all()
    exact = model.predict({"image": x, "domain": np.array([1, 1, 1], "int32")}, verbose=0)
    np.testing.assert_allclose(logits[1], exact[1], rtol=1e-6, atol=1e-6)


def test_adapter_dropout_per_conv_position_as_the_authors_isdropout1_and_2():
    model = resnet26(CLASSES, adapter="parallel", adapter_dropout=(0.5, 0.25), **SMALL)
    adapters = [layer for layer in model.layers if isinstance(layer, ResidualAdapter)]
    assert len(adapters) == 25
    for layer in adapters:
        # The stem is a first conv (`second=0`) in the authors' code.
        expected = 0.25 if layer.name.endswith("_conv2") else 0.5
        assert layer.dropout == expected, layer.name
    both = resnet26(CLASSES, adapter="parallel", adapter_dropout=0.3, **SMALL)
    assert {layer.dropout for layer in both.layers if isinstance(layer, ResidualAdapter)} == {0.3}
    x = rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    reference = resnet26(CLASSES, adapter="parallel", **SMALL)
    reference.set_weights(model.get_weights())
    _randomize(reference)
    model.set_weights(reference.get_weights())
    domain = np.array([1, 0])
    np.testing.assert_array_equal(_infer(model, x, domain), _infer(reference, x, domain))
    dropped = to_numpy(model([x, domain.astype("int32")], training=True))
    assert np.isfinite(dropped).all()
    assert not np.allclose(dropped, to_numpy(reference([x, domain.astype("int32")], training=True)))
