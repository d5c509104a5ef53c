import keras
import numpy as np
import pytest

from keras_mdn.surgery.ownership import (
    layer_ownership,
    leaf_layers,
    model_num_domains,
    model_ownership,
)
from tests.surgery.toy import toy_cnn, toy_multi_domain
from tests.user_domain_layer import DomainScale


def test_every_weight_once_with_its_owner():
    model = toy_multi_domain(mode="series", rank=2)
    entries = model_ownership(model)
    assert sorted(id(e.variable) for e in entries) == sorted(id(w) for w in model.weights)
    by_name = {(e.layer.name, e.name): e for e in entries}
    assert by_name[("conv1", "kernel")].shared
    assert by_name[("conv1", "adapter_projection")].shared
    assert by_name[("conv1", "adapter_kernel")].axis == 0
    assert by_name[("conv1", "moving_mean")].statistic  # the series adapter's own batch norm
    head = by_name[("head", "kernel")]
    assert head.axis == 1 and head.sizes == (3, 4, 2)
    assert head.domain_size(1) == head.variable.shape[0] * 4
    mask = head.domain_mask([0, 2])
    assert mask[:, :3].all() and not mask[:, 3:7].any() and mask[:, 7:].all()
    assert model_num_domains(model) == 3


def test_plain_layers_are_shared_and_statistics_flagged():
    model = toy_cnn()
    entries = model_ownership(model)
    assert all(e.shared for e in entries)
    assert {e.name for e in entries if e.statistic} == {"moving_mean", "moving_variance"}
    assert model_num_domains(model) == 0
    assert not entries[0].domain_mask([0]).any() and entries[0].domain_size(0) == 0


def test_a_user_layer_answers_for_its_weights_and_nested_models_expand():
    inputs = keras.Input((4,))
    domain = keras.Input((), dtype="int32")
    inner = keras.Model([inputs, domain], DomainScale(2, name="film")(inputs, domain))
    outer_in = keras.Input((4,))
    outer_domain = keras.Input((), dtype="int32")
    model = keras.Model([outer_in, outer_domain],
                        keras.layers.Dense(3, name="top")(inner([outer_in, outer_domain])))
    assert [layer.name for layer in leaf_layers(model)][-2:] == ["film", "top"]
    entries = layer_ownership(inner.get_layer("film"))
    assert [(e.name, e.axis, e.sizes) for e in entries] == [
        ("scale", 0, (1, 1)), ("offset", 0, (1, 1))]
    assert model_num_domains(model) == 2
    assert len(model_ownership(model)) == 4
    assert np.all(entries[0].domain_mask([1])[1]) and not entries[0].domain_mask([1])[0].any()


def test_a_domain_layer_must_list_every_weight():
    class Forgetful(DomainScale):
        def domain_variables(self):
            return super().domain_variables()[:1]

    layer = Forgetful(2, name="forgetful")
    layer.build((None, 3))
    with pytest.raises(ValueError, match=r"leaving out \['forgetful/offset'\]"):
        layer_ownership(layer)
