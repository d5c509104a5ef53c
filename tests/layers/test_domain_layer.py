"""The domain-layer interface on every keras_mdn domain layer and on a user-written one."""

import keras
import numpy as np
import pytest

from keras_mdn.layers import (
    DomainBatchNormalization,
    DomainHead,
    DomainLayer,
    DomainVariable,
    FactorizedConv1D,
    FactorizedConv2D,
    FactorizedDense,
    ResidualAdapter,
    count_domains,
    domain_layers,
    is_domain_layer,
)
from keras_mdn.layers.domain_layer import copy_domains
from tests.helpers import rng, to_numpy
from tests.user_domain_layer import DomainScale

T = 3


def _conv(**kwargs):
    return keras.layers.Conv2D(4, 3, padding="same", **kwargs)


# name -> (layer factory, input shape); the factories build T-domain layers.
LAYERS = {
    "adapter_parallel": (lambda: ResidualAdapter(_conv(), T), (2, 5, 5, 3)),
    "adapter_strided_relu": (
        lambda: ResidualAdapter(keras.layers.Conv2D(4, 3, strides=2, padding="same",
                                                    activation="relu"), T),
        (2, 6, 6, 3),
    ),
    "adapter_low_rank": (lambda: ResidualAdapter(_conv(use_bias=False), T, rank=2),
                         (2, 5, 5, 3)),
    "adapter_series": (lambda: ResidualAdapter(_conv(), T, mode="series"), (2, 5, 5, 3)),
    "adapter_series_low_rank": (lambda: ResidualAdapter(_conv(), T, mode="series", rank=2),
                                (2, 5, 5, 3)),
    "adapter_dense": (lambda: ResidualAdapter(keras.layers.Dense(4), T), (2, 6)),
    "batch_norm": (lambda: DomainBatchNormalization(T), (2, 4, 4, 3)),
    "head": (lambda: DomainHead([3, 5, 2]), (2, 6)),
    "factorized_dense_laf": (lambda: FactorizedDense(4, num_tasks=T, rank=2), (2, 6)),
    "factorized_dense_tucker": (
        lambda: FactorizedDense(4, num_tasks=T, factorization="tucker", rank=2,
                                activation="relu"),
        (2, 6),
    ),
    "factorized_conv2d": (
        lambda: FactorizedConv2D(4, 3, num_tasks=T, rank=2, padding="same"), (2, 5, 5, 3)
    ),
    "factorized_conv1d_tt": (
        lambda: FactorizedConv1D(4, 3, num_tasks=T, factorization="tt", rank=2), (2, 7, 3)
    ),
    "user_layer": (lambda: DomainScale(T), (2, 4, 4, 3)),
}


def _call(layer, x, domain):
    kwargs = {layer.domain_argument: domain}
    if "training" in layer.call.__code__.co_varnames:
        kwargs["training"] = False
    return to_numpy(layer(x, **kwargs))


