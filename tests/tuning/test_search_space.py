import keras_tuner as kt
import pytest

from keras_mdn.tuning.base_model import adaptable_layers, multi_domain_base
from keras_mdn.tuning.search_space import Design, SearchSpace
from tests.helpers import tensorflow_only
from tests.tuning.helpers import tiny_base, tiny_data

pytestmark = tensorflow_only


@pytest.fixture(scope="module")
def probe():
    data = tiny_data()
    model = multi_domain_base(tiny_base(data, epochs=1), data.num_classes)
    return model, adaptable_layers(model)


@pytest.mark.parametrize(
    "groups, expected",
    [
        ("layer", {"dense1": ["dense1"], "dense2": ["dense2"]}),
        ("depth", {"depth0": ["dense1"], "depth1": ["dense2"]}),
        ("stage", {"dense1": ["dense1"], "dense2": ["dense2"]}),
        ({"both": ["dense1", "dense2"]}, {"both": ["dense1", "dense2"]}),
        (lambda layer: "deep" if layer.name == "dense2" else None, {"deep": ["dense2"]}),
    ],
)
def test_groups(probe, groups, expected):
    resolved = SearchSpace(groups=groups, num_groups=3).resolve(*probe)
    assert resolved.groups == expected
    # The classifier is never grouped; batch norms follow the adaptable layer before them.
    for group, names in expected.items():
        for name in names:
            assert resolved.norms[name.replace("dense", "bn")] == group


def test_group_naming_missing_layers_lists_what_the_model_has(probe):
    expected = r"\['dense3'\].*adaptable layers are \['dense1', 'dense2'\]"
    with pytest.raises(ValueError, match=expected):
        SearchSpace(groups={"g": ["dense1", "dense3"]}).resolve(*probe)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"modes": ()}, "search space is empty"),
        ({"ranks": ()}, "search space is empty"),
        ({"modes": ("parallel", "lora")}, "modes"),
        ({"ranks": (0,)}, "ranks"),
        ({"groups": "blocks"}, "groups"),
        ({"groups": {}}, "groups"),
        ({"num_groups": 0}, "num_groups"),
        ({"learning_rates": (0.0,)}, "learning_rates"),
        ({"weight_decays": ()}, "weight_decays"),
    ],
)
def test_bad_spaces(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        SearchSpace(**kwargs)


def test_callable_grouping_nothing_is_empty(probe):
    with pytest.raises(ValueError, match="search space is empty"):
        SearchSpace(groups=lambda layer: None).resolve(*probe)


def test_ranks_above_channels_are_pruned_with_a_reason(probe):
    # dense1: 16 -> 8, dense2: 8 -> 8; rank 8 is below dense1's 16 inputs, rank 16 is not.
    with pytest.warns(UserWarning, match="Rank choice pruned"):
        resolved = SearchSpace(groups="layer", ranks=("full", 4, 8, 16)).resolve(*probe)
    assert resolved.ranks == {"dense1": ["full", "4", "8"], "dense2": ["full", "4"]}
    reasons = {(group, rank): reason for group, rank, reason in resolved.pruned}
    assert set(reasons) == {("dense1", 16), ("dense2", 8), ("dense2", 16)}
    assert "full rank" in reasons[("dense2", 8)]


def test_rank_exists_only_where_an_adapter_does(probe):
    space = SearchSpace(groups="layer", modes=("bn", "parallel"), ranks=("full", 2),
                        learning_rates=(0.01, 0.1), weight_decays=(0.0, 1e-4))
    resolved = space.resolve(*probe)
    hp = kt.HyperParameters()
    hp.values.update({"dense1/mode": "bn", "dense2/mode": "parallel", "dense2/rank": "2"})
    design = space.define(hp, resolved)
    assert design.group_modes == {"dense1": "bn", "dense2": "parallel"}
    assert design.group_ranks == {"dense1": None, "dense2": 2}
    assert not hp.is_active("dense1/rank")
    assert hp.is_active("dense2/rank")
    assert design.layer_modes == {"dense1": "bn", "bn1": "bn", "dense2": "parallel",
                                  "bn2": "parallel"}
    assert design.learning_rate == 0.01 and design.weight_decay == 0.0
    assert set(hp.values) >= {"learning_rate", "adapter_weight_decay"}


def test_uniform_design(probe):
    resolved = SearchSpace(groups="layer").resolve(*probe)
    design = Design.uniform(resolved, "parallel", rank=2)
    assert design.layer_modes == {"dense1": "parallel", "bn1": "parallel", "dense2": "parallel",
                                  "bn2": "parallel"}
    assert design.layer_ranks == {"dense1": 2, "dense2": 2}
    assert Design.uniform(resolved, "bn", rank=2).layer_ranks == {"dense1": None, "dense2": None}
    with pytest.raises(ValueError, match="mode"):
        Design.uniform(resolved, "lora")
