import keras
import numpy as np
import pytest

from keras_mdn import DomainBatchNormalization, DomainHead, FactorizedDense, ResidualAdapter
from keras_mdn.surgery import FrozenEntries, add_domain, add_domains, train_only_domains
from tests.helpers import rng, save_and_load, to_numpy
from tests.surgery.toy import assert_same_outputs, infer, toy_multi_domain

CLASSES = (3, 4, 2)


def _x(n=4):
    return rng(0).normal(size=(n, 6, 6, 3)).astype("float32")


@pytest.mark.parametrize("mode", ["parallel", "series"])
def test_existing_domains_are_bit_identical(mode):
    model = toy_multi_domain(mode=mode, rank=2 if mode == "series" else None)
    x = _x()
    before = [infer(model, x, d) for d in range(3)]
    grown = add_domain(model, num_classes=5)
    assert grown.get_layer("head").num_classes == [3, 4, 2, 5]
    assert grown.get_layer("conv1").num_domains == 4
    # An independent copy: nothing of the original model is shared or changed.
    assert grown.get_layer("conv1").layer is not model.get_layer("conv1").layer
    assert not {id(w) for w in grown.weights} & {id(w) for w in model.weights}
    assert all(layer.trainable for layer in model.layers)
    fresh = toy_multi_domain(mode=mode, rank=2 if mode == "series" else None)
    assert len(model.trainable_weights) == len(fresh.trainable_weights)
    for d in range(3):
        assert_same_outputs(infer(grown, x, d)[:, :4], before[d])
    assert infer(grown, x, 3).shape == (4, 5)


def test_new_domain_from_initializers_or_from_an_existing_domain():
    model = toy_multi_domain()
    x = _x()
    fresh = add_domain(model, num_classes=4, freeze_existing=False)
    assert not np.any(to_numpy(fresh.get_layer("conv1").adapter_kernel)[3])
    np.testing.assert_array_equal(to_numpy(fresh.get_layer("bn1").gamma)[3], 1.0)
    np.testing.assert_array_equal(to_numpy(fresh.get_layer("bn1").moving_variance)[3], 1.0)
    copied = add_domain(model, num_classes=4, init_from=1, freeze_existing=False)
    # Domain 1 has 4 classes too: the copy computes exactly what domain 1 computes.
    assert_same_outputs(infer(copied, x, 3), infer(model, x, 1))


