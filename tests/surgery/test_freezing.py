import keras
import numpy as np
import pytest

from keras_mdn.surgery import FrozenEntries, train_only_domains
from tests.helpers import rng, to_numpy
from tests.surgery.toy import infer, toy_multi_domain


def test_frozen_entries_restore_values_after_any_update():
    value = rng(0).normal(size=(3, 2)).astype("float32")
    mask = np.array([[True], [False], [True]])
    constraint = FrozenEntries(mask, value, keras.constraints.NonNeg())
    updated = to_numpy(constraint(keras.ops.convert_to_tensor(value - 5.0)))
    np.testing.assert_array_equal(updated[1], value[1])
    np.testing.assert_array_equal(updated[[0, 2]], 0.0)  # the inner constraint on the rest
    restored = FrozenEntries.from_config(constraint.get_config())
    np.testing.assert_array_equal(restored.trainable_mask, np.broadcast_to(mask, (3, 1)))
    assert isinstance(restored.constraint, keras.constraints.NonNeg)


def test_training_one_domain_with_adamw_keeps_the_others_bit_identical():
    model = toy_multi_domain()
    x = rng(1).normal(size=(8, 6, 6, 3)).astype("float32")
    before = [infer(model, x, d) for d in range(3)]
    shared = to_numpy(model.get_layer("conv1").layer.kernel)
    train_only_domains(model, 1)
    model.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit([x, np.ones((8,), "int32")], rng(2).integers(0, 4, 8), epochs=2, verbose=0)
    for d in (0, 2):
        np.testing.assert_array_equal(infer(model, x, d), before[d])
    assert not np.allclose(infer(model, x, 1), before[1])
    np.testing.assert_array_equal(to_numpy(model.get_layer("conv1").layer.kernel), shared)


def test_only_selected_layers_of_the_domains_train():
    model = toy_multi_domain()
    train_only_domains(model, [0, 2], layers=lambda layer: layer.name.startswith("bn"))
    trainable = {w.path for w in model.trainable_weights}
    assert trainable == {"bn1/gamma", "bn1/beta", "bn2/gamma", "bn2/beta"}
    mask = model.get_layer("bn1").gamma.constraint.trainable_mask
    assert mask[[0, 2]].all() and not mask[1].any()


def test_bad_domains():
    model = toy_multi_domain()
    for domains in ([3], [True], ["a"]):
        with pytest.raises(ValueError, match="domains"):
            train_only_domains(model, domains)
