import keras
import numpy as np
import pytest

from keras_mdn import DomainHead, ResidualAdapter
from keras_mdn.surgery import FrozenEntries, add_domain, train_only_domains
from tests.helpers import rng, save_and_load, to_numpy
from tests.surgery.toy import infer, toy_multi_domain

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
    assert grown.get_layer("conv1").layer is model.get_layer("conv1").layer  # shared conv
    for d in range(3):
        np.testing.assert_array_equal(infer(grown, x, d)[:, :4], before[d])
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
    np.testing.assert_array_equal(infer(copied, x, 3), infer(model, x, 1))


def test_training_the_new_domain_leaves_old_domains_bit_identical():
    model = toy_multi_domain()
    # Regularizers on every per-domain table push every row, frozen ones included.
    for layer in model.layers:
        if isinstance(layer, ResidualAdapter):
            layer.adapter_regularizer = keras.regularizers.L2(0.1)
    x = _x(8)
    before = [infer(model, x, d) for d in range(3)]
    shared_kernel = to_numpy(model.get_layer("conv2").layer.kernel)
    grown = add_domain(model, num_classes=2)
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
    with pytest.raises(ValueError, match="no per-domain layer"):
        add_domain(plain)
    with pytest.raises(ValueError, match="domains"):
        train_only_domains(toy_multi_domain(), [3])