def test_training_the_new_domain_leaves_old_domains_bit_identical():
    model = toy_multi_domain()
    # Regularizers on every per-domain table push every row, frozen ones included.
    for layer in model.layers:
        if isinstance(layer, ResidualAdapter):
            layer.adapter_regularizer = keras.regularizers.L2(0.1)
    x = _x(8)
    shared_kernel = to_numpy(model.get_layer("conv2").layer.kernel)
    grown = add_domain(model, num_classes=2)
    before = [infer(grown, x, d) for d in range(3)]
    head = grown.get_layer("head")
    head_before = to_numpy(head.kernel)
    new_before = infer(grown, x, 3)
    grown.compile(
        optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    domain = np.full((8,), 3, "int32")
    labels = rng(1).integers(0, 2, size=8)
    grown.fit([x, domain], labels, batch_size=4, epochs=2, verbose=0)  # compiled train step
    for d in range(3):
        np.testing.assert_array_equal(infer(grown, x, d), before[d])
    assert not np.allclose(infer(grown, x, 3), new_before)
    np.testing.assert_array_equal(to_numpy(grown.get_layer("conv2").layer.kernel), shared_kernel)
    head_after = to_numpy(head.kernel)
    np.testing.assert_array_equal(head_after[:, :9], head_before[:, :9])  # 3 + 4 + 2 columns
    assert not np.array_equal(head_after[:, 9:], head_before[:, 9:])


def test_train_only_domains_sets_trainable_flags_and_constraints():
    model = toy_multi_domain()
    train_only_domains(model, [1])
    trainable = {w.path for w in model.trainable_weights}
    assert not any(w.path in trainable for w in model.get_layer("conv1").layer.weights)
    adapter = model.get_layer("conv1").adapter_kernel
    assert adapter.path in trainable and isinstance(adapter.constraint, FrozenEntries)
    mask = adapter.constraint.trainable_mask
    assert mask[1].all() and not mask[0].any() and not mask[2].any()
    head = model.get_layer("head")
    assert isinstance(head, DomainHead)
    column_mask = head.kernel.constraint.trainable_mask
    assert column_mask[:, 3:7].all() and column_mask.sum() == head.kernel.shape[0] * 4
    # The constraint puts the frozen entries back whatever the update did.
    value = to_numpy(adapter)
    restored = to_numpy(adapter.constraint(keras.ops.convert_to_tensor(value + 1.0)))
    np.testing.assert_array_equal(restored[0], value[0])
    np.testing.assert_array_equal(restored[1], value[1] + 1.0)
    train_only_domains(model, None)
    assert adapter.constraint is None
    assert len(model.trainable_weights) == sum(1 for w in model.weights if "moving" not in w.path)


def test_grown_model_round_trips(tmp_path):
    grown = add_domain(toy_multi_domain(), num_classes=3)
    x = _x()
    loaded = save_and_load(grown, tmp_path)
    for d in range(4):
        np.testing.assert_array_equal(infer(loaded, x, d), infer(grown, x, d))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "num_classes=None"),
        (dict(num_classes=0), "num_classes=0"),
        (dict(num_classes=2, init_from=3), "init_from=3"),
        (dict(num_classes=2, init_from=-1), "init_from=-1"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        add_domain(toy_multi_domain(), **kwargs)


def test_models_without_domains_or_head():
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="no domain layer"):
        add_domain(plain)
    with pytest.raises(ValueError, match="domains"):
        train_only_domains(toy_multi_domain(), [3])


def test_add_domains_adds_several_trainable_domains_at_once():
    model = toy_multi_domain()
    x = _x(8)
    before = [infer(model, x, d) for d in range(3)]
    weights_before = [to_numpy(w) for w in model.weights]
    grown = add_domains(model, num_classes=[2, 5], init_from=0)
    assert grown.get_layer("head").num_classes == [3, 4, 2, 2, 5]
    # Both new domains train (chained add_domain would freeze the first one).
    adapter = grown.get_layer("conv1").adapter_kernel
    mask = adapter.constraint.trainable_mask
    assert mask[3].all() and mask[4].all() and not mask[:3].any()
    grown.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    domain = np.array([3, 4] * 4, "int32")
    new_before = [infer(grown, x, 3), infer(grown, x, 4)]
    grown.fit([x, domain], rng(2).integers(0, 2, size=8), batch_size=8, epochs=1, verbose=0)
    for d in range(3):
        assert_same_outputs(infer(grown, x, d)[:, :4], before[d])
    assert not np.allclose(infer(grown, x, 3), new_before[0])
    assert not np.allclose(infer(grown, x, 4), new_before[1])
    # The original model is untouched by the surgery and by training the new model.
    for weight, value in zip(model.weights, weights_before):
        np.testing.assert_array_equal(to_numpy(weight), value)
    for d in range(3):
        np.testing.assert_array_equal(infer(model, x, d), before[d])


def test_add_domains_without_heads_takes_a_count():
    image = keras.Input((6,), name="features")
    domain = keras.Input((), dtype="int32", name="domain")
    y = FactorizedDense(4, num_tasks=2, rank=2, name="fdense")(image, task=domain)
    y = DomainBatchNormalization(2, name="bn")(y, domain)
    model = keras.Model([image, domain], y)
    x = rng(3).normal(size=(3, 6)).astype("float32")
    grown = add_domains(model, 2, init_from=1)
    assert grown.get_layer("fdense").num_tasks == 4
    for d, source in ((0, 0), (1, 1), (2, 1), (3, 1)):
        expected = to_numpy(model([x, np.full((3,), source, "int32")], training=False))
        actual = to_numpy(grown([x, np.full((3,), d, "int32")], training=False))
        np.testing.assert_allclose(actual, expected, atol=1e-6)
    with pytest.raises(ValueError, match="no DomainHead"):
        add_domains(model, 2, num_classes=3)
    with pytest.raises(ValueError, match="count=0"):
        add_domains(model, 0)