def _built(name, seed=0):
    """A built layer with random values in every weight (statistics kept positive)."""
    factory, shape = LAYERS[name]
    layer = factory()
    x = rng(seed).normal(size=shape).astype("float32")
    _call(layer, x, 0)
    r = rng(seed + 1)
    for weight in layer.weights:
        value = r.normal(size=weight.shape) * 0.3
        if weight.path.endswith(("moving_variance", "gamma", "scale")):
            value = r.uniform(0.5, 1.5, size=weight.shape)
        weight.assign(value.astype("float32"))
    return layer, x


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_domain_variables_cover_every_weight_once(name):
    layer, _ = _built(name)
    assert is_domain_layer(layer) and isinstance(layer, DomainLayer)
    assert layer.num_domains == T
    entries = layer.domain_variables()
    assert all(isinstance(e, DomainVariable) for e in entries)
    assert sorted(id(e.variable) for e in entries) == sorted(id(w) for w in layer.weights)
    per_domain = [e for e in entries if not e.shared]
    assert per_domain, "a domain layer has per-domain weights"
    for entry in per_domain:
        assert len(entry.sizes) == T
        assert sum(entry.sizes) == entry.variable.shape[entry.axis]
        masks = [entry.domain_mask([d]) for d in range(T)]
        np.testing.assert_array_equal(sum(m.astype(int) for m in masks), 1)
        assert sum(entry.domain_size(d) for d in range(T)) == entry.size
    for entry in entries:
        assert entry.statistic == entry.name.startswith("moving_")


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_fold_and_swappable_tensors_reproduce_each_domain(name):
    layer, x = _built(name)
    merges = layer.merges_affine()
    if not merges:
        with pytest.raises(ValueError, match="affine"):
            layer.swappable_tensors(0, affine=(np.ones(4), np.zeros(4)))
    shapes = None
    for domain in range(T):
        expected = _call(layer, x, domain)
        width = layer.num_classes[domain] if isinstance(layer, DomainHead) else None
        # fold: plain Keras layers only.
        folded = layer.fold(domain)
        assert folded and all(not is_domain_layer(f) for f in folded)
        assert all(type(f).__module__.startswith("keras") for f in folded)
        y = x
        for plain in folded:
            y = plain(y, training=False) if isinstance(
                plain, keras.layers.BatchNormalization) else plain(y)
        np.testing.assert_allclose(to_numpy(y), expected[..., :width], atol=2e-5, rtol=1e-5)
        # swappable: float32 tensors of one shape for every domain.
        tensors = layer.swappable_tensors(domain)
        assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in tensors.values())
        domain_shapes = {k: v.shape for k, v in tensors.items()}
        assert shapes is None or domain_shapes == shapes
        shapes = domain_shapes
        y = to_numpy(layer.swappable_call(x, tensors))
        if width is not None:
            np.testing.assert_array_equal(y[:, width:], 0.0)  # zero-padded, not -1e9
        np.testing.assert_allclose(y[..., :width], expected[..., :width], atol=2e-5, rtol=1e-5)
        if merges:
            channels = expected.shape[-1]
            scale = rng(7).uniform(0.5, 1.5, size=channels).astype("float32")
            offset = rng(8).normal(size=channels).astype("float32")
            merged = layer.swappable_tensors(domain, affine=(scale, offset))
            y = to_numpy(layer.swappable_call(x, merged))
            np.testing.assert_allclose(y, expected * scale + offset, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_with_num_domains_keeps_domains_and_owns_its_variables(name):
    layer, x = _built(name)
    # Fresh new domains for half the layers, copies of domain 1 for the others.
    init_from = None if sorted(LAYERS).index(name) % 2 else 1
    kwargs = {"num_classes": [5, 2]} if isinstance(layer, DomainHead) else {}
    grown = layer.with_num_domains(T + 2, init_from=init_from, **kwargs)
    assert type(grown) is type(layer) and grown.num_domains == T + 2
    assert not {id(w) for w in grown.weights} & {id(w) for w in layer.weights}
    for domain in range(T):
        np.testing.assert_array_equal(_call(grown, x, domain)[..., : _width(layer, domain)],
                                      _call(layer, x, domain)[..., : _width(layer, domain)])
    fresh = type(layer).from_config(layer.get_config()) if not isinstance(
        layer, DomainHead) else None
    for domain in (T, T + 1):
        new = _call(grown, x, domain)
        if init_from is not None and _width(grown, domain) == _width(layer, init_from):
            width = _width(layer, init_from)
            np.testing.assert_array_equal(new[..., :width], _call(layer, x, init_from)[..., :width])
        elif fresh is not None:
            # Fresh domains come from the initializers (zero adapters, unit batch norms).
            for entry, new_entry in zip(layer.domain_variables(), grown.domain_variables()):
                if not entry.shared and new_entry.sizes[domain] and _initial_constant(entry):
                    value = new_entry.domain_value(domain)
                    assert np.all(value == value.flat[0])


def _width(layer, domain):
    return layer.num_classes[domain] if isinstance(layer, DomainHead) else None


def _initial_constant(entry):
    return entry.name in ("adapter_kernel", "gamma", "beta", "moving_mean", "moving_variance",
                          "scale", "offset", "bias")


def test_with_num_domains_of_an_unbuilt_layer_and_bad_arguments():
    layer = DomainBatchNormalization(2)
    grown = layer.with_num_domains(4)
    assert not grown.built and grown.num_domains == 4
    built, _ = _built("batch_norm")
    with pytest.raises(ValueError, match="num_domains=2"):
        built.with_num_domains(2)
    with pytest.raises(ValueError, match="init_from=3"):
        built.with_num_domains(4, init_from=3)
    head, _ = _built("head")
    with pytest.raises(ValueError, match="num_classes=None"):
        head.with_num_domains(4)
    assert head.with_num_domains(4, init_from=1).num_classes == [3, 5, 2, 5]
    with pytest.raises(ValueError, match="num_classes"):
        head.with_num_domains(5, num_classes=[2])
    with pytest.raises(ValueError, match="domain=3"):
        built.fold(3)
    with pytest.raises(TypeError, match="extra"):
        built.with_num_domains(4, num_classes=3)


def test_grown_layer_round_trips_through_config():
    layer, x = _built("adapter_series_low_rank")
    grown = layer.with_num_domains(T + 1, init_from=0)
    restored = ResidualAdapter.from_config(grown.get_config())
    restored.build_from_config(grown.get_build_config())
    copy_domains(grown, restored)
    for domain in range(T + 1):
        np.testing.assert_array_equal(_call(restored, x, domain), _call(grown, x, domain))


def test_domain_argument_names_the_call_argument():
    assert DomainHead([2, 3]).domain_argument == "domain"
    assert FactorizedDense(3, num_domains=2, rank=1).domain_argument == "domain"
    assert FactorizedDense(3, num_tasks=2, rank=1).domain_argument == "domain"
    assert DomainScale(2).domain_argument == "domain"


def test_finding_and_counting_domain_layers():
    image = keras.Input((4, 4, 3), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    x = ResidualAdapter(_conv(), T, name="adapter")(image, domain)
    x = DomainScale(T, name="film")(x, domain)
    x = keras.layers.GlobalAveragePooling2D()(x)
    single = FactorizedDense(6, num_tasks=1, factorization="tt_matrix", rank=2, name="tt")
    x = single(x)
    x = DomainHead([2, 2, 3], name="head")(x, domain)
    model = keras.Model([image, domain], x)
    assert [layer.name for layer in domain_layers(model)] == ["adapter", "film", "tt", "head"]
    assert count_domains(model) == T  # a single-task layer agrees with any count
    outer = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    assert count_domains(outer) == 0 and domain_layers(outer) == []
    image = keras.Input((4,))
    domain = keras.Input((), dtype="int32")
    y = DomainHead([2, 2], name="h2")(DomainScale(3, name="s3")(image, domain), domain)
    with pytest.raises(ValueError, match=r"num_domains in \[2, 3\]"):
        count_domains(keras.Model([image, domain], y))


def test_a_layer_without_the_interface_says_what_is_missing():
    class Partial(DomainLayer, keras.layers.Layer):
        num_domains = 2

    layer = Partial()
    for method, args in (("domain_variables", ()), ("fold", (0,)),
                         ("swappable_tensors", (0,)), ("swappable_call", (None, {}))):
        with pytest.raises(NotImplementedError, match=f"Partial does not implement.*{method}"):
            getattr(layer, method)(*args)
    assert not layer.merges_affine() and not layer.factorized


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_fold_terms_describe_the_linear_layers_and_refuse_the_others(name):
    layer, _ = _built(name)
    tensors = layer.swappable_tensors(1)
    mode = getattr(layer, "mode", None)
    if isinstance(layer, DomainBatchNormalization):
        terms = layer.fold_terms(tensors)
        np.testing.assert_array_equal(terms.mix, tensors["scale"])
        np.testing.assert_array_equal(terms.offset, tensors["offset"])
        assert terms.adapter is None and not terms.matrix
    elif mode == "parallel":
        terms = layer.fold_terms(tensors)
        np.testing.assert_array_equal(terms.adapter, tensors["adapter"])
        assert terms.tap == tuple(layer.tap) and not terms.matrix
        assert (terms.projection is None) == (layer.rank is None)
    elif mode == "series":
        terms = layer.fold_terms(tensors)
        assert terms.matrix and terms.adapter is None
        channels = layer.layer.compute_output_shape(LAYERS[name][1])[-1]
        assert tuple(np.shape(terms.mix)) == (channels, channels)
    else:  # heads, factorised layers, the user layer: replaced whole, not refolded
        if set(tensors) == {"scale", "offset"}:
            assert layer.fold_terms(tensors).offset is not None
        else:
            with pytest.raises(ValueError, match=layer.name):
                layer.fold_terms(tensors)
