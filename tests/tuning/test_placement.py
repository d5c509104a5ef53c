import keras
import numpy as np

from keras_mdn.layers import DomainBatchNormalization, ResidualAdapter
from keras_mdn.report import parameter_report
from keras_mdn.tuning.base_model import adaptable_layers, multi_domain_base
from keras_mdn.tuning.placement import place
from keras_mdn.tuning.search_space import Design
from tests.helpers import tensorflow_only
from tests.tuning.helpers import tiny_base, tiny_data

pytestmark = tensorflow_only


def design(modes, ranks=None, weight_decay=None):
    groups = {"dense1": ["dense1"], "dense2": ["dense2"]}
    norms = {"bn1": "dense1", "bn2": "dense2"}
    ranks = ranks or {}
    return Design(modes, {g: ranks.get(g) for g in modes}, groups, norms,
                  weight_decay=weight_decay)


def test_modes_and_ranks_per_layer():
    data = tiny_data()
    base = multi_domain_base(tiny_base(data, epochs=1), data.num_classes)
    model = place(base, design({"dense1": "series", "dense2": "parallel"}, {"dense1": 3,
                                                                             "dense2": 99}),
                  name="trial")
    first, second = model.get_layer("dense1"), model.get_layer("dense2")
    assert isinstance(first, ResidualAdapter) and first.mode == "series" and first.rank == 3
    # Rank capped at the parallel adapter's input channels (8).
    assert isinstance(second, ResidualAdapter) and second.mode == "parallel"
    assert second.rank == 8
    assert not first.layer.trainable and not second.layer.trainable
    assert model.name == "trial"


def test_none_group_is_shared_and_equal_to_the_source_domain():
    data = tiny_data()
    base = multi_domain_base(tiny_base(data, epochs=1), data.num_classes)
    norm = base.get_layer("bn1")
    rng = np.random.default_rng(0)
    for weight in norm.weights:  # make domain 1 differ from the others
        values = keras.ops.convert_to_numpy(weight).copy()
        values[1] = rng.uniform(0.5, 1.5, values.shape[1])
        weight.assign(values)
    model = place(base, design({"dense1": "none", "dense2": "bn"}), source_domain=1)
    shared = model.get_layer("bn1")
    assert type(shared) is keras.layers.BatchNormalization and not shared.trainable
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(shared.moving_mean),
        keras.ops.convert_to_numpy(norm.moving_mean)[1],
    )
    assert isinstance(model.get_layer("bn2"), DomainBatchNormalization)
    report = parameter_report(model)
    bn_only = parameter_report(place(base, design({"dense1": "bn", "dense2": "bn"})))
    assert report.domains[0]["parameters"] == bn_only.domains[0]["parameters"] - 16
    # Domain 1 computes what the base computes for it.
    images, _ = data.arrays("test", 1)
    inputs = {"image": images[:4], "domain": np.ones(4, "int32")}
    np.testing.assert_allclose(model.predict_on_batch(inputs), base.predict_on_batch(inputs),
                               atol=1e-5)


def test_adapter_weight_decay():
    data = tiny_data()
    base = multi_domain_base(tiny_base(data, epochs=1), data.num_classes)
    model = place(base, design({"dense1": "parallel", "dense2": "parallel"}, weight_decay=0.1))
    regularizer = model.get_layer("dense1").adapter_regularizer
    assert isinstance(regularizer, keras.regularizers.L2)
    assert np.isclose(regularizer.l2, 0.1)
    assert [layer.name for layer in adaptable_layers(base)] == ["dense1", "dense2"]
