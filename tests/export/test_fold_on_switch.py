"""The fold-on-switch layout: template.tflite refolded from packs by fold.tflite."""

import os

import numpy as np
import pytest

from tests.export.conftest import NUM_CLASSES, T, expected_logits
from tests.helpers import tensorflow_only
from tests.surgery.test_fold import randomize, small_model

pytestmark = tensorflow_only


def _resnet(adapter):
    from keras_mdn.models import resnet26

    model = resnet26(NUM_CLASSES, adapter=adapter, input_shape=(8, 8, 3), width_factor=0.125)
    return randomize(model, scale=0.05)


MODELS = {
    "small-parallel": lambda: small_model("parallel"),
    "small-series-rank2": lambda: small_model("series", rank=2),
    "small-bn-only": lambda: small_model(None),
    "resnet26-bn-only": lambda: _resnet(None),
    "resnet26-parallel": lambda: _resnet("parallel"),
    "resnet26-series": lambda: _resnet("series"),
}


def _export(model, directory, **kwargs):
    from keras_mdn.export import SwappablePlan, export_fold_on_switch_tflite

    plan = SwappablePlan(model, reference_domain=kwargs.pop("reference_domain", 0))
    written = export_fold_on_switch_tflite(model, str(directory), plan=plan, **kwargs)
    return plan, written


def _runner(written, **kwargs):
    from keras_mdn.export import FoldOnSwitchModel

    return FoldOnSwitchModel(written["template"], written["fold"], written["packs"], **kwargs)


def _images(model, n=3):
    shape = tuple(model.inputs[0].shape[1:]) if not isinstance(model.inputs, dict) else None
    shape = shape or tuple(model.input["image"].shape[1:])
    return np.random.default_rng(5).normal(size=(n,) + shape).astype("float32")


