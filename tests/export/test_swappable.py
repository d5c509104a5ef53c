import keras
import numpy as np
import pytest

from tests.export.conftest import NUM_CLASSES, T, expected_logits
from tests.helpers import tensorflow_only
from tests.surgery.test_fold import small_model

pytestmark = tensorflow_only


def _plan(model, **kwargs):
    from keras_mdn.export import SwappablePlan

    return SwappablePlan(model, **kwargs)


@pytest.mark.parametrize("adapter, rank", [("parallel", None), ("parallel", 2),
                                           ("series", None), ("series", 2)])
def test_plan_call_equals_the_keras_model(adapter, rank, images):
    model = small_model(adapter=adapter, rank=rank)
    plan = _plan(model)
    for domain in range(T):
        logits = np.asarray(plan.call(images, plan.domain_tensors(domain)))
        expected = expected_logits(model, images, domain)
        np.testing.assert_allclose(logits[:, : NUM_CLASSES[domain]], expected, atol=1e-5)
        # The padded logits of a domain with fewer classes are 0.
        np.testing.assert_array_equal(logits[:, NUM_CLASSES[domain]:], 0.0)


def test_packs_are_deltas_from_the_reference(model):
    plan = _plan(model, reference_domain=1)
    reference = plan.reference_tensors()
    assert list(reference) == list(plan.specs)
    for name, value in plan.domain_tensors(1).items():
        np.testing.assert_array_equal(reference[name], value)
    for domain in range(T):
        absolute, delta = plan.domain_tensors(domain), plan.pack_tensors(domain)
        assert list(delta) == list(absolute) == list(plan.specs)
        for name in absolute:
            np.testing.assert_allclose(delta[name], absolute[name] - reference[name])
    # The reference domain's own pack is all zeros; the others are not.
    assert not any(value.any() for value in plan.pack_tensors(1).values())
    assert all(any(value.any() for value in plan.pack_tensors(d).values()) for d in (0, 2))


def test_batch_norms_merge_into_the_adapter_before_them(model):
    plan = _plan(model)
    names = {name.split("__")[0] for name in plan.specs}
    # bn1, bn2, bn3 follow only an adapter: merged; final_bn follows an add: swapped alone.
    assert names == {"conv1", "conv2", "conv3", "final_bn", "head"}


def test_all_zero_pack_reproduces_the_base_model(exported, model, images):
    """An all-zero pack gives what the base model computes before any pack: domain 0."""
    from keras_mdn.export import Pack, load

    directory, _ = exported
    expected = expected_logits(model, images, 0)
    runner = load(directory, layout="swappable")
    before = runner.runner(image=images)["output_0"][:, : NUM_CLASSES[0]]
    np.testing.assert_allclose(before, expected, atol=1e-5)
    zeros = {name: np.zeros(shape, "float32") for name, shape in runner.input_specs.items()}
    runner.predict(images, 2)  # another domain first: the zero pack must overwrite it
    runner.load_pack(Pack(runner.model_id, 0, "zero", zeros, num_classes=NUM_CLASSES[0]))
    np.testing.assert_allclose(runner.predict(images), expected, atol=1e-5)


def test_every_pack_tensor_is_consumed(exported, images):
    """Perturbing any one tensor of a pack changes the swappable model's output."""
    from keras_mdn.export import Pack, load, read_pack

    directory, manifest = exported
    runner = load(directory, layout="swappable")
    pack = read_pack(f"{directory}/{manifest['layouts']['swappable']['None']['packs']['1']}")
    assert set(pack.tensors) == set(runner.input_specs)
    runner.load_pack(pack)
    reference = runner.predict(images)
    for name in pack.tensors:
        tensors = dict(pack.tensors)
        tensors[name] = tensors[name] + 0.5
        runner.load_pack(Pack(pack.model_id, 1, "perturbed", tensors,
                              num_classes=pack.num_classes))
        changed = np.max(np.abs(runner.predict(images) - reference))
        assert changed > 1e-3, f"pack tensor {name!r} does not reach the output"


def test_model_id_covers_the_reference_and_shared_weights(model):
    from keras_mdn.export import SwappablePlan

    assert _plan(model).model_id == _plan(model).model_id
    assert _plan(model, reference_domain=2).model_id != _plan(model).model_id
    other = small_model()
    other.get_layer("conv2").layer.kernel.assign(np.ones((3, 3, 6, 6), "float32"))
    assert SwappablePlan(other).model_id != SwappablePlan(small_model()).model_id


@pytest.mark.parametrize("reference_domain", [3, -1, True, 1.0])
def test_bad_reference_domain(model, reference_domain):
    with pytest.raises(ValueError, match="reference_domain"):
        _plan(model, reference_domain=reference_domain)


@pytest.mark.parametrize("domain, error", [(True, TypeError), (1.0, TypeError),
                                           (3, ValueError), (-1, ValueError)])
def test_bad_domain(model, domain, error):
    with pytest.raises(error, match="domain"):
        _plan(model).pack_tensors(domain)


def test_unsupported_layer_is_named(tmp_path):
    from keras_mdn.export import export_folded_tflite

    class Gate(keras.layers.Layer):
        def call(self, x, domain):
            return x * keras.ops.cast(keras.ops.reshape(domain, (-1, 1, 1, 1)), x.dtype)

    gated = small_model(extra=lambda x, domain: Gate(name="my_gate")(x, domain))
    with pytest.raises(ValueError, match="'my_gate' \\(Gate\\)"):
        _plan(gated)
    with pytest.raises(ValueError, match="'my_gate' \\(Gate\\)"):
        export_folded_tflite(gated, str(tmp_path))


def test_a_user_written_domain_layer_exports(tmp_path, images):
    """A layer implementing DomainLayer (tests/user_domain_layer.py) goes through every layout."""
    from keras_mdn.export import export_all, load
    from tests.user_domain_layer import DomainScale

    model = small_model(extra=lambda x, domain: DomainScale(T, name="film")(x, domain))
    film = model.get_layer("film")
    r = np.random.default_rng(5)
    film.scale.assign(r.uniform(0.5, 1.5, size=film.scale.shape).astype("float32"))
    film.offset.assign(r.normal(size=film.offset.shape).astype("float32"))
    export_all(model, str(tmp_path), layouts=("folded", "swappable"))
    plan = _plan(model)
    assert "film__scale" in plan.specs and "film__offset" in plan.specs
    for layout in ("folded", "swappable"):
        runner = load(str(tmp_path), layout=layout)
        for domain in range(T):
            np.testing.assert_allclose(runner.predict(images, domain),
                                       expected_logits(model, images, domain), atol=1e-5)
