import keras
import keras_tuner as kt
import numpy as np
import pytest

from keras_mdn.layers import ResidualAdapter
from keras_mdn.models import resnet26
from keras_mdn.tuning import Design, MultiDomainHyperModel, SearchSpace, place
from tests.helpers import tensorflow_only
from tests.tuning.helpers import NAMES, tiny_base, tiny_data

pytestmark = tensorflow_only


def fixed(values):
    hp = kt.HyperParameters()
    hp.values.update(values)
    return hp


def test_a_trial_trains_only_its_domain_parameters():
    data = tiny_data()
    base = tiny_base(data, epochs=1)
    before = [w.copy() for w in base.get_weights()]
    hypermodel = MultiDomainHyperModel(base, data, SearchSpace(groups="layer"),
                                       compile_options={"run_eagerly": True})
    hp = fixed({"dense1/mode": "parallel", "dense1/rank": "full", "dense2/mode": "series",
                "dense2/rank": "full"})
    model = hypermodel.build(hp)
    other = hypermodel.build(hp)  # a second trial's model: its own layers
    assert model.get_layer("dense1").layer is not other.get_layer("dense1").layer
    adapter = keras.ops.convert_to_numpy(model.get_layer("dense1").adapter_kernel).copy()
    metrics = hypermodel.fit(hp, model, epochs=2)
    # The base and the shared weights are untouched, the adapters trained.
    for a, b in zip(base.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.get_layer("dense1").layer.kernel),
        keras.ops.convert_to_numpy(base.get_layer("dense1").kernel),
    )
    assert not np.allclose(
        keras.ops.convert_to_numpy(model.get_layer("dense1").adapter_kernel), adapter
    )
    assert set(metrics) >= {"mean_accuracy", "seconds", "parameters", "pack_bytes"}
    assert metrics["mean_accuracy"] == pytest.approx(
        np.mean([metrics[f"accuracy/{n}"] for n in NAMES])
    )
    assert metrics["seconds"] > 0 and metrics["pack_bytes"] > metrics["parameters"] * 4 - 1


def test_user_search_space_function():
    data = tiny_data()

    def space(hp, model):
        where = hp.Choice("where", ["dense1", "dense2"])
        design = Design({"g": "parallel"}, {"g": None}, {"g": [where]}, {})
        return place(model, design)

    hypermodel = MultiDomainHyperModel(tiny_base(data, epochs=1), data, space,
                                       compile_options={"run_eagerly": True})
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    assert hp.values == {"where": "dense1"}
    assert isinstance(model.get_layer("dense1"), ResidualAdapter)
    assert not isinstance(model.get_layer("dense2"), ResidualAdapter)
    assert hypermodel.fit(hp, model, epochs=1)["parameters"] > 0
    assert hypermodel.pruned == []


def test_resnet26_base():
    data = tiny_data()
    base = resnet26(list(data.num_classes), input_shape=(4, 4, 1), width_factor=0.125)
    space = SearchSpace(groups="stage", modes=("none", "parallel"), ranks=("full", 2))
    hypermodel = MultiDomainHyperModel(base, data, space)
    assert list(hypermodel.resolved.groups) == ["stem", "stage1", "stage2", "stage3"]
    hp = fixed({"stem/mode": "none", "stage1/mode": "parallel", "stage1/rank": "2",
                "stage2/mode": "parallel", "stage2/rank": "full", "stage3/mode": "none"})
    model = hypermodel.build(hp)
    assert type(model.get_layer("stem_bn")) is keras.layers.BatchNormalization
    assert model.get_layer("stage1_block1_conv1").rank == 2
    assert model.get_layer("stage2_block1_conv1").rank is None
    assert not isinstance(model.get_layer("stage3_block1_conv1"), ResidualAdapter)


def test_bad_inputs():
    data = tiny_data()
    base = tiny_base(data, epochs=1)
    with pytest.raises(TypeError, match="search_space"):
        MultiDomainHyperModel(base, data, search_space="parallel")
    with pytest.raises(TypeError, match="MultiDomainData"):
        MultiDomainHyperModel(base, data.arrays("train", 0))
    with pytest.raises(TypeError, match="budget"):
        MultiDomainHyperModel(base, data, budget=1000)
    with pytest.raises(ValueError, match="learning_rate"):
        MultiDomainHyperModel(base, data, learning_rate=-1.0)
    with pytest.raises(ValueError, match="has 2 domains but the data has 3"):
        MultiDomainHyperModel(resnet26([3, 3], input_shape=(4, 4, 1), width_factor=0.125), data)
    image = keras.Input((4, 4, 1), name="image")
    flat = keras.layers.Flatten()(image)
    with pytest.raises(ValueError, match="nothing to adapt"):
        MultiDomainHyperModel(keras.Model(image, keras.layers.Dense(3)(flat)), data)
    hypermodel = MultiDomainHyperModel(base, data, compile_options={"run_eagerly": True})
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    with pytest.raises(TypeError, match="pass no x/y"):
        hypermodel.fit(hp, model, np.zeros((2, 4, 4, 1)))
    with pytest.raises(TypeError, match="validation_data"):
        hypermodel.fit(hp, model, validation_data=None)


def factorized_base(data):
    from keras_mdn.layers import DomainHead, FactorizedDense

    image = keras.Input((4, 4, 1), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    x = keras.layers.Flatten()(image)
    x = keras.layers.Dense(8, activation="relu", name="dense1")(x)
    x = FactorizedDense(6, num_domains=3, factorization="laf", rank=3, activation="relu",
                        name="shared_fd")(x, domain)
    logits = DomainHead(list(data.num_classes), name="head")(x, domain)
    return keras.Model([image, domain], logits, name="factorized")


def test_factorization_kind_and_rank_per_factorized_layer():
    data = tiny_data()
    base = factorized_base(data)
    space = SearchSpace(groups="layer", modes=("bn", "parallel"),
                        factorizations=("laf", "tucker"), factorization_ranks=("full", 2, 0.5))
    hypermodel = MultiDomainHyperModel(base, data, space, compile_options={"run_eagerly": True})
    assert hypermodel.resolved.factorized == ["shared_fd"]
    assert list(hypermodel.resolved.groups) == ["dense1"]
    images, _ = data.arrays("test", 2)
    inputs = {"image": images[:4], "domain": np.full(4, 2, "int32")}
    for kind, rank in (("tucker", "full"), ("laf", "2"), ("tucker", "0.5")):
        hp = fixed({"dense1/mode": "bn", "shared_fd/factorization": kind,
                    "shared_fd/factorization_rank": rank})
        model = hypermodel.build(hp)
        layer = model.get_layer("shared_fd")
        assert layer.factorization.name == kind
        if rank == "full":  # a full-rank decomposition computes what the base computes
            np.testing.assert_allclose(model.predict_on_batch(inputs),
                                       base.predict_on_batch(inputs), atol=1e-4)
    assert hypermodel.fit(hp, model, epochs=1)["parameters"] > 0
    with pytest.raises(ValueError, match="factorizations"):
        SearchSpace(factorizations=("svd",))
    with pytest.raises(ValueError, match="factorization_ranks"):
        SearchSpace(factorizations=("laf",), factorization_ranks=(1.5,))
    with pytest.raises(ValueError, match="no factorised layer"):
        MultiDomainHyperModel(tiny_base(data, epochs=1), data,
                              SearchSpace(factorizations=("laf",)))