def _layers(folded):
    return {layer.name: layer for layer in folded.layers}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Exports each model of MODELS once: name -> (model, plan, written)."""
    cache = {}

    def get(name):
        if name not in cache:
            model = MODELS[name]()
            cache[name] = (model, *_export(model, tmp_path_factory.mktemp(name), verify=False))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(MODELS))
def test_patched_template_is_the_folded_model_of_each_domain(name, exports):
    from keras_mdn.export.fold_on_switch import TemplatePlan, to_tflite
    from keras_mdn.surgery import fold_domain

    model, plan, written = exports(name)
    runner = _runner(written)
    refolds = TemplatePlan(plan).refolds
    images = _images(model)
    for domain in range(T):
        logits = runner.predict(images, domain)
        np.testing.assert_allclose(logits, expected_logits(model, images, domain), atol=1e-5)
        # Buffer by buffer: the patched constants are fold_domain's folded weights.
        buffers = runner.fold_runner(**runner._current, **plan.pack_tensors(domain))
        layers = _layers(fold_domain(model, domain, factorized="reconstruct"))
        for refold in refolds:
            for part in refold.parts:
                got = buffers[f"{refold.name}__{part}"]
                if refold.kind == "affine":
                    continue  # a batch norm's scale/offset: checked through the logits
                want = to_tflite(np.asarray(getattr(layers[refold.name], part)), refold, part)
                if refold.kind == "replace":  # a head: the domain's classes, zero-padded
                    np.testing.assert_array_equal(got[want.shape[0]:], 0.0)
                    got = got[: want.shape[0]]
                np.testing.assert_allclose(got, want, atol=1e-5,
                                           err_msg=f"{name} domain {domain} {refold.name}")


def test_template_is_the_folded_export(exports, tmp_path):
    from keras_mdn.export import FoldedModel, export_folded_tflite, op_counts

    model, _, written = exports("resnet26-parallel")
    folded = export_folded_tflite(model, str(tmp_path / "folded"), [1])
    with open(written["template"], "rb") as f, open(folded[1], "rb") as g:
        assert op_counts(f.read()) == op_counts(g.read())
    images = _images(model)
    np.testing.assert_allclose(_runner(written).predict(images, 1),
                               FoldedModel(folded).predict(images, 1), atol=1e-5)


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    model = small_model("parallel")
    plan, written = _export(model, tmp_path_factory.mktemp("fos"), reference_domain=1)
    return model, plan, written


def test_zero_pack_reproduces_the_reference_domain(small_export):
    from keras_mdn.export import Pack
    from keras_mdn.export.fold_on_switch import read_buffers

    model, plan, written = small_export
    runner = _runner(written)
    zeros = {name: np.zeros(shape, "float32") for name, shape in plan.specs.items()}
    buffers = runner.fold_runner(**runner._current, **zeros)
    for name, value in read_buffers(runner.template, runner.patches).items():
        np.testing.assert_allclose(buffers[name], value, rtol=1e-6, atol=1e-6)
    runner.load_pack(Pack(plan.model_id, 1, "reference", zeros, num_classes=NUM_CLASSES[1]))
    images = _images(model)
    np.testing.assert_allclose(runner.predict(images), expected_logits(model, images, 1),
                               atol=1e-5)


def test_every_pack_tensor_is_consumed(small_export):
    _, plan, written = small_export
    runner = _runner(written)
    assert runner.input_specs == {name: tuple(s) for name, s in plan.specs.items()}
    zeros = {name: np.zeros(shape, "float32") for name, shape in plan.specs.items()}
    base = runner.fold_runner(**runner._current, **zeros)
    rng = np.random.default_rng(0)
    for name, shape in plan.specs.items():
        pack = {**zeros, name: rng.normal(size=shape).astype("float32")}
        out = runner.fold_runner(**runner._current, **pack)
        assert any(np.any(out[k] != base[k]) for k in base), f"{name} is not read by fold"


def test_switch_builds_a_new_interpreter_and_times_it(small_export):
    model, _, written = small_export
    runner = _runner(written)
    images = _images(model)
    with pytest.raises(ValueError, match="No pack loaded"):
        runner.predict(images)
    runner.predict(images, 0)
    first = runner.interpreter
    assert runner.switch_seconds > 0
    runner.predict(images, 0)
    assert runner.interpreter is first  # same domain: no refold
    out = runner.predict(images, 2)
    assert runner.interpreter is not first
    np.testing.assert_allclose(out, expected_logits(model, images, 2), atol=1e-5)


def test_pack_of_another_domain_is_rejected(small_export, tmp_path):
    from keras_mdn.export import PackError

    _, _, written = small_export
    runner = _runner(written)
    with pytest.raises(PackError, match="holds domain 2"):
        runner.load_pack(written["packs"][2], domain=0)
    with pytest.raises(TypeError, match="domain=True"):
        runner.predict(np.zeros((1, 9, 9, 3), "float32"), True)


def test_fold_of_another_template_is_rejected(small_export, tmp_path):
    from keras_mdn.export import PackError

    _, _, written = small_export
    with open(written["template"], "rb") as f:
        data = bytearray(f.read())
    data[-1] ^= 1
    other = tmp_path / "template.tflite"
    other.write_bytes(bytes(data))
    from keras_mdn.export import FoldOnSwitchModel

    with pytest.raises(PackError, match="not the template"):
        FoldOnSwitchModel(str(other), written["fold"])
    other.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(PackError, match=r"template.tflite is not the template .*fold.tflite"):
        FoldOnSwitchModel(str(other), written["fold"])
    with pytest.raises(PackError, match="not a keras_mdn fold model"):
        FoldOnSwitchModel(written["template"], written["template"])
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        FoldOnSwitchModel(written["template"], str(tmp_path / "missing.tflite"))


def test_locate_refuses_shared_and_missing_buffers(small_export):
    from keras_mdn.export.fold_on_switch import locate, read_buffers

    _, _, written = small_export
    runner = _runner(written)
    name, value = next(iter(read_buffers(runner.template, runner.patches).items()))
    with pytest.raises(ValueError, match="shares one buffer"):
        locate(runner.template, {name: value, "copy": value.copy()})
    with pytest.raises(ValueError, match="in no constant buffer"):
        locate(runner.template, {name: value + 1.0})


def test_zero_reference_scale_is_refused(tmp_path):
    model = small_model("parallel")
    gamma = model.get_layer("bn1").gamma
    value = np.asarray(gamma).copy()
    value[0, 0] = 0.0
    gamma.assign(value)
    with pytest.raises(ValueError, match="reference_domain"):
        _export(model, tmp_path)


def test_load_defaults_to_fold_on_switch(exported, model, images):
    from keras_mdn.export import FoldOnSwitchModel, SwappableModel, load

    directory, manifest = exported
    assert "fold_on_switch" in manifest["layouts"]
    runner = load(directory)
    assert isinstance(runner, FoldOnSwitchModel)
    assert isinstance(load(directory, layout="swappable"), SwappableModel)
    entry = manifest["layouts"]["fold_on_switch"]["None"]
    assert entry["packs"] == manifest["layouts"]["swappable"]["None"]["packs"]  # shared packs
    for domain in range(T):
        np.testing.assert_allclose(runner.predict(images, domain),
                                   expected_logits(model, images, domain), atol=1e-5)
    single = load(os.path.join(directory, entry["template"]))
    assert isinstance(single, FoldOnSwitchModel)


def test_a_fold_it_cannot_refold_is_refused_at_export(tmp_path):
    # A plain BatchNormalization after an adapter's conv: fold_domain merges it into the
    # kernel after the adapter, which the refold (adapter added after the mixing) does not
    # model; the export's verification names the mismatch instead of exporting wrong buffers.
    model = small_model("parallel", plain_bn=True)
    with pytest.raises(ValueError, match="does not match this model's fold"):
        _export(model, tmp_path)


def test_export_all_skips_the_layout_for_a_fold_it_cannot_refold(tmp_path, monkeypatch):
    from keras_mdn.export import SwappableModel, bundle, export_all, load

    model = small_model("parallel", plain_bn=True)
    monkeypatch.setattr(bundle, "LAYOUTS", ("swappable", "fold_on_switch"))  # fewer exports
    with pytest.warns(UserWarning, match="fold_on_switch layout is skipped"):
        manifest = export_all(model, str(tmp_path / "default"))
    assert set(manifest["layouts"]) == {"swappable"}
    assert isinstance(load(str(tmp_path / "default")), SwappableModel)
    with pytest.raises(ValueError, match="does not match this model's fold"):
        export_all(model, str(tmp_path / "asked"), layouts=("fold_on_switch",))