def test_train_only_domains_chooses_the_parts_that_train():
    model = toy_multi_domain()
    train_only_domains(model, [2], layers=[DomainHead, "bn1"])
    trainable = {id(w) for w in model.trainable_weights}
    assert id(model.get_layer("head").kernel) in trainable
    assert id(model.get_layer("bn1").gamma) in trainable
    assert id(model.get_layer("bn2").gamma) not in trainable
    assert id(model.get_layer("conv1").adapter_kernel) not in trainable
    assert not model.get_layer("bn2").trainable
    # A layer the user froze stays frozen through later calls, `None` included; the layers
    # frozen by the first call follow the second.
    model.get_layer("bn1").trainable = False
    train_only_domains(model, [1])
    trainable = {id(w) for w in model.trainable_weights}
    assert id(model.get_layer("bn1").gamma) not in trainable
    assert id(model.get_layer("bn2").gamma) in trainable
    assert id(model.get_layer("conv2").adapter_kernel) in trainable
    train_only_domains(model, None)
    assert not model.get_layer("bn1").trainable
    assert model.get_layer("bn2").trainable and model.get_layer("head").trainable
    with pytest.raises(ValueError, match="not in the model"):
        train_only_domains(model, [1], layers=["nope"])
    with pytest.raises(TypeError, match="layers=3"):
        train_only_domains(model, [1], layers=3)


def test_closest_domain_picks_the_domain_whose_features_separate_the_classes():
    from keras_mdn.surgery.domains import closest_domain

    model = toy_multi_domain()
    x = rng(11).normal(size=(40, 6, 6, 3)).astype("float32")
    # Labels that domain 1's features separate: its own nearest-mean classes (a NumPy
    # reference of the rule on domain 1's pooled features).
    pool = keras.Model(model.input, model.get_layer("pool").output)
    feats = [to_numpy(pool([x, np.full(40, d, "int32")], training=False)) for d in range(3)]
    # Two classes split along domain 1's main direction of variation.
    centred = feats[1] - feats[1].mean(0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    labels = (centred @ direction > np.median(centred @ direction)).astype("int32")
    result = closest_domain(model, x, labels)
    assert set(result.scores) == {0, 1, 2}
    for d in range(3):
        g = feats[d] / np.linalg.norm(feats[d], axis=1, keepdims=True)
        correct = 0
        for fit in (np.arange(40) % 2 == 0, np.arange(40) % 2 == 1):
            classes = np.unique(labels[fit])
            means = np.stack([g[fit][labels[fit] == c].mean(0) for c in classes])
            means /= np.linalg.norm(means, axis=1, keepdims=True)
            correct += np.sum(classes[np.argmax(g[~fit] @ means.T, 1)] == labels[~fit])
        assert result.scores[d] == pytest.approx(correct / 40)
    assert result.domain == max(range(3), key=lambda d: (result.scores[d], -d))
    assert result.scores[1] >= 0.7  # well above chance (0.5)
    assert closest_domain(model, {"image": x}, labels, candidates=[0, 2]).domain in (0, 2)


def test_closest_domain_bad_arguments():
    from keras_mdn.surgery.domains import closest_domain

    model = toy_multi_domain()
    x = _x(8)
    with pytest.raises(ValueError, match="same number"):
        closest_domain(model, x, np.zeros(5, "int32"))
    with pytest.raises(ValueError, match="Received: candidates=3"):
        closest_domain(model, x, np.zeros(8, "int32"), candidates=[3])
